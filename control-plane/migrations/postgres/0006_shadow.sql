-- Shadow candidates: a deployment's role (the active slot or the model's shadow slot), and
-- what shadow candidates report about their agreement with the active model.
ALTER TABLE deployments ADD COLUMN role TEXT NOT NULL DEFAULT 'active';

CREATE TABLE shadow_windows (
    id BIGSERIAL PRIMARY KEY,
    device_id TEXT NOT NULL,
    model TEXT NOT NULL,
    active_version BIGINT NOT NULL,
    candidate_version BIGINT NOT NULL,
    window_end_ms BIGINT NOT NULL,
    requests BIGINT NOT NULL,
    errors BIGINT NOT NULL,
    skipped BIGINT NOT NULL,
    rows_compared BIGINT NOT NULL,
    rows_agreed BIGINT NOT NULL,
    delta_sum DOUBLE PRECISION NOT NULL,
    delta_max DOUBLE PRECISION NOT NULL,
    latency BYTEA NOT NULL
);
CREATE INDEX shadow_windows_by_candidate ON shadow_windows (model, candidate_version, window_end_ms);
