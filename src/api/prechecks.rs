//! `/api/v1/prechecks`: create, list, inspect, wait, cancel, logs, the checked layout and the
//! debug tarball.

use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use futures_util::StreamExt;
use serde::Deserialize;
use time::OffsetDateTime;
use utoipa::openapi::schema::Object;
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use super::error::{ApiError, Message};
use super::extract::{Caller, Json, Path, parse_id};
use super::logs::{LogParams, LogsBody, logs_of};
use super::openapi::{Binary, nullable_string_enum};
use super::page::{Limit, Page, before};
use super::query;
use super::respond::{attachment, tar_gz_response};
use super::runs::{RunBody, WaitBody, WaitParams, cancel_run, notify_url, wait_for};
use super::state::AppState;
use super::uploads::{record, upload_error};
use crate::db::{CreateRunError, Created, DeleteUpload, Idempotency, KeyUse, NewRun, RunFilter};
use crate::layout::{EXPECTED_DBU_MICRONS, Layout};
use crate::model::{
    DieId, PrecheckParams, PrecheckSource, Run, RunKind, RunStatus, SLOTS, Scope, Slot, TopCell,
    Upload, die_refusal,
};
use crate::runner::final_gds;
use crate::storage::{OUTPUT_LAYOUT, open_inside, open_regular};

/// A precheck to run: of an upload, or of the final layout of a completed build job (give one of
/// `upload_id` and `job_id`).
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreatePrecheck {
    /// The upload to check: the `Id` that `POST /api/v1/uploads` returned.
    #[schema(format = Uuid)]
    upload_id: Option<String>,
    /// Or a completed build job, whose final layout becomes an upload (inspected like any).
    #[schema(format = Uuid)]
    job_id: Option<String>,
    /// The cell to check; by default the layout's only top cell. Never starts with `-`, and has
    /// no `/`, whitespace or control characters.
    #[schema(min_length = 1, max_length = 1024)]
    top_cell: Option<String>,
    /// Exactly 8 letters or digits.
    #[schema(pattern = "^[A-Za-z0-9]{8}$", default = "FFFFFFFF")]
    die_id: Option<String>,
    /// The slot size.
    #[schema(schema_with = slot_schema)]
    slot: Option<String>,
    #[schema(default = false)]
    cob: Option<bool>,
    /// Skip the layout rules (top cell, database unit); never the format check.
    #[schema(default = false)]
    force: Option<bool>,
    /// Where to POST the run's end (default: `webhooks.default_url`).
    #[schema(format = "uri")]
    notify_url: Option<String>,
}

fn slot_schema() -> Object {
    let mut slot = nullable_string_enum(SLOTS);
    slot.default = Some(Slot::default().as_str().into());
    slot
}

/// Create a precheck
///
/// Checks the fields and the layout (top cell, database unit) before the run takes a queue slot.
#[utoipa::path(
    post,
    path = "/api/v1/prechecks",
    operation_id = "precheck_create",
    tag = "prechecks",
    params(
        ("Idempotency-Key" = Option<String>, Header, nullable = false, min_length = 1, max_length = 255, pattern = "^[!-~]{1,255}$",
            description = "A client's name for this create (1 to 255 printable ASCII characters without spaces, e.g. a UUID): sending it again with the same request returns the run it made (200) instead of making another; with a different request it is refused (422)."),
    ),
    request_body(content = CreatePrecheck, content_type = "application/json"),
    responses(
        (status = 201, description = "Queued.", body = RunBody),
        (status = 200, description = "The run this `Idempotency-Key` made before.", body = RunBody),
        (status = 400, description = "A bad field (named), a bad `Idempotency-Key`, or a layout that cannot pass.", body = Message),
        (status = 404, description = "No such upload or build job (or another key's).", body = Message),
        (status = 409, description = "The build job has not completed, or has no single final layout.", body = Message),
        (status = 410, description = "The upload has expired.", body = Message),
        (status = 422, description = "The `Idempotency-Key` was used for a different request.", body = Message),
        (status = 507, description = "The server's disk is full (storing a build's layout).", body = Message),
    )
)]
pub async fn create(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    Json(body): Json<CreatePrecheck>,
) -> Result<(StatusCode, Json<RunBody>), ApiError> {
    let idempotency = idempotency_key(&headers)?.map(|key| Idempotency {
        key,
        request: body.canonical(),
    });
    if let Some(key) = &idempotency {
        match state
            .db
            .idempotency_key_use(caller.name.clone(), key.clone())
            .await?
        {
            Some(KeyUse::Same(run)) => return Ok((StatusCode::OK, Json(RunBody::from(&*run)))),
            Some(KeyUse::Different) => return Err(key_reused(&key.key)),
            None => {}
        }
    }
    let notify_url = notify_url(&state.config.webhooks, body.notify_url)?;
    // Checked first: a build's layout becomes an upload only for a request that can succeed.
    let die_id = parse_or(body.die_id.as_deref(), DieId::default)?;
    let slot = parse_or(body.slot.as_deref(), Slot::default)?;
    let source = PrecheckSource::parse(body.upload_id.as_deref(), body.job_id.as_deref())
        .map_err(ApiError::BadRequest)?;
    let (upload_id, of_build) = match source {
        PrecheckSource::Upload(id) => (id, false),
        PrecheckSource::Build(job) => (upload_build(&state, &caller, job).await?, true),
    };
    // The layout's facts decide the top cell; a key never learns of another key's upload.
    let upload = visible_upload(state.db.upload(upload_id).await?, &caller.scope, upload_id)?;
    let force = body.force.unwrap_or(false);
    let cob = body.cob.unwrap_or(false);
    let checked =
        choose_top_cell(body.top_cell, upload.layout.as_ref(), force).and_then(|top| match upload
            .layout
            .as_ref()
            .filter(|_| !force)
        {
            Some(layout) => match die_refusal(layout, top.as_str(), slot, cob) {
                Some(refusal) => Err(ApiError::BadRequest(refusal)),
                None => Ok(top),
            },
            None => Ok(top),
        });
    let top_cell = match checked {
        Ok(top) => top,
        Err(refusal) => {
            // A build's layout was made an upload for this request only: it goes with it.
            if of_build {
                forget_upload(&state, upload_id).await;
            }
            return Err(refusal);
        }
    };
    let params = PrecheckParams {
        upload_id,
        top_cell: top_cell.into_string(),
        die_id: die_id.into_string(),
        slot: slot.as_str().into(),
        cob,
    };
    let key = idempotency.as_ref().map(|i| i.key.clone());
    let id = Uuid::new_v4();
    let created = state
        .db
        .create_run(
            id,
            params,
            caller.scope,
            NewRun {
                image: state.config.image.clone(),
                owner: caller.name,
                notify_url,
                idempotency,
                created: OffsetDateTime::now_utc(),
            },
        )
        .await?;
    let run = created
        .map_err(|e| create_refusal(e, upload_id, state.config.upload_expiry, key.as_deref()))?;
    let Created { run, new } = run;
    if !new {
        return Ok((StatusCode::OK, Json(RunBody::from(&run))));
    }
    state.queue.created(&run);
    tracing::info!(run_id = %run.id, %upload_id, "precheck queued");
    Ok((StatusCode::CREATED, Json(RunBody::from(&run))))
}

