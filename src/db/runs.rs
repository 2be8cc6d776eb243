//! What changes a run: its creation (with a client's idempotency key), its claim by the queue,
//! its end, a cancel, a requeue, and its deletion one by one or by pruning. Reads are in
//! [`run_list`](super::run_list).

use anyhow::Result;
use rusqlite::{Connection, OptionalExtension, params};
use time::OffsetDateTime;
use uuid::Uuid;

use super::run_list::{RUN_COLUMNS, parse_status, select_run, select_runs};
use super::uploads::{UPLOAD_COLUMNS, upload_from_row};
use super::webhooks::queue_delivery;
use super::{Db, micros, parse_uuid};
use crate::model::{Outcome, PrecheckParams, Run, RunStatus, Scope};

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

/// Why a precheck could not be created.
#[derive(Debug, PartialEq)]
pub enum CreateRunError {
    UnknownUpload,
    UploadExpired,
    /// The idempotency key was used for another request.
    KeyReused,
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

    /// For the tests: claims the oldest queued run for the engine `local`, as the queue does.
    #[cfg(test)]
    pub async fn claim_next_run(&self, now: OffsetDateTime) -> Result<Option<Run>> {
        match self.next_queued(Default::default()).await? {
            Some(run) => self.claim_run(run.id, "local".into(), now).await,
            None => Ok(None),
        }
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
                     start_sent_at = NULL, engine = NULL
                 WHERE id = ?1 AND status = 'running'",
                [id.to_string()],
            )?;
            Ok(n == 1)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::DeleteUpload;
    use crate::db::fixtures::{new_run, now, params, upload};
    /// A database with an upload and `n` prechecks of it, queued in order.
    async fn queued(n: usize) -> (tempfile::TempDir, Db, crate::model::Upload, Vec<Created>) {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&dir.path().join("db.sqlite")).unwrap();
        let u = upload(time::Duration::minutes(5));
        db.insert_upload(u.clone()).await.unwrap();
        let mut created = vec![];
        for _ in 0..n {
            let run = db
                .create_run(Uuid::new_v4(), params(u.id), Scope::All, new_run())
                .await
                .unwrap()
                .unwrap();
            created.push(run);
        }
        (dir, db, u, created)
    }

    #[tokio::test]
    async fn queue_is_fifo_and_positions_count_down() {
        let (_dir, db, u, created) = queued(3).await;
        let ids: Vec<Uuid> = created.iter().map(|c| c.run.id).collect();
        for (i, run) in created.iter().enumerate() {
            let n = i as u64 + 1;
            assert_eq!(
                run.run.queue,
                Some((n, n)),
                "each is last in the queue it joined"
            );
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

    /// What a cancel does depends on the run's state, decided in one transaction: a queued run
    /// ends cancelled, a running one is asked to stop, an ended or unknown one is refused (the
    /// API's 409 and 404).
    #[tokio::test]
    async fn a_cancel_is_decided_by_the_runs_state() {
        let (_dir, db, _, created) = queued(3).await;
        let ids: Vec<Uuid> = created.iter().map(|c| c.run.id).collect();
        let running = db.claim_next_run(now()).await.unwrap().unwrap().id;
        assert_eq!(running, ids[0]);
        assert!(matches!(
            db.cancel(running, now()).await.unwrap(),
            Cancel::Running
        ));
        assert!(db.cancel_requested(running).await.unwrap());
        let finished = db.claim_next_run(now()).await.unwrap().unwrap().id;
        assert!(
            db.finish_run(finished, Outcome::completed(), now())
                .await
                .unwrap()
        );
        assert!(matches!(
            db.cancel(finished, now()).await.unwrap(),
            Cancel::AlreadyFinished(RunStatus::Completed)
        ));
        let Cancel::Cancelled(run) = db.cancel(ids[2], now()).await.unwrap() else {
            panic!("a queued run is cancelled");
        };
        assert_eq!(run.status, RunStatus::Cancelled);
        assert!(matches!(
            db.cancel(ids[2], now()).await.unwrap(),
            Cancel::AlreadyFinished(RunStatus::Cancelled)
        ));
        assert!(matches!(
            db.cancel(Uuid::new_v4(), now()).await.unwrap(),
            Cancel::NotFound
        ));
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
