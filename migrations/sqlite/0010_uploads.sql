-- Files uploaded to a backend (ComfyUI's input images) are a billable unit: a price per
-- upload, and the uploads a record carries. Money is exact text.
ALTER TABLE price_versions ADD COLUMN per_upload TEXT NOT NULL DEFAULT '0';
ALTER TABLE usage_records ADD COLUMN uploads INTEGER NOT NULL DEFAULT 0;
