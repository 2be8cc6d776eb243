//! The second Docker engine the tests of several engines start (issue 16): it runs the stand-in
//! image, its containers outlive a stop of the daemon, and dropping it leaves nothing behind.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use serde_json::Value;

use crate::cli::ok;
use crate::client::{self, get_json, http, inspect, lines, logs, precheck, wait, wait_for_line};
use crate::support::{
    SecondEngine, TestServer, TestServerBuilder, docker_ok, mounts_under, precheck_image,
    processes_naming, wait_until, wait_until_async,
};

/// The label the test puts on its container, valued with the engine's folder name.
const TEST_LABEL: &str = "precheck-server-test.engine";

#[test]
fn a_second_engine_runs_the_stand_in_and_keeps_its_container_across_a_restart() {
    let image = precheck_image();
    // The host's network interfaces (the main engine's `docker0` among them) are the same after.
    let interfaces = || {
        let mut names: Vec<String> = std::fs::read_dir("/sys/class/net")
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| !n.starts_with("veth"))
            .collect();
        names.sort();
        names
    };
    let before = interfaces();
    let mut engine = SecondEngine::start();
    let dir = engine.dir().to_path_buf();
    let label = format!("{TEST_LABEL}={}", engine.name());
    engine.load(image);

    let id = engine.docker_ok(&[
        "run",
        "-d",
        "--network",
        "none",
        "--label",
        &label,
        image,
        "sleep",
        "600",
    ]);
    let pid = engine.docker_ok(&["inspect", "--format", "{{.State.Pid}}", &id]);
    assert!(
        pid.parse::<u32>().is_ok_and(|p| p > 0),
        "the container's pid: {pid:?}"
    );
    let daemon = engine.pid().expect("the daemon runs");

    engine.stop();
    assert!(
        !Path::new(&format!("/proc/{daemon}")).exists(),
        "the daemon {daemon} is still there after the stop"
    );
    assert!(
        !engine.docker(&["info"]).status.success(),
        "the stopped engine still answers"
    );
    assert!(
        Path::new(&format!("/proc/{pid}")).exists(),
        "the container's process {pid} died with the daemon (no live-restore?)"
    );

    engine.start_again();
    assert_eq!(
        engine.docker_ok(&[
            "inspect",
            "--format",
            "{{.State.Status}} {{.State.Pid}}",
            &id
        ]),
        format!("running {pid}"),
        "the container after the engine's restart"
    );
    assert_eq!(
        docker_ok(&["ps", "-aq", "--filter", &format!("label={label}")]),
        "",
        "the main engine has a container of the test"
    );
    engine.docker_ok(&["rm", "-f", &id]);
    assert!(
        !Path::new(&format!("/proc/{pid}")).exists(),
        "the container's process {pid} outlived its removal"
    );

    drop(engine);
    let ours: Vec<String> = ps_lines()
        .into_iter()
        .filter(|line| line.contains(dir.to_string_lossy().as_ref()))
        .collect();
    assert!(
        ours.is_empty(),
        "processes of the engine are left: {ours:?}"
    );
    assert!(
        processes_naming(&dir).is_empty(),
        "processes naming {} are left",
        dir.display()
    );
    assert!(
        mounts_under(&dir).is_empty(),
        "mounts are left under {}: {:?}",
        dir.display(),
        mounts_under(&dir)
    );
    assert!(
        !dir.exists(),
        "the engine's folder {} is left",
        dir.display()
    );
    let name = dir.file_name().expect("a folder name");
    let cgroups: Vec<_> = std::fs::read_dir("/sys/fs/cgroup")
        .expect("read /sys/fs/cgroup")
        .flatten()
        .map(|h| h.path().join(name))
        .filter(|p| p.exists())
        .collect();
    assert!(cgroups.is_empty(), "cgroups are left: {cgroups:?}");
    assert_eq!(
        interfaces(),
        before,
        "the second engine changed the host's network interfaces"
    );
}

