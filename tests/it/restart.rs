//! Restarts lose nothing: a run whose server is killed goes on in its container and is picked
//! up again (still running, finished meanwhile, or gone), a SIGTERM leaves containers running,
//! and a half-received upload never becomes an upload.

use std::time::{Duration, Instant};

use serde_json::Value;

use crate::client::{self, get_json, inspect, lines, logs, precheck, wait, wait_for_line};
use crate::support::{TestServer, docker_ok, files_in, partial_upload, wait_until_async};

/// The run's container (there must be exactly one), found by its run-id label.
fn container_of(run: &str) -> String {
    let ids = docker_ok(&[
        "ps",
        "-aq",
        "--no-trunc",
        "--filter",
        &format!("label=precheck-server.run-id={run}"),
    ]);
    let ids: Vec<&str> = ids.split_whitespace().collect();
    assert_eq!(ids.len(), 1, "containers of run {run}: {ids:?}");
    ids[0].to_string()
}

fn container_state(id: &str) -> String {
    docker_ok(&["inspect", "-f", "{{.State.Status}}", id])
        .trim()
        .to_string()
}

/// Starts a server and a `chip_sleepN` run (N from `top`) and waits until the run has printed
/// its first second.
async fn server_with_a_sleeper(server: TestServer, top: &str) -> (TestServer, String) {
    let run = precheck(&server, top).await;
    let n = top.trim_start_matches("chip_sleep");
    wait_for_line(&server, &run, &format!("second 1 of {n}")).await;
    (server, run)
}

/// The lines of a passing run of the stand-in: 9 before the flow (`None`, the PDK, the
/// arguments), the flow's start, a rule and a "Running" line for each of its 16 steps, 15 lines
/// of the steps' tools, 5 of the checkers, "Flow complete.", the progress bar and "Precheck
/// successfully completed.".
const PASSING_RUN_LINES: usize = 9 + 1 + 16 * 2 + 15 + 5 + 3;

/// Waits for a `chip_sleepN` run and asserts it passed with its whole log.
async fn assert_passed(server: &TestServer, run: &str, n: usize) {
    let result = wait(server, run).await;
    assert_eq!(result["StatusCode"], 0, "{result}");
    assert_full_log(server, run, n).await;
}

/// Asserts that the log of a passed `chip_sleepN` run holds every line the stand-in printed,
/// once each and in order, and the server's closing line.
async fn assert_full_log(server: &TestServer, run: &str, n: usize) {
    let log = lines(&logs(server, run, "").await);
    let seconds: Vec<&String> = log.iter().filter(|l| l.contains("second ")).collect();
    let expected: Vec<String> = (1..=n)
        .map(|i| format!("working on chip_sleep{n}: second {i} of {n}"))
        .collect();
    assert_eq!(seconds, expected.iter().collect::<Vec<_>>(), "{log:#?}");
    let mut unique = log.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), log.len(), "duplicated lines: {log:#?}");
    assert_eq!(
        log.iter()
            .filter(|l| l.contains("Starting a new run of the 'PrecheckFlow' flow"))
            .count(),
        1,
        "executed more than once: {log:#?}"
    );
    let tail: Vec<&str> = log[log.len() - 2..].iter().map(String::as_str).collect();
    assert_eq!(
        tail,
        [
            "Precheck successfully completed.",
            "[precheck-server] run completed (exit code 0)"
        ],
        "{log:#?}"
    );
    // The stand-in's passing run, its N seconds and the server's line.
    assert_eq!(log.len(), PASSING_RUN_LINES + n + 1, "{log:#?}");
}

