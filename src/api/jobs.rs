//! `/api/v1/projects/{id}/jobs`: a project's simulations and builds. Jobs are runs: the same
//! queue, states, `/wait`, logs and cancel as prechecks; their results are artefacts.

use axum::extract::{RawQuery, State};
use axum::http::StatusCode;
use axum::response::Response;
use serde::{Deserialize, Deserializer};
use time::OffsetDateTime;
use utoipa::openapi::schema::Object;
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use super::error::{ApiError, Message};
use super::extract::{Caller, Json, Path, parse_id};
use super::logs::{LogParams, LogsBody, logs_of};
use super::openapi::{Binary, nullable_string_enum, string_enum};
use super::page::{Limit, Page, before};
use super::projects::find as find_project;
use super::query;
use super::respond::{attachment, tar_gz_response};
use super::runs::{RunBody, WaitBody, WaitParams, cancel_run, notify_url, noun, wait_for};
use super::state::AppState;
use crate::config::Builds;
use crate::db::{CreateJobError, NewRun, RunFilter};
use crate::model::{
    BuildParams, BuildRequest, JobFields, JobRequest, ProjectFile, Run, RunKind, RunParams,
    RunStatus, Scope, SimulationParams, SimulationRequest, SimulationTool, check_project_path,
};
use crate::runner::ARTIFACTS;
use crate::storage::open_inside;

/// The kinds of job, as `NewJob.kind` and the `kind` filter name them.
const JOB_KINDS: [RunKind; 2] = [RunKind::Simulation, RunKind::Build];

fn job_kind() -> Object {
    string_enum(JOB_KINDS.map(RunKind::as_str))
}

fn tool() -> Object {
    let mut tool = nullable_string_enum(SimulationTool::ALL.map(SimulationTool::as_str));
    tool.default = Some(SimulationTool::Icarus.as_str().into());
    tool
}

/// A job's kind, as the `kind` filter names it.
struct JobKind(RunKind);

impl utoipa::PartialSchema for JobKind {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        job_kind().into()
    }
}

impl ToSchema for JobKind {}

impl<'de> Deserialize<'de> for JobKind {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<JobKind, D::Error> {
        query::text(d, |value| match value.parse::<RunKind>() {
            Ok(kind) if JOB_KINDS.contains(&kind) => Ok(JobKind(kind)),
            _ => Err(format!(
                "{value:?} is not a kind of job: use simulation or build"
            )),
        })
    }
}

/// A job: a simulation (`kind`, `top`, `tool`?, `files`?) or a build (`kind`, `config`), each
/// with `notify_url`?. A field of the other kind is refused.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewJob {
    #[schema(schema_with = job_kind)]
    kind: String,
    /// Simulation: the simulator.
    #[schema(schema_with = tool)]
    tool: Option<String>,
    /// Simulation: the testbench's top module, a Verilog name that a `module` line of the
    /// compiled files declares.
    #[schema(pattern = "^[A-Za-z_][A-Za-z0-9_$]*$", max_length = 1024)]
    top: Option<String>,
    /// Simulation: the files to compile, in order, each once (default: every `.v` and `.sv` file).
    #[schema(min_items = 1)]
    files: Option<Vec<String>>,
    /// Build: the project's LibreLane config file (`.json`, `.yaml` or `.yml`).
    config: Option<String>,
    /// Where to POST the job's end (default: `webhooks.default_url`).
    notify_url: Option<String>,
}

