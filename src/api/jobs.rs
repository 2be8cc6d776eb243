//! `/api/v1/projects/{id}/jobs`: a project's simulations and builds. Jobs are runs: the same
//! queue, states, `/wait`, logs and cancel as prechecks; their results are artefacts.

use axum::body::Body;
use axum::extract::{Path, RawQuery, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use time::OffsetDateTime;
use uuid::Uuid;

use super::logs::logs_of;
use super::prechecks::{
    RunBody, WaitBody, cancel_run, notify_url, noun, query_pairs, tar_gz_response, wait_for,
};
use super::projects::find as find_project;
use super::{ApiError, Caller, Json, parse_id};
use crate::db::{CreateJobError, NewRun, RunFilter};
use crate::model::{
    BuildParams, ProjectFile, Run, RunKind, RunParams, RunStatus, SimulationParams, SimulationTool,
    check_project_path,
};
use crate::runner::ARTIFACTS;
use crate::server::AppState;
use crate::storage::open_inside;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewJob {
    kind: String,
    /// Simulation: `icarus` (default) or `verilator`.
    tool: Option<String>,
    /// Simulation: the testbench's top module.
    top: Option<String>,
    /// Simulation: the files to compile, in order (default: every `.v` and `.sv` file).
    files: Option<Vec<String>>,
    /// Build: the LibreLane config file in the project.
    config: Option<String>,
    /// Where to POST the job's end (default: `webhooks.default_url`).
    notify_url: Option<String>,
}

pub async fn create(
    State(state): State<AppState>,
    caller: Caller,
    Path(project): Path<String>,
    Json(body): Json<NewJob>,
) -> Result<(StatusCode, Json<RunBody>), ApiError> {
    let project = find_project(&state, &caller, &project).await?.id;
    let notify_url = notify_url(&state, body.notify_url.clone())?;
    let (params, needs) = match body.kind.as_str() {
        "simulation" => simulation(&state, project, body).await?,
        "build" => build(&state, project, body)?,
        other => {
            return Err(ApiError::BadRequest(format!(
                "kind: {other:?} is not a kind of job: use simulation or build"
            )));
        }
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
                idempotency_key: None,
                created: OffsetDateTime::now_utc(),
            },
        )
        .await?;
    let run = created.map_err(|e| match e {
        CreateJobError::NoProject => ApiError::NotFound(format!("no such project: {project}")),
        CreateJobError::MissingFile(path) => missing_file(project, &path),
    })?;
    state.queue.created(&run);
    tracing::info!(run_id = %run.id, project_id = %project, %kind, "job queued");
    Ok((StatusCode::CREATED, Json(RunBody::from(&run))))
}

fn not_for(field: &str, kind: &str) -> ApiError {
    ApiError::BadRequest(format!(
        "{field}: not a field of a {kind} job (see the jobs section of README.md)"
    ))
}

/// A simulation's parameters, and the files it needs.
async fn simulation(
    state: &AppState,
    project: Uuid,
    body: NewJob,
) -> Result<(RunParams, Vec<String>), ApiError> {
    let bad = ApiError::BadRequest;
    if body.config.is_some() {
        return Err(not_for("config", "simulation"));
    }
    let tool = match body.tool.as_deref() {
        None => SimulationTool::Icarus,
        Some(t) => SimulationTool::parse(t).ok_or_else(|| {
            bad(format!(
                "tool: {t:?} is not a simulator: use one of {}",
                SimulationTool::ALL.map(SimulationTool::as_str).join(", ")
            ))
        })?,
    };
    let top = check_module(body.top)?;
    let files = state.db.project_files(project).await?;
    let have: Vec<&String> = files.iter().map(|f| &f.path).collect();
    let sources = match body.files {
        Some(listed) => {
            if listed.is_empty() {
                return Err(bad(
                    "files: empty: list the files to compile, or leave files out to compile every .v and .sv file".into(),
                ));
            }
            for (i, f) in listed.iter().enumerate() {
                check_project_path(f).map_err(|e| bad(format!("files: {e}")))?;
                if !have.contains(&f) {
                    return Err(missing_file(project, f));
                }
                if listed[..i].contains(f) {
                    return Err(bad(format!("files: {f:?} is listed twice")));
                }
            }
            listed
        }
        None => {
            let hdl: Vec<String> = have
                .into_iter()
                .filter(|p| p.ends_with(".v") || p.ends_with(".sv"))
                .cloned()
                .collect();
            if hdl.is_empty() {
                return Err(bad(format!(
                    "project {project} has no .v or .sv files to simulate: PUT the sources first"
                )));
            }
            hdl
        }
    };
    check_top_is_defined(state, &files, &sources, &top).await?;
    let params = SimulationParams {
        project_id: project,
        tool,
        top,
        sources: sources.clone(),
    };
    Ok((RunParams::Simulation(params), sources))
}

