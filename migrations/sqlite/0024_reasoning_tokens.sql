-- Reasoning tokens (a thinking model's, OpenAI's `completion_tokens_details.
-- reasoning_tokens`, DashScope's `output_tokens_details.reasoning_tokens`), part of a
-- record's completion tokens and priced at their own rate (`reasoning_per_1k`, the output
-- price when absent), as DashScope prices qwen's thinking output. Records, the rollups
-- and the view carry them; 0 for every record before.
ALTER TABLE price_versions ADD COLUMN reasoning_per_1k TEXT;
ALTER TABLE usage_rows ADD COLUMN reasoning_tokens INTEGER NOT NULL DEFAULT 0;
ALTER TABLE usage_hourly ADD COLUMN reasoning_tokens INTEGER NOT NULL DEFAULT 0;
ALTER TABLE usage_daily ADD COLUMN reasoning_tokens INTEGER NOT NULL DEFAULT 0;

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
       cache_write_tokens, attempts, reported, reasoning_tokens
FROM usage_rows
JOIN usage_shapes ON usage_shapes.id = usage_rows.shape_id
LEFT JOIN usage_details ON usage_details.id = usage_rows.id;
