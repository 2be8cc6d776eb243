//! What concerns the database as a whole: whether it takes writes (the `health` row) and which
//! names the storage folder's entries should have (every table that names a file).

use std::collections::HashSet;

use anyhow::Result;
use time::OffsetDateTime;

use super::{Db, micros};

/// The names the storage folder's entries should have (see [`Db::known_names`]).
pub struct KnownNames {
    pub runs: HashSet<String>,
    pub uploads: HashSet<String>,
    pub blobs: HashSet<String>,
}

impl Db {
    /// Writes one row: a database that answers reads may still refuse writes (a read-only
    /// file system, a full disk, another process's lock).
    pub async fn check_writable(&self, now: OffsetDateTime) -> Result<()> {
        self.call(move |c| {
            c.execute(
                "INSERT INTO health (id, checked) VALUES (1, ?1)
                 ON CONFLICT (id) DO UPDATE SET checked = excluded.checked",
                [micros(now)],
            )
            .map(drop)
        })
        .await
    }

    /// What the storage folder should hold: the ids of every run and of every upload that has
    /// not expired, and the sha256 of every blob a project file or a job names.
    pub async fn known_names(&self) -> Result<KnownNames> {
        self.call(|c| {
            let names = |sql: &str| -> rusqlite::Result<HashSet<String>> {
                let mut stmt = c.prepare(sql)?;
                let rows = stmt.query_map([], |r| r.get::<_, String>(0))?;
                rows.collect()
            };
            Ok(KnownNames {
                runs: names("SELECT id FROM runs")?,
                uploads: names("SELECT id FROM uploads WHERE expired = 0")?,
                blobs: names(
                    "SELECT sha256 FROM project_files UNION SELECT sha256 FROM job_files",
                )?,
            })
        })
        .await
    }
}
