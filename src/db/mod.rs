//! The only SQL in the server: the schema and its migrations, and typed queries.
//!
//! One SQLite connection lives on its own thread; [`Db`] is a cloneable handle that sends closures
//! to it and awaits their answers, so no SQLite call ever runs on an async worker. The database is
//! the truth of every run's state.
//!
//! This file holds the handle, the migrations (`migrations/NNN_name.sql`, run in order) and the
//! conversions every table needs. Each other file is one `impl Db` block over one table or domain,
//! with its types and row mappers: `uploads`, `runs` (what changes a run: create, claim, finish,
//! cancel, requeue, delete, prune, idempotency keys), `run_list` (what reads runs: one, pages,
//! counts, queue positions), `projects` (projects, their files and blobs, jobs), `keys`,
//! `webhooks` (deliveries) and `system` (the health row, the storage folder's names). A file may
//! use another's row helpers, never in a circle: `runs` uses `run_list`, `uploads` and `webhooks`;
//! `projects` uses `run_list` and `runs`; the others use only this file.

mod engines;
mod keys;
mod projects;
mod run_list;
mod runs;
mod system;
mod uploads;
mod webhooks;

use std::path::Path;
use std::sync::mpsc;

use anyhow::{Context, Result, anyhow};
use rusqlite::{Connection, ErrorCode, OpenFlags, TransactionBehavior};
use time::OffsetDateTime;
use tokio::sync::oneshot;
use uuid::Uuid;

pub use keys::StoredKey;
pub use projects::{CreateJobError, DeleteProject, PutFile};
pub use run_list::RunFilter;
pub use runs::{Cancel, CreateRunError, Created, DeleteRun, Idempotency, KeyUse, NewRun};
pub use system::KnownNames;
pub use uploads::DeleteUpload;
pub use webhooks::Delivery;

type Job = Box<dyn FnOnce(&mut Connection) + Send>;

/// How long a statement waits for another process's write lock before it fails.
pub const BUSY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Why a database call failed, when it is the disk's or another process's doing rather than a
/// fault: a caller can say what to do, or try again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trouble {
    /// The disk (or the database's size limit) is full.
    Full,
    /// Another process held the lock for longer than [`BUSY_TIMEOUT`].
    Busy,
    /// The file or its file system cannot be written.
    ReadOnly,
}

/// The [`Trouble`] behind an error from [`Db`], if any; a file write's full disk is
/// [`Trouble::Full`] too.
pub fn trouble(e: &anyhow::Error) -> Option<Trouble> {
    e.chain().find_map(|cause| {
        if cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::StorageFull)
        {
            return Some(Trouble::Full);
        }
        if let Some(rusqlite::Error::SqliteFailure(f, _)) = cause.downcast_ref::<rusqlite::Error>()
        {
            return match f.code {
                ErrorCode::DiskFull => Some(Trouble::Full),
                ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked => Some(Trouble::Busy),
                ErrorCode::ReadOnly => Some(Trouble::ReadOnly),
                _ => None,
            };
        }
        None
    })
}

/// A handle to the database thread.
#[derive(Clone)]
pub struct Db {
    jobs: mpsc::Sender<Job>,
}

/// Each entry moves the schema one version on; `PRAGMA user_version` says how many have run. A
/// file that has run somewhere is never edited: a change is a new file at the end.
const MIGRATIONS: &[&str] = &[
    include_str!("migrations/001_uploads_and_prechecks.sql"),
    include_str!("migrations/002_api_keys.sql"),
    include_str!("migrations/003_upload_cells.sql"),
    include_str!("migrations/004_projects.sql"),
    include_str!("migrations/005_runs_of_every_kind.sql"),
    include_str!("migrations/006_webhooks_and_idempotency.sql"),
    include_str!("migrations/007_runs_by_owner.sql"),
    include_str!("migrations/008_idempotency_request.sql"),
    include_str!("migrations/009_start_sent_and_health.sql"),
    include_str!("migrations/010_upload_die.sql"),
    include_str!("migrations/011_engines.sql"),
];

