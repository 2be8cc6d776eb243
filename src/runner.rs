//! Runs one precheck in its container, from create to remove, and says how it ended.
//!
//! The lifecycle follows the wafer.space platform: create, copy the layout in through the archive
//! API, start, follow the logs into the run's log file, wait (racing the timeout and a cancel),
//! copy `/output/design.gds` and `/work` out, remove the container. Whatever happens in between,
//! the container is removed and the run gets an [`Outcome`] that a person can act on.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use futures_util::StreamExt;
use tokio::io::AsyncWriteExt;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, human_bytes};
use crate::db::Db;
use crate::docker::{ContainerSpec, Engine, StagedFile};
use crate::logs;
use crate::model::{Outcome, Run, exit_code};
use crate::storage::Storage;

/// Every container the server creates carries its run's id under this label.
pub const RUN_LABEL: &str = "precheck-server.run-id";
/// ... and the storage folder of the server that owns it, so one server never touches another's.
pub const STORAGE_LABEL: &str = "precheck-server.storage";

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
}

/// A container that was running (or had finished) when the server stopped, to watch to the end.
#[derive(Debug, Clone)]
pub struct Attach {
    pub container: String,
    /// How many of the container's log messages the log file already holds.
    pub skip: usize,
    /// When `limits.timeout` runs out; `None` if the container has stopped already.
    pub deadline: Option<Instant>,
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
            Outcome::failed(exit_code::NOT_RUN, format!("{e:#}"))
        });
        let _ = note(&self.storage.log_path(run.id), &finished_note(&outcome)).await;
        match self
            .db
            .finish_run(run.id, outcome.clone(), time::OffsetDateTime::now_utc())
            .await
        {
            Ok(true) => {}
            // Deleted while it ran (`runs delete --force`): its files go too.
            Ok(false) => {
                if let Ok(None) = self.db.run(run.id).await
                    && let Err(e) = self.storage.remove_run(run.id).await
                {
                    tracing::warn!(run_id = %run.id, "cannot remove a deleted run's files: {e}");
                }
            }
            Err(e) => tracing::error!(run_id = %run.id, "cannot record the end of the run: {e:#}"),
        }
        if let Some(id) = container
            && let Err(e) = self.engine.remove(&id).await
        {
            tracing::error!(run_id = %run.id, container = %id, "cannot remove container: {e:#}");
        }
        outcome
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
        let Some(image_id) = self.engine.image_id(image).await? else {
            return Ok(Outcome::failed(
                exit_code::NOT_RUN,
                format!(
                    "the image {image} is not on the Docker engine: run `docker pull {image}` on the engine's host, then submit again"
                ),
            ));
        };
        self.db.set_image_id(run.id, image_id).await?;

        let upload = self
            .db
            .upload(run.params.upload_id)
            .await?
            .with_context(|| format!("upload {} has been deleted", run.params.upload_id))?;
        let input = format!("/input/{}", upload.format.input_name());
        let spec = ContainerSpec {
            name: format!("{}{}", self.config.container_prefix, run.id),
            image: image.clone(),
            cmd: precheck_command(run, &input),
            working_dir: "/workspace".into(),
            env: vec!["COLUMNS=200".into()],
            labels: HashMap::from([
                (RUN_LABEL.to_string(), run.id.to_string()),
                (
                    STORAGE_LABEL.to_string(),
                    self.storage.root().display().to_string(),
                ),
            ]),
            limits: self.config.limits.clone(),
        };
        if cancelled.is_cancelled() {
            return Ok(Outcome::cancelled());
        }
        let id = self
            .engine
            .create(&spec)
            .await
            .context("cannot create the container")?;
        *container = Some(id.clone());
        let staged = [StagedFile {
            source: self.storage.upload_path(upload.id),
            target: input,
        }];
        tokio::select! {
            staged = self.engine.stage(&id, &["/input", "/output", "/work"], &staged) => staged?,
            _ = cancelled.cancelled() => return Ok(Outcome::cancelled()),
        }
        if cancelled.is_cancelled() {
            return Ok(Outcome::cancelled());
        }
        // `runs delete --force` may have deleted it while its container was being prepared.
        if self.db.run(run.id).await?.is_none() {
            return Ok(Outcome::failed(exit_code::NOT_RUN, "the run was deleted"));
        }
        self.engine
            .start(&id)
            .await
            .context("cannot start the container")?;
        let deadline = Instant::now() + self.config.limits.timeout;
        self.watch(run, active, &id, 0, Some(deadline)).await
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
        let logs = tokio::spawn(append_logs(
            self.engine.logs(id, true),
            log_path.clone(),
            active.log_len.clone(),
            skip,
        ));

        let timeout = self.config.limits.timeout;
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
                    "timed out after {} s (limits.timeout): the container was killed",
                    timeout.as_secs()
                )))
            }
            _ = cancelled => {
                self.engine.stop(id, STOP_GRACE).await?;
                Some(Outcome::cancelled())
            }
        };
        // The engine's followed stream can end before it has sent everything a fast printer
        // wrote (seen with 200 000 lines on Docker 20.10): once the container has stopped, the
        // rest is read from a plain, unfollowed log, skipping the messages already appended.
        let followed = match tokio::time::timeout(Duration::from_secs(30), logs).await {
            Ok(Ok(Ok(count))) => count,
            Ok(Ok(Err(e))) => return Err(e.context("cannot follow the container's log")),
            Ok(Err(e)) => return Err(anyhow::Error::from(e).context("the log task failed")),
            Err(_) => {
                return Err(anyhow::anyhow!(
                    "the container's log did not end after it stopped"
                ));
            }
        };
        append_logs(
            self.engine.logs(id, false),
            log_path,
            active.log_len.clone(),
            followed,
        )
        .await
        .context("cannot read the rest of the container's log")?;

        // Results are copied out whatever the ending: a failed run's flow directory is what
        // its designer needs to read.
        self.engine.copy_out(id, "/work", &run_dir).await?;
        let output_dir = run_dir.join("output");
        self.engine
            .copy_out(id, "/output/design.gds", &output_dir)
            .await?;
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
                        "out of memory (limit {}): the container was killed; raise limits.memory if the layout needs more",
                        human_bytes(self.config.limits.memory)
                    ),
                )
            });
        }
        Ok(match exit.code {
            0 => {
                let output = tokio::fs::metadata(self.storage.output_path(run.id)).await;
                if output.is_ok_and(|m| m.len() > 0) {
                    Outcome::completed()
                } else {
                    Outcome::failed(
                        exit_code::NO_OUTPUT,
                        "the precheck exited 0 but wrote no /output/design.gds: see the logs",
                    )
                }
            }
            1 => Outcome::failed(1, "the precheck found problems (exit code 1): see the logs"),
            2 => Outcome::failed(
                2,
                "the precheck rejected its arguments (exit code 2): see the logs",
            ),
            code => Outcome::failed(
                code,
                format!("the precheck exited with code {code}: see the logs"),
            ),
        })
    }
}

