//! The only SQL in the server: the schema and its migrations, and typed queries.
//!
//! One SQLite connection lives on its own thread; [`Db`] is a cloneable handle that sends closures
//! to it and awaits their answers, so no SQLite call ever runs on an async worker. The database is
//! the truth of every run's state.

use std::collections::HashSet;
use std::path::Path;
use std::sync::mpsc;

use anyhow::{Context, Result, anyhow};
use rusqlite::types::Value;
use rusqlite::{
    Connection, ErrorCode, OpenFlags, OptionalExtension, Row, TransactionBehavior, params,
};
use time::OffsetDateTime;
use tokio::sync::oneshot;
use uuid::Uuid;

use crate::layout::Layout;
use crate::model::{
    BuildParams, JobFile, LayoutFormat, Outcome, PrecheckParams, Progress, Project, ProjectFile,
    Run, RunKind, RunParams, RunStatus, Scope, SimulationParams, SimulationTool, Upload,
};

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

/// Each entry moves the schema one version on; `PRAGMA user_version` says how many have run.
const MIGRATIONS: &[&str] = &[
    r#"
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
"#,
    r#"
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
"#,
    r#"
ALTER TABLE uploads ADD COLUMN dbu_microns REAL;

CREATE TABLE upload_cells (
    upload_id TEXT NOT NULL REFERENCES uploads (id) ON DELETE CASCADE,
    seq       INTEGER NOT NULL,
    name      TEXT NOT NULL,
    top       INTEGER NOT NULL,
    PRIMARY KEY (upload_id, seq)
) STRICT;
"#,
    r#"
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
"#,
    // Runs of every kind: the precheck columns become optional, jobs get theirs, and each job
    // keeps the project files it was given (their blobs), whatever happens to the project after.
    r#"
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
"#,
    // Webhooks: where a run's end is POSTed, and each POST until it is delivered or given up;
    // a client's idempotency key, so that a retried create returns the run it made.
    r#"
ALTER TABLE runs ADD COLUMN notify_url TEXT;
ALTER TABLE runs ADD COLUMN idempotency_key TEXT;
CREATE UNIQUE INDEX runs_by_idempotency_key ON runs (COALESCE(owner, ''), idempotency_key)
    WHERE idempotency_key IS NOT NULL;

CREATE TABLE deliveries (
    seq          INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id       TEXT NOT NULL,
    url          TEXT NOT NULL,
    created      INTEGER NOT NULL,
    attempts     INTEGER NOT NULL DEFAULT 0,
    next_attempt INTEGER NOT NULL,
    delivered_at INTEGER,
    given_up_at  INTEGER,
    last_error   TEXT
) STRICT;

CREATE INDEX deliveries_due ON deliveries (next_attempt)
    WHERE delivered_at IS NULL AND given_up_at IS NULL;
"#,
    // A key's page of its runs walks its own runs newest first, not everyone's.
    r#"
CREATE INDEX runs_by_owner ON runs (owner, seq);
"#,
    // What an idempotency key was used for: the sha256 of the create's canonical request, so that
    // the key sent again with another request is refused. Null for runs made before: those keys
    // return their run whatever the request, as they did.
    r#"
ALTER TABLE runs ADD COLUMN idempotency_request TEXT;
"#,
    // When the server asked the engine to start a run's container: a run whose container is
    // still `created` after a stop was either never started (and can start over) or is being
    // started by the engine (and must not be started twice). A run that was running when the
    // server was upgraded may have been started: it counts as started, so a lost container still
    // fails it (as before the column) instead of running it again. `health` is the row
    // `/health` writes to know that writes work.
    r#"
ALTER TABLE runs ADD COLUMN start_sent_at INTEGER;
UPDATE runs SET start_sent_at = started_at WHERE status = 'running';
CREATE TABLE health (
    id      INTEGER PRIMARY KEY CHECK (id = 1),
    checked INTEGER NOT NULL
) STRICT;
"#,
];

const RUN_COLUMNS: &str =
    "id, created, upload_id, top_cell, die_id, slot, cob, image, image_id, status,
    exit_code, error, oom_killed, started_at, finished_at, owner, seq, NULL,
    kind, project_id, tool, top, sources, config, progress_step, progress_name, progress_count,
    notify_url";

const UPLOAD_COLUMNS: &str =
    "id, name, size, sha256, format, created, expires_at, expired, owner, dbu_microns";

/// Which runs to list.
#[derive(Debug, Clone)]
pub struct RunFilter {
    /// Any of these (all when empty).
    pub statuses: Vec<RunStatus>,
    pub scope: Scope,
    /// Any of these kinds (all when empty).
    pub kinds: Vec<RunKind>,
    /// Only this project's jobs.
    pub project_id: Option<Uuid>,
    /// Only runs older than this one (created before it): the cursor of the next page.
    pub before: Option<Uuid>,
    /// At most this many (all when `None`).
    pub limit: Option<usize>,
}

impl Default for RunFilter {
    fn default() -> Self {
        RunFilter {
            statuses: vec![],
            scope: Scope::All,
            kinds: vec![],
            project_id: None,
            before: None,
            limit: None,
        }
    }
}

/// What a run is created with besides its parameters.
#[derive(Debug, Clone)]
pub struct NewRun {
    /// The image reference from the config.
    pub image: String,
    /// The name of the API key that makes it.
    pub owner: Option<String>,
    /// Where its end is POSTed.
    pub notify_url: Option<String>,
    /// A client's key for the create: the same key (of the same owner) returns the same run.
    pub idempotency: Option<Idempotency>,
    pub created: OffsetDateTime,
}

/// A client's `Idempotency-Key` and the request it came with.
#[derive(Debug, Clone)]
pub struct Idempotency {
    pub key: String,
    /// The create's canonical request (the same for requests that ask the same); its sha256 is
    /// stored with the run.
    pub request: String,
}

impl Idempotency {
    fn request_sha256(&self) -> String {
        use sha2::{Digest, Sha256};
        format!("{:x}", Sha256::digest(self.request.as_bytes()))
    }
}

/// What an idempotency key already names.
#[derive(Debug)]
pub enum KeyUse {
    /// The run an identical request made.
    Same(Box<Run>),
    /// The key was used for another request.
    Different,
}

/// A created run, or the one an earlier request with the same idempotency key created.
#[derive(Debug)]
pub struct Created {
    pub run: Run,
    pub new: bool,
}

/// A webhook to deliver.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub seq: i64,
    pub run_id: Uuid,
    pub url: String,
    pub created: OffsetDateTime,
    pub attempts: u32,
}

/// Why a precheck could not be created.
#[derive(Debug, PartialEq)]
pub enum CreateRunError {
    UnknownUpload,
    UploadExpired,
    /// The idempotency key was used for another request.
    KeyReused,
}

/// What deleting an upload did.
#[derive(Debug, PartialEq)]
pub enum DeleteUpload {
    Deleted,
    NotFound,
    /// A queued or running run uses it.
    InUse(Uuid),
}

const PROJECT_COLUMNS: &str = "id, name, description, owner, created, updated,
    (SELECT COUNT(*) FROM project_files f WHERE f.project_id = projects.id),
    (SELECT COALESCE(SUM(size), 0) FROM project_files f WHERE f.project_id = projects.id)";

/// The names the storage folder's entries should have (see [`Db::known_names`]).
pub struct KnownNames {
    pub runs: HashSet<String>,
    pub uploads: HashSet<String>,
    pub blobs: HashSet<String>,
}

/// What storing a project file did.
#[derive(Debug, PartialEq)]
pub enum PutFile {
    /// Stored; the blobs the paths named before (they may now be unused).
    Stored {
        replaced: Vec<String>,
    },
    /// The project would hold more than its limit: the bytes it would hold.
    ProjectTooLarge(u64),
    /// The project would hold more files than its limit: how many.
    TooManyFiles(u64),
    NoProject,
}