impl Db {
    /// Opens (or creates) the database file and brings its schema up to date. Nothing is deleted.
    pub fn open(path: &Path) -> Result<Db> {
        let conn = Connection::open(path)
            .with_context(|| format!("cannot open database {}", path.display()))?;
        Db::start(conn, path)
    }

    /// Opens a database the server has created; a missing file is an error, not a new database.
    pub fn open_existing(path: &Path) -> Result<Db> {
        let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let conn = Connection::open_with_flags(path, flags)
            .with_context(|| format!("cannot open database {}", path.display()))?;
        Db::start(conn, path)
    }

    fn start(mut conn: Connection, path: &Path) -> Result<Db> {
        // SQLite opens a file it may not write read-only without a word; every write would
        // then fail while reads work.
        if conn.is_readonly(rusqlite::MAIN_DB)? {
            return Err(anyhow!(
                "the database {} is read-only: make it (and its folder) writable by the server's user",
                path.display()
            ));
        }
        conn.busy_timeout(BUSY_TIMEOUT)?;
        // Every transaction takes the write lock when it begins: one that read first and
        // then wrote could not wait for another writer (SQLite answers "database is locked"
        // at once rather than let a stale read go on to write).
        conn.set_transaction_behavior(TransactionBehavior::Immediate);
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        migrate(&mut conn)
            .with_context(|| format!("cannot migrate database {}", path.display()))?;
        let (jobs, receiver) = mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("sqlite".into())
            .spawn(move || {
                for job in receiver {
                    job(&mut conn);
                }
            })
            .context("cannot start the database thread")?;
        Ok(Db { jobs })
    }

    /// Runs `f` on the database thread and returns its answer.
    async fn call<R, F>(&self, f: F) -> Result<R>
    where
        R: Send + 'static,
        F: FnOnce(&mut Connection) -> rusqlite::Result<R> + Send + 'static,
    {
        let (tx, rx) = oneshot::channel();
        self.jobs
            .send(Box::new(move |conn| {
                let _ = tx.send(f(conn));
            }))
            .map_err(|_| anyhow!("the database thread has stopped"))?;
        let answer = rx
            .await
            .map_err(|_| anyhow!("the database thread has stopped"))?;
        answer.context("database error")
    }
}

