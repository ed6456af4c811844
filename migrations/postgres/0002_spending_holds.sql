-- Spending holds shared by replicas. Each account's money is one row of account_funds:
-- what was topped up, what its usage records cost, and what pending holds reserve. A hold
-- is reserved by one conditional UPDATE of that row (checked by rows affected, never
-- check-then-deduct), posted when the request's usage record is inserted (by the trigger
-- below, in the same transaction, so a replayed record posts nothing twice), or voided:
-- when its request ends without a record, or by the reconciler once it expires (its
-- replica died). Every figure is kept by triggers on the tables the money comes from, so
-- no code path can move money without them.

CREATE TABLE account_funds (
    account_id BIGINT PRIMARY KEY REFERENCES accounts(id),
    topped_up  NUMERIC NOT NULL DEFAULT 0,
    spent      NUMERIC NOT NULL DEFAULT 0,
    held       NUMERIC NOT NULL DEFAULT 0 CHECK (held >= 0)
);

CREATE TABLE holds (
    request_id TEXT PRIMARY KEY,
    account_id BIGINT NOT NULL REFERENCES accounts(id),
    amount     NUMERIC NOT NULL CHECK (amount >= 0),
    state      TEXT NOT NULL DEFAULT 'pending',      -- pending | posted | voided
    replica    TEXT NOT NULL,                        -- who reserved it (for operators)
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL
);
CREATE INDEX holds_pending_expiry ON holds(expires_at) WHERE state = 'pending';

INSERT INTO account_funds (account_id, topped_up, spent)
SELECT a.id,
       COALESCE((SELECT SUM(amount) FROM topups t WHERE t.account_id = a.id), 0),
       COALESCE((SELECT SUM(cost) FROM usage_records u WHERE u.account_id = a.id), 0)
FROM accounts a;

CREATE FUNCTION open_account_funds() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO account_funds (account_id) VALUES (NEW.id);
    RETURN NULL;
END;
$$;
CREATE TRIGGER accounts_have_funds AFTER INSERT ON accounts
    FOR EACH ROW EXECUTE FUNCTION open_account_funds();

CREATE FUNCTION credit_topups() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE account_funds f SET topped_up = f.topped_up + t.amount
    FROM (SELECT account_id, SUM(amount) AS amount FROM inserted GROUP BY account_id) t
    WHERE f.account_id = t.account_id;
    RETURN NULL;
END;
$$;
CREATE TRIGGER topups_credit AFTER INSERT ON topups
    REFERENCING NEW TABLE AS inserted
    FOR EACH STATEMENT EXECUTE FUNCTION credit_topups();

-- Only the records a statement really inserted are in `inserted` (ON CONFLICT DO NOTHING
-- leaves replays out), so each record is charged once and posts its hold once.
CREATE FUNCTION post_usage() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    WITH posted AS (
        UPDATE holds h SET state = 'posted'
        FROM inserted i
        WHERE h.request_id = i.request_id AND h.state = 'pending'
        RETURNING h.account_id, h.amount
    ), released AS (
        SELECT account_id, SUM(amount) AS amount FROM posted GROUP BY account_id
    ), charged AS (
        SELECT account_id, SUM(cost) AS cost FROM inserted GROUP BY account_id
    )
    UPDATE account_funds f
    SET spent = f.spent + c.cost, held = f.held - COALESCE(r.amount, 0)
    FROM charged c LEFT JOIN released r USING (account_id)
    WHERE f.account_id = c.account_id;
    RETURN NULL;
END;
$$;
CREATE TRIGGER usage_records_post AFTER INSERT ON usage_records
    REFERENCING NEW TABLE AS inserted
    FOR EACH STATEMENT EXECUTE FUNCTION post_usage();

-- Voiding a hold gives its amount back, whoever voids it.
CREATE FUNCTION release_voided_holds() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE account_funds f SET held = f.held - v.amount
    FROM (SELECT n.account_id, SUM(n.amount) AS amount
          FROM voided n JOIN before o USING (request_id)
          WHERE n.state = 'voided' AND o.state = 'pending'
          GROUP BY n.account_id) v
    WHERE f.account_id = v.account_id;
    RETURN NULL;
END;
$$;
CREATE TRIGGER holds_release AFTER UPDATE ON holds
    REFERENCING OLD TABLE AS before NEW TABLE AS voided
    FOR EACH STATEMENT EXECUTE FUNCTION release_voided_holds();
