//! Runs one run in its container, from create to remove, and says how it ended.
//!
//! The lifecycle follows the wafer.space platform and is the same for every kind: create, copy
//! the run's files in through the archive API, start, follow the logs into the run's log file,
//! wait (racing the timeout and a cancel), copy the results out, remove the container. Whatever
//! happens in between, the container is removed and the run gets an [`Outcome`] that a person
//! can act on.
//!
//! What differs by kind (the command, the files in and out, how an exit code reads) is in the
//! kind's own file, behind `kind::Kind`: `precheck.rs`, `simulation.rs`, `build.rs`. A run's end
//! goes through [`Ends::ended`] (`ending.rs`), shared with the queue and recovery; the log file is
//! `log_file.rs`.

mod build;
mod checkers;
mod ending;
mod kind;
mod log_file;
mod precheck;
mod simulation;

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::db::Db;
use crate::docker::ContainerSpec;
use crate::engines::{Member, Reach, Slot};
use crate::metrics::Metrics;
use crate::model::{Outcome, Run, RunParams, exit_code};
use crate::storage::{Storage, Unpacked};
use crate::units::human_bytes;

pub use build::final_gds;
pub use ending::{Due, Ends, Record, read_ending};
pub use kind::{ARTIFACTS, PROBE_LABEL, RUN_LABEL, STORAGE_LABEL};
pub use log_file::{finished_note, note};
pub use precheck::precheck_image_watch;

use build::Build;
use kind::{CopyOut, Ctx, Kind};
use log_file::append_logs;
use precheck::Precheck;
use simulation::Simulation;

/// How long a cancelled container gets to stop before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// What the rest of the server can see of a run while it executes.
pub struct ActiveRun {
    pub cancel: CancellationToken,
    /// Bytes written to the log file so far; log followers wait on changes.
    pub log_len: watch::Sender<u64>,
    /// Its slot on its engine: freed when its container has stopped, before its results are
    /// copied out and its end recorded.
    pub slot: Slot,
}

impl ActiveRun {
    pub fn new(slot: Slot) -> ActiveRun {
        ActiveRun {
            cancel: CancellationToken::new(),
            log_len: watch::Sender::new(0),
            slot,
        }
    }
}

/// Executes runs. Cheap to clone.
#[derive(Clone)]
pub struct Runner {
    pub db: Db,
    pub storage: Storage,
    pub config: Arc<Config>,
    pub metrics: Arc<Metrics>,
    /// The container creates and starts being made; a stop waits for them.
    pub starts: StartGate,
}

/// The container creates and starts the server is making, and whether it is stopping: a stop
/// waits for those already asked for, and none begins after it. So a stopped server leaves each
/// run's container either started (with its start recorded) or never asked to start, and no
/// container that the engine makes after the server is gone.
#[derive(Clone, Default)]
pub struct StartGate(Arc<GateState>);

#[derive(Default)]
pub struct GateState {
    /// Set first at a stop, and never unset: no start begins after it, even if the wait for
    /// those in flight gives up.
    closed: std::sync::atomic::AtomicBool,
    /// Held (read) by each start in flight; a stop waits for it (write).
    in_flight: tokio::sync::RwLock<()>,
}

impl StartGate {
    /// Lets a start begin, or waits for ever if the server is stopping (its task ends with the
    /// process, leaving the container for the next start to find).
    async fn enter(&self) -> tokio::sync::RwLockReadGuard<'_, ()> {
        let guard = self.0.in_flight.read().await;
        if !self.0.closed.load(std::sync::atomic::Ordering::SeqCst) {
            return guard;
        }
        drop(guard);
        std::future::pending().await
    }

    /// Closes the gate, then waits for the starts in flight to end.
    pub async fn close(&self) {
        self.0
            .closed
            .store(true, std::sync::atomic::Ordering::SeqCst);
        drop(self.0.in_flight.write().await);
    }
}

/// A run's end, recorded: how it ended, and its container, to remove
/// ([`Runner::remove`]).
pub struct Finished {
    pub outcome: Outcome,
    pub container: Option<String>,
}

