-- Reasoning tokens (see migrations/sqlite/0024_reasoning_tokens.sql): part of a record's
-- completion tokens, priced at `reasoning_per_1k` (the output price when absent); the
-- trigger that charges a batch sums them into the rollups like every other count.
ALTER TABLE price_versions ADD COLUMN reasoning_per_1k NUMERIC;
ALTER TABLE usage_records ADD COLUMN reasoning_tokens BIGINT NOT NULL DEFAULT 0;
ALTER TABLE usage_hourly ADD COLUMN reasoning_tokens BIGINT NOT NULL DEFAULT 0;
ALTER TABLE usage_daily ADD COLUMN reasoning_tokens BIGINT NOT NULL DEFAULT 0;

CREATE OR REPLACE FUNCTION post_usage() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM 1 FROM price_versions
    WHERE id IN (SELECT DISTINCT price_version_id FROM inserted)
    FOR KEY SHARE;
    IF EXISTS (
        SELECT 1 FROM inserted i
        WHERE NOT EXISTS (SELECT 1 FROM accounts a WHERE a.id = i.account_id)
           OR NOT EXISTS (SELECT 1 FROM api_keys k WHERE k.id = i.key_id)
           OR NOT EXISTS (SELECT 1 FROM price_versions p WHERE p.id = i.price_version_id)
    ) THEN
        RAISE foreign_key_violation USING
            MESSAGE = 'a usage record names an account, key or price version that does not exist';
    END IF;
    WITH posted AS (
        UPDATE holds h SET state = 'posted'
        FROM inserted i
        WHERE h.request_id = i.request_id AND h.state = 'pending'
        RETURNING h.account_id, h.amount
    ), released AS (
        SELECT account_id, SUM(amount) AS amount FROM posted GROUP BY account_id
    ), charged AS (
        SELECT account_id, SUM(cost) AS cost FROM inserted GROUP BY account_id
    )
    UPDATE account_funds f
    SET spent = f.spent + c.cost, held = f.held - COALESCE(r.amount, 0)
    FROM charged c LEFT JOIN released r USING (account_id)
    WHERE f.account_id = c.account_id;
    INSERT INTO usage_hourly AS h (account_id, hour, lineage_id, model, chip, deployment,
        endpoint, status, price_version_id, requests, prompt_tokens, cached_tokens,
        completion_tokens, images, tasks, compute_ms, uploads, cache_write_tokens,
        reasoning_tokens)
    SELECT i.account_id, i.started_at / 3600000 * 3600000, coalesce(k.lineage_id, k.id),
           i.model, i.chip, coalesce(i.deployment, ''), i.endpoint, i.status,
           i.price_version_id, count(*), sum(i.prompt_tokens), sum(i.cached_tokens),
           sum(i.completion_tokens), sum(i.images), sum(i.tasks), sum(i.compute_ms),
           sum(i.uploads), sum(i.cache_write_tokens), sum(i.reasoning_tokens)
    FROM inserted i JOIN api_keys k ON k.id = i.key_id
    GROUP BY 1, 2, 3, 4, 5, 6, 7, 8, 9
    ORDER BY 1, 2, 3, 4, 5, 6, 7, 8, 9
    ON CONFLICT (account_id, hour, lineage_id, model, chip, deployment, endpoint, status,
                 price_version_id)
    DO UPDATE SET
        requests = h.requests + EXCLUDED.requests,
        prompt_tokens = h.prompt_tokens + EXCLUDED.prompt_tokens,
        cached_tokens = h.cached_tokens + EXCLUDED.cached_tokens,
        completion_tokens = h.completion_tokens + EXCLUDED.completion_tokens,
        images = h.images + EXCLUDED.images,
        tasks = h.tasks + EXCLUDED.tasks,
        compute_ms = h.compute_ms + EXCLUDED.compute_ms,
        uploads = h.uploads + EXCLUDED.uploads,
        cache_write_tokens = h.cache_write_tokens + EXCLUDED.cache_write_tokens,
        reasoning_tokens = h.reasoning_tokens + EXCLUDED.reasoning_tokens;
    INSERT INTO usage_daily AS h (account_id, day, lineage_id, model, chip, deployment,
        endpoint, status, price_version_id, requests, prompt_tokens, cached_tokens,
        completion_tokens, images, tasks, compute_ms, uploads, cache_write_tokens,
        reasoning_tokens)
    SELECT i.account_id, d.start, coalesce(k.lineage_id, k.id),
           i.model, i.chip, coalesce(i.deployment, ''), i.endpoint, i.status,
           i.price_version_id, count(*), sum(i.prompt_tokens), sum(i.cached_tokens),
           sum(i.completion_tokens), sum(i.images), sum(i.tasks), sum(i.compute_ms),
           sum(i.uploads), sum(i.cache_write_tokens), sum(i.reasoning_tokens)
    FROM inserted i JOIN api_keys k ON k.id = i.key_id
    CROSS JOIN LATERAL (
        SELECT start FROM rollup_days WHERE start <= i.started_at
        ORDER BY start DESC LIMIT 1
    ) d
    WHERE d.start IS NOT NULL
    GROUP BY 1, 2, 3, 4, 5, 6, 7, 8, 9
    ORDER BY 1, 2, 3, 4, 5, 6, 7, 8, 9
    ON CONFLICT (account_id, day, lineage_id, model, chip, deployment, endpoint, status,
                 price_version_id)
    DO UPDATE SET
        requests = h.requests + EXCLUDED.requests,
        prompt_tokens = h.prompt_tokens + EXCLUDED.prompt_tokens,
        cached_tokens = h.cached_tokens + EXCLUDED.cached_tokens,
        completion_tokens = h.completion_tokens + EXCLUDED.completion_tokens,
        images = h.images + EXCLUDED.images,
        tasks = h.tasks + EXCLUDED.tasks,
        compute_ms = h.compute_ms + EXCLUDED.compute_ms,
        uploads = h.uploads + EXCLUDED.uploads,
        cache_write_tokens = h.cache_write_tokens + EXCLUDED.cache_write_tokens,
        reasoning_tokens = h.reasoning_tokens + EXCLUDED.reasoning_tokens;
    RETURN NULL;
END;
$$;
