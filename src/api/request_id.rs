//! Every request's id: the client's `X-Request-Id` if it is a plain token, else a new UUID. The
//! answer echoes it, the request's trace span carries it (so every log line of the request has
//! it), and an internal error names it instead of its detail (`error.rs`).

use axum::extract::Request;
use axum::http::HeaderValue;
use axum::middleware::Next;
use axum::response::Response;
use uuid::Uuid;

/// The header that carries a request's id, both ways (lower case, as `http` names headers).
pub const HEADER: &str = "x-request-id";

/// The header as the OpenAPI document spells it.
pub const HEADER_NAME: &str = "X-Request-Id";

tokio::task_local! {
    /// The id of the request being answered, for what is made while it is (an error's answer).
    static CURRENT: String;
}

/// The id of the request whose answer is being made, if any: set by [`middleware`] around the
/// rest of the request's handling.
pub fn current() -> Option<String> {
    CURRENT.try_with(String::clone).ok()
}

/// Gives every request an id, the client's `X-Request-Id` if it is a plain token of at most 128
/// characters (else a new UUID), which every log line of the request carries and the answer
/// echoes. The id goes on in the request's header (which the trace span reads) and in
/// [`current`] while the answer is made.
pub async fn middleware(mut req: Request, next: Next) -> Response {
    let given = req
        .headers()
        .get(HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|v| {
            (1..=128).contains(&v.len())
                && v.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':'))
        })
        .map(String::from);
    let id = given.unwrap_or_else(|| Uuid::new_v4().to_string());
    let value = HeaderValue::from_str(&id).unwrap_or_else(|_| HeaderValue::from_static("-"));
    req.headers_mut().insert(HEADER, value.clone());
    let mut response = CURRENT.scope(id, next.run(req)).await;
    response.headers_mut().insert(HEADER, value);
    response
}
