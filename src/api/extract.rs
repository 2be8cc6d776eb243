//! What handlers take from a request: the [`Caller`] the key check found, and `Json` and `Path`
//! extractors whose rejections are [`ApiError`]s (so a malformed body or path gets
//! `{"message"}`), and a path's id and a body's declared length.

use axum::extract::{FromRequest, FromRequestParts};
use axum::http::request::Parts;
use uuid::Uuid;

use super::error::ApiError;
use crate::model::Scope;

/// Who is calling, as far as ownership goes: put on each request by the key check
/// (`auth.rs`).
#[derive(Debug, Clone)]
pub struct Caller {
    /// The key's name, recorded as the owner of what it creates; none without authentication.
    pub name: Option<String>,
    pub scope: Scope,
}

impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Caller, ApiError> {
        parts
            .extensions
            .get::<Caller>()
            .cloned()
            .ok_or_else(|| ApiError::Internal(anyhow::anyhow!("the request was not authenticated")))
    }
}

/// `axum::Json` whose rejection is an [`ApiError`], so a malformed body gets `{"message"}`.
#[derive(FromRequest)]
#[from_request(via(axum::Json), rejection(ApiError))]
pub struct Json<T>(pub T);

/// `axum::extract::Path` whose rejection is an [`ApiError`], so a path segment that is not UTF-8
/// once percent-decoded (`/api/v1/prechecks/%FF`) gets `{"message"}`.
#[derive(axum::extract::FromRequestParts)]
#[from_request(via(axum::extract::Path), rejection(ApiError))]
pub struct Path<T>(pub T);

impl<T: serde::Serialize> axum::response::IntoResponse for Json<T> {
    fn into_response(self) -> axum::response::Response {
        axum::Json(self.0).into_response()
    }
}

/// A path id: anything that is not a UUID names nothing, so it is a 404 like an unknown id.
pub fn parse_id(id: &str, what: &str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(id)
        .map_err(|_| ApiError::NotFound(format!("no such {what}: {id:?} (ids are UUIDs)")))
}

/// The length a request declares for its body, if it does.
pub fn content_length(headers: &axum::http::HeaderMap) -> Option<u64> {
    headers
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
}