/// Create a job
///
/// Checks the fields and the project's files before the job takes a queue slot.
#[utoipa::path(
    post,
    path = "/api/v1/projects/{id}/jobs",
    operation_id = "job_create",
    tag = "jobs",
    params(("id" = Uuid, Path, description = "The project's id.")),
    request_body(content = NewJob, content_type = "application/json"),
    responses(
        (status = 201, description = "Queued: a run of `Kind` `simulation` or `build`.", body = RunBody),
        (status = 400, description = "A bad field (named), a missing file or top module, or not a JSON body.", body = Message),
        (status = 404, description = "No such project (or another key's).", body = Message),
        (status = 503, description = "A build, and the server has no PDK (`builds.pdk`).", body = Message),
    )
)]
pub async fn create(
    State(state): State<AppState>,
    caller: Caller,
    Path(project): Path<String>,
    Json(body): Json<NewJob>,
) -> Result<(StatusCode, Json<RunBody>), ApiError> {
    let project = find_project(&state, &caller, &project).await?.id;
    let notify_url = notify_url(&state.config.webhooks, body.notify_url)?;
    let fields = JobFields {
        kind: body.kind,
        tool: body.tool,
        top: body.top,
        files: body.files,
        config: body.config,
    };
    let (params, needs) = match JobRequest::parse(fields).map_err(ApiError::BadRequest)? {
        JobRequest::Simulation(request) => simulation(&state, project, request).await?,
        JobRequest::Build(request) => build(&state.config.builds, project, request)?,
    };
    let kind = params.kind();
    let id = Uuid::new_v4();
    let created = state
        .db
        .create_job(
            id,
            params,
            needs,
            NewRun {
                image: state.config.image_for(kind).to_string(),
                owner: caller.name,
                notify_url,
                idempotency: None,
                created: OffsetDateTime::now_utc(),
            },
        )
        .await?;
    let run = created.map_err(|e| create_refusal(e, project))?;
    state.queue.created(&run);
    tracing::info!(run_id = %run.id, project_id = %project, %kind, "job queued");
    Ok((StatusCode::CREATED, Json(RunBody::from(&run))))
}

/// A simulation's parameters, and the files it needs: the request's rules were checked by
/// [`JobRequest::parse`]; the project's files are checked here.
async fn simulation(
    state: &AppState,
    project: Uuid,
    request: SimulationRequest,
) -> Result<(RunParams, Vec<String>), ApiError> {
    let SimulationRequest {
        tool,
        top,
        files: listed,
    } = request;
    let top = top.into_string();
    let files = state.db.project_files(project).await?;
    let sources = sources(project, listed, &files)?;
    check_top_is_defined(state, &files, &sources, &top).await?;
    let params = SimulationParams {
        project_id: project,
        tool,
        top,
        sources: sources.clone(),
    };
    Ok((RunParams::Simulation(params), sources))
}

/// The files a simulation compiles: those listed, which the project (`files`) must hold, else
/// every `.v` and `.sv` file it holds, of which there must be one.
fn sources(
    project: Uuid,
    listed: Option<Vec<String>>,
    files: &[ProjectFile],
) -> Result<Vec<String>, ApiError> {
    let have: Vec<&String> = files.iter().map(|f| &f.path).collect();
    match listed {
        Some(listed) => {
            if let Some(f) = listed.iter().find(|f| !have.contains(f)) {
                return Err(missing_file(project, f));
            }
            Ok(listed)
        }
        None => {
            let hdl: Vec<String> = have
                .into_iter()
                .filter(|p| p.ends_with(".v") || p.ends_with(".sv"))
                .cloned()
                .collect();
            if hdl.is_empty() {
                return Err(ApiError::BadRequest(format!(
                    "project {project} has no .v or .sv files to simulate: PUT the sources first"
                )));
            }
            Ok(hdl)
        }
    }
}

/// A build's parameters, and the file it needs (which the database checks as it makes the job);
/// refused when the server has no PDK (`builds`: the config's `[builds]`).
fn build(
    builds: &Builds,
    project: Uuid,
    request: BuildRequest,
) -> Result<(RunParams, Vec<String>), ApiError> {
    let BuildRequest { config } = request;
    if builds.pdk.is_none() {
        return Err(ApiError::Unavailable(
            "this server has no PDK for builds: its operator sets [builds] pdk in the config"
                .into(),
        ));
    }
    let params = BuildParams {
        project_id: project,
        config: config.clone(),
    };
    Ok((RunParams::Build(params), vec![config]))
}

/// The refusal of a create the database turned down: the project went meanwhile, or it does not
/// hold the file the job needs (a build's config).
fn create_refusal(e: CreateJobError, project: Uuid) -> ApiError {
    match e {
        CreateJobError::NoProject => ApiError::NotFound(format!("no such project: {project}")),
        CreateJobError::MissingFile(path) => missing_file(project, &path),
    }
}

fn missing_file(project: Uuid, path: &str) -> ApiError {
    ApiError::BadRequest(format!(
        "project {project} has no file {path:?}: PUT it first (GET .../files lists what it has)"
    ))
}

