-- Listings of every account's records, newest first, and reports over a period read this
-- index instead of the whole table (SQLite ends every index with the row id, so it also
-- orders ties by id, the listing's keyset).
CREATE INDEX usage_records_time ON usage_records(started_at);
