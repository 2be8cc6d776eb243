-- When the server asked the engine to start a run's container: a run whose container is
-- still `created` after a stop was either never started (and can start over) or is being
-- started by the engine (and must not be started twice). A run that was running when the
-- server was upgraded may have been started: it counts as started, so a lost container still
-- fails it (as before the column) instead of running it again. `health` is the row
-- `/health` writes to know that writes work.

ALTER TABLE runs ADD COLUMN start_sent_at INTEGER;
UPDATE runs SET start_sent_at = started_at WHERE status = 'running';
CREATE TABLE health (
    id      INTEGER PRIMARY KEY CHECK (id = 1),
    checked INTEGER NOT NULL
) STRICT;
