//! `/api/v1/uploads`: layouts streamed to disk while their sha256 is computed.

use axum::extract::{Multipart, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use std::time::Duration;

use time::OffsetDateTime;
use utoipa::ToSchema;
use utoipa::openapi::schema::Object;
use uuid::Uuid;

use super::error::{ApiError, Message};
use super::extract::{Caller, Json, Path, content_length, parse_id};
use super::openapi::{Binary, string_enum};
use super::respond::rfc3339;
use super::state::AppState;
use crate::db::DeleteUpload;
use crate::layout::{self, Layout};
use crate::model::{LayoutFormat, Upload};
use crate::storage::{Saved, UploadError};
use crate::units::human_bytes;

/// An uploaded layout.
#[derive(Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "PascalCase")]
pub struct UploadBody {
    pub id: Uuid,
    /// The client's file name, without folders or control characters.
    pub name: String,
    /// Bytes.
    pub size: u64,
    /// RFC 3339.
    pub created: String,
    pub checksums: Checksums,
    pub state: UploadState,
    pub layout: LayoutBody,
}

#[derive(Serialize, Deserialize, ToSchema)]
pub struct Checksums {
    /// Hex.
    pub sha256: String,
}

/// An upload is kept until `ExpiresAt` unless a precheck uses it.
#[derive(Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "PascalCase")]
pub struct UploadState {
    pub expired: bool,
    /// RFC 3339.
    #[schema(required = true)]
    pub expires_at: Option<String>,
}

fn layout_format() -> Object {
    string_enum(LayoutFormat::ALL.map(LayoutFormat::as_str))
}

/// What the layout holds, read while it was uploaded.
#[derive(Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "PascalCase")]
pub struct LayoutBody {
    /// Recognised by content.
    #[schema(schema_with = layout_format)]
    pub format: String,
    /// The cells no other cell places. This, `DbuMicrons` and `Cells` are missing only for
    /// uploads stored before the server inspected layouts.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub top_cells: Option<Vec<String>>,
    /// The database unit in µm (the precheck needs 0.001).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub dbu_microns: Option<f64>,
    /// Every cell's name.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub cells: Option<Vec<String>>,
}

/// The multipart form of an upload.
#[derive(ToSchema)]
#[allow(dead_code)] // Only its schema is used: the handler reads the form as a stream.
struct UploadForm {
    /// The layout: GDSII, gzip'd GDSII or OASIS, recognised by content. Other fields are ignored.
    #[schema(value_type = Binary)]
    file: Vec<u8>,
}

impl LayoutBody {
    /// A layout's facts as the API shows them (only the format for uploads never inspected).
    pub fn new(format: LayoutFormat, layout: Option<&Layout>) -> LayoutBody {
        LayoutBody {
            format: format.as_str().to_string(),
            top_cells: layout.map(|l| l.top_cells.clone()),
            dbu_microns: layout.map(|l| l.dbu_microns),
            cells: layout.map(|l| l.cells.clone()),
        }
    }
}

impl UploadBody {
    fn new(u: &Upload, now: OffsetDateTime) -> UploadBody {
        UploadBody {
            id: u.id,
            name: u.name.clone(),
            size: u.size,
            created: rfc3339(u.created),
            checksums: Checksums {
                sha256: u.sha256.clone(),
            },
            state: UploadState {
                expired: u.is_expired(now),
                expires_at: u.expires_at.map(rfc3339),
            },
            layout: LayoutBody::new(u.format, u.layout.as_ref()),
        }
    }
}

/// Bytes the multipart framing may add around the file itself.
const MULTIPART_SLACK: u64 = 64 * 1024;
/// How long a refused upload's remaining body is read (and discarded) before the answer.
const DRAIN_ON_REFUSAL: Duration = Duration::from_secs(2);
/// Enough of the file to recognise its format.
const SNIFF_LEN: usize = 16;

/// Upload a layout
///
/// The layout is streamed to disk while its sha256 is computed and its format, database unit and
/// cells are read; a file that is not a whole GDSII, gzip'd GDSII or OASIS layout is refused.
#[utoipa::path(
    post,
    path = "/api/v1/uploads",
    operation_id = "upload_create",
    tag = "uploads",
    request_body(content = inline(UploadForm), content_type = "multipart/form-data"),
    responses(
        (status = 201, description = "Stored.", body = UploadBody),
        (status = 400, description = "No multipart body or no `file` field, or not a layout, truncated or corrupt, or its compressed data inflates past `server.max_inflated_size` or `server.max_inflation_ratio`.", body = Message),
        (status = 413, description = "Larger than `server.max_upload_size`.", body = Message),
        (status = 507, description = "The server's disk is full.", body = Message),
    )
)]
pub async fn create(
    state: State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    multipart: Result<Multipart, axum::extract::multipart::MultipartRejection>,
) -> Response {
    match create_upload(state, caller, headers, multipart).await {
        Ok(created) => created.into_response(),
        // The rest of a refused body may still be on its way: the connection is not reused, so
        // the client's next request cannot land on a connection the server is closing.
        Err(e) => e.closing_connection(),
    }
}

