//! Runs of every kind: what each was asked to do, where it stands and how it ended.

use std::fmt;
use std::str::FromStr;

use time::OffsetDateTime;
use uuid::Uuid;

use super::jobs::{BuildParams, SimulationParams};
use super::prechecks::PrecheckParams;

/// A run's lifecycle status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RunStatus {
    Queued,
    Running,
    Completed,
    Failed,
    Cancelled,
}

impl RunStatus {
    pub const ALL: [RunStatus; 5] = [
        RunStatus::Queued,
        RunStatus::Running,
        RunStatus::Completed,
        RunStatus::Failed,
        RunStatus::Cancelled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RunStatus::Queued => "queued",
            RunStatus::Running => "running",
            RunStatus::Completed => "completed",
            RunStatus::Failed => "failed",
            RunStatus::Cancelled => "cancelled",
        }
    }

    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            RunStatus::Completed | RunStatus::Failed | RunStatus::Cancelled
        )
    }
}

impl fmt::Display for RunStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for RunStatus {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        RunStatus::ALL
            .into_iter()
            .find(|st| st.as_str() == s)
            .ok_or_else(|| {
                format!(
                    "unknown status {s:?}: use one of {}",
                    RunStatus::ALL.map(RunStatus::as_str).join(", ")
                )
            })
    }
}

/// A run's kind and what it was asked to do.
#[derive(Debug, Clone)]
pub enum RunParams {
    Precheck(PrecheckParams),
    Simulation(SimulationParams),
    Build(BuildParams),
}

impl RunParams {
    pub fn kind(&self) -> RunKind {
        match self {
            RunParams::Precheck(_) => RunKind::Precheck,
            RunParams::Simulation(_) => RunKind::Simulation,
            RunParams::Build(_) => RunKind::Build,
        }
    }

    /// The project a job belongs to; `None` for a precheck.
    pub fn project_id(&self) -> Option<Uuid> {
        match self {
            RunParams::Precheck(_) => None,
            RunParams::Simulation(p) => Some(p.project_id),
            RunParams::Build(p) => Some(p.project_id),
        }
    }
}

/// The kinds of run: a precheck of an upload, or a project's simulation or build job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RunKind {
    Precheck,
    Simulation,
    Build,
}

impl RunKind {
    pub const ALL: [RunKind; 3] = [RunKind::Precheck, RunKind::Simulation, RunKind::Build];

    pub fn as_str(self) -> &'static str {
        match self {
            RunKind::Precheck => "precheck",
            RunKind::Simulation => "simulation",
            RunKind::Build => "build",
        }
    }
}

impl fmt::Display for RunKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for RunKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        RunKind::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| {
                format!(
                    "unknown kind {s:?}: use one of {}",
                    RunKind::ALL.map(RunKind::as_str).join(", ")
                )
            })
    }
}

/// Where a build is, as read from its log: step `step` (counting from 1) of `count`, if known.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Progress {
    pub step: u32,
    pub name: String,
    pub count: Option<u32>,
}

/// A run as stored.
#[derive(Debug, Clone)]
pub struct Run {
    pub id: Uuid,
    pub created: OffsetDateTime,
    pub params: RunParams,
    /// A build's step, while it runs and after.
    pub progress: Option<Progress>,
    /// Where the run's end is POSTed (a webhook).
    pub notify_url: Option<String>,
    /// The image reference from the config when the run was created.
    pub image: String,
    /// The `sha256:` id of the image that ran it, once started.
    pub image_id: Option<String>,
    pub status: RunStatus,
    pub exit_code: Option<i64>,
    pub error: Option<String>,
    pub oom_killed: bool,
    pub started_at: Option<OffsetDateTime>,
    pub finished_at: Option<OffsetDateTime>,
    /// Position in the queue (1 = next) and queue length, while queued.
    pub queue: Option<(u64, u64)>,
    /// The name of the API key that made it (none without authentication).
    pub owner: Option<String>,
    /// The engine the run went to, once it left the queue.
    pub engine: Option<String>,
}

impl Run {
    pub fn kind(&self) -> RunKind {
        self.params.kind()
    }

    pub fn precheck(&self) -> Option<&PrecheckParams> {
        match &self.params {
            RunParams::Precheck(p) => Some(p),
            _ => None,
        }
    }
}

