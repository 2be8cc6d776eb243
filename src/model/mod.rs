//! The nouns of the domain: uploads, runs, their states and how a run ended, projects and
//! their jobs, and the request fields with their rules (`die_id`, `slot`, `top_cell`, a
//! project's name and description, a job's kind and parameters), each parser saying what is
//! wrong as the API answers it. No SQL, no HTTP.
//!
//! One file per noun; everything is named here too, so `crate::model::X` is the path to use.

mod die;
mod jobs;
mod prechecks;
mod projects;
mod runs;
mod uploads;

pub use die::{die_problems, die_refusal, layout_problems, microns, slot_size};
pub use jobs::{
    BuildParams, BuildRequest, JobFields, JobFile, JobRequest, ModuleName, SimulationParams,
    SimulationRequest, SimulationTool,
};
pub use prechecks::{DieId, PrecheckParams, PrecheckSource, SLOTS, Slot, TopCell};
pub use projects::{
    MAX_PATH, MAX_PATH_PART, Project, ProjectEdit, ProjectFile, check_project_path,
    project_description, project_name,
};
pub use runs::{Outcome, Progress, Run, RunKind, RunParams, RunStatus, exit_code};
pub use uploads::{Scope, Upload};
// The layout's format lives with the reader that recognises it (`layout` imports nothing of the
// crate); named here too, with the other nouns of an upload.
pub use crate::layout::LayoutFormat;
