-- Usage records stored compactly (issue 25: what a record costs on disk). A million
-- records took 294 MB with the gateway's own request ids; most of it was text repeated on
-- every row and in the index of request ids. Now:
-- - What a record's request was, how it went and how it was priced (model, chip,
--   deployment, endpoint, stream, status, HTTP status, usage source, blocked, price
--   version): a few dozen combinations, each stored once in `usage_shapes` and named by
--   its id from every row.
-- - The gateway's request ids (`req_` and the 32 hex digits of a UUIDv7) stored as their
--   16 bytes, in the row and in the unique index; any other id (imports) as its text. An
--   id is stored as bytes only when turning them back into text gives the id again.
-- - The cost as an integer when it fits: its decimal digits times 32 plus its scale
--   (0.0050712 is 50712 * 32 + 7), else as exact decimal text (as every cost written
--   before). Either way the view gives back the same text, scale and all.
-- - When a record ended: milliseconds after it started, or nothing when that is its
--   latency (as it mostly is).
-- - Units (images, tasks, compute time, uploads), the error and the moderation verdict,
--   which most records do not have, in `usage_details`, only for the records that do.
-- The rows are `usage_rows`; `usage_records` is a view with every column as before, which
-- every read uses. The ledger writer writes the rows (`store::compact`).
CREATE TABLE usage_shapes (
    id               INTEGER PRIMARY KEY,
    model            TEXT NOT NULL,
    chip             TEXT NOT NULL,
    deployment       TEXT NOT NULL,      -- '' when the record has none
    endpoint         TEXT NOT NULL,
    stream           INTEGER NOT NULL,
    status           TEXT NOT NULL,
    http_status      INTEGER NOT NULL,
    usage_source     TEXT NOT NULL,
    blocked          INTEGER NOT NULL,
    price_version_id INTEGER NOT NULL REFERENCES price_versions(id),
    UNIQUE (model, chip, deployment, endpoint, stream, status, http_status, usage_source,
            blocked, price_version_id)
);

CREATE TABLE usage_rows (
    id                INTEGER PRIMARY KEY,
    request_key       BLOB NOT NULL UNIQUE,  -- 16 bytes (req_ + UUID) or the id's text
    account_id        INTEGER NOT NULL REFERENCES accounts(id),
    key_id            INTEGER NOT NULL REFERENCES api_keys(id),
    shape_id          INTEGER NOT NULL REFERENCES usage_shapes(id),
    prompt_tokens     INTEGER NOT NULL,
    completion_tokens INTEGER NOT NULL,
    cached_tokens     INTEGER NOT NULL,
    cost              BLOB NOT NULL,         -- digits * 32 + scale, or exact decimal text
    started_at        INTEGER NOT NULL,
    ended_after_ms    INTEGER,               -- NULL: latency_ms after it started
    latency_ms        INTEGER NOT NULL,
    ttft_ms           INTEGER
);

CREATE TABLE usage_details (
    id         INTEGER PRIMARY KEY REFERENCES usage_rows(id) ON DELETE CASCADE,
    images     INTEGER NOT NULL,
    tasks      INTEGER NOT NULL,
    compute_ms INTEGER NOT NULL,
    uploads    INTEGER NOT NULL,
    error      TEXT,
    moderation TEXT
);

INSERT INTO usage_shapes (model, chip, deployment, endpoint, stream, status, http_status,
                          usage_source, blocked, price_version_id)
SELECT DISTINCT model, chip, coalesce(deployment, ''), endpoint, stream, status,
       http_status, usage_source, blocked, price_version_id
FROM usage_records;

INSERT INTO usage_rows
SELECT r.id,
       CASE WHEN length(r.request_id) = 36 AND substr(r.request_id, 1, 4) = 'req_'
                 AND 'req_' || lower(hex(unhex(substr(r.request_id, 5)))) = r.request_id
            THEN unhex(substr(r.request_id, 5)) ELSE r.request_id END,
       r.account_id, r.key_id, s.id, r.prompt_tokens, r.completion_tokens, r.cached_tokens,
       r.cost, r.started_at, nullif(r.ended_at - r.started_at, r.latency_ms), r.latency_ms,
       r.ttft_ms
FROM usage_records r
JOIN usage_shapes s ON s.model = r.model AND s.chip = r.chip
     AND s.deployment = coalesce(r.deployment, '') AND s.endpoint = r.endpoint
     AND s.stream = r.stream AND s.status = r.status AND s.http_status = r.http_status
     AND s.usage_source = r.usage_source AND s.blocked = r.blocked
     AND s.price_version_id = r.price_version_id
ORDER BY r.id;

INSERT INTO usage_details
SELECT id, images, tasks, compute_ms, uploads, error, moderation
FROM usage_records
WHERE images <> 0 OR tasks <> 0 OR compute_ms <> 0 OR uploads <> 0 OR error IS NOT NULL
      OR moderation IS NOT NULL;

DROP TABLE usage_records;

CREATE INDEX usage_rows_account_time ON usage_rows(account_id, started_at);
CREATE INDEX usage_rows_key_time ON usage_rows(key_id, started_at);
CREATE INDEX usage_rows_time ON usage_rows(started_at);

CREATE TRIGGER usage_rows_are_immutable
BEFORE UPDATE ON usage_rows
BEGIN
    SELECT RAISE(ABORT, 'usage records are immutable');
END;

CREATE TRIGGER usage_details_are_immutable
BEFORE UPDATE ON usage_details
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

-- A price version that priced records is kept: the shapes name it (and the hourly
-- rollups, as before).
CREATE TRIGGER shaped_price_versions_are_kept
BEFORE DELETE ON price_versions
WHEN EXISTS (SELECT 1 FROM usage_shapes WHERE price_version_id = OLD.id)
BEGIN
    SELECT RAISE(ABORT, 'this price version priced usage records and cannot be deleted');
END;

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
       coalesce(compute_ms, 0) AS compute_ms, coalesce(uploads, 0) AS uploads
FROM usage_rows
JOIN usage_shapes ON usage_shapes.id = usage_rows.shape_id
LEFT JOIN usage_details ON usage_details.id = usage_rows.id;
