//! `/api/v1/projects`: designers' HDL projects and their files. A file's content is a blob
//! named by its sha256 and never changed, so replacing a file never changes what a job that
//! already took it reads.

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use utoipa::ToSchema;
use uuid::Uuid;

use super::error::{ApiError, Message};
use super::extract::{Caller, Json, Path, content_length, parse_id};
use super::openapi::Binary;
use super::respond::rfc3339;
use super::state::AppState;
use crate::db::{DeleteProject, PutFile};
use crate::model::{
    Project, ProjectEdit, ProjectFile, check_project_path, project_description, project_name,
};
use crate::storage::{ChunkWriter, StagedBlob, UploadError};
use crate::units::human_bytes;

/// A project: HDL files to simulate and build.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "PascalCase")]
pub struct ProjectBody {
    id: Uuid,
    name: String,
    description: String,
    /// RFC 3339.
    created: String,
    /// RFC 3339: the last change of its name, description or files.
    updated: String,
    /// How many files the project holds, and their bytes in all.
    files: u64,
    size: u64,
    /// The name of the API key that created it (none without authentication).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    owner: Option<String>,
}

impl From<&Project> for ProjectBody {
    fn from(p: &Project) -> ProjectBody {
        ProjectBody {
            id: p.id,
            name: p.name.clone(),
            description: p.description.clone(),
            created: rfc3339(p.created),
            updated: rfc3339(p.updated),
            files: p.files,
            size: p.size,
            owner: p.owner.clone(),
        }
    }
}

/// A project's file.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "PascalCase")]
pub struct FileBody {
    /// Relative, `/`-separated.
    path: String,
    /// Bytes.
    size: u64,
    /// Hex.
    sha256: String,
    /// RFC 3339.
    modified: String,
}

impl From<&ProjectFile> for FileBody {
    fn from(f: &ProjectFile) -> FileBody {
        FileBody {
            path: f.path.clone(),
            size: f.size,
            sha256: f.sha256.clone(),
            modified: rfc3339(f.modified),
        }
    }
}

/// A new project.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewProject {
    /// 1 to 100 characters without control characters (surrounding spaces are dropped).
    #[schema(min_length = 1, max_length = 100)]
    name: String,
    #[schema(max_length = 10000, default = "")]
    description: Option<String>,
}

/// A project's new name and/or description (at least one).
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ProjectChange {
    /// 1 to 100 characters without control characters (surrounding spaces are dropped).
    #[schema(min_length = 1, max_length = 100)]
    name: Option<String>,
    #[schema(max_length = 10000)]
    description: Option<String>,
}

/// Create a project
#[utoipa::path(
    post,
    path = "/api/v1/projects",
    operation_id = "project_create",
    tag = "projects",
    request_body(content = NewProject, content_type = "application/json"),
    responses(
        (status = 201, description = "Created.", body = ProjectBody),
        (status = 400, description = "A bad field (named), or not a JSON body.", body = Message),
    )
)]
pub async fn create(
    State(state): State<AppState>,
    caller: Caller,
    Json(body): Json<NewProject>,
) -> Result<(StatusCode, Json<ProjectBody>), ApiError> {
    let now = OffsetDateTime::now_utc();
    let project = Project {
        id: Uuid::new_v4(),
        name: project_name(&body.name).map_err(ApiError::BadRequest)?,
        description: project_description(body.description.unwrap_or_default())
            .map_err(ApiError::BadRequest)?,
        owner: caller.name,
        created: now,
        updated: now,
        files: 0,
        size: 0,
    };
    state.db.create_project(project.clone()).await?;
    tracing::info!(project_id = %project.id, "project created");
    Ok((StatusCode::CREATED, Json(ProjectBody::from(&project))))
}

/// List projects
///
/// Newest first.
#[utoipa::path(
    get,
    path = "/api/v1/projects",
    operation_id = "project_list",
    tag = "projects",
    responses(
        (status = 200, description = "The projects the key may see.", body = Vec<ProjectBody>),
    )
)]
pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Json<Vec<ProjectBody>>, ApiError> {
    let projects = state.db.projects(caller.scope).await?;
    Ok(Json(projects.iter().map(ProjectBody::from).collect()))
}

