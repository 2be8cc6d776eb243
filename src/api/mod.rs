//! Everything HTTP: the router and one module per resource, over the parts they share. Docker-style
//! PascalCase DTOs live here and nowhere else.
//!
//! This file is the top: it assembles the router from its children, and no child uses what is
//! defined here. What children share has a module of its own: `state` (what a handler may use),
//! `error` (the one error type), `extract` (the caller, `Json`, `Path`), `query` (typed query
//! strings), `respond` (downloads, tarballs, times), `request_id`, `page` (run lists), `runs`
//! (what prechecks and jobs share: the run's body, `/wait`, cancel) and `logs` (a run's log).

mod auth;
mod conn;
mod error;
mod events;
mod extract;
mod jobs;
mod logs;
mod openapi;
mod page;
mod prechecks;
mod projects;
mod query;
mod request_id;
mod respond;
mod runs;
mod state;
mod system;
mod uploads;

use axum::extract::DefaultBodyLimit;
use axum::extract::Request;
use axum::http::{Method, Uri};
use axum::{Extension, Router};
use utoipa_axum::router::{OpenApiRouter, UtoipaMethodRouterExt};
use utoipa_axum::routes;

pub use conn::serve;
pub use error::{ApiError, Message};
pub use respond::rfc3339;
pub use runs::{RunBody, WaitBody};
pub use state::AppState;
pub use system::Health;
pub use uploads::{DieBody, LayoutBody, UploadBody};

/// The whole API: [`routes`] behind the key check, the request's trace span and its id.
pub fn router(state: AppState) -> Router {
    let (routes, spec) = routes();
    routes
        .layer(Extension(openapi::Document::new(&spec)))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::authenticate,
        ))
        .layer(
            tower_http::trace::TraceLayer::new_for_http()
                .make_span_with(|req: &Request| {
                    let id = req
                        .headers()
                        .get(request_id::HEADER)
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
        .layer(axum::middleware::from_fn(request_id::middleware))
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
        .routes(routes!(prechecks::logs))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn unknown_routes_and_wrong_methods_say_where_to_look() {
        let uri: Uri = "/api/v1/precheck?x=1".parse().unwrap();
        let e = no_route(Method::GET, uri.clone()).await;
        assert_eq!(
            (e.status().as_u16(), e.to_string()),
            (
                404,
                "no route for GET /api/v1/precheck: see the API table in README.md".into()
            )
        );
        let e = wrong_method(Method::PATCH, uri).await;
        assert_eq!(
            (e.status().as_u16(), e.to_string()),
            (
                405,
                "PATCH is not allowed on /api/v1/precheck: see the API table in README.md".into()
            )
        );
    }
}
