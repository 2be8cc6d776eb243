-- The first schema: uploads (one layout file each) and the prechecks of them, queued in `seq`
-- order.

CREATE TABLE uploads (
    id         TEXT PRIMARY KEY,
    name       TEXT NOT NULL,
    size       INTEGER NOT NULL,
    sha256     TEXT NOT NULL,
    format     TEXT NOT NULL,
    created    INTEGER NOT NULL,
    expires_at INTEGER,
    expired    INTEGER NOT NULL DEFAULT 0
) STRICT;

CREATE TABLE runs (
    seq              INTEGER PRIMARY KEY AUTOINCREMENT,
    id               TEXT NOT NULL UNIQUE,
    kind             TEXT NOT NULL DEFAULT 'precheck',
    created          INTEGER NOT NULL,
    upload_id        TEXT NOT NULL,
    top_cell         TEXT NOT NULL,
    die_id           TEXT NOT NULL,
    slot             TEXT NOT NULL,
    cob              INTEGER NOT NULL,
    image            TEXT NOT NULL,
    image_id         TEXT,
    status           TEXT NOT NULL
        CHECK (status IN ('queued', 'running', 'completed', 'failed', 'cancelled')),
    exit_code        INTEGER,
    error            TEXT,
    oom_killed       INTEGER NOT NULL DEFAULT 0,
    started_at       INTEGER,
    finished_at      INTEGER,
    cancel_requested INTEGER NOT NULL DEFAULT 0
) STRICT;

CREATE INDEX runs_by_status ON runs (status, seq);
CREATE INDEX runs_by_upload ON runs (upload_id);