/// What [`Runner::prepare`] made of a queued run.
pub enum Prepared {
    /// Its container, made and staged, ready to start.
    Ready(String),
    /// It cannot run, and how it ends; the container made before that, if any.
    Ended(Outcome, Option<String>),
}

/// Where a run's execution begins.
enum Begin {
    /// Its prepared container, to start.
    Prepared(String),
    /// Its container, found again after a restart.
    Attach(Attach),
}

/// Where a watch of a container begins: after the first `skip` of its log messages (the log
/// file has them), with the run's deadline (`None` if the container has stopped already).
struct WatchFrom {
    skip: usize,
    deadline: Option<Instant>,
}

/// A container that was running (or had finished) when the server stopped, to watch to the end.
#[derive(Debug, Clone)]
pub struct Attach {
    pub container: String,
    /// How many of the container's log messages the log file already holds.
    pub skip: usize,
    /// When `limits.timeout` runs out; `None` if the container has stopped already.
    pub deadline: Option<Instant>,
    /// How the run ended, if the server knew but could not record it before it stopped.
    pub ended: Option<Outcome>,
}

impl Runner {
    /// Prepares a queued run's container on the engine it was placed on, while it waits for a
    /// slot there: its image, its container made and its files staged. Changes nothing but
    /// the run's image id: the run stays queued.
    pub async fn prepare(
        &self,
        run: &Run,
        on: &Arc<Member>,
        cancel: &CancellationToken,
    ) -> Prepared {
        match &run.params {
            RunParams::Precheck(p) => self.prepare_as(&Precheck(p), run, on, cancel).await,
            RunParams::Simulation(p) => self.prepare_as(&Simulation(p), run, on, cancel).await,
            RunParams::Build(p) => self.prepare_as(&Build(p), run, on, cancel).await,
        }
    }

    /// Starts the prepared container of a run that the queue has claimed, watches it and
    /// records how it ended.
    pub async fn execute(
        &self,
        run: &Run,
        active: &ActiveRun,
        on: &Arc<Member>,
        container: String,
    ) -> Finished {
        self.lifecycle(run, active, on, Begin::Prepared(container))
            .await
    }

    /// Ends a claimed run whose preparation ended it (its image is missing, its files are
    /// gone, the engine refused the container), as an execution would have.
    pub async fn end_unstarted(
        &self,
        run: &Run,
        outcome: Outcome,
        container: Option<String>,
    ) -> Finished {
        let result = self.run_dir(run).await.map(|()| outcome);
        self.finish(run, result, container).await
    }

    /// Removes a run's container: once its end is recorded (and told), or a prepared one that
    /// will not start on this engine (cancelled, deleted, or its engine went away or was
    /// drained while it waited). If the engine does not answer, once it is back.
    pub async fn remove(&self, run: &Run, on: &Arc<Member>, container: Option<String>) {
        if let Some(id) = container {
            self.remove_container(run, on, &id).await
        }
    }

    /// Watches the container of a run that was running when the server stopped, from where
    /// its log file ends, and finishes the run as [`Runner::execute`] would have.
    pub async fn resume(
        &self,
        run: &Run,
        active: &ActiveRun,
        on: &Arc<Member>,
        attach: Attach,
    ) -> Finished {
        if let Some(outcome) = attach.ended {
            // Its end is in the log and its results are in its folder already.
            let due = Due {
                note: false,
                record: Record::UntilTaken,
            };
            // Recorded until taken: this never fails.
            let _ = self.ends().ended(run, &outcome, due).await;
            return Finished {
                outcome,
                container: Some(attach.container),
            };
        }
        self.lifecycle(run, active, on, Begin::Attach(attach)).await
    }

