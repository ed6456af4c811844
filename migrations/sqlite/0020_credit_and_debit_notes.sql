-- Credit and debit notes: corrections after the fact (a refund, a goodwill credit, a
-- charge missed), never an edit of records or of a final invoice. They are kept with the
-- top-ups, as the account's money in and out besides its usage: `kind` says which
-- (`topup`, `credit_note`, `debit_note`; `reservation`, a deployment's reserved hour:
-- 0021), a debit note's amount is negative, `period` is
-- the month it is about and `actor` who issued it. The running total `topped_up` sums
-- them all, so balances and holds count them at once; an invoice lists the notes issued
-- in its month (by `created_at`).
ALTER TABLE topups ADD COLUMN kind TEXT NOT NULL DEFAULT 'topup'
    CHECK (kind IN ('topup', 'credit_note', 'debit_note', 'reservation'));
ALTER TABLE topups ADD COLUMN period TEXT;
ALTER TABLE topups ADD COLUMN actor TEXT NOT NULL DEFAULT '';
CREATE INDEX topups_account_time ON topups(account_id, created_at);
