-- Billable units beyond tokens: prices per image, per task and per second of compute, and
-- the quantities a record carries of each (counted only for requests that completed).
ALTER TABLE price_versions
    ADD COLUMN per_image NUMERIC NOT NULL DEFAULT 0,
    ADD COLUMN per_task NUMERIC NOT NULL DEFAULT 0,
    ADD COLUMN per_second NUMERIC NOT NULL DEFAULT 0;

ALTER TABLE usage_records
    ADD COLUMN images BIGINT NOT NULL DEFAULT 0,
    ADD COLUMN tasks BIGINT NOT NULL DEFAULT 0,
    ADD COLUMN compute_ms BIGINT NOT NULL DEFAULT 0;