/// A field's value read by its domain type (whose error names the field), or its default.
fn parse_or<T: std::str::FromStr<Err = String>>(
    given: Option<&str>,
    default: impl FnOnce() -> T,
) -> Result<T, ApiError> {
    given.map_or_else(
        || Ok(default()),
        |s| s.parse().map_err(ApiError::BadRequest),
    )
}

/// The upload a precheck checks, as the database has it (if at all): a key never learns of
/// another key's.
fn visible_upload(
    upload: Option<Upload>,
    scope: &Scope,
    upload_id: Uuid,
) -> Result<Upload, ApiError> {
    upload
        .filter(|u| scope.sees(u.owner.as_deref()))
        .ok_or_else(|| ApiError::NotFound(format!("no such upload: {upload_id}")))
}

/// The refusal of a create the database turned down: the upload went meanwhile, expired (they
/// are kept `upload_expiry` until a precheck uses them), or the `Idempotency-Key` (`key`) was
/// used meanwhile for another request.
fn create_refusal(
    e: CreateRunError,
    upload_id: Uuid,
    upload_expiry: std::time::Duration,
    key: Option<&str>,
) -> ApiError {
    match e {
        CreateRunError::UnknownUpload => ApiError::NotFound(format!("no such upload: {upload_id}")),
        CreateRunError::UploadExpired => ApiError::Gone(format!(
            "upload {upload_id} has expired (uploads are kept {} minutes until a precheck uses them): upload the layout again",
            upload_expiry.as_secs() / 60
        )),
        CreateRunError::KeyReused => key_reused(key.unwrap_or_default()),
    }
}

/// The refusal of an `Idempotency-Key` sent again with another request.
fn key_reused(key: &str) -> ApiError {
    ApiError::Unprocessable(format!(
        "Idempotency-Key {key:?} was used for a different request: send the same request to get the run it made, or use a new key for this one"
    ))
}

impl CreatePrecheck {
    /// The request as the server reads it, defaults filled in: two bodies that ask the same give
    /// the same text, whatever their spacing, order of fields or spelling of an id.
    fn canonical(&self) -> String {
        let id = |given: &Option<String>| {
            given.as_ref().map(|g| match Uuid::parse_str(g) {
                Ok(id) => id.to_string(),
                Err(_) => g.clone(),
            })
        };
        serde_json::json!({
            "upload_id": id(&self.upload_id),
            "job_id": id(&self.job_id),
            "top_cell": self.top_cell,
            "die_id": self.die_id.as_deref().unwrap_or(DieId::DEFAULT),
            "slot": self.slot.as_deref().unwrap_or(Slot::default().as_str()),
            "cob": self.cob.unwrap_or(false),
            "force": self.force.unwrap_or(false),
            "notify_url": self.notify_url,
        })
        .to_string()
    }
}

/// The `Idempotency-Key` header: a client's name for one create, so that sending the request
/// again (after a network error, say) returns the run it made instead of making another.
fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(value) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    match value.to_str() {
        Ok(key) if (1..=255).contains(&key.len()) && key.chars().all(|c| c.is_ascii_graphic()) => {
            Ok(Some(key.to_string()))
        }
        _ => Err(ApiError::BadRequest(
            "Idempotency-Key: must be 1 to 255 printable ASCII characters without spaces, e.g. a UUID"
                .into(),
        )),
    }
}

