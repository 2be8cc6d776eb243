//! `/api/v1/prechecks`: create, list, inspect, wait, cancel, the checked layout and the debug
//! tarball.

use std::collections::BTreeMap;
use std::time::Duration;

use super::Path;
use axum::body::Body;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use tokio_stream::wrappers::ReceiverStream;
use utoipa::openapi::RefOr;
use utoipa::openapi::schema::{Object, Schema};
use utoipa::{PartialSchema, ToSchema};
use uuid::Uuid;

use super::error::Message;
use super::openapi::{Binary, nullable_string_enum, string_enum};
use super::page::{Page, unknown_before};
use super::uploads::{record, upload_error};
use super::{ApiError, Caller, Json, parse_id, rfc3339};
use crate::db::{Cancel, CreateRunError, Created, Idempotency, KeyUse, NewRun, RunFilter};
use crate::layout::{EXPECTED_DBU_MICRONS, Layout};
use crate::model::{
    DieId, PrecheckParams, PrecheckSource, Run, RunKind, RunParams, RunStatus, SLOTS, Slot, TopCell,
};
use crate::runner::final_gds;
use crate::server::AppState;
use crate::storage::{ChunkSender, OUTPUT_LAYOUT, open_inside, open_regular, write_tar_gz};

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

/// A run: a precheck, or a project's simulation or build job.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "PascalCase")]
pub struct RunBody {
    id: Uuid,
    kind: RunKind,
    /// RFC 3339.
    created: String,
    /// The `sha256:` id of the image that ran (or runs) it.
    #[schema(required = true)]
    image: Option<String>,
    state: RunState,
    config: RunConfig,
    /// The name of the API key that created it (none without authentication).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    owner: Option<String>,
    /// Where it stands in the queue, while it is queued.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    queue: Option<QueueBody>,
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "PascalCase")]
struct RunState {
    status: RunStatus,
    /// Once it has finished: 0 passed, 1 a check failed, 2 bad arguments, 124 timed out,
    /// 125 not run (or lost), 130 cancelled, 137 killed (e.g. out of memory).
    #[schema(required = true)]
    exit_code: Option<i64>,
    /// Why it did not pass, in a sentence a person can act on.
    #[schema(required = true)]
    error: Option<String>,
    /// RFC 3339.
    #[schema(required = true)]
    started_at: Option<String>,
    /// RFC 3339.
    #[schema(required = true)]
    finished_at: Option<String>,
    #[serde(rename = "OOMKilled")]
    oom_killed: bool,
    /// A build's LibreLane step, read from its log.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    progress: Option<ProgressBody>,
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "PascalCase")]
struct ProgressBody {
    step: u32,
    name: String,
    /// How many steps the flow has, once known (see docs/decisions.md).
    #[schema(required = true)]
    count: Option<u32>,
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "PascalCase")]
struct RunConfig {
    /// The image's name.
    image: String,
    /// A precheck's `upload_id`, `top_cell`, `die_id`, `slot` and `cob`; a simulation's
    /// `project_id`, `tool`, `top` and `files`; a build's `project_id` and `config`.
    labels: BTreeMap<&'static str, String>,
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "PascalCase")]
struct QueueBody {
    /// 1 for the next to start.
    position: u64,
    length: u64,
}

/// What a run is.
impl PartialSchema for RunKind {
    fn schema() -> RefOr<Schema> {
        string_enum(RunKind::ALL.map(RunKind::as_str)).into()
    }
}

impl ToSchema for RunKind {}

/// Where a run stands.
impl PartialSchema for RunStatus {
    fn schema() -> RefOr<Schema> {
        string_enum(RunStatus::ALL.map(RunStatus::as_str)).into()
    }
}

impl ToSchema for RunStatus {}

