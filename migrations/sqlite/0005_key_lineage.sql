-- A key's lineage: the id of the first key of its rotation chain. Rate limits belong to
-- the lineage, so a rotated key's old and new secrets share one budget.
-- NULL means the key is the first of its chain (lineage = its own id).

ALTER TABLE api_keys ADD COLUMN lineage_id INTEGER REFERENCES api_keys(id);

-- (No column changes for this, noted here for readers of the schema:
-- usage_records.usage_source may also be 'capped' (reported usage beyond the spending
-- hold, billed at the hold) or 'suspect' (reported usage beyond
-- metering.max_reported_tokens, billed at tollgate's estimate).)