/// Inspect a project
#[utoipa::path(
    get,
    path = "/api/v1/projects/{id}",
    operation_id = "project_inspect",
    tag = "projects",
    params(("id" = Uuid, Path, description = "The project's id.")),
    responses(
        (status = 200, description = "The project.", body = ProjectBody),
        (status = 404, description = "No such project (or another key's).", body = Message),
    )
)]
pub async fn inspect(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<ProjectBody>, ApiError> {
    Ok(Json(ProjectBody::from(&find(&state, &caller, &id).await?)))
}

/// Rename or describe a project
#[utoipa::path(
    patch,
    path = "/api/v1/projects/{id}",
    operation_id = "project_update",
    tag = "projects",
    params(("id" = Uuid, Path, description = "The project's id.")),
    request_body(content = ProjectChange, content_type = "application/json"),
    responses(
        (status = 200, description = "Changed.", body = ProjectBody),
        (status = 400, description = "A bad field (named), nothing to change, or not a JSON body.", body = Message),
        (status = 404, description = "No such project (or another key's).", body = Message),
    )
)]
pub async fn update(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    Json(body): Json<ProjectChange>,
) -> Result<Json<ProjectBody>, ApiError> {
    let id = find(&state, &caller, &id).await?.id;
    let edit =
        ProjectEdit::new(body.name.as_deref(), body.description).map_err(ApiError::BadRequest)?;
    let project = state
        .db
        .update_project(id, edit.name, edit.description, OffsetDateTime::now_utc())
        .await?
        .ok_or_else(|| not_found(id))?;
    Ok(Json(ProjectBody::from(&project)))
}

/// Delete a project
///
/// With its files; its finished jobs stay as runs.
#[utoipa::path(
    delete,
    path = "/api/v1/projects/{id}",
    operation_id = "project_delete",
    tag = "projects",
    params(("id" = Uuid, Path, description = "The project's id.")),
    responses(
        (status = 204, description = "Deleted."),
        (status = 404, description = "No such project (or another key's).", body = Message),
        (status = 409, description = "It has a queued or running job.", body = Message),
    )
)]
pub async fn delete(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let id = find(&state, &caller, &id).await?.id;
    let _lock = state.storage.blob_lock().await;
    match state.db.delete_project(id).await? {
        DeleteProject::Deleted(blobs) => release_blobs(&state, blobs).await?,
        DeleteProject::Busy(job) => {
            return Err(ApiError::Conflict(format!(
                "project {id} has a job that is queued or running ({job}): cancel it or wait for it, then delete the project"
            )));
        }
        DeleteProject::NotFound => return Err(not_found(id)),
    }
    tracing::info!(project_id = %id, "project deleted");
    Ok(StatusCode::NO_CONTENT)
}

/// List a project's files
#[utoipa::path(
    get,
    path = "/api/v1/projects/{id}/files",
    operation_id = "project_files",
    tag = "projects",
    params(("id" = Uuid, Path, description = "The project's id.")),
    responses(
        (status = 200, description = "The files.", body = Vec<FileBody>),
        (status = 404, description = "No such project (or another key's).", body = Message),
    )
)]
pub async fn files(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Vec<FileBody>>, ApiError> {
    let id = find(&state, &caller, &id).await?.id;
    let files = state.db.project_files(id).await?;
    Ok(Json(files.iter().map(FileBody::from).collect()))
}

/// Write a project file
///
/// The raw body is the file's content (any bytes), streamed to disk. A job that already took
/// the old content keeps reading it.
#[utoipa::path(
    put,
    path = "/api/v1/projects/{id}/files/{*path}",
    operation_id = "project_file_put",
    tag = "projects",
    params(
        ("id" = Uuid, Path, description = "The project's id."),
        ("path" = String, Path, description = "The file's path: relative and `/`-separated (its slashes are not escaped), without empty, `.` or `..` parts, backslashes or control characters."),
    ),
    request_body(content = Binary, content_type = "application/octet-stream", description = "The file's content."),
    responses(
        (status = 201, description = "A new file.", body = FileBody),
        (status = 200, description = "Replaced.", body = FileBody),
        (status = 400, description = "A bad path, or the body could not be read.", body = Message),
        (status = 404, description = "No such project (or another key's).", body = Message),
        (status = 413, description = "Larger than `projects.max_file_size`, or the project would be larger than `projects.max_project_size` or hold more than `projects.max_files` files.", body = Message),
        (status = 507, description = "The server's disk is full.", body = Message),
    )
)]
pub async fn put_file(
    state: State<AppState>,
    caller: Caller,
    path: Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    match store_file(state, caller, path, headers, body).await {
        Ok(stored) => stored.into_response(),
        // A refused body may still be on its way: the connection is not reused.
        Err(e) => e.closing_connection(),
    }
}

