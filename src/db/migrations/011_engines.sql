-- Runs go to one of several Docker engines (`[[engines]]`): `runs.engine` is the one a run went
-- to when it left the queue (NULL while queued, and for runs from before engines were recorded:
-- the server looks for their containers on its first engine, the only one it had). `engines`
-- holds the engines an operator drained (`precheck-server engines drain`) or resumed; an engine
-- without a row takes runs.

ALTER TABLE runs ADD COLUMN engine TEXT;
CREATE TABLE engines (
    name    TEXT PRIMARY KEY,
    drained INTEGER NOT NULL,
    changed INTEGER NOT NULL
) STRICT;
