-- Runs of every kind: the precheck columns become optional, jobs get theirs, and each job
-- keeps the project files it was given (their blobs), whatever happens to the project after.

CREATE TABLE runs_v5 (
    seq              INTEGER PRIMARY KEY AUTOINCREMENT,
    id               TEXT NOT NULL UNIQUE,
    kind             TEXT NOT NULL CHECK (kind IN ('precheck', 'simulation', 'build')),
    created          INTEGER NOT NULL,
    upload_id        TEXT,
    top_cell         TEXT,
    die_id           TEXT,
    slot             TEXT,
    cob              INTEGER,
    project_id       TEXT,
    tool             TEXT,
    top              TEXT,
    sources          TEXT,
    config           TEXT,
    image            TEXT NOT NULL,
    image_id         TEXT,
    status           TEXT NOT NULL
        CHECK (status IN ('queued', 'running', 'completed', 'failed', 'cancelled')),
    exit_code        INTEGER,
    error            TEXT,
    oom_killed       INTEGER NOT NULL DEFAULT 0,
    started_at       INTEGER,
    finished_at      INTEGER,
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    owner            TEXT,
    progress_step    INTEGER,
    progress_name    TEXT,
    progress_count   INTEGER
) STRICT;

INSERT INTO runs_v5 (seq, id, kind, created, upload_id, top_cell, die_id, slot, cob, image,
    image_id, status, exit_code, error, oom_killed, started_at, finished_at, cancel_requested, owner)
SELECT seq, id, kind, created, upload_id, top_cell, die_id, slot, cob, image,
    image_id, status, exit_code, error, oom_killed, started_at, finished_at, cancel_requested, owner
FROM runs;

DROP TABLE runs;
ALTER TABLE runs_v5 RENAME TO runs;
CREATE INDEX runs_by_status ON runs (status, seq);
CREATE INDEX runs_by_upload ON runs (upload_id);
CREATE INDEX runs_by_project ON runs (project_id, seq);

CREATE TABLE job_files (
    run_id TEXT NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    path   TEXT NOT NULL,
    size   INTEGER NOT NULL,
    sha256 TEXT NOT NULL,
    PRIMARY KEY (run_id, path)
) STRICT;

CREATE INDEX job_files_by_blob ON job_files (sha256);
