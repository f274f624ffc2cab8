-- API tokens with roles, scopes, expiry and revocation (the bootstrap admin token among them),
-- and the audit log of every change to the fleet and to trust.
CREATE TABLE tokens (
    id BIGSERIAL PRIMARY KEY,
    token_sha256 TEXT NOT NULL UNIQUE,
    name TEXT NOT NULL,
    role TEXT NOT NULL,
    scopes TEXT NOT NULL DEFAULT '',
    bootstrap BOOLEAN NOT NULL DEFAULT FALSE,
    created_ms BIGINT NOT NULL,
    created_by TEXT NOT NULL DEFAULT '',
    expires_ms BIGINT,
    revoked_ms BIGINT,
    last_used_ms BIGINT
);
INSERT INTO tokens (token_sha256, name, role, bootstrap, created_ms, created_by)
    SELECT token_sha256, name, 'admin', TRUE, created_ms, 'serve' FROM api_tokens;
DROP TABLE api_tokens;

CREATE TABLE audit_log (
    id BIGSERIAL PRIMARY KEY,
    at_ms BIGINT NOT NULL,
    token_id BIGINT,
    token_name TEXT NOT NULL,
    address TEXT NOT NULL,
    action TEXT NOT NULL,
    target TEXT NOT NULL,
    detail TEXT NOT NULL,
    outcome TEXT NOT NULL,
    status BIGINT NOT NULL
);
CREATE INDEX audit_log_by_time ON audit_log (at_ms);