    /// The one step every run's end goes through (see [`Ends`]), on this runner's handles.
    pub fn ends(&self) -> Ends<'_> {
        Ends {
            db: &self.db,
            storage: &self.storage,
            metrics: &self.metrics,
        }
    }

    /// Every kind of run, each with its container's rules in its own file: a new kind is
    /// registered here.
    async fn lifecycle(
        &self,
        run: &Run,
        active: &ActiveRun,
        on: &Arc<Member>,
        begin: Begin,
    ) -> Finished {
        match &run.params {
            RunParams::Precheck(p) => self.run_as(&Precheck(p), run, active, on, begin).await,
            RunParams::Simulation(p) => self.run_as(&Simulation(p), run, active, on, begin).await,
            RunParams::Build(p) => self.run_as(&Build(p), run, active, on, begin).await,
        }
    }

    /// Starts the run's prepared container (or, after a restart, takes the one it had),
    /// watches it to its end and finishes the run.
    async fn run_as<K: Kind>(
        &self,
        kind: &K,
        run: &Run,
        active: &ActiveRun,
        on: &Arc<Member>,
        begin: Begin,
    ) -> Finished {
        let (id, result) = match begin {
            Begin::Prepared(id) => {
                let result = self.start_container(kind, run, active, on, &id).await;
                (id, result)
            }
            Begin::Attach(attach) => {
                let from = WatchFrom {
                    skip: attach.skip,
                    deadline: attach.deadline,
                };
                let result = self
                    .watch(kind, run, active, on, &attach.container, from)
                    .await;
                (attach.container, result)
            }
        };
        let result = match result {
            Err(e) => self.through_outage(kind, run, active, on, &id, e).await,
            ok => ok,
        };
        self.finish(run, result, Some(id)).await
    }

    /// Notes the outcome in the log and records it. The container is removed after (by the
    /// caller, once it has told the run's waiters): a server stopped in between finds either a
    /// running run with its container or a finished one.
    async fn finish(
        &self,
        run: &Run,
        result: Result<Outcome>,
        container: Option<String>,
    ) -> Finished {
        let outcome = result.unwrap_or_else(|e| failure(run, e));
        let due = Due {
            note: true,
            record: Record::UntilTaken,
        };
        // Recorded until taken: this never fails.
        let _ = self.ends().ended(run, &outcome, due).await;
        Finished { outcome, container }
    }

    /// Removes the run's container; if its engine does not answer, once the engine is back.
    async fn remove_container(&self, run: &Run, on: &Arc<Member>, id: &str) {
        let Err(e) = on.engine.remove(id).await else {
            return;
        };
        if on.engine.ping().await.is_ok() {
            tracing::error!(run_id = %run.id, container = %id, "cannot remove container: {e:#}");
            return;
        }
        tracing::warn!(run_id = %run.id, engine = on.name(), container = %id, "its engine does not answer: the container is removed when it is back");
        let (on, id, run_id) = (on.clone(), id.to_string(), run.id);
        tokio::spawn(async move {
            let forever = Instant::now() + Duration::from_secs(100 * 365 * 24 * 3600);
            if on.wait_up(forever).await {
                if let Err(e) = on.engine.remove(&id).await {
                    tracing::error!(%run_id, container = %id, "cannot remove container: {e:#}");
                }
            }
        });
    }

    /// A watch that failed: if the run's engine does not answer, the run waits for it (its
    /// `grace`), and is watched again from where its log ends once the engine is back;
    /// past the grace it fails naming the engine. Any other failure is the run's.
    async fn through_outage<K: Kind>(
        &self,
        kind: &K,
        run: &Run,
        active: &ActiveRun,
        on: &Arc<Member>,
        id: &str,
        mut error: anyhow::Error,
    ) -> Result<Outcome> {
        let (limits, _) = self.config.limits_for(run.kind());
        // The run's timeout goes on counting while its engine is away.
        let deadline = run.started_at.map(|started| {
            let elapsed =
                Duration::try_from(time::OffsetDateTime::now_utc() - started).unwrap_or_default();
            Instant::now() + limits.timeout.saturating_sub(elapsed)
        });
        loop {
            let ping = match on.engine.ping().await {
                Ok(()) => return Err(error),
                Err(e) => e,
            };
            on.seen_down(&ping);
            let since = match on.reach() {
                Reach::Down { since, .. } => since,
                _ => time::OffsetDateTime::now_utc(),
            };
            let grace_left =
                Duration::try_from(since + on.config.grace - time::OffsetDateTime::now_utc())
                    .unwrap_or_default();
            tracing::warn!(run_id = %run.id, engine = on.name(), "its engine does not answer ({error:#}): the run waits for it up to {} s", grace_left.as_secs());
            let back = tokio::select! {
                back = on.wait_up(Instant::now() + grace_left) => back,
                // A cancel cannot reach a container on an engine that is away: the run ends
                // now, and its container is removed when the engine is back.
                _ = active.cancel.cancelled() => return Ok(Outcome::cancelled()),
            };
            if !back {
                return Ok(Outcome::failed(
                    exit_code::NOT_RUN,
                    crate::engines::unreachable(on.name(), since),
                ));
            }
            let path = self.storage.log_path(run.id);
            let (skip, len) =
                tokio::task::spawn_blocking(move || crate::logs::complete_lines(&path)).await??;
            active.log_len.send_replace(len);
            let deadline = match on.engine.state(id).await {
                Err(e) => {
                    // Gone again: the top of the loop tells.
                    error = e;
                    continue;
                }
                Ok(None) => {
                    return Ok(Outcome::failed(
                        exit_code::NOT_RUN,
                        format!("container lost while its engine {:?} was away", on.name()),
                    ));
                }
                Ok(Some(state)) if matches!(state.as_str(), "exited" | "dead") => None,
                Ok(Some(_)) => deadline,
            };
            tracing::info!(run_id = %run.id, engine = on.name(), container = %id, "its engine is back: watching the run again");
            match self
                .watch(kind, run, active, on, id, WatchFrom { skip, deadline })
                .await
            {
                Ok(outcome) => return Ok(outcome),
                Err(e) => error = e,
            }
        }
    }

    /// What a kind's rules may use.
    fn ctx<'a>(&'a self, on: &'a Member) -> Ctx<'a> {
        Ctx {
            db: &self.db,
            storage: &self.storage,
            engine: &on.engine,
            config: &self.config,
        }
    }

    /// The run's folder, where its log and results go.
    async fn run_dir(&self, run: &Run) -> Result<()> {
        let run_dir = self.storage.run_dir(run.id);
        tokio::fs::create_dir_all(&run_dir)
            .await
            .with_context(|| format!("cannot create {}", run_dir.display()))
    }

    async fn prepare_as<K: Kind>(
        &self,
        kind: &K,
        run: &Run,
        on: &Arc<Member>,
        cancel: &CancellationToken,
    ) -> Prepared {
        let mut container = None;
        match self
            .make_container(kind, run, on, cancel, &mut container)
            .await
        {
            Ok(Ok(id)) => Prepared::Ready(id),
            Ok(Err(outcome)) => Prepared::Ended(outcome, container),
            Err(e) => Prepared::Ended(failure(run, e), container),
        }
    }

    /// Makes the run's container and stages its files; its id, or `Ok(Err(outcome))` if the
    /// run cannot start (`container` is set as soon as there is one, to remove then).
    async fn make_container<K: Kind>(
        &self,
        kind: &K,
        run: &Run,
        on: &Arc<Member>,
        cancelled: &CancellationToken,
        container: &mut Option<String>,
    ) -> Result<Result<String, Outcome>> {
        let image = &run.image;
        // A precheck of the configured image waits for its self-test and fails at once if the
        // image is broken.
        let probed = K::PROBED && *image == on.image.image();
        let Some(image_id) = on.engine.image_id(image).await? else {
            if probed {
                on.image.missing();
            }
            return Ok(Err(Outcome::failed(
                exit_code::NOT_RUN,
                format!(
                    "the image {image} is not on the Docker engine: run `docker pull {image}` on the engine's host, then submit again"
                ),
            )));
        };
        self.db.set_image_id(run.id, image_id.clone()).await?;
        if probed {
            let verdict = tokio::select! {
                verdict = on.image.verdict(&image_id) => verdict,
                _ = cancelled.cancelled() => return Ok(Err(Outcome::cancelled())),
            };
            if let Err(why) = verdict {
                return Ok(Err(Outcome::failed(exit_code::NOT_RUN, why)));
            }
        }

        let plan = match kind.plan(&self.ctx(on), run).await? {
            Ok(plan) => plan,
            Err(refused) => return Ok(Err(refused)),
        };
        let (limits, _) = self.config.limits_for(run.kind());
        let spec = ContainerSpec {
            name: format!("{}{}", self.config.container_prefix, run.id),
            image: image.clone(),
            cmd: plan.cmd,
            working_dir: plan.working_dir.into(),
            env: plan.env,
            labels: HashMap::from([
                (RUN_LABEL.to_string(), run.id.to_string()),
                (
                    STORAGE_LABEL.to_string(),
                    self.storage.root().display().to_string(),
                ),
            ]),
            limits: limits.clone(),
            mounts: plan.mounts,
        };
        if cancelled.is_cancelled() {
            return Ok(Err(Outcome::cancelled()));
        }
        // Through the start gate too: a stopped server has no create in flight, whose
        // container the engine would make after the server is gone.
        let gate = self.starts.enter().await;
        let id = self
            .create(on, &spec)
            .await
            .inspect_err(|_| {
                self.metrics.start_failures.inc();
            })
            .context("cannot create the container")?;
        drop(gate);
        *container = Some(id.clone());
        let dirs: Vec<&str> = plan.dirs.iter().map(String::as_str).collect();
        tokio::select! {
            staged = on.engine.stage(&id, &dirs, &plan.files) => staged?,
            _ = cancelled.cancelled() => return Ok(Err(Outcome::cancelled())),
        }
        Ok(Ok(id))
    }

    /// Creates the container; a container of the same name that never started (prepared for
    /// this run earlier on this engine, and not removed yet because the engine was away when
    /// the run went elsewhere) is removed first.
    async fn create(&self, on: &Member, spec: &ContainerSpec) -> Result<String> {
        match on.engine.create(spec).await {
            Ok(id) => Ok(id),
            Err(e) => match on.engine.state(&spec.name).await {
                Ok(Some(state)) if state == "created" => {
                    tracing::info!(container = %spec.name, "removing this run's earlier prepared container");
                    on.engine.remove(&spec.name).await?;
                    on.engine.create(spec).await
                }
                _ => Err(e),
            },
        }
    }

    /// Starts a prepared container and watches it.
    async fn start_container<K: Kind>(
        &self,
        kind: &K,
        run: &Run,
        active: &ActiveRun,
        on: &Arc<Member>,
        id: &str,
    ) -> Result<Outcome> {
        self.run_dir(run).await?;
        if active.cancel.is_cancelled() {
            return Ok(Outcome::cancelled());
        }
        // The start is recorded before it is asked for, and a stop waits for it to end: after
        // any stop, a `created` container was either never asked to start or is being started
        // by the engine, and recovery can tell which (docs/decisions.md, "A run's end").
        let gate = self.starts.enter().await;
        // `runs delete --force` may have deleted it while its container was being prepared.
        let marked = retry_busy(|| {
            self.db
                .mark_start_sent(run.id, time::OffsetDateTime::now_utc())
        })
        .await
        .context("cannot record the container's start")?;
        if !marked {
            return Ok(Outcome::failed(exit_code::NOT_RUN, "the run was deleted"));
        }
        on.engine
            .start(id)
            .await
            .inspect_err(|_| {
                self.metrics.start_failures.inc();
            })
            .context("cannot start the container")?;
        drop(gate);
        let (limits, _) = self.config.limits_for(run.kind());
        let deadline = Instant::now() + limits.timeout;
        let from = WatchFrom {
            skip: 0,
            deadline: Some(deadline),
        };
        self.watch(kind, run, active, on, id, from).await
    }

    /// Follows a started container's log into the run's log file (after the first `skip`
    /// messages), waits for it to stop (racing the deadline and a cancel), copies its results
    /// out and says how it ended.
    async fn watch<K: Kind>(
        &self,
        kind: &K,
        run: &Run,
        active: &ActiveRun,
        on: &Arc<Member>,
        id: &str,
        from: WatchFrom,
    ) -> Result<Outcome> {
        let WatchFrom { skip, deadline } = from;
        let ctx = self.ctx(on);
        let run_dir = self.storage.run_dir(run.id);
        let log_path = self.storage.log_path(run.id);
        let tracker = kind.tracker(&ctx, run).await?;
        // A log that cannot be written (a full disk) ends the run at once: what it prints
        // would be lost, and its results could not be kept either.
        let log_full = CancellationToken::new();
        // Ended with the watch, however it ends: a watch taken up again after its engine came
        // back never has two appenders.
        let logs = tokio_util::task::AbortOnDropHandle::new(tokio::spawn({
            let appended = append_logs(
                on.engine.logs(id, true),
                log_path.clone(),
                active.log_len.clone(),
                skip,
                tracker.clone(),
                self.metrics.log_bytes.clone(),
            );
            let log_full = log_full.clone();
            async move {
                let appended = appended.await;
                if appended.as_ref().is_err_and(is_disk_full) {
                    log_full.cancel();
                }
                appended
            }
        }));

        let (limits, table) = self.config.limits_for(run.kind());
        let timeout = limits.timeout;
        // Without a deadline the container has stopped already: neither a timeout nor a
        // cancel can change how it ended.
        let expired = async {
            match deadline {
                Some(deadline) => tokio::time::sleep_until(deadline).await,
                None => std::future::pending().await,
            }
        };
        let cancelled = async {
            match deadline {
                Some(_) => active.cancel.cancelled().await,
                None => std::future::pending().await,
            }
        };
        let ended = tokio::select! {
            waited = on.engine.wait(id) => { waited?; None }
            _ = expired => {
                on.engine.kill(id).await?;
                Some(Outcome::failed(exit_code::TIMED_OUT, format!(
                    "timed out after {} s ({table}.timeout): the container was killed",
                    timeout.as_secs()
                )))
            }
            _ = cancelled => {
                on.engine.stop(id, STOP_GRACE).await?;
                Some(Outcome::cancelled())
            }
            _ = log_full.cancelled() => {
                on.engine.kill(id).await?;
                active.slot.free();
                return Ok(log_not_written());
            }
        };
        // The container has stopped: the next run may start while this one's log is read to
        // its end, its results are copied out and its end is recorded.
        active.slot.free();
        // The engine's followed stream can end before it has sent everything a fast printer
        // wrote (seen with 200 000 lines on Docker 20.10): once the container has stopped, the
        // rest is read from a plain, unfollowed log, skipping the messages already appended.
        let followed = match tokio::time::timeout(Duration::from_secs(30), logs).await {
            Ok(Ok(Ok(count))) => count,
            Ok(Ok(Err(e))) if is_disk_full(&e) => return Ok(log_not_written()),
            Ok(Ok(Err(e))) => return Err(e.context("cannot follow the container's log")),
            Ok(Err(e)) => return Err(anyhow::Error::from(e).context("the log task failed")),
            Err(_) => {
                return Err(anyhow::anyhow!(
                    "the container's log did not end after it stopped"
                ));
            }
        };
        // The rest of the log, the results and the exit code, all at once. Results are copied
        // out whatever the ending: a failed run's files are what its designer needs to read.
        let rest = append_logs(
            on.engine.logs(id, false),
            log_path,
            active.log_len.clone(),
            followed,
            tracker.clone(),
            self.metrics.log_bytes.clone(),
        );
        let out = CopyOut::new(&on.engine, id);
        let copied = kind.collect(&ctx, run, &run_dir, &out);
        let (rest, copied, exit) = tokio::join!(rest, copied, on.engine.exit(id));
        match rest {
            Err(e) if is_disk_full(&e) => {
                remove_results::<K>(&run_dir).await?;
                return Ok(log_not_written());
            }
            Err(e) => return Err(e.context("cannot read the rest of the container's log")),
            Ok(_) => {}
        }
        // Noted after the container's last line.
        self.note_skipped(run, out.skipped()).await;
        if let Err(e) = copied {
            if !is_disk_full(&e) {
                return Err(e);
            }
            // Half a layout is no result: nothing partial is served as the run's output, and
            // what was copied goes, so that the run's end fits on the disk.
            remove_results::<K>(&run_dir).await?;
            return Ok(Outcome::failed(
                exit_code::NOT_RUN,
                format!("{DISK_FULL}: its results could not be copied out"),
            ));
        }
        if let Some(outcome) = ended {
            return Ok(outcome);
        }

        let exit = exit?;
        if exit.oom_killed {
            return Ok(Outcome {
                oom_killed: true,
                ..Outcome::failed(
                    exit.code,
                    format!(
                        "out of memory (limit {}): the container was killed; raise {table}.memory if the run needs more",
                        human_bytes(limits.memory)
                    ),
                )
            });
        }
        let progress = match tracker {
            Some(tracker) => tracker.lock().map(|t| t.progress.clone()).ok(),
            None => None,
        };
        Ok(kind.judge(&ctx, run, exit.code, progress).await)
    }

    /// Notes in the run's log what was not copied out of its container: only regular files
    /// and folders are (docs/decisions.md, "What containers hand back").
    async fn note_skipped(&self, run: &Run, skipped: Unpacked) {
        if skipped.is_empty() {
            return;
        }
        let count = skipped.skipped.len() as u64 + skipped.unnamed;
        let mut lines = vec![format!(
            "{count} entries were not copied out of the container: only regular files and folders are, and links are never followed (docs/decisions.md, \"What containers hand back\")"
        )];
        lines.extend(skipped.skipped);
        if skipped.unnamed > 0 {
            lines.push(format!("and {} more skipped", skipped.unnamed));
        }
        let log = self.storage.log_path(run.id);
        for line in &lines {
            if let Err(e) = note(&log, line).await {
                tracing::warn!(run_id = %run.id, "cannot note a skipped entry in the log: {e}");
                break;
            }
        }
    }
}