fn migrate(conn: &mut Connection) -> Result<()> {
    let tx = conn.transaction()?;
    let version: usize =
        tx.pragma_query_value(None, "user_version", |r| r.get::<_, i64>(0))? as usize;
    if version > MIGRATIONS.len() {
        return Err(anyhow!(
            "its schema is version {version}, newer than this precheck-server knows ({}): use a newer binary",
            MIGRATIONS.len()
        ));
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(version) {
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", (i + 1) as i64)?;
    }
    Ok(tx.commit()?)
}

/// The time a `SELECT MIN(...)` of a time column gives, if any row has one.
fn earliest(c: &Connection, sql: &str) -> rusqlite::Result<Option<OffsetDateTime>> {
    let t: Option<i64> = c.query_row(sql, [], |r| r.get(0))?;
    t.map(from_micros).transpose()
}

fn micros(t: OffsetDateTime) -> i64 {
    (t.unix_timestamp_nanos() / 1000) as i64
}

fn from_micros(us: i64) -> rusqlite::Result<OffsetDateTime> {
    OffsetDateTime::from_unix_timestamp_nanos(us as i128 * 1000)
        .map_err(|e| bad_value(e.to_string()))
}

fn parse_uuid(s: &str) -> rusqlite::Result<Uuid> {
    Uuid::parse_str(s).map_err(|e| bad_value(format!("bad id {s:?}: {e}")))
}

fn bad_value(message: String) -> rusqlite::Error {
    rusqlite::Error::ToSqlConversionFailure(message.into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::fixtures::{new_run, now, params, upload};
    use crate::model::{Outcome, RunKind, RunStatus, Scope};

    /// The schema version of the database file at `path`, read beside the [`Db`] that has it open.
    fn user_version(path: &Path) -> usize {
        let conn = Connection::open(path).unwrap();
        conn.pragma_query_value(None, "user_version", |r| r.get::<_, i64>(0))
            .unwrap() as usize
    }

    #[test]
    fn every_migration_file_runs_once_and_user_version_counts_them() {
        let folder = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/db/migrations");
        let mut names: Vec<String> = std::fs::read_dir(&folder)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|name| name.ends_with(".sql"))
            .collect();
        names.sort();
        // A file left out of MIGRATIONS (or put in out of order) would never run, or run at
        // another version than its number says.
        assert_eq!(names.len(), MIGRATIONS.len(), "{names:?}");
        for (i, name) in names.iter().enumerate() {
            assert!(name.starts_with(&format!("{:03}_", i + 1)), "{name}");
            let text = std::fs::read_to_string(folder.join(name)).unwrap();
            assert_eq!(text, MIGRATIONS[i], "{name} is not entry {i} of MIGRATIONS");
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db.sqlite");
        let db = Db::open(&path).unwrap();
        assert_eq!(user_version(&path), names.len());
        drop(db);
        let _db = Db::open(&path).unwrap();
        assert_eq!(user_version(&path), names.len());
    }

    #[tokio::test]
    async fn a_new_database_works_and_works_again_when_opened_again() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db.sqlite");
        let db = Db::open(&path).unwrap();
        db.check_writable(now()).await.unwrap();
        let u = upload(time::Duration::minutes(5));
        db.insert_upload(u.clone()).await.unwrap();
        let (first, second) = (Uuid::new_v4(), Uuid::new_v4());
        for id in [first, second] {
            db.create_run(id, params(u.id), Scope::All, new_run())
                .await
                .unwrap()
                .unwrap();
        }
        assert_eq!(db.claim_next_run(now()).await.unwrap().unwrap().id, first);
        assert!(
            db.insert_api_key("ci".into(), "aa".into(), false, now())
                .await
                .unwrap()
        );
        let project = crate::db::fixtures::project();
        db.create_project(project.clone()).await.unwrap();
        drop(db);

        // Opened again, nothing is migrated twice and every table reads and writes as before.
        for db in [Db::open(&path).unwrap(), Db::open_existing(&path).unwrap()] {
            assert_eq!(user_version(&path), MIGRATIONS.len());
            db.check_writable(now()).await.unwrap();
            assert_eq!(db.upload(u.id).await.unwrap().unwrap().expires_at, None);
            let run = db.run(first).await.unwrap().unwrap();
            assert_eq!(run.status, RunStatus::Running);
            assert_eq!(db.run(second).await.unwrap().unwrap().queue, Some((1, 1)));
            assert_eq!(db.api_keys().await.unwrap()[0].name, "ci");
            assert!(db.project(project.id).await.unwrap().is_some());
        }
        let db = Db::open(&path).unwrap();
        assert!(
            db.finish_run(first, Outcome::completed(), now())
                .await
                .unwrap()
        );
        assert_eq!(db.claim_next_run(now()).await.unwrap().unwrap().id, second);
        assert_eq!(db.queue_counts().await.unwrap(), (0, 1));
    }

    #[tokio::test]
    async fn a_database_of_every_older_version_is_brought_up_to_date() {
        for version in 0..MIGRATIONS.len() {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("db.sqlite");
            {
                let conn = Connection::open(&path).unwrap();
                for sql in &MIGRATIONS[..version] {
                    conn.execute_batch(sql).unwrap();
                }
                conn.pragma_update(None, "user_version", version as i64)
                    .unwrap();
            }
            let db = Db::open(&path).unwrap();
            assert_eq!(user_version(&path), MIGRATIONS.len(), "from {version}");
            db.check_writable(now()).await.unwrap();
            let u = upload(time::Duration::minutes(5));
            db.insert_upload(u.clone()).await.unwrap();
            db.create_run(Uuid::new_v4(), params(u.id), Scope::All, new_run())
                .await
                .unwrap()
                .unwrap();
            assert_eq!(db.runs(vec![], Scope::All).await.unwrap().len(), 1);
        }
    }

    #[test]
    fn a_database_newer_than_the_binary_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db.sqlite");
        Connection::open(&path)
            .unwrap()
            .pragma_update(None, "user_version", MIGRATIONS.len() as i64 + 1)
            .unwrap();
        let e = Db::open(&path).err().unwrap();
        assert!(format!("{e:#}").contains("use a newer binary"), "{e:#}");
    }

    #[tokio::test]
    async fn runs_of_schema_4_become_prechecks_of_schema_5() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db.sqlite");
        {
            let conn = Connection::open(&path).unwrap();
            for sql in &MIGRATIONS[..4] {
                conn.execute_batch(sql).unwrap();
            }
            conn.pragma_update(None, "user_version", 4).unwrap();
            conn.execute(
                "INSERT INTO runs (id, created, upload_id, top_cell, die_id, slot, cob, image, status, owner)
                 VALUES ('00000000-0000-4000-8000-000000000001', 1, '00000000-0000-4000-8000-000000000002',
                         'chip_top', 'FFFFFFFF', '1x1', 1, 'img', 'completed', 'alice')",
                [],
            )
            .unwrap();
        }
        let db = Db::open(&path).unwrap();
        let runs = db.runs(vec![], Scope::All).await.unwrap();
        assert_eq!(runs.len(), 1);
        assert_eq!(runs[0].kind(), RunKind::Precheck);
        let p = runs[0].precheck().unwrap();
        assert_eq!((p.top_cell.as_str(), p.cob), ("chip_top", true));
        assert_eq!(runs[0].owner.as_deref(), Some("alice"));
        // New runs follow the old ones.
        let u = upload(time::Duration::minutes(5));
        db.insert_upload(u.clone()).await.unwrap();
        let id = Uuid::new_v4();
        db.create_run(id, params(u.id), Scope::All, new_run())
            .await
            .unwrap()
            .unwrap();
        let runs = db.runs(vec![], Scope::All).await.unwrap();
        assert_eq!(runs[0].id, id);
    }
}

