//! Runs one precheck in its container, from create to remove, and says how it ended.
//!
//! The lifecycle follows the wafer.space platform: create, copy the layout in through the archive
//! API, start, follow the logs into the run's log file, wait (racing the timeout and a cancel),
//! copy `/output/design.gds` and `/work` out, remove the container. Whatever happens in between,
//! the container is removed and the run gets an [`Outcome`] that a person can act on.

use std::collections::{BTreeSet, HashMap};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use futures_util::StreamExt;
use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::config::{Config, PDK_MOUNT, PdkSource, human_bytes};
use crate::db::Db;
use crate::docker::{ContainerSpec, Engine, ReadOnlyMount, StagedFile};
use crate::image::ImageWatch;
use crate::logs;
use crate::metrics::Metrics;
use crate::model::{
    BuildParams, Outcome, PrecheckParams, Progress, Run, RunParams, SimulationParams,
    SimulationTool, exit_code,
};
use crate::progress;
use crate::storage::{Storage, Unpacked};
use prometheus::IntCounter;

/// Every container the server creates carries its run's id under this label.
pub const RUN_LABEL: &str = "precheck-server.run-id";
/// ... and the storage folder of the server that owns it, so one server never touches another's.
pub const STORAGE_LABEL: &str = "precheck-server.storage";

/// ... and, on the precheck image's self-test containers, `true`.
pub const PROBE_LABEL: &str = "precheck-server.probe";

/// The precheck's working directory in its image: the real image's, holding `precheck.py`.
const PRECHECK_DIR: &str = "/workspace";

/// How long the precheck image's self-test may take at most: the real image copies
/// `/workspace` into its Nix store at every start.
const PROBE_TIMEOUT: Duration = Duration::from_secs(600);

/// How long a cancelled container gets to stop before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// How often a busy log is flushed to its file (and its followers woken).
const FLUSH_EVERY: Duration = Duration::from_millis(50);

/// What the rest of the server can see of a run while it executes.
pub struct ActiveRun {
    pub cancel: CancellationToken,
    /// Bytes written to the log file so far; log followers wait on changes.
    pub log_len: watch::Sender<u64>,
}

impl ActiveRun {
    pub fn new() -> ActiveRun {
        ActiveRun {
            cancel: CancellationToken::new(),
            log_len: watch::Sender::new(0),
        }
    }
}

impl Default for ActiveRun {
    fn default() -> Self {
        ActiveRun::new()
    }
}

/// Executes runs. Cheap to clone.
#[derive(Clone)]
pub struct Runner {
    pub engine: Engine,
    pub db: Db,
    pub storage: Storage,
    pub config: Arc<Config>,
    pub metrics: Arc<Metrics>,
    /// The precheck image and its self-test.
    pub image: ImageWatch,
    /// The container starts being made; a stop waits for them.
    pub starts: StartGate,
}

/// The container starts the server is making, and whether it is stopping: a stop waits for
/// the starts already asked for, and no start begins after it. So a stopped server leaves each
/// run's container either started (with its start recorded) or never asked to start.
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

/// The watch of the configured precheck image, whose self-test runs `python3 precheck.py --help`
/// in a container made as a precheck's: the same isolation (`Engine::create`), limits, working
/// directory, environment and entrypoint, and this storage folder's label.
pub fn precheck_image_watch(engine: &Engine, config: &Config, storage: &Storage) -> ImageWatch {
    let (limits, _) = config.limits_for(crate::model::RunKind::Precheck);
    let probe = ContainerSpec {
        name: config.container_prefix.clone(),
        image: config.image.clone(),
        cmd: ["python3", "precheck.py", "--help"]
            .map(String::from)
            .into(),
        working_dir: PRECHECK_DIR.into(),
        env: run_env(),
        labels: HashMap::from([
            (PROBE_LABEL.to_string(), "true".to_string()),
            (
                STORAGE_LABEL.to_string(),
                storage.root().display().to_string(),
            ),
        ]),
        limits: limits.clone(),
        mounts: vec![],
    };
    ImageWatch::new(engine.clone(), probe, PROBE_TIMEOUT.min(limits.timeout))
}

