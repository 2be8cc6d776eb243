//! The nouns of the domain: uploads, runs, their states and how a run ended. No SQL, no HTTP.

use std::fmt;
use std::str::FromStr;

use time::OffsetDateTime;

use crate::layout::Layout;
// The layout's format lives with the reader that recognises it (`layout` imports nothing of the
// crate); named here too, with the other nouns of an upload.
pub use crate::layout::LayoutFormat;
use uuid::Uuid;

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

/// Slot sizes the precheck knows.
pub const SLOTS: [&str; 4] = ["1x1", "0p5x1", "1x0p5", "0p5x0p5"];

/// Whose uploads and runs a caller may see and touch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// Everything: an admin key, or a server without authentication.
    All,
    /// Only what the key with this name made.
    Owner(String),
}

impl Scope {
    pub fn sees(&self, owner: Option<&str>) -> bool {
        match self {
            Scope::All => true,
            Scope::Owner(name) => owner == Some(name.as_str()),
        }
    }

    /// The owner to filter lists by, if any.
    pub fn owner(&self) -> Option<&str> {
        match self {
            Scope::All => None,
            Scope::Owner(name) => Some(name),
        }
    }
}

/// A stored upload.
#[derive(Debug, Clone)]
pub struct Upload {
    pub id: Uuid,
    /// The client's file name: text only, never used as a path.
    pub name: String,
    pub size: u64,
    pub sha256: String,
    pub format: LayoutFormat,
    pub created: OffsetDateTime,
    /// `None` once a run uses the upload: it is then kept for that run.
    pub expires_at: Option<OffsetDateTime>,
    /// Set when the sweeper removed the file after it expired.
    pub expired: bool,
    /// The name of the API key that made it (none without authentication).
    pub owner: Option<String>,
    /// What the layout holds; `None` for uploads stored before layouts were inspected.
    pub layout: Option<Layout>,
}

impl Upload {
    pub fn is_expired(&self, now: OffsetDateTime) -> bool {
        self.expired || self.expires_at.is_some_and(|t| t <= now)
    }
}

/// What a precheck run was asked to do.
#[derive(Debug, Clone)]
pub struct PrecheckParams {
    pub upload_id: Uuid,
    pub top_cell: String,
    pub die_id: String,
    pub slot: String,
    pub cob: bool,
}

/// The simulators a simulation job may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SimulationTool {
    Icarus,
    Verilator,
}

impl SimulationTool {
    pub const ALL: [SimulationTool; 2] = [SimulationTool::Icarus, SimulationTool::Verilator];

    pub fn as_str(self) -> &'static str {
        match self {
            SimulationTool::Icarus => "icarus",
            SimulationTool::Verilator => "verilator",
        }
    }

    pub fn parse(s: &str) -> Option<SimulationTool> {
        SimulationTool::ALL.into_iter().find(|t| t.as_str() == s)
    }
}

/// What a simulation job was asked to do.
#[derive(Debug, Clone, PartialEq)]
pub struct SimulationParams {
    pub project_id: Uuid,
    pub tool: SimulationTool,
    /// The testbench's top module.
    pub top: String,
    /// The project files compiled, in order (every file of the project is in the container).
    pub sources: Vec<String>,
}

/// What a build job was asked to do.
#[derive(Debug, Clone, PartialEq)]
pub struct BuildParams {
    pub project_id: Uuid,
    /// The LibreLane config file's path in the project.
    pub config: String,
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
    fn project_paths() {
        for good in [
            "top.v",
            "src/top.v",
            "a/b/c/d.sv",
            "tb_top.v",
            "with space.v",
            "ünï.v",
        ] {
            assert_eq!(check_project_path(good), Ok(()), "{good}");
        }
        for (bad, why) in [
            ("", "empty"),
            ("/etc/passwd", "absolute"),
            ("../x.v", "'..'"),
            ("src/../../x.v", "'..'"),
            ("src//x.v", "empty"),
            ("./x.v", "'.'"),
            ("src/", "empty"),
            ("a\\b.v", "'\\\\'"),
            ("a\0b", "control"),
            ("a\nb", "control"),
        ] {
            let e = check_project_path(bad).unwrap_err();
            assert!(e.contains(why), "{bad:?}: {e}");
        }
        assert!(
            check_project_path(&"a".repeat(256))
                .unwrap_err()
                .contains("255")
        );
        assert!(
            check_project_path(&"a/".repeat(600))
                .unwrap_err()
                .contains("1024")
        );
    }

    #[test]
    fn a_failure_never_reports_zero() {
        assert_ne!(Outcome::failed(0, "x").exit_code, 0);
        assert_eq!(Outcome::failed(1, "x").exit_code, 1);
        assert_ne!(Outcome::cancelled().exit_code, 0);
    }
}

/// A designer's project: HDL sources kept on the server for simulations and builds.
#[derive(Debug, Clone, PartialEq)]
pub struct Project {
    pub id: Uuid,
    pub name: String,
    pub description: String,
    pub owner: Option<String>,
    pub created: OffsetDateTime,
    pub updated: OffsetDateTime,
    /// How many files it holds and their bytes in all.
    pub files: u64,
    pub size: u64,
}

/// One file of a project; its content is the blob named by its sha256.
#[derive(Debug, Clone, PartialEq)]
pub struct ProjectFile {
    pub path: String,
    pub size: u64,
    pub sha256: String,
    pub modified: OffsetDateTime,
}

/// A project file as a job was given it.
#[derive(Debug, Clone, PartialEq)]
pub struct JobFile {
    pub path: String,
    pub size: u64,
    pub sha256: String,
}

/// The longest project file path, and the longest part of one.
pub const MAX_PATH: usize = 1024;
pub const MAX_PATH_PART: usize = 255;

/// Checks a project file path: relative, `/`-separated, no empty, `.` or `..` part, no
/// backslash, NUL or control character. Says what is wrong otherwise.
pub fn check_project_path(path: &str) -> Result<(), String> {
    let problem = if path.is_empty() {
        "is empty"
    } else if path.len() > MAX_PATH {
        "is longer than 1024 bytes"
    } else if path.starts_with('/') {
        "is absolute: give it relative to the project, e.g. src/top.v"
    } else if path.chars().any(|c| c.is_control()) {
        "contains a control character"
    } else if path.contains('\\') {
        "contains '\\\\': separate folders with '/'"
    } else if path.split('/').any(|part| part == "..") {
        "contains '..'"
    } else if path.split('/').any(|part| part.is_empty() || part == ".") {
        "has an empty or '.' part"
    } else if path.split('/').any(|part| part.len() > MAX_PATH_PART) {
        "has a part longer than 255 bytes"
    } else {
        return Ok(());
    };
    Err(format!("the path {path:?} {problem}"))
}