/// Makes the final layout of a completed build job an upload (inspected like any), for a
/// precheck of it.
async fn upload_build(state: &AppState, caller: &Caller, id: Uuid) -> Result<Uuid, ApiError> {
    completed_build(state.db.run(id).await?, &caller.scope, id)?;
    let path = final_layout(&state.storage.run_dir(id), id).await?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "design.gds".into());
    let opened = tokio::task::spawn_blocking(move || open_regular(&path))
        .await
        .map_err(|e| ApiError::Internal(e.into()))?
        .map_err(|e| anyhow::Error::from(e).context("cannot read the build's layout"))?;
    let Some((file, _)) = opened else {
        return Err(no_final_layout(id));
    };
    let file = tokio::fs::File::from_std(file);
    let upload_id = Uuid::new_v4();
    let mut writer = state
        .storage
        .upload_writer(upload_id, state.config.inflation);
    let mut chunks = tokio_util::io::ReaderStream::with_capacity(file, 256 * 1024);
    while let Some(chunk) = chunks.next().await {
        let chunk = chunk.map_err(anyhow::Error::from)?;
        writer
            .write(chunk)
            .await
            .map_err(|e| upload_error(&name, e))?;
    }
    let saved = writer.finish().await.map_err(|e| upload_error(&name, e))?;
    let upload = record(state, upload_id, name, saved, caller.name.clone()).await?;
    tracing::info!(run_id = %id, upload_id = %upload.id, "a build's layout became an upload");
    Ok(upload.id)
}

/// The build job `id` (as the database has it, if at all) whose final layout a precheck checks:
/// one the caller may see, and completed.
fn completed_build(run: Option<Run>, scope: &Scope, id: Uuid) -> Result<Run, ApiError> {
    let run = match run {
        Some(run) if run.kind() == RunKind::Build && scope.sees(run.owner.as_deref()) => run,
        _ => return Err(ApiError::NotFound(format!("no such build job: {id}"))),
    };
    if run.status != RunStatus::Completed {
        return Err(ApiError::Conflict(format!(
            "build job {id} is {}: only a completed build has a final layout to check",
            run.status
        )));
    }
    Ok(run)
}

/// The final layout of the completed build job `id`, whose folder is `run_dir`: the one layout in
/// its `final/gds/` ([`final_gds`]).
async fn final_layout(run_dir: &std::path::Path, id: Uuid) -> Result<std::path::PathBuf, ApiError> {
    final_gds(run_dir).await.ok_or_else(|| no_final_layout(id))
}

fn no_final_layout(id: Uuid) -> ApiError {
    ApiError::Conflict(format!(
        "build job {id} has no single layout in final/gds/: see its artefacts"
    ))
}

/// Removes an upload no run uses (best effort: one left behind expires).
async fn forget_upload(state: &AppState, id: Uuid) {
    match state.db.delete_upload(id).await {
        Ok(DeleteUpload::Deleted) => {
            if let Err(e) = state.storage.remove_upload(id).await {
                tracing::warn!(upload_id = %id, "cannot remove a refused build's layout: {e}");
            }
        }
        Ok(_) => {}
        Err(e) => tracing::warn!(upload_id = %id, "cannot forget a refused build's layout: {e:#}"),
    }
}

/// The top cell to check: the one given, or the layout's only one. Unless `force`, it must be a
/// top cell of the layout, and the layout's database unit must be the precheck's.
fn choose_top_cell(
    given: Option<String>,
    layout: Option<&Layout>,
    force: bool,
) -> Result<TopCell, ApiError> {
    let bad = |m: String| ApiError::BadRequest(m);
    // The layout's own name is checked too: it reaches the container as an argument all the same.
    let check = |name: &str| name.parse::<TopCell>().map_err(ApiError::BadRequest);
    let top = match (given, layout) {
        (Some(top), _) => check(&top)?,
        (None, Some(layout)) => match layout.top_cells.as_slice() {
            [only] => check(only)?,
            [] => {
                return Err(bad(
                    "top_cell: missing, and the layout has no top cell (every cell is placed by another): name the cell to check".into(),
                ));
            }
            tops => {
                return Err(bad(format!(
                    "top_cell: missing, and the layout has {} top cells ({}): say which one to check",
                    tops.len(),
                    name_list(tops)
                )));
            }
        },
        (None, None) => return Err(bad("top_cell: missing: name the layout's top cell".into())),
    };
    let Some(layout) = layout else {
        return Ok(top);
    };
    if force {
        return Ok(top);
    }
    let skip = "(or send \"force\": true to skip the layout checks)";
    let name = top.as_str();
    if !layout.top_cells.iter().any(|t| t == name) {
        let why = if layout.cells.iter().any(|c| c == name) {
            "is placed by another cell, so it is not a top cell"
        } else {
            "is not a cell of the layout"
        };
        return Err(bad(format!(
            "top_cell: {name:?} {why}; the layout's top cells are: {} {skip}",
            name_list(&layout.top_cells)
        )));
    }
    if !layout.dbu_is(EXPECTED_DBU_MICRONS) {
        return Err(bad(format!(
            "the layout's database unit is {} µm, but the gf180mcu precheck needs {EXPECTED_DBU_MICRONS} µm (1 nm): export it again with a 1 nm database unit {skip}",
            layout.dbu_microns
        )));
    }
    Ok(top)
}

