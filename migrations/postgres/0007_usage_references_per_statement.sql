-- A usage record's account, key and price version are checked once per statement of
-- records instead of once per record. The three foreign keys ran a lookup and a row lock
-- for every record through a trigger of its own: about a third of PostgreSQL's work per
-- shipped record (bench/README.md). The statement trigger that charges the records now
-- refuses a batch naming a missing row, with the foreign-key SQLSTATE (23503), and locks
-- the few price versions the batch names, so a concurrent delete waits and then sees
-- the records. Accounts and keys are never deleted (keys are revoked), and now cannot be.

ALTER TABLE usage_records
    DROP CONSTRAINT usage_records_account_id_fkey,
    DROP CONSTRAINT usage_records_key_id_fkey,
    DROP CONSTRAINT usage_records_price_version_id_fkey;

CREATE TRIGGER accounts_are_kept BEFORE DELETE ON accounts
    FOR EACH ROW EXECUTE FUNCTION refuse('accounts cannot be deleted');
CREATE TRIGGER api_keys_are_kept BEFORE DELETE ON api_keys
    FOR EACH ROW EXECUTE FUNCTION refuse('API keys cannot be deleted: revoke them');

CREATE OR REPLACE FUNCTION post_usage() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM 1 FROM price_versions
    WHERE id IN (SELECT DISTINCT price_version_id FROM inserted)
    FOR KEY SHARE;
    IF EXISTS (
        SELECT 1 FROM inserted i
        WHERE NOT EXISTS (SELECT 1 FROM accounts a WHERE a.id = i.account_id)
           OR NOT EXISTS (SELECT 1 FROM api_keys k WHERE k.id = i.key_id)
           OR NOT EXISTS (SELECT 1 FROM price_versions p WHERE p.id = i.price_version_id)
    ) THEN
        RAISE foreign_key_violation USING
            MESSAGE = 'a usage record names an account, key or price version that does not exist';
    END IF;
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
