-- Projects: named sets of files, each file a blob named by its sha256.

CREATE TABLE projects (
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL,
    description TEXT NOT NULL,
    owner       TEXT,
    created     INTEGER NOT NULL,
    updated     INTEGER NOT NULL
) STRICT;

CREATE TABLE project_files (
    project_id TEXT NOT NULL REFERENCES projects (id) ON DELETE CASCADE,
    path       TEXT NOT NULL,
    size       INTEGER NOT NULL,
    sha256     TEXT NOT NULL,
    modified   INTEGER NOT NULL,
    PRIMARY KEY (project_id, path)
) STRICT;

CREATE INDEX project_files_by_blob ON project_files (sha256);
