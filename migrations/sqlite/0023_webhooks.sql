-- Alerts by webhook: an outbox in the ledger, so an event survives restarts and is sent
-- by one replica at a time. Events come from the audit log (keys created or revoked,
-- invoices finalized, top-ups, notes, grants; `alert_cursor` is the last entry turned
-- into events, moved in the same transaction as the events it made) and from thresholds
-- crossed (`alert_states`: one row per rule that fired, so it fires once until it is
-- re-armed). Each event has one delivery per endpoint that wants it; a delivery is leased
-- by the replica sending it, retried with backoff until acknowledged (2xx) or given up,
-- and every attempt is kept.
CREATE TABLE webhook_events (
    id         TEXT PRIMARY KEY,          -- evt_<uuid>: what receivers deduplicate by
    type       TEXT NOT NULL,
    account_id INTEGER,
    payload    TEXT NOT NULL,             -- the JSON body sent
    created_at INTEGER NOT NULL
);

CREATE TABLE webhook_deliveries (
    event_id     TEXT NOT NULL REFERENCES webhook_events(id),
    endpoint     TEXT NOT NULL,
    state        TEXT NOT NULL CHECK (state IN ('pending', 'delivered', 'failed')),
    attempts     INTEGER NOT NULL DEFAULT 0,
    next_at      INTEGER NOT NULL,
    lease_owner  TEXT,
    lease_until  INTEGER,
    delivered_at INTEGER,
    PRIMARY KEY (event_id, endpoint)
);
CREATE INDEX webhook_deliveries_due ON webhook_deliveries(next_at) WHERE state = 'pending';

CREATE TABLE webhook_attempts (
    event_id TEXT NOT NULL,
    endpoint TEXT NOT NULL,
    at       INTEGER NOT NULL,
    status   INTEGER,                     -- the HTTP status, NULL when none came
    error    TEXT,
    ms       INTEGER NOT NULL
);
CREATE INDEX webhook_attempts_of ON webhook_attempts(event_id, endpoint);

CREATE TABLE alert_cursor (
    id      INTEGER PRIMARY KEY CHECK (id = 1),
    last_id INTEGER NOT NULL
);
-- Alerts start from now: the history before them is not sent.
INSERT INTO alert_cursor (id, last_id) SELECT 1, coalesce(max(id), 0) FROM audit_log;

CREATE TABLE alert_states (
    account_id INTEGER NOT NULL,
    rule       TEXT NOT NULL,
    fired_at   INTEGER NOT NULL,
    PRIMARY KEY (account_id, rule)
);