/// Cell names for a message: quoted, at most ten, then how many more.
fn name_list(names: &[String]) -> String {
    if names.is_empty() {
        return "none".into();
    }
    let shown: Vec<String> = names.iter().take(10).map(|n| format!("{n:?}")).collect();
    match names.len() {
        n if n > 10 => format!("{} and {} more", shown.join(", "), n - 10),
        _ => shown.join(", "),
    }
}

/// The query of `GET /api/v1/prechecks`.
#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct ListParams {
    /// Only runs with one of these statuses (repeatable).
    #[param(explode)]
    status: Option<Vec<RunStatus>>,
    /// At most this many runs (default 100).
    #[param(value_type = Option<usize>, minimum = 1, maximum = 1000)]
    limit: Option<Limit>,
    /// Only runs created before this one: the `X-Next-Before` of the previous page.
    #[param(value_type = Option<Uuid>)]
    #[serde(default, deserialize_with = "before_precheck")]
    before: Option<Uuid>,
}

fn before_precheck<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Uuid>, D::Error> {
    before(d, "precheck")
}

/// List prechecks
///
/// Newest first, a page at a time: `limit` runs (default 100), and the runs older than
/// `before`. The answer is a JSON array; when older runs follow, `X-Next-Before` holds the
/// `before` of the next page.
#[utoipa::path(
    get,
    path = "/api/v1/prechecks",
    operation_id = "precheck_list",
    tag = "prechecks",
    params(ListParams),
    responses(
        (status = 200, description = "A page of the prechecks the key may see, newest first.", body = Vec<RunBody>,
            headers(("X-Next-Before" = Uuid, description = "Present when older prechecks follow: the `before` of the next page."))),
        (status = 400, description = "An unknown status, a bad `limit` or `before`, or an unknown query parameter.", body = Message),
    )
)]
pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let params: ListParams = query::parse(query.as_deref())?;
    let page = Page::new(params.limit, params.before);
    page.check_before(&state.db, &caller.scope, "precheck", |run| {
        run.kind() == RunKind::Precheck
    })
    .await?;
    let runs = state
        .db
        .runs_where(RunFilter {
            statuses: params.status.unwrap_or_default(),
            scope: caller.scope,
            kinds: vec![RunKind::Precheck],
            project_id: None,
            before: page.before,
            limit: Some(page.fetch()),
        })
        .await?;
    Ok(page.respond(runs))
}

/// Inspect a precheck
#[utoipa::path(
    get,
    path = "/api/v1/prechecks/{id}",
    operation_id = "precheck_inspect",
    tag = "prechecks",
    params(("id" = Uuid, Path, description = "The precheck's id.")),
    responses(
        (status = 200, description = "The run.", body = RunBody),
        (status = 404, description = "No such precheck (or another key's).", body = Message),
    )
)]
pub async fn inspect(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<RunBody>, ApiError> {
    let run = find(&state, &caller, &id).await?;
    Ok(Json(RunBody::from(&run)))
}

/// Wait for a precheck
///
/// Blocks until the run ends, and answers the moment it does.
#[utoipa::path(
    post,
    path = "/api/v1/prechecks/{id}/wait",
    operation_id = "precheck_wait",
    tag = "prechecks",
    params(
        ("id" = Uuid, Path, description = "The precheck's id."),
        WaitParams,
    ),
    responses(
        (status = 200, description = "The run has ended.", body = WaitBody),
        (status = 400, description = "A bad `timeout` or an unknown query parameter.", body = Message),
        (status = 404, description = "No such precheck (or another key's).", body = Message),
        (status = 408, description = "Still queued or running after `timeout`: call again.", body = Message),
        (status = 503, description = "The server is shutting down; the run goes on: call again once it is back.", body = Message),
    )
)]
pub async fn wait(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    RawQuery(query): RawQuery,
) -> Result<Json<WaitBody>, ApiError> {
    let run = find(&state, &caller, &id).await?;
    wait_for(&state, &run, query).await
}

