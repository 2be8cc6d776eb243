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

#[cfg(test)]
mod tests {
    use axum::Router;
    use axum::body::Body;
    use axum::http::{Request, header};
    use axum::routing::get;
    use hyper_util::service::TowerToHyperService;

    use super::*;

    #[test]
    fn an_id_that_is_not_a_uuid_names_nothing() {
        let id = Uuid::new_v4();
        assert_eq!(parse_id(&id.to_string(), "precheck").unwrap(), id);
        assert_eq!(parse_id(&id.to_string().to_uppercase(), "job").unwrap(), id);
        for (given, message) in [
            ("abc", "no such precheck: \"abc\" (ids are UUIDs)"),
            ("", "no such precheck: \"\" (ids are UUIDs)"),
            ("..", "no such precheck: \"..\" (ids are UUIDs)"),
        ] {
            match parse_id(given, "precheck") {
                Err(ApiError::NotFound(m)) => assert_eq!(m, message),
                other => panic!("{given:?}: {other:?}"),
            }
        }
    }

    /// A JSON body's rejection: (content type, body, the start of the message).
    #[tokio::test]
    async fn malformed_json_bodies_are_refused_with_a_message() {
        #[derive(serde::Deserialize, Debug)]
        #[serde(deny_unknown_fields)]
        #[allow(dead_code)]
        struct Named {
            name: String,
        }
        let cases = [
            (
                None,
                "{\"name\": \"x\"}",
                "expected a JSON body: send it with `Content-Type: application/json`",
            ),
            (
                Some("text/plain"),
                "{\"name\": \"x\"}",
                "expected a JSON body: send it with `Content-Type: application/json`",
            ),
            (
                Some("application/json"),
                "{\"name\": ",
                "the body is not valid JSON: ",
            ),
            (Some("application/json"), "{\"name\": 1}", "bad JSON body: "),
            (
                Some("application/json"),
                "{\"name\": \"x\", \"nmae\": \"y\"}",
                "bad JSON body: ",
            ),
            (Some("application/json"), "{}", "bad JSON body: "),
        ];
        for (content_type, body, start) in cases {
            let mut request = Request::builder().method("POST").uri("/x");
            if let Some(t) = content_type {
                request = request.header(header::CONTENT_TYPE, t);
            }
            let request = request.body(Body::from(body)).unwrap();
            match Json::<Named>::from_request(request, &()).await {
                Err(ApiError::BadRequest(m)) => assert!(m.starts_with(start), "{body}: {m}"),
                Err(e) => panic!("{body}: not a 400: {e}"),
                Ok(Json(b)) => panic!("{body}: taken: {b:?}"),
            }
        }
        let request = Request::builder()
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from("{\"name\": \"x\"}"))
            .unwrap();
        assert!(Json::<Named>::from_request(request, &()).await.is_ok());
    }

    /// A path's rejection, through a router as the server's: (path, status, message start).
    #[tokio::test]
    async fn paths_that_cannot_be_read_are_refused_with_a_message() {
        let router = Router::new()
            .route(
                "/things/{id}",
                get(|Path(id): Path<String>| async move { id }),
            )
            .route(
                "/numbers/{n}",
                get(|Path(n): Path<u32>| async move { n.to_string() }),
            );
        let service = TowerToHyperService::new(router);
        let cases = [
            ("/things/caf%C3%A9", 200, "caf\u{e9}"),
            (
                "/things/%FF",
                400,
                "the path's id is not UTF-8 once percent-decoded: percent-encode UTF-8 bytes only (e.g. %C3%A9 for \u{e9})",
            ),
            ("/numbers/7", 200, "7"),
            ("/numbers/x", 400, "bad path: "),
        ];
        for (path, status, start) in cases {
            let request = Request::builder().uri(path).body(Body::empty()).unwrap();
            let response = hyper::service::Service::call(&service, request)
                .await
                .unwrap();
            assert_eq!(response.status().as_u16(), status, "{path}");
            let body = axum::body::to_bytes(response.into_body(), 1 << 16)
                .await
                .unwrap();
            let text = if status == 200 {
                String::from_utf8(body.to_vec()).unwrap()
            } else {
                let message: crate::api::Message = serde_json::from_slice(&body).unwrap();
                message.message
            };
            assert!(text.starts_with(start), "{path}: {text}");
        }
    }
}