impl Serialize for RunKind {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl Serialize for RunStatus {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl From<&Run> for RunBody {
    fn from(run: &Run) -> RunBody {
        let labels = match &run.params {
            RunParams::Precheck(p) => BTreeMap::from([
                ("upload_id", p.upload_id.to_string()),
                ("top_cell", p.top_cell.clone()),
                ("die_id", p.die_id.clone()),
                ("slot", p.slot.clone()),
                ("cob", p.cob.to_string()),
            ]),
            RunParams::Simulation(p) => BTreeMap::from([
                ("project_id", p.project_id.to_string()),
                ("tool", p.tool.as_str().to_string()),
                ("top", p.top.clone()),
                ("files", p.sources.join(" ")),
            ]),
            RunParams::Build(p) => BTreeMap::from([
                ("project_id", p.project_id.to_string()),
                ("config", p.config.clone()),
            ]),
        };
        RunBody {
            id: run.id,
            kind: run.kind(),
            created: rfc3339(run.created),
            image: run.image_id.clone(),
            state: RunState {
                status: run.status,
                exit_code: run.exit_code,
                error: run.error.clone(),
                started_at: run.started_at.map(rfc3339),
                finished_at: run.finished_at.map(rfc3339),
                oom_killed: run.oom_killed,
                progress: run.progress.as_ref().map(|p| ProgressBody {
                    step: p.step,
                    name: p.name.clone(),
                    count: p.count,
                }),
            },
            config: RunConfig {
                image: run.image.clone(),
                labels,
            },
            owner: run.owner.clone(),
            queue: run
                .queue
                .map(|(position, length)| QueueBody { position, length }),
        }
    }
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
    let notify_url = notify_url(&state, body.notify_url)?;
    // Checked first: a build's layout becomes an upload only for a request that can succeed.
    let die_id = parse_or(body.die_id.as_deref(), DieId::default)?;
    let slot = parse_or(body.slot.as_deref(), Slot::default)?;
    let source = PrecheckSource::parse(body.upload_id.as_deref(), body.job_id.as_deref())
        .map_err(ApiError::BadRequest)?;
    let upload_id = match source {
        PrecheckSource::Upload(id) => id,
        PrecheckSource::Build(job) => upload_build(&state, &caller, job).await?,
    };
    // The layout's facts decide the top cell; a key never learns of another key's upload.
    let upload = state
        .db
        .upload(upload_id)
        .await?
        .filter(|u| caller.scope.sees(u.owner.as_deref()))
        .ok_or_else(|| ApiError::NotFound(format!("no such upload: {upload_id}")))?;
    let force = body.force.unwrap_or(false);
    let top_cell = choose_top_cell(body.top_cell, upload.layout.as_ref(), force)?;
    let params = PrecheckParams {
        upload_id,
        top_cell: top_cell.into_string(),
        die_id: die_id.into_string(),
        slot: slot.as_str().into(),
        cob: body.cob.unwrap_or(false),
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
    let run = created.map_err(|e| match e {
        CreateRunError::UnknownUpload => ApiError::NotFound(format!("no such upload: {upload_id}")),
        CreateRunError::UploadExpired => ApiError::Gone(format!(
            "upload {upload_id} has expired (uploads are kept {} minutes until a precheck uses them): upload the layout again",
            state.config.upload_expiry.as_secs() / 60
        )),
        CreateRunError::KeyReused => key_reused(key.as_deref().unwrap_or_default()),
    })?;
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

/// A run's webhook: the one asked for (checked against the config), or the config's default.
pub(super) fn notify_url(
    state: &AppState,
    given: Option<String>,
) -> Result<Option<String>, ApiError> {
    let hooks = &state.config.webhooks;
    match given {
        Some(url) => hooks
            .check_url(&url)
            .map(|u| Some(u.to_string()))
            .map_err(|e| ApiError::BadRequest(format!("notify_url: {e}"))),
        None => Ok(hooks.default_url.as_ref().map(|u| u.to_string())),
    }
}

/// Makes the final layout of a completed build job an upload (inspected like any), for a
/// precheck of it.
async fn upload_build(state: &AppState, caller: &Caller, id: Uuid) -> Result<Uuid, ApiError> {
    let run = match state.db.run(id).await? {
        Some(run) if run.kind() == RunKind::Build && caller.scope.sees(run.owner.as_deref()) => run,
        _ => return Err(ApiError::NotFound(format!("no such build job: {id}"))),
    };
    if run.status != RunStatus::Completed {
        return Err(ApiError::Conflict(format!(
            "build job {id} is {}: only a completed build has a final layout to check",
            run.status
        )));
    }
    let Some(path) = final_gds(&state.storage.run_dir(id)).await else {
        return Err(ApiError::Conflict(format!(
            "build job {id} has no single layout in final/gds/: see its artefacts"
        )));
    };
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "design.gds".into());
    let opened = tokio::task::spawn_blocking(move || open_regular(&path))
        .await
        .map_err(|e| ApiError::Internal(e.into()))?
        .map_err(|e| anyhow::Error::from(e).context("cannot read the build's layout"))?;
    let Some((file, _)) = opened else {
        return Err(ApiError::Conflict(format!(
            "build job {id} has no single layout in final/gds/: see its artefacts"
        )));
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
    params(
        ("status" = Option<Vec<RunStatus>>, Query, explode, description = "Only runs with one of these statuses (repeatable)."),
        ("limit" = Option<usize>, Query, nullable = false, minimum = 1, maximum = 1000, description = "At most this many runs (default 100)."),
        ("before" = Option<Uuid>, Query, nullable = false, description = "Only runs created before this one: the `X-Next-Before` of the previous page."),
    ),
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
    let mut statuses = Vec::new();
    let mut page = Page::default();
    for (key, value) in query_pairs(query.as_deref())? {
        if page.take(&key, &value, "precheck")? {
            continue;
        }
        match key.as_str() {
            "status" => statuses.push(
                value
                    .parse::<RunStatus>()
                    .map_err(|e| ApiError::BadRequest(format!("status: {e}")))?,
            ),
            other => {
                return Err(ApiError::BadRequest(format!(
                    "unknown query parameter {other:?}: use status, limit or before"
                )));
            }
        }
    }
    if let Some(before) = page.before {
        match state.db.run(before).await? {
            Some(run)
                if caller.scope.sees(run.owner.as_deref()) && run.kind() == RunKind::Precheck => {}
            _ => return Err(unknown_before("precheck", before)),
        }
    }
    let runs = state
        .db
        .runs_where(RunFilter {
            statuses,
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

/// How a run ended, as Docker's `/wait` says it.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "PascalCase")]
pub struct WaitBody {
    /// 0 passed; see `State.ExitCode` of a run.
    status_code: i64,
    /// Why it did not pass; null when it passed.
    #[schema(required = true)]
    error: Option<WaitError>,
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "PascalCase")]
struct WaitError {
    message: String,
}

/// How long `/wait` may be asked to wait.
const MAX_WAIT: Duration = Duration::from_secs(24 * 3600);

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
        ("timeout" = Option<f64>, Query, nullable = false, minimum = 0, maximum = 86400, description = "How long to wait, in seconds (default 300)."),
        ("condition" = Option<String>, Query, nullable = false, description = "Accepted for Docker clients, and ignored: the wait is always for the run's end."),
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

/// What a run is called in messages: `precheck`, `simulation job`, `build job`.
pub(super) fn noun(kind: RunKind) -> &'static str {
    match kind {
        RunKind::Precheck => "precheck",
        RunKind::Simulation => "simulation job",
        RunKind::Build => "build job",
    }
}

/// Blocks until a run is terminal, as `POST .../wait` answers for prechecks and jobs alike.
pub(super) async fn wait_for(
    state: &AppState,
    run: &Run,
    query: Option<String>,
) -> Result<Json<WaitBody>, ApiError> {
    let (id, what) = (run.id, noun(run.kind()));
    let mut timeout = Duration::from_secs(300);
    for (key, value) in query_pairs(query.as_deref())? {
        match key.as_str() {
            "timeout" => {
                timeout = value
                    .parse::<f64>()
                    .ok()
                    .filter(|t| t.is_finite() && *t >= 0.0)
                    .map(Duration::from_secs_f64)
                    .filter(|t| *t <= MAX_WAIT)
                    .ok_or_else(|| {
                        ApiError::BadRequest(format!(
                            "timeout: {value:?} must be a number of seconds from 0 to {}",
                            MAX_WAIT.as_secs()
                        ))
                    })?
            }
            "condition" => {}
            other => {
                return Err(ApiError::BadRequest(format!(
                    "unknown query parameter {other:?}: use timeout"
                )));
            }
        }
    }
    let run = state
        .queue
        .wait(id, timeout)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no such {what}: {id}")))?;
    if !run.status.is_terminal() && state.queue.is_stopping() {
        return Err(ApiError::Unavailable(format!(
            "the server is shutting down; {what} {id} is still {} and goes on: call /wait again once the server is back",
            run.status
        )));
    }
    if !run.status.is_terminal() {
        return Err(ApiError::Timeout(format!(
            "{what} {id} is still {} after {} s: call /wait again",
            run.status,
            timeout.as_secs_f64()
        )));
    }
    Ok(Json(WaitBody {
        status_code: run.exit_code.unwrap_or(crate::model::exit_code::NOT_RUN),
        error: run.error.map(|message| WaitError { message }),
    }))
}

/// How long a cancel waits for the container to be stopped and the run recorded.
const CANCEL_WAIT: Duration = Duration::from_secs(30);

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

/// Cancels a run, as `DELETE` answers for prechecks and jobs alike.
pub(super) async fn cancel_run(state: &AppState, run: &Run) -> Result<Json<RunBody>, ApiError> {
    let (id, what) = (run.id, noun(run.kind()));
    let not_found = |id| ApiError::NotFound(format!("no such {what}: {id}"));
    match state.queue.cancel(id).await? {
        Cancel::Cancelled(run) => Ok(Json(RunBody::from(&*run))),
        Cancel::Running => {
            let run = state
                .queue
                .wait(id, CANCEL_WAIT)
                .await?
                .ok_or_else(|| not_found(id))?;
            Ok(Json(RunBody::from(&run)))
        }
        Cancel::AlreadyFinished(status) => Err(ApiError::Conflict(format!(
            "{what} {id} has already finished ({status}): there is nothing to cancel"
        ))),
        Cancel::NotFound => Err(not_found(id)),
    }
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
    if run.status != RunStatus::Completed {
        return Err(ApiError::Conflict(format!(
            "precheck {} is {}: the checked layout exists only for completed prechecks (see /logs or the debug tarball)",
            run.id, run.status
        )));
    }
    // Opened without following a link: only the regular file the run copied out is served.
    let run_dir = state.storage.run_dir(run.id);
    let opened = tokio::task::spawn_blocking(move || open_inside(&run_dir, OUTPUT_LAYOUT))
        .await
        .map_err(|e| ApiError::Internal(e.into()))?
        .map_err(|e| {
            anyhow::Error::from(e).context(format!("cannot open the output of {}", run.id))
        })?;
    let Some((file, len)) = opened else {
        return Err(ApiError::NotFound(format!(
            "precheck {} has no output file (it was removed from the storage folder): see /logs or the debug tarball",
            run.id
        )));
    };
    let file = tokio::fs::File::from_std(file);
    let upload = match run.precheck() {
        Some(p) => state.db.upload(p.upload_id).await?,
        None => None,
    };
    let filename = output_name(upload.as_ref().map(|u| u.name.as_str()));
    Ok((
        [
            (header::CONTENT_TYPE, "application/octet-stream".to_string()),
            (header::CONTENT_LENGTH, len.to_string()),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"{filename}\""),
            ),
        ],
        Body::from_stream(tokio_util::io::ReaderStream::new(file)),
    )
        .into_response())
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
    if run.status == RunStatus::Queued {
        return Err(ApiError::Conflict(format!(
            "precheck {} is still queued: it has no files yet",
            run.id
        )));
    }
    let dir = state.storage.run_dir(run.id);
    tar_gz_response(dir, format!("precheck-{}", run.id)).await
}

/// A folder as a streamed `.tar.gz` download whose entries start with `prefix/`.
pub(super) async fn tar_gz_response(
    dir: std::path::PathBuf,
    prefix: String,
) -> Result<Response, ApiError> {
    tokio::fs::create_dir_all(&dir)
        .await
        .map_err(anyhow::Error::from)?;
    let (writer, rx) = ChunkSender::new();
    let disposition = format!("attachment; filename=\"{prefix}.tar.gz\"");
    tokio::task::spawn_blocking(move || {
        let mut writer = writer;
        if let Err(e) = write_tar_gz(&dir, &prefix, &mut writer) {
            tracing::warn!("the tarball of {} failed: {e}", dir.display());
            writer.fail(e);
        }
    });
    Ok((
        [
            (header::CONTENT_TYPE, "application/gzip".to_string()),
            (header::CONTENT_DISPOSITION, disposition),
        ],
        Body::from_stream(ReceiverStream::new(rx)),
    )
        .into_response())
}

/// A run the caller may see: others' are "no such precheck", like unknown ones.
pub(super) async fn find(state: &AppState, caller: &Caller, id: &str) -> Result<Run, ApiError> {
    let id = parse_id(id, "precheck")?;
    match state.db.run(id).await? {
        Some(run) if caller.scope.sees(run.owner.as_deref()) && run.kind() == RunKind::Precheck => {
            Ok(run)
        }
        _ => Err(not_found(id)),
    }
}

pub(super) fn not_found(id: Uuid) -> ApiError {
    ApiError::NotFound(format!("no such precheck: {id}"))
}

pub(super) fn query_pairs(query: Option<&str>) -> Result<Vec<(String, String)>, ApiError> {
    serde_urlencoded::from_str(query.unwrap_or(""))
        .map_err(|e| ApiError::BadRequest(format!("bad query string: {e}")))
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
