//! Pipelining: while every slot is busy, the next queued runs have their containers made and
//! their files staged on the engine that will run them, so a freed slot only starts one. A
//! prepared run is still queued: a cancel, a drain and a restart each deal with its container.

use std::time::Duration;

use crate::cli::ok;
use crate::client::{cancel, get_json, inspect, lines, logs, precheck, wait, wait_for_line};
use crate::support::{TestServer, docker, docker_ok, wait_until_async};

/// The containers of a run, running or not, as (full id, state).
fn containers_of(run: &str) -> Vec<(String, String)> {
    let listed = docker_ok(&[
        "ps",
        "-a",
        "--no-trunc",
        "--format",
        "{{.ID}} {{.State}}",
        "--filter",
        &format!("label=precheck-server.run-id={run}"),
    ]);
    listed
        .lines()
        .filter_map(|l| l.split_once(' '))
        .map(|(id, state)| (id.to_string(), state.to_string()))
        .collect()
}

/// Waits until the run has one container, made and not started (prepared); returns its id.
async fn prepared(run: &str) -> String {
    wait_until_async(
        Duration::from_secs(60),
        &format!("run {run} has a prepared container"),
        || async { matches!(containers_of(run).as_slice(), [(_, state)] if state == "created") },
    )
    .await;
    containers_of(run).remove(0).0
}

async fn status(server: &TestServer, run: &str) -> String {
    inspect(server, run).await["State"]["Status"]
        .as_str()
        .unwrap()
        .to_string()
}

#[tokio::test]
async fn a_queued_run_is_prepared_while_the_slot_is_busy_and_only_started_when_it_frees() {
    let server = TestServer::builder().max_concurrent(1).start();
    let busy = precheck(&server, "chip_sleep120").await;
    wait_for_line(&server, &busy, "second 1 of 120").await;

    // Prepared, still queued; then cancelled: its container goes with it.
    let cancelled = precheck(&server, "chip_top").await;
    prepared(&cancelled).await;
    assert_eq!(status(&server, &cancelled).await, "queued");
    let (_, health) = get_json(&server, "/health").await;
    let local = &health["engines"][0];
    assert_eq!(
        (&local["slots_used"], &local["prepared"]),
        (&serde_json::json!(1), &serde_json::json!(1)),
        "{health}"
    );
    let body = cancel(&server, &cancelled).await;
    assert_eq!(body["State"]["Status"], "cancelled");
    // Gone by the time the cancel answers.
    let left = containers_of(&cancelled);
    assert!(left.is_empty(), "the cancelled run still has {left:?}");

    // Prepared again after a drain took it away, and started when the slot frees: the
    // container that runs is the one prepared.
    let next = precheck(&server, "chip_sleep3").await;
    let first = prepared(&next).await;
    ok(&server, &["engines", "drain", "local"]);
    wait_until_async(
        Duration::from_secs(30),
        "a drain removes the prepared container",
        || async { containers_of(&next).is_empty() },
    )
    .await;
    assert_eq!(status(&server, &next).await, "queued");
    ok(&server, &["engines", "resume", "local"]);
    let again = prepared(&next).await;
    assert_ne!(first, again, "the drained engine's container was kept");
    assert_eq!(status(&server, &next).await, "queued");

    cancel(&server, &busy).await;
    wait_for_line(&server, &next, "second 1 of 3").await;
    assert_eq!(
        containers_of(&next),
        [(again, "running".to_string())],
        "the run did not start the container prepared for it"
    );
    let result = wait(&server, &next).await;
    assert_eq!(result["StatusCode"], 0, "{result}");
    server.assert_no_containers();
}

#[tokio::test]
async fn a_killed_server_with_prepared_containers_runs_each_run_once() {
    let mut server = TestServer::builder().max_concurrent(1).start();
    let first = precheck(&server, "chip_sleep3").await;
    let second = precheck(&server, "chip_sleep2").await;
    wait_for_line(&server, &first, "second 1 of 3").await;
    let left = prepared(&second).await;
    server.kill();

    server.restart();
    // The first run is watched again; the second's leftover container goes at the start, and
    // it is prepared and run once, in a new one.
    for (run, n) in [(&first, 3), (&second, 2)] {
        let result = wait(&server, run).await;
        assert_eq!(result["StatusCode"], 0, "{result}");
        let log = lines(&logs(&server, run, "").await);
        let seconds = log.iter().filter(|l| l.contains("second ")).count();
        assert_eq!(seconds, n, "{log:#?}");
        let starts = log
            .iter()
            .filter(|l| l.contains("Starting a new run of the 'PrecheckFlow' flow"))
            .count();
        assert_eq!(starts, 1, "executed more than once: {log:#?}");
    }
    assert!(
        docker(&["inspect", &left]).status.code() != Some(0),
        "the leftover prepared container is still there"
    );
    server.assert_no_containers();
}