/// Refuses a simulation whose top module no source declares, before it takes a queue slot.
async fn check_top_is_defined(
    state: &AppState,
    files: &[ProjectFile],
    sources: &[String],
    top: &str,
) -> Result<(), ApiError> {
    let blobs: Vec<std::path::PathBuf> = files
        .iter()
        .filter(|f| sources.contains(&f.path))
        .map(|f| state.storage.blob_path(&f.sha256))
        .collect();
    let wanted = top.to_string();
    let found = tokio::task::spawn_blocking(move || any_declares(&blobs, &wanted))
        .await
        .map_err(|e| ApiError::Internal(e.into()))?;
    if found {
        return Ok(());
    }
    Err(no_top_module(top, sources))
}

/// Whether one of these files (a file that cannot be read declares nothing) declares the
/// module `top`.
fn any_declares(blobs: &[std::path::PathBuf], top: &str) -> bool {
    blobs.iter().any(|path| {
        std::fs::File::open(path)
            .and_then(|f| declares_module(std::io::BufReader::new(f), top))
            .unwrap_or(false)
    })
}

/// The refusal of a simulation whose top module none of its `sources` declares.
fn no_top_module(top: &str, sources: &[String]) -> ApiError {
    ApiError::BadRequest(format!(
        "top: no module {top:?} in {}: name the testbench's top module",
        if sources.len() == 1 {
            sources[0].clone()
        } else {
            format!("the {} files compiled", sources.len())
        }
    ))
}

/// Whether Verilog source has `module NAME` (or `macromodule NAME`) for this name. Reads the
/// source word by word, holding at most one word (up to the name's length) at a time.
fn declares_module(source: impl std::io::BufRead, name: &str) -> std::io::Result<bool> {
    let mut word = Vec::with_capacity(name.len() + 1);
    let mut too_long = false;
    let mut after_module = false;
    let mut finish = |word: &mut Vec<u8>, too_long: &mut bool| {
        let w = if *too_long {
            None
        } else {
            Some(word.as_slice())
        };
        let found = after_module && w == Some(name.as_bytes());
        after_module = matches!(w, Some(b"module") | Some(b"macromodule"));
        word.clear();
        *too_long = false;
        found
    };
    for byte in source.bytes() {
        let b = byte?;
        if b.is_ascii_alphanumeric() || b == b'_' || b == b'$' {
            if word.len() > name.len().max(11) {
                too_long = true;
            } else {
                word.push(b);
            }
        } else if (!word.is_empty() || too_long) && finish(&mut word, &mut too_long) {
            return Ok(true);
        }
    }
    Ok((!word.is_empty() || too_long) && finish(&mut word, &mut too_long))
}

/// The query of `GET /api/v1/projects/{id}/jobs`.
#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct ListParams {
    /// Only jobs with one of these statuses (repeatable).
    #[param(explode)]
    status: Option<Vec<RunStatus>>,
    /// Only jobs of these kinds (repeatable).
    #[param(inline, explode)]
    kind: Option<Vec<JobKind>>,
    /// At most this many jobs (default 100).
    #[param(value_type = Option<usize>, minimum = 1, maximum = 1000)]
    limit: Option<Limit>,
    /// Only jobs created before this one: the `X-Next-Before` of the previous page.
    #[param(value_type = Option<Uuid>)]
    #[serde(default, deserialize_with = "before_job")]
    before: Option<Uuid>,
}

fn before_job<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Uuid>, D::Error> {
    before(d, "job")
}

/// List a project's jobs
///
/// Newest first, a page at a time (`limit`, `before`), as the precheck list.
#[utoipa::path(
    get,
    path = "/api/v1/projects/{id}/jobs",
    operation_id = "job_list",
    tag = "jobs",
    params(
        ("id" = Uuid, Path, description = "The project's id."),
        ListParams,
    ),
    responses(
        (status = 200, description = "A page of the project's jobs, newest first.", body = Vec<RunBody>,
            headers(("X-Next-Before" = Uuid, description = "Present when older jobs follow: the `before` of the next page."))),
        (status = 400, description = "An unknown status or kind, a bad `limit` or `before`, or an unknown query parameter.", body = Message),
        (status = 404, description = "No such project (or another key's).", body = Message),
    )
)]
pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
    Path(project): Path<String>,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let project = find_project(&state, &caller, &project).await?;
    let params: ListParams = query::parse(query.as_deref())?;
    let page = Page::new(params.limit, params.before);
    page.check_before(&state.db, &caller.scope, "job", |run| {
        run.kind() != RunKind::Precheck && run.params.project_id() == Some(project.id)
    })
    .await?;
    let filter = RunFilter {
        statuses: params.status.unwrap_or_default(),
        kinds: params
            .kind
            .into_iter()
            .flatten()
            .map(|JobKind(k)| k)
            .collect(),
        scope: caller.scope,
        project_id: Some(project.id),
        before: page.before,
        limit: Some(page.fetch()),
    };
    Ok(page.respond(state.db.runs_where(filter).await?))
}

