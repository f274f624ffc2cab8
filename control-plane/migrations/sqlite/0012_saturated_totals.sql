-- Before the running totals saturated (issue 11), a sum past i64::MAX turned a BIGINT cell
-- into a REAL on SQLite, and every later read of the totals failed. Clamp such cells to the
-- saturated value (or to 0 for a negative one) so an affected database reads again.
-- PostgreSQL refused the overflowing update instead, so it needs no repair.
UPDATE inference_totals SET requests = CASE WHEN requests > 0 THEN 9223372036854775807 ELSE 0 END WHERE typeof(requests) = 'real';
UPDATE inference_totals SET errors = CASE WHEN errors > 0 THEN 9223372036854775807 ELSE 0 END WHERE typeof(errors) = 'real';
UPDATE inference_latency_buckets SET observations = CASE WHEN observations > 0 THEN 9223372036854775807 ELSE 0 END
WHERE typeof(observations) = 'real';
