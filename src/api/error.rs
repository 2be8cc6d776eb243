//! The one error type of the HTTP layer: every failure becomes a status and `{"message": ...}`.
//!
//! An internal error (a fault of the server's: its database, its files) tells the client only
//! that it happened and under which request id; the detail, which may name the storage folder's
//! paths or quote SQLite, goes to the server's log under that id.

use axum::Json;
use axum::extract::multipart::MultipartError;
use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
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

impl From<QueryRejection> for ApiError {
    fn from(rejection: QueryRejection) -> Self {
        ApiError::BadRequest(format!("bad query string: {}", rejection.body_text()))
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