/// Inspect a job
///
/// A build's `State.Progress` follows its LibreLane steps.
#[utoipa::path(
    get,
    path = "/api/v1/projects/{id}/jobs/{job}",
    operation_id = "job_inspect",
    tag = "jobs",
    params(
        ("id" = Uuid, Path, description = "The project's id."),
        ("job" = Uuid, Path, description = "The job's id."),
    ),
    responses(
        (status = 200, description = "The run.", body = RunBody),
        (status = 404, description = "No such project or job (or another key's).", body = Message),
    )
)]
pub async fn inspect(
    State(state): State<AppState>,
    caller: Caller,
    Path((project, job)): Path<(String, String)>,
) -> Result<Json<RunBody>, ApiError> {
    let run = find(&state, &caller, &project, &job).await?;
    Ok(Json(RunBody::from(&run)))
}

/// Cancel a job
#[utoipa::path(
    delete,
    path = "/api/v1/projects/{id}/jobs/{job}",
    operation_id = "job_cancel",
    tag = "jobs",
    params(
        ("id" = Uuid, Path, description = "The project's id."),
        ("job" = Uuid, Path, description = "The job's id."),
    ),
    responses(
        (status = 200, description = "Cancelled: the run, status `cancelled` (or how it ended, if it ended meanwhile).", body = RunBody),
        (status = 404, description = "No such project or job (or another key's).", body = Message),
        (status = 409, description = "It has already finished.", body = Message),
    )
)]
pub async fn cancel(
    State(state): State<AppState>,
    caller: Caller,
    Path((project, job)): Path<(String, String)>,
) -> Result<Json<RunBody>, ApiError> {
    let run = find(&state, &caller, &project, &job).await?;
    cancel_run(&state, &run).await
}

/// Wait for a job
///
/// Blocks until the job ends, and answers the moment it does.
#[utoipa::path(
    post,
    path = "/api/v1/projects/{id}/jobs/{job}/wait",
    operation_id = "job_wait",
    tag = "jobs",
    params(
        ("id" = Uuid, Path, description = "The project's id."),
        ("job" = Uuid, Path, description = "The job's id."),
        WaitParams,
    ),
    responses(
        (status = 200, description = "The job has ended.", body = WaitBody),
        (status = 400, description = "A bad `timeout` or an unknown query parameter.", body = Message),
        (status = 404, description = "No such project or job (or another key's).", body = Message),
        (status = 408, description = "Still queued or running after `timeout`: call again.", body = Message),
        (status = 503, description = "The server is shutting down; the job goes on: call again once it is back.", body = Message),
    )
)]
pub async fn wait(
    State(state): State<AppState>,
    caller: Caller,
    Path((project, job)): Path<(String, String)>,
    RawQuery(query): RawQuery,
) -> Result<Json<WaitBody>, ApiError> {
    let run = find(&state, &caller, &project, &job).await?;
    wait_for(&state, &run, query).await
}

/// A job's logs
///
/// As for prechecks: one JSON document, or with `follow=true` text lines until the job ends.
#[utoipa::path(
    get,
    path = "/api/v1/projects/{id}/jobs/{job}/logs",
    operation_id = "job_logs",
    tag = "jobs",
    params(
        ("id" = Uuid, Path, description = "The project's id."),
        ("job" = Uuid, Path, description = "The job's id."),
        LogParams,
    ),
    responses(
        (status = 200, description = "The log: JSON, or with `follow=true` text lines streamed until the job ends.", content(
            (LogsBody = "application/json"),
            (String = "text/plain; charset=utf-8"),
        )),
        (status = 400, description = "A bad parameter.", body = Message),
        (status = 404, description = "No such project or job (or another key's).", body = Message),
    )
)]
pub async fn logs(
    State(state): State<AppState>,
    caller: Caller,
    Path((project, job)): Path<(String, String)>,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let run = find(&state, &caller, &project, &job).await?;
    logs_of(state, run, query).await
}