/// Removes what a kind copies out of its container, for a run that keeps none of it.
async fn remove_results<K: Kind>(run_dir: &Path) -> Result<()> {
    for partial in K::RESULTS {
        crate::storage::remove_tree(&run_dir.join(partial)).await?;
    }
    Ok(())
}

/// How a run ended when the server's disk filled up under it.
pub const DISK_FULL: &str =
    "the server's disk is full; free space on it, then submit the run again";

/// How a run ends whose log could not be written for a full disk.
fn log_not_written() -> Outcome {
    Outcome::failed(
        exit_code::NOT_RUN,
        format!("{DISK_FULL}: its log could not be written, so it was stopped"),
    )
}

/// How a run ends that an error stopped.
fn failure(run: &Run, e: anyhow::Error) -> Outcome {
    tracing::warn!(run_id = %run.id, "run failed: {e:#}");
    if is_disk_full(&e) {
        Outcome::failed(exit_code::NOT_RUN, DISK_FULL)
    } else {
        Outcome::failed(exit_code::NOT_RUN, format!("{e:#}"))
    }
}

/// Whether an error is a full disk (a file write's or the database's).
fn is_disk_full(e: &anyhow::Error) -> bool {
    crate::db::trouble(e) == Some(crate::db::Trouble::Full)
}

/// Tries a database write again while another process holds the lock (for up to a minute
/// beyond the busy timeout); other errors are returned at once.
async fn retry_busy<T, F, Fut>(mut f: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T>>,
{
    let until = Instant::now() + Duration::from_secs(60);
    loop {
        match f().await {
            Err(e)
                if crate::db::trouble(&e) == Some(crate::db::Trouble::Busy)
                    && Instant::now() < until =>
            {
                tracing::warn!("the database refused a write, trying again: {e:#}");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            other => return other,
        }
    }
}