/// A build's parameters, and the file it needs.
fn build(
    state: &AppState,
    project: Uuid,
    body: NewJob,
) -> Result<(RunParams, Vec<String>), ApiError> {
    let bad = ApiError::BadRequest;
    for (field, given) in [
        ("tool", body.tool.is_some()),
        ("top", body.top.is_some()),
        ("files", body.files.is_some()),
    ] {
        if given {
            return Err(not_for(field, "build"));
        }
    }
    let config = body.config.ok_or_else(|| {
        bad("config: missing: name the project's LibreLane config, e.g. \"config\": \"config.json\"".into())
    })?;
    check_project_path(&config).map_err(|e| bad(format!("config: {e}")))?;
    if ![".json", ".yaml", ".yml"]
        .iter()
        .any(|e| config.ends_with(e))
    {
        return Err(bad(format!(
            "config: {config:?} is not a LibreLane config: give a .json, .yaml or .yml file"
        )));
    }
    if state.config.builds.pdk.is_none() {
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

fn missing_file(project: Uuid, path: &str) -> ApiError {
    ApiError::BadRequest(format!(
        "project {project} has no file {path:?}: PUT it first (GET .../files lists what it has)"
    ))
}

/// A top module is passed to the simulator as one argument: a plain Verilog identifier.
fn check_module(top: Option<String>) -> Result<String, ApiError> {
    let top = top.ok_or_else(|| {
        ApiError::BadRequest("top: missing: name the testbench's top module".into())
    })?;
    let mut chars = top.chars();
    let ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '$'))
        && top.len() <= 1024;
    if !ok {
        return Err(ApiError::BadRequest(format!(
            "top: {top:?} is not a Verilog module name (a letter or '_', then letters, digits, '_' or '$')"
        )));
    }
    Ok(top)
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
    let found = tokio::task::spawn_blocking(move || {
        blobs.iter().any(|path| {
            std::fs::File::open(path)
                .and_then(|f| declares_module(std::io::BufReader::new(f), &wanted))
                .unwrap_or(false)
        })
    })
    .await
    .map_err(|e| ApiError::Internal(e.into()))?;
    if found {
        return Ok(());
    }
    Err(ApiError::BadRequest(format!(
        "top: no module {top:?} in {}: name the testbench's top module",
        if sources.len() == 1 {
            sources[0].clone()
        } else {
            format!("the {} files compiled", sources.len())
        }
    )))
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

pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
    Path(project): Path<String>,
    RawQuery(query): RawQuery,
) -> Result<Json<Vec<RunBody>>, ApiError> {
    let project = find_project(&state, &caller, &project).await?;
    let mut filter = RunFilter {
        scope: caller.scope,
        project_id: Some(project.id),
        kinds: vec![],
        statuses: vec![],
    };
    for (key, value) in query_pairs(query.as_deref())? {
        match key.as_str() {
            "status" => filter.statuses.push(
                value
                    .parse::<RunStatus>()
                    .map_err(|e| ApiError::BadRequest(format!("status: {e}")))?,
            ),
            "kind" => match value.parse::<RunKind>() {
                Ok(kind) if kind != RunKind::Precheck => filter.kinds.push(kind),
                _ => {
                    return Err(ApiError::BadRequest(format!(
                        "kind: {value:?} is not a kind of job: use simulation or build"
                    )));
                }
            },
            other => {
                return Err(ApiError::BadRequest(format!(
                    "unknown query parameter {other:?}: use status or kind"
                )));
            }
        }
    }
    let runs = state.db.runs_where(filter).await?;
    Ok(Json(runs.iter().map(RunBody::from).collect()))
}