async fn output_status(server: &TestServer, run: &str) -> u16 {
    let url = server.api(&format!("/api/v1/prechecks/{run}/output"));
    client::http()
        .get(url)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

#[tokio::test]
async fn a_running_run_survives_a_killed_server() {
    let (mut server, run) = server_with_a_sleeper(TestServer::start(""), "chip_sleep8").await;
    server.kill();
    let container = container_of(&run);
    assert_eq!(container_state(&container), "running");
    // Lines printed while the server is down must reach the log too.
    tokio::time::sleep(Duration::from_secs(2)).await;
    server.restart();
    assert_eq!(inspect(&server, &run).await["State"]["Status"], "running");
    assert_passed(&server, &run, 8).await;
    assert_eq!(output_status(&server, &run).await, 200);
    server.assert_no_containers();
}

#[tokio::test]
async fn a_run_that_finished_while_the_server_was_down_is_collected() {
    let (mut server, run) = server_with_a_sleeper(TestServer::start(""), "chip_sleep5").await;
    server.kill();
    let container = container_of(&run);
    wait_until_async(Duration::from_secs(60), "the container exits", || async {
        container_state(&container) == "exited"
    })
    .await;
    server.restart();
    assert_passed(&server, &run, 5).await;
    assert_eq!(output_status(&server, &run).await, 200);
    let state = &inspect(&server, &run).await["State"];
    assert_eq!(state["Status"], "completed");
    // The flow directory came out as if the server had watched the run end.
    let runs = server.storage.join("runs").join(&run).join("work/runs");
    let flows = files_in(&runs);
    assert_eq!(flows.len(), 1, "{flows:?}");
    let flow = runs.join(&flows[0]);
    assert!(flow.join("14-klayout-drc/state_out.json").is_file());
    assert!(flow.join("final/gds/chip_sleep5.gds").is_file());
    server.assert_no_containers();
}

#[tokio::test]
async fn a_run_whose_container_was_removed_fails_as_lost() {
    let (mut server, run) = server_with_a_sleeper(TestServer::start(""), "chip_sleep5").await;
    server.kill();
    docker_ok(&["rm", "-f", &container_of(&run)]);
    server.restart();
    let result = wait(&server, &run).await;
    assert_ne!(result["StatusCode"], 0, "{result}");
    assert_eq!(
        result["Error"]["Message"],
        "container lost while the server was down"
    );
    assert_eq!(inspect(&server, &run).await["State"]["Status"], "failed");
    // Ended at start, it is counted as any run that ends is.
    let metrics = client::http()
        .get(server.api("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let failed = "precheck_runs_finished_total{kind=\"precheck\",status=\"failed\"} 1";
    assert!(
        metrics.lines().any(|l| l == failed),
        "no {failed} in\n{metrics}"
    );
    server.assert_no_containers();
}

#[tokio::test]
async fn queued_runs_and_a_container_that_never_started_run_once_after_a_restart() {
    let mut server = TestServer::builder().max_concurrent(1).start();
    let first = precheck(&server, "chip_sleep3").await;
    let second = precheck(&server, "chip_sleep2").await;
    wait_for_line(&server, &first, "second 1 of 3").await;
    server.kill();
    // Stand in for a server killed between creating a container and starting it: the first
    // run's container is replaced by one that was created and never started.
    let container = container_of(&first);
    let labels = docker_ok(&[
        "inspect",
        "-f",
        "{{range $k, $v := .Config.Labels}}{{$k}}={{$v}}\n{{end}}",
        &container,
    ]);
    let image = docker_ok(&["inspect", "-f", "{{.Config.Image}}", &container]);
    docker_ok(&["rm", "-f", &container]);
    let mut create = vec!["create".to_string()];
    for label in labels.lines().filter(|l| !l.is_empty()) {
        create.extend(["--label".to_string(), label.to_string()]);
    }
    create.extend([image.trim().to_string(), "sh".to_string()]);
    let args: Vec<&str> = create.iter().map(String::as_str).collect();
    let created = docker_ok(&args);
    assert_eq!(container_state(created.trim()), "created");
    // ... and its start never asked for, as the server records before it asks.
    let db = rusqlite::Connection::open(server.storage.join("precheck.sqlite")).unwrap();
    db.execute(
        "UPDATE runs SET start_sent_at = NULL WHERE id = ?1",
        [first.as_str()],
    )
    .unwrap();
    drop(db);

    server.restart();
    // The first run starts over (its log too), in a new container; the second follows.
    assert_passed(&server, &first, 3).await;
    assert_passed(&server, &second, 2).await;
    server.assert_no_containers();
}

#[tokio::test]
async fn sigterm_answers_waits_leaves_containers_running_and_exits_quickly() {
    let (mut server, run) = server_with_a_sleeper(TestServer::start(""), "chip_sleep6").await;
    let url = server.api(&format!("/api/v1/prechecks/{run}/wait?timeout=300"));
    let waiting = tokio::spawn(async move {
        let resp = client::http().post(url).send().await.unwrap();
        let status = resp.status().as_u16();
        (status, resp.json::<Value>().await.unwrap())
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let stopping = Instant::now();
    let exit = server.stop();
    let took = stopping.elapsed();
    assert!(exit.success(), "{exit:?}");
    assert!(took < Duration::from_secs(10), "stopping took {took:?}");
    let (status, body) = waiting.await.unwrap();
    assert_eq!(status, 503, "{body}");
    let message = body["message"].as_str().unwrap();
    assert!(message.contains("shutting down"), "{message}");
    assert_eq!(container_state(&container_of(&run)), "running");

    server.restart();
    assert_passed(&server, &run, 6).await;
    server.assert_no_containers();
}

#[tokio::test]
async fn a_killed_server_leaves_no_half_upload() {
    let mut server = TestServer::start("");
    let _conn = partial_upload(&server).await;
    let tmp = server.storage.join("tmp");
    wait_until_async(
        Duration::from_secs(10),
        "the partial upload is being written",
        || async { !files_in(&tmp).is_empty() },
    )
    .await;
    server.kill();
    server.restart();
    assert!(files_in(&tmp).is_empty(), "tmp/ holds {:?}", files_in(&tmp));
    assert!(files_in(&server.storage.join("uploads")).is_empty());
    let (status, list) = get_json(&server, "/api/v1/uploads").await;
    assert_eq!((status, list), (200, serde_json::json!([])));
}
