-- What a record keeps of how it was served and counted, for the few that need it: the
-- backends passed over before the one that served (at their own limit, or refusing the
-- connection), and the counts as the backend reported them (or tollgate estimated them)
-- when the billed counts differ (capped, suspect). Both JSON text, NULL for the rest
-- (a nullable column without a default: adding it rewrites no partition).
ALTER TABLE usage_records ADD COLUMN attempts TEXT;
ALTER TABLE usage_records ADD COLUMN reported TEXT;