/// What deleting a run did.
#[derive(Debug)]
pub enum DeleteRun {
    /// The run as it was before it was deleted.
    Deleted(Box<Run>),
    /// It is running and `force` was not given.
    Running,
    NotFound,
}

/// What a cancel request found.
#[derive(Debug)]
pub enum Cancel {
    /// It was queued and is now cancelled; it never starts.
    Cancelled(Box<Run>),
    /// It is running: the request is recorded and the runner stops the container.
    Running,
    AlreadyFinished(RunStatus),
    NotFound,
}

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

    /// Records that the server is about to ask the engine to start the run's container.
    /// False if the run is no longer running (deleted while its container was prepared).
    pub async fn mark_start_sent(&self, id: Uuid, now: OffsetDateTime) -> Result<bool> {
        self.call(move |c| {
            let n = c.execute(
                "UPDATE runs SET start_sent_at = ?2 WHERE id = ?1 AND status = 'running'",
                params![id.to_string(), micros(now)],
            )?;
            Ok(n == 1)
        })
        .await
    }

    /// Whether the server asked the engine to start the run's container (since it was last
    /// queued).
    pub async fn start_sent(&self, id: Uuid) -> Result<bool> {
        self.run_is(id, "start_sent_at IS NOT NULL").await
    }

    /// Whether `condition` (an SQL expression over a run's columns, never a client's string)
    /// holds for the run; false for a run that is not there.
    async fn run_is(&self, id: Uuid, condition: &'static str) -> Result<bool> {
        self.call(move |c| {
            c.query_row(
                &format!("SELECT {condition} FROM runs WHERE id = ?1"),
                [id.to_string()],
                |r| r.get(0),
            )
            .optional()
            .map(|v| v.unwrap_or(false))
        })
        .await
    }

    pub async fn insert_upload(&self, upload: Upload) -> Result<()> {
        self.call(move |c| {
            let tx = c.transaction()?;
            let id = upload.id.to_string();
            tx.execute(
                "INSERT INTO uploads (id, name, size, sha256, format, created, expires_at, expired, owner, dbu_microns)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, 0, ?8, ?9)",
                params![
                    id,
                    upload.name,
                    upload.size as i64,
                    upload.sha256,
                    upload.format.as_str(),
                    micros(upload.created),
                    upload.expires_at.map(micros),
                    upload.owner,
                    upload.layout.as_ref().map(|l| l.dbu_microns),
                ],
            )?;
            if let Some(layout) = &upload.layout {
                let mut insert = tx.prepare(
                    "INSERT INTO upload_cells (upload_id, seq, name, top) VALUES (?1, ?2, ?3, ?4)",
                )?;
                let tops: HashSet<&String> = layout.top_cells.iter().collect();
                for (seq, name) in layout.cells.iter().enumerate() {
                    insert.execute(params![id, seq as i64, name, tops.contains(name)])?;
                }
            }
            tx.commit()
        })
        .await
    }

    pub async fn upload(&self, id: Uuid) -> Result<Option<Upload>> {
        self.call(move |c| {
            let upload = c
                .query_row(
                    &format!("SELECT {UPLOAD_COLUMNS} FROM uploads WHERE id = ?1"),
                    [id.to_string()],
                    upload_from_row,
                )
                .optional()?;
            upload.map(|u| with_cells(c, u)).transpose()
        })
        .await
    }

    /// The uploads `scope` sees, newest first.
    pub async fn uploads(&self, scope: Scope) -> Result<Vec<Upload>> {
        self.call(move |c| {
            let mut stmt = c.prepare(&format!(
                "SELECT {UPLOAD_COLUMNS} FROM uploads WHERE ?1 IS NULL OR owner = ?1
                 ORDER BY created DESC, id"
            ))?;
            let uploads = stmt
                .query_map([scope.owner()], upload_from_row)?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            uploads.into_iter().map(|u| with_cells(c, u)).collect()
        })
        .await
    }

    /// Removes an upload's row unless a queued or running run uses it.
    pub async fn delete_upload(&self, id: Uuid) -> Result<DeleteUpload> {
        self.call(move |c| {
            let tx = c.transaction()?;
            if let Some(run) = run_using_upload(&tx, id)? {
                return Ok(DeleteUpload::InUse(run));
            }
            let n = tx.execute("DELETE FROM uploads WHERE id = ?1", [id.to_string()])?;
            tx.commit()?;
            Ok(if n == 0 {
                DeleteUpload::NotFound
            } else {
                DeleteUpload::Deleted
            })
        })
        .await
    }

    /// The first queued or running run that uses the upload.
    pub async fn upload_in_use(&self, id: Uuid) -> Result<Option<Uuid>> {
        self.call(move |c| run_using_upload(c, id)).await
    }

    /// Marks uploads past their expiry (and used by no run) as expired; returns their ids so
    /// their files can be removed.
    pub async fn expire_uploads(&self, now: OffsetDateTime) -> Result<Vec<Uuid>> {
        self.call(move |c| {
            let mut stmt = c.prepare(
                "UPDATE uploads SET expired = 1
                 WHERE expired = 0 AND expires_at IS NOT NULL AND expires_at <= ?1
                 RETURNING id",
            )?;
            let ids = stmt.query_map([micros(now)], |r| r.get::<_, String>(0))?;
            ids.map(|id| parse_uuid(&id?)).collect()
        })
        .await
    }

    /// The earliest time at which an upload will expire, if any will.
    pub async fn next_upload_expiry(&self) -> Result<Option<OffsetDateTime>> {
        self.call(|c| {
            earliest(
                c,
                "SELECT MIN(expires_at) FROM uploads WHERE expired = 0 AND expires_at IS NOT NULL",
            )
        })
        .await
    }

    /// Queues a precheck of an upload `scope` sees. The upload is kept from now on (it no
    /// longer expires).
    pub async fn create_run(
        &self,
        id: Uuid,
        params: PrecheckParams,
        scope: Scope,
        new: NewRun,
    ) -> Result<Result<Created, CreateRunError>> {
        self.call(move |c| {
            let NewRun {
                image,
                owner,
                notify_url,
                idempotency,
                created: now,
            } = new;
            let tx = c.transaction()?;
            if let Some(key) = &idempotency {
                match key_use(&tx, owner.as_deref(), key)? {
                    Some(KeyUse::Same(run)) => return Ok(Ok(Created { run: *run, new: false })),
                    Some(KeyUse::Different) => return Ok(Err(CreateRunError::KeyReused)),
                    None => {}
                }
            }
            let (idempotency_key, idempotency_request) = match &idempotency {
                Some(i) => (Some(i.key.clone()), Some(i.request_sha256())),
                None => (None, None),
            };
            let upload = tx
                .query_row(
                    &format!("SELECT {UPLOAD_COLUMNS} FROM uploads WHERE id = ?1"),
                    [params.upload_id.to_string()],
                    upload_from_row,
                )
                .optional()?;
            match upload {
                Some(u) if !scope.sees(u.owner.as_deref()) => return Ok(Err(CreateRunError::UnknownUpload)),
                None => return Ok(Err(CreateRunError::UnknownUpload)),
                Some(u) if u.is_expired(now) => return Ok(Err(CreateRunError::UploadExpired)),
                Some(_) => {}
            }
            tx.execute(
                "UPDATE uploads SET expires_at = NULL WHERE id = ?1",
                [params.upload_id.to_string()],
            )?;
            tx.execute(
                "INSERT INTO runs (id, kind, created, upload_id, top_cell, die_id, slot, cob, image, owner,
                    notify_url, idempotency_key, idempotency_request, status)
                 VALUES (?1, 'precheck', ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, 'queued')",
                params![
                    id.to_string(),
                    micros(now),
                    params.upload_id.to_string(),
                    params.top_cell,
                    params.die_id,
                    params.slot,
                    params.cob,
                    image,
                    owner,
                    notify_url,
                    idempotency_key,
                    idempotency_request,
                ],
            )?;
            let run = select_run(&tx, id)?.ok_or(rusqlite::Error::QueryReturnedNoRows)?;
            tx.commit()?;
            Ok(Ok(Created { run, new: true }))
        })
        .await
    }

    /// What this owner's idempotency key already names, if anything: the run an identical
    /// request made, or another request.
    pub async fn idempotency_key_use(
        &self,
        owner: Option<String>,
        key: Idempotency,
    ) -> Result<Option<KeyUse>> {
        self.call(move |c| key_use(c, owner.as_deref(), &key)).await
    }

    /// Up to `limit` webhooks due now, oldest first.
    pub async fn due_deliveries(&self, now: OffsetDateTime, limit: u32) -> Result<Vec<Delivery>> {
        self.call(move |c| {
            let mut stmt = c.prepare(
                "SELECT seq, run_id, url, created, attempts FROM deliveries
                 WHERE delivered_at IS NULL AND given_up_at IS NULL AND next_attempt <= ?1
                 ORDER BY next_attempt, seq LIMIT ?2",
            )?;
            stmt.query_map(params![micros(now), limit], |r| {
                Ok(Delivery {
                    seq: r.get(0)?,
                    run_id: parse_uuid(&r.get::<_, String>(1)?)?,
                    url: r.get(2)?,
                    created: from_micros(r.get(3)?)?,
                    attempts: r.get::<_, i64>(4)? as u32,
                })
            })?
            .collect()
        })
        .await
    }

    /// When the next pending webhook is due, if any is pending.
    pub async fn next_delivery(&self) -> Result<Option<OffsetDateTime>> {
        self.call(|c| {
            earliest(
                c,
                "SELECT MIN(next_attempt) FROM deliveries
                 WHERE delivered_at IS NULL AND given_up_at IS NULL",
            )
        })
        .await
    }

    /// Records an attempt of a webhook: delivered, to be tried again at `retry`, or (without
    /// `retry`) given up.
    pub async fn delivery_attempted(
        &self,
        seq: i64,
        error: Option<String>,
        retry: Option<OffsetDateTime>,
        now: OffsetDateTime,
    ) -> Result<()> {
        self.call(move |c| {
            let delivered = error.is_none();
            c.execute(
                "UPDATE deliveries SET attempts = attempts + 1, last_error = ?2,
                    delivered_at = CASE WHEN ?5 THEN ?3 END,
                    next_attempt = COALESCE(?4, next_attempt),
                    given_up_at = CASE WHEN NOT ?5 AND ?4 IS NULL THEN ?3 END
                 WHERE seq = ?1",
                params![seq, error, micros(now), retry.map(micros), delivered],
            )
            .map(drop)
        })
        .await
    }

    pub async fn run(&self, id: Uuid) -> Result<Option<Run>> {
        self.call(move |c| select_run(c, id)).await
    }

    /// The runs `scope` sees with any of `statuses` (all when empty), newest first.
    pub async fn runs(&self, statuses: Vec<RunStatus>, scope: Scope) -> Result<Vec<Run>> {
        self.runs_where(RunFilter {
            statuses,
            scope,
            ..RunFilter::default()
        })
        .await
    }

    /// The runs that pass `filter`, newest first, with their queue positions.
    ///
    /// The conditions are written out (no `?1 IS NULL OR ...`) so that SQLite can walk an index
    /// in `seq` order and stop after `limit` rows; the queue positions of the page's queued runs
    /// come from one pass over the queue ([`fill_queue`]), not a count per row.
    pub async fn runs_where(&self, filter: RunFilter) -> Result<Vec<Run>> {
        self.call(move |c| {
            let RunFilter {
                statuses,
                scope,
                kinds,
                project_id,
                before,
                limit,
            } = filter;
            let mut conditions: Vec<String> = Vec::new();
            let mut values: Vec<Value> = Vec::new();
            if let Some(owner) = scope.owner() {
                values.push(Value::Text(owner.to_string()));
                conditions.push(format!("owner = ?{}", values.len()));
            }
            if let Some(project) = project_id {
                values.push(Value::Text(project.to_string()));
                conditions.push(format!("project_id = ?{}", values.len()));
            }
            if !kinds.is_empty() {
                let list: Vec<String> = kinds.iter().map(|k| format!("'{}'", k.as_str())).collect();
                conditions.push(format!("kind IN ({})", list.join(", ")));
            }
            if !statuses.is_empty() {
                let list: Vec<String> = statuses
                    .iter()
                    .map(|s| format!("'{}'", s.as_str()))
                    .collect();
                conditions.push(format!("status IN ({})", list.join(", ")));
            }
            if let Some(before) = before {
                values.push(Value::Text(before.to_string()));
                conditions.push(format!(
                    "seq < (SELECT seq FROM runs b WHERE b.id = ?{})",
                    values.len()
                ));
            }
            let filter = match conditions.is_empty() {
                true => String::new(),
                false => format!("WHERE {}", conditions.join(" AND ")),
            };
            let limit = match limit {
                Some(n) => format!("LIMIT {}", n.min(i64::MAX as usize)),
                None => String::new(),
            };
            select_runs(
                c,
                &format!("SELECT {RUN_COLUMNS} FROM runs {filter} ORDER BY seq DESC {limit}"),
                rusqlite::params_from_iter(values),
            )
        })
        .await
    }

    /// Moves the oldest queued run to `running` and returns it.
    pub async fn claim_next_run(&self, now: OffsetDateTime) -> Result<Option<Run>> {
        self.call(move |c| {
            let tx = c.transaction()?;
            let id: Option<String> = tx
                .query_row(
                    "UPDATE runs SET status = 'running', started_at = ?1
                     WHERE seq = (SELECT seq FROM runs WHERE status = 'queued' ORDER BY seq LIMIT 1)
                     RETURNING id",
                    [micros(now)],
                    |r| r.get(0),
                )
                .optional()?;
            let run = match id {
                Some(id) => select_run(&tx, parse_uuid(&id)?)?,
                None => None,
            };
            tx.commit()?;
            Ok(run)
        })
        .await
    }

    pub async fn set_image_id(&self, id: Uuid, image_id: String) -> Result<()> {
        self.call(move |c| {
            c.execute(
                "UPDATE runs SET image_id = ?2 WHERE id = ?1",
                params![id.to_string(), image_id],
            )
            .map(drop)
        })
        .await
    }

    /// Records how a running run ended. Returns false if it was not running.
    pub async fn finish_run(
        &self,
        id: Uuid,
        outcome: Outcome,
        now: OffsetDateTime,
    ) -> Result<bool> {
        self.call(move |c| {
            let tx = c.transaction()?;
            let n = tx.execute(
                "UPDATE runs SET status = ?2, exit_code = ?3, error = ?4, oom_killed = ?5, finished_at = ?6
                 WHERE id = ?1 AND status = 'running'",
                params![
                    id.to_string(),
                    outcome.status.as_str(),
                    outcome.exit_code,
                    outcome.error,
                    outcome.oom_killed,
                    micros(now),
                ],
            )?;
            if n == 1 {
                queue_delivery(&tx, id, now)?;
            }
            tx.commit()?;
            Ok(n == 1)
        })
        .await
    }

    /// Cancels a queued run at once; marks a running one for the runner to stop.
    pub async fn cancel(&self, id: Uuid, now: OffsetDateTime) -> Result<Cancel> {
        self.call(move |c| {
            let tx = c.transaction()?;
            let status: Option<String> = tx
                .query_row("SELECT status FROM runs WHERE id = ?1", [id.to_string()], |r| r.get(0))
                .optional()?;
            let Some(status) = status else { return Ok(Cancel::NotFound) };
            let status = parse_status(&status)?;
            let answer = match status {
                RunStatus::Queued => {
                    let o = Outcome::cancelled();
                    tx.execute(
                        "UPDATE runs SET status = 'cancelled', exit_code = ?2, error = ?3, finished_at = ?4
                         WHERE id = ?1",
                        params![id.to_string(), o.exit_code, o.error, micros(now)],
                    )?;
                    queue_delivery(&tx, id, now)?;
                    Cancel::Cancelled(Box::new(select_run(&tx, id)?.ok_or(rusqlite::Error::QueryReturnedNoRows)?))
                }
                RunStatus::Running => {
                    tx.execute("UPDATE runs SET cancel_requested = 1 WHERE id = ?1", [id.to_string()])?;
                    Cancel::Running
                }
                terminal => Cancel::AlreadyFinished(terminal),
            };
            tx.commit()?;
            Ok(answer)
        })
        .await
    }

    pub async fn cancel_requested(&self, id: Uuid) -> Result<bool> {
        self.run_is(id, "cancel_requested").await
    }

    /// Puts a running run whose container never started back in the queue, in its old place.
    pub async fn requeue_run(&self, id: Uuid) -> Result<bool> {
        self.call(move |c| {
            let n = c.execute(
                "UPDATE runs SET status = 'queued', started_at = NULL, image_id = NULL,
                     start_sent_at = NULL
                 WHERE id = ?1 AND status = 'running'",
                [id.to_string()],
            )?;
            Ok(n == 1)
        })
        .await
    }

    /// The runs whose id, without its dashes, starts with `digits` (lower-case hex), at most
    /// two: enough to tell a unique prefix from an ambiguous one.
    pub async fn runs_by_prefix(&self, digits: String) -> Result<Vec<Run>> {
        self.call(move |c| {
            select_runs(
                c,
                &format!(
                    "SELECT {RUN_COLUMNS} FROM runs
                     WHERE substr(replace(id, '-', ''), 1, length(?1)) = ?1 ORDER BY seq LIMIT 2"
                ),
                [digits],
            )
        })
        .await
    }

    /// Deletes a run's row. A running run is deleted only with `force` (its container is then
    /// the caller's to stop). An upload no run uses any more expires at `uploads_expire`.
    pub async fn delete_run(
        &self,
        id: Uuid,
        force: bool,
        uploads_expire: OffsetDateTime,
    ) -> Result<DeleteRun> {
        self.call(move |c| {
            let tx = c.transaction()?;
            let Some(run) = select_run(&tx, id)? else {
                return Ok(DeleteRun::NotFound);
            };
            if run.status == RunStatus::Running && !force {
                return Ok(DeleteRun::Running);
            }
            tx.execute("DELETE FROM runs WHERE id = ?1", [id.to_string()])?;
            release_uploads(&tx, uploads_expire)?;
            tx.commit()?;
            Ok(DeleteRun::Deleted(Box::new(run)))
        })
        .await
    }

    /// Deletes the finished runs with any of `statuses` (every finished one when empty) that
    /// finished before `before`, oldest first; with `dry_run`, only lists them. Uploads no run
    /// uses any more expire at `uploads_expire`.
    pub async fn prune_runs(
        &self,
        statuses: Vec<RunStatus>,
        before: Option<OffsetDateTime>,
        dry_run: bool,
        uploads_expire: OffsetDateTime,
    ) -> Result<Vec<Run>> {
        self.call(move |c| {
            let tx = c.transaction()?;
            let statuses = if statuses.is_empty() {
                vec![RunStatus::Completed, RunStatus::Failed, RunStatus::Cancelled]
            } else {
                statuses
            };
            let list: Vec<String> = statuses
                .iter()
                .filter(|s| s.is_terminal())
                .map(|s| format!("'{}'", s.as_str()))
                .collect();
            let runs = select_runs(
                &tx,
                &format!(
                    "SELECT {RUN_COLUMNS} FROM runs WHERE status IN ({}) AND (?1 IS NULL OR finished_at < ?1)
                     ORDER BY seq",
                    list.join(", ")
                ),
                [before.map(micros)],
            )?;
            if !dry_run {
                for run in &runs {
                    tx.execute("DELETE FROM runs WHERE id = ?1", [run.id.to_string()])?;
                }
                release_uploads(&tx, uploads_expire)?;
                tx.commit()?;
            }
            Ok(runs)
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

    /// How many runs have each status (statuses without runs are left out).
    pub async fn run_counts(&self) -> Result<Vec<(RunStatus, u64)>> {
        self.call(|c| {
            let mut stmt = c.prepare("SELECT status, COUNT(*) FROM runs GROUP BY status")?;
            let rows = stmt.query_map([], |r| {
                Ok((
                    parse_status(&r.get::<_, String>(0)?)?,
                    r.get::<_, i64>(1)? as u64,
                ))
            })?;
            rows.collect()
        })
        .await
    }

    /// (queued, running) counts.
    pub async fn queue_counts(&self) -> Result<(u64, u64)> {
        self.call(|c| {
            c.query_row(
                "SELECT COUNT(*) FILTER (WHERE status = 'queued'), COUNT(*) FILTER (WHERE status = 'running')
                 FROM runs",
                [],
                |r| Ok((r.get::<_, i64>(0)? as u64, r.get::<_, i64>(1)? as u64)),
            )
        })
        .await
    }
}

/// Why a job could not be created.
#[derive(Debug, PartialEq)]
pub enum CreateJobError {
    NoProject,
    /// The project has no file at this path.
    MissingFile(String),
}

/// What deleting a project did.
#[derive(Debug, PartialEq)]
pub enum DeleteProject {
    /// Deleted; the blobs its files named (they may now be unused).
    Deleted(Vec<String>),
    /// A queued or running job of the project.
    Busy(Uuid),
    NotFound,
}

impl Db {
    /// Queues a job of a project, with a snapshot of the project's files as they are now; each
    /// of `needs` must be one of them.
    pub async fn create_job(
        &self,
        id: Uuid,
        params: RunParams,
        needs: Vec<String>,
        new: NewRun,
    ) -> Result<Result<Run, CreateJobError>> {
        self.call(move |c| {
            let NewRun {
                image,
                owner,
                notify_url,
                created: now,
                ..
            } = new;
            let tx = c.transaction()?;
            let Some(project_id) = params.project_id().map(|p| p.to_string()) else {
                return Err(bad_value("a precheck is not a job".into()));
            };
            let exists = tx
                .query_row("SELECT 1 FROM projects WHERE id = ?1", [&project_id], |_| Ok(()))
                .optional()?
                .is_some();
            if !exists {
                return Ok(Err(CreateJobError::NoProject));
            }
            for path in needs {
                let found = tx
                    .query_row(
                        "SELECT 1 FROM project_files WHERE project_id = ?1 AND path = ?2",
                        params![project_id, path],
                        |_| Ok(()),
                    )
                    .optional()?
                    .is_some();
                if !found {
                    return Ok(Err(CreateJobError::MissingFile(path)));
                }
            }
            let (tool, top, sources, config) = match &params {
                RunParams::Simulation(p) => (
                    Some(p.tool.as_str()),
                    Some(p.top.clone()),
                    Some(p.sources.join("\n")),
                    None,
                ),
                RunParams::Build(p) => (None, None, None, Some(p.config.clone())),
                RunParams::Precheck(_) => (None, None, None, None),
            };
            tx.execute(
                "INSERT INTO runs (id, kind, created, project_id, tool, top, sources, config, image, owner,
                    notify_url, status)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, 'queued')",
                params![
                    id.to_string(),
                    params.kind().as_str(),
                    micros(now),
                    project_id,
                    tool,
                    top,
                    sources,
                    config,
                    image,
                    owner,
                    notify_url,
                ],
            )?;
            tx.execute(
                "INSERT INTO job_files (run_id, path, size, sha256)
                 SELECT ?1, path, size, sha256 FROM project_files WHERE project_id = ?2",
                params![id.to_string(), project_id],
            )?;
            let run = select_run(&tx, id)?.ok_or(rusqlite::Error::QueryReturnedNoRows)?;
            tx.commit()?;
            Ok(Ok(run))
        })
        .await
    }

    /// The project files a job was given, by path.
    pub async fn job_files(&self, run_id: Uuid) -> Result<Vec<JobFile>> {
        self.call(move |c| {
            let mut stmt = c.prepare(
                "SELECT path, size, sha256 FROM job_files WHERE run_id = ?1 ORDER BY path",
            )?;
            stmt.query_map([run_id.to_string()], |r| {
                Ok(JobFile {
                    path: r.get(0)?,
                    size: r.get::<_, i64>(1)? as u64,
                    sha256: r.get(2)?,
                })
            })?
            .collect()
        })
        .await
    }

    /// Records where a build is.
    pub async fn set_progress(&self, id: Uuid, progress: Progress) -> Result<()> {
        self.call(move |c| {
            c.execute(
                "UPDATE runs SET progress_step = ?2, progress_name = ?3, progress_count = ?4
                 WHERE id = ?1",
                params![id.to_string(), progress.step, progress.name, progress.count],
            )
            .map(drop)
        })
        .await
    }

    /// How many steps the last completed build of this project and config had, if any did.
    pub async fn last_build_steps(&self, project_id: Uuid, config: String) -> Result<Option<u32>> {
        self.call(move |c| {
            let steps: Option<Option<i64>> = c
                .query_row(
                    "SELECT progress_count FROM runs WHERE kind = 'build' AND status = 'completed'
                     AND project_id = ?1 AND config = ?2 AND progress_count IS NOT NULL
                     ORDER BY seq DESC LIMIT 1",
                    params![project_id.to_string(), config],
                    |r| r.get(0),
                )
                .optional()?;
            Ok(steps.flatten().map(|n| n as u32))
        })
        .await
    }

    pub async fn create_project(&self, project: Project) -> Result<()> {
        self.call(move |c| {
            c.execute(
                "INSERT INTO projects (id, name, description, owner, created, updated)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?5)",
                params![
                    project.id.to_string(),
                    project.name,
                    project.description,
                    project.owner,
                    micros(project.created),
                ],
            )
            .map(drop)
        })
        .await
    }

    pub async fn project(&self, id: Uuid) -> Result<Option<Project>> {
        self.call(move |c| {
            c.query_row(
                &format!("SELECT {PROJECT_COLUMNS} FROM projects WHERE id = ?1"),
                [id.to_string()],
                project_from_row,
            )
            .optional()
        })
        .await
    }

    /// The projects `scope` sees, newest first.
    pub async fn projects(&self, scope: Scope) -> Result<Vec<Project>> {
        self.call(move |c| {
            let mut stmt = c.prepare(&format!(
                "SELECT {PROJECT_COLUMNS} FROM projects WHERE ?1 IS NULL OR owner = ?1
                 ORDER BY created DESC, id"
            ))?;
            stmt.query_map([scope.owner()], project_from_row)?.collect()
        })
        .await
    }

    /// Renames or redescribes a project; returns it as it now is.
    pub async fn update_project(
        &self,
        id: Uuid,
        name: Option<String>,
        description: Option<String>,
        now: OffsetDateTime,
    ) -> Result<Option<Project>> {
        self.call(move |c| {
            c.execute(
                "UPDATE projects SET name = COALESCE(?2, name),
                 description = COALESCE(?3, description), updated = ?4 WHERE id = ?1",
                params![id.to_string(), name, description, micros(now)],
            )?;
            c.query_row(
                &format!("SELECT {PROJECT_COLUMNS} FROM projects WHERE id = ?1"),
                [id.to_string()],
                project_from_row,
            )
            .optional()
        })
        .await
    }

    /// Deletes a project and its files, unless a job of it is queued or running. Its finished
    /// jobs stay: they are runs, kept (with the files they were given) until deleted or pruned.
    pub async fn delete_project(&self, id: Uuid) -> Result<DeleteProject> {
        self.call(move |c| {
            let tx = c.transaction()?;
            let busy: Option<String> = tx
                .query_row(
                    "SELECT id FROM runs WHERE project_id = ?1 AND status IN ('queued', 'running')
                     ORDER BY seq LIMIT 1",
                    [id.to_string()],
                    |r| r.get(0),
                )
                .optional()?;
            if let Some(job) = busy {
                return Ok(DeleteProject::Busy(parse_uuid(&job)?));
            }
            let blobs: Vec<String> = {
                let mut stmt =
                    tx.prepare("SELECT DISTINCT sha256 FROM project_files WHERE project_id = ?1")?;
                stmt.query_map([id.to_string()], |r| r.get(0))?
                    .collect::<rusqlite::Result<_>>()?
            };
            let n = tx.execute("DELETE FROM projects WHERE id = ?1", [id.to_string()])?;
            tx.commit()?;
            Ok(if n == 1 {
                DeleteProject::Deleted(blobs)
            } else {
                DeleteProject::NotFound
            })
        })
        .await
    }

    /// A project's files, by path.
    pub async fn project_files(&self, id: Uuid) -> Result<Vec<ProjectFile>> {
        self.call(move |c| {
            let mut stmt = c.prepare(
                "SELECT path, size, sha256, modified FROM project_files WHERE project_id = ?1
                 ORDER BY path",
            )?;
            stmt.query_map([id.to_string()], file_from_row)?.collect()
        })
        .await
    }

    pub async fn project_file(&self, id: Uuid, path: String) -> Result<Option<ProjectFile>> {
        self.call(move |c| {
            c.query_row(
                "SELECT path, size, sha256, modified FROM project_files
                 WHERE project_id = ?1 AND path = ?2",
                params![id.to_string(), path],
                file_from_row,
            )
            .optional()
        })
        .await
    }

    /// Stores (or replaces) files of a project, all or none, unless the project would then
    /// hold more than `max_size` bytes or `max_files` files.
    pub async fn put_files(
        &self,
        id: Uuid,
        files: Vec<ProjectFile>,
        max_size: u64,
        max_files: usize,
    ) -> Result<PutFile> {
        self.call(move |c| {
            let tx = c.transaction()?;
            let exists: bool = tx
                .query_row(
                    "SELECT 1 FROM projects WHERE id = ?1",
                    [id.to_string()],
                    |_| Ok(true),
                )
                .optional()?
                .unwrap_or(false);
            if !exists {
                return Ok(PutFile::NoProject);
            }
            let mut replaced = vec![];
            for f in &files {
                let old: Option<String> = tx
                    .query_row(
                        "SELECT sha256 FROM project_files WHERE project_id = ?1 AND path = ?2",
                        params![id.to_string(), f.path],
                        |r| r.get(0),
                    )
                    .optional()?;
                tx.execute(
                    "INSERT INTO project_files (project_id, path, size, sha256, modified)
                     VALUES (?1, ?2, ?3, ?4, ?5)
                     ON CONFLICT (project_id, path) DO UPDATE
                     SET size = ?3, sha256 = ?4, modified = ?5",
                    params![
                        id.to_string(),
                        f.path,
                        f.size as i64,
                        f.sha256,
                        micros(f.modified)
                    ],
                )?;
                replaced.extend(old.filter(|old| *old != f.sha256));
            }
            let (total, count): (i64, i64) = tx.query_row(
                "SELECT COALESCE(SUM(size), 0), COUNT(*) FROM project_files WHERE project_id = ?1",
                [id.to_string()],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )?;
            if total as u64 > max_size {
                return Ok(PutFile::ProjectTooLarge(total as u64));
            }
            if count as u64 > max_files as u64 {
                return Ok(PutFile::TooManyFiles(count as u64));
            }
            if let Some(f) = files.first() {
                tx.execute(
                    "UPDATE projects SET updated = ?2 WHERE id = ?1",
                    params![id.to_string(), micros(f.modified)],
                )?;
            }
            tx.commit()?;
            Ok(PutFile::Stored { replaced })
        })
        .await
    }

    /// Deletes a project file; returns the blob it named, if it existed.
    pub async fn delete_file(&self, id: Uuid, path: String) -> Result<Option<String>> {
        self.call(move |c| {
            c.query_row(
                "DELETE FROM project_files WHERE project_id = ?1 AND path = ?2 RETURNING sha256",
                params![id.to_string(), path],
                |r| r.get(0),
            )
            .optional()
        })
        .await
    }

    /// Whether any project file, or any job's copy of one, names this blob.
    pub async fn blob_in_use(&self, sha256: String) -> Result<bool> {
        self.call(move |c| {
            c.query_row(
                "SELECT 1 WHERE EXISTS (SELECT 1 FROM project_files WHERE sha256 = ?1)
                 OR EXISTS (SELECT 1 FROM job_files WHERE sha256 = ?1)",
                [sha256],
                |_| Ok(true),
            )
            .optional()
            .map(|v| v.unwrap_or(false))
        })
        .await
    }
}

