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
    assert_eq!(sample(&before, "precheck_engine_up{engine=\"local\"}"), 1.0);
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

/// An open `/api/v1/events` stream, read a JSON line at a time.
struct Events {
    resp: reqwest::Response,
    buffer: Vec<u8>,
}

impl Events {
    async fn open(server: &TestServer, query: &str, key: Option<&str>) -> Events {
        let mut request = http().get(server.api(&format!("/api/v1/events{query}")));
        if let Some(key) = key {
            request = request.bearer_auth(key);
        }
        let resp = request.send().await.unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.headers()["content-type"], "application/x-ndjson");
        Events {
            resp,
            buffer: vec![],
        }
    }

    /// The next event, or None if none comes within `wait`.
    async fn next(&mut self, wait: std::time::Duration) -> Option<Value> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            if let Some(end) = self.buffer.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = self.buffer.drain(..=end).collect();
                return Some(serde_json::from_slice(&line).expect("a JSON line"));
            }
            match tokio::time::timeout_at(deadline, self.resp.chunk()).await {
                Ok(Ok(Some(chunk))) => self.buffer.extend_from_slice(&chunk),
                Ok(other) => panic!("the event stream ended: {other:?}"),
                Err(_) => return None,
            }
        }
    }

    /// The actions of the next `n` events, with their run ids.
    async fn take(&mut self, n: usize) -> Vec<(String, String)> {
        let mut seen = vec![];
        for _ in 0..n {
            let e = self
                .next(std::time::Duration::from_secs(60))
                .await
                .unwrap_or_else(|| panic!("only {seen:?} after 60 s"));
            seen.push((
                e["Action"].as_str().unwrap().to_string(),
                e["Actor"]["ID"].as_str().unwrap().to_string(),
            ));
        }
        seen
    }
}

#[tokio::test]
async fn events_follow_runs_in_order_and_filter_by_run_and_type() {
    let server = TestServer::builder().max_concurrent(1).start();
    let mut all = Events::open(&server, "", None).await;
    let mut finished = Events::open(&server, "?type=finished&type=cancelled", None).await;
    let run = crate::client::precheck(&server, "chip_sleep1").await;
    let queued = crate::client::precheck(&server, "chip_queued").await;
    let mut one = Events::open(&server, &format!("?run={run}"), None).await;
    crate::client::cancel(&server, &queued).await;
    crate::client::wait(&server, &run).await;

    let seen = all.take(5).await;
    let of = |id: &str| -> Vec<&str> {
        seen.iter()
            .filter(|(_, r)| r == id)
            .map(|(a, _)| a.as_str())
            .collect()
    };
    assert_eq!(of(&run), ["created", "started", "finished"], "{seen:?}");
    assert_eq!(of(&queued), ["created", "cancelled"], "{seen:?}");
    // Subscribed after its creation: only what came after (its start, if its container was
    // still being prepared, and its end).
    let mut after = one.take(1).await;
    if after[0].0 == "started" {
        after.extend(one.take(1).await);
    }
    assert_eq!(after.last(), Some(&("finished".to_string(), run.clone())));
    assert!(
        after.iter().all(|(a, r)| a != "created" && r == &run),
        "{after:?}"
    );
    let ends = finished.take(2).await;
    assert!(
        ends.contains(&("cancelled".into(), queued.clone())),
        "{ends:?}"
    );
    assert!(ends.contains(&("finished".into(), run.clone())), "{ends:?}");

    // The finished event carries the status and the exit code.
    let mut again = Events::open(&server, "?type=finished", None).await;
    let failing = crate::client::precheck(&server, "chip_fail").await;
    let e = again
        .next(std::time::Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(e["Type"], "run");
    assert_eq!(e["Actor"]["ID"], failing.as_str());
    assert_eq!(e["Actor"]["Attributes"]["status"], "failed");
    assert_eq!(e["Actor"]["Attributes"]["exit_code"], "1");
    assert_eq!(e["Actor"]["Attributes"]["kind"], "precheck");
    assert!(
        e["TimeNano"].as_i64().unwrap() > 0 && e["Time"].is_string(),
        "{e}"
    );

    for (query, needle) in [
        ("?type=died", "type"),
        ("?run=abc", "run"),
        ("?since=1", "since"),
    ] {
        let resp = http()
            .get(server.api(&format!("/api/v1/events{query}")))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 400);
        let body: Value = resp.json().await.unwrap();
        assert!(body["message"].as_str().unwrap().contains(needle), "{body}");
    }
}

#[tokio::test]
async fn a_key_sees_only_the_events_of_its_own_runs() {
    use crate::support::{ALICE, BOB};
    let server = TestServer::builder().alice_and_bob().start();
    let mut bobs = Events::open(&server, "", Some(BOB)).await;
    let mut alices = Events::open(&server, "", Some(ALICE)).await;
    let layout = crate::support::gds_bytes("chip_top");
    let form = reqwest::multipart::Form::new().part(
        "file",
        reqwest::multipart::Part::bytes(layout).file_name("chip_top.gds"),
    );
    let upload: Value = crate::client::send(
        http()
            .post(server.api("/api/v1/uploads"))
            .bearer_auth(ALICE)
            .multipart(form),
    )
    .await
    .1;
    let run: Value = crate::client::send(
        http()
            .post(server.api("/api/v1/prechecks"))
            .bearer_auth(ALICE)
            .json(&serde_json::json!({"upload_id": upload["Id"]})),
    )
    .await
    .1;
    let id = run["Id"].as_str().unwrap().to_string();
    assert_eq!(
        alices.take(3).await.last().unwrap(),
        &("finished".to_string(), id)
    );
    assert_eq!(bobs.next(std::time::Duration::from_secs(2)).await, None);
}

#[tokio::test]
async fn a_container_that_cannot_be_created_is_counted() {
    // Docker refuses to create a container whose bind mount has no source.
    let server = TestServer::builder()
        .set("images.librelane", crate::support::librelane_image())
        .set("builds.pdk", "/nonexistent/precheck-test-pdk")
        .start();
    let project: Value = crate::client::send(
        http()
            .post(server.api("/api/v1/projects"))
            .json(&serde_json::json!({"name": "p"})),
    )
    .await
    .1;
    let project = project["Id"].as_str().unwrap();
    let put = http()
        .put(server.api(&format!("/api/v1/projects/{project}/files/config.json")))
        .body("{\"DESIGN_NAME\": \"x\"}")
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), 201);
    let job: Value = http()
        .post(server.api(&format!("/api/v1/projects/{project}/jobs")))
        .json(&serde_json::json!({"kind": "build", "config": "config.json"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let job = job["Id"].as_str().unwrap();
    let waited: Value = http()
        .post(server.api(&format!("/api/v1/projects/{project}/jobs/{job}/wait")))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(waited["StatusCode"], 125, "{waited}");
    assert!(
        waited["Error"]["Message"]
            .as_str()
            .unwrap()
            .contains("cannot create the container"),
        "{waited}"
    );
    let metrics = scrape(&server).await;
    assert_eq!(
        sample(&metrics, "precheck_container_start_failures_total"),
        1.0
    );
    let failed = "precheck_runs_finished_total{kind=\"build\",status=\"failed\"}";
    assert_eq!(sample(&metrics, failed), 1.0);
    server.assert_no_containers();
}
