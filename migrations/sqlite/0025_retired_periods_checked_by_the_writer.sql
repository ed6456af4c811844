-- A record of a retired period is refused by the ledger writer (`store::usage::insert`),
-- which reads the retired day once for a batch, in the transaction that inserts it and
-- under its write lock, and refuses the whole batch if any of its records started before
-- that day; every insert of `usage_rows` is the writer's (the gateway's records and
-- imports alike). The trigger did the same for every row inserted, running a trigger
-- program (its frame, and a cursor on `usage_retired`) per row.
DROP TRIGGER retired_periods_take_no_records;
