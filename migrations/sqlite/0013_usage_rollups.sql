-- Rollups of usage, hourly and daily: what reports, invoices and `/v1/usage` read instead of the
-- records, so that their cost does not grow with history. One row per (account, UTC hour,
-- key lineage, model, chip, deployment, endpoint, status, price version) holding the sums
-- of its records' counts; cost follows from them and the price version (cost is linear in
-- the counts), so every column is an exact integer. The ledger writer keeps them in the
-- transaction that inserts the records they sum (`store::sqlite::roll_up`, summing each
-- batch per group first); a request id already stored inserts nothing and so adds
-- nothing. Deployment is '' when the record has none.
CREATE TABLE usage_hourly (
    account_id        INTEGER NOT NULL,
    hour              INTEGER NOT NULL,   -- ms since the epoch, start of the UTC hour
    lineage_id        INTEGER NOT NULL,   -- the key's lineage: its first key's id
    model             TEXT NOT NULL,
    chip              TEXT NOT NULL,
    deployment        TEXT NOT NULL,
    endpoint          TEXT NOT NULL,
    status            TEXT NOT NULL,
    price_version_id  INTEGER NOT NULL,
    requests          INTEGER NOT NULL,
    prompt_tokens     INTEGER NOT NULL,
    cached_tokens     INTEGER NOT NULL,
    completion_tokens INTEGER NOT NULL,
    images            INTEGER NOT NULL,
    tasks             INTEGER NOT NULL,
    compute_ms        INTEGER NOT NULL,
    uploads           INTEGER NOT NULL,
    PRIMARY KEY (account_id, hour, lineage_id, model, chip, deployment, endpoint, status,
                 price_version_id)
) WITHOUT ROWID;
-- No other index: every read names its accounts (all of them, one, or a key's), so the
-- primary key finds each account's hours; an index more would repeat the whole key.

-- The same sums per day of the billing time zone, so that a month's report or invoice
-- reads about 30 rows per group instead of 720. The days are those of `rollup_days` (the
-- start of each local day from 1970 to 2100 in the zone `rollup_zone` names), written by
-- `tollgate` for its configured `billing.timezone` and rebuilt from the records when that
-- changes; until then (empty) no daily sums are kept and readers use the hourly ones.
CREATE TABLE rollup_zone (
    id   INTEGER PRIMARY KEY CHECK (id = 1),
    zone TEXT NOT NULL
);
CREATE TABLE rollup_days (
    start INTEGER PRIMARY KEY
);
CREATE TABLE usage_daily (
    account_id        INTEGER NOT NULL,
    day               INTEGER NOT NULL,   -- ms since the epoch, start of the day in rollup_zone
    lineage_id        INTEGER NOT NULL,   -- the key's lineage: its first key's id
    model             TEXT NOT NULL,
    chip              TEXT NOT NULL,
    deployment        TEXT NOT NULL,
    endpoint          TEXT NOT NULL,
    status            TEXT NOT NULL,
    price_version_id  INTEGER NOT NULL,
    requests          INTEGER NOT NULL,
    prompt_tokens     INTEGER NOT NULL,
    cached_tokens     INTEGER NOT NULL,
    completion_tokens INTEGER NOT NULL,
    images            INTEGER NOT NULL,
    tasks             INTEGER NOT NULL,
    compute_ms        INTEGER NOT NULL,
    uploads           INTEGER NOT NULL,
    PRIMARY KEY (account_id, day, lineage_id, model, chip, deployment, endpoint, status,
                 price_version_id)
) WITHOUT ROWID;

INSERT INTO usage_hourly
SELECT r.account_id, r.started_at / 3600000 * 3600000, coalesce(k.lineage_id, k.id),
       r.model, r.chip, coalesce(r.deployment, ''), r.endpoint, r.status, r.price_version_id,
       count(*), sum(r.prompt_tokens), sum(r.cached_tokens), sum(r.completion_tokens),
       sum(r.images), sum(r.tasks), sum(r.compute_ms), sum(r.uploads)
FROM usage_records r JOIN api_keys k ON k.id = r.key_id
GROUP BY 1, 2, 3, 4, 5, 6, 7, 8, 9;


-- A price version that priced records is kept while anything sums them: the hourly
-- rollups name every record's version, and outlive records retired from the ledger.
DROP TRIGGER used_price_versions_are_kept;
CREATE TRIGGER used_price_versions_are_kept
BEFORE DELETE ON price_versions
WHEN EXISTS (SELECT 1 FROM usage_hourly WHERE price_version_id = OLD.id)
BEGIN
    SELECT RAISE(ABORT, 'this price version priced usage records and cannot be deleted');
END;

-- Retiring old records (`tollgate usage retire`): the records that started before
-- `usage_retired.before` may be gone from the ledger (archived by the operator), while
-- the rollups, balances and invoices that sum them stay. What the retired records cost
-- is kept per account (exact decimal text), so that an audit still finds every charge.
-- No record may come in for a retired period: it would be summed twice.
CREATE TABLE usage_retired (
    id     INTEGER PRIMARY KEY CHECK (id = 1),
    before INTEGER NOT NULL
);
CREATE TABLE retired_funds (
    account_id INTEGER PRIMARY KEY REFERENCES accounts(id),
    spent      TEXT NOT NULL
);
CREATE TRIGGER retired_periods_take_no_records
BEFORE INSERT ON usage_records
WHEN NEW.started_at < (SELECT before FROM usage_retired)
BEGIN
    SELECT RAISE(ABORT, 'the records of this period are retired: it takes no new ones');
END;
