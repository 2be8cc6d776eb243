//! Everything HTTP: the router, the error type and one module per resource. Docker-style
//! PascalCase DTOs live here and nowhere else.

mod auth;
mod error;
mod events;
mod jobs;
mod logs;
mod prechecks;
mod projects;
mod system;
mod uploads;
pub mod webhooks;

use axum::Router;
use axum::extract::Request;
use axum::extract::{DefaultBodyLimit, FromRequest};
use axum::http::{HeaderValue, Method, Uri};
use axum::middleware::Next;
use axum::response::Response;
use axum::routing::{get, post, put};
use uuid::Uuid;

pub use auth::Caller;
pub use error::ApiError;
pub use prechecks::RunBody;
pub use uploads::LayoutBody;

use crate::server::AppState;

/// The whole API.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/health", get(system::health))
        .route("/api/v1/queue", get(system::queue))
        .route("/metrics", get(system::metrics))
        .route("/api/v1/events", get(events::events))
        .route(
            "/api/v1/uploads",
            // The upload handler enforces `server.max_upload_size` itself, while streaming.
            post(uploads::create)
                .layer(DefaultBodyLimit::disable())
                .get(uploads::list),
        )
        .route(
            "/api/v1/uploads/{id}",
            get(uploads::inspect).delete(uploads::delete),
        )
        .route(
            "/api/v1/prechecks",
            post(prechecks::create).get(prechecks::list),
        )
        .route(
            "/api/v1/prechecks/{id}",
            get(prechecks::inspect).delete(prechecks::cancel),
        )
        .route("/api/v1/prechecks/{id}/wait", post(prechecks::wait))
        .route("/api/v1/prechecks/{id}/logs", get(logs::logs))
        .route("/api/v1/prechecks/{id}/output", get(prechecks::output))
        .route("/api/v1/debug/prechecks/{id}", get(prechecks::debug))
        .route(
            "/api/v1/projects",
            post(projects::create).get(projects::list),
        )
        .route(
            "/api/v1/projects/{id}",
            get(projects::inspect)
                .patch(projects::update)
                .delete(projects::delete),
        )
        .route(
            "/api/v1/projects/{id}/files",
            // The handler enforces `projects.max_project_size` itself, while streaming.
            get(projects::files)
                .post(projects::import)
                .layer(DefaultBodyLimit::disable()),
        )
        .route(
            "/api/v1/projects/{id}/files/{*path}",
            // The handler enforces `projects.max_file_size` itself, while streaming.
            put(projects::put_file)
                .layer(DefaultBodyLimit::disable())
                .get(projects::get_file)
                .delete(projects::delete_file),
        )
        .route(
            "/api/v1/projects/{id}/jobs",
            post(jobs::create).get(jobs::list),
        )
        .route(
            "/api/v1/projects/{id}/jobs/{job}",
            get(jobs::inspect).delete(jobs::cancel),
        )
        .route("/api/v1/projects/{id}/jobs/{job}/wait", post(jobs::wait))
        .route("/api/v1/projects/{id}/jobs/{job}/logs", get(jobs::logs))
        .route(
            "/api/v1/projects/{id}/jobs/{job}/artifacts",
            get(jobs::artifacts),
        )
        .route(
            "/api/v1/projects/{id}/jobs/{job}/artifacts/{*path}",
            get(jobs::artifact),
        )
        .fallback(no_route)
        .method_not_allowed_fallback(wrong_method)
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::authenticate,
        ))
        .layer(
            tower_http::trace::TraceLayer::new_for_http()
                .make_span_with(|req: &Request| {
                    let id = req
                        .headers()
                        .get(REQUEST_ID)
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or_default();
                    tracing::info_span!(
                        "request",
                        request_id = %id,
                        method = %req.method(),
                        path = %req.uri().path(),
                    )
                })
                .on_request(())
                .on_response(
                    tower_http::trace::DefaultOnResponse::new().level(tracing::Level::INFO),
                ),
        )
        .layer(axum::middleware::from_fn(request_id))
        .with_state(state)
}

/// The header that carries a request's id, both ways.
const REQUEST_ID: &str = "x-request-id";

/// Gives every request an id, the client's `X-Request-Id` if it is a plain token of at most 128
/// characters (else a new UUID), which every log line of the request carries and the answer
/// echoes.
async fn request_id(mut req: Request, next: Next) -> Response {
    let given = req
        .headers()
        .get(REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|v| {
            (1..=128).contains(&v.len())
                && v.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':'))
        })
        .map(String::from);
    let id = given.unwrap_or_else(|| Uuid::new_v4().to_string());
    let value = HeaderValue::from_str(&id).unwrap_or_else(|_| HeaderValue::from_static("-"));
    req.headers_mut().insert(REQUEST_ID, value.clone());
    let mut response = next.run(req).await;
    response.headers_mut().insert(REQUEST_ID, value);
    response
}

async fn no_route(method: Method, uri: Uri) -> ApiError {
    ApiError::NotFound(format!(
        "no route for {method} {}: see the API table in README.md",
        uri.path()
    ))
}

async fn wrong_method(method: Method, uri: Uri) -> ApiError {
    ApiError::MethodNotAllowed(format!(
        "{method} is not allowed on {}: see the API table in README.md",
        uri.path()
    ))
}

/// `axum::Json` whose rejection is an [`ApiError`], so a malformed body gets `{"message"}`.
#[derive(FromRequest)]
#[from_request(via(axum::Json), rejection(ApiError))]
pub struct Json<T>(pub T);

impl<T: serde::Serialize> axum::response::IntoResponse for Json<T> {
    fn into_response(self) -> axum::response::Response {
        axum::Json(self.0).into_response()
    }
}

/// A path id: anything that is not a UUID names nothing, so it is a 404 like an unknown id.
fn parse_id(id: &str, what: &str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(id)
        .map_err(|_| ApiError::NotFound(format!("no such {what}: {id:?} (ids are UUIDs)")))
}

/// The length a request declares for its body, if it does.
fn content_length(headers: &axum::http::HeaderMap) -> Option<u64> {
    headers
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
}

/// A time as the API writes it: RFC 3339, UTC.
pub fn rfc3339(t: time::OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}
