//! The OpenAPI document at `/api/v1/openapi.json`: valid OpenAPI 3.1 by an independent validator
//! (openapi-spec-validator), readable without a key, and describing exactly the routes the router
//! serves, every error as `{"message"}`.
//!
//! Why the route checks prove "every served route is documented", and the other way round:
//! - The router's own route table (axum's, read from the `Router` that `api::routes()` builds for
//!   the server) lists each path with the methods it answers; it must equal the document's paths
//!   and methods. A route added to the router without going through utoipa-axum's `routes!`
//!   shows up here and fails.
//! - The running server serves the document `api::routes()` makes, so the table above is the
//!   server's.
//! - Over HTTP, every documented (path, method) is answered by its handler (not by the router's
//!   "no route" 404 or "wrong method" 405 fallbacks), and every other method on those paths by
//!   the 405 fallback.
//!
//! What this leaves to review: `api::router` must add only middleware to `api::routes()` (a route
//! added there would be served, undocumented, and no table lists it).

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;

use reqwest::{Method, header};
use serde_json::{Value, json};

use crate::client::http;
use crate::support::{ALICE, TestServer};

/// The methods OpenAPI has operations for, but HEAD: axum answers HEAD wherever it answers GET.
const METHODS: [&str; 7] = ["get", "put", "post", "delete", "options", "patch", "trace"];

/// The document as the library makes it.
fn library_spec() -> Value {
    serde_json::to_value(precheck_server::api::routes().1).expect("the document as JSON")
}

/// Each documented path with its methods (lower case).
fn documented(spec: &Value) -> BTreeMap<String, BTreeSet<String>> {
    spec["paths"]
        .as_object()
        .expect("paths")
        .iter()
        .map(|(path, item)| {
            let methods = METHODS
                .iter()
                .filter(|m| item.get(**m).is_some())
                .map(|m| m.to_string())
                .collect();
            (path.clone(), methods)
        })
        .collect()
}

/// Each path of the router's route table with the methods it answers (lower case, HEAD left out
/// where GET is there, as axum adds it), read from axum's `Debug` of the router: the node's
/// `paths` (route id -> path) and each route's `allow_header` (the methods axum answers).
fn route_table<S>(router: &axum::Router<S>) -> BTreeMap<String, BTreeSet<String>> {
    let text = format!("{router:?}");
    let unreadable = || -> ! {
        panic!(
            "cannot read the route table from axum's Debug of the router (has axum's format \
             changed? adapt route_table()):\n{text}"
        )
    };
    // Only the routes: the fallback router has routes of its own.
    let routes = text
        .split_once(", fallback_router:")
        .unwrap_or_else(|| unreadable())
        .0;
    let (methods_part, paths_part) = routes
        .split_once("node: Node { paths: {")
        .unwrap_or_else(|| unreadable());
    let mut paths = BTreeMap::new();
    for entry in paths_part.split("RouteId(").skip(1) {
        let (id, rest) = entry.split_once("): \"").unwrap_or_else(|| unreadable());
        let path = rest.split_once('"').unwrap_or_else(|| unreadable()).0;
        paths.insert(id.to_string(), path.to_string());
    }
    let mut table = BTreeMap::new();
    for entry in methods_part.split("RouteId(").skip(1) {
        let (id, rest) = entry.split_once(')').unwrap_or_else(|| unreadable());
        let allow = rest
            .split_once("allow_header: Bytes(b\"")
            .and_then(|(_, a)| a.split_once('"'))
            .unwrap_or_else(|| unreadable())
            .0;
        let mut methods: BTreeSet<String> =
            allow.split(',').map(|m| m.to_ascii_lowercase()).collect();
        if methods.contains("get") {
            methods.remove("head");
        }
        let path = paths.get(id).unwrap_or_else(|| unreadable());
        // axum's catch-all `{*path}` is OpenAPI's `{path}`.
        table.insert(path.replace("{*", "{"), methods);
    }
    assert_eq!(table.len(), paths.len(), "{text}");
    table
}

