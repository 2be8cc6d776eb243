//! The one error type of the HTTP layer: every failure becomes a status and `{"message": ...}`.
//!
//! An internal error (a fault of the server's: its database, its files) tells the client only
//! that it happened and under which request id; the detail, which may name the storage folder's
//! paths or quote SQLite, goes to the server's log under that id.

use axum::Json;
use axum::extract::multipart::MultipartError;
use axum::extract::rejection::{JsonRejection, PathRejection};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};

use super::request_id;
use crate::db::Trouble;
use crate::storage::UploadError;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    MethodNotAllowed(String),
    #[error("{0}")]
    Timeout(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Gone(String),
    #[error("{0}")]
    TooLarge(String),
    #[error("{0}")]
    Unprocessable(String),
    #[error("{0}")]
    InsufficientStorage(String),
    #[error("{0}")]
    Unavailable(String),
    #[error("{0:#}")]
    Internal(anyhow::Error),
}

/// The body of every error response.
#[derive(Serialize, Deserialize, utoipa::ToSchema)]
pub struct Message {
    /// What went wrong, and what to do about it.
    #[schema(example = "no such precheck: 40b2eaa4-5a55-4a44-9d3c-2c5f0f4c9a9e")]
    pub message: String,
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::Timeout(_) => StatusCode::REQUEST_TIMEOUT,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::Gone(_) => StatusCode::GONE,
            ApiError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::Unprocessable(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::InsufficientStorage(_) => StatusCode::INSUFFICIENT_STORAGE,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

/// The message of a 507: the disk is full.
pub const DISK_FULL: &str = "the server's disk is full: nothing was changed; free space (delete uploads or old runs) or ask its operator, then try again";

impl From<anyhow::Error> for ApiError {
    /// A failure that is the disk's or another process's doing says so, with a status a client
    /// can act on (507, 503); anything else is an internal error.
    fn from(e: anyhow::Error) -> ApiError {
        match crate::db::trouble(&e) {
            Some(Trouble::Full) => ApiError::InsufficientStorage(DISK_FULL.into()),
            Some(Trouble::Busy) => ApiError::Unavailable(format!(
                "the database is locked by another process (waited {} s): nothing was changed; try again",
                crate::db::BUSY_TIMEOUT.as_secs()
            )),
            Some(Trouble::ReadOnly) => ApiError::Unavailable(
                "the database cannot be written (a read-only file or file system): nothing was changed; ask the server's operator".into(),
            ),
            None => ApiError::Internal(e),
        }
    }
}

impl From<UploadError> for ApiError {
    fn from(e: UploadError) -> ApiError {
        match e {
            UploadError::Layout(e) => ApiError::BadRequest(e.to_string()),
            UploadError::Rejected(m) => ApiError::BadRequest(m),
            UploadError::Oversize(m) => ApiError::TooLarge(m),
            UploadError::Io(e) if e.kind() == std::io::ErrorKind::StorageFull => {
                ApiError::InsufficientStorage(DISK_FULL.into())
            }
            UploadError::Io(e) => {
                ApiError::Internal(anyhow::Error::from(e).context("cannot store the data"))
            }
        }
    }
}

impl ApiError {
    /// The answer with `Connection: close`: for a request whose body was not read to its end,
    /// so that the client does not send its next request on a connection the server is closing.
    pub fn closing_connection(self) -> Response {
        let mut response = self.into_response();
        response.headers_mut().insert(
            axum::http::header::CONNECTION,
            axum::http::HeaderValue::from_static("close"),
        );
        response
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let message = match &self {
            ApiError::Internal(e) => {
                // Made while the request is answered, inside its trace span: the log line
                // carries the request's id too.
                let id = request_id::current().unwrap_or_else(|| "-".into());
                tracing::error!("internal error (request {id}): {e:#}");
                format!("internal error (request {id})")
            }
            other => other.to_string(),
        };
        (status, Json(Message { message })).into_response()
    }
}

impl From<JsonRejection> for ApiError {
    fn from(rejection: JsonRejection) -> Self {
        let detail = rejection.body_text();
        let message = match rejection {
            JsonRejection::MissingJsonContentType(_) => {
                "expected a JSON body: send it with `Content-Type: application/json`".to_string()
            }
            JsonRejection::JsonSyntaxError(_) => format!("the body is not valid JSON: {detail}"),
            _ => format!("bad JSON body: {detail}"),
        };
        ApiError::BadRequest(message)
    }
}

impl From<PathRejection> for ApiError {
    fn from(rejection: PathRejection) -> Self {
        use axum::extract::path::ErrorKind;
        let message = match &rejection {
            PathRejection::FailedToDeserializePathParams(e) => match e.kind() {
                ErrorKind::InvalidUtf8InPathParam { key } => format!(
                    "the path's {key} is not UTF-8 once percent-decoded: percent-encode UTF-8 bytes only (e.g. %C3%A9 for \u{e9})"
                ),
                _ => format!("bad path: {}", rejection.body_text()),
            },
            _ => format!("bad path: {}", rejection.body_text()),
        };
        ApiError::BadRequest(message)
    }
}

impl From<MultipartError> for ApiError {
    fn from(e: MultipartError) -> Self {
        ApiError::BadRequest(format!(
            "bad multipart body ({}): send the layout as a `file` field, e.g. curl -F file=@chip_top.gds",
            e.body_text()
        ))
    }
}

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use axum::extract::{FromRequest, Multipart};
    use axum::http::{Request, header};

    use super::*;
    use crate::layout::LayoutError;

    /// An error's answer: its status, its `Connection` header and its body.
    async fn answer(response: Response) -> (u16, Option<String>, serde_json::Value) {
        let status = response.status().as_u16();
        let connection = response
            .headers()
            .get(header::CONNECTION)
            .map(|v| v.to_str().unwrap().to_string());
        let body = axum::body::to_bytes(response.into_body(), 1 << 16)
            .await
            .unwrap();
        (status, connection, serde_json::from_slice(&body).unwrap())
    }

    fn said(e: ApiError) -> (u16, String) {
        (e.status().as_u16(), e.to_string())
    }

    #[tokio::test]
    async fn every_error_is_its_status_and_a_message() {
        let cases = [
            (ApiError::BadRequest("a".into()), 400),
            (ApiError::Unauthorized("b".into()), 401),
            (ApiError::Forbidden("c".into()), 403),
            (ApiError::NotFound("d".into()), 404),
            (ApiError::MethodNotAllowed("e".into()), 405),
            (ApiError::Timeout("f".into()), 408),
            (ApiError::Conflict("g".into()), 409),
            (ApiError::Gone("h".into()), 410),
            (ApiError::TooLarge("i".into()), 413),
            (ApiError::Unprocessable("j".into()), 422),
            (ApiError::InsufficientStorage("k".into()), 507),
            (ApiError::Unavailable("l".into()), 503),
        ];
        for (e, status) in cases {
            let message = e.to_string();
            assert_eq!(
                answer(e.into_response()).await,
                (status, None, serde_json::json!({ "message": message }))
            );
        }
        // An internal error's detail (a path, SQLite's words) stays in the server's log.
        let e = ApiError::Internal(anyhow::anyhow!("disk I/O error").context("/srv/storage/db"));
        assert_eq!(e.status().as_u16(), 500);
        assert_eq!(
            answer(e.into_response()).await,
            (
                500,
                None,
                serde_json::json!({ "message": "internal error (request -)" })
            )
        );
        // A refusal before the body is read closes the connection.
        let e = ApiError::Unauthorized("an API key is required".into());
        assert_eq!(
            answer(e.closing_connection()).await,
            (
                401,
                Some("close".into()),
                serde_json::json!({ "message": "an API key is required" })
            )
        );
    }

    /// A full disk, a lock held by another process and a read-only database each say so, with a
    /// status a client can act on; any other fault is internal.
    #[test]
    fn the_disk_and_the_database_say_what_is_wrong() {
        let sqlite = |code| {
            anyhow::Error::from(rusqlite::Error::SqliteFailure(
                rusqlite::ffi::Error::new(code),
                None,
            ))
            .context("cannot create the run")
        };
        let full = (507, DISK_FULL.to_string());
        assert_eq!(said(sqlite(rusqlite::ffi::SQLITE_FULL).into()), full);
        let io = std::io::Error::from(std::io::ErrorKind::StorageFull);
        assert_eq!(said(anyhow::Error::from(io).context("write").into()), full);
        let busy = (
            503,
            "the database is locked by another process (waited 10 s): nothing was changed; try again"
                .to_string(),
        );
        assert_eq!(said(sqlite(rusqlite::ffi::SQLITE_BUSY).into()), busy);
        assert_eq!(said(sqlite(rusqlite::ffi::SQLITE_LOCKED).into()), busy);
        assert_eq!(
            said(sqlite(rusqlite::ffi::SQLITE_READONLY).into()),
            (
                503,
                "the database cannot be written (a read-only file or file system): nothing was changed; ask the server's operator"
                    .into()
            )
        );
        let other = ApiError::from(sqlite(rusqlite::ffi::SQLITE_CORRUPT));
        assert!(matches!(other, ApiError::Internal(_)), "{other}");
        assert!(DISK_FULL.starts_with("the server's disk is full: nothing was changed;"));
    }

    #[test]
    fn upload_errors_are_the_clients_or_the_disks() {
        let layout = LayoutError::NotALayout("\"PK\"".into());
        let message = layout.to_string();
        assert_eq!(said(UploadError::Layout(layout).into()), (400, message));
        assert_eq!(
            said(UploadError::Rejected("the path \"..\" contains '..'".into()).into()),
            (400, "the path \"..\" contains '..'".into())
        );
        assert_eq!(
            said(UploadError::Oversize("larger than 10 GiB".into()).into()),
            (413, "larger than 10 GiB".into())
        );
        let full = std::io::Error::from(std::io::ErrorKind::StorageFull);
        assert_eq!(
            said(UploadError::Io(full).into()),
            (507, DISK_FULL.to_string())
        );
        let denied = std::io::Error::from(std::io::ErrorKind::PermissionDenied);
        let e = ApiError::from(UploadError::Io(denied));
        assert!(
            matches!(&e, ApiError::Internal(e) if format!("{e:#}").starts_with("cannot store the data")),
            "{e}"
        );
    }

    /// The rejections of axum's extractors (`Json` and `Path` are `extract.rs`'s).
    #[tokio::test]
    async fn bad_multipart_bodies_say_so() {
        let request = Request::builder()
            .header(header::CONTENT_TYPE, "multipart/form-data; boundary=X")
            .body(Body::from("not multipart"))
            .unwrap();
        let mut multipart = Multipart::from_request(request, &()).await.unwrap();
        let e = multipart.next_field().await.unwrap_err();
        let (status, message) = said(e.into());
        assert_eq!(status, 400);
        assert!(message.starts_with("bad multipart body ("), "{message}");
        assert!(
            message
                .ends_with("): send the layout as a `file` field, e.g. curl -F file=@chip_top.gds"),
            "{message}"
        );
    }
}
