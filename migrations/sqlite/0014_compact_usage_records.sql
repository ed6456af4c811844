-- Usage records stored compactly (issue 25: what a record costs on disk). A million
-- records took 294 MB with the gateway's own request ids; most of it was text repeated on
-- every row and in the index of request ids. Now:
-- - What a record's request was and how it went (model, chip, deployment, endpoint,
--   stream, status, HTTP status, usage source, blocked): a few dozen combinations, each
--   stored once in `usage_shapes` and named by its id from every row.
-- - The gateway's request ids (`req_` and the 32 hex digits of a UUIDv7) stored as their
--   16 bytes, in the row and in the unique index; any other id (imports) as its text. An
--   id is stored as bytes only when turning them back into text gives the id again.
-- - When a record ended: milliseconds after it started.
-- The rows are `usage_rows`; `usage_records` is a view with every column as before, which
-- every read uses. Writes go to `usage_rows` (`store::usage::insert`, the ledger writer).
CREATE TABLE usage_shapes (
    id           INTEGER PRIMARY KEY,
    model        TEXT NOT NULL,
    chip         TEXT NOT NULL,
    deployment   TEXT NOT NULL,      -- '' when the record has none
    endpoint     TEXT NOT NULL,
    stream       INTEGER NOT NULL,
    status       TEXT NOT NULL,
    http_status  INTEGER NOT NULL,
    usage_source TEXT NOT NULL,
    blocked      INTEGER NOT NULL,
    UNIQUE (model, chip, deployment, endpoint, stream, status, http_status, usage_source,
            blocked)
);

CREATE TABLE usage_rows (
    id                INTEGER PRIMARY KEY,
    request_key       BLOB NOT NULL UNIQUE,  -- 16 bytes (req_ + UUID) or the id's text
    account_id        INTEGER NOT NULL REFERENCES accounts(id),
    key_id            INTEGER NOT NULL REFERENCES api_keys(id),
    shape_id          INTEGER NOT NULL REFERENCES usage_shapes(id),
    price_version_id  INTEGER NOT NULL REFERENCES price_versions(id),
    prompt_tokens     INTEGER NOT NULL,
    completion_tokens INTEGER NOT NULL,
    cached_tokens     INTEGER NOT NULL,
    images            INTEGER NOT NULL,
    tasks             INTEGER NOT NULL,
    compute_ms        INTEGER NOT NULL,
    uploads           INTEGER NOT NULL,
    cost              TEXT NOT NULL,         -- exact decimal CNY
    started_at        INTEGER NOT NULL,
    ended_after_ms    INTEGER NOT NULL,
    latency_ms        INTEGER NOT NULL,
    ttft_ms           INTEGER,
    error             TEXT,
    moderation        TEXT
);

INSERT INTO usage_shapes (model, chip, deployment, endpoint, stream, status, http_status,
                          usage_source, blocked)
SELECT DISTINCT model, chip, coalesce(deployment, ''), endpoint, stream, status,
       http_status, usage_source, blocked
FROM usage_records;

INSERT INTO usage_rows
SELECT r.id,
       CASE WHEN length(r.request_id) = 36 AND substr(r.request_id, 1, 4) = 'req_'
                 AND 'req_' || lower(hex(unhex(substr(r.request_id, 5)))) = r.request_id
            THEN unhex(substr(r.request_id, 5)) ELSE r.request_id END,
       r.account_id, r.key_id, s.id, r.price_version_id, r.prompt_tokens,
       r.completion_tokens, r.cached_tokens, r.images, r.tasks, r.compute_ms, r.uploads,
       r.cost, r.started_at, r.ended_at - r.started_at, r.latency_ms, r.ttft_ms, r.error,
       r.moderation
FROM usage_records r
JOIN usage_shapes s ON s.model = r.model AND s.chip = r.chip
     AND s.deployment = coalesce(r.deployment, '') AND s.endpoint = r.endpoint
     AND s.stream = r.stream AND s.status = r.status AND s.http_status = r.http_status
     AND s.usage_source = r.usage_source AND s.blocked = r.blocked
ORDER BY r.id;

DROP TABLE usage_records;

CREATE INDEX usage_rows_account_time ON usage_rows(account_id, started_at);
CREATE INDEX usage_rows_key_time ON usage_rows(key_id, started_at);
CREATE INDEX usage_rows_time ON usage_rows(started_at);

CREATE TRIGGER usage_rows_are_immutable
BEFORE UPDATE ON usage_rows
BEGIN
    SELECT RAISE(ABORT, 'usage records are immutable');
END;

CREATE TRIGGER usage_shapes_are_immutable
BEFORE UPDATE ON usage_shapes
BEGIN
    SELECT RAISE(ABORT, 'usage shapes are immutable');
END;

CREATE TRIGGER retired_periods_take_no_records
BEFORE INSERT ON usage_rows
WHEN NEW.started_at < (SELECT before FROM usage_retired)
BEGIN
    SELECT RAISE(ABORT, 'the records of this period are retired: it takes no new ones');
END;

CREATE VIEW usage_records AS
SELECT usage_rows.id,
       CASE typeof(request_key) WHEN 'blob' THEN 'req_' || lower(hex(request_key))
            ELSE request_key END AS request_id,
       account_id, key_id, model, chip, nullif(deployment, '') AS deployment, endpoint,
       stream, status, http_status, error, prompt_tokens, completion_tokens, cached_tokens,
       usage_source, price_version_id, cost, blocked, moderation, started_at,
       started_at + ended_after_ms AS ended_at, latency_ms, ttft_ms, images, tasks,
       compute_ms, uploads
FROM usage_rows JOIN usage_shapes ON usage_shapes.id = usage_rows.shape_id;
