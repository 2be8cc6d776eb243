//! A few calls of the API for the tests that drive runs; they panic with the server's answer
//! when a call does not succeed.

use reqwest::multipart::{Form, Part};
use serde_json::{Value, json};

use crate::support::{TestServer, gds_bytes};

/// A client like curl's: no TCP user timeout (reqwest's default of 30 s aborts an upload
/// that a loaded server reads slowly, as it may while it inflates a bomb).
pub fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .tcp_user_timeout(None)
        .build()
        .unwrap()
}

async fn expect(resp: reqwest::Response, status: u16) -> Value {
    let code = resp.status().as_u16();
    let text = resp.text().await.expect("read the body");
    assert_eq!(code, status, "unexpected status, body: {text}");
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

/// POSTs `bytes` as the upload `name`; returns the status and the JSON body.
pub async fn post_upload(server: &TestServer, name: &str, bytes: Vec<u8>) -> (u16, Value) {
    let form = Form::new().part("file", Part::bytes(bytes).file_name(name.to_string()));
    let resp = http()
        .post(server.api("/api/v1/uploads"))
        .multipart(form)
        .send()
        .await
        .unwrap();
    (
        resp.status().as_u16(),
        resp.json().await.expect("a JSON body"),
    )
}

/// Uploads `bytes` as `name`; returns the upload's id.
pub async fn upload(server: &TestServer, name: &str, bytes: Vec<u8>) -> String {
    let (status, body) = post_upload(server, name, bytes).await;
    assert_eq!(status, 201, "unexpected status, body: {body}");
    body["Id"].as_str().unwrap().to_string()
}

/// Creates a precheck with `top_cell`; returns the run body.
pub async fn create(server: &TestServer, upload_id: &str, top_cell: &str) -> Value {
    let body = json!({"upload_id": upload_id, "top_cell": top_cell, "die_id": "TEST0001"});
    let resp = http()
        .post(server.api("/api/v1/prechecks"))
        .json(&body)
        .send()
        .await
        .unwrap();
    expect(resp, 201).await
}

/// Uploads a generated layout whose top cell is `top_cell` and starts a precheck of it;
/// returns the run's id.
pub async fn precheck(server: &TestServer, top_cell: &str) -> String {
    let upload_id = upload(server, &format!("{top_cell}.gds"), gds_bytes(top_cell)).await;
    create(server, &upload_id, top_cell).await["Id"]
        .as_str()
        .unwrap()
        .to_string()
}

/// `/wait` with a generous timeout; returns `{"StatusCode", "Error"}`.
pub async fn wait(server: &TestServer, run_id: &str) -> Value {
    let url = server.api(&format!("/api/v1/prechecks/{run_id}/wait?timeout=300"));
    expect(http().post(url).send().await.unwrap(), 200).await
}

/// GET `path`; returns the status and the JSON body.
pub async fn get_json(server: &TestServer, path: &str) -> (u16, Value) {
    let resp = http().get(server.api(path)).send().await.unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.expect("a JSON body"))
}

pub async fn inspect(server: &TestServer, run_id: &str) -> Value {
    let url = server.api(&format!("/api/v1/prechecks/{run_id}"));
    expect(http().get(url).send().await.unwrap(), 200).await
}

pub async fn cancel(server: &TestServer, run_id: &str) -> Value {
    let url = server.api(&format!("/api/v1/prechecks/{run_id}"));
    expect(http().delete(url).send().await.unwrap(), 200).await
}

pub async fn logs(server: &TestServer, run_id: &str, query: &str) -> Value {
    let url = server.api(&format!("/api/v1/prechecks/{run_id}/logs{query}"));
    expect(http().get(url).send().await.unwrap(), 200).await
}

/// The log lines of a JSON logs answer.
pub fn lines(logs: &Value) -> Vec<String> {
    logs["lines"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l.as_str().unwrap().to_string())
        .collect()
}

/// Sends a request; returns the status and the body (JSON if it is JSON, else text).
pub async fn send(request: reqwest::RequestBuilder) -> (reqwest::StatusCode, Value) {
    let resp = request.send().await.unwrap();
    let status = resp.status();
    let text = resp.text().await.unwrap();
    let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (status, body)
}

/// Asserts a refusal: its status, and a message holding `needle`.
pub fn refused((status, body): (reqwest::StatusCode, Value), expected: u16, needle: &str) {
    assert_eq!(status.as_u16(), expected, "{body}");
    let message = body["message"].as_str().unwrap_or_default();
    assert!(message.contains(needle), "{needle:?} not in {message:?}");
}

/// Waits (up to 2 minutes) until the run's log holds a line containing `needle`.
pub async fn wait_for_line(server: &TestServer, run_id: &str, needle: &str) {
    crate::support::wait_until_async(
        std::time::Duration::from_secs(120),
        &format!("a log line with {needle:?}"),
        || async {
            lines(&logs(server, run_id, "").await)
                .iter()
                .any(|l| l.contains(needle))
        },
    )
    .await;
}
