-- The spine: devices, registry, bundles, standing deployments, desired states, telemetry, tokens.
CREATE TABLE devices (
    device_id TEXT PRIMARY KEY,
    labels TEXT NOT NULL DEFAULT '{}',
    online BOOLEAN NOT NULL DEFAULT FALSE,
    first_seen_ms BIGINT NOT NULL,
    last_seen_ms BIGINT NOT NULL,
    agent_version TEXT NOT NULL DEFAULT '',
    slots TEXT NOT NULL DEFAULT '[]',
    last_refusal TEXT,
    cpu_percent DOUBLE PRECISION NOT NULL DEFAULT 0,
    memory_used_bytes BIGINT NOT NULL DEFAULT 0,
    memory_total_bytes BIGINT NOT NULL DEFAULT 0,
    process_rss_bytes BIGINT NOT NULL DEFAULT 0,
    uptime_s BIGINT NOT NULL DEFAULT 0,
    refused_messages BIGINT NOT NULL DEFAULT 0,
    last_heartbeat_ms BIGINT NOT NULL DEFAULT 0
);

CREATE TABLE models (
    name TEXT PRIMARY KEY,
    created_ms BIGINT NOT NULL
);

CREATE TABLE model_versions (
    model TEXT NOT NULL REFERENCES models (name),
    version BIGINT NOT NULL,
    digest TEXT NOT NULL,
    created_ms BIGINT NOT NULL,
    description TEXT NOT NULL DEFAULT '',
    schema TEXT NOT NULL,
    onnx_sha256 TEXT NOT NULL,
    onnx_bytes BIGINT NOT NULL,
    bundle_bytes BIGINT NOT NULL,
    PRIMARY KEY (model, version)
);

CREATE TABLE bundles (
    digest TEXT PRIMARY KEY,
    model TEXT NOT NULL,
    version BIGINT NOT NULL,
    signed_manifest BYTEA NOT NULL,
    created_ms BIGINT NOT NULL
);

CREATE TABLE aliases (
    model TEXT NOT NULL REFERENCES models (name),
    alias TEXT NOT NULL,
    version BIGINT NOT NULL,
    updated_ms BIGINT NOT NULL,
    PRIMARY KEY (model, alias)
);

CREATE TABLE deployments (
    id BIGSERIAL PRIMARY KEY,
    model TEXT NOT NULL REFERENCES models (name),
    version BIGINT NOT NULL,
    target_kind TEXT NOT NULL,
    target TEXT NOT NULL,
    created_ms BIGINT NOT NULL
);

CREATE TABLE desired_states (
    device_id TEXT NOT NULL,
    model TEXT NOT NULL,
    generation BIGINT NOT NULL,
    version BIGINT,
    digest TEXT,
    deployment_id BIGINT,
    payload BYTEA NOT NULL,
    updated_ms BIGINT NOT NULL,
    PRIMARY KEY (device_id, model)
);

CREATE TABLE inference_windows (
    id BIGSERIAL PRIMARY KEY,
    device_id TEXT NOT NULL,
    model TEXT NOT NULL,
    version BIGINT NOT NULL,
    window_end_ms BIGINT NOT NULL,
    window_ms BIGINT NOT NULL,
    requests BIGINT NOT NULL,
    errors BIGINT NOT NULL,
    latency BYTEA NOT NULL
);
CREATE INDEX inference_windows_by_version ON inference_windows (model, version, window_end_ms);

CREATE TABLE api_tokens (
    token_sha256 TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    created_ms BIGINT NOT NULL
);
