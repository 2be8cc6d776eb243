-- What an upload's layout holds: its database unit, and every cell name in order with the top
-- cells marked.

ALTER TABLE uploads ADD COLUMN dbu_microns REAL;

CREATE TABLE upload_cells (
    upload_id TEXT NOT NULL REFERENCES uploads (id) ON DELETE CASCADE,
    seq       INTEGER NOT NULL,
    name      TEXT NOT NULL,
    top       INTEGER NOT NULL,
    PRIMARY KEY (upload_id, seq)
) STRICT;
