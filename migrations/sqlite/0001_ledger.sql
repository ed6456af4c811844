-- The ledger: accounts, API keys, the append-only price ledger and one usage record per
-- request. Money is TEXT holding an exact decimal (SQLite has no exact decimal type);
-- times are INTEGER milliseconds since the Unix epoch, UTC.

CREATE TABLE accounts (
    id          INTEGER PRIMARY KEY,
    name        TEXT NOT NULL UNIQUE,
    created_at  INTEGER NOT NULL
);

-- A key is stored only as the SHA-256 of its secret, plus a short prefix an operator can
-- recognise. The secret itself is shown once, at creation.
CREATE TABLE api_keys (
    id          INTEGER PRIMARY KEY,
    account_id  INTEGER NOT NULL REFERENCES accounts(id),
    name        TEXT NOT NULL DEFAULT '',
    prefix      TEXT NOT NULL,
    secret_hash BLOB NOT NULL UNIQUE,
    created_at  INTEGER NOT NULL,
    expires_at  INTEGER,
    revoked_at  INTEGER
);
CREATE INDEX api_keys_account ON api_keys(account_id);

-- Append-only: a version, once written, is never updated, and never deleted while a usage
-- record refers to it (triggers below).
CREATE TABLE price_versions (
    id                  INTEGER PRIMARY KEY,
    model               TEXT NOT NULL,
    chip                TEXT NOT NULL,
    effective_from      INTEGER NOT NULL,
    input_per_1k        TEXT NOT NULL,
    cached_input_per_1k TEXT,
    output_per_1k       TEXT NOT NULL,
    per_request         TEXT NOT NULL,
    recorded_at         INTEGER NOT NULL,
    UNIQUE (model, chip, effective_from)
);

CREATE TRIGGER price_versions_are_immutable
BEFORE UPDATE ON price_versions
BEGIN
    SELECT RAISE(ABORT, 'price versions are immutable: add a new version instead');
END;

CREATE TRIGGER used_price_versions_are_kept
BEFORE DELETE ON price_versions
WHEN EXISTS (SELECT 1 FROM usage_records WHERE price_version_id = OLD.id)
BEGIN
    SELECT RAISE(ABORT, 'this price version priced usage records and cannot be deleted');
END;

-- One row per proxied request. request_id is unique so a retried batch never duplicates.
CREATE TABLE usage_records (
    id                INTEGER PRIMARY KEY,
    request_id        TEXT NOT NULL UNIQUE,
    account_id        INTEGER NOT NULL REFERENCES accounts(id),
    key_id            INTEGER NOT NULL REFERENCES api_keys(id),
    model             TEXT NOT NULL,
    chip              TEXT NOT NULL,
    deployment        TEXT,
    endpoint          TEXT NOT NULL,      -- chat | embeddings | rerank
    stream            INTEGER NOT NULL,   -- 0 | 1
    status            TEXT NOT NULL,      -- ok | partial | client_disconnected | upstream_error | timeout | unreachable
    http_status       INTEGER NOT NULL,
    error             TEXT,
    prompt_tokens     INTEGER NOT NULL,
    completion_tokens INTEGER NOT NULL,
    cached_tokens     INTEGER NOT NULL,   -- part of prompt_tokens, not in addition to it
    usage_source      TEXT NOT NULL,      -- reported | estimated | none
    price_version_id  INTEGER NOT NULL REFERENCES price_versions(id),
    cost              TEXT NOT NULL,      -- exact decimal CNY
    blocked           INTEGER NOT NULL,
    moderation        TEXT,               -- the backend's moderation verdict when it flagged the answer
    started_at        INTEGER NOT NULL,
    ended_at          INTEGER NOT NULL,
    latency_ms        INTEGER NOT NULL,
    ttft_ms           INTEGER
);
CREATE INDEX usage_records_account_time ON usage_records(account_id, started_at);
CREATE INDEX usage_records_key_time ON usage_records(key_id, started_at);

CREATE TRIGGER usage_records_are_immutable
BEFORE UPDATE ON usage_records
BEGIN
    SELECT RAISE(ABORT, 'usage records are immutable');
END;
