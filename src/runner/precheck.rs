//! A precheck: SPEC.md's container contract. The upload goes in as `/input/design.<ext>`, the
//! image's `precheck.py` runs in `/workspace` with the run's parameters as arguments, and
//! `/output/design.gds` and `/work` come back out. Exit 0 with an output layout completes it;
//! exit 1 "found problems" only if the log ends with the checkers' deferred errors.

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use anyhow::Result;

use crate::config::Config;
use crate::docker::{ContainerSpec, Engine, StagedFile};
use crate::image::ImageWatch;
use crate::model::{Outcome, PrecheckParams, Progress, Run, RunKind, exit_code};
use crate::storage::Storage;

use super::checkers::checker_errors;
use super::kind::{CopyOut, Ctx, Kind, PROBE_LABEL, Plan, STORAGE_LABEL, run_env};

/// The precheck's working directory in its image: the real image's, holding `precheck.py`.
const PRECHECK_DIR: &str = "/workspace";

/// How long the precheck image's self-test may take at most: the real image copies
/// `/workspace` into its Nix store at every start.
const PROBE_TIMEOUT: Duration = Duration::from_secs(600);

/// A precheck of an upload.
pub(super) struct Precheck<'a>(pub &'a PrecheckParams);

impl Kind for Precheck<'_> {
    const PROBED: bool = true;
    const RESULTS: &'static [&'static str] = &["work", "output"];

    async fn plan(&self, ctx: &Ctx<'_>, run: &Run) -> Result<Result<Plan, Outcome>> {
        let p = self.0;
        let Some(upload) = ctx.db.upload(p.upload_id).await? else {
            return Ok(Err(Outcome::failed(
                exit_code::NOT_RUN,
                format!("upload {} has been deleted", p.upload_id),
            )));
        };
        let input = format!("/input/{}", upload.format.input_name());
        let (limits, _) = ctx.config.limits_for(run.kind());
        Ok(Ok(Plan {
            cmd: precheck_command(p, &input, limits.whole_cpus()),
            working_dir: PRECHECK_DIR,
            env: run_env(),
            dirs: ["/input", "/output", "/work"].map(String::from).into(),
            files: vec![StagedFile {
                source: ctx.storage.upload_path(upload.id),
                target: input,
            }],
            mounts: vec![],
        }))
    }

    async fn collect(
        &self,
        _ctx: &Ctx<'_>,
        _run: &Run,
        run_dir: &Path,
        out: &CopyOut<'_>,
    ) -> Result<()> {
        // Into different folders: both at once.
        let output = run_dir.join("output");
        let (work, design) = tokio::join!(
            out.copy("/work", run_dir),
            out.copy("/output/design.gds", &output)
        );
        work?;
        design?;
        Ok(())
    }

    async fn judge(
        &self,
        ctx: &Ctx<'_>,
        run: &Run,
        code: i64,
        _progress: Option<Progress>,
    ) -> Outcome {
        let see = "see the logs";
        match code {
            0 => {
                let output = tokio::fs::symlink_metadata(ctx.storage.output_path(run.id)).await;
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
            1 => match checker_errors(ctx.storage.log_path(run.id)).await {
                Some(found) => Outcome::failed(
                    1,
                    format!("the precheck found problems (exit code 1): {found}{see}"),
                ),
                None => Outcome::failed(1, format!("the precheck failed (exit code 1): {see}")),
            },
            2 => Outcome::failed(
                2,
                format!("the precheck rejected its arguments (exit code 2): {see}"),
            ),
            code => Outcome::failed(code, format!("the precheck exited with code {code}: {see}")),
        }
    }
}

/// The watch of the configured precheck image, whose self-test runs `python3 precheck.py --help`
/// in a container made as a precheck's: the same isolation (`Engine::create`), limits, working
/// directory, environment and entrypoint, and this storage folder's label.
pub fn precheck_image_watch(engine: &Engine, config: &Config, storage: &Storage) -> ImageWatch {
    let (limits, _) = config.limits_for(RunKind::Precheck);
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

#[cfg(test)]
mod tests {
    use super::*;
    use uuid::Uuid;

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
}
