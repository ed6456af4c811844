-- A task keeps its spending hold until it ends (the hold itself is in `holds`, posted by
-- the task's record): the amount, for operators and for gateways on SQLite.
ALTER TABLE tasks ADD COLUMN held NUMERIC NOT NULL DEFAULT 0;