async fn create_upload(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    multipart: Result<Multipart, axum::extract::multipart::MultipartRejection>,
) -> Result<(StatusCode, Json<UploadBody>), ApiError> {
    let limit = state.config.max_upload_size;
    if content_length(&headers).is_some_and(|n| n > limit + MULTIPART_SLACK) {
        return Err(too_large(limit));
    }
    let mut multipart = multipart.map_err(|e| {
        ApiError::BadRequest(format!(
            "expected a multipart/form-data body with a `file` field, e.g. curl -F file=@chip_top.gds ({})",
            e.body_text()
        ))
    })?;
    let received = receive(&state, caller, &mut multipart, limit).await;
    if received.is_err() {
        // A client still sending the rest of its body should read this answer, not a reset
        // connection: read on (and discard) for a moment. A partial file is already removed.
        let _ = tokio::time::timeout(DRAIN_ON_REFUSAL, async {
            while let Ok(Some(_)) = multipart.next_field().await {}
        })
        .await;
    }
    received
}

fn too_large(limit: u64) -> ApiError {
    ApiError::TooLarge(format!(
        "the upload is larger than the limit of {} (server.max_upload_size)",
        human_bytes(limit)
    ))
}

async fn receive(
    state: &AppState,
    caller: Caller,
    multipart: &mut Multipart,
    limit: u64,
) -> Result<(StatusCode, Json<UploadBody>), ApiError> {
    while let Some(mut field) = multipart.next_field().await? {
        if field.name() != Some("file") {
            continue;
        }
        let name = clean_name(field.file_name().unwrap_or("upload"));
        // Read enough to recognise the format before anything is written.
        let mut buffered = Vec::new();
        let mut buffered_len = 0;
        while buffered_len < SNIFF_LEN {
            let Some(chunk) = field.chunk().await? else {
                break;
            };
            buffered_len += chunk.len();
            buffered.push(chunk);
        }
        let head: Vec<u8> = buffered
            .iter()
            .flat_map(|c| c.iter().copied())
            .take(SNIFF_LEN)
            .collect();
        if layout::sniff(&head).is_none() {
            return Err(ApiError::BadRequest(format!(
                "{name:?} is not a layout: expected GDSII, gzip'd GDSII or OASIS, but it starts with {}",
                layout::describe_start(&head)
            )));
        }

        let id = Uuid::new_v4();
        let mut writer = state.storage.upload_writer(id, state.config.inflation);
        let mut size = 0u64;
        let mut chunks = buffered.into_iter();
        loop {
            let chunk = match chunks.next() {
                Some(chunk) => chunk,
                None => match field.chunk().await? {
                    Some(chunk) => chunk,
                    None => break,
                },
            };
            size += chunk.len() as u64;
            state.metrics.upload_bytes.inc_by(chunk.len() as u64);
            if size > limit {
                return Err(too_large(limit));
            }
            writer
                .write(chunk)
                .await
                .map_err(|e| upload_error(&name, e))?;
        }
        let saved = writer.finish().await.map_err(|e| upload_error(&name, e))?;
        let upload = record(state, id, name, saved, caller.name).await?;
        let body = UploadBody::new(&upload, upload.created);
        return Ok((StatusCode::CREATED, Json(body)));
    }
    Err(ApiError::BadRequest(
        "the multipart body has no `file` field: send the layout as e.g. curl -F file=@chip_top.gds".into(),
    ))
}

/// Records a layout the storage has saved as an upload (removing the file if that fails).
pub(super) async fn record(
    state: &AppState,
    id: Uuid,
    name: String,
    saved: Saved,
    owner: Option<String>,
) -> Result<Upload, ApiError> {
    let format = saved.layout.format;
    let now = OffsetDateTime::now_utc();
    let upload = Upload {
        id,
        name,
        size: saved.size,
        sha256: saved.sha256,
        format,
        created: now,
        expires_at: Some(now + state.config.upload_expiry),
        expired: false,
        owner,
        layout: Some(saved.layout),
    };
    if let Err(e) = state.db.insert_upload(upload.clone()).await {
        let _ = state.storage.remove_upload(id).await;
        return Err(e.into());
    }
    tracing::info!(upload_id = %id, size = upload.size, format = format.as_str(), "upload stored");
    Ok(upload)
}

