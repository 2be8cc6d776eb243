//! How answers are written that are not one JSON body: a file as a download, a folder as a
//! streamed `.tar.gz`; and how the API writes a time.

use anyhow::Context;
use axum::body::Body;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use tokio_stream::wrappers::ReceiverStream;

use super::error::ApiError;
use crate::storage::{ChunkSender, write_tar_gz};

/// A time as the API writes it: RFC 3339, UTC.
pub fn rfc3339(t: time::OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// An opened file as a streamed download of `len` bytes named `filename` (which must be safe
/// in a header: the callers keep only letters, digits and `_-.`).
pub fn attachment(file: std::fs::File, len: u64, filename: &str) -> Response {
    (
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
        .into_response()
}

/// A folder as a streamed `.tar.gz` download whose entries start with `prefix/`.
pub async fn tar_gz_response(
    dir: std::path::PathBuf,
    prefix: String,
) -> Result<Response, ApiError> {
    tokio::fs::create_dir_all(&dir)
        .await
        .with_context(|| format!("cannot create {}", dir.display()))?;
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
