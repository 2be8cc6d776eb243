//! The API's OpenAPI 3.1 document, served at `GET /api/v1/openapi.json`.
//!
//! Nothing here lists a route: [`super::routes`] registers each handler once through utoipa-axum,
//! which puts it in the router and its `#[utoipa::path]` (statuses, parameters, bodies) and the
//! `ToSchema` DTOs it names in the document. [`finish`] then adds what every route shares, from
//! the code that does it: the key check of `auth.rs` (which routes need a key, and its 400, 401,
//! 403 and 500) and the request id; and it writes axum's catch-all `{*path}` as OpenAPI's `{path}`.

use std::sync::Arc;

use axum::Extension;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use utoipa::openapi::header::HeaderBuilder;
use utoipa::openapi::path::{Operation, ParameterBuilder, ParameterIn, PathItem};
use utoipa::openapi::response::ResponseBuilder;
use utoipa::openapi::schema::{KnownFormat, Object, ObjectBuilder, SchemaFormat, SchemaType, Type};
use utoipa::openapi::security::{
    ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme,
};
use utoipa::openapi::tag::TagBuilder;
use utoipa::openapi::{
    ComponentsBuilder, ContentBuilder, InfoBuilder, LicenseBuilder, OpenApi, OpenApiBuilder, Ref,
    RefOr, Required,
};
use utoipa::{PartialSchema, ToSchema};

use super::auth::is_public;
use super::error::{ApiError, Message};
use super::request_id;

/// The security schemes' names.
const BEARER: &str = "bearer";
const API_KEY: &str = "apiKey";

const DESCRIPTION: &str = "\
Runs the gf180mcu precheck on uploaded chip layouts (GDSII, gzip'd GDSII or OASIS) in isolated \
Docker containers, and a project's simulations and LibreLane builds, in one FIFO queue of runs. \
The style is the Docker Engine API's: PascalCase bodies, `Id`, `State.Status`, `/wait` answering \
`{\"StatusCode\",\"Error\"}`.\n\n\
**Errors.** Every error is `{\"message\": \"...\"}` saying what to fix (the one exception is \
`GET /health`, whose 503 is its health report). A path that is not here answers 404, and a \
method a path does not list answers 405, both `{\"message\"}`. `HEAD` is answered wherever `GET` is.\n\n\
**Keys.** When the server's `auth.required` is set, every route but `/health` and this document \
needs an API key, as `Authorization: Bearer <key>` or `X-API-Key: <key>`; a key that is not an \
admin's sees only what it made. When `auth.allowed_ips` is set, other addresses get 403.\n\n\
**Request ids.** Every request has an id: the client's `X-Request-Id` if it is a plain token of at \
most 128 letters, digits and `-_.:`, else a new UUID. Every answer echoes it, and every line the \
server logs about the request carries it.";

/// The document before the routes add their paths and schemas.
pub fn base() -> OpenApi {
    let bearer = HttpBuilder::new()
        .scheme(HttpAuthScheme::Bearer)
        .description(Some("An API key: `Authorization: Bearer <key>`."))
        .build();
    let api_key = ApiKey::Header(ApiKeyValue::with_description(
        "X-API-Key",
        "An API key: `X-API-Key: <key>`.",
    ));
    let tags = [
        (
            "uploads",
            "Layouts, streamed to disk and inspected on the way.",
        ),
        (
            "prechecks",
            "Prechecks of uploads, queued and run in containers.",
        ),
        ("projects", "HDL projects and their files."),
        (
            "jobs",
            "A project's simulations and builds: runs like prechecks.",
        ),
        ("events", "Run state changes as they happen."),
        ("system", "Health, queue, metrics and this document."),
    ];
    OpenApiBuilder::new()
        .info(
            InfoBuilder::new()
                .title("precheck-server")
                .version(env!("CARGO_PKG_VERSION"))
                .description(Some(DESCRIPTION))
                .license(Some(
                    LicenseBuilder::new()
                        .name(env!("CARGO_PKG_LICENSE"))
                        .identifier(Some(env!("CARGO_PKG_LICENSE")))
                        .build(),
                )),
        )
        .components(Some(
            ComponentsBuilder::new()
                .schema(Message::name(), Message::schema())
                .security_scheme(BEARER, SecurityScheme::Http(bearer))
                .security_scheme(API_KEY, SecurityScheme::ApiKey(api_key))
                .build(),
        ))
        .tags(Some(tags.map(|(name, description)| {
            TagBuilder::new()
                .name(name)
                .description(Some(description))
                .build()
        })))
        .build()
}

/// Adds what every route shares, from the middleware that does it, and writes axum's
/// catch-all `{*name}` as `{name}`.
pub fn finish(mut spec: OpenApi) -> OpenApi {
    let paths = std::mem::take(&mut spec.paths.paths);
    spec.paths.paths = paths
        .into_iter()
        .map(|(path, item)| (path.replace("{*", "{"), item))
        .collect();
    for (path, item) in spec.paths.paths.iter_mut() {
        let public = is_public(path);
        for operation in operations(item) {
            if !public {
                add_auth(operation);
            }
            add_storage_errors(operation);
            add_request_id(operation);
        }
    }
    spec
}

/// Every operation of a path.
fn operations(item: &mut PathItem) -> impl Iterator<Item = &mut Operation> {
    [
        &mut item.get,
        &mut item.put,
        &mut item.post,
        &mut item.delete,
        &mut item.options,
        &mut item.head,
        &mut item.patch,
        &mut item.trace,
    ]
    .into_iter()
    .flatten()
}