/// List uploads
///
/// Newest first.
#[utoipa::path(
    get,
    path = "/api/v1/uploads",
    operation_id = "upload_list",
    tag = "uploads",
    responses(
        (status = 200, description = "The uploads the key may see.", body = Vec<UploadBody>),
    )
)]
pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Json<Vec<UploadBody>>, ApiError> {
    let now = OffsetDateTime::now_utc();
    let uploads = state.db.uploads(caller.scope).await?;
    Ok(Json(
        uploads.iter().map(|u| UploadBody::new(u, now)).collect(),
    ))
}

/// Inspect an upload
#[utoipa::path(
    get,
    path = "/api/v1/uploads/{id}",
    operation_id = "upload_inspect",
    tag = "uploads",
    params(("id" = Uuid, Path, description = "The upload's id.")),
    responses(
        (status = 200, description = "The upload.", body = UploadBody),
        (status = 404, description = "No such upload (or another key's).", body = Message),
    )
)]
pub async fn inspect(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<UploadBody>, ApiError> {
    let upload = find(&state, &caller, &id).await?;
    Ok(Json(UploadBody::new(&upload, OffsetDateTime::now_utc())))
}

/// Delete an upload
#[utoipa::path(
    delete,
    path = "/api/v1/uploads/{id}",
    operation_id = "upload_delete",
    tag = "uploads",
    params(("id" = Uuid, Path, description = "The upload's id.")),
    responses(
        (status = 204, description = "Deleted."),
        (status = 404, description = "No such upload (or another key's).", body = Message),
        (status = 409, description = "A queued or running precheck uses it.", body = Message),
    )
)]
pub async fn delete(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let id = find(&state, &caller, &id).await?.id;
    let deleted = match state.db.delete_upload(id).await {
        // A full disk may leave the database no room even to delete a row: the file goes
        // first (if no run needs it), which frees its space, and the row after it. A run
        // created between the check and the removal (it would have to find room on the same
        // full disk) fails at its start for want of its layout.
        Err(e) if crate::db::trouble(&e) == Some(crate::db::Trouble::Full) => {
            if let Some(run) = state.db.upload_in_use(id).await? {
                return Err(in_use(id, run));
            }
            tracing::warn!(upload_id = %id, "the disk is full: removing the upload's file before its row");
            state
                .storage
                .remove_upload(id)
                .await
                .map_err(anyhow::Error::from)?;
            state.db.delete_upload(id).await?
        }
        other => other?,
    };
    match deleted {
        DeleteUpload::Deleted => {
            state
                .storage
                .remove_upload(id)
                .await
                .map_err(anyhow::Error::from)?;
            Ok(StatusCode::NO_CONTENT)
        }
        DeleteUpload::NotFound => Err(not_found(id)),
        DeleteUpload::InUse(run) => Err(in_use(id, run)),
    }
}

fn in_use(id: Uuid, run: Uuid) -> ApiError {
    ApiError::Conflict(format!(
        "upload {id} is used by precheck {run}, which has not finished: cancel it or wait for it first"
    ))
}

/// An upload the caller may see: others' are "no such upload", like unknown ones.
async fn find(state: &AppState, caller: &Caller, id: &str) -> Result<Upload, ApiError> {
    let id = parse_id(id, "upload")?;
    match state.db.upload(id).await? {
        Some(upload) if caller.scope.sees(upload.owner.as_deref()) => Ok(upload),
        _ => Err(not_found(id)),
    }
}

fn not_found(id: Uuid) -> ApiError {
    ApiError::NotFound(format!("no such upload: {id}"))
}

/// A layout that cannot be used is the client's to fix (400), named by its file name.
pub(super) fn upload_error(name: &str, e: UploadError) -> ApiError {
    match e {
        UploadError::Layout(e) => ApiError::BadRequest(format!("{name:?}: {e}")),
        other => other.into(),
    }
}

/// The client's file name as text: no folders, no control characters, at most 255 characters.
fn clean_name(name: &str) -> String {
    let base = name.rsplit(['/', '\\']).next().unwrap_or(name);
    let clean: String = base.chars().filter(|c| !c.is_control()).take(255).collect();
    if clean.trim().is_empty() {
        "upload".into()
    } else {
        clean
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_text_not_paths() {
        assert_eq!(clean_name("../../etc/passwd"), "passwd");
        assert_eq!(clean_name("C:\\chips\\top.gds"), "top.gds");
        assert_eq!(clean_name("a\u{0}b\nc.gds"), "abc.gds");
        assert_eq!(clean_name(""), "upload");
    }
}