/// Cancel a precheck
///
/// A queued run never starts; a running container is stopped within 10 s.
#[utoipa::path(
    delete,
    path = "/api/v1/prechecks/{id}",
    operation_id = "precheck_cancel",
    tag = "prechecks",
    params(("id" = Uuid, Path, description = "The precheck's id.")),
    responses(
        (status = 200, description = "Cancelled: the run, status `cancelled` (or how it ended, if it ended meanwhile).", body = RunBody),
        (status = 404, description = "No such precheck (or another key's).", body = Message),
        (status = 409, description = "It has already finished.", body = Message),
    )
)]
pub async fn cancel(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<RunBody>, ApiError> {
    let run = find(&state, &caller, &id).await?;
    cancel_run(&state, &run).await
}

/// A precheck's logs
///
/// Served from the run's log file, so they outlive the container. Without `follow`, one JSON
/// document; with `follow=true`, plain text lines, then new ones as the container prints them,
/// until the run ends.
#[utoipa::path(
    get,
    path = "/api/v1/prechecks/{id}/logs",
    operation_id = "precheck_logs",
    tag = "prechecks",
    params(
        ("id" = Uuid, Path, description = "The precheck's id."),
        LogParams,
    ),
    responses(
        (status = 200, description = "The log: JSON, or with `follow=true` text lines streamed until the run ends.", content(
            (LogsBody = "application/json"),
            (String = "text/plain; charset=utf-8"),
        )),
        (status = 400, description = "A bad parameter.", body = Message),
        (status = 404, description = "No such precheck (or another key's).", body = Message),
    )
)]
pub async fn logs(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let run = find(&state, &caller, &id).await?;
    logs_of(state, run, query).await
}
/// The checked layout
///
/// The layout a completed precheck wrote, named after the upload (`chip_top.checked.gds`).
#[utoipa::path(
    get,
    path = "/api/v1/prechecks/{id}/output",
    operation_id = "precheck_output",
    tag = "prechecks",
    params(("id" = Uuid, Path, description = "The precheck's id.")),
    responses(
        (status = 200, description = "The layout, streamed.", body = Binary, content_type = "application/octet-stream",
            headers(
                ("Content-Disposition" = String, description = "`attachment; filename=\"<name>.checked.gds\"`"),
                ("Content-Length" = u64, description = "Bytes."),
            )),
        (status = 404, description = "No such precheck (or another key's), or its output file is gone.", body = Message),
        (status = 409, description = "The precheck has not completed.", body = Message),
    )
)]
pub async fn output(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let run = find(&state, &caller, &id).await?;
    output_ready(&run)?;
    // Opened without following a link: only the regular file the run copied out is served.
    let run_dir = state.storage.run_dir(run.id);
    let opened = tokio::task::spawn_blocking(move || open_inside(&run_dir, OUTPUT_LAYOUT))
        .await
        .map_err(|e| ApiError::Internal(e.into()))?
        .map_err(|e| {
            anyhow::Error::from(e).context(format!("cannot open the output of {}", run.id))
        })?;
    let Some((file, len)) = opened else {
        return Err(no_output(run.id));
    };
    let upload = match run.precheck() {
        Some(p) => state.db.upload(p.upload_id).await?,
        None => None,
    };
    let filename = output_name(upload.as_ref().map(|u| u.name.as_str()));
    Ok(attachment(file, len, &filename))
}

/// The debug tarball
///
/// The run's folder (`logs.txt`, `output/`, the flow's `work/` folder) as a `.tar.gz` stream.
#[utoipa::path(
    get,
    path = "/api/v1/debug/prechecks/{id}",
    operation_id = "precheck_debug",
    tag = "prechecks",
    params(("id" = Uuid, Path, description = "The precheck's id.")),
    responses(
        (status = 200, description = "The tarball, streamed.", body = Binary, content_type = "application/gzip",
            headers(("Content-Disposition" = String, description = "`attachment; filename=\"precheck-<id>.tar.gz\"`"))),
        (status = 404, description = "No such precheck (or another key's).", body = Message),
        (status = 409, description = "Still queued: it has no files yet.", body = Message),
    )
)]
pub async fn debug(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let run = find(&state, &caller, &id).await?;
    has_files(&run)?;
    let dir = state.storage.run_dir(run.id);
    tar_gz_response(dir, format!("precheck-{}", run.id)).await
}

/// A run the caller may see: others' are "no such precheck", like unknown ones.
async fn find(state: &AppState, caller: &Caller, id: &str) -> Result<Run, ApiError> {
    let id = parse_id(id, "precheck")?;
    visible_precheck(state.db.run(id).await?, &caller.scope, id)
}

/// The precheck `id` as the database has it (if at all), if the caller may see it: another
/// key's, or a job, is "no such precheck" like an unknown one.
fn visible_precheck(run: Option<Run>, scope: &Scope, id: Uuid) -> Result<Run, ApiError> {
    match run {
        Some(run) if scope.sees(run.owner.as_deref()) && run.kind() == RunKind::Precheck => Ok(run),
        _ => Err(not_found(id)),
    }
}

/// Refuses the checked layout of a precheck that has not completed.
fn output_ready(run: &Run) -> Result<(), ApiError> {
    if run.status != RunStatus::Completed {
        return Err(ApiError::Conflict(format!(
            "precheck {} is {}: the checked layout exists only for completed prechecks (see /logs or the debug tarball)",
            run.id, run.status
        )));
    }
    Ok(())
}

/// The refusal of a completed precheck's checked layout that is not in its folder (any more).
fn no_output(id: Uuid) -> ApiError {
    ApiError::NotFound(format!(
        "precheck {id} has no output file (it was removed from the storage folder): see /logs or the debug tarball"
    ))
}

/// Refuses the debug tarball of a precheck that has no files yet: it is still queued.
fn has_files(run: &Run) -> Result<(), ApiError> {
    if run.status == RunStatus::Queued {
        return Err(ApiError::Conflict(format!(
            "precheck {} is still queued: it has no files yet",
            run.id
        )));
    }
    Ok(())
}

fn not_found(id: Uuid) -> ApiError {
    ApiError::NotFound(format!("no such precheck: {id}"))
}