async fn store_file(
    State(state): State<AppState>,
    caller: Caller,
    Path((id, path)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Result<(StatusCode, Json<FileBody>), ApiError> {
    let id = find(&state, &caller, &id).await?.id;
    check_project_path(&path).map_err(ApiError::BadRequest)?;
    let limits = &state.config.projects;
    let too_large = || {
        ApiError::TooLarge(format!(
            "{path:?} is larger than the limit of {} a file (projects.max_file_size)",
            human_bytes(limits.max_file_size)
        ))
    };
    let writer = state.storage.blob_writer();
    let staged = feed(body, &headers, writer, limits.max_file_size, too_large).await?;
    let existed = state.db.project_file(id, path.clone()).await?.is_some();
    let stored = commit(&state, id, vec![(path, staged)]).await?;
    let status = if existed {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    Ok((status, Json(FileBody::from(&stored[0]))))
}

/// What a tarball put in a project.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "PascalCase")]
pub struct Imported {
    imported: usize,
    files: Vec<FileBody>,
}

/// Import a source tree
///
/// A `.tar.gz` of a source tree, imported all or nothing: each regular file becomes the project's
/// file at its path (replacing one there); folders are skipped; links and bad paths are refused.
#[utoipa::path(
    post,
    path = "/api/v1/projects/{id}/files",
    operation_id = "project_import",
    tag = "projects",
    params(("id" = Uuid, Path, description = "The project's id.")),
    request_body(content = Binary, content_type = "application/gzip", description = "A gzip'd tar of the files."),
    responses(
        (status = 200, description = "Imported.", body = Imported),
        (status = 400, description = "Not a `.tar.gz`, a bad path, a link, or the body could not be read.", body = Message),
        (status = 404, description = "No such project (or another key's).", body = Message),
        (status = 413, description = "The tarball, a file or the project would be larger than `projects.max_project_size` or `projects.max_file_size`, or the project would hold more than `projects.max_files` files.", body = Message),
        (status = 507, description = "The server's disk is full.", body = Message),
    )
)]
pub async fn import(
    state: State<AppState>,
    caller: Caller,
    id: Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    match import_tarball(state, caller, id, headers, body).await {
        Ok(imported) => imported.into_response(),
        Err(e) => e.closing_connection(),
    }
}

async fn import_tarball(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<Imported>, ApiError> {
    let id = find(&state, &caller, &id).await?.id;
    let limits = &state.config.projects;
    // Compressed source is smaller than the files it holds: the project's limit bounds both.
    let too_large = || {
        ApiError::TooLarge(format!(
            "the tarball is larger than the limit of {} a project (projects.max_project_size)",
            human_bytes(limits.max_project_size)
        ))
    };
    // The paths it holds, so that the importer can refuse as soon as the tarball holds more new
    // files than the project has room for (commit checks again, with the rows).
    let existing = state
        .db
        .project_files(id)
        .await?
        .into_iter()
        .map(|f| f.path)
        .collect();
    let importer = state
        .storage
        .tar_gz_importer(limits.clone(), state.config.inflation, existing);
    let staged = feed(body, &headers, importer, limits.max_project_size, too_large).await?;
    let files = commit(&state, id, staged).await?;
    tracing::info!(project_id = %id, files = files.len(), "tarball imported");
    Ok(Json(Imported {
        imported: files.len(),
        files: files.iter().map(FileBody::from).collect(),
    }))
}

/// Streams a request body into `writer`, refusing it with `too_large` once it declares or
/// sends more than `limit` bytes; returns what the writer made of it.
async fn feed<T>(
    body: Body,
    headers: &HeaderMap,
    mut writer: ChunkWriter<T>,
    limit: u64,
    too_large: impl Fn() -> ApiError,
) -> Result<T, ApiError> {
    if content_length(headers).is_some_and(|n| n > limit) {
        return Err(too_large());
    }
    let mut size = 0u64;
    let mut stream = body.into_data_stream();
    let written = async {
        while let Some(chunk) = stream.next().await {
            let chunk =
                chunk.map_err(|e| ApiError::BadRequest(format!("cannot read the body: {e}")))?;
            size += chunk.len() as u64;
            if size > limit {
                return Err(too_large());
            }
            writer.write(chunk).await?;
        }
        Ok(())
    }
    .await;
    if let Err(e) = written {
        // What was staged is gone before the client hears why.
        writer.abandon().await;
        return Err(e);
    }
    Ok(writer.finish().await?)
}

/// Makes staged contents the project's files at their paths, all or none.
async fn commit(
    state: &AppState,
    id: Uuid,
    staged: Vec<(String, StagedBlob)>,
) -> Result<Vec<ProjectFile>, ApiError> {
    let now = OffsetDateTime::now_utc();
    let files: Vec<ProjectFile> = staged
        .iter()
        .map(|(path, blob)| ProjectFile {
            path: path.clone(),
            size: blob.size,
            sha256: blob.sha256.clone(),
            modified: now,
        })
        .collect();
    let _lock = state.storage.blob_lock().await;
    for (_, blob) in staged {
        state
            .storage
            .commit_blob(blob)
            .await
            .map_err(|e| ApiError::from(UploadError::from(e)))?;
    }
    let stored = state
        .db
        .put_files(
            id,
            files.clone(),
            state.config.projects.max_project_size,
            state.config.projects.max_files,
        )
        .await?;
    let new_blobs = || files.iter().map(|f| f.sha256.clone()).collect();
    match stored {
        PutFile::Stored { replaced } => {
            release_blobs(state, replaced).await?;
            Ok(files)
        }
        PutFile::ProjectTooLarge(total) => {
            release_blobs(state, new_blobs()).await?;
            Err(ApiError::TooLarge(format!(
                "the project would hold {}, more than its limit of {} (projects.max_project_size): delete files first",
                human_bytes(total),
                human_bytes(state.config.projects.max_project_size)
            )))
        }
        PutFile::TooManyFiles(count) => {
            release_blobs(state, new_blobs()).await?;
            Err(ApiError::TooLarge(format!(
                "the project would hold {count} files, more than its limit of {} (projects.max_files): delete files first",
                state.config.projects.max_files
            )))
        }
        PutFile::NoProject => {
            release_blobs(state, new_blobs()).await?;
            Err(not_found(id))
        }
    }
}

/// Read a project file
#[utoipa::path(
    get,
    path = "/api/v1/projects/{id}/files/{*path}",
    operation_id = "project_file_get",
    tag = "projects",
    params(
        ("id" = Uuid, Path, description = "The project's id."),
        ("path" = String, Path, description = "The file's path (its slashes are not escaped)."),
    ),
    responses(
        (status = 200, description = "The content, streamed.", body = Binary, content_type = "application/octet-stream",
            headers(
                ("ETag" = String, description = "The content's sha256, quoted."),
                ("Content-Length" = u64, description = "Bytes."),
            )),
        (status = 404, description = "No such project (or another key's), or no such file.", body = Message),
    )
)]
pub async fn get_file(
    State(state): State<AppState>,
    caller: Caller,
    Path((id, path)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let id = find(&state, &caller, &id).await?.id;
    let file = state
        .db
        .project_file(id, path.clone())
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("project {id} has no file {path:?}")))?;
    let blob = tokio::fs::File::open(state.storage.blob_path(&file.sha256))
        .await
        .map_err(|e| ApiError::Internal(anyhow::Error::from(e).context("cannot read the file")))?;
    let body = Body::from_stream(tokio_util::io::ReaderStream::new(blob));
    Ok((
        [
            (header::CONTENT_TYPE, "application/octet-stream".to_string()),
            (header::CONTENT_LENGTH, file.size.to_string()),
            (header::ETAG, format!("\"{}\"", file.sha256)),
        ],
        body,
    )
        .into_response())
}