/// `ps -eo pid,args`, one line a process.
fn ps_lines() -> Vec<String> {
    let out = Command::new("ps")
        .args(["-eo", "pid,args"])
        .output()
        .expect("run `ps`");
    assert!(out.status.success(), "`ps` failed: {}", out.status);
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

/// The main engine's address, as the tests' `docker` finds it.
fn main_host() -> String {
    std::env::var("DOCKER_HOST").unwrap_or_else(|_| "unix:///var/run/docker.sock".into())
}

/// A server driving the main engine (`main`, `main_slots`) and `second` (`second_slots`, with
/// `grace`).
fn two_engines(
    second: &SecondEngine,
    main_slots: usize,
    second_slots: usize,
    grace: &str,
) -> TestServerBuilder {
    TestServer::builder()
        .unset("server.max_concurrent")
        .toml(&format!(
            "[[engines]]\nname = \"main\"\nhost = \"{}\"\nmax_concurrent = {main_slots}\n\n\
             [[engines]]\nname = \"second\"\nhost = \"{}\"\nmax_concurrent = {second_slots}\ngrace = \"{grace}\"\n",
            main_host(),
            second.host()
        ))
}

/// The ids of the containers on `engine` that carry the server's storage label.
fn containers_on(engine: &SecondEngine, server: &TestServer) -> Vec<String> {
    let listed = engine.docker_ok(&["ps", "-aq", "--filter", &server.storage_label_filter()]);
    listed.split_whitespace().map(str::to_string).collect()
}

/// Waits until the second engine holds none of the server's containers.
fn assert_none_on(engine: &SecondEngine, server: &TestServer) {
    wait_until(
        Duration::from_secs(30),
        "no container left on the second engine",
        || containers_on(engine, server).is_empty(),
    );
}

/// The engine a run went to.
async fn engine_of(server: &TestServer, run: &str) -> Option<String> {
    inspect(server, run).await["Config"]["Engine"]
        .as_str()
        .map(str::to_string)
}

/// Waits until the run is running, and returns its engine.
async fn running_on(server: &TestServer, run: &str) -> String {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let body = inspect(server, run).await;
        if body["State"]["Status"] == "running" {
            return body["Config"]["Engine"]
                .as_str()
                .unwrap_or_else(|| panic!("a running run names its engine: {body}"))
                .to_string();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "not running after 60 s: {body}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until every engine's precheck image has passed its self-test.
async fn images_ready(server: &TestServer) {
    wait_until_async(
        Duration::from_secs(60),
        "every engine's image ready",
        || async {
            let (_, body) = get_json(server, "/health").await;
            body["engines"]
                .as_array()
                .is_some_and(|e| e.iter().all(|e| e["image"]["status"] == "ready"))
        },
    )
    .await;
}

/// `/health`'s entry of the engine `name`.
async fn health_of(server: &TestServer, name: &str) -> (u16, Value) {
    let (status, body) = get_json(server, "/health").await;
    let engine = body["engines"]
        .as_array()
        .expect("engines in /health")
        .iter()
        .find(|e| e["name"] == name)
        .cloned()
        .unwrap_or_else(|| panic!("no engine {name} in {body}"));
    (status, engine)
}

/// Asserts that the sleeper's log holds each of its `n` working lines once, in order.
fn every_line_once(log: &[String], top: &str, n: usize) {
    let working: Vec<&String> = log.iter().filter(|l| l.contains("working on")).collect();
    let expected: Vec<String> = (1..=n)
        .map(|i| format!("working on {top}: second {i} of {n}"))
        .collect();
    assert_eq!(working.len(), n, "the log's working lines: {working:#?}");
    for (line, want) in working.iter().zip(&expected) {
        assert!(
            line.contains(want.as_str()),
            "{line:?} is not {want:?}: {working:#?}"
        );
    }
}

#[tokio::test]
async fn runs_spread_over_two_engines() {
    let second = SecondEngine::start();
    second.load(precheck_image());
    let server = two_engines(&second, 1, 1, "10m").start();
    // Both engines' images pass their self-tests before runs are placed on them.
    wait_until_async(Duration::from_secs(60), "both images ready", || async {
        let (_, body) = get_json(&server, "/health").await;
        body["engines"]
            .as_array()
            .is_some_and(|e| e.len() == 2 && e.iter().all(|e| e["image"]["status"] == "ready"))
    })
    .await;
    let mut events = http()
        .get(server.api("/api/v1/events?type=started"))
        .send()
        .await
        .unwrap();
    let runs = [
        precheck(&server, "chip_sleep4").await,
        precheck(&server, "chip_sleep4").await,
        precheck(&server, "chip_sleep4").await,
        precheck(&server, "chip_sleep4").await,
    ];
    // The first two leave the queue at once, one on each engine.
    let first = running_on(&server, &runs[0]).await;
    let second_run = running_on(&server, &runs[1]).await;
    let mut both = vec![first, second_run];
    both.sort();
    assert_eq!(both, ["main", "second"]);
    let (_, main) = health_of(&server, "main").await;
    assert_eq!(
        (main["slots_used"].as_u64(), main["slots_total"].as_u64()),
        (Some(1), Some(1))
    );
    assert_eq!(main["can_take_runs"], true);
    let (status, other) = health_of(&server, "second").await;
    assert_eq!(status, 200);
    assert_eq!(other["reachable"], true);
    assert_eq!(other["host"], second.host());
    assert_eq!(other["slots_used"], 1);

    for run in &runs {
        assert_eq!(wait(&server, run).await["StatusCode"], 0);
    }
    let mut engines = vec![];
    for run in &runs {
        engines.push(
            engine_of(&server, run)
                .await
                .expect("a finished run names its engine"),
        );
    }
    assert!(engines.iter().any(|e| e == "second"), "{engines:?}");
    assert!(engines.iter().any(|e| e == "main"), "{engines:?}");

    // Each started event names the engine.
    let mut text = String::new();
    while text.lines().count() < runs.len() {
        match tokio::time::timeout(Duration::from_secs(10), events.chunk()).await {
            Ok(Ok(Some(chunk))) => text.push_str(&String::from_utf8_lossy(&chunk)),
            other => panic!("the events ended after {text:?}: {other:?}"),
        }
    }
    for line in text.lines() {
        let event: Value = serde_json::from_str(line).unwrap();
        let engine = event["Actor"]["Attributes"]["engine"].as_str();
        assert!(matches!(engine, Some("main" | "second")), "{line}");
    }
    let metrics = http()
        .get(server.api("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let started = |engine: &str| {
        let series =
            format!("precheck_engine_runs_started_total{{engine=\"{engine}\",kind=\"precheck\"}} ");
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(&series))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .unwrap_or_else(|| panic!("no {series} in {metrics}"))
    };
    assert_eq!(started("main") + started("second"), 4);
    assert!(started("second") >= 1);
    assert!(
        metrics.contains("precheck_engine_up{engine=\"second\"} 1"),
        "{metrics}"
    );
    server.assert_no_containers();
    assert_none_on(&second, &server);
}

#[tokio::test]
async fn an_engine_without_the_image_gets_no_runs() {
    let second = SecondEngine::start();
    // No image loaded on the second engine, and it has more free slots than the main one.
    let server = two_engines(&second, 1, 3, "10m").start();
    let runs = [
        precheck(&server, "chip_sleep2").await,
        precheck(&server, "chip_sleep2").await,
        precheck(&server, "chip").await,
    ];
    for run in &runs {
        assert_eq!(
            wait(&server, run).await["StatusCode"],
            0,
            "{}",
            inspect(&server, run).await
        );
        assert_eq!(engine_of(&server, run).await.as_deref(), Some("main"));
    }
    let (status, other) = health_of(&server, "second").await;
    assert_eq!(status, 200, "healthy while the main engine can take runs");
    assert_eq!(other["reachable"], true);
    assert_eq!(other["image"]["status"], "missing", "{other}");
    assert_eq!(other["can_take_runs"], false);
    assert!(containers_on(&second, &server).is_empty());
    server.assert_no_containers();
}

#[tokio::test]
async fn an_engine_away_within_its_grace_keeps_its_run() {
    let mut second = SecondEngine::start();
    second.load(precheck_image());
    // The main engine has no slot to give: the run goes to the second.
    let server = two_engines(&second, 1, 1, "10m").start();
    let blocker = precheck(&server, "chip_sleep40").await;
    assert_eq!(running_on(&server, &blocker).await, "main");
    let top = "chip_sleep12";
    let run = precheck(&server, top).await;
    assert_eq!(running_on(&server, &run).await, "second");
    wait_for_line(&server, &run, "second 2 of 12").await;

    second.stop();
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(inspect(&server, &run).await["State"]["Status"], "running");
    let (_, away) = health_of(&server, "second").await;
    assert_eq!(away["reachable"], false, "{away}");
    second.start_again();

    let done = wait(&server, &run).await;
    assert_eq!(done["StatusCode"], 0, "{done}");
    every_line_once(&lines(&logs(&server, &run, "").await), top, 12);
    assert_eq!(engine_of(&server, &run).await.as_deref(), Some("second"));
    client::cancel(&server, &blocker).await;
    wait(&server, &blocker).await;
    assert_none_on(&second, &server);
    server.assert_no_containers();
}

#[tokio::test]
async fn an_engine_away_past_its_grace_fails_its_run() {
    let mut second = SecondEngine::start();
    second.load(precheck_image());
    let server = two_engines(&second, 1, 1, "3s").start();
    let blocker = precheck(&server, "chip_sleep60").await;
    assert_eq!(running_on(&server, &blocker).await, "main");
    let run = precheck(&server, "chip_sleep60").await;
    assert_eq!(running_on(&server, &run).await, "second");
    wait_for_line(&server, &run, "second 1 of 60").await;
    let container = containers_on(&second, &server);
    assert_eq!(container.len(), 1, "{container:?}");

    second.stop();
    let done = wait(&server, &run).await;
    let message = done["Error"]["Message"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        message.starts_with("engine \"second\" unreachable since "),
        "{done}"
    );
    assert_ne!(done["StatusCode"], 0);
    assert_eq!(inspect(&server, &run).await["State"]["Status"], "failed");

    // Once the engine is back, the run's container is removed from it.
    second.start_again();
    assert_none_on(&second, &server);
    client::cancel(&server, &blocker).await;
    wait(&server, &blocker).await;
    server.assert_no_containers();
}

#[tokio::test]
async fn a_kill_9_with_runs_on_both_engines_loses_none_and_runs_none_twice() {
    let second = SecondEngine::start();
    second.load(precheck_image());
    let mut server = two_engines(&second, 1, 1, "10m").start();
    let top = "chip_sleep10";
    let a = precheck(&server, top).await;
    let b = precheck(&server, top).await;
    let mut on = vec![running_on(&server, &a).await, running_on(&server, &b).await];
    on.sort();
    assert_eq!(on, ["main", "second"]);
    wait_for_line(&server, &a, "second 2 of 10").await;
    wait_for_line(&server, &b, "second 2 of 10").await;

    server.kill();
    tokio::time::sleep(Duration::from_secs(2)).await;
    server.restart();
    for run in [&a, &b] {
        let done = wait(&server, run).await;
        assert_eq!(done["StatusCode"], 0, "{done}");
        every_line_once(&lines(&logs(&server, run, "").await), top, 10);
    }
    // Each working line once: both were watched again, neither started a second time.
    assert_none_on(&second, &server);
    server.assert_no_containers();
}

#[tokio::test]
async fn a_drained_engine_takes_no_new_runs_and_stays_drained_across_a_restart() {
    let second = SecondEngine::start();
    second.load(precheck_image());
    let mut server = two_engines(&second, 1, 1, "10m").start();
    images_ready(&server).await;
    // A run on the second engine, then the drain: it goes on to its end.
    let blocker = precheck(&server, "chip_sleep90").await;
    let on_second = precheck(&server, "chip_sleep6").await;
    // Both free: the first in the config takes the first run.
    assert_eq!(running_on(&server, &blocker).await, "main");
    assert_eq!(running_on(&server, &on_second).await, "second");
    let said = ok(&server, &["engines", "drain", "second"]);
    assert_eq!(
        said.trim(),
        "engine second drained: it takes no new runs; the run on it goes on to its end"
    );
    let queued = precheck(&server, "chip").await;
    assert_eq!(wait(&server, &on_second).await["StatusCode"], 0);
    // The second engine is free, but drained: the run waits for the main one.
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(inspect(&server, &queued).await["State"]["Status"], "queued");
    let (_, drained) = health_of(&server, "second").await;
    assert_eq!(
        (
            drained["drained"].as_bool(),
            drained["can_take_runs"].as_bool()
        ),
        (Some(true), Some(false))
    );
    let listed: Value = serde_json::from_str(&ok(&server, &["engines", "list", "--json"])).unwrap();
    assert_eq!(listed[1]["Name"], "second");
    assert_eq!(listed[1]["Drained"], true);
    assert_eq!(listed[1]["Reachable"], true);
    assert_eq!(listed[0]["Running"], 1);
    let table = ok(&server, &["engines", "list"]);
    assert!(table.lines().next().unwrap().contains("DRAINED"), "{table}");

    // Resumed, it takes the queued run.
    assert_eq!(
        ok(&server, &["engines", "resume", "second"]).trim(),
        "engine second resumed: it takes runs again"
    );
    assert_eq!(wait(&server, &queued).await["StatusCode"], 0);
    assert_eq!(engine_of(&server, &queued).await.as_deref(), Some("second"));

    // Drained again, it stays drained after a restart.
    ok(&server, &["engines", "drain", "second"]);
    server.stop();
    server.restart();
    let after = precheck(&server, "chip").await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(inspect(&server, &after).await["State"]["Status"], "queued");
    let (_, drained) = health_of(&server, "second").await;
    assert_eq!(drained["drained"], true);
    let unknown = crate::cli::cli(&server, &["engines", "drain", "nope"]);
    assert_eq!(unknown.code, 1);
    assert!(
        unknown.stderr.contains("no engine \"nope\" in")
            && unknown.stderr.contains("its engines are main, second"),
        "{}",
        unknown.stderr
    );
    client::cancel(&server, &blocker).await;
    assert_eq!(wait(&server, &after).await["StatusCode"], 0);
    assert_eq!(engine_of(&server, &after).await.as_deref(), Some("main"));
    assert_none_on(&second, &server);
    server.assert_no_containers();
}

#[tokio::test]
async fn a_run_whose_engine_is_away_at_start_waits_for_it() {
    let mut second = SecondEngine::start();
    second.load(precheck_image());
    let mut server = two_engines(&second, 1, 1, "10m").start();
    let blocker = precheck(&server, "chip_sleep60").await;
    assert_eq!(running_on(&server, &blocker).await, "main");
    let top = "chip_sleep10";
    let run = precheck(&server, top).await;
    assert_eq!(running_on(&server, &run).await, "second");
    wait_for_line(&server, &run, "second 2 of 10").await;

    // The server dies, and its run's engine is away when it starts again.
    server.kill();
    second.stop();
    server.restart();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let body = inspect(&server, &run).await;
    assert_eq!(body["State"]["Status"], "running", "{body}");
    let (status, away) = health_of(&server, "second").await;
    assert_eq!(status, 200, "the main engine takes runs");
    assert_eq!(away["reachable"], false);
    client::cancel(&server, &blocker).await;
    second.start_again();
    let done = wait(&server, &run).await;
    assert_eq!(done["StatusCode"], 0, "{done}");
    every_line_once(&lines(&logs(&server, &run, "").await), top, 10);
    wait(&server, &blocker).await;
    assert_none_on(&second, &server);
    server.assert_no_containers();
}

#[tokio::test]
async fn a_run_cancelled_while_its_engine_is_away_ends_at_once() {
    let mut second = SecondEngine::start();
    second.load(precheck_image());
    let server = two_engines(&second, 1, 1, "10m").start();
    let blocker = precheck(&server, "chip_sleep60").await;
    assert_eq!(running_on(&server, &blocker).await, "main");
    let run = precheck(&server, "chip_sleep60").await;
    assert_eq!(running_on(&server, &run).await, "second");
    wait_for_line(&server, &run, "second 1 of 60").await;
    second.stop();
    tokio::time::sleep(Duration::from_secs(3)).await;
    client::cancel(&server, &run).await;
    let done = wait(&server, &run).await;
    assert_eq!(
        inspect(&server, &run).await["State"]["Status"],
        "cancelled",
        "{done}"
    );
    // Back, the engine loses the cancelled run's container.
    second.start_again();
    assert_none_on(&second, &server);
    client::cancel(&server, &blocker).await;
    wait(&server, &blocker).await;
    server.assert_no_containers();
}

/// Creates `n` no-op prechecks of one upload at once and waits for them all; returns how long
/// that took and each run's engine. `scripts/bench.sh` prints what the test below measures.
async fn no_op_runs(server: &TestServer, n: usize) -> (Duration, Vec<String>) {
    let upload = client::upload(server, "chip.gds", crate::support::gds_bytes("chip")).await;
    let t0 = std::time::Instant::now();
    let mut runs = vec![];
    for _ in 0..n {
        runs.push(
            client::create(server, &upload, "chip").await["Id"]
                .as_str()
                .unwrap()
                .to_string(),
        );
    }
    for run in &runs {
        assert_eq!(wait(server, run).await["StatusCode"], 0);
    }
    let took = t0.elapsed();
    let mut engines = vec![];
    for run in &runs {
        engines.push(engine_of(server, run).await.unwrap_or_default());
    }
    (took, engines)
}

#[tokio::test]
async fn forty_no_op_runs_go_through_one_engine_and_through_two() {
    let second = SecondEngine::start();
    second.load(precheck_image());
    let one = TestServer::builder().max_concurrent(2).start();
    let (alone, engines) = no_op_runs(&one, 40).await;
    assert!(engines.iter().all(|e| e == "local"), "{engines:?}");
    one.assert_no_containers();
    drop(one);

    let two = two_engines(&second, 2, 2, "10m").start();
    images_ready(&two).await;
    let (together, engines) = no_op_runs(&two, 40).await;
    let on_second = engines.iter().filter(|e| *e == "second").count();
    assert!(on_second > 0 && on_second < 40, "{engines:?}");
    println!(
        "40 no-op runs: 1 engine x 2 slots {:.1} s, 2 engines x 2 slots {:.1} s ({on_second} on the second): {:.2}x the throughput",
        alone.as_secs_f64(),
        together.as_secs_f64(),
        alone.as_secs_f64() / together.as_secs_f64()
    );
    assert_none_on(&second, &two);
    two.assert_no_containers();
}
