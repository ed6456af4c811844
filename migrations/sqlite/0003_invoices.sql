-- Finalized invoices: the JSON document exactly as served, so every fetch returns the same
-- bytes whatever happens to prices or records later. Drafts are never stored.

CREATE TABLE invoices (
    id           TEXT PRIMARY KEY,          -- inv_<account id>_<YYYYMM>
    account_id   INTEGER NOT NULL REFERENCES accounts(id),
    period       TEXT NOT NULL,             -- YYYY-MM in the billing timezone
    document     TEXT NOT NULL,
    finalized_at INTEGER NOT NULL,
    UNIQUE (account_id, period)
);

CREATE TRIGGER invoices_are_immutable
BEFORE UPDATE ON invoices
BEGIN
    SELECT RAISE(ABORT, 'finalized invoices are immutable');
END;

CREATE TRIGGER invoices_are_kept
BEFORE DELETE ON invoices
BEGIN
    SELECT RAISE(ABORT, 'finalized invoices cannot be deleted');
END;