/// The environment of every run's container.
fn run_env() -> Vec<String> {
    vec!["COLUMNS=200".to_string()]
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
    /// Executes a run that the queue has claimed, records how it ended and removes its
    /// container.
    pub async fn execute(&self, run: &Run, active: &ActiveRun) -> Outcome {
        let mut container = None;
        let result = self.run_container(run, active, &mut container).await;
        self.finish(run, result, container).await
    }

    /// Watches the container of a run that was running when the server stopped, from where
    /// its log file ends, and finishes the run as [`Runner::execute`] would have.
    pub async fn resume(&self, run: &Run, active: &ActiveRun, attach: Attach) -> Outcome {
        if let Some(outcome) = attach.ended {
            // Its end is in the log and its results are in its folder already.
            self.record_end(run, &outcome).await;
            self.remove_container(run, &attach.container).await;
            return outcome;
        }
        let result = self
            .watch(run, active, &attach.container, attach.skip, attach.deadline)
            .await;
        self.finish(run, result, Some(attach.container)).await
    }

    /// Notes the outcome in the log, records it, then removes the container: a server stopped
    /// in between finds either a running run with its container or a finished one.
    async fn finish(
        &self,
        run: &Run,
        result: Result<Outcome>,
        container: Option<String>,
    ) -> Outcome {
        let outcome = result.unwrap_or_else(|e| {
            tracing::warn!(run_id = %run.id, "run failed: {e:#}");
            if is_disk_full(&e) {
                Outcome::failed(exit_code::NOT_RUN, DISK_FULL)
            } else {
                Outcome::failed(exit_code::NOT_RUN, format!("{e:#}"))
            }
        });
        if let Err(e) = note(&self.storage.log_path(run.id), &finished_note(&outcome)).await {
            tracing::warn!(run_id = %run.id, "cannot note the end of the run in its log: {e}");
        }
        self.record_end(run, &outcome).await;
        if let Some(id) = container {
            self.remove_container(run, &id).await;
        }
        outcome
    }

    /// Records how the run ended, trying again until the database takes it (another process
    /// may hold its lock, the disk may be full). Meanwhile the outcome waits in the run's
    /// folder and its container stays: a server stopped now finds both at its next start.
    async fn record_end(&self, run: &Run, outcome: &Outcome) {
        let ended = time::OffsetDateTime::now_utc();
        let ending = self.storage.run_dir(run.id).join(ENDING);
        let mut pending = false;
        let mut wait = Duration::from_millis(250);
        loop {
            match self.db.finish_run(run.id, outcome.clone(), ended).await {
                Ok(true) => {
                    self.metrics.run_finished(run, outcome, ended);
                    break;
                }
                // Deleted while it ran (`runs delete --force`): its files go too.
                Ok(false) => {
                    if let Ok(None) = self.db.run(run.id).await
                        && let Err(e) = self.storage.remove_run(run.id).await
                    {
                        tracing::warn!(run_id = %run.id, "cannot remove a deleted run's files: {e}");
                    }
                    break;
                }
                Err(e) => {
                    if !pending {
                        pending = true;
                        tracing::error!(run_id = %run.id, "cannot record the end of the run, trying again until it is: {e:#}");
                        if let Err(e) = write_ending(&ending, outcome).await {
                            tracing::warn!(run_id = %run.id, "cannot keep the run's end in its folder: {e}");
                        }
                    }
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(Duration::from_secs(5));
                }
            }
        }
        if pending {
            tracing::info!(run_id = %run.id, "the end of the run is recorded");
        }
        // Kept by this call, or by the server before a restart (a resumed run's `ended`).
        remove_ending(&self.storage.run_dir(run.id)).await;
    }

    async fn remove_container(&self, run: &Run, id: &str) {
        if let Err(e) = self.engine.remove(id).await {
            tracing::error!(run_id = %run.id, container = %id, "cannot remove container: {e:#}");
        }
    }

    async fn run_container(
        &self,
        run: &Run,
        active: &ActiveRun,
        container: &mut Option<String>,
    ) -> Result<Outcome> {
        let cancelled = &active.cancel;
        let run_dir = self.storage.run_dir(run.id);
        tokio::fs::create_dir_all(&run_dir)
            .await
            .with_context(|| format!("cannot create {}", run_dir.display()))?;

        let image = &run.image;
        // A precheck of the configured image waits for its self-test and fails at once if the
        // image is broken.
        let probed = matches!(run.params, RunParams::Precheck(_)) && *image == self.image.image();
        let Some(image_id) = self.engine.image_id(image).await? else {
            if probed {
                self.image.missing();
            }
            return Ok(Outcome::failed(
                exit_code::NOT_RUN,
                format!(
                    "the image {image} is not on the Docker engine: run `docker pull {image}` on the engine's host, then submit again"
                ),
            ));
        };
        self.db.set_image_id(run.id, image_id.clone()).await?;
        if probed {
            let verdict = tokio::select! {
                verdict = self.image.verdict(&image_id) => verdict,
                _ = cancelled.cancelled() => return Ok(Outcome::cancelled()),
            };
            if let Err(why) = verdict {
                return Ok(Outcome::failed(exit_code::NOT_RUN, why));
            }
        }

        let plan = match self.plan(run).await? {
            Ok(plan) => plan,
            Err(refused) => return Ok(refused),
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
            return Ok(Outcome::cancelled());
        }
        let id = self
            .engine
            .create(&spec)
            .await
            .inspect_err(|_| {
                self.metrics.start_failures.inc();
            })
            .context("cannot create the container")?;
        *container = Some(id.clone());
        let dirs: Vec<&str> = plan.dirs.iter().map(String::as_str).collect();
        tokio::select! {
            staged = self.engine.stage(&id, &dirs, &plan.files) => staged?,
            _ = cancelled.cancelled() => return Ok(Outcome::cancelled()),
        }
        if cancelled.is_cancelled() {
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
        self.engine
            .start(&id)
            .await
            .inspect_err(|_| {
                self.metrics.start_failures.inc();
            })
            .context("cannot start the container")?;
        drop(gate);
        let deadline = Instant::now() + limits.timeout;
        self.watch(run, active, &id, 0, Some(deadline)).await
    }

    /// The container a run needs: its command, its files and folders, and (for a build) the PDK;
    /// or, if it cannot run, how it ended.
    async fn plan(&self, run: &Run) -> Result<Result<Plan, Outcome>> {
        let not_run = |m: String| Ok(Err(Outcome::failed(exit_code::NOT_RUN, m)));
        let env = run_env();
        let project_files = || async {
            let files = self.db.job_files(run.id).await?;
            let mut dirs: BTreeSet<String> = BTreeSet::from([PROJECT_DIR.to_string()]);
            for f in &files {
                let mut parent = f.path.as_str();
                while let Some((up, _)) = parent.rsplit_once('/') {
                    dirs.insert(format!("{PROJECT_DIR}/{up}"));
                    parent = up;
                }
            }
            let staged = files
                .iter()
                .map(|f| StagedFile {
                    source: self.storage.blob_path(&f.sha256),
                    target: format!("{PROJECT_DIR}/{}", f.path),
                })
                .collect::<Vec<_>>();
            anyhow::Ok((dirs.into_iter().collect::<Vec<_>>(), staged))
        };
        match &run.params {
            RunParams::Precheck(p) => {
                let Some(upload) = self.db.upload(p.upload_id).await? else {
                    return not_run(format!("upload {} has been deleted", p.upload_id));
                };
                let input = format!("/input/{}", upload.format.input_name());
                let (limits, _) = self.config.limits_for(run.kind());
                Ok(Ok(Plan {
                    cmd: precheck_command(p, &input, limits.whole_cpus()),
                    working_dir: PRECHECK_DIR,
                    env,
                    dirs: ["/input", "/output", "/work"].map(String::from).into(),
                    files: vec![StagedFile {
                        source: self.storage.upload_path(upload.id),
                        target: input,
                    }],
                    mounts: vec![],
                }))
            }
            RunParams::Simulation(p) => {
                let (mut dirs, files) = project_files().await?;
                dirs.push("/tmp".into());
                Ok(Ok(Plan {
                    cmd: simulation_command(p),
                    working_dir: PROJECT_DIR,
                    env,
                    dirs,
                    files,
                    mounts: vec![],
                }))
            }
            RunParams::Build(p) => {
                let builds = &self.config.builds;
                let mount = match &builds.pdk {
                    None => {
                        return not_run(
                            "this server has no PDK for builds: set [builds] pdk in its config"
                                .into(),
                        );
                    }
                    Some(PdkSource::HostPath(path)) => ReadOnlyMount {
                        source: path.display().to_string(),
                        volume: false,
                        target: PDK_MOUNT.into(),
                    },
                    Some(PdkSource::Volume(name)) => {
                        if !self.engine.volume_exists(name).await? {
                            return not_run(format!(
                                "the PDK volume {name} (builds.pdk) does not exist on the Docker engine"
                            ));
                        }
                        ReadOnlyMount {
                            source: name.clone(),
                            volume: true,
                            target: PDK_MOUNT.into(),
                        }
                    }
                };
                let (dirs, files) = project_files().await?;
                let mut env = env;
                env.push(format!("PDK_ROOT={PDK_MOUNT}"));
                Ok(Ok(Plan {
                    cmd: build_command(run.id, p, &builds.pdk_variant),
                    working_dir: PROJECT_DIR,
                    env,
                    dirs,
                    files,
                    mounts: vec![mount],
                }))
            }
        }
    }

    /// Follows a started container's log into the run's log file (after the first `skip`
    /// messages), waits for it to stop (racing the deadline and a cancel), copies its results
    /// out and says how it ended.
    async fn watch(
        &self,
        run: &Run,
        active: &ActiveRun,
        id: &str,
        skip: usize,
        deadline: Option<Instant>,
    ) -> Result<Outcome> {
        let run_dir = self.storage.run_dir(run.id);
        let log_path = self.storage.log_path(run.id);
        let tracker = self.tracker(run).await?;
        // A log that cannot be written (a full disk) ends the run at once: what it prints
        // would be lost, and its results could not be kept either.
        let log_full = CancellationToken::new();
        let logs = tokio::spawn({
            let appended = append_logs(
                self.engine.logs(id, true),
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
        });

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
            waited = self.engine.wait(id) => { waited?; None }
            _ = expired => {
                self.engine.kill(id).await?;
                Some(Outcome::failed(exit_code::TIMED_OUT, format!(
                    "timed out after {} s ({table}.timeout): the container was killed",
                    timeout.as_secs()
                )))
            }
            _ = cancelled => {
                self.engine.stop(id, STOP_GRACE).await?;
                Some(Outcome::cancelled())
            }
            _ = log_full.cancelled() => {
                self.engine.kill(id).await?;
                return Ok(log_not_written());
            }
        };
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
        let rest = append_logs(
            self.engine.logs(id, false),
            log_path,
            active.log_len.clone(),
            followed,
            tracker.clone(),
            self.metrics.log_bytes.clone(),
        )
        .await;
        match rest {
            Err(e) if is_disk_full(&e) => return Ok(log_not_written()),
            Err(e) => return Err(e.context("cannot read the rest of the container's log")),
            Ok(_) => {}
        }

        // Results are copied out whatever the ending: a failed run's files are what its
        // designer needs to read.
        if let Err(e) = self.collect(run, id, &run_dir).await {
            if !is_disk_full(&e) {
                return Err(e);
            }
            // Half a layout is no result: nothing partial is served as the run's output, and
            // what was copied goes, so that the run's end fits on the disk.
            for partial in ["output", "work", "scratch", ARTIFACTS] {
                crate::storage::remove_tree(&run_dir.join(partial)).await?;
            }
            return Ok(Outcome::failed(
                exit_code::NOT_RUN,
                format!("{DISK_FULL}: its results could not be copied out"),
            ));
        }
        if let Some(outcome) = ended {
            return Ok(outcome);
        }

        let exit = self.engine.exit(id).await?;
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
        Ok(judge(run, exit.code, &self.storage, progress).await)
    }

    /// Copies a stopped container's results into the run's folder: a precheck's `/work` and
    /// output, a simulation's waveforms, a build's LibreLane run folder. Only regular files and
    /// folders are kept; what was skipped is noted in the run's log (docs/decisions.md, "What
    /// containers hand back").
    async fn collect(&self, run: &Run, id: &str, run_dir: &Path) -> Result<()> {
        let mut skipped = Unpacked::default();
        let mut copy = async |path: &str, dest: &Path| -> Result<bool> {
            let copied = self.engine.copy_out(id, path, dest).await?;
            let found = copied.is_some();
            skipped.extend(copied.unwrap_or_default());
            Ok(found)
        };
        match &run.params {
            RunParams::Precheck(_) => {
                copy("/work", run_dir).await?;
                copy("/output/design.gds", &run_dir.join("output")).await?;
            }
            RunParams::Simulation(_) => {
                let scratch = run_dir.join("scratch");
                crate::storage::remove_tree(&scratch).await?;
                copy(PROJECT_DIR, &scratch).await?;
                let (from, to) = (scratch.join("project"), run_dir.join(ARTIFACTS));
                tokio::task::spawn_blocking(move || keep_waveforms(&from, &to))
                    .await
                    .context("the copy thread failed")?
                    .context("cannot keep the simulation's waveforms")?;
                crate::storage::remove_tree(&scratch).await?;
            }
            RunParams::Build(p) => {
                let scratch = run_dir.join("scratch");
                crate::storage::remove_tree(&scratch).await?;
                let flow_dir = build_run_dir(run.id, p);
                let copied = scratch.join(run.id.to_string());
                // The run folder itself may have been skipped (a link): then nothing is kept.
                if copy(&flow_dir, &scratch).await?
                    && tokio::fs::symlink_metadata(&copied)
                        .await
                        .is_ok_and(|m| m.is_dir())
                {
                    let artifacts = run_dir.join(ARTIFACTS);
                    crate::storage::remove_tree(&artifacts).await?;
                    tokio::fs::rename(&copied, &artifacts).await?;
                }
                crate::storage::remove_tree(&scratch).await?;
            }
        }
        if !skipped.is_empty() {
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
        Ok(())
    }

    /// A build's log watcher, starting from where the build was (after a restart) and with
    /// the step count of the last completed build like it.
    async fn tracker(&self, run: &Run) -> Result<Option<Tracker>> {
        let RunParams::Build(p) = &run.params else {
            return Ok(None);
        };
        let start = Progress {
            count: self
                .db
                .last_build_steps(p.project_id, p.config.clone())
                .await?,
            ..Progress::default()
        };
        // Progress is a function of the log: after a restart it is read again from the lines
        // the file holds, which are exactly those the watch will not append again.
        let path = self.storage.log_path(run.id);
        let progress = tokio::task::spawn_blocking(move || progress::replay(start, &path))
            .await
            .context("the log thread failed")??;
        Ok(Some(Arc::new(std::sync::Mutex::new(ProgressState {
            db: self.db.clone(),
            run_id: run.id,
            progress,
        }))))
    }
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

/// The file in a run's folder that holds how it ended while the database would not take it.
const ENDING: &str = "ending";

/// Writes a run's outcome where recovery finds it: status, exit code, OOM, then the message.
async fn write_ending(path: &Path, outcome: &Outcome) -> std::io::Result<()> {
    let text = format!(
        "{}\n{}\n{}\n{}",
        outcome.status,
        outcome.exit_code,
        outcome.oom_killed,
        outcome.error.as_deref().unwrap_or("")
    );
    let part = path.with_extension("part");
    tokio::fs::write(&part, text).await?;
    tokio::fs::rename(&part, path).await
}

/// Removes the outcome [`write_ending`] kept, once the database has the run's end.
pub async fn remove_ending(run_dir: &Path) {
    let _ = tokio::fs::remove_file(run_dir.join(ENDING)).await;
}

/// The outcome [`write_ending`] kept in a run's folder, if there is one that reads back.
pub async fn read_ending(run_dir: &Path) -> Option<Outcome> {
    let text = tokio::fs::read_to_string(run_dir.join(ENDING)).await.ok()?;
    let mut lines = text.splitn(4, '\n');
    let status = lines.next()?.parse().ok()?;
    let exit_code = lines.next()?.parse().ok()?;
    let oom_killed = lines.next()?.parse().ok()?;
    let error = lines.next().filter(|e| !e.is_empty()).map(str::to_string);
    if !crate::model::RunStatus::is_terminal(status) {
        return None;
    }
    if status == crate::model::RunStatus::Completed && exit_code != 0 {
        return None;
    }
    if status != crate::model::RunStatus::Completed && exit_code == 0 {
        return None;
    }
    Some(Outcome {
        status,
        exit_code,
        error,
        oom_killed,
    })
}

/// The folder in a run's folder that holds a job's artefacts.
pub const ARTIFACTS: &str = "artifacts";

/// Where a job's project files are in its container (its working directory).
const PROJECT_DIR: &str = "/project";

/// What a run's container is made of.
struct Plan {
    cmd: Vec<String>,
    working_dir: &'static str,
    env: Vec<String>,
    /// Empty folders to create (mode 0777), then files to copy in.
    dirs: Vec<String>,
    files: Vec<StagedFile>,
    mounts: Vec<ReadOnlyMount>,
}

/// How a stopped container's exit code ends its run.
async fn judge(run: &Run, code: i64, storage: &Storage, progress: Option<Progress>) -> Outcome {
    let see = "see the logs";
    match (&run.params, code) {
        (RunParams::Precheck(_), 0) => {
            let output = tokio::fs::symlink_metadata(storage.output_path(run.id)).await;
            if output.is_ok_and(|m| m.is_file() && m.len() > 0) {
                Outcome::completed()
            } else {
                Outcome::failed(
                    exit_code::NO_OUTPUT,
                    format!("the precheck exited 0 but wrote no /output/design.gds: {see}"),
                )
            }
        }
        // 1 is also a crashed tool or a failed entrypoint: only the checkers' errors, which
        // the flow raises last, say that the layout itself has problems.
        (RunParams::Precheck(_), 1) => match checker_errors(storage.log_path(run.id)).await {
            Some(found) => Outcome::failed(
                1,
                format!("the precheck found problems (exit code 1): {found}{see}"),
            ),
            None => Outcome::failed(1, format!("the precheck failed (exit code 1): {see}")),
        },
        (RunParams::Precheck(_), 2) => Outcome::failed(
            2,
            format!("the precheck rejected its arguments (exit code 2): {see}"),
        ),
        (RunParams::Precheck(_), code) => {
            Outcome::failed(code, format!("the precheck exited with code {code}: {see}"))
        }
        (RunParams::Simulation(_), 0) => Outcome::completed(),
        (RunParams::Simulation(p), code) => Outcome::failed(
            code,
            format!(
                "the simulation of {} failed (exit code {code}): the compiler's or the testbench's messages are in the logs",
                p.top
            ),
        ),
        (RunParams::Build(_), 0) => match final_gds(&storage.run_dir(run.id)).await {
            Some(_) => Outcome::completed(),
            None => Outcome::failed(
                exit_code::NO_OUTPUT,
                format!("LibreLane exited 0 but wrote no final/gds/*.gds: {see}"),
            ),
        },
        (RunParams::Build(_), code) => {
            let at = progress
                .filter(|p| p.step > 0)
                .map(|p| format!(" in step {} ({})", p.step, p.name))
                .unwrap_or_default();
            // LibreLane's exit codes (REAL-PRECHECK.md): 2 a step failed or its checkers found
            // errors (deferred to the end, after the final views are written), 1 anything it
            // did not expect.
            let why = match code {
                2 => {
                    if let Some(found) = checker_errors(storage.log_path(run.id)).await {
                        return Outcome::failed(
                            code,
                            format!(
                                "the build's checkers found problems (exit code 2): {found}its final views are in the artifacts; {see}"
                            ),
                        );
                    }
                    " (a step failed)"
                }
                1 => " (an unexpected error, an invalid config or a missing PDK)",
                _ => "",
            };
            Outcome::failed(
                code,
                format!("the build failed{at} with exit code {code}{why}: {see}"),
            )
        }
    }
}

/// How much of a log's end is read for the checkers' errors: a failed flow prints them last.
const CHECKER_TAIL_LINES: usize = 200;
const CHECKER_TAIL_BYTES: u64 = 64 * 1024;

/// The errors a flow's checkers found, as a clause ending in "; " (`"3 KLayout DRC errors
/// found; "`, or empty if they were not named), read from the end of the run's log; `None` if
/// the flow did not end with checker errors.
async fn checker_errors(log: std::path::PathBuf) -> Option<String> {
    let lines = tokio::task::spawn_blocking(move || {
        logs::last_lines(&log, CHECKER_TAIL_LINES, CHECKER_TAIL_BYTES)
    })
    .await
    .ok()?
    .inspect_err(|e| tracing::warn!("cannot read the end of a run's log: {e}"))
    .ok()?;
    let found = deferred_errors(&lines)?;
    Some(if found.is_empty() {
        String::new()
    } else {
        format!("{}; ", found.join("; "))
    })
}

/// What LibreLane raises when a flow's checkers found errors: this line, then one line per
/// error (precheck.py prints them as they are; LibreLane's log indents them under its error).
const DEFERRED_ERRORS: &str = "One or more deferred errors were encountered";

/// At most this many of the checkers' messages are kept, each at most this long.
const MAX_CHECKER_MESSAGES: usize = 8;
const MAX_CHECKER_MESSAGE: usize = 300;

/// The checkers' messages after the last "One or more deferred errors were encountered" of a
/// log's last lines, without their final periods; `None` if there is no such line. Items of a
/// list (`* corner`) join the message they belong to.
fn deferred_errors(lines: &[String]) -> Option<Vec<String>> {
    let start = lines.iter().rposition(|l| l.contains(DEFERRED_ERRORS))?;
    let mut found: Vec<String> = Vec::new();
    for line in &lines[start + 1..] {
        let text = line.trim();
        // A blank line, a new log record ("[12:00:00] ERROR ...", "[precheck-server] ...") or a
        // traceback ends the list.
        if text.is_empty() || line.starts_with('[') || text.starts_with("Traceback") {
            break;
        }
        let full = found.len() == MAX_CHECKER_MESSAGES;
        match (text.strip_prefix("* "), found.last_mut()) {
            (Some(item), Some(last)) => {
                let joint = if last.ends_with(':') { " " } else { ", " };
                last.push_str(joint);
                last.push_str(item);
            }
            _ if full => break,
            _ => found.push(text.to_string()),
        }
    }
    Some(
        found
            .into_iter()
            .map(|m| {
                let m = m.trim_end_matches('.');
                match m.char_indices().nth(MAX_CHECKER_MESSAGE) {
                    Some((cut, _)) => format!("{}...", &m[..cut]),
                    None => m.to_string(),
                }
            })
            .collect(),
    )
}

/// The layout a completed build made: the one file in its `final/gds/`.
/// No part of the way is followed: `artifacts/`, `final/` and `gds/` must be folders, not links.
pub async fn final_gds(run_dir: &Path) -> Option<std::path::PathBuf> {
    let mut dir = run_dir.to_path_buf();
    for part in [ARTIFACTS, "final", "gds"] {
        dir.push(part);
        if !tokio::fs::symlink_metadata(&dir).await.ok()?.is_dir() {
            return None;
        }
    }
    let mut entries = tokio::fs::read_dir(&dir).await.ok()?;
    let mut found = None;
    while let Ok(Some(entry)) = entries.next_entry().await {
        let name = entry.file_name();
        let is_layout = name
            .to_str()
            .is_some_and(|n| n.ends_with(".gds") || n.ends_with(".gds.gz") || n.ends_with(".oas"));
        if is_layout && entry.file_type().await.is_ok_and(|t| t.is_file()) {
            if found.is_some() {
                return None;
            }
            found = Some(entry.path());
        }
    }
    found
}

/// Moves the `.vcd` and `.fst` files under `from` to the same paths under `to`.
/// Nothing is followed: `from` itself must be a folder, and only folders and regular files
/// below it are looked at.
fn keep_waveforms(from: &Path, to: &Path) -> std::io::Result<()> {
    if !std::fs::symlink_metadata(from).is_ok_and(|m| m.is_dir()) {
        return Ok(());
    }
    let mut pending = vec![from.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir)? {
            let entry = entry?;
            let kind = entry.file_type()?;
            let path = entry.path();
            if kind.is_dir() {
                pending.push(path);
            } else if kind.is_file() && path.extension().is_some_and(|e| e == "vcd" || e == "fst") {
                let target = to.join(path.strip_prefix(from).unwrap_or(&path));
                if let Some(parent) = target.parent() {
                    std::fs::create_dir_all(parent)?;
                }
                std::fs::rename(&path, &target)?;
            }
        }
    }
    Ok(())
}

/// A build's progress as its log goes by, recorded when it changes.
struct ProgressState {
    db: Db,
    run_id: Uuid,
    progress: Progress,
}

type Tracker = Arc<std::sync::Mutex<ProgressState>>;

/// Feeds one log message to a build's tracker; returns what to record, if it changed.
fn track(tracker: &Tracker, message: &[u8]) -> Option<(Db, Uuid, Progress)> {
    let text = String::from_utf8_lossy(message);
    let mut state = tracker.lock().ok()?;
    let next = progress::advance(&state.progress, &text)?;
    state.progress = next.clone();
    Some((state.db.clone(), state.run_id, next))
}

/// A simulation's command line. The script is fixed text; the top module and the files are
/// its arguments (`$1`, `$@`), never spliced into it, so no name is ever read by a shell.
fn simulation_command(p: &SimulationParams) -> Vec<String> {
    let script = match p.tool {
        SimulationTool::Icarus => {
            "top=$1; shift; iverilog -g2012 -I /project -o /tmp/simulation.vvp -s \"$top\" \"$@\" && exec vvp -n /tmp/simulation.vvp"
        }
        SimulationTool::Verilator => {
            "top=$1; shift; verilator --binary --timing --trace -j 0 -I/project -Mdir /tmp/verilator --top-module \"$top\" -o simulation \"$@\" && exec /tmp/verilator/simulation"
        }
    };
    let mut cmd: Vec<String> = vec!["sh".into(), "-c".into(), script.into(), "sh".into()];
    cmd.push(p.top.clone());
    cmd.extend(p.sources.iter().map(|f| format!("{PROJECT_DIR}/{f}")));
    cmd
}

/// A build's command line (docs/decisions.md, "Builds"): LibreLane with the job's id as its run
/// tag and the PDK mounted read-only, never downloaded.
fn build_command(id: Uuid, p: &BuildParams, pdk_variant: &str) -> Vec<String> {
    [
        "python3",
        "-m",
        "librelane",
        "--run-tag",
        &id.to_string(),
        "--manual-pdk",
        "--pdk-root",
        PDK_MOUNT,
        "--pdk",
        pdk_variant,
        &format!("{PROJECT_DIR}/{}", p.config),
    ]
    .map(String::from)
    .into()
}

/// Where LibreLane writes a build's run: `runs/<tag>` beside its config.
fn build_run_dir(id: Uuid, p: &BuildParams) -> String {
    match p.config.rsplit_once('/') {
        Some((dir, _)) => format!("{PROJECT_DIR}/{dir}/runs/{id}"),
        None => format!("{PROJECT_DIR}/runs/{id}"),
    }
}

/// The container's command line: SPEC's contract, with every value a separate argument.
/// `threads` (the CPU limit, rounded up) becomes `--threads`: the precheck's default is the
/// host's CPU count, which a CPU-limited container would only oversubscribe.
fn precheck_command(p: &PrecheckParams, input: &str, threads: Option<u64>) -> Vec<String> {
    let mut cmd: Vec<String> = [
        "python3",
        "precheck.py",
        "--input",
        input,
        "--output",
        "/output/design.gds",
        "--top",
        &p.top_cell,
        "--id",
        &p.die_id,
        "--slot",
        &p.slot,
    ]
    .map(String::from)
    .into();
    if p.cob {
        cmd.push("--cob".into());
    }
    if let Some(threads) = threads {
        cmd.extend(["--threads".into(), threads.to_string()]);
    }
    cmd.extend(["--dir".into(), "/work".into()]);
    cmd
}

/// Appends the container's log messages to the run's log file as they arrive, after skipping
/// the first `skip`, publishing the file's length after each batch so followers wake. Messages
/// the engine sends again ([`Replays`]) are neither appended nor counted. Returns how many
/// messages the file now holds (`skip` if the stream had fewer).
async fn append_logs(
    stream: impl futures_util::Stream<Item = Result<bytes::Bytes>> + Send + 'static,
    path: std::path::PathBuf,
    log_len: watch::Sender<u64>,
    skip: usize,
    tracker: Option<Tracker>,
    log_bytes: IntCounter,
) -> Result<usize> {
    let file = tokio::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .await?;
    let mut log = LogFile {
        durable: file.metadata().await?.len(),
        out: tokio::io::BufWriter::with_capacity(64 * 1024, file),
        log_len,
        log_bytes,
    };
    let appended = log.append(stream, skip, tracker).await;
    if appended.is_err() {
        // A write that failed half-way (a full disk) leaves no half line behind: the file goes
        // back to its last complete line, which the next note starts after.
        let _ = log.out.get_ref().set_len(log.durable).await;
    }
    let (seen, replayed) = appended?;
    if replayed > 0 {
        tracing::info!(
            log = %path.display(),
            "the engine sent {replayed} log messages a second time (a json-file rotation); they were left out"
        );
    }
    Ok(seen.max(skip))
}

/// A run's log file as [`append_logs`] writes it.
struct LogFile {
    out: tokio::io::BufWriter<tokio::fs::File>,
    /// The file's length after its last flush: whole lines only.
    durable: u64,
    log_len: watch::Sender<u64>,
    log_bytes: IntCounter,
}

impl LogFile {
    /// Writes what is buffered and tells followers.
    async fn flush(&mut self, len: u64) -> Result<()> {
        self.out.flush().await?;
        self.log_bytes.inc_by(len - self.durable);
        self.durable = len;
        self.log_len.send_replace(len);
        Ok(())
    }

    /// Returns how many messages the stream sent (replays left out) and how many replays.
    async fn append(
        &mut self,
        stream: impl futures_util::Stream<Item = Result<bytes::Bytes>> + Send + 'static,
        skip: usize,
        tracker: Option<Tracker>,
    ) -> Result<(usize, u64)> {
        let mut len = self.durable;
        let mut batches = std::pin::pin!(stream.ready_chunks(1024));
        let mut seen = 0;
        let mut replays = Replays::default();
        let mut replayed = 0u64;
        // Flushed at most every FLUSH_EVERY while lines pour in, and as soon as they pause: a
        // flush per message would cost a blocking write each.
        let mut dirty = false;
        let mut last_flush = tokio::time::Instant::now();
        loop {
            let next = if dirty {
                match tokio::time::timeout(FLUSH_EVERY, batches.next()).await {
                    Ok(next) => next,
                    Err(_) => {
                        self.flush(len).await?;
                        dirty = false;
                        last_flush = tokio::time::Instant::now();
                        continue;
                    }
                }
            } else {
                batches.next().await
            };
            let Some(batch) = next else { break };
            for message in batch {
                let message = message?;
                if !replays.is_new(&message) {
                    replayed += 1;
                    continue;
                }
                seen += 1;
                if seen <= skip {
                    continue;
                }
                if let Some(tracker) = &tracker
                    && let Some((db, run_id, progress)) = track(tracker, &message)
                    && let Err(e) = db.set_progress(run_id, progress).await
                {
                    tracing::warn!(%run_id, "cannot record the build's progress: {e:#}");
                }
                self.out.write_all(&message).await?;
                len += message.len() as u64;
                if !message.ends_with(b"\n") {
                    self.out.write_all(b"\n").await?;
                    len += 1;
                }
                dirty = true;
            }
            if dirty && last_flush.elapsed() >= FLUSH_EVERY {
                self.flush(len).await?;
                dirty = false;
                last_flush = tokio::time::Instant::now();
            }
        }
        self.flush(len).await?;
        Ok((seen, replayed))
    }
}

/// Tells a log message the engine sends again from one it sends for the first time. Docker
/// 20.10's followed log stream, when the container's json-file log rotates (`max-size`), can end
/// early (the runner then reads the rest unfollowed) or send the new file's messages a second
/// time: a replay, its messages stamped before the newest one taken. A message stamped before it
/// is not always a replay, though: the engine stamps stdout's and stderr's lines before it
/// writes them, in either order. So a message stamped no later than the newest is a replay if it
/// is one of the last [`Replays::WINDOW`] taken (same time, same bytes), or older than all of
/// them (a line written that late behind thousands of others is not a race of two streams).
#[derive(Default)]
struct Replays {
    newest: Option<i128>,
    /// The times and hashes of the last messages taken, oldest first, and the same as a set.
    recent: std::collections::VecDeque<(i128, u64)>,
    known: std::collections::HashSet<(i128, u64)>,
}

impl Replays {
    const WINDOW: usize = 16 * 1024;

    /// Whether `message` (`<RFC 3339 time> <text>`) is one the stream has not sent before; it
    /// is remembered as taken if so. Messages without a readable time are always new.
    fn is_new(&mut self, message: &[u8]) -> bool {
        let Some(time) = message_time(message) else {
            return true;
        };
        let key = (time, {
            use std::hash::{Hash, Hasher};
            let mut hasher = std::collections::hash_map::DefaultHasher::new();
            message.hash(&mut hasher);
            hasher.finish()
        });
        match self.newest {
            Some(newest) if time <= newest => {
                let before_window = self.recent.len() == Self::WINDOW
                    && self
                        .recent
                        .front()
                        .is_some_and(|(oldest, _)| time < *oldest);
                if before_window || self.known.contains(&key) {
                    return false;
                }
            }
            _ => self.newest = Some(time),
        }
        if self.recent.len() == Self::WINDOW
            && let Some(old) = self.recent.pop_front()
        {
            self.known.remove(&old);
        }
        self.recent.push_back(key);
        self.known.insert(key);
        true
    }
}

/// The engine's time of a log message, in nanoseconds since the epoch.
fn message_time(message: &[u8]) -> Option<i128> {
    let end = message.iter().position(|b| *b == b' ')?;
    let stamp = std::str::from_utf8(&message[..end]).ok()?;
    let time =
        time::OffsetDateTime::parse(stamp, &time::format_description::well_known::Rfc3339).ok()?;
    Some(time.unix_timestamp_nanos())
}

/// Appends a line of the server's own to a run's log.
pub async fn note(path: &Path, text: &str) -> std::io::Result<()> {
    let line = format!(
        "{} [precheck-server] {text}\n",
        logs::stamp(time::OffsetDateTime::now_utc())
    );
    let mut file = tokio::fs::OpenOptions::new()
        .create(true)
        .read(true)
        .append(true)
        .open(path)
        .await?;
    // A note starts a line of its own, whatever the file ends with.
    let len = file.metadata().await?.len();
    let mut last = [b'\n'];
    if len > 0 {
        file.seek(std::io::SeekFrom::Start(len - 1)).await?;
        file.read_exact(&mut last).await?;
    }
    let line = if last[0] == b'\n' {
        line
    } else {
        format!("\n{line}")
    };
    file.write_all(line.as_bytes()).await?;
    file.flush().await
}

pub fn finished_note(outcome: &Outcome) -> String {
    match &outcome.error {
        None => format!("run {} (exit code {})", outcome.status, outcome.exit_code),
        Some(e) => format!(
            "run {} (exit code {}): {e}",
            outcome.status, outcome.exit_code
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn threads_follow_the_cpu_limit() {
        let p = PrecheckParams {
            upload_id: Uuid::nil(),
            top_cell: "chip_top".into(),
            die_id: "ABCD1234".into(),
            slot: "1x1".into(),
            cob: true,
        };
        let check = |threads, expected: &str| {
            assert_eq!(
                precheck_command(&p, "/input/design.gds", threads).join(" "),
                expected
            );
        };
        check(
            None,
            "python3 precheck.py --input /input/design.gds --output /output/design.gds --top chip_top --id ABCD1234 --slot 1x1 --cob --dir /work",
        );
        check(
            Some(2),
            "python3 precheck.py --input /input/design.gds --output /output/design.gds --top chip_top --id ABCD1234 --slot 1x1 --cob --threads 2 --dir /work",
        );
    }

    fn stamped(nanos: u32, text: &str) -> Vec<u8> {
        format!("2026-12-02T16:23:34.{nanos:09}Z {text}\n").into_bytes()
    }

    #[test]
    fn replayed_log_messages_are_dropped_once_each() {
        let mut replays = Replays::default();
        let first: Vec<Vec<u8>> = (1..=5)
            .map(|i| stamped(i * 10, &format!("line {i}")))
            .collect();
        assert!(first.iter().all(|m| replays.is_new(m)));
        // After a rotation the engine sends lines 3 to 5 again, then goes on.
        assert!(first[2..].iter().all(|m| !replays.is_new(m)));
        assert!(replays.is_new(&stamped(60, "line 6")));
        // A stderr line stamped before the last stdout line is not a replay; a second copy is.
        let late = stamped(55, "an error");
        assert!(replays.is_new(&late));
        assert!(!replays.is_new(&late));
        // The same text at another time is another message; lines without a time always count.
        assert!(replays.is_new(&stamped(70, "line 6")));
        assert!(replays.is_new(b"no time here\n"));
        assert!(replays.is_new(b"no time here\n"));
    }

    #[test]
    fn a_replay_from_before_the_window_is_dropped() {
        let mut replays = Replays::default();
        let n = Replays::WINDOW as u32 + 100;
        let lines: Vec<Vec<u8>> = (0..n)
            .map(|i| stamped(i * 10, &format!("line {i}")))
            .collect();
        assert!(lines.iter().all(|m| replays.is_new(m)));
        assert!(lines.iter().all(|m| !replays.is_new(m)));
        assert!(replays.is_new(&stamped(n * 10, "next")));
        assert_eq!(replays.recent.len(), Replays::WINDOW);
        assert_eq!(replays.known.len(), Replays::WINDOW);
    }

    /// The checkers' messages read from a log's last lines (`None`: no checker errors).
    fn check(log: &[&str], expected: Option<&[&str]>) {
        let lines: Vec<String> = log.iter().map(|l| l.to_string()).collect();
        let found = deferred_errors(&lines);
        let expected = expected.map(|e| e.iter().map(|m| m.to_string()).collect::<Vec<_>>());
        assert_eq!(found, expected, "{log:#?}");
    }

    #[test]
    fn checker_errors_come_from_the_end_of_the_flow() {
        // precheck.py prints the flow's exception as it is.
        check(
            &[
                "[12:00:01] ERROR    3 KLayout DRC errors found. - deferred",
                "PrecheckFlow - Stage 16 - Write the Layout ━━━━ 16/16 0:00:03",
                "Error: The precheck failed with the following exception: ",
                "One or more deferred errors were encountered:",
                "2 KLayout antenna errors found.",
                "3 KLayout DRC errors found.",
            ],
            Some(&[
                "2 KLayout antenna errors found",
                "3 KLayout DRC errors found",
            ]),
        );
        // LibreLane's own log indents them under its error; lists join their message.
        check(
            &[
                "[12:00:01] ERROR    The following error was encountered while running the flow:",
                "                    One or more deferred errors were encountered:",
                "                    Setup violations found in the following corners:",
                "                    * max_ss_100C_1v60",
                "                    * nom_ss_100C_1v60",
                "                    3 XOR differences found.",
                "[12:00:01] ERROR    LibreLane will now quit.",
                "[precheck-server] run failed (exit code 2)",
            ],
            Some(&[
                "Setup violations found in the following corners: max_ss_100C_1v60, nom_ss_100C_1v60",
                "3 XOR differences found",
            ]),
        );
        // The older form logs the messages before and names none in the exception.
        check(
            &["[12:00:01] ERROR    One or more deferred errors were encountered."],
            Some(&[]),
        );
    }

    #[test]
    fn a_crash_is_not_a_checker_error() {
        check(
            &[
                "[12:00:01] ERROR    3 KLayout DRC errors found. - deferred",
                "PrecheckFlow - Stage 16 - Write the Layout ━━━━ 15/16 0:00:03",
                "Error: The precheck failed with the following exception: ",
                "Write the Layout: Interrupted (SIGSEGV)",
            ],
            None,
        );
        check(
            &[
                "Traceback (most recent call last):",
                "  File \"/workspace/precheck.py\", line 1, in <module>",
                "MemoryError",
            ],
            None,
        );
        check(&[], None);
    }

    #[test]
    fn checker_messages_are_bounded() {
        let long = "x".repeat(1000);
        let many: Vec<String> = (0..20).map(|i| format!("{i} errors found.")).collect();
        let mut log = vec![
            "One or more deferred errors were encountered:",
            long.as_str(),
        ];
        log.extend(many.iter().map(String::as_str));
        let lines: Vec<String> = log.iter().map(|l| l.to_string()).collect();
        let found = deferred_errors(&lines).unwrap();
        assert_eq!(found.len(), MAX_CHECKER_MESSAGES);
        assert_eq!(found[0], format!("{}...", "x".repeat(MAX_CHECKER_MESSAGE)));
        assert_eq!(found[1], "0 errors found");
    }
}
