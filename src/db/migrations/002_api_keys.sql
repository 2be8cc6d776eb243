-- API keys (each by its sha256, never the key itself), and the name of the key that owns each
-- upload and run.

CREATE TABLE api_keys (
    name      TEXT PRIMARY KEY,
    sha256    TEXT NOT NULL UNIQUE,
    admin     INTEGER NOT NULL DEFAULT 0,
    created   INTEGER NOT NULL,
    last_used INTEGER,
    revoked   INTEGER
) STRICT;

ALTER TABLE uploads ADD COLUMN owner TEXT;
ALTER TABLE runs ADD COLUMN owner TEXT;