/// The container's command line: SPEC's contract, with every value a separate argument.
fn precheck_command(run: &Run, input: &str) -> Vec<String> {
    let p = &run.params;
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
    cmd.extend(["--dir".into(), "/work".into()]);
    cmd
}

/// Appends the container's log messages to the run's log file as they arrive, after skipping
/// the first `skip`, publishing the file's length after each batch so followers wake. Returns
/// how many messages the file now holds (`skip` if the stream had fewer).
async fn append_logs(
    stream: impl futures_util::Stream<Item = Result<bytes::Bytes>> + Send + 'static,
    path: std::path::PathBuf,
    log_len: watch::Sender<u64>,
    skip: usize,
) -> Result<usize> {
    let file = tokio::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .await?;
    let mut len = file.metadata().await?.len();
    let mut out = tokio::io::BufWriter::with_capacity(64 * 1024, file);
    let mut batches = std::pin::pin!(stream.ready_chunks(1024));
    let mut seen = 0;
    // Flushed at most every FLUSH_EVERY while lines pour in, and as soon as they pause: a
    // flush per message would cost a blocking write each.
    let mut dirty = false;
    let mut last_flush = tokio::time::Instant::now();
    loop {
        let next = if dirty {
            match tokio::time::timeout(FLUSH_EVERY, batches.next()).await {
                Ok(next) => next,
                Err(_) => {
                    out.flush().await?;
                    log_len.send_replace(len);
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
            seen += 1;
            if seen <= skip {
                continue;
            }
            out.write_all(&message).await?;
            len += message.len() as u64;
            if !message.ends_with(b"\n") {
                out.write_all(b"\n").await?;
                len += 1;
            }
            dirty = true;
        }
        if dirty && last_flush.elapsed() >= FLUSH_EVERY {
            out.flush().await?;
            log_len.send_replace(len);
            dirty = false;
            last_flush = tokio::time::Instant::now();
        }
    }
    out.flush().await?;
    log_len.send_replace(len);
    Ok(seen.max(skip))
}

/// Appends a line of the server's own to a run's log.
pub async fn note(path: &Path, text: &str) -> std::io::Result<()> {
    let line = format!(
        "{} [precheck-server] {text}\n",
        logs::stamp(time::OffsetDateTime::now_utc())
    );
    let mut file = tokio::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .await?;
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
