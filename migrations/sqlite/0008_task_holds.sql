-- A task keeps its spending hold until it ends: the amount held, so that a gateway that
-- restarts holds its pending tasks' worst cases again. Money is exact text.
ALTER TABLE tasks ADD COLUMN held TEXT NOT NULL DEFAULT '0';