/// An error response: `{"message"}`.
fn message(description: &str) -> RefOr<utoipa::openapi::Response> {
    ResponseBuilder::new()
        .description(description)
        .content(
            "application/json",
            ContentBuilder::new()
                .schema(Some(Ref::from_schema_name(Message::name())))
                .build(),
        )
        .build()
        .into()
}

/// What any operation may answer when the database or the disk fails under it (`error.rs`).
fn add_storage_errors(operation: &mut Operation) {
    let responses = &mut operation.responses.responses;
    responses.entry("503".into()).or_insert_with(|| {
        message("The database is locked by another process past the busy timeout, or cannot be written: nothing was changed; try again.")
    });
    responses
        .entry("507".into())
        .or_insert_with(|| message("The server's disk is full: nothing was changed."));
}

/// What `auth.rs` does before any handler runs: the keys it takes and how it refuses.
fn add_auth(operation: &mut Operation) {
    // Either key, or none when the server does not require one.
    operation.security = Some(vec![
        SecurityRequirement::new(BEARER, Vec::<String>::new()),
        SecurityRequirement::new(API_KEY, Vec::<String>::new()),
        SecurityRequirement::default(),
    ]);
    let responses = &mut operation.responses.responses;
    let proxy = "a trusted proxy's `X-Forwarded-For` is not a list of IP addresses \
                 (when `auth.allowed_ips` is set)";
    match responses.get_mut("400") {
        Some(RefOr::T(r)) => {
            r.description = format!("{}; or {proxy}.", r.description.trim_end_matches('.'))
        }
        Some(RefOr::Ref(_)) => {}
        None => {
            responses.insert("400".into(), message(&format!("Refused: {proxy}.")));
        }
    }
    responses.entry("401".into()).or_insert_with(|| {
        message("An API key is required (`auth.required`), and none, an unknown or a revoked one was sent.")
    });
    responses.entry("403".into()).or_insert_with(|| {
        message("The client's address is not in the server's `auth.allowed_ips`.")
    });
    responses.entry("500".into()).or_insert_with(|| {
        message("The server failed (its database, say): the message is `internal error (request <id>)`, and the server's log has the detail under that request id.")
    });
}

/// What `request_id` does for every request: reads the client's id, echoes it in the answer.
fn add_request_id(operation: &mut Operation) {
    let token = || {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .pattern(Some("^[A-Za-z0-9._:-]{1,128}$"))
            .build()
    };
    let parameter = ParameterBuilder::new()
        .name(request_id::HEADER_NAME)
        .parameter_in(ParameterIn::Header)
        .required(Required::False)
        .description(Some(
            "The request's id, echoed in the answer and on every log line of the request (any other value is replaced by a new UUID).",
        ))
        .schema(Some(token()))
        .build();
    operation
        .parameters
        .get_or_insert_with(Vec::new)
        .push(parameter);
    for response in operation.responses.responses.values_mut() {
        if let RefOr::T(response) = response {
            response.headers.insert(
                request_id::HEADER_NAME.into(),
                HeaderBuilder::new()
                    .schema(token())
                    .description(Some("The request's id."))
                    .build(),
            );
        }
    }
}

/// A string that is one of `values`.
pub fn string_enum<'a>(values: impl IntoIterator<Item = &'a str>) -> Object {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .enum_values(Some(values))
        .build()
}

/// An optional field that is one of `values`, or null (as for any `Option` field).
pub fn nullable_string_enum<'a>(values: impl IntoIterator<Item = &'a str>) -> Object {
    let values = values
        .into_iter()
        .map(serde_json::Value::from)
        .chain([serde_json::Value::Null]);
    ObjectBuilder::new()
        .schema_type(SchemaType::from_iter([Type::String, Type::Null]))
        .enum_values(Some(values))
        .build()
}

/// Raw bytes: a file's content, a layout, a tarball. Only its schema is used.
pub enum Binary {}

impl PartialSchema for Binary {
    fn schema() -> RefOr<utoipa::openapi::schema::Schema> {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .format(Some(SchemaFormat::KnownFormat(KnownFormat::Binary)))
            .into()
    }
}

impl ToSchema for Binary {}

/// The document as served: written once, when the router is made (`super::router`, which
/// puts it on every request), from the same routes.
#[derive(Clone)]
pub struct Document(Arc<Result<Bytes, String>>);

impl Document {
    pub fn new(spec: &OpenApi) -> Document {
        Document(Arc::new(
            spec.to_json().map(Bytes::from).map_err(|e| e.to_string()),
        ))
    }
}

/// This document.
#[utoipa::path(
    get,
    path = "/api/v1/openapi.json",
    operation_id = "openapi",
    tag = "system",
    responses(
        (status = 200, description = "The API's OpenAPI 3.1 document, made from the server's routes.", body = serde_json::Value, content_type = "application/json"),
        (status = 500, description = "The document could not be written.", body = Message),
    )
)]
pub async fn spec(document: Option<Extension<Document>>) -> Result<Response, ApiError> {
    let Some(Extension(Document(json))) = document else {
        return Err(ApiError::Internal(anyhow::anyhow!(
            "the router was made without the OpenAPI document"
        )));
    };
    let json = json.as_ref().as_ref().map_err(|e| {
        ApiError::Internal(anyhow::anyhow!("cannot write the OpenAPI document: {e}"))
    })?;
    Ok(([(header::CONTENT_TYPE, "application/json")], json.clone()).into_response())
}
