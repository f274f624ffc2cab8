-- Staged rollouts: the rollout, each device's place and state in it, and its event history.
CREATE TABLE rollouts (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    model TEXT NOT NULL,
    version BIGINT NOT NULL,
    policy TEXT NOT NULL,
    state TEXT NOT NULL,
    current_wave BIGINT NOT NULL DEFAULT 0,
    wave_started_ms BIGINT NOT NULL DEFAULT 0,
    created_by TEXT NOT NULL,
    created_ms BIGINT NOT NULL,
    updated_ms BIGINT NOT NULL
);

CREATE TABLE rollout_devices (
    rollout_id BIGINT NOT NULL REFERENCES rollouts (id),
    device_id TEXT NOT NULL,
    wave BIGINT NOT NULL,
    state TEXT NOT NULL,
    reason TEXT NOT NULL DEFAULT '',
    from_version BIGINT,
    updated_ms BIGINT NOT NULL,
    PRIMARY KEY (rollout_id, device_id)
);

CREATE TABLE rollout_events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    rollout_id BIGINT NOT NULL REFERENCES rollouts (id),
    at_ms BIGINT NOT NULL,
    kind TEXT NOT NULL,
    detail TEXT NOT NULL
);
CREATE INDEX rollout_events_by_rollout ON rollout_events (rollout_id, id);
