-- Listings of every account's records, newest first by (started_at, id), and reports over
-- a period read this index instead of the whole table.
CREATE INDEX usage_records_time ON usage_records(started_at, id);
