//! What a kind of run is to the runner ([`Kind`]), and what every kind's container shares: its
//! labels, its environment, a job's project folder.
//!
//! A kind's file (`precheck.rs`, `simulation.rs`, `build.rs`) says what its container is made of
//! and how its end reads; the lifecycle in `mod.rs` does the rest, the same for every kind. In the
//! runner, a new kind is one more file implementing [`Kind`] and one more line in
//! `Runner::lifecycle` (its parameters are `model`'s, its limits and image `config`'s).

use std::collections::BTreeSet;
use std::path::Path;

use anyhow::Result;

use crate::config::Config;
use crate::db::Db;
use crate::docker::{Engine, ReadOnlyMount, StagedFile};
use crate::model::{Outcome, Progress, Run};
use crate::storage::{Storage, Unpacked};

use super::log_file::Tracker;

/// Every container the server creates carries its run's id under this label.
pub const RUN_LABEL: &str = "precheck-server.run-id";
/// ... and the storage folder of the server that owns it, so one server never touches another's.
pub const STORAGE_LABEL: &str = "precheck-server.storage";

/// ... and, on the precheck image's self-test containers, `true`.
pub const PROBE_LABEL: &str = "precheck-server.probe";

/// The folder in a run's folder that holds a job's artefacts.
pub const ARTIFACTS: &str = "artifacts";

/// Where a job's project files are in its container (its working directory).
pub(super) const PROJECT_DIR: &str = "/project";

/// The environment of every run's container.
pub(super) fn run_env() -> Vec<String> {
    vec!["COLUMNS=200".to_string()]
}

/// The rules of one kind of run's container. The lifecycle calls them in this order: `plan`
/// (before the container is made), `tracker` (as its log is followed), `collect` (once it has
/// stopped, whatever the ending), `judge` (if it stopped by itself).
///
/// Only the runner's own lifecycle calls these, always on a concrete kind, so the futures'
/// `Send` is the concrete ones' (no bound is needed on the trait).
pub(super) trait Kind: Sync {
    /// Whether a run of the configured precheck image waits for the image's self-test (and
    /// fails at once on a broken image).
    const PROBED: bool = false;

    /// The folders of the run's folder that `collect` writes: removed again when the disk
    /// fills up while they are copied, since half a result is none.
    const RESULTS: &'static [&'static str];

    /// The container the run needs: its command, its files and folders, its mounts; or, if it
    /// cannot run, how it ended.
    async fn plan(&self, ctx: &Ctx<'_>, run: &Run) -> Result<Result<Plan, Outcome>>;

    /// Follows the run's progress in its log lines, if the kind has any to show.
    async fn tracker(&self, _ctx: &Ctx<'_>, _run: &Run) -> Result<Option<Tracker>> {
        Ok(None)
    }

    /// Copies the stopped container's results into the run's folder (`run_dir`).
    async fn collect(
        &self,
        ctx: &Ctx<'_>,
        run: &Run,
        run_dir: &Path,
        out: &CopyOut<'_>,
    ) -> Result<()>;

    /// How the container's own exit code ends the run (it was not killed for its memory).
    /// `progress` is the tracker's last word, if the kind has one.
    async fn judge(
        &self,
        ctx: &Ctx<'_>,
        run: &Run,
        code: i64,
        progress: Option<Progress>,
    ) -> Outcome;
}

/// What a kind's rules may use: the server's database, files, engine and config.
pub(super) struct Ctx<'a> {
    pub db: &'a Db,
    pub storage: &'a Storage,
    pub engine: &'a Engine,
    pub config: &'a Config,
}

/// What a run's container is made of.
pub(super) struct Plan {
    pub cmd: Vec<String>,
    pub working_dir: &'static str,
    pub env: Vec<String>,
    /// Empty folders to create (mode 0777), then files to copy in.
    pub dirs: Vec<String>,
    pub files: Vec<StagedFile>,
    pub mounts: Vec<ReadOnlyMount>,
}

/// Copies paths out of one stopped container, gathering what was skipped for the run's log.
/// Copies may run at once (into different folders).
pub(super) struct CopyOut<'a> {
    engine: &'a Engine,
    container: &'a str,
    // A std Mutex: it is never held across an `.await`.
    skipped: std::sync::Mutex<Unpacked>,
}

impl<'a> CopyOut<'a> {
    pub fn new(engine: &'a Engine, container: &'a str) -> CopyOut<'a> {
        CopyOut {
            engine,
            container,
            skipped: Default::default(),
        }
    }

    /// Copies `path` (a file or a folder) into the folder `dest`; false if the container has
    /// no such path.
    pub async fn copy(&self, path: &str, dest: &Path) -> Result<bool> {
        let copied = self.engine.copy_out(self.container, path, dest).await?;
        let found = copied.is_some();
        self.skipped
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend(copied.unwrap_or_default());
        Ok(found)
    }

    /// What the copies skipped.
    pub fn skipped(self) -> Unpacked {
        self.skipped.into_inner().unwrap_or_else(|e| e.into_inner())
    }
}

/// A job's project files as they go into `/project`: the folders to create (every parent of a
/// file), and the files from their blobs.
pub(super) async fn project_files(
    ctx: &Ctx<'_>,
    run: &Run,
) -> Result<(Vec<String>, Vec<StagedFile>)> {
    let files = ctx.db.job_files(run.id).await?;
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
            source: ctx.storage.blob_path(&f.sha256),
            target: format!("{PROJECT_DIR}/{}", f.path),
        })
        .collect::<Vec<_>>();
    Ok((dirs.into_iter().collect(), staged))
}
