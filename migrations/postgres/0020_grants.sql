-- Credit grants (see migrations/sqlite/0022_grants.sql for the model): burned by
-- `store::grants::burn_postgres` in the transaction that inserts the records, with the
-- grants' rows locked; `account_funds.granted` and `grant_pool` move in the same
-- transactions as the grants they sum, so admission's figure (top-ups − charges + granted
-- + pool − held) never counts a grant twice.
CREATE TABLE grants (
    id              BIGSERIAL PRIMARY KEY,
    account_id      BIGINT NOT NULL REFERENCES accounts(id),
    amount          NUMERIC NOT NULL CHECK (amount >= 0),
    remaining       NUMERIC NOT NULL CHECK (remaining >= 0),
    model           TEXT,
    tokens          BIGINT CHECK (tokens > 0),
    remaining_tokens BIGINT CHECK (remaining_tokens >= 0),
    kind            TEXT NOT NULL CHECK (kind IN ('paid', 'promotional')),
    priority        INTEGER NOT NULL CHECK (priority BETWEEN 0 AND 100),
    effective_at    BIGINT NOT NULL,
    expires_at      BIGINT,
    state           TEXT NOT NULL CHECK (state IN ('pending', 'open', 'closed')),
    released        NUMERIC,
    reason          TEXT NOT NULL,
    actor           TEXT NOT NULL,
    idempotency_key TEXT NOT NULL,
    created_at      BIGINT NOT NULL,
    UNIQUE (account_id, idempotency_key),
    CHECK ((tokens IS NULL AND model IS NULL AND amount > 0)
           OR (tokens IS NOT NULL AND model IS NOT NULL AND amount = 0))
);
CREATE INDEX grants_of_account ON grants(account_id);
CREATE INDEX grants_due ON grants(state) WHERE state <> 'closed';

CREATE TABLE grant_uses (
    grant_id   BIGINT NOT NULL REFERENCES grants(id),
    account_id BIGINT NOT NULL,
    request_id TEXT NOT NULL,
    at         BIGINT NOT NULL,
    amount     NUMERIC NOT NULL CHECK (amount >= 0),
    tokens     BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (grant_id, request_id)
);
CREATE INDEX grant_uses_account_time ON grant_uses(account_id, at);

ALTER TABLE account_funds ADD COLUMN granted NUMERIC NOT NULL DEFAULT 0;
ALTER TABLE account_funds ADD COLUMN grant_pool NUMERIC NOT NULL DEFAULT 0 CHECK (grant_pool >= 0);
