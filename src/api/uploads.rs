//! `/api/v1/uploads`: layouts streamed to disk while their sha256 is computed.

use axum::extract::multipart::MultipartRejection;
use axum::extract::{Multipart, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use prometheus::IntCounter;
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
use crate::layout::{self, Die, Layout};
use crate::model::{LayoutFormat, Upload};
use crate::storage::{Saved, UploadError, UploadWriter};
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
    /// The top cell's geometry; missing when the layout has no top cell or several (and for
    /// uploads stored before the server read geometry).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub die: Option<DieBody>,
}

/// The top cell as the precheck's first checks see it.
#[derive(Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "PascalCase")]
pub struct DieBody {
    /// The top cell's name.
    pub cell: String,
    /// Its box through the hierarchy in µm, `[left, bottom, right, top]`, as KLayout's
    /// `Cell.dbbox()` gives it; null when the cell holds no shape.
    #[serde(rename = "BBox")]
    #[schema(required = true, min_items = 4, max_items = 4)]
    pub bbox: Option<[f64; 4]>,
    /// Every layer with a shape in the die, as `layer/datatype`, sorted numerically.
    pub layers: Vec<String>,
}

impl DieBody {
    fn new(die: &Die, dbu_microns: f64) -> DieBody {
        // Through whole nanometres, so that 3932 µm is 3932, not 3932.0000000000005.
        let um = |v: i64| (v as f64 * dbu_microns * 1000.0).round() / 1000.0;
        DieBody {
            cell: die.cell.clone(),
            bbox: die
                .bbox
                .map(|b| [um(b.left), um(b.bottom), um(b.right), um(b.top)]),
            layers: die.layers.iter().map(|(l, d)| format!("{l}/{d}")).collect(),
        }
    }
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
            die: layout.and_then(|l| Some(DieBody::new(l.die.as_ref()?, l.dbu_microns))),
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
/// How long a refused upload's remaining body is read (and discarded) before the answer: a
/// client (hyper's, among others) that is still writing when the connection closes gets a
/// broken pipe instead of the answer. Long enough for a loaded machine to take the rest of a
/// bomb; it ends as soon as the body does.
const DRAIN_ON_REFUSAL: Duration = Duration::from_secs(30);
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
    multipart: Result<Multipart, MultipartRejection>,
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
    multipart: Result<Multipart, MultipartRejection>,
) -> Result<(StatusCode, Json<UploadBody>), ApiError> {
    let limit = state.config.max_upload_size;
    declared_length(&headers, limit)?;
    let mut multipart = form(multipart)?;
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

/// Refuses a body that declares more than the limit and the multipart framing around it.
fn declared_length(headers: &HeaderMap, limit: u64) -> Result<(), ApiError> {
    if content_length(headers).is_some_and(|n| n > limit + MULTIPART_SLACK) {
        return Err(too_large(limit));
    }
    Ok(())
}

/// The body as a multipart form, or the refusal of one that is not.
fn form(multipart: Result<Multipart, MultipartRejection>) -> Result<Multipart, ApiError> {
    multipart.map_err(|e| {
        ApiError::BadRequest(format!(
            "expected a multipart/form-data body with a `file` field, e.g. curl -F file=@chip_top.gds ({})",
            e.body_text()
        ))
    })
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
    let id = Uuid::new_v4();
    let open = || state.storage.upload_writer(id, state.config.inflation);
    let (name, saved) = take_file(multipart, limit, &state.metrics.upload_bytes, open).await?;
    let upload = record(state, id, name, saved, caller.name).await?;
    let body = UploadBody::new(&upload, upload.created);
    Ok((StatusCode::CREATED, Json(body)))
}

/// Streams the form's `file` field into the writer `open` gives, chunk by chunk as it arrives,
/// and returns the client's (cleaned) file name with what the writer saved. Other fields are
/// skipped. Refused: a form without a `file` field; a file whose first bytes are no layout
/// (before `open` is called, so nothing is written); a file past `limit` bytes (the writer,
/// dropped unfinished, removes its partial file). `received` counts the bytes taken.
async fn take_file(
    multipart: &mut Multipart,
    limit: u64,
    received: &IntCounter,
    open: impl FnOnce() -> UploadWriter,
) -> Result<(String, Saved), ApiError> {
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

        let mut writer = open();
        let mut size = 0u64;
        let mut chunks = buffered.into_iter();
        let written = async {
            loop {
                let chunk = match chunks.next() {
                    Some(chunk) => chunk,
                    None => match field.chunk().await? {
                        Some(chunk) => chunk,
                        None => return Ok(()),
                    },
                };
                size += chunk.len() as u64;
                received.inc_by(chunk.len() as u64);
                if size > limit {
                    return Err(too_large(limit));
                }
                writer
                    .write(chunk)
                    .await
                    .map_err(|e| upload_error(&name, e))?;
            }
        }
        .await;
        if let Err(e) = written {
            // The partial file is gone before the client hears why.
            writer.abandon().await;
            return Err(e);
        }
        let saved = writer.finish().await.map_err(|e| upload_error(&name, e))?;
        return Ok((name, saved));
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
    use crate::layout::InflationLimits;
    use crate::layout::write::{Cell, Layer, Library};
    use crate::storage::Storage;
    use axum::body::Body;
    use axum::extract::FromRequest;
    use axum::http::{Request, header};
    use bytes::Bytes;
    use futures_util::StreamExt;
    use sha2::{Digest, Sha256};

    const BOUNDARY: &str = "precheck-boundary";

    /// One part of a form: its headers and content, framed by the boundary.
    fn part(field: &str, file_name: Option<&str>, content: &[u8]) -> Vec<u8> {
        let file_name = file_name.map_or(String::new(), |f| format!("; filename=\"{f}\""));
        let mut part = format!(
            "--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"{field}\"{file_name}\r\n\r\n"
        )
        .into_bytes();
        part.extend_from_slice(content);
        part.extend_from_slice(b"\r\n");
        part
    }

    /// A whole form body: its parts and the closing boundary.
    fn form_body(parts: &[Vec<u8>]) -> Vec<u8> {
        let mut body = parts.concat();
        body.extend_from_slice(format!("--{BOUNDARY}--\r\n").as_bytes());
        body
    }

    /// The extractor's answer to a POST of `body`, arriving in chunks of `chunk` bytes.
    async fn extract(
        content_type: &str,
        body: &[u8],
        chunk: usize,
    ) -> Result<Multipart, MultipartRejection> {
        let chunks: Vec<Result<Bytes, std::io::Error>> = body
            .chunks(chunk)
            .map(|c| Ok(Bytes::copy_from_slice(c)))
            .collect();
        // Each chunk after the first comes after a pending poll, as from a network: the
        // multipart reader would otherwise gather every chunk that is ready into one.
        let arriving = futures_util::stream::iter(chunks.into_iter().enumerate()).then(
            |(i, chunk)| async move {
                if i > 0 {
                    tokio::task::yield_now().await;
                }
                chunk
            },
        );
        let request = Request::post("/api/v1/uploads")
            .header(header::CONTENT_TYPE, content_type)
            .body(Body::from_stream(arriving))
            .unwrap();
        Multipart::from_request(request, &()).await
    }

    /// A multipart form of `parts`, streamed in chunks of `chunk` bytes.
    async fn multipart(parts: &[Vec<u8>], chunk: usize) -> Multipart {
        let content_type = format!("multipart/form-data; boundary={BOUNDARY}");
        extract(&content_type, &form_body(parts), chunk)
            .await
            .unwrap()
    }

    fn counter() -> IntCounter {
        IntCounter::new("test_upload_bytes", "bytes").unwrap()
    }

    fn layout() -> Vec<u8> {
        let mut top = Cell::new("chip_top");
        for i in 0..20 {
            top = top.rect(Layer(1, 0), [i * 10, 0, i * 10 + 5, 5]);
        }
        Library::new(0.001).cell(top).gds()
    }

    /// Takes the form's file with a writer that must not be opened: the refusal comes first.
    async fn refused_before_writing(parts: &[Vec<u8>], chunk: usize) -> ApiError {
        let mut form = multipart(parts, chunk).await;
        let open = || -> UploadWriter { panic!("a writer was opened for a refused file") };
        match take_file(&mut form, 1 << 20, &counter(), open).await {
            Ok((name, _)) => panic!("{name} was taken"),
            Err(e) => e,
        }
    }

    #[track_caller]
    fn assert_bad_request(what: &str, e: ApiError, expected: &str) {
        match e {
            ApiError::BadRequest(m) => assert_eq!(m, expected, "{what}"),
            other => panic!("{what}: expected a 400, got {:?}: {other}", other.status()),
        }
    }

    #[track_caller]
    fn assert_too_large(e: ApiError, expected: &str) {
        match e {
            ApiError::TooLarge(m) => assert_eq!(m, expected),
            other => panic!("expected a 413, got {:?}: {other}", other.status()),
        }
    }

    #[tokio::test]
    async fn a_body_that_is_no_multipart_form_is_refused() {
        let cases = [
            (
                "application/json",
                "Invalid `boundary` for `multipart/form-data` request",
            ),
            (
                "text/plain",
                "Invalid `boundary` for `multipart/form-data` request",
            ),
            (
                "multipart/form-data",
                "Invalid `boundary` for `multipart/form-data` request",
            ),
        ];
        for (content_type, detail) in cases {
            let Err(rejection) = extract(content_type, b"hello", 64).await else {
                panic!("{content_type} was taken as multipart");
            };
            assert_bad_request(
                content_type,
                form(Err(rejection)).unwrap_err(),
                &format!(
                    "expected a multipart/form-data body with a `file` field, e.g. curl -F file=@chip_top.gds ({detail})"
                ),
            );
        }
    }

    #[tokio::test]
    async fn a_form_without_a_file_field_is_refused() {
        let no_file = "the multipart body has no `file` field: send the layout as e.g. curl -F file=@chip_top.gds";
        let cases: [(&str, Vec<Vec<u8>>); 3] = [
            ("no field at all", vec![]),
            (
                "only a text field",
                vec![part("name", None, b"chip_top.gds")],
            ),
            (
                "the layout under another name",
                vec![part("upload", Some("chip_top.gds"), &layout())],
            ),
        ];
        for (what, parts) in cases {
            let e = refused_before_writing(&parts, 64).await;
            assert_bad_request(what, e, no_file);
        }
    }

    #[tokio::test]
    async fn a_form_that_breaks_off_is_refused() {
        let mut body = format!(
            "--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.gds\"\r\n\r\n"
        )
        .into_bytes();
        body.extend_from_slice(&[0x00, 0x06, 0x00, 0x02]);
        let content_type = format!("multipart/form-data; boundary={BOUNDARY}");
        let mut form = extract(&content_type, &body, 64).await.unwrap();
        let open = || -> UploadWriter { panic!("a writer was opened for a broken form") };
        let e = take_file(&mut form, 1 << 20, &counter(), open)
            .await
            .unwrap_err();
        assert_bad_request(
            "a form without its closing boundary",
            e,
            "bad multipart body (field \"file\" received with incomplete data): send the layout as a `file` field, e.g. curl -F file=@chip_top.gds",
        );
    }

    #[tokio::test]
    async fn a_file_that_is_no_layout_is_refused_by_name_and_first_bytes() {
        let zip = b"PK\x03\x04\x14\x00\x00\x00\x08\x00\x21\x00\xb7\xac\xce\x34\x00\x01";
        let cases: [(Option<&str>, &[u8], usize, &str); 6] = [
            (
                Some("empty.gds"),
                b"",
                64,
                r#""empty.gds" is not a layout: expected GDSII, gzip'd GDSII or OASIS, but it starts with nothing (the file is empty)"#,
            ),
            // The head is gathered across chunks shorter than it.
            (
                Some("notes.txt"),
                b"this is not a layout, just some notes\n",
                5,
                r#""notes.txt" is not a layout: expected GDSII, gzip'd GDSII or OASIS, but it starts with "this is not a la""#,
            ),
            (
                Some("chip_top.gds"),
                b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR\0\0\x01\0",
                64,
                r#""chip_top.gds" is not a layout: expected GDSII, gzip'd GDSII or OASIS, but it starts with the bytes 89 50 4e 47 0d 0a 1a 0a 00 00 00 0d 49 48 44 52"#,
            ),
            (
                Some("../designs/chip.zip"),
                zip,
                3,
                r#""chip.zip" is not a layout: expected GDSII, gzip'd GDSII or OASIS, but it starts with the bytes 50 4b 03 04 14 00 00 00 08 00 21 00 b7 ac ce 34"#,
            ),
            // Shorter than the head, and under no file name.
            (
                None,
                b"GDS",
                64,
                r#""upload" is not a layout: expected GDSII, gzip'd GDSII or OASIS, but it starts with "GDS""#,
            ),
            // The first bytes of a GDSII record that is not a HEADER.
            (
                Some("chip_top.gds"),
                &[0x00, 0x06, 0x01, 0x02, 0x00, 0x03],
                64,
                r#""chip_top.gds" is not a layout: expected GDSII, gzip'd GDSII or OASIS, but it starts with the bytes 00 06 01 02 00 03"#,
            ),
        ];
        for (file_name, content, chunk, expected) in cases {
            let e = refused_before_writing(&[part("file", file_name, content)], chunk).await;
            assert_bad_request(&format!("{file_name:?}"), e, expected);
        }
    }

    #[test]
    fn a_declared_length_past_the_limit_and_the_framing_is_refused() {
        let limit = 64 * 1024;
        let with_length = |n: &str| {
            let mut headers = HeaderMap::new();
            headers.insert(header::CONTENT_LENGTH, n.parse().unwrap());
            headers
        };
        assert!(declared_length(&HeaderMap::new(), limit).is_ok());
        assert!(
            declared_length(&with_length(&(limit + MULTIPART_SLACK).to_string()), limit).is_ok()
        );
        assert!(declared_length(&with_length("not a number"), limit).is_ok());
        assert_too_large(
            declared_length(
                &with_length(&(limit + MULTIPART_SLACK + 1).to_string()),
                limit,
            )
            .unwrap_err(),
            "the upload is larger than the limit of 64 KiB (server.max_upload_size)",
        );
    }

    #[tokio::test]
    async fn a_file_streamed_past_the_limit_is_refused_and_its_part_removed() {
        let gds = layout();
        let limit = 1024;
        assert!(
            gds.len() > 1024 + 100,
            "the layout crosses the limit mid-stream"
        );
        let storage_dir = tempfile::tempdir().unwrap();
        let storage = Storage::open(storage_dir.path()).unwrap();
        let mut form = multipart(&[part("file", Some("chip_top.gds"), &gds)], 100).await;
        let open = || storage.upload_writer(Uuid::new_v4(), InflationLimits::default());
        let received = counter();
        let e = take_file(&mut form, limit, &received, open)
            .await
            .unwrap_err();
        assert_too_large(
            e,
            "the upload is larger than the limit of 1 KiB (server.max_upload_size)",
        );
        assert!(
            received.get() > limit,
            "the bytes past the limit are counted"
        );
        let entries = |dir: &str| {
            std::fs::read_dir(storage_dir.path().join(dir))
                .unwrap()
                .count()
        };
        // The partial file is gone before the refusal is answered.
        assert_eq!(entries("tmp"), 0, "a partial file is left in tmp/");
        assert_eq!(entries("uploads"), 0, "a refused upload is kept");
    }

    #[tokio::test]
    async fn a_layout_is_taken_whole_across_chunks_under_its_clean_name() {
        let gds = layout();
        let storage_dir = tempfile::tempdir().unwrap();
        let storage = Storage::open(storage_dir.path()).unwrap();
        let id = Uuid::new_v4();
        // Chunks shorter than the head, after a field that is skipped; a limit of exactly its size.
        let parts = [
            part("name", None, b"ignored"),
            part("file", Some("..\\designs\\chip_top.gds"), &gds),
        ];
        let mut form = multipart(&parts, 7).await;
        let received = counter();
        let open = || storage.upload_writer(id, InflationLimits::default());
        let (name, saved) = take_file(&mut form, gds.len() as u64, &received, open)
            .await
            .unwrap();
        assert_eq!(name, "chip_top.gds");
        assert_eq!(saved.size, gds.len() as u64);
        assert_eq!(received.get(), gds.len() as u64);
        assert_eq!(saved.sha256, format!("{:x}", Sha256::digest(&gds)));
        assert_eq!(std::fs::read(storage.upload_path(id)).unwrap(), gds);
        assert_eq!(saved.layout.format, LayoutFormat::Gds);
        assert_eq!(saved.layout.top_cells, ["chip_top"]);
    }

    #[test]
    fn names_are_text_not_paths() {
        assert_eq!(clean_name("../../etc/passwd"), "passwd");
        assert_eq!(clean_name("C:\\chips\\top.gds"), "top.gds");
        assert_eq!(clean_name("a\u{0}b\nc.gds"), "abc.gds");
        assert_eq!(clean_name(""), "upload");
    }

    /// A layout the reader refuses while its file still arrives: the write fails with the
    /// reader's own error, and what was written is gone before the answer.
    #[tokio::test]
    async fn a_layout_refused_while_it_arrives_leaves_nothing() {
        let mut bytes = layout()[..64].to_vec();
        bytes.extend(std::iter::repeat_n(0xffu8, 4 << 20));
        let storage_dir = tempfile::tempdir().unwrap();
        let storage = Storage::open(storage_dir.path()).unwrap();
        let mut form = multipart(&[part("file", Some("chip_top.gds"), &bytes)], 16 << 10).await;
        let open = || storage.upload_writer(Uuid::new_v4(), InflationLimits::default());
        let e = take_file(&mut form, 1 << 30, &counter(), open)
            .await
            .unwrap_err();
        assert!(
            matches!(&e, ApiError::BadRequest(m) if m.starts_with("\"chip_top.gds\": corrupt GDSII")),
            "{e:?}"
        );
        let left = std::fs::read_dir(storage_dir.path().join("tmp"))
            .unwrap()
            .count();
        assert_eq!(left, 0);
    }
}
