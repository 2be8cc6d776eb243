//! A project's build job (docs/decisions.md, "Builds"): the project's files go into `/project`,
//! LibreLane runs the job's config with the server's PDK mounted read-only, its step is followed
//! in its log, and its run folder comes back out as the job's artefacts. Exit 0 with one final
//! layout completes it; a failure names the step it failed in.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result};
use uuid::Uuid;

use crate::config::{PDK_MOUNT, PdkSource};
use crate::docker::ReadOnlyMount;
use crate::model::{BuildParams, Outcome, Progress, Run, exit_code};
use crate::progress;

use super::checkers::checker_errors;
use super::kind::{ARTIFACTS, CopyOut, Ctx, Kind, PROJECT_DIR, Plan, project_files, run_env};
use super::log_file::{ProgressState, Tracker};

/// A LibreLane build of a project.
pub(super) struct Build<'a>(pub &'a BuildParams);

impl Kind for Build<'_> {
    const RESULTS: &'static [&'static str] = &["scratch", ARTIFACTS];

    async fn plan(&self, ctx: &Ctx<'_>, run: &Run) -> Result<Result<Plan, Outcome>> {
        let not_run = |m: String| Ok(Err(Outcome::failed(exit_code::NOT_RUN, m)));
        let builds = &ctx.config.builds;
        let mount = match &builds.pdk {
            None => {
                return not_run(
                    "this server has no PDK for builds: set [builds] pdk in its config".into(),
                );
            }
            Some(PdkSource::HostPath(path)) => ReadOnlyMount {
                source: path.display().to_string(),
                volume: false,
                target: PDK_MOUNT.into(),
            },
            Some(PdkSource::Volume(name)) => {
                if !ctx.engine.volume_exists(name).await? {
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
        let (dirs, files) = project_files(ctx, run).await?;
        let mut env = run_env();
        env.push(format!("PDK_ROOT={PDK_MOUNT}"));
        Ok(Ok(Plan {
            cmd: build_command(run.id, self.0, &builds.pdk_variant),
            working_dir: PROJECT_DIR,
            env,
            dirs,
            files,
            mounts: vec![mount],
        }))
    }

    /// A build's log watcher, starting from where the build was (after a restart) and with
    /// the step count of the last completed build like it.
    async fn tracker(&self, ctx: &Ctx<'_>, run: &Run) -> Result<Option<Tracker>> {
        let p = self.0;
        let start = Progress {
            count: ctx
                .db
                .last_build_steps(p.project_id, p.config.clone())
                .await?,
            ..Progress::default()
        };
        // Progress is a function of the log: after a restart it is read again from the lines
        // the file holds, which are exactly those the watch will not append again.
        let path = ctx.storage.log_path(run.id);
        let progress = tokio::task::spawn_blocking(move || progress::replay(start, &path))
            .await
            .context("the log thread failed")??;
        Ok(Some(Arc::new(std::sync::Mutex::new(ProgressState {
            db: ctx.db.clone(),
            run_id: run.id,
            progress,
        }))))
    }

    /// Keeps LibreLane's run folder (`runs/<run id>` beside the config) as the artefacts.
    async fn collect(
        &self,
        _ctx: &Ctx<'_>,
        run: &Run,
        run_dir: &Path,
        out: &CopyOut<'_>,
    ) -> Result<()> {
        let scratch = run_dir.join("scratch");
        crate::storage::remove_tree(&scratch).await?;
        let flow_dir = build_run_dir(run.id, self.0);
        let copied = scratch.join(run.id.to_string());
        // The run folder itself may have been skipped (a link): then nothing is kept.
        if out.copy(&flow_dir, &scratch).await?
            && tokio::fs::symlink_metadata(&copied)
                .await
                .is_ok_and(|m| m.is_dir())
        {
            let artifacts = run_dir.join(ARTIFACTS);
            crate::storage::remove_tree(&artifacts).await?;
            tokio::fs::rename(&copied, &artifacts).await?;
        }
        crate::storage::remove_tree(&scratch).await?;
        Ok(())
    }

    async fn judge(
        &self,
        ctx: &Ctx<'_>,
        run: &Run,
        code: i64,
        progress: Option<Progress>,
    ) -> Outcome {
        let see = "see the logs";
        if code == 0 {
            return match final_gds(&ctx.storage.run_dir(run.id)).await {
                Some(_) => Outcome::completed(),
                None => Outcome::failed(
                    exit_code::NO_OUTPUT,
                    format!("LibreLane exited 0 but wrote no final/gds/*.gds: {see}"),
                ),
            };
        }
        let at = progress
            .filter(|p| p.step > 0)
            .map(|p| format!(" in step {} ({})", p.step, p.name))
            .unwrap_or_default();
        // LibreLane's exit codes (REAL-PRECHECK.md): 2 a step failed or its checkers found
        // errors (deferred to the end, after the final views are written), 1 anything it
        // did not expect.
        let why = match code {
            2 => {
                if let Some(found) = checker_errors(ctx.storage.log_path(run.id)).await {
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

/// The layout a completed build made: the one file in its `final/gds/`.
/// No part of the way is followed: `artifacts/`, `final/` and `gds/` must be folders, not links.
pub async fn final_gds(run_dir: &Path) -> Option<PathBuf> {
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