fn project_from_row(r: &Row) -> rusqlite::Result<Project> {
    Ok(Project {
        id: parse_uuid(&r.get::<_, String>(0)?)?,
        name: r.get(1)?,
        description: r.get(2)?,
        owner: r.get(3)?,
        created: from_micros(r.get(4)?)?,
        updated: from_micros(r.get(5)?)?,
        files: r.get::<_, i64>(6)? as u64,
        size: r.get::<_, i64>(7)? as u64,
    })
}

fn file_from_row(r: &Row) -> rusqlite::Result<ProjectFile> {
    Ok(ProjectFile {
        path: r.get(0)?,
        size: r.get::<_, i64>(1)? as u64,
        sha256: r.get(2)?,
        modified: from_micros(r.get(3)?)?,
    })
}

/// An API key as stored (its hash, never the key).
#[derive(Debug, Clone)]
pub struct StoredKey {
    pub name: String,
    pub admin: bool,
    pub created: OffsetDateTime,
    pub last_used: Option<OffsetDateTime>,
    pub revoked: Option<OffsetDateTime>,
}

impl Db {
    /// Stores a new key's hash; false if the name is taken.
    pub async fn insert_api_key(
        &self,
        name: String,
        sha256: String,
        admin: bool,
        now: OffsetDateTime,
    ) -> Result<bool> {
        self.call(move |c| {
            let n = c.execute(
                "INSERT INTO api_keys (name, sha256, admin, created) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (name) DO NOTHING",
                params![name, sha256, admin, micros(now)],
            )?;
            Ok(n == 1)
        })
        .await
    }