/// Delete a project file
#[utoipa::path(
    delete,
    path = "/api/v1/projects/{id}/files/{*path}",
    operation_id = "project_file_delete",
    tag = "projects",
    params(
        ("id" = Uuid, Path, description = "The project's id."),
        ("path" = String, Path, description = "The file's path (its slashes are not escaped)."),
    ),
    responses(
        (status = 204, description = "Deleted."),
        (status = 404, description = "No such project (or another key's), or no such file.", body = Message),
    )
)]
pub async fn delete_file(
    State(state): State<AppState>,
    caller: Caller,
    Path((id, path)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    let id = find(&state, &caller, &id).await?.id;
    let _lock = state.storage.blob_lock().await;
    let sha = state
        .db
        .delete_file(id, path.clone())
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("project {id} has no file {path:?}")))?;
    release_blobs(&state, vec![sha]).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Removes the blobs no file names any more. The caller holds the blob lock.
async fn release_blobs(state: &AppState, blobs: Vec<String>) -> Result<(), ApiError> {
    for sha in blobs {
        if !state.db.blob_in_use(sha.clone()).await? {
            state
                .storage
                .remove_blob(&sha)
                .await
                .map_err(|e| ApiError::Internal(e.into()))?;
        }
    }
    Ok(())
}

pub async fn find(state: &AppState, caller: &Caller, id: &str) -> Result<Project, ApiError> {
    let id = parse_id(id, "project")?;
    match state.db.project(id).await? {
        Some(p) if caller.scope.sees(p.owner.as_deref()) => Ok(p),
        _ => Err(not_found(id)),
    }
}

