-- Both rollups from one grouping of the batch. The hourly and the daily rollup each joined
-- the batch's records to their keys' lineages and sorted them by nine columns: two passes
-- over every record, most of the statement trigger's cost. The records are now grouped
-- once by the keys of both (the hour and the day, found as 0023 finds it), and each rollup
-- sums the few groups (bench/README.md, issue 29). Sums, hours, days and the order the
-- rows are locked in are those of 0025.
CREATE OR REPLACE FUNCTION post_usage() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM 1 FROM price_versions
    WHERE id IN (SELECT DISTINCT price_version_id FROM inserted)
    FOR KEY SHARE;
    IF EXISTS (
        SELECT 1 FROM (SELECT DISTINCT account_id, key_id, price_version_id FROM inserted) i
        WHERE (SELECT 1 FROM accounts a WHERE a.id = i.account_id) IS NULL
           OR (SELECT 1 FROM api_keys k WHERE k.id = i.key_id) IS NULL
           OR (SELECT 1 FROM price_versions p WHERE p.id = i.price_version_id) IS NULL
    ) THEN
        RAISE foreign_key_violation USING
            MESSAGE = 'a usage record names an account, key or price version that does not exist';
    END IF;
    WITH posted AS (
        UPDATE holds h SET state = 'posted'
        FROM inserted i
        WHERE h.request_id = i.request_id AND h.state = 'pending'
          AND h.request_id = ANY ((SELECT array_agg(request_id) FROM inserted)::TEXT[])
        RETURNING h.account_id, h.amount
    ), released AS (
        SELECT account_id, SUM(amount) AS amount FROM posted GROUP BY account_id
    ), charged AS (
        SELECT account_id, SUM(cost) AS cost FROM inserted GROUP BY account_id
    )
    UPDATE account_funds f
    SET spent = f.spent + c.cost, held = f.held - COALESCE(r.amount, 0)
    FROM charged c LEFT JOIN released r USING (account_id)
    WHERE f.account_id = c.account_id
      AND f.account_id = ANY ((SELECT array_agg(account_id) FROM charged)::BIGINT[]);
    WITH lineages AS MATERIALIZED (
        SELECT key_id, (SELECT coalesce(k.lineage_id, k.id) FROM api_keys k
                        WHERE k.id = b.key_id) AS lineage_id
        FROM (SELECT DISTINCT key_id FROM inserted) b
    ), hours AS (
        SELECT DISTINCT started_at - (started_at % 3600000 + 3600000) % 3600000 AS hour
        FROM inserted
    ), days AS MATERIALIZED (
        SELECT hour,
               (SELECT start FROM rollup_days WHERE start <= hour
                ORDER BY start DESC LIMIT 1) AS start,
               (SELECT start FROM rollup_days WHERE start > hour
                ORDER BY start LIMIT 1) AS next
        FROM hours
    ), groups AS MATERIALIZED (
        SELECT i.account_id, i.started_at / 3600000 * 3600000 AS hour,
               CASE WHEN i.started_at >= d.next THEN d.next
                    WHEN i.started_at >= d.start THEN d.start END AS day,
               k.lineage_id, i.model, i.chip, coalesce(i.deployment, '') AS deployment,
               i.endpoint, i.status, i.price_version_id, count(*) AS requests,
               sum(i.prompt_tokens) AS prompt_tokens, sum(i.cached_tokens) AS cached_tokens,
               sum(i.completion_tokens) AS completion_tokens, sum(i.images) AS images,
               sum(i.tasks) AS tasks, sum(i.compute_ms) AS compute_ms,
               sum(i.uploads) AS uploads, sum(i.cache_write_tokens) AS cache_write_tokens,
               sum(i.reasoning_tokens) AS reasoning_tokens
        FROM inserted i JOIN lineages k USING (key_id)
        JOIN days d ON d.hour = i.started_at - (i.started_at % 3600000 + 3600000) % 3600000
        GROUP BY 1, 2, 3, 4, 5, 6, 7, 8, 9, 10
    ), hourly AS (
        INSERT INTO usage_hourly AS h (account_id, hour, lineage_id, model, chip,
            deployment, endpoint, status, price_version_id, requests, prompt_tokens,
            cached_tokens, completion_tokens, images, tasks, compute_ms, uploads,
            cache_write_tokens, reasoning_tokens)
        SELECT account_id, hour, lineage_id, model, chip, deployment, endpoint, status,
               price_version_id, sum(requests), sum(prompt_tokens), sum(cached_tokens),
               sum(completion_tokens), sum(images), sum(tasks), sum(compute_ms),
               sum(uploads), sum(cache_write_tokens), sum(reasoning_tokens)
        FROM groups
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
            reasoning_tokens = h.reasoning_tokens + EXCLUDED.reasoning_tokens
    )
    INSERT INTO usage_daily AS h (account_id, day, lineage_id, model, chip, deployment,
        endpoint, status, price_version_id, requests, prompt_tokens, cached_tokens,
        completion_tokens, images, tasks, compute_ms, uploads, cache_write_tokens,
        reasoning_tokens)
    SELECT account_id, day, lineage_id, model, chip, deployment, endpoint, status,
           price_version_id, sum(requests), sum(prompt_tokens), sum(cached_tokens),
           sum(completion_tokens), sum(images), sum(tasks), sum(compute_ms), sum(uploads),
           sum(cache_write_tokens), sum(reasoning_tokens)
    FROM groups
    WHERE day IS NOT NULL
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
