//! What operators and their tools see of a running server: its log (human or JSON) with a
//! request id on every request line, echoed in `X-Request-Id`.

use serde_json::Value;

use crate::client::http;
use crate::support::{TestServer, wait_until};

#[tokio::test]
async fn every_request_has_an_id_in_its_answer_and_in_the_json_log() {
    let server = TestServer::builder()
        .serve_args(&["--log-format", "json"])
        .start();
    let resp = http()
        .get(server.api("/api/v1/queue"))
        .header("X-Request-Id", "ci-job-42.step:7")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers()["x-request-id"], "ci-job-42.step:7");
    // An id that is not a plain token is replaced, never logged or echoed.
    let resp = http()
        .get(server.api("/api/v1/nowhere"))
        .header("X-Request-Id", "a b\"c")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);
    let generated = resp.headers()["x-request-id"].to_str().unwrap().to_string();
    assert!(uuid::Uuid::parse_str(&generated).is_ok(), "{generated}");

    let json_lines = || -> Vec<Value> {
        server
            .stderr_text()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    };
    wait_until(
        std::time::Duration::from_secs(10),
        "both requests are logged",
        || {
            let lines = json_lines();
            [("ci-job-42.step:7", 200), (generated.as_str(), 404)]
                .iter()
                .all(|(id, status)| {
                    lines
                        .iter()
                        .any(|l| l["spans"][0]["request_id"] == *id && l["status"] == *status)
                })
        },
    );
    // Every line is JSON, with a level and a message.
    let text = server.stderr_text();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let v: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        assert!(
            v["level"].is_string() && v["timestamp"].is_string(),
            "{line}"
        );
    }
}

#[tokio::test]
async fn the_human_log_names_the_request_id_too() {
    let server = TestServer::start("");
    let resp = http()
        .get(server.api("/health"))
        .header("X-Request-Id", "abc-123")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers()["x-request-id"], "abc-123");
    wait_until(
        std::time::Duration::from_secs(10),
        "the request is logged",
        || {
            server
                .stderr_text()
                .lines()
                .any(|l| l.contains("request_id=abc-123") && l.contains("status=200"))
        },
    );
}
