-- Running totals of the inference windows per model version, kept by `insert_windows` in the
-- same transaction, so `/metrics` reads a few rows per version instead of the whole history.
-- Windows are per-heartbeat deltas, so these only grow (an agent restart starts a new window).
CREATE TABLE inference_totals (
    model TEXT NOT NULL,
    version BIGINT NOT NULL,
    requests BIGINT NOT NULL,
    errors BIGINT NOT NULL,
    PRIMARY KEY (model, version)
);

-- The merged latency histogram of each model version: one row per non-empty bucket of
-- `fleetml_shared::histogram`, added to with an upsert (no read-modify-write).
CREATE TABLE inference_latency_buckets (
    model TEXT NOT NULL,
    version BIGINT NOT NULL,
    bucket BIGINT NOT NULL,
    observations BIGINT NOT NULL,
    PRIMARY KEY (model, version, bucket)
);

-- Windows stored before this migration count towards requests and errors; their latency
-- histograms are postcard blobs SQL cannot merge, so the latency totals start here.
INSERT INTO inference_totals (model, version, requests, errors)
SELECT model, version, SUM(requests), SUM(errors) FROM inference_windows GROUP BY model, version;
