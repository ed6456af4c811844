-- Asynchronous tasks (Zhipu's async chat, and later image and workflow tasks): recorded when
-- the backend accepts one, so that it is billed exactly once, when a poll first sees it
-- succeed. Its usage record has the submission's request id, so a second record of the
-- same task is refused by the ledger itself, whichever poll, replica or restart writes it.
CREATE TABLE tasks (
    request_id   TEXT PRIMARY KEY,
    task_id      TEXT NOT NULL,
    account_id   BIGINT NOT NULL REFERENCES accounts(id),
    key_id       BIGINT NOT NULL REFERENCES api_keys(id),
    model        TEXT NOT NULL,
    chip         TEXT NOT NULL,
    endpoint     TEXT NOT NULL,
    submitted_at BIGINT NOT NULL,
    state        TEXT NOT NULL DEFAULT 'pending',
    ended_at     BIGINT,
    UNIQUE (task_id, model, chip)
);
CREATE INDEX tasks_task_id ON tasks(task_id);
CREATE INDEX tasks_pending ON tasks(submitted_at) WHERE state = 'pending';