/// `chip_top.gds` -> `chip_top.checked.gds`; only characters safe in a header survive.
fn output_name(upload_name: Option<&str>) -> String {
    let name = upload_name.unwrap_or("design.gds");
    let stem = name.strip_suffix(".gz").unwrap_or(name);
    let stem = stem.rsplit_once('.').map_or(stem, |(s, _)| s);
    let safe: String = stem
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
        .take(100)
        .collect();
    let safe = safe.trim_start_matches('.');
    if safe.is_empty() {
        "design.checked.gds".into()
    } else {
        format!("{safe}.checked.gds")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_idempotency_key_is_1_to_255_printable_ascii_characters() {
        let key = |value: &[u8]| {
            let mut headers = HeaderMap::new();
            headers.insert(
                "idempotency-key",
                axum::http::HeaderValue::from_bytes(value).unwrap(),
            );
            idempotency_key(&headers)
        };
        assert_eq!(idempotency_key(&HeaderMap::new()).unwrap(), None);
        let uuid = "8c6c6b0e-3f4e-4f0a-9d3a-2b1f0f4f9c1e";
        assert_eq!(key(uuid.as_bytes()).unwrap().as_deref(), Some(uuid));
        assert!(key(&[b'k'; 255]).unwrap().is_some());
        for bad in [
            &b""[..],
            &[b'k'; 256],
            b"two words",
            b"tab\there",
            "caf\u{e9}".as_bytes(),
        ] {
            match key(bad) {
                Err(ApiError::BadRequest(message)) => assert!(
                    message.starts_with("Idempotency-Key: must be 1 to 255 printable ASCII"),
                    "{message}"
                ),
                other => panic!(
                    "{:?} was taken: {:?}",
                    String::from_utf8_lossy(bad),
                    other.ok()
                ),
            }
        }
    }

    #[test]
    fn output_names_are_safe() {
        assert_eq!(output_name(Some("chip_top.gds")), "chip_top.checked.gds");
        assert_eq!(output_name(Some("chip_top.gds.gz")), "chip_top.checked.gds");
        assert_eq!(output_name(Some("a\"b;c.oas")), "abc.checked.gds");
        assert_eq!(output_name(Some("..")), "design.checked.gds");
        assert_eq!(output_name(None), "design.checked.gds");
    }

    fn layout(cells: &[&str], top_cells: &[&str], dbu_microns: f64) -> Layout {
        Layout {
            format: crate::layout::LayoutFormat::Gds,
            dbu_microns,
            cells: cells.iter().map(|c| c.to_string()).collect(),
            top_cells: top_cells.iter().map(|c| c.to_string()).collect(),
            die: None,
        }
    }

    #[test]
    fn the_top_cell_is_the_given_one_or_the_layouts_only_one() {
        let chip = layout(&["chip_top", "logo"], &["chip_top"], 0.001);
        let chosen = |given: Option<&str>, layout: Option<&Layout>, force| {
            choose_top_cell(given.map(String::from), layout, force).map(TopCell::into_string)
        };
        assert_eq!(chosen(None, Some(&chip), false).unwrap(), "chip_top");
        assert_eq!(
            chosen(Some("chip_top"), Some(&chip), false).unwrap(),
            "chip_top"
        );
        // Without layout facts (an old upload), or with `force`, only the name's own rules hold.
        assert_eq!(chosen(Some("other"), None, false).unwrap(), "other");
        assert_eq!(chosen(Some("logo"), Some(&chip), true).unwrap(), "logo");
        let nm = layout(&["chip_top"], &["chip_top"], 0.000_1);
        assert_eq!(
            chosen(Some("chip_top"), Some(&nm), true).unwrap(),
            "chip_top"
        );
    }

    /// Every refusal of the top cell against the upload's layout: (given, layout, fragment).
    #[test]
    fn top_cells_the_layout_does_not_hold_are_refused() {
        let chip = layout(&["chip_top", "logo"], &["chip_top"], 0.001);
        let two = layout(&["a", "b"], &["a", "b"], 0.001);
        let names: Vec<String> = (0..12).map(|n| format!("c{n}")).collect();
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        let twelve = layout(&names, &names, 0.001);
        let cycle = layout(&["a", "b"], &[], 0.001);
        let flag = layout(&["-rf"], &["-rf"], 0.001);
        let nm = layout(&["chip_top"], &["chip_top"], 0.000_1);
        let skip = "(or send \"force\": true to skip the layout checks)";
        let cases: [(Option<&str>, Option<&Layout>, bool, &str); 10] = [
            (
                None,
                None,
                false,
                "top_cell: missing: name the layout's top cell",
            ),
            (
                None,
                Some(&cycle),
                false,
                "top_cell: missing, and the layout has no top cell (every cell is placed by another): name the cell to check",
            ),
            (
                None,
                Some(&two),
                false,
                "top_cell: missing, and the layout has 2 top cells (\"a\", \"b\"): say which one to check",
            ),
            (
                None,
                Some(&twelve),
                true,
                "12 top cells (\"c0\", \"c1\", \"c2\", \"c3\", \"c4\", \"c5\", \"c6\", \"c7\", \"c8\", \"c9\" and 2 more)",
            ),
            (
                None,
                Some(&flag),
                true,
                "top_cell: \"-rf\" starts with '-': give the layout's top cell name",
            ),
            (
                Some("a b"),
                None,
                true,
                "top_cell: \"a b\" contains whitespace",
            ),
            (
                Some("chip_other"),
                Some(&chip),
                false,
                "top_cell: \"chip_other\" is not a cell of the layout; the layout's top cells are: \"chip_top\" (or send",
            ),
            (
                Some("logo"),
                Some(&chip),
                false,
                "top_cell: \"logo\" is placed by another cell, so it is not a top cell; the layout's top cells are: \"chip_top\"",
            ),
            (
                Some("x"),
                Some(&cycle),
                false,
                "the layout's top cells are: none",
            ),
            (
                Some("chip_top"),
                Some(&nm),
                false,
                "the layout's database unit is 0.0001 µm, but the gf180mcu precheck needs 0.001 µm (1 nm): export it again with a 1 nm database unit",
            ),
        ];
        for (given, layout, force, fragment) in cases {
            let e = choose_top_cell(given.map(String::from), layout, force).unwrap_err();
            assert!(
                matches!(e, ApiError::BadRequest(_)),
                "{given:?}: not a 400: {e}"
            );
            let e = e.to_string();
            assert!(e.contains(fragment), "{given:?}: {e:?} lacks {fragment:?}");
            if given.is_some() && layout.is_some() && !force {
                assert!(e.ends_with(skip), "{given:?}: {e}");
            }
        }
    }

    #[test]
    fn missing_fields_take_their_defaults_and_bad_ones_name_the_field() {
        assert_eq!(
            parse_or::<DieId>(None, DieId::default).unwrap().as_str(),
            "FFFFFFFF"
        );
        assert_eq!(parse_or::<Slot>(None, Slot::default).unwrap(), Slot::Full);
        assert_eq!(
            parse_or::<Slot>(Some("0p5x0p5"), Slot::default).unwrap(),
            Slot::Quarter
        );
        let e = parse_or::<DieId>(Some("ABC"), DieId::default).unwrap_err();
        assert!(
            matches!(&e, ApiError::BadRequest(m) if m.starts_with("die_id: \"ABC\"")),
            "{e}"
        );
    }
}

/// The refusals that read what the database and the run's folder hold, without a server.
#[cfg(test)]
mod state_tests {
    use super::*;

    /// Every status but `completed`.
    const NOT_COMPLETED: [RunStatus; 4] = [
        RunStatus::Queued,
        RunStatus::Running,
        RunStatus::Failed,
        RunStatus::Cancelled,
    ];

    fn upload(owner: Option<&str>) -> Upload {
        Upload {
            id: Uuid::new_v4(),
            name: "chip_top.gds".into(),
            size: 1,
            sha256: "0".repeat(64),
            format: crate::layout::LayoutFormat::Gds,
            created: OffsetDateTime::now_utc(),
            expires_at: None,
            expired: false,
            owner: owner.map(String::from),
            layout: None,
        }
    }

    /// The status and message of a refusal.
    fn refusal<T: std::fmt::Debug>(result: Result<T, ApiError>) -> (u16, String) {
        let e = result.expect_err("taken");
        (e.status().as_u16(), e.to_string())
    }

    #[test]
    fn an_upload_is_found_only_by_a_key_that_may_see_it() {
        let ci = Scope::Owner("ci".into());
        let mine = upload(Some("ci"));
        let id = mine.id;
        assert_eq!(visible_upload(Some(mine), &ci, id).unwrap().id, id);
        assert!(visible_upload(Some(upload(Some("other"))), &Scope::All, id).is_ok());
        let gone = (404, format!("no such upload: {id}"));
        assert_eq!(refusal(visible_upload(None, &ci, id)), gone);
        assert_eq!(
            refusal(visible_upload(Some(upload(Some("other"))), &ci, id)),
            gone
        );
        assert_eq!(refusal(visible_upload(Some(upload(None)), &ci, id)), gone);
    }

    #[test]
    fn a_create_the_database_turns_down_says_why() {
        let id = Uuid::new_v4();
        let hour = std::time::Duration::from_secs(3600);
        let said = |e| {
            let e = create_refusal(e, id, hour, Some("k-1"));
            (e.status().as_u16(), e.to_string())
        };
        assert_eq!(
            said(CreateRunError::UnknownUpload),
            (404, format!("no such upload: {id}"))
        );
        assert_eq!(
            said(CreateRunError::UploadExpired),
            (
                410,
                format!(
                    "upload {id} has expired (uploads are kept 60 minutes until a precheck uses them): upload the layout again"
                )
            )
        );
        let reused = (
            422,
            "Idempotency-Key \"k-1\" was used for a different request: send the same request to get the run it made, or use a new key for this one".to_string(),
        );
        assert_eq!(said(CreateRunError::KeyReused), reused);
        let e = key_reused("k-1");
        assert_eq!((e.status().as_u16(), e.to_string()), reused);
    }

    #[test]
    fn only_a_completed_build_the_caller_sees_is_checked() {
        let ci = Scope::Owner("ci".into());
        let build = Run::build_of(Uuid::new_v4(), Some("ci"));
        let id = build.id;
        let done = build.clone().with_status(RunStatus::Completed);
        assert_eq!(completed_build(Some(done.clone()), &ci, id).unwrap().id, id);
        let unknown = (404, format!("no such build job: {id}"));
        for run in [
            None,
            Some(Run::precheck_of(Some("ci")).with_status(RunStatus::Completed)),
            Some(Run::simulation_of(Uuid::new_v4(), Some("ci")).with_status(RunStatus::Completed)),
            Some(Run::build_of(Uuid::new_v4(), Some("other")).with_status(RunStatus::Completed)),
        ] {
            assert_eq!(refusal(completed_build(run, &ci, id)), unknown);
        }
        for status in NOT_COMPLETED {
            assert_eq!(
                refusal(completed_build(
                    Some(build.clone().with_status(status)),
                    &ci,
                    id
                )),
                (
                    409,
                    format!(
                        "build job {id} is {status}: only a completed build has a final layout to check"
                    )
                )
            );
        }
    }

    /// A build's final layout is the one layout file in its `final/gds/`, reached through
    /// folders only: (the files made in the run's folder, whether there is one).
    #[tokio::test]
    async fn a_build_without_one_final_layout_is_refused() {
        let id = Uuid::new_v4();
        let none = (
            409,
            format!("build job {id} has no single layout in final/gds/: see its artefacts"),
        );
        assert_eq!(
            (
                no_final_layout(id).status().as_u16(),
                no_final_layout(id).to_string()
            ),
            none
        );
        let cases: [(&[&str], bool); 6] = [
            (&[], false),
            (&["artifacts/final/gds/"], false),
            (&["artifacts/final/gds/chip_top.gds"], true),
            (
                &[
                    "artifacts/final/gds/chip_top.gds.gz",
                    "artifacts/final/gds/notes.txt",
                ],
                true,
            ),
            (
                &["artifacts/final/gds/a.gds", "artifacts/final/gds/b.oas"],
                false,
            ),
            (&["artifacts/final/def/chip_top.gds"], false),
        ];
        for (files, found) in cases {
            let dir = tempfile::tempdir().unwrap();
            for f in files {
                let path = dir.path().join(f);
                if f.ends_with('/') {
                    std::fs::create_dir_all(&path).unwrap();
                } else {
                    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
                    std::fs::write(&path, b"layout").unwrap();
                }
            }
            match final_layout(dir.path(), id).await {
                Ok(path) => assert!(found, "{files:?}: {path:?}"),
                Err(e) => {
                    assert!(!found, "{files:?}: {e}");
                    assert_eq!((e.status().as_u16(), e.to_string()), none, "{files:?}");
                }
            }
        }
        // A link on the way is not followed.
        let dir = tempfile::tempdir().unwrap();
        let elsewhere = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(elsewhere.path().join("gds")).unwrap();
        std::fs::write(elsewhere.path().join("gds/chip_top.gds"), b"layout").unwrap();
        std::fs::create_dir_all(dir.path().join("artifacts")).unwrap();
        std::os::unix::fs::symlink(elsewhere.path(), dir.path().join("artifacts/final")).unwrap();
        assert_eq!(refusal(final_layout(dir.path(), id).await), none);
    }

    #[test]
    fn prechecks_are_found_only_by_a_key_that_may_see_them() {
        let ci = Scope::Owner("ci".into());
        let mine = Run::precheck_of(Some("ci"));
        let id = mine.id;
        assert_eq!(visible_precheck(Some(mine), &ci, id).unwrap().id, id);
        assert!(visible_precheck(Some(Run::precheck_of(None)), &Scope::All, id).is_ok());
        for run in [
            None,
            Some(Run::precheck_of(Some("other"))),
            Some(Run::build_of(Uuid::new_v4(), Some("ci"))),
        ] {
            assert_eq!(
                refusal(visible_precheck(run, &ci, id)),
                (404, format!("no such precheck: {id}"))
            );
        }
    }

    #[test]
    fn the_output_and_the_debug_tarball_wait_for_the_run() {
        let run = Run::precheck_of(None);
        let id = run.id;
        for status in NOT_COMPLETED {
            assert_eq!(
                refusal(output_ready(&run.clone().with_status(status))),
                (
                    409,
                    format!(
                        "precheck {id} is {status}: the checked layout exists only for completed prechecks (see /logs or the debug tarball)"
                    )
                )
            );
        }
        assert!(output_ready(&run.clone().with_status(RunStatus::Completed)).is_ok());
        let e = no_output(id);
        assert_eq!(
            (e.status().as_u16(), e.to_string()),
            (
                404,
                format!(
                    "precheck {id} has no output file (it was removed from the storage folder): see /logs or the debug tarball"
                )
            )
        );
        assert_eq!(
            refusal(has_files(&run)),
            (
                409,
                format!("precheck {id} is still queued: it has no files yet")
            )
        );
        for status in [
            RunStatus::Running,
            RunStatus::Completed,
            RunStatus::Failed,
            RunStatus::Cancelled,
        ] {
            assert!(
                has_files(&run.clone().with_status(status)).is_ok(),
                "{status}"
            );
        }
    }
}

/// The list's query, read without a server.
#[cfg(test)]
mod query_tests {
    use super::*;

    #[test]
    fn list_queries_are_read_or_refused_by_name() {
        let id = Uuid::new_v4();
        let q: ListParams = query::parse(Some(&format!(
            "status=queued&limit=5&status=running&before={id}"
        )))
        .unwrap();
        assert_eq!(q.status, Some(vec![RunStatus::Queued, RunStatus::Running]));
        let page = Page::new(q.limit, q.before);
        assert_eq!((page.limit, page.before), (5, Some(id)));
        let page = Page::new(None, None);
        assert_eq!((page.limit, page.before), (100, None));
        for (query, message) in [
            (
                "status=queued&status=done",
                "status: unknown status \"done\": use one of queued, running, completed, failed, cancelled",
            ),
            (
                "limit=0",
                "limit: \"0\" must be a number of runs from 1 to 1000 (default 100)",
            ),
            (
                "limit=1001",
                "limit: \"1001\" must be a number of runs from 1 to 1000 (default 100)",
            ),
            (
                "before=yesterday",
                "before: \"yesterday\" is not a precheck id: give the X-Next-Before of the previous page",
            ),
            (
                "page=2",
                "unknown query parameter \"page\": use status, limit or before",
            ),
        ] {
            let refused = query::parse::<ListParams>(Some(query))
                .err()
                .map(|e| e.to_string());
            assert_eq!(refused.as_deref(), Some(message), "{query}");
        }
    }
}