/// A job's artefacts
///
/// Every artefact of a finished job as a `.tar.gz` stream.
#[utoipa::path(
    get,
    path = "/api/v1/projects/{id}/jobs/{job}/artifacts",
    operation_id = "job_artifacts",
    tag = "jobs",
    params(
        ("id" = Uuid, Path, description = "The project's id."),
        ("job" = Uuid, Path, description = "The job's id."),
    ),
    responses(
        (status = 200, description = "The tarball, streamed.", body = Binary, content_type = "application/gzip",
            headers(("Content-Disposition" = String, description = "`attachment; filename=\"<kind>-<id>.tar.gz\"`"))),
        (status = 404, description = "No such project or job (or another key's).", body = Message),
        (status = 409, description = "The job has not finished.", body = Message),
    )
)]
pub async fn artifacts(
    State(state): State<AppState>,
    caller: Caller,
    Path((project, job)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let run = finished(&state, &caller, &project, &job).await?;
    let dir = state.storage.run_dir(run.id).join(ARTIFACTS);
    tar_gz_response(dir, format!("{}-{}", run.kind(), run.id)).await
}

/// One artefact
///
/// One file of a finished job's artefacts, e.g. `final/gds/chip_top.gds` or `tb.vcd`.
#[utoipa::path(
    get,
    path = "/api/v1/projects/{id}/jobs/{job}/artifacts/{*path}",
    operation_id = "job_artifact",
    tag = "jobs",
    params(
        ("id" = Uuid, Path, description = "The project's id."),
        ("job" = Uuid, Path, description = "The job's id."),
        ("path" = String, Path, description = "The artefact's path in the job's artefacts (its slashes are not escaped)."),
    ),
    responses(
        (status = 200, description = "The file, streamed.", body = Binary, content_type = "application/octet-stream",
            headers(
                ("Content-Disposition" = String, description = "`attachment; filename=\"<name>\"`"),
                ("Content-Length" = u64, description = "Bytes."),
            )),
        (status = 400, description = "A bad path.", body = Message),
        (status = 404, description = "No such project or job (or another key's), or no such artefact (or a link).", body = Message),
        (status = 409, description = "The job has not finished.", body = Message),
    )
)]
pub async fn artifact(
    State(state): State<AppState>,
    caller: Caller,
    Path((project, job, path)): Path<(String, String, String)>,
) -> Result<Response, ApiError> {
    let run = finished(&state, &caller, &project, &job).await?;
    check_project_path(&path).map_err(ApiError::BadRequest)?;
    let root = state.storage.run_dir(run.id).join(ARTIFACTS);
    let rel = path.clone();
    let opened = tokio::task::spawn_blocking(move || open_inside(&root, &rel))
        .await
        .map_err(|e| ApiError::Internal(e.into()))?
        .map_err(|e| {
            ApiError::Internal(anyhow::Error::from(e).context("cannot read the artefact"))
        })?;
    let Some((file, len)) = opened else {
        return Err(no_artefact(&run, &path));
    };
    let filename: String = path
        .rsplit('/')
        .next()
        .unwrap_or("artifact")
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
        .collect();
    Ok(attachment(file, len, &filename))
}

/// The refusal of an artefact `path` that the job's artefacts do not hold (as a regular file).
fn no_artefact(run: &Run, path: &str) -> ApiError {
    ApiError::NotFound(format!(
        "{} {} has no artefact {path:?}: GET .../artifacts has them all",
        noun(run.kind()),
        run.id
    ))
}

/// A job whose artefacts are complete: it has finished.
async fn finished(
    state: &AppState,
    caller: &Caller,
    project: &str,
    job: &str,
) -> Result<Run, ApiError> {
    let run = find(state, caller, project, job).await?;
    has_finished(&run)?;
    Ok(run)
}

/// Refuses the artefacts of a job that has not finished.
fn has_finished(run: &Run) -> Result<(), ApiError> {
    if !run.status.is_terminal() {
        return Err(ApiError::Conflict(format!(
            "{} {} is {}: its artefacts exist once it has finished (POST .../wait)",
            noun(run.kind()),
            run.id,
            run.status
        )));
    }
    Ok(())
}

/// A job of a project the caller may see; anything else is "no such job".
async fn find(
    state: &AppState,
    caller: &Caller,
    project: &str,
    job: &str,
) -> Result<Run, ApiError> {
    let project = find_project(state, caller, project).await?;
    let id = parse_id(job, "job")?;
    job_of(project.id, state.db.run(id).await?, &caller.scope, id)
}

