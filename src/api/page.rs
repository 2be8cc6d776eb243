//! Pages of a run list (`GET /api/v1/prechecks`, `GET /api/v1/projects/{id}/jobs`): `limit`
//! runs, newest first, and `before=<id>` for the runs older than that one. The answer stays a
//! bare JSON array (as the Python server's); the next page's cursor is in `X-Next-Before`.

use axum::Json;
use axum::http::{HeaderName, HeaderValue};
use axum::response::{IntoResponse, Response};
use uuid::Uuid;

use super::{ApiError, RunBody};
use crate::model::Run;

/// How many runs a page holds unless `limit` says otherwise.
pub const DEFAULT_LIMIT: usize = 100;
/// The most runs a page may hold.
pub const MAX_LIMIT: usize = 1000;

/// The header that holds the next page's `before`, present when there are older runs.
pub const NEXT_BEFORE: HeaderName = HeaderName::from_static("x-next-before");

/// Which page of a list to answer.
pub struct Page {
    pub limit: usize,
    pub before: Option<Uuid>,
}

impl Default for Page {
    fn default() -> Self {
        Page {
            limit: DEFAULT_LIMIT,
            before: None,
        }
    }
}

impl Page {
    /// Reads `limit` and `before` of a list's query; false for any other key. `what` names the
    /// listed runs in messages ("precheck", "job").
    pub fn take(&mut self, key: &str, value: &str, what: &str) -> Result<bool, ApiError> {
        match key {
            "limit" => {
                self.limit = value
                    .parse::<usize>()
                    .ok()
                    .filter(|n| (1..=MAX_LIMIT).contains(n))
                    .ok_or_else(|| {
                        ApiError::BadRequest(format!(
                            "limit: {value:?} must be a number of runs from 1 to {MAX_LIMIT} (default {DEFAULT_LIMIT})"
                        ))
                    })?;
                Ok(true)
            }
            "before" => {
                self.before = Some(Uuid::parse_str(value).map_err(|_| {
                    ApiError::BadRequest(format!(
                        "before: {value:?} is not a {what} id: give the X-Next-Before of the previous page"
                    ))
                })?);
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    /// How many rows to ask for: one more than a page, to know whether another page follows.
    pub fn fetch(&self) -> usize {
        self.limit + 1
    }

    /// The answer: the page's runs as a JSON array, and `X-Next-Before` when older runs follow.
    pub fn respond(&self, mut runs: Vec<Run>) -> Response {
        let more = runs.len() > self.limit;
        runs.truncate(self.limit);
        let body: Vec<RunBody> = runs.iter().map(RunBody::from).collect();
        let mut response = Json(body).into_response();
        // A UUID's text is always a header value.
        if more
            && let Some(last) = runs.last()
            && let Ok(value) = HeaderValue::from_str(&last.id.to_string())
        {
            response.headers_mut().insert(NEXT_BEFORE, value);
        }
        response
    }
}

/// The refusal of a `before` that is not a run of the list (another key's, another project's,
/// deleted meanwhile).
pub fn unknown_before(what: &str, id: Uuid) -> ApiError {
    ApiError::BadRequest(format!(
        "before: no such {what}: {id} (it may have been deleted meanwhile: start again from the first page)"
    ))
}
