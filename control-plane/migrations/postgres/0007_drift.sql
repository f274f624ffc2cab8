-- Drift monitoring: reference profiles (content-addressed), which version carries which, the
-- windows devices send (deduplicated per device and sequence number), and drift events.
CREATE TABLE profiles (
    sha256 TEXT PRIMARY KEY,
    body BYTEA NOT NULL,
    created_ms BIGINT NOT NULL
);

CREATE TABLE version_profiles (
    model TEXT NOT NULL,
    version BIGINT NOT NULL,
    sha256 TEXT NOT NULL REFERENCES profiles (sha256),
    PRIMARY KEY (model, version)
);

CREATE TABLE drift_windows (
    id BIGSERIAL PRIMARY KEY,
    device_id TEXT NOT NULL,
    model TEXT NOT NULL,
    version BIGINT NOT NULL,
    seq BIGINT NOT NULL,
    started_ms BIGINT NOT NULL,
    ended_ms BIGINT NOT NULL,
    received_ms BIGINT NOT NULL,
    samples BIGINT NOT NULL,
    body BYTEA NOT NULL,
    UNIQUE (device_id, model, version, seq)
);
CREATE INDEX drift_windows_by_version ON drift_windows (model, version, ended_ms);

CREATE TABLE drift_events (
    id BIGSERIAL PRIMARY KEY,
    model TEXT NOT NULL,
    version BIGINT NOT NULL,
    at_ms BIGINT NOT NULL,
    window_start_ms BIGINT NOT NULL,
    window_end_ms BIGINT NOT NULL,
    scope TEXT NOT NULL,
    detail TEXT NOT NULL
);
CREATE INDEX drift_events_by_version ON drift_events (model, version, at_ms);
