//! A project's simulation job: the project's files go into `/project`, a fixed script compiles
//! the sources with the chosen simulator and runs the testbench, and the waveforms it wrote
//! (`.vcd`, `.fst`) come back out as the job's artefacts. Its exit code is the testbench's.

use std::path::Path;

use anyhow::{Context, Result};

use crate::model::{Outcome, Progress, Run, SimulationParams, SimulationTool};

use super::kind::{ARTIFACTS, CopyOut, Ctx, Kind, PROJECT_DIR, Plan, project_files, run_env};

/// A simulation of a project's sources.
pub(super) struct Simulation<'a>(pub &'a SimulationParams);

impl Kind for Simulation<'_> {
    const RESULTS: &'static [&'static str] = &["scratch", ARTIFACTS];

    async fn plan(&self, ctx: &Ctx<'_>, run: &Run) -> Result<Result<Plan, Outcome>> {
        let (mut dirs, files) = project_files(ctx, run).await?;
        // The compiled simulation goes here: the project folder holds only what came in.
        dirs.push("/tmp".into());
        Ok(Ok(Plan {
            cmd: simulation_command(self.0),
            working_dir: PROJECT_DIR,
            env: run_env(),
            dirs,
            files,
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
        let scratch = run_dir.join("scratch");
        crate::storage::remove_tree(&scratch).await?;
        out.copy(PROJECT_DIR, &scratch).await?;
        let (from, to) = (scratch.join("project"), run_dir.join(ARTIFACTS));
        tokio::task::spawn_blocking(move || keep_waveforms(&from, &to))
            .await
            .context("the copy thread failed")?
            .context("cannot keep the simulation's waveforms")?;
        crate::storage::remove_tree(&scratch).await?;
        Ok(())
    }

    async fn judge(
        &self,
        _ctx: &Ctx<'_>,
        _run: &Run,
        code: i64,
        _progress: Option<Progress>,
    ) -> Outcome {
        match code {
            0 => Outcome::completed(),
            code => Outcome::failed(
                code,
                format!(
                    "the simulation of {} failed (exit code {code}): the compiler's or the testbench's messages are in the logs",
                    self.0.top
                ),
            ),
        }
    }
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
