-- Wrong passwords given at the console's sign-in, one row per email and per address
-- (`subject`: 'email:…' or 'address:…'), kept for the throttle's window so that every
-- replica counts the same failures (`domain::people::throttle`): a guesser spread over
-- replicas gets one allowance, not one each. A right password removes its email's rows;
-- the hourly upkeep removes those past the window.
CREATE TABLE sign_in_failures (
    subject TEXT NOT NULL,
    at      BIGINT NOT NULL   -- ms since the epoch
);
CREATE INDEX sign_in_failures_subject_at ON sign_in_failures(subject, at);
