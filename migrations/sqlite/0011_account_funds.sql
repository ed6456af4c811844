-- Each account's money as running totals, so that a balance is read, never summed from
-- the records: what was topped up and what its usage records cost, exact decimal text.
-- They move in the same transaction as the rows they sum (a top-up's insert, the import of
-- usage records; replays add nothing), kept by tollgate's code since SQLite's arithmetic
-- on text is floating point. NULL until computed once from the ledger: accounts of a
-- ledger made before this migration are summed exactly by the first process that opens it.
CREATE TABLE account_funds (
    account_id INTEGER PRIMARY KEY REFERENCES accounts(id),
    topped_up  TEXT,
    spent      TEXT
);

INSERT INTO account_funds (account_id) SELECT id FROM accounts;

CREATE TRIGGER accounts_have_funds
AFTER INSERT ON accounts
BEGIN
    INSERT INTO account_funds (account_id, topped_up, spent) VALUES (NEW.id, '0', '0');
END;