/// Runs for the unit tests of the rules that read one (who may see it, what its status allows).
#[cfg(test)]
impl Run {
    /// A queued run of `params`, made by the key `owner`.
    pub fn queued(params: RunParams, owner: Option<&str>) -> Run {
        Run {
            id: Uuid::new_v4(),
            created: OffsetDateTime::now_utc(),
            params,
            progress: None,
            notify_url: None,
            image: "precheck:test".into(),
            image_id: None,
            status: RunStatus::Queued,
            exit_code: None,
            error: None,
            oom_killed: false,
            started_at: None,
            finished_at: None,
            queue: Some((1, 1)),
            owner: owner.map(String::from),
            engine: None,
        }
    }

    /// A queued precheck of a new upload.
    pub fn precheck_of(owner: Option<&str>) -> Run {
        Run::queued(
            RunParams::Precheck(PrecheckParams {
                upload_id: Uuid::new_v4(),
                top_cell: "chip_top".into(),
                die_id: "FFFFFFFF".into(),
                slot: "1x1".into(),
                cob: false,
            }),
            owner,
        )
    }

    /// A queued build job of `project`.
    pub fn build_of(project_id: Uuid, owner: Option<&str>) -> Run {
        Run::queued(
            RunParams::Build(BuildParams {
                project_id,
                config: "config.json".into(),
            }),
            owner,
        )
    }

    /// A queued simulation job of `project`.
    pub fn simulation_of(project_id: Uuid, owner: Option<&str>) -> Run {
        Run::queued(
            RunParams::Simulation(SimulationParams {
                project_id,
                tool: super::jobs::SimulationTool::Icarus,
                top: "tb".into(),
                sources: vec!["tb.v".into()],
            }),
            owner,
        )
    }

    /// This run with another status.
    pub fn with_status(mut self, status: RunStatus) -> Run {
        self.status = status;
        self
    }
}

/// Exit codes the server reports for runs that did not end by the container's own exit code.
pub mod exit_code {
    /// The run was cancelled (128 + SIGINT, as a shell reports Ctrl-C).
    pub const CANCELLED: i64 = 130;
    /// The run exceeded its time limit (as `timeout(1)` reports it).
    pub const TIMED_OUT: i64 = 124;
    /// The container could not be created or started, or was lost (as `docker run` reports it).
    pub const NOT_RUN: i64 = 125;
    /// The container exited 0 without writing its output.
    pub const NO_OUTPUT: i64 = 1;
}

/// How a run ended: what the runner hands to the database.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    pub status: RunStatus,
    pub exit_code: i64,
    pub error: Option<String>,
    pub oom_killed: bool,
}

impl Outcome {
    pub fn completed() -> Outcome {
        Outcome {
            status: RunStatus::Completed,
            exit_code: 0,
            error: None,
            oom_killed: false,
        }
    }

    /// A failed run. A failure never reports exit code 0, whatever the container said.
    pub fn failed(exit_code: i64, error: impl Into<String>) -> Outcome {
        let exit_code = if exit_code == 0 {
            exit_code::NOT_RUN
        } else {
            exit_code
        };
        Outcome {
            status: RunStatus::Failed,
            exit_code,
            error: Some(error.into()),
            oom_killed: false,
        }
    }

    pub fn cancelled() -> Outcome {
        Outcome {
            status: RunStatus::Cancelled,
            exit_code: exit_code::CANCELLED,
            error: Some("cancelled by request".into()),
            oom_killed: false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_round_trip_and_unknown_ones_say_what_is_allowed() {
        for s in RunStatus::ALL {
            assert_eq!(s.as_str().parse::<RunStatus>().unwrap(), s);
        }
        let e = "done".parse::<RunStatus>().unwrap_err();
        assert!(
            e.contains("queued, running, completed, failed, cancelled"),
            "{e}"
        );
    }

    #[test]
    fn kinds_round_trip_and_unknown_ones_say_what_is_allowed() {
        for k in RunKind::ALL {
            assert_eq!(k.as_str().parse::<RunKind>().unwrap(), k);
        }
        for bad in ["", "job", "Build", " build"] {
            let e = bad.parse::<RunKind>().unwrap_err();
            assert!(e.contains("precheck, simulation, build"), "{bad:?}: {e}");
        }
    }

    #[test]
    fn a_failure_never_reports_zero() {
        assert_ne!(Outcome::failed(0, "x").exit_code, 0);
        assert_eq!(Outcome::failed(1, "x").exit_code, 1);
        assert_ne!(Outcome::cancelled().exit_code, 0);
    }
}