    pub async fn api_keys(&self) -> Result<Vec<StoredKey>> {
        self.call(|c| {
            let mut stmt =
                c.prepare("SELECT name, admin, created, last_used, revoked FROM api_keys ORDER BY created, name")?;
            stmt.query_map([], key_from_row)?.collect()
        })
        .await
    }

    /// The key with this hash, if any (revoked ones too: the caller says why it fails).
    pub async fn api_key_by_hash(&self, sha256: String) -> Result<Option<StoredKey>> {
        self.call(move |c| {
            c.query_row(
                "SELECT name, admin, created, last_used, revoked FROM api_keys WHERE sha256 = ?1",
                [sha256],
                key_from_row,
            )
            .optional()
        })
        .await
    }

    /// Records that a key was used (at most once a second per key, to spare the disk).
    pub async fn touch_api_key(&self, name: String, now: OffsetDateTime) -> Result<()> {
        self.call(move |c| {
            c.execute(
                "UPDATE api_keys SET last_used = ?2 WHERE name = ?1 AND (last_used IS NULL OR last_used < ?2 - 1000000)",
                params![name, micros(now)],
            )
            .map(drop)
        })
        .await
    }

    /// Revokes a key; false if there is no key of that name that is not revoked already.
    pub async fn revoke_api_key(&self, name: String, now: OffsetDateTime) -> Result<bool> {
        self.call(move |c| {
            let n = c.execute(
                "UPDATE api_keys SET revoked = ?2 WHERE name = ?1 AND revoked IS NULL",
                params![name, micros(now)],
            )?;
            Ok(n == 1)
        })
        .await
    }
}