pub async fn inspect(
    State(state): State<AppState>,
    caller: Caller,
    Path((project, job)): Path<(String, String)>,
) -> Result<Json<RunBody>, ApiError> {
    let run = find(&state, &caller, &project, &job).await?;
    Ok(Json(RunBody::from(&run)))
}

pub async fn cancel(
    State(state): State<AppState>,
    caller: Caller,
    Path((project, job)): Path<(String, String)>,
) -> Result<Json<RunBody>, ApiError> {
    let run = find(&state, &caller, &project, &job).await?;
    cancel_run(&state, &run).await
}

pub async fn wait(
    State(state): State<AppState>,
    caller: Caller,
    Path((project, job)): Path<(String, String)>,
    RawQuery(query): RawQuery,
) -> Result<Json<WaitBody>, ApiError> {
    let run = find(&state, &caller, &project, &job).await?;
    wait_for(&state, &run, query).await
}

pub async fn logs(
    State(state): State<AppState>,
    caller: Caller,
    Path((project, job)): Path<(String, String)>,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let run = find(&state, &caller, &project, &job).await?;
    logs_of(state, run, query).await
}

/// `GET .../artifacts`: every artefact of a finished job as a `.tar.gz` stream.
pub async fn artifacts(
    State(state): State<AppState>,
    caller: Caller,
    Path((project, job)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let run = finished(&state, &caller, &project, &job).await?;
    let dir = state.storage.run_dir(run.id).join(ARTIFACTS);
    tar_gz_response(dir, format!("{}-{}", run.kind(), run.id)).await
}

/// `GET .../artifacts/{path}`: one artefact, e.g. `final/gds/chip_top.gds` or `tb.vcd`.
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
        return Err(ApiError::NotFound(format!(
            "{} {} has no artefact {path:?}: GET .../artifacts has them all",
            noun(run.kind()),
            run.id
        )));
    };
    let filename: String = path
        .rsplit('/')
        .next()
        .unwrap_or("artifact")
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
        .collect();
    Ok((
        [
            (header::CONTENT_TYPE, "application/octet-stream".to_string()),
            (header::CONTENT_LENGTH, len.to_string()),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"{filename}\""),
            ),
        ],
        Body::from_stream(tokio_util::io::ReaderStream::new(
            tokio::fs::File::from_std(file),
        )),
    )
        .into_response())
}

/// A job whose artefacts are complete: it has finished.
async fn finished(
    state: &AppState,
    caller: &Caller,
    project: &str,
    job: &str,
) -> Result<Run, ApiError> {
    let run = find(state, caller, project, job).await?;
    if !run.status.is_terminal() {
        return Err(ApiError::Conflict(format!(
            "{} {} is {}: its artefacts exist once it has finished (POST .../wait)",
            noun(run.kind()),
            run.id,
            run.status
        )));
    }
    Ok(run)
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
    match state.db.run(id).await? {
        Some(run)
            if run.params.project_id() == Some(project.id)
                && caller.scope.sees(run.owner.as_deref()) =>
        {
            Ok(run)
        }
        _ => Err(ApiError::NotFound(format!(
            "project {} has no job {id}",
            project.id
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

    #[test]
    fn top_modules_are_identifiers() {
        for good in ["tb", "_tb", "tb_counter$1"] {
            assert!(check_module(Some(good.into())).is_ok(), "{good}");
        }
        for bad in ["", "-tb", "1tb", "tb top", "tb;rm", "a/b", "t\u{0}"] {
            assert!(check_module(Some(bad.into())).is_err(), "{bad:?}");
        }
        assert!(check_module(None).is_err());
    }
}
