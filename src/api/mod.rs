//! Everything HTTP: the router, the error type and one module per resource. Docker-style
//! PascalCase DTOs live here and nowhere else.

mod auth;
mod conn;
mod error;
mod events;
mod jobs;
mod logs;
mod openapi;
mod page;
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
use utoipa_axum::router::{OpenApiRouter, UtoipaMethodRouterExt};
use utoipa_axum::routes;
use uuid::Uuid;

pub use auth::Caller;
pub use conn::serve;
pub use error::ApiError;
pub use prechecks::RunBody;
pub use uploads::LayoutBody;

use crate::server::AppState;

/// The whole API: [`routes`] behind the key check, the request's trace span and its id.
pub fn router(state: AppState) -> Router {
    let (routes, _) = routes();
    routes
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

/// Every route the server serves, with the `{"message"}` fallbacks for unknown routes and wrong
/// methods, and the OpenAPI document they make. Each handler is registered once, through
/// utoipa-axum's `routes!`, which puts it in both from its `#[utoipa::path]`: a route cannot be
/// served without being documented. Add routes here, and only with `routes!`.
pub fn routes() -> (Router<AppState>, utoipa::openapi::OpenApi) {
    // The handlers that read a body enforce their size limits themselves, while streaming.
    let unlimited = || DefaultBodyLimit::disable();
    let (router, spec) = OpenApiRouter::with_openapi(openapi::base())
        .routes(routes!(system::health))
        .routes(routes!(openapi::spec))
        .routes(routes!(system::queue))
        .routes(routes!(system::metrics))
        .routes(routes!(events::events))
        .routes(routes!(uploads::create).layer(unlimited()))
        .routes(routes!(uploads::list))
        .routes(routes!(uploads::inspect, uploads::delete))
        .routes(routes!(prechecks::create, prechecks::list))
        .routes(routes!(prechecks::inspect, prechecks::cancel))
        .routes(routes!(prechecks::wait))
        .routes(routes!(logs::logs))
        .routes(routes!(prechecks::output))
        .routes(routes!(prechecks::debug))
        .routes(routes!(projects::create, projects::list))
        .routes(routes!(
            projects::inspect,
            projects::update,
            projects::delete
        ))
        .routes(routes!(projects::files, projects::import).layer(unlimited()))
        .routes(routes!(projects::put_file).layer(unlimited()))
        .routes(routes!(projects::get_file, projects::delete_file))
        .routes(routes!(jobs::create, jobs::list))
        .routes(routes!(jobs::inspect, jobs::cancel))
        .routes(routes!(jobs::wait))
        .routes(routes!(jobs::logs))
        .routes(routes!(jobs::artifacts))
        .routes(routes!(jobs::artifact))
        .split_for_parts();
    let router = router
        .fallback(no_route)
        .method_not_allowed_fallback(wrong_method);
    (router, openapi::finish(spec))
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
