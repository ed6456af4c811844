-- Prices narrower than a model × chip: a private deployment's own (`deployment`), an
-- account's own (`account`, its name), and the tiers of a price by the request's billed
-- prompt tokens (more than `prompt_tokens_over`, at most `prompt_tokens_up_to`, NULL for
-- no bound). '' and 0 for every price before. A price is now unique per model, chip,
-- deployment, account, tier and effective time, so the table is rebuilt with that
-- constraint (SQLite cannot change one in place): the usage shapes that name its versions
-- are checked at commit (deferred), once every version is back under its id.
PRAGMA defer_foreign_keys = ON;

CREATE TABLE price_versions_before AS SELECT * FROM price_versions;
DROP TABLE price_versions;

CREATE TABLE price_versions (
    id                  INTEGER PRIMARY KEY,
    model               TEXT NOT NULL,
    chip                TEXT NOT NULL,
    deployment          TEXT NOT NULL DEFAULT '',
    account             TEXT NOT NULL DEFAULT '',
    prompt_tokens_over  INTEGER NOT NULL DEFAULT 0,
    prompt_tokens_up_to INTEGER,
    effective_from      INTEGER NOT NULL,
    input_per_1k        TEXT NOT NULL,
    cached_input_per_1k TEXT,
    cache_write_per_1k  TEXT,
    output_per_1k       TEXT NOT NULL,
    per_request         TEXT NOT NULL,
    per_image           TEXT NOT NULL DEFAULT '0',
    per_task            TEXT NOT NULL DEFAULT '0',
    per_second          TEXT NOT NULL DEFAULT '0',
    per_upload          TEXT NOT NULL DEFAULT '0',
    recorded_at         INTEGER NOT NULL,
    UNIQUE (model, chip, deployment, account, prompt_tokens_over, effective_from)
);

INSERT INTO price_versions (id, model, chip, effective_from, input_per_1k,
    cached_input_per_1k, cache_write_per_1k, output_per_1k, per_request, per_image,
    per_task, per_second, per_upload, recorded_at)
SELECT id, model, chip, effective_from, input_per_1k, cached_input_per_1k,
       cache_write_per_1k, output_per_1k, per_request, per_image, per_task, per_second,
       per_upload, recorded_at
FROM price_versions_before;
DROP TABLE price_versions_before;

CREATE TRIGGER price_versions_are_immutable
BEFORE UPDATE ON price_versions
BEGIN
    SELECT RAISE(ABORT, 'price versions are immutable: add a new version instead');
END;

CREATE TRIGGER used_price_versions_are_kept
BEFORE DELETE ON price_versions
WHEN EXISTS (SELECT 1 FROM usage_hourly WHERE price_version_id = OLD.id)
BEGIN
    SELECT RAISE(ABORT, 'this price version priced usage records and cannot be deleted');
END;

CREATE TRIGGER shaped_price_versions_are_kept
BEFORE DELETE ON price_versions
WHEN EXISTS (SELECT 1 FROM usage_shapes WHERE price_version_id = OLD.id)
BEGIN
    SELECT RAISE(ABORT, 'this price version priced usage records and cannot be deleted');
END;