/// A concrete URL path for a template: fresh UUIDs for ids, a nested file path for `{path}`.
fn concrete(template: &str) -> String {
    template
        .split('/')
        .map(|part| match part {
            "{id}" | "{job}" => uuid::Uuid::new_v4().to_string(),
            "{path}" => "src/dummy.v".to_string(),
            other => {
                assert!(!other.contains('{'), "an unknown parameter in {template}");
                other.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("/")
}

/// Sends `method` to `url` (no body) and returns the status and, but for HEAD, the message of
/// a `{"message"}` answer. A streamed answer is not read.
async fn probe(method: &str, url: &str) -> (u16, Option<String>) {
    let method = Method::from_bytes(method.to_ascii_uppercase().as_bytes()).unwrap();
    let resp = http()
        .request(method.clone(), url)
        .send()
        .await
        .unwrap_or_else(|e| panic!("{method} {url}: {e}"));
    let status = resp.status().as_u16();
    let is_json = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if method == Method::HEAD || status < 400 || !is_json {
        return (status, None);
    }
    let body: Value = resp.json().await.unwrap_or(Value::Null);
    (status, body["message"].as_str().map(String::from))
}

/// Whether an answer is the router's own: `no_route`'s 404 or `wrong_method`'s 405.
fn is_fallback(status: u16, message: &Option<String>) -> bool {
    let said = |needle: &str| message.as_deref().is_some_and(|m| m.contains(needle));
    status == 405 || (status == 404 && said("no route for"))
}

#[tokio::test]
async fn the_document_is_valid_openapi_3_1_and_needs_no_key() {
    let server = TestServer::builder().alice_and_bob().start();
    // Readable without a key, like /health; the rest of the API is not.
    let resp = http()
        .get(server.api("/api/v1/openapi.json"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()[header::CONTENT_TYPE], "application/json");
    let text = resp.text().await.unwrap();
    let spec: Value = serde_json::from_str(&text).expect("the document is JSON");
    let resp = http()
        .get(server.api("/api/v1/queue"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    let resp = http()
        .get(server.api("/api/v1/queue"))
        .header("X-API-Key", ALICE)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);

    assert_eq!(spec["openapi"], "3.1.0");
    assert_eq!(spec["info"]["title"], "precheck-server");
    assert_eq!(spec["info"]["version"], env!("CARGO_PKG_VERSION"));
    assert!(
        spec["info"]["description"]
            .as_str()
            .is_some_and(|d| d.len() > 100)
    );
    let schemes = &spec["components"]["securitySchemes"];
    assert_eq!(schemes["bearer"]["type"], "http");
    assert_eq!(schemes["bearer"]["scheme"], "bearer");
    assert_eq!(schemes["apiKey"]["type"], "apiKey");
    assert_eq!(schemes["apiKey"]["in"], "header");
    assert_eq!(schemes["apiKey"]["name"], "X-API-Key");

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("openapi.json");
    std::fs::write(&path, &text).unwrap();
    let (ok, output) = validate(&path);
    assert!(ok, "openapi-spec-validator refuses the document:\n{output}");
    // The validator does refuse what is not OpenAPI 3.1, so its OK means something.
    let mut broken = spec.clone();
    broken["paths"]["/health"]["get"]["responses"] = json!({"200": {"content": {}}});
    let broken_path = dir.path().join("broken.json");
    std::fs::write(&broken_path, broken.to_string()).unwrap();
    let (ok, output) = validate(&broken_path);
    assert!(
        !ok,
        "the validator accepts a response without a description:\n{output}"
    );
}

/// Runs openapi-spec-validator on a file: whether it passes, and what it said. Fails the test
/// when the validator is not installed.
fn validate(path: &std::path::Path) -> (bool, String) {
    let installed = Command::new("python3")
        .args(["-c", "import openapi_spec_validator"])
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        installed,
        "the tests need openapi-spec-validator on the python3 of PATH: python3 -m venv VENV && \
         VENV/bin/pip install openapi-spec-validator, then PATH=VENV/bin:$PATH (README, \
         \"Run the tests\"; .ci/run does this)"
    );
    let out = Command::new("python3")
        .args(["-m", "openapi_spec_validator"])
        .arg(path)
        .output()
        .expect("run python3 -m openapi_spec_validator");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), said)
}

#[tokio::test]
async fn the_router_serves_exactly_the_documented_routes() {
    let (router, spec) = precheck_server::api::routes();
    let spec = serde_json::to_value(spec).unwrap();
    let documented = documented(&spec);
    let served = route_table(&router);
    let pairs = |table: &BTreeMap<String, BTreeSet<String>>| -> BTreeSet<String> {
        table
            .iter()
            .flat_map(|(path, methods)| methods.iter().map(move |m| format!("{m} {path}")))
            .collect()
    };
    let (served, documented_pairs) = (pairs(&served), pairs(&documented));
    assert!(
        served == documented_pairs,
        "served but not documented: {:?}; documented but not served: {:?}",
        served.difference(&documented_pairs).collect::<Vec<_>>(),
        documented_pairs.difference(&served).collect::<Vec<_>>()
    );
    assert!(documented.len() >= 23, "{documented:?}");
    assert!(documented.contains_key("/api/v1/openapi.json"));

    let server = TestServer::start("");
    let (_, served_spec) = crate::client::get_json(&server, "/api/v1/openapi.json").await;
    assert_eq!(
        served_spec, spec,
        "the server serves another document than api::routes() makes"
    );

    // The fallbacks are recognised: an unknown path, and one below a documented path.
    for path in ["/api/v1/nowhere", "/api/v1/uploads/x/y", "/health/x"] {
        let (status, message) = probe("get", &server.api(path)).await;
        assert!(
            status == 404
                && message
                    .as_deref()
                    .is_some_and(|m| m.contains("no route for")),
            "GET {path}: {status} {message:?}"
        );
    }
    for (template, methods) in &documented {
        let url = server.api(&concrete(template));
        for method in METHODS {
            let (status, message) = probe(method, &url).await;
            if methods.contains(method) {
                assert!(
                    !is_fallback(status, &message),
                    "{method} {template} is documented but the router does not serve it: {status} {message:?}"
                );
            } else {
                assert!(
                    status == 405
                        && message
                            .as_deref()
                            .is_some_and(|m| m.contains("is not allowed on")),
                    "{method} {template} is not documented, yet answered {status} {message:?}"
                );
            }
        }
        let (status, _) = probe("head", &url).await;
        assert_eq!(
            status == 405,
            !methods.contains("get"),
            "HEAD {template}: {status}"
        );
    }
}

#[test]
fn every_error_is_a_message_and_every_route_but_the_public_ones_takes_a_key() {
    let spec = library_spec();
    let message = &spec["components"]["schemas"]["Message"];
    assert_eq!(message["type"], "object");
    assert_eq!(message["required"], json!(["message"]));
    assert_eq!(message["properties"]["message"]["type"], "string");
    assert_eq!(
        message["properties"].as_object().unwrap().len(),
        1,
        "{message}"
    );
    let message_ref =
        json!({"application/json": {"schema": {"$ref": "#/components/schemas/Message"}}});
    let key = json!([{"bearer": []}, {"apiKey": []}, {}]);
    let mut errors = 0;
    for (path, methods) in documented(&spec) {
        for method in methods {
            let op = &spec["paths"][&path][&method];
            let what = format!("{} {path}", method.to_uppercase());
            let responses = op["responses"].as_object().unwrap();
            assert!(
                responses.keys().any(|s| s.starts_with('2')),
                "{what}: no success"
            );
            for (status, response) in responses {
                assert!(
                    response["description"]
                        .as_str()
                        .is_some_and(|d| !d.is_empty()),
                    "{what} {status}: no description"
                );
                assert!(
                    response["headers"]["X-Request-Id"].is_object(),
                    "{what} {status}: no X-Request-Id"
                );
                if status.as_str() < "400" {
                    continue;
                }
                errors += 1;
                if path == "/health" && status == "503" {
                    // The one error that is not a message: the health report saying what is wrong.
                    assert_eq!(
                        response["content"]["application/json"]["schema"]["$ref"],
                        "#/components/schemas/Health"
                    );
                    continue;
                }
                assert_eq!(
                    response["content"], message_ref,
                    "{what} {status} is not {{\"message\"}}"
                );
            }
            let public = path == "/health" || path == "/api/v1/openapi.json";
            if public {
                assert!(op.get("security").is_none(), "{what} asks for a key");
                assert!(
                    !responses.contains_key("401"),
                    "{what}: 401 on a public route"
                );
            } else {
                assert_eq!(op["security"], key, "{what}: its keys");
                for status in ["400", "401", "403", "500"] {
                    assert!(responses.contains_key(status), "{what}: no {status}");
                }
            }
        }
    }
    assert!(errors > 100, "{errors}");
}

#[test]
fn bodies_streams_and_parameters_are_documented() {
    let spec = library_spec();
    let op = |method: &str, path: &str| spec["paths"][path][method].clone();
    let request_types = |method: &str, path: &str| -> Vec<String> {
        op(method, path)["requestBody"]["content"]
            .as_object()
            .unwrap_or_else(|| panic!("{method} {path}: no request body"))
            .keys()
            .cloned()
            .collect()
    };
    let response_types = |method: &str, path: &str, status: &str| -> Vec<String> {
        op(method, path)["responses"][status]["content"]
            .as_object()
            .unwrap_or_else(|| panic!("{method} {path} {status}: no content"))
            .keys()
            .cloned()
            .collect()
    };
    let params = |method: &str, path: &str| -> Vec<(String, String)> {
        op(method, path)["parameters"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|p| {
                (
                    p["in"].as_str().unwrap().to_string(),
                    p["name"].as_str().unwrap().to_string(),
                )
            })
            .collect()
    };
    let has_params = |method: &str, path: &str, wanted: &[(&str, &str)]| {
        let got = params(method, path);
        for (place, name) in wanted {
            assert!(
                got.iter().any(|(p, n)| p == place && n == name),
                "{method} {path}: no {place} parameter {name}: {got:?}"
            );
        }
    };

    // Request bodies.
    assert_eq!(
        request_types("post", "/api/v1/uploads"),
        ["multipart/form-data"]
    );
    let form =
        &op("post", "/api/v1/uploads")["requestBody"]["content"]["multipart/form-data"]["schema"];
    assert_eq!(form["required"], json!(["file"]));
    assert_eq!(
        request_types("put", "/api/v1/projects/{id}/files/{path}"),
        ["application/octet-stream"]
    );
    assert_eq!(
        request_types("post", "/api/v1/projects/{id}/files"),
        ["application/gzip"]
    );
    for (method, path, schema) in [
        ("post", "/api/v1/prechecks", "CreatePrecheck"),
        ("post", "/api/v1/projects", "NewProject"),
        ("patch", "/api/v1/projects/{id}", "ProjectChange"),
        ("post", "/api/v1/projects/{id}/jobs", "NewJob"),
    ] {
        let body = &op(method, path)["requestBody"]["content"];
        assert_eq!(
            body,
            &json!({"application/json": {"schema": {"$ref": format!("#/components/schemas/{schema}")}}}),
            "{method} {path}"
        );
        assert_eq!(
            spec["components"]["schemas"][schema]["additionalProperties"], false,
            "{schema} refuses unknown fields"
        );
    }

    // Streams and files.
    for (path, kind) in [
        ("/api/v1/debug/prechecks/{id}", "application/gzip"),
        (
            "/api/v1/projects/{id}/jobs/{job}/artifacts",
            "application/gzip",
        ),
        ("/api/v1/prechecks/{id}/output", "application/octet-stream"),
        (
            "/api/v1/projects/{id}/files/{path}",
            "application/octet-stream",
        ),
        (
            "/api/v1/projects/{id}/jobs/{job}/artifacts/{path}",
            "application/octet-stream",
        ),
        ("/api/v1/events", "application/x-ndjson"),
        ("/metrics", "text/plain; version=0.0.4"),
        ("/api/v1/openapi.json", "application/json"),
    ] {
        assert_eq!(response_types("get", path, "200"), [kind], "GET {path}");
    }
    for path in [
        "/api/v1/prechecks/{id}/logs",
        "/api/v1/projects/{id}/jobs/{job}/logs",
    ] {
        assert_eq!(
            response_types("get", path, "200"),
            ["application/json", "text/plain; charset=utf-8"],
            "GET {path}"
        );
        has_params(
            "get",
            path,
            &[
                ("query", "since"),
                ("query", "tail"),
                ("query", "timestamps"),
                ("query", "follow"),
            ],
        );
    }

    // Parameters.
    has_params(
        "post",
        "/api/v1/prechecks",
        &[("header", "Idempotency-Key")],
    );
    has_params("get", "/api/v1/prechecks", &[("query", "status")]);
    has_params(
        "get",
        "/api/v1/projects/{id}/jobs",
        &[("path", "id"), ("query", "status"), ("query", "kind")],
    );
    has_params(
        "post",
        "/api/v1/projects/{id}/jobs/{job}/wait",
        &[("path", "id"), ("path", "job"), ("query", "timeout")],
    );
    has_params(
        "post",
        "/api/v1/prechecks/{id}/wait",
        &[("query", "timeout")],
    );
    has_params(
        "get",
        "/api/v1/events",
        &[("query", "run"), ("query", "type")],
    );
    // Every path parameter of a template is declared, and no other.
    for (path, methods) in documented(&spec) {
        let in_template: BTreeSet<String> = path
            .split('/')
            .filter_map(|p| p.strip_prefix('{')?.strip_suffix('}'))
            .map(String::from)
            .collect();
        for method in methods {
            let declared: BTreeSet<String> = params(&method, &path)
                .into_iter()
                .filter(|(place, _)| place == "path")
                .map(|(_, name)| name)
                .collect();
            assert_eq!(declared, in_template, "{method} {path}");
        }
    }
    // Each operation has its own id.
    let ids: Vec<String> = documented(&spec)
        .into_iter()
        .flat_map(|(path, methods)| {
            methods
                .into_iter()
                .map(|m| op(&m, &path)["operationId"].as_str().unwrap().to_string())
                .collect::<Vec<_>>()
        })
        .collect();
    let unique: BTreeSet<&String> = ids.iter().collect();
    assert_eq!(unique.len(), ids.len(), "{ids:?}");
}