fn not_found(id: Uuid) -> ApiError {
    ApiError::NotFound(format!("no such project: {id}"))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    use bytes::Bytes;
    use sha2::{Digest, Sha256};

    use super::*;
    use crate::storage::Storage;

    const LIMIT: u64 = 10;

    fn too_large() -> ApiError {
        ApiError::TooLarge("over the limit".into())
    }

    fn declaring(length: u64) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(header::CONTENT_LENGTH, length.into());
        headers
    }

    /// A body sent in `chunks`, without a length.
    fn streamed(chunks: &[&'static [u8]]) -> Body {
        let chunks: Vec<Result<Bytes, std::io::Error>> =
            chunks.iter().map(|c| Ok(Bytes::from_static(c))).collect();
        Body::from_stream(futures_util::stream::iter(chunks))
    }

    /// A body that fails when it is read, and says whether it was.
    fn unread() -> (Body, Arc<AtomicBool>) {
        let read = Arc::new(AtomicBool::new(false));
        let flag = read.clone();
        let stream = futures_util::stream::poll_fn(move |_| {
            flag.store(true, Ordering::Relaxed);
            std::task::Poll::Ready(Some(Err::<Bytes, _>(std::io::Error::other("read"))))
        });
        (Body::from_stream(stream), read)
    }

    /// Feeds `body` to a blob writer of a new storage folder, which is handed back with the
    /// result so that a staged blob can be looked at.
    async fn feed_blob(
        body: Body,
        headers: &HeaderMap,
    ) -> (Result<StagedBlob, ApiError>, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let storage = Storage::open(dir.path()).unwrap();
        let fed = feed(body, headers, storage.blob_writer(), LIMIT, too_large).await;
        (fed, dir)
    }

    #[tokio::test]
    async fn a_declared_length_over_the_limit_is_refused_before_reading() {
        let (body, read) = unread();
        let (fed, _) = feed_blob(body, &declaring(LIMIT + 1)).await;
        assert!(
            matches!(&fed, Err(ApiError::TooLarge(m)) if m == "over the limit"),
            "{fed:?}"
        );
        assert!(!read.load(Ordering::Relaxed), "the body was read");
    }

    #[tokio::test]
    async fn a_body_streamed_past_the_limit_is_refused() {
        for (what, headers) in [
            ("without a length", HeaderMap::new()),
            ("declaring less than it sends", declaring(4)),
        ] {
            let body = streamed(&[b"abcd", b"efgh", b"ijk"]);
            let (fed, dir) = feed_blob(body, &headers).await;
            assert!(
                matches!(&fed, Err(ApiError::TooLarge(m)) if m == "over the limit"),
                "{what}: {fed:?}"
            );
            // The partial blob is gone before the refusal is answered.
            let left = std::fs::read_dir(dir.path().join("tmp")).unwrap().count();
            assert_eq!(left, 0, "{what}");
        }
    }

    #[tokio::test]
    async fn a_body_of_exactly_the_limit_is_taken() {
        for (what, headers) in [
            ("without a length", HeaderMap::new()),
            ("declaring it", declaring(LIMIT)),
        ] {
            let body = streamed(&[b"abcd", b"efgh", b"ij"]);
            let (fed, _dir) = feed_blob(body, &headers).await;
            let blob = fed.unwrap_or_else(|e| panic!("{what}: {e:?}"));
            assert_eq!(blob.size, LIMIT, "{what}");
            assert_eq!(
                blob.sha256,
                format!("{:x}", Sha256::digest(b"abcdefghij")),
                "{what}"
            );
        }
    }

    #[tokio::test]
    async fn a_body_that_fails_to_arrive_is_a_bad_request() {
        let chunks: Vec<Result<Bytes, std::io::Error>> = vec![
            Ok(Bytes::from_static(b"abc")),
            Err(std::io::Error::other("connection reset")),
        ];
        let body = Body::from_stream(futures_util::stream::iter(chunks));
        let (fed, _) = feed_blob(body, &HeaderMap::new()).await;
        assert!(
            matches!(&fed, Err(ApiError::BadRequest(m)) if m == "cannot read the body: connection reset"),
            "{fed:?}"
        );
    }
}
