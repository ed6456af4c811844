-- Spending limits. A prepaid account spends its top-ups; a postpaid account may owe up to
-- its credit limit (NULL: no limit). Either way: available = top-ups - charges + credit,
-- where charges are the costs of its usage records. Money is exact decimal TEXT.

ALTER TABLE accounts ADD COLUMN billing_mode TEXT NOT NULL DEFAULT 'postpaid';
ALTER TABLE accounts ADD COLUMN credit_limit TEXT;

-- Credits to an account (prepayments, or payments of a postpaid bill). Append-only; the
-- idempotency key makes a retried top-up credit once.
CREATE TABLE topups (
    id              INTEGER PRIMARY KEY,
    account_id      INTEGER NOT NULL REFERENCES accounts(id),
    amount          TEXT NOT NULL,
    idempotency_key TEXT NOT NULL,
    note            TEXT NOT NULL DEFAULT '',
    created_at      INTEGER NOT NULL,
    UNIQUE (account_id, idempotency_key)
);

CREATE TRIGGER topups_are_immutable
BEFORE UPDATE ON topups
BEGIN
    SELECT RAISE(ABORT, 'top-ups are immutable');
END;

CREATE TRIGGER topups_are_kept
BEFORE DELETE ON topups
BEGIN
    SELECT RAISE(ABORT, 'top-ups cannot be deleted');
END;
