-- Replicas alive: each gateway on the ledger writes its heartbeat here every few seconds.
-- While Redis is down, each replica gives a key its share of the limit: limit / alive.
CREATE TABLE replicas (
    name    TEXT PRIMARY KEY,                    -- host/pid/n
    seen_at BIGINT NOT NULL
);