/// The job `id` as the database has it (if at all), if it is one of `project`'s that the caller
/// may see: anything else (another project's, a precheck, another key's) is "no such job".
fn job_of(project: Uuid, run: Option<Run>, scope: &Scope, id: Uuid) -> Result<Run, ApiError> {
    match run {
        Some(run)
            if run.params.project_id() == Some(project) && scope.sees(run.owner.as_deref()) =>
        {
            Ok(run)
        }
        _ => Err(ApiError::NotFound(format!(
            "project {project} has no job {id}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn module_declarations_are_found_by_word() {
        let declares = |text: &str, name: &str| declares_module(text.as_bytes(), name).unwrap();
        let text =
            "// tb\nmodule counter(input clk);\nendmodule\nmodule\n  tb_counter ;\nendmodule";
        assert!(declares(text, "tb_counter"));
        assert!(declares(text, "counter"));
        assert!(!declares(text, "tb"));
        assert!(!declares("endmodule tb", "tb"));
        assert!(!declares("module tb_x", "tb"));
        assert!(declares("macromodule m$1();", "m$1"));
        assert!(declares("module tb", "tb"));
        let long = format!("module {}x tb module tb", "a".repeat(100_000));
        assert!(declares(&long, "tb"));
        assert!(!declares(&format!("module {}", "tb".repeat(1000)), "tb"));
    }
}

/// The refusals that read what the database, the config and the project's files hold, without
/// a server.
#[cfg(test)]
mod state_tests {
    use super::*;
    use crate::config::PdkSource;

    fn file(path: &str) -> ProjectFile {
        ProjectFile {
            path: path.into(),
            size: 1,
            sha256: "0".repeat(64),
            modified: OffsetDateTime::now_utc(),
        }
    }

    /// The status and message of a refusal.
    fn refusal<T: std::fmt::Debug>(result: Result<T, ApiError>) -> (u16, String) {
        let e = result.expect_err("taken");
        (e.status().as_u16(), e.to_string())
    }

    fn listed(paths: &[&str]) -> Option<Vec<String>> {
        Some(paths.iter().map(|p| p.to_string()).collect())
    }

    #[test]
    fn a_simulation_compiles_files_the_project_holds() {
        let p = Uuid::new_v4();
        let files = [file("rtl/counter.v"), file("README.md"), file("tb/tb.sv")];
        assert_eq!(
            sources(p, None, &files).unwrap(),
            ["rtl/counter.v", "tb/tb.sv"]
        );
        assert_eq!(
            sources(p, listed(&["tb/tb.sv", "README.md"]), &files).unwrap(),
            ["tb/tb.sv", "README.md"]
        );
        assert_eq!(
            refusal(sources(p, listed(&["rtl/counter.v", "rtl/alu.v"]), &files)),
            (
                400,
                format!(
                    "project {p} has no file \"rtl/alu.v\": PUT it first (GET .../files lists what it has)"
                )
            )
        );
        assert_eq!(
            refusal(sources(p, None, &[file("README.md"), file("a.vhd")])),
            (
                400,
                format!("project {p} has no .v or .sv files to simulate: PUT the sources first")
            )
        );
        assert_eq!(refusal(sources(p, None, &[])).0, 400);
    }

    #[test]
    fn a_simulation_needs_a_source_that_declares_its_top_module() {
        let dir = tempfile::tempdir().unwrap();
        let counter = dir.path().join("counter");
        let tb = dir.path().join("tb");
        std::fs::write(&counter, "module counter(input clk);\nendmodule\n").unwrap();
        std::fs::write(&tb, "module tb;\n  counter c(.clk(clk));\nendmodule\n").unwrap();
        let gone = dir.path().join("gone");
        assert!(any_declares(&[counter.clone(), tb.clone()], "tb"));
        assert!(any_declares(&[gone.clone(), tb], "tb"));
        assert!(!any_declares(&[counter, gone], "tb"));
        assert!(!any_declares(&[], "tb"));
        let e = no_top_module("tb", &["rtl/counter.v".into()]);
        assert_eq!(
            (e.status().as_u16(), e.to_string()),
            (
                400,
                "top: no module \"tb\" in rtl/counter.v: name the testbench's top module".into()
            )
        );
        let e = no_top_module("tb", &["a.v".into(), "b.v".into()]);
        assert_eq!(
            e.to_string(),
            "top: no module \"tb\" in the 2 files compiled: name the testbench's top module"
        );
    }

    #[test]
    fn a_build_needs_the_servers_pdk() {
        let p = Uuid::new_v4();
        let request = || BuildRequest {
            config: "config.json".into(),
        };
        let none = Builds {
            pdk: None,
            pdk_variant: "gf180mcuD".into(),
        };
        assert_eq!(
            refusal(build(&none, p, request())),
            (
                503,
                "this server has no PDK for builds: its operator sets [builds] pdk in the config"
                    .into()
            )
        );
        let pdk = Builds {
            pdk: Some(PdkSource::HostPath("/opt/pdk".into())),
            ..none
        };
        let (params, needs) = build(&pdk, p, request()).unwrap();
        assert_eq!(params.project_id(), Some(p));
        assert_eq!(needs, ["config.json"]);
    }

    #[test]
    fn a_create_the_database_turns_down_says_why() {
        let p = Uuid::new_v4();
        let e = create_refusal(CreateJobError::NoProject, p);
        assert_eq!(
            (e.status().as_u16(), e.to_string()),
            (404, format!("no such project: {p}"))
        );
        let e = create_refusal(CreateJobError::MissingFile("config.json".into()), p);
        assert_eq!(
            (e.status().as_u16(), e.to_string()),
            (
                400,
                format!(
                    "project {p} has no file \"config.json\": PUT it first (GET .../files lists what it has)"
                )
            )
        );
    }

    #[test]
    fn jobs_are_found_only_in_their_project_by_a_key_that_may_see_them() {
        let p = Uuid::new_v4();
        let ci = Scope::Owner("ci".into());
        let mine = Run::simulation_of(p, Some("ci"));
        let id = mine.id;
        assert_eq!(job_of(p, Some(mine), &ci, id).unwrap().id, id);
        assert!(job_of(p, Some(Run::build_of(p, Some("other"))), &Scope::All, id).is_ok());
        for run in [
            None,
            Some(Run::build_of(Uuid::new_v4(), Some("ci"))),
            Some(Run::build_of(p, Some("other"))),
            Some(Run::precheck_of(Some("ci"))),
        ] {
            assert_eq!(
                refusal(job_of(p, run, &ci, id)),
                (404, format!("project {p} has no job {id}"))
            );
        }
    }

    #[test]
    fn artefacts_wait_for_the_job_to_finish() {
        let run = Run::build_of(Uuid::new_v4(), None);
        let id = run.id;
        for status in [RunStatus::Queued, RunStatus::Running] {
            assert_eq!(
                refusal(has_finished(&run.clone().with_status(status))),
                (
                    409,
                    format!(
                        "build job {id} is {status}: its artefacts exist once it has finished (POST .../wait)"
                    )
                )
            );
        }
        for status in [
            RunStatus::Completed,
            RunStatus::Failed,
            RunStatus::Cancelled,
        ] {
            assert!(has_finished(&run.clone().with_status(status)).is_ok());
        }
        let sim = Run::simulation_of(Uuid::new_v4(), None);
        let e = no_artefact(&sim, "tb.vcd");
        assert_eq!(
            (e.status().as_u16(), e.to_string()),
            (
                404,
                format!(
                    "simulation job {} has no artefact \"tb.vcd\": GET .../artifacts has them all",
                    sim.id
                )
            )
        );
    }
}

/// The list's query, read without a server.
#[cfg(test)]
mod query_tests {
    use super::*;

    #[test]
    fn list_queries_are_read_or_refused_by_name() {
        let q: ListParams = query::parse(Some("kind=build&status=failed&kind=simulation")).unwrap();
        let kinds: Vec<RunKind> = q.kind.into_iter().flatten().map(|JobKind(k)| k).collect();
        assert_eq!(kinds, [RunKind::Build, RunKind::Simulation]);
        assert_eq!(q.status, Some(vec![RunStatus::Failed]));
        for (query, message) in [
            (
                "kind=precheck",
                "kind: \"precheck\" is not a kind of job: use simulation or build",
            ),
            (
                "before=x",
                "before: \"x\" is not a job id: give the X-Next-Before of the previous page",
            ),
            (
                "tool=icarus",
                "unknown query parameter \"tool\": use status, kind, limit or before",
            ),
        ] {
            let refused = query::parse::<ListParams>(Some(query))
                .err()
                .map(|e| e.to_string());
            assert_eq!(refused.as_deref(), Some(message), "{query}");
        }
    }
}