/// What the tests of every table make their rows from.
#[cfg(test)]
mod fixtures {
    use time::OffsetDateTime;
    use uuid::Uuid;

    use super::NewRun;
    use crate::model::{LayoutFormat, PrecheckParams, Project, Upload};

    pub(super) fn now() -> OffsetDateTime {
        OffsetDateTime::now_utc()
    }

    pub(super) fn new_run() -> NewRun {
        NewRun {
            image: "img".into(),
            owner: None,
            notify_url: None,
            idempotency: None,
            created: now(),
        }
    }

    /// An empty project named "p".
    pub(super) fn project() -> Project {
        Project {
            id: Uuid::new_v4(),
            name: "p".into(),
            description: String::new(),
            owner: None,
            created: now(),
            updated: now(),
            files: 0,
            size: 0,
        }
    }

    pub(super) fn upload(expires_in: time::Duration) -> Upload {
        Upload {
            id: Uuid::new_v4(),
            name: "chip.gds".into(),
            size: 10,
            sha256: "ab".into(),
            format: LayoutFormat::Gds,
            created: now(),
            expires_at: Some(now() + expires_in),
            expired: false,
            owner: None,
            layout: None,
        }
    }

    pub(super) fn params(upload_id: Uuid) -> PrecheckParams {
        PrecheckParams {
            upload_id,
            top_cell: "chip_top".into(),
            die_id: "FFFFFFFF".into(),
            slot: "1x1".into(),
            cob: false,
        }
    }
}
