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

/// Checks an exposition with `promtool check metrics` (Debian's prometheus package).
fn promtool_check(text: &str) {
    use std::io::Write;
    let mut child = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run promtool (install the Debian package prometheus)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics: {}{}\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The value of the sample `series` (name and labels as written) in an exposition.
fn sample(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no sample {series} in\n{text}"))
}

async fn scrape(server: &TestServer) -> String {
    let resp = http().get(server.api("/metrics")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let content_type = resp.headers()["content-type"].to_str().unwrap().to_string();
    assert!(
        content_type.starts_with("text/plain; version=0.0.4"),
        "{content_type}"
    );
    let text = resp.text().await.unwrap();
    promtool_check(&text);
    text
}

#[tokio::test]
async fn metrics_pass_promtool_and_move_with_a_run() {
    // One slot, held by the first run while the second is cancelled in the queue.
    let server = TestServer::builder().max_concurrent(1).start();
    let before = scrape(&server).await;
    assert_eq!(sample(&before, "precheck_engine_up"), 1.0);
    let done = "precheck_runs_finished_total{kind=\"precheck\",status=\"completed\"}";
    assert_eq!(sample(&before, done), 0.0);
    assert_eq!(sample(&before, "precheck_upload_bytes_total"), 0.0);

    let layout = crate::support::gds_bytes("chip_sleep2");
    let size = layout.len() as f64;
    let upload = crate::client::upload(&server, "chip_sleep2.gds", layout).await;
    let run = crate::client::create(&server, &upload, "chip_sleep2").await["Id"]
        .as_str()
        .unwrap()
        .to_string();
    let queued = crate::client::precheck(&server, "chip_queued").await;
    crate::client::cancel(&server, &queued).await;
    assert_eq!(crate::client::wait(&server, &run).await["StatusCode"], 0);

    let after = scrape(&server).await;
    assert_eq!(sample(&after, done), 1.0);
    assert_eq!(
        sample(
            &after,
            "precheck_run_duration_seconds_count{kind=\"precheck\"}"
        ),
        1.0
    );
    assert_eq!(
        sample(
            &after,
            "precheck_queue_wait_seconds_count{kind=\"precheck\"}"
        ),
        1.0
    );
    let cancelled = "precheck_runs_finished_total{kind=\"precheck\",status=\"cancelled\"}";
    assert_eq!(sample(&after, cancelled), 1.0);
    assert_eq!(
        sample(&after, "precheck_upload_bytes_total"),
        size + crate::support::gds_bytes("chip_queued").len() as f64
    );
    assert!(
        sample(&after, "precheck_log_bytes_total") > 100.0,
        "{after}"
    );
    assert_eq!(sample(&after, "precheck_queue_length"), 0.0);
    assert_eq!(sample(&after, "precheck_running"), 0.0);
    assert_eq!(
        sample(&after, "precheck_container_start_failures_total"),
        0.0
    );
}
