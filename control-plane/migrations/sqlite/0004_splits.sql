-- A/B splits: a cohort divided between model versions by a stable hash of the device id.
CREATE TABLE splits (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    model TEXT NOT NULL,
    selector TEXT NOT NULL,
    variants TEXT NOT NULL,
    created_ms BIGINT NOT NULL
);
