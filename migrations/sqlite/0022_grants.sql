-- Credit grants: money given to an account, paid or promotional, that its usage burns
-- before its balance (by priority, 0 first, then the soonest expiry, then the oldest), or a
-- quota of tokens of one model (`model`, `tokens`; its `amount` 0), burned first by that
-- model's records, each paying for as many of a record's tokens as it holds. A
-- record burns the grants in force when its request started, in the transaction that
-- inserts it (`store::grants::burn_sqlite`), each use a row of `grant_uses`; what is left
-- when a grant expires is released (`released`), never spent. `account_funds.granted` is
-- what grants have paid of the account's records (so the balance is top-ups − charges +
-- granted) and `grant_pool` what the open grants still hold (admission counts it as
-- money): a burn moves an amount from the pool to `granted`, so admission's figure does
-- not change; a grant opening or closing (its effective and expiry times, `state`) moves
-- the pool. Money is exact decimal TEXT, kept by tollgate's code.
CREATE TABLE grants (
    id              INTEGER PRIMARY KEY,
    account_id      INTEGER NOT NULL REFERENCES accounts(id),
    amount          TEXT NOT NULL,
    remaining       TEXT NOT NULL,
    model           TEXT,
    tokens          INTEGER CHECK (tokens > 0),
    remaining_tokens INTEGER CHECK (remaining_tokens >= 0),
    kind            TEXT NOT NULL CHECK (kind IN ('paid', 'promotional')),
    priority        INTEGER NOT NULL CHECK (priority BETWEEN 0 AND 100),
    effective_at    INTEGER NOT NULL,
    expires_at      INTEGER,
    state           TEXT NOT NULL CHECK (state IN ('pending', 'open', 'closed')),
    released        TEXT,
    reason          TEXT NOT NULL,
    actor           TEXT NOT NULL,
    idempotency_key TEXT NOT NULL,
    created_at      INTEGER NOT NULL,
    UNIQUE (account_id, idempotency_key)
);
CREATE INDEX grants_of_account ON grants(account_id);
-- What the upkeep opens and closes: few rows, the grants not yet closed.
CREATE INDEX grants_due ON grants(state) WHERE state <> 'closed';

CREATE TABLE grant_uses (
    grant_id   INTEGER NOT NULL REFERENCES grants(id),
    account_id INTEGER NOT NULL,
    request_id TEXT NOT NULL,
    at         INTEGER NOT NULL,   -- the record's start, ms since the epoch
    amount     TEXT NOT NULL,
    tokens     INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (grant_id, request_id)
);
CREATE INDEX grant_uses_account_time ON grant_uses(account_id, at);

ALTER TABLE account_funds ADD COLUMN granted TEXT NOT NULL DEFAULT '0';
ALTER TABLE account_funds ADD COLUMN grant_pool TEXT NOT NULL DEFAULT '0';
