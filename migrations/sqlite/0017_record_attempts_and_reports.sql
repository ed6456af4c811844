-- What a record keeps of how it was served and counted, for the few that need it: the
-- backends passed over before the one that served (at their own limit, or refusing the
-- connection), and the counts as the backend reported them (or tollgate estimated them)
-- when the billed counts differ (capped, suspect). Both JSON text, NULL for the rest; in
-- `usage_details`, which only records with something beyond the common columns have.
ALTER TABLE usage_details ADD COLUMN attempts TEXT;
ALTER TABLE usage_details ADD COLUMN reported TEXT;

DROP VIEW usage_records;
CREATE VIEW usage_records AS
SELECT usage_rows.id,
       CASE typeof(request_key) WHEN 'blob' THEN 'req_' || lower(hex(request_key))
            ELSE request_key END AS request_id,
       account_id, key_id, model, chip, nullif(deployment, '') AS deployment, endpoint,
       stream, status, http_status, error, prompt_tokens, completion_tokens, cached_tokens,
       usage_source, price_version_id,
       CASE WHEN typeof(cost) <> 'integer' THEN cost
            WHEN cost & 31 = 0 THEN CAST(cost >> 5 AS TEXT)
            ELSE (SELECT substr(digits, 1, length(digits) - scale) || '.'
                         || substr(digits, -scale)
                  FROM (SELECT cost & 31 AS scale,
                               printf('%0*d', (cost & 31) + 1, cost >> 5) AS digits))
       END AS cost,
       blocked, moderation, started_at, started_at + coalesce(ended_after_ms, latency_ms) AS ended_at, latency_ms,
       ttft_ms, coalesce(images, 0) AS images, coalesce(tasks, 0) AS tasks,
       coalesce(compute_ms, 0) AS compute_ms, coalesce(uploads, 0) AS uploads,
       cache_write_tokens, attempts, reported
FROM usage_rows
JOIN usage_shapes ON usage_shapes.id = usage_rows.shape_id
LEFT JOIN usage_details ON usage_details.id = usage_rows.id;
