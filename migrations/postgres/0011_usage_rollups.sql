-- Rollups of usage, hourly and daily: what reports, invoices and `/v1/usage` read instead of the
-- records, so that their cost does not grow with history. One row per (account, UTC hour,
-- key lineage, model, chip, deployment, endpoint, status, price version) holding the sums
-- of its records' counts; cost follows from them and the price version (cost is linear in
-- the counts). The statement trigger that charges a batch of records adds them here in the
-- same transaction, from the rows really inserted (a request id already stored adds
-- nothing), in key order so that concurrent batches lock shared rows in one order.
-- Deployment is '' when the record has none.
CREATE TABLE usage_hourly (
    account_id        BIGINT NOT NULL,
    hour              BIGINT NOT NULL,   -- ms since the epoch, start of the UTC hour
    lineage_id        BIGINT NOT NULL,   -- the key's lineage: its first key's id
    model             TEXT NOT NULL,
    chip              TEXT NOT NULL,
    deployment        TEXT NOT NULL,
    endpoint          TEXT NOT NULL,
    status            TEXT NOT NULL,
    price_version_id  BIGINT NOT NULL,
    requests          BIGINT NOT NULL,
    prompt_tokens     BIGINT NOT NULL,
    cached_tokens     BIGINT NOT NULL,
    completion_tokens BIGINT NOT NULL,
    images            BIGINT NOT NULL,
    tasks             BIGINT NOT NULL,
    compute_ms        BIGINT NOT NULL,
    uploads           BIGINT NOT NULL,
    PRIMARY KEY (account_id, hour, lineage_id, model, chip, deployment, endpoint, status,
                 price_version_id)
);
-- No other index: every read names its accounts (all of them, one, or a key's), so the
-- primary key finds each account's hours; an index more would repeat the whole key.

-- The same sums per day of the billing time zone, so that a month's report or invoice
-- reads about 30 rows per group instead of 720. The days are those of `rollup_days` (the
-- start of each local day from 1970 to 2100 in the zone `rollup_zone` names), written by
-- `tollgate` for its configured `billing.timezone` and rebuilt from the records when that
-- changes; until then (empty) no daily sums are kept and readers use the hourly ones.
CREATE TABLE rollup_zone (
    id   BIGINT PRIMARY KEY CHECK (id = 1),
    zone TEXT NOT NULL
);
CREATE TABLE rollup_days (
    start BIGINT PRIMARY KEY
);
CREATE TABLE usage_daily (
    account_id        BIGINT NOT NULL,
    day               BIGINT NOT NULL,   -- ms since the epoch, start of the day in rollup_zone
    lineage_id        BIGINT NOT NULL,   -- the key's lineage: its first key's id
    model             TEXT NOT NULL,
    chip              TEXT NOT NULL,
    deployment        TEXT NOT NULL,
    endpoint          TEXT NOT NULL,
    status            TEXT NOT NULL,
    price_version_id  BIGINT NOT NULL,
    requests          BIGINT NOT NULL,
    prompt_tokens     BIGINT NOT NULL,
    cached_tokens     BIGINT NOT NULL,
    completion_tokens BIGINT NOT NULL,
    images            BIGINT NOT NULL,
    tasks             BIGINT NOT NULL,
    compute_ms        BIGINT NOT NULL,
    uploads           BIGINT NOT NULL,
    PRIMARY KEY (account_id, day, lineage_id, model, chip, deployment, endpoint, status,
                 price_version_id)
);

INSERT INTO usage_hourly
SELECT r.account_id, r.started_at / 3600000 * 3600000, coalesce(k.lineage_id, k.id),
       r.model, r.chip, coalesce(r.deployment, ''), r.endpoint, r.status, r.price_version_id,
       count(*), sum(r.prompt_tokens), sum(r.cached_tokens), sum(r.completion_tokens),
       sum(r.images), sum(r.tasks), sum(r.compute_ms), sum(r.uploads)
FROM usage_records r JOIN api_keys k ON k.id = r.key_id
GROUP BY 1, 2, 3, 4, 5, 6, 7, 8, 9;

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
    INSERT INTO usage_hourly AS h
    SELECT i.account_id, i.started_at / 3600000 * 3600000, coalesce(k.lineage_id, k.id),
           i.model, i.chip, coalesce(i.deployment, ''), i.endpoint, i.status,
           i.price_version_id, count(*), sum(i.prompt_tokens), sum(i.cached_tokens),
           sum(i.completion_tokens), sum(i.images), sum(i.tasks), sum(i.compute_ms),
           sum(i.uploads)
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
        uploads = h.uploads + EXCLUDED.uploads;
    INSERT INTO usage_daily AS h
    SELECT i.account_id, d.start, coalesce(k.lineage_id, k.id),
           i.model, i.chip, coalesce(i.deployment, ''), i.endpoint, i.status,
           i.price_version_id, count(*), sum(i.prompt_tokens), sum(i.cached_tokens),
           sum(i.completion_tokens), sum(i.images), sum(i.tasks), sum(i.compute_ms),
           sum(i.uploads)
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
        uploads = h.uploads + EXCLUDED.uploads;
    RETURN NULL;
END;
$$;

-- A price version that priced records is kept while anything sums them: the hourly
-- rollups name every record's version, and outlive records retired from the ledger.
CREATE OR REPLACE FUNCTION keep_used_price_versions() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM usage_hourly WHERE price_version_id = OLD.id) THEN
        RAISE EXCEPTION 'this price version priced usage records and cannot be deleted';
    END IF;
    RETURN OLD;
END;
$$;

-- Retiring old records (`tollgate usage retire`): the records that started before
-- `usage_retired.before` may be gone from the ledger (archived by the operator), while
-- the rollups, balances and invoices that sum them stay. What the retired records cost
-- is kept per account, so that an audit still finds every charge. No record may come in
-- for a retired period: it would be summed twice.
CREATE TABLE usage_retired (
    id     BIGINT PRIMARY KEY CHECK (id = 1),
    before BIGINT NOT NULL
);
CREATE TABLE retired_funds (
    account_id BIGINT PRIMARY KEY REFERENCES accounts(id),
    spent      NUMERIC NOT NULL
);
CREATE FUNCTION refuse_retired_records() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF EXISTS (
        SELECT 1 FROM inserted i, usage_retired r WHERE i.started_at < r.before
    ) THEN
        RAISE EXCEPTION 'the records of this period are retired: it takes no new ones'
            USING ERRCODE = 'check_violation';
    END IF;
    RETURN NULL;
END;
$$;
CREATE TRIGGER retired_periods_take_no_records AFTER INSERT ON usage_records
    REFERENCING NEW TABLE AS inserted
    FOR EACH STATEMENT EXECUTE FUNCTION refuse_retired_records();
