-- A key's page of its runs walks its own runs newest first, not everyone's.

CREATE INDEX runs_by_owner ON runs (owner, seq);
