-- Billable units beyond tokens: prices per image, per task and per second of compute, and
-- the quantities a record carries of each (counted only for requests that completed).
-- Money is exact text, as in every other price column.
ALTER TABLE price_versions ADD COLUMN per_image TEXT NOT NULL DEFAULT '0';
ALTER TABLE price_versions ADD COLUMN per_task TEXT NOT NULL DEFAULT '0';
ALTER TABLE price_versions ADD COLUMN per_second TEXT NOT NULL DEFAULT '0';

ALTER TABLE usage_records ADD COLUMN images INTEGER NOT NULL DEFAULT 0;
ALTER TABLE usage_records ADD COLUMN tasks INTEGER NOT NULL DEFAULT 0;
ALTER TABLE usage_records ADD COLUMN compute_ms INTEGER NOT NULL DEFAULT 0;