fn key_from_row(r: &Row) -> rusqlite::Result<StoredKey> {
    Ok(StoredKey {
        name: r.get(0)?,
        admin: r.get(1)?,
        created: from_micros(r.get(2)?)?,
        last_used: r.get::<_, Option<i64>>(3)?.map(from_micros).transpose()?,
        revoked: r.get::<_, Option<i64>>(4)?.map(from_micros).transpose()?,
    })
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

fn run_using_upload(c: &Connection, id: Uuid) -> rusqlite::Result<Option<Uuid>> {
    let run: Option<String> = c
        .query_row(
            "SELECT id FROM runs WHERE upload_id = ?1 AND status IN ('queued', 'running')
             ORDER BY seq LIMIT 1",
            [id.to_string()],
            |r| r.get(0),
        )
        .optional()?;
    run.map(|r| parse_uuid(&r)).transpose()
}

/// Uploads are kept while runs use them; once none does, they expire like unused ones.
fn release_uploads(c: &Connection, expires_at: OffsetDateTime) -> rusqlite::Result<()> {
    c.execute(
        "UPDATE uploads SET expires_at = ?1
         WHERE expires_at IS NULL AND expired = 0 AND id NOT IN (SELECT upload_id FROM runs)",
        [micros(expires_at)],
    )?;
    Ok(())
}

/// Queues the webhook of a run that has just ended, if it has a `notify_url`.
fn queue_delivery(c: &Connection, id: Uuid, now: OffsetDateTime) -> rusqlite::Result<()> {
    c.execute(
        "INSERT INTO deliveries (run_id, url, created, next_attempt)
         SELECT id, notify_url, ?2, ?2 FROM runs WHERE id = ?1 AND notify_url IS NOT NULL",
        params![id.to_string(), micros(now)],
    )?;
    Ok(())
}

/// What an owner's idempotency key names: the run it made, if the request is the same.
fn key_use(
    c: &Connection,
    owner: Option<&str>,
    key: &Idempotency,
) -> rusqlite::Result<Option<KeyUse>> {
    let found: Option<(String, Option<String>)> = c
        .query_row(
            "SELECT id, idempotency_request FROM runs
             WHERE COALESCE(owner, '') = COALESCE(?1, '') AND idempotency_key = ?2",
            params![owner, key.key],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()?;
    let Some((id, request)) = found else {
        return Ok(None);
    };
    // A run made before requests were recorded answers any request, as it did.
    if request.is_some_and(|r| r != key.request_sha256()) {
        return Ok(Some(KeyUse::Different));
    }
    let run = select_run(c, parse_uuid(&id)?)?.ok_or(rusqlite::Error::QueryReturnedNoRows)?;
    Ok(Some(KeyUse::Same(Box::new(run))))
}

/// The time a `SELECT MIN(...)` of a time column gives, if any row has one.
fn earliest(c: &Connection, sql: &str) -> rusqlite::Result<Option<OffsetDateTime>> {
    let t: Option<i64> = c.query_row(sql, [], |r| r.get(0))?;
    t.map(from_micros).transpose()
}

fn select_run(c: &Connection, id: Uuid) -> rusqlite::Result<Option<Run>> {
    let runs = select_runs(
        c,
        &format!("SELECT {RUN_COLUMNS} FROM runs WHERE id = ?1"),
        [id.to_string()],
    )?;
    Ok(runs.into_iter().next())
}

/// The runs a `SELECT {RUN_COLUMNS} ...` finds, in its order, with their queue positions.
fn select_runs(
    c: &Connection,
    sql: &str,
    params: impl rusqlite::Params,
) -> rusqlite::Result<Vec<Run>> {
    let mut stmt = c.prepare_cached(sql)?;
    let mut rows = stmt
        .query_map(params, |r| Ok((run_from_row(r)?, r.get::<_, i64>(16)?)))?
        .collect::<rusqlite::Result<Vec<(Run, i64)>>>()?;
    fill_queue(c, &mut rows)?;
    Ok(rows.into_iter().map(|(run, _)| run).collect())
}

/// Sets the queue position (1 = next to start) and the queue's length of each queued run in
/// `runs` (each with its `seq`), in one pass over the queue whatever the number of runs: the
/// queued runs between one of them and the next are counted once, as a range of the
/// `runs_by_status` index.
fn fill_queue(c: &Connection, runs: &mut [(Run, i64)]) -> rusqlite::Result<()> {
    let mut queued: Vec<(i64, usize)> = runs
        .iter()
        .enumerate()
        .filter(|(_, (run, _))| run.status == RunStatus::Queued)
        .map(|(i, (_, seq))| (*seq, i))
        .collect();
    if queued.is_empty() {
        return Ok(());
    }
    queued.sort_unstable();
    let mut count = c.prepare_cached(
        "SELECT COUNT(*) FROM runs WHERE status = 'queued' AND seq > ?1 AND seq <= ?2",
    )?;
    let mut between = |after: i64, upto: i64| -> rusqlite::Result<u64> {
        Ok(count.query_row([after, upto], |r| r.get::<_, i64>(0))? as u64)
    };
    let (mut position, mut previous) = (0u64, i64::MIN);
    let mut positions = Vec::with_capacity(queued.len());
    for &(seq, i) in &queued {
        position += between(previous, seq)?;
        positions.push((i, position));
        previous = seq;
    }
    let length = position + between(previous, i64::MAX)?;
    for (i, position) in positions {
        runs[i].0.queue = Some((position, length));
    }
    Ok(())
}

/// A run from a row of [`RUN_COLUMNS`], without its queue position (see [`fill_queue`]).
fn run_from_row(r: &Row) -> rusqlite::Result<Run> {
    let kind: RunKind = r.get::<_, String>(18)?.parse().map_err(bad_value)?;
    let project_id = || parse_uuid(&r.get::<_, String>(19)?);
    let params = match kind {
        RunKind::Precheck => RunParams::Precheck(PrecheckParams {
            upload_id: parse_uuid(&r.get::<_, String>(2)?)?,
            top_cell: r.get(3)?,
            die_id: r.get(4)?,
            slot: r.get(5)?,
            cob: r.get(6)?,
        }),
        RunKind::Simulation => {
            let tool: String = r.get(20)?;
            RunParams::Simulation(SimulationParams {
                project_id: project_id()?,
                tool: SimulationTool::parse(&tool)
                    .ok_or_else(|| bad_value(format!("unknown simulation tool {tool:?}")))?,
                top: r.get(21)?,
                sources: r
                    .get::<_, String>(22)?
                    .split('\n')
                    .filter(|s| !s.is_empty())
                    .map(String::from)
                    .collect(),
            })
        }
        RunKind::Build => RunParams::Build(BuildParams {
            project_id: project_id()?,
            config: r.get(23)?,
        }),
    };
    let progress = match r.get::<_, Option<i64>>(24)? {
        Some(step) => Some(Progress {
            step: step as u32,
            name: r.get::<_, Option<String>>(25)?.unwrap_or_default(),
            count: r.get::<_, Option<i64>>(26)?.map(|c| c as u32),
        }),
        None => None,
    };
    Ok(Run {
        id: parse_uuid(&r.get::<_, String>(0)?)?,
        created: from_micros(r.get(1)?)?,
        params,
        progress,
        notify_url: r.get(27)?,
        image: r.get(7)?,
        image_id: r.get(8)?,
        status: parse_status(&r.get::<_, String>(9)?)?,
        exit_code: r.get(10)?,
        error: r.get(11)?,
        oom_killed: r.get(12)?,
        started_at: r.get::<_, Option<i64>>(13)?.map(from_micros).transpose()?,
        finished_at: r.get::<_, Option<i64>>(14)?.map(from_micros).transpose()?,
        owner: r.get(15)?,
        queue: None,
    })
}

/// Fills in an inspected upload's cells (its unit came with its row).
fn with_cells(c: &Connection, mut upload: Upload) -> rusqlite::Result<Upload> {
    let Some(layout) = upload.layout.as_mut() else {
        return Ok(upload);
    };
    let mut stmt =
        c.prepare_cached("SELECT name, top FROM upload_cells WHERE upload_id = ?1 ORDER BY seq")?;
    let rows = stmt.query_map([upload.id.to_string()], |r| {
        Ok((r.get::<_, String>(0)?, r.get::<_, bool>(1)?))
    })?;
    for row in rows {
        let (name, top) = row?;
        if top {
            layout.top_cells.push(name.clone());
        }
        layout.cells.push(name);
    }
    Ok(upload)
}

fn upload_from_row(r: &Row) -> rusqlite::Result<Upload> {
    let format: String = r.get(4)?;
    let format = LayoutFormat::parse(&format)
        .ok_or_else(|| bad_value(format!("unknown format {format}")))?;
    Ok(Upload {
        id: parse_uuid(&r.get::<_, String>(0)?)?,
        name: r.get(1)?,
        size: r.get::<_, i64>(2)? as u64,
        sha256: r.get(3)?,
        format,
        created: from_micros(r.get(5)?)?,
        expires_at: r.get::<_, Option<i64>>(6)?.map(from_micros).transpose()?,
        expired: r.get(7)?,
        owner: r.get(8)?,
        layout: r.get::<_, Option<f64>>(9)?.map(|dbu_microns| Layout {
            format,
            dbu_microns,
            cells: vec![],
            top_cells: vec![],
        }),
    })
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

fn parse_status(s: &str) -> rusqlite::Result<RunStatus> {
    s.parse().map_err(bad_value)
}

fn bad_value(message: String) -> rusqlite::Error {
    rusqlite::Error::ToSqlConversionFailure(message.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> OffsetDateTime {
        OffsetDateTime::now_utc()
    }

    fn new_run() -> NewRun {
        NewRun {
            image: "img".into(),
            owner: None,
            notify_url: None,
            idempotency: None,
            created: now(),
        }
    }

    fn upload(expires_in: time::Duration) -> Upload {
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

    fn params(upload_id: Uuid) -> PrecheckParams {
        PrecheckParams {
            upload_id,
            top_cell: "chip_top".into(),
            die_id: "FFFFFFFF".into(),
            slot: "1x1".into(),
            cob: false,
        }
    }

    #[tokio::test]
    async fn queue_is_fifo_and_positions_count_down() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&dir.path().join("db.sqlite")).unwrap();
        let u = upload(time::Duration::minutes(5));
        db.insert_upload(u.clone()).await.unwrap();
        let mut ids = vec![];
        for _ in 0..3 {
            let id = Uuid::new_v4();
            let run = db
                .create_run(id, params(u.id), Scope::All, new_run())
                .await
                .unwrap()
                .unwrap();
            ids.push(id);
            assert_eq!(run.run.queue, Some((ids.len() as u64, ids.len() as u64)));
        }
        let first = db.claim_next_run(now()).await.unwrap().unwrap();
        assert_eq!(first.id, ids[0]);
        assert_eq!(first.status, RunStatus::Running);
        assert_eq!(db.run(ids[2]).await.unwrap().unwrap().queue, Some((2, 2)));
        assert!(matches!(
            db.cancel(ids[1], now()).await.unwrap(),
            Cancel::Cancelled(_)
        ));
        assert_eq!(db.claim_next_run(now()).await.unwrap().unwrap().id, ids[2]);
        assert!(db.claim_next_run(now()).await.unwrap().is_none());
        assert_eq!(db.queue_counts().await.unwrap(), (0, 2));
        // The upload is pinned by its runs: no longer expiring, not deletable while they run.
        assert_eq!(db.upload(u.id).await.unwrap().unwrap().expires_at, None);
        assert_eq!(
            db.delete_upload(u.id).await.unwrap(),
            DeleteUpload::InUse(ids[0])
        );
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

    #[tokio::test]
    async fn a_project_holds_at_most_max_files_files() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&dir.path().join("db.sqlite")).unwrap();
        let project = Project {
            id: Uuid::new_v4(),
            name: "p".into(),
            description: String::new(),
            owner: None,
            created: now(),
            updated: now(),
            files: 0,
            size: 0,
        };
        db.create_project(project.clone()).await.unwrap();
        let file = |path: &str| ProjectFile {
            path: path.into(),
            size: 1,
            sha256: "aa".into(),
            modified: now(),
        };
        let put = |paths: &[&str]| {
            db.put_files(project.id, paths.iter().map(|p| file(p)).collect(), 100, 2)
        };
        assert!(matches!(
            put(&["a", "b"]).await.unwrap(),
            PutFile::Stored { .. }
        ));
        // Replacing at the limit is fine; one more file is not, and nothing of it is stored.
        assert!(matches!(put(&["b"]).await.unwrap(), PutFile::Stored { .. }));
        assert!(matches!(
            put(&["b", "c"]).await.unwrap(),
            PutFile::TooManyFiles(3)
        ));
        let paths: Vec<String> = db
            .project_files(project.id)
            .await
            .unwrap()
            .into_iter()
            .map(|f| f.path)
            .collect();
        assert_eq!(paths, ["a", "b"]);
    }

    #[tokio::test]
    async fn a_job_keeps_the_files_it_was_given() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&dir.path().join("db.sqlite")).unwrap();
        let project = Project {
            id: Uuid::new_v4(),
            name: "p".into(),
            description: String::new(),
            owner: None,
            created: now(),
            updated: now(),
            files: 0,
            size: 0,
        };
        db.create_project(project.clone()).await.unwrap();
        let file = |path: &str, sha: &str| ProjectFile {
            path: path.into(),
            size: 3,
            sha256: sha.into(),
            modified: now(),
        };
        db.put_files(project.id, vec![file("config.json", "aa")], 100, 10)
            .await
            .unwrap();
        let build = |config: &str| {
            RunParams::Build(BuildParams {
                project_id: project.id,
                config: config.into(),
            })
        };
        let e = db
            .create_job(
                Uuid::new_v4(),
                build("x.json"),
                vec!["x.json".into()],
                new_run(),
            )
            .await
            .unwrap()
            .unwrap_err();
        assert_eq!(e, CreateJobError::MissingFile("x.json".into()));
        let id = Uuid::new_v4();
        let run = db
            .create_job(
                id,
                build("config.json"),
                vec!["config.json".into()],
                new_run(),
            )
            .await
            .unwrap()
            .unwrap();
        assert_eq!(run.kind(), RunKind::Build);
        // Replaced, then the project deleted (the job is queued: it refuses, until the job ends).
        db.put_files(project.id, vec![file("config.json", "bb")], 100, 10)
            .await
            .unwrap();
        assert_eq!(
            db.delete_project(project.id).await.unwrap(),
            DeleteProject::Busy(id)
        );
        db.claim_next_run(now()).await.unwrap().unwrap();
        db.finish_run(id, Outcome::completed(), now())
            .await
            .unwrap();
        assert!(matches!(
            db.delete_project(project.id).await.unwrap(),
            DeleteProject::Deleted(_)
        ));
        let kept = db.job_files(id).await.unwrap();
        assert_eq!(
            (kept[0].path.as_str(), kept[0].sha256.as_str()),
            ("config.json", "aa")
        );
        assert!(db.blob_in_use("aa".into()).await.unwrap());
        assert!(!db.blob_in_use("bb".into()).await.unwrap());
        assert!(db.known_names().await.unwrap().blobs.contains("aa"));
        db.set_progress(
            id,
            Progress {
                step: 3,
                name: "Floorplan".into(),
                count: Some(3),
            },
        )
        .await
        .unwrap();
        assert_eq!(
            db.last_build_steps(project.id, "config.json".into())
                .await
                .unwrap(),
            Some(3)
        );
        assert!(matches!(
            db.delete_run(id, false, now()).await.unwrap(),
            DeleteRun::Deleted(_)
        ));
        assert!(!db.blob_in_use("aa".into()).await.unwrap());
    }

    #[tokio::test]
    async fn expiry_and_reopening_keep_state() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db.sqlite");
        let db = Db::open(&path).unwrap();
        let old = upload(time::Duration::seconds(-1));
        db.insert_upload(old.clone()).await.unwrap();
        assert_eq!(db.expire_uploads(now()).await.unwrap(), vec![old.id]);
        let e = db
            .create_run(Uuid::new_v4(), params(old.id), Scope::All, new_run())
            .await
            .unwrap();
        assert_eq!(e.unwrap_err(), CreateRunError::UploadExpired);
        let e = db
            .create_run(
                Uuid::new_v4(),
                params(Uuid::new_v4()),
                Scope::All,
                new_run(),
            )
            .await
            .unwrap();
        assert_eq!(e.unwrap_err(), CreateRunError::UnknownUpload);
        drop(db);
        let db = Db::open(&path).unwrap();
        assert!(db.upload(old.id).await.unwrap().unwrap().expired);
    }

    #[tokio::test]
    async fn an_idempotency_key_answers_only_the_request_it_was_used_for() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&dir.path().join("db.sqlite")).unwrap();
        let u = upload(time::Duration::minutes(5));
        db.insert_upload(u.clone()).await.unwrap();
        let keyed = |request: &str| NewRun {
            idempotency: Some(Idempotency {
                key: "k".into(),
                request: request.into(),
            }),
            ..new_run()
        };
        let first = db
            .create_run(Uuid::new_v4(), params(u.id), Scope::All, keyed("a"))
            .await
            .unwrap()
            .unwrap();
        assert!(first.new);
        let again = db
            .create_run(Uuid::new_v4(), params(u.id), Scope::All, keyed("a"))
            .await
            .unwrap()
            .unwrap();
        assert!(!again.new);
        assert_eq!(again.run.id, first.run.id);
        let other = db
            .create_run(Uuid::new_v4(), params(u.id), Scope::All, keyed("b"))
            .await
            .unwrap();
        assert_eq!(other.unwrap_err(), CreateRunError::KeyReused);
        let key = |request: &str| Idempotency {
            key: "k".into(),
            request: request.into(),
        };
        assert!(matches!(
            db.idempotency_key_use(None, key("a")).await.unwrap(),
            Some(KeyUse::Same(run)) if run.id == first.run.id
        ));
        assert!(matches!(
            db.idempotency_key_use(None, key("b")).await.unwrap(),
            Some(KeyUse::Different)
        ));
        // Another owner's key of the same name is another key.
        assert!(
            db.idempotency_key_use(Some("bob".into()), key("b"))
                .await
                .unwrap()
                .is_none()
        );
    }
}
