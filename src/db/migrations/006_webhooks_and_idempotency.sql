-- Webhooks: where a run's end is POSTed, and each POST until it is delivered or given up;
-- a client's idempotency key, so that a retried create returns the run it made.

ALTER TABLE runs ADD COLUMN notify_url TEXT;
ALTER TABLE runs ADD COLUMN idempotency_key TEXT;
CREATE UNIQUE INDEX runs_by_idempotency_key ON runs (COALESCE(owner, ''), idempotency_key)
    WHERE idempotency_key IS NOT NULL;

CREATE TABLE deliveries (
    seq          INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id       TEXT NOT NULL,
    url          TEXT NOT NULL,
    created      INTEGER NOT NULL,
    attempts     INTEGER NOT NULL DEFAULT 0,
    next_attempt INTEGER NOT NULL,
    delivered_at INTEGER,
    given_up_at  INTEGER,
    last_error   TEXT
) STRICT;

CREATE INDEX deliveries_due ON deliveries (next_attempt)
    WHERE delivered_at IS NULL AND given_up_at IS NULL;
