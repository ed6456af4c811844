-- The console (`/console/`): the people who sign in, their sessions, and the audit log of
-- every change made through the console, the admin API or the CLI. Accounts gain a display
-- name in any script (beside the short `name`) and their own time zone (NULL: the billing
-- time zone).
ALTER TABLE accounts ADD COLUMN display_name TEXT NOT NULL DEFAULT '';
ALTER TABLE accounts ADD COLUMN time_zone TEXT;

CREATE TABLE console_users (
    id            INTEGER PRIMARY KEY,
    email         TEXT NOT NULL UNIQUE,              -- lower case
    password_hash TEXT NOT NULL,                     -- argon2id, PHC string
    role          TEXT NOT NULL CHECK (role IN ('operator', 'owner', 'member', 'viewer')),
    account_id    INTEGER REFERENCES accounts(id),   -- NULL for operators only
    created_at    INTEGER NOT NULL,
    disabled_at   INTEGER,
    CHECK ((role = 'operator') = (account_id IS NULL))
);
CREATE INDEX console_users_account ON console_users(account_id);

-- A session is found by the SHA-256 of its cookie, never by the cookie itself.
CREATE TABLE console_sessions (
    token_hash BLOB PRIMARY KEY,
    user_id    INTEGER NOT NULL REFERENCES console_users(id) ON DELETE CASCADE,
    csrf       TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    seen_at    INTEGER NOT NULL,
    address    TEXT NOT NULL DEFAULT ''
) WITHOUT ROWID;
CREATE INDEX console_sessions_user ON console_sessions(user_id);

CREATE TABLE audit_log (
    id         INTEGER PRIMARY KEY,
    at         INTEGER NOT NULL,
    actor      TEXT NOT NULL,                        -- 'console:<email>', 'admin:<sub>', 'cli'
    address    TEXT NOT NULL DEFAULT '',             -- where the change came from
    account_id INTEGER,                              -- the account it concerns, if any
    action     TEXT NOT NULL,                        -- e.g. 'key.create', 'account.top_up'
    target     TEXT NOT NULL,                        -- e.g. 'key:12'
    before     TEXT,                                 -- JSON; NULL when created
    after      TEXT                                  -- JSON; NULL when deleted
);
CREATE INDEX audit_log_account ON audit_log(account_id, id);

CREATE TRIGGER audit_log_kept BEFORE UPDATE ON audit_log
BEGIN
    SELECT RAISE(ABORT, 'the audit log is append-only');
END;
CREATE TRIGGER audit_log_kept_delete BEFORE DELETE ON audit_log
BEGIN
    SELECT RAISE(ABORT, 'the audit log is append-only');
END;

-- The console's task list of one account, newest first.
CREATE INDEX tasks_account ON tasks(account_id, submitted_at);
