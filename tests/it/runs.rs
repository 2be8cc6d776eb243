//! Runs in real containers: isolation, limits, timeouts, cancel, and logs that outlive them.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::client::{self, cancel, inspect, lines, logs, precheck, wait};
use crate::support::TestServer;

#[tokio::test]
async fn container_has_no_network() {
    let server = TestServer::start("");
    let run = precheck(&server, "chip_net").await;
    let result = wait(&server, &run).await;
    let log = lines(&logs(&server, &run, "").await).join("\n");
    assert_eq!(
        result["StatusCode"], 0,
        "the stand-in found a network interface: {log}"
    );
    assert!(log.contains("loopback only"), "{log}");
    server.assert_no_containers();
}

#[tokio::test]
async fn threads_are_the_cpu_limit_rounded_up() {
    // The stand-in echoes its arguments, as the real precheck does: `threads: max` is its
    // default, the host's CPU count.
    for (extra, expected) in [
        ("[limits]\ncpus = 1.5\n", "threads: 2"),
        ("", "threads: max"),
    ] {
        let server = TestServer::start(extra);
        let run = precheck(&server, "chip_top").await;
        assert_eq!(wait(&server, &run).await["StatusCode"], 0);
        let log = lines(&logs(&server, &run, "").await);
        let threads: Vec<&String> = log.iter().filter(|l| l.starts_with("threads: ")).collect();
        assert_eq!(threads, [expected], "{extra:?}: {log:#?}");
        server.assert_no_containers();
    }
}

#[tokio::test]
async fn exit_1_is_a_found_problem_only_when_a_checker_says_so() {
    let server = TestServer::builder().max_concurrent(2).start();
    let failing = precheck(&server, "chip_fail").await;
    let crashing = precheck(&server, "chip_crash").await;

    let result = wait(&server, &failing).await;
    assert_eq!(
        result,
        serde_json::json!({"StatusCode": 1, "Error": {"Message":
            "the precheck found problems (exit code 1): 3 KLayout DRC errors found; see the logs"}})
    );
    // Checker errors are deferred: the layout was checked to the end and written.
    let run_dir = server.storage.join("runs").join(&failing);
    let output = std::fs::read(run_dir.join("output/design.gds")).unwrap();
    assert_eq!(output, crate::support::gds_bytes("chip_fail"));

    let result = wait(&server, &crashing).await;
    assert_eq!(
        result,
        serde_json::json!({"StatusCode": 1, "Error": {"Message":
            "the precheck failed (exit code 1): see the logs"}})
    );
    let log = lines(&logs(&server, &crashing, "").await);
    assert!(
        log.iter().any(|l| l == "DRC: Interrupted (SIGSEGV)"),
        "{log:#?}"
    );
    let run_dir = server.storage.join("runs").join(&crashing);
    assert!(!run_dir.join("output/design.gds").exists());
    server.assert_no_containers();
}

#[tokio::test]
async fn out_of_memory_fails_with_oom_killed() {
    let server = TestServer::builder().memory("64MiB").start();
    let run = precheck(&server, "chip_oom").await;
    let result = wait(&server, &run).await;
    assert_ne!(result["StatusCode"], 0);
    let message = result["Error"]["Message"].as_str().unwrap();
    assert!(
        message.contains("out of memory (limit 64 MiB)"),
        "{message}"
    );
    let state = &inspect(&server, &run).await["State"];
    assert_eq!(state["Status"], "failed");
    assert_eq!(state["OOMKilled"], true);
    server.assert_no_containers();
}

#[tokio::test]
async fn a_run_over_the_timeout_fails_and_says_so() {
    let server = TestServer::builder().timeout("3s").start();
    let run = precheck(&server, "chip_sleep60").await;
    let started = Instant::now();
    let result = wait(&server, &run).await;
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "took {:?}",
        started.elapsed()
    );
    assert_eq!(result["StatusCode"], 124);
    let message = result["Error"]["Message"].as_str().unwrap();
    assert!(message.contains("timed out after 3 s"), "{message}");
    assert_eq!(inspect(&server, &run).await["State"]["Status"], "failed");
    let log = lines(&logs(&server, &run, "").await);
    assert!(log.iter().any(|l| l.contains("timed out")), "{log:?}");
    server.assert_no_containers();
}

#[tokio::test]
async fn queue_is_fifo_and_a_cancelled_queued_run_never_starts() {
    let server = TestServer::builder().max_concurrent(1).start();
    let first = precheck(&server, "chip_sleep3").await;
    crate::client::wait_for_line(&server, &first, "second 1 of 3").await;
    let second = precheck(&server, "chip_top").await;
    let third = precheck(&server, "chip_top").await;
    let body = inspect(&server, &third).await;
    assert_eq!(body["State"]["Status"], "queued");
    assert_eq!(body["Queue"]["Position"], 2);
    assert_eq!(body["Queue"]["Length"], 2);

    let cancelled = cancel(&server, &second).await;
    assert_eq!(cancelled["State"]["Status"], "cancelled");
    let result = wait(&server, &second).await;
    assert_eq!(result["StatusCode"], 130);
    assert!(
        result["Error"]["Message"]
            .as_str()
            .unwrap()
            .contains("cancelled")
    );

    assert_eq!(wait(&server, &first).await["StatusCode"], 0);
    assert_eq!(wait(&server, &third).await["StatusCode"], 0);
    let second = inspect(&server, &second).await;
    assert_eq!(
        second["State"]["StartedAt"],
        serde_json::Value::Null,
        "a cancelled queued run started"
    );
    server.assert_no_containers();
}

#[tokio::test]
async fn a_slot_is_free_once_its_container_stops_while_its_results_are_copied_out() {
    let server = TestServer::builder().max_concurrent(1).start();
    // 512 MiB of results to copy out after its container has stopped.
    let first = precheck(&server, "chip_bigwork").await;
    let second = precheck(&server, "chip_top").await;
    assert_eq!(wait(&server, &first).await["StatusCode"], 0);
    assert_eq!(wait(&server, &second).await["StatusCode"], 0);
    let first = inspect(&server, &first).await;
    let second = inspect(&server, &second).await;
    let at = |run: &serde_json::Value, field: &str| {
        time::OffsetDateTime::parse(
            run["State"][field].as_str().unwrap(),
            &time::format_description::well_known::Rfc3339,
        )
        .unwrap()
    };
    assert!(
        at(&second, "StartedAt") < at(&first, "FinishedAt"),
        "the second run waited for the first one's copy-out: {} started, {} finished",
        second["State"]["StartedAt"],
        first["State"]["FinishedAt"]
    );
    server.assert_no_containers();
}

#[tokio::test]
async fn cancel_stops_a_running_container_within_10_s() {
    let server = TestServer::start("");
    let run = precheck(&server, "chip_sleep120").await;
    crate::support::wait_until_async(Duration::from_secs(30), "the run is running", || {
        let server = &server;
        let run = run.clone();
        async move { inspect(server, &run).await["State"]["Status"] == "running" }
    })
    .await;
    // Let the container get going.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let started = Instant::now();
    let body = cancel(&server, &run).await;
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "cancel took {:?}",
        started.elapsed()
    );
    assert_eq!(body["State"]["Status"], "cancelled");
    assert_eq!(body["State"]["ExitCode"], 130);
    let result = wait(&server, &run).await;
    assert_eq!(result["StatusCode"], 130);
    server.assert_no_containers();
}

#[tokio::test]
async fn wait_returns_as_soon_as_the_run_ends() {
    let server = TestServer::start("");
    let run = precheck(&server, "chip_sleep2").await;
    let started = Instant::now();
    let result = wait(&server, &run).await;
    assert_eq!(result["StatusCode"], 0);
    let finished = inspect(&server, &run).await["State"]["FinishedAt"]
        .as_str()
        .unwrap()
        .to_string();
    let finished =
        time::OffsetDateTime::parse(&finished, &time::format_description::well_known::Rfc3339)
            .unwrap();
    let lag = time::OffsetDateTime::now_utc() - finished;
    assert!(
        lag < time::Duration::seconds(1),
        "/wait answered {lag} after the run ended"
    );
    assert!(started.elapsed() >= Duration::from_secs(2));
    server.assert_no_containers();
}

/// Samples a process's RSS in the background; `stop` returns the highest value seen (KiB).
struct RssSampler {
    stop: Arc<AtomicBool>,
    peak: Arc<AtomicU64>,
    handle: std::thread::JoinHandle<()>,
}

impl RssSampler {
    fn start(pid: u32) -> RssSampler {
        let stop = Arc::new(AtomicBool::new(false));
        let peak = Arc::new(AtomicU64::new(0));
        let (s, p) = (stop.clone(), peak.clone());
        let handle = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                if let Some(kib) = rss_kib(pid) {
                    p.fetch_max(kib, Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        RssSampler { stop, peak, handle }
    }

    fn stop(self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.join().unwrap();
        self.peak.load(Ordering::Relaxed)
    }
}

pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Idle RSS of a server that has served a request or two (its allocator and pools warmed up).
pub async fn idle_rss(server: &TestServer) -> u64 {
    for _ in 0..3 {
        client::http()
            .get(server.api("/health"))
            .send()
            .await
            .unwrap();
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    server.rss_kib()
}

pub const RSS_SLACK_KIB: u64 = 50 * 1024;

pub fn sample_rss(pid: u32) -> impl FnOnce() -> u64 {
    let sampler = RssSampler::start(pid);
    move || sampler.stop()
}

#[tokio::test]
async fn spam_logs_are_all_kept_after_the_container_is_gone_in_constant_memory() {
    let server = TestServer::start("");
    let idle = idle_rss(&server).await;
    let peak = sample_rss(server.pid());
    let run = precheck(&server, "chip_spam").await;
    // Follow the log while the container prints it.
    let follow = client::http()
        .get(server.api(&format!("/api/v1/prechecks/{run}/logs?follow=true")))
        .send()
        .await
        .unwrap();
    assert_eq!(follow.status(), 200);
    let followed = follow.text().await.unwrap();
    assert_eq!(wait(&server, &run).await["StatusCode"], 0);
    server.assert_no_containers();

    let all = client::http()
        .get(server.api(&format!("/api/v1/prechecks/{run}/logs")))
        .send()
        .await
        .unwrap();
    let all: serde_json::Value = all.json().await.unwrap();
    let peak = peak();
    let all = lines(&all);
    let spam: Vec<&String> = all.iter().filter(|l| l.starts_with("spam line ")).collect();
    assert_eq!(spam.len(), 200_000);
    for (i, line) in spam.iter().enumerate() {
        assert_eq!(**line, format!("spam line {}", i + 1));
    }
    let followed_spam = followed
        .lines()
        .filter(|l| l.starts_with("spam line "))
        .count();
    assert_eq!(followed_spam, 200_000, "follow=true missed lines");

    let tail = lines(&logs(&server, &run, "?tail=10").await);
    assert_eq!(tail, all[all.len() - 10..].to_vec());
    let stamped = lines(&logs(&server, &run, "?tail=1&timestamps=true").await);
    assert!(
        stamped[0].starts_with("20") && stamped[0].contains("Z "),
        "{stamped:?}"
    );

    eprintln!("spam: idle RSS {idle} KiB, peak {peak} KiB");
    assert!(
        peak <= idle + RSS_SLACK_KIB,
        "RSS grew from {idle} KiB to {peak} KiB while logs streamed"
    );
}

#[tokio::test]
async fn since_returns_only_newer_lines() {
    let server = TestServer::start("");
    let run = precheck(&server, "chip_top").await;
    wait(&server, &run).await;
    let all = logs(&server, &run, "").await;
    let n = lines(&all).len();
    assert!(n > 3);
    assert_eq!(all["has_more"], false);
    let last = all["last_timestamp"].as_f64().unwrap();
    let none = logs(&server, &run, &format!("?since={last}")).await;
    assert!(lines(&none).is_empty(), "{none}");
    assert_eq!(none["last_timestamp"].as_f64().unwrap(), last);
    let some = logs(&server, &run, "?since=1").await;
    assert_eq!(lines(&some).len(), n);
    server.assert_no_containers();
}

/// A line's stamp (with `timestamps=true`) passed back as `since`, as Unix seconds to the
/// nanosecond or as the RFC 3339 stamp itself, gives that line and every later one (Docker's
/// `since` is inclusive): none is dropped by rounding to microseconds or through a float.
#[tokio::test]
async fn since_a_lines_nanosecond_stamp_starts_at_that_line() {
    let server = TestServer::start("");
    let run = precheck(&server, "chip_top").await;
    wait(&server, &run).await;
    let stamped = lines(&logs(&server, &run, "?timestamps=true").await);
    assert!(stamped.len() > 10, "{stamped:?}");
    let stamps: Vec<(String, i128)> = stamped
        .iter()
        .map(|line| {
            let stamp = line.split_once(' ').unwrap().0.to_string();
            let t =
                time::OffsetDateTime::parse(&stamp, &time::format_description::well_known::Rfc3339)
                    .unwrap_or_else(|e| panic!("{line:?}: {e}"));
            (stamp, t.unix_timestamp_nanos())
        })
        .collect();
    // Lines of one write are stamped microseconds apart or less: some share a microsecond.
    for (k, (stamp, nanos)) in stamps.iter().enumerate() {
        // The first line stamped at this time (stamps can repeat).
        let first = stamps.iter().position(|(_, n)| n == nanos).unwrap();
        let expected = &stamped[first..];
        let unix = format!("{}.{:09}", nanos / 1_000_000_000, nanos % 1_000_000_000);
        let rfc = stamp.replace(':', "%3A").replace('+', "%2B");
        for since in [unix.as_str(), rfc.as_str()] {
            let got = logs(&server, &run, &format!("?timestamps=true&since={since}")).await;
            assert_eq!(
                lines(&got),
                expected,
                "since={since} (line {k}, {stamp}) must start at that line"
            );
            let tail = logs(
                &server,
                &run,
                &format!("?timestamps=true&tail=2&since={since}"),
            )
            .await;
            assert_eq!(lines(&tail), expected[expected.len().saturating_sub(2)..]);
        }
        // One nanosecond later, the line is not sent.
        let after = format!(
            "{}.{:09}",
            (nanos + 1) / 1_000_000_000,
            (nanos + 1) % 1_000_000_000
        );
        let got = logs(&server, &run, &format!("?timestamps=true&since={after}")).await;
        let later = stamps
            .iter()
            .position(|(_, n)| *n > *nanos)
            .unwrap_or(stamps.len());
        assert_eq!(lines(&got), &stamped[later..], "since={after}");
    }
    // Followed, the same.
    let (stamp, _) = &stamps[stamps.len() / 2];
    let first = stamps.iter().position(|(s, _)| s == stamp).unwrap();
    let url = server.api(&format!(
        "/api/v1/prechecks/{run}/logs?follow=true&timestamps=true&since={}",
        stamp.replace(':', "%3A")
    ));
    let text = client::http()
        .get(url)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(text.lines().collect::<Vec<_>>(), stamped[first..]);
    server.assert_no_containers();
}

#[tokio::test]
async fn a_missing_image_is_reported_by_health_and_fails_runs_with_the_pull_command() {
    // A registry on a closed loopback port: the pull fails at once and no traffic leaves the host.
    let image = "127.0.0.1:9/precheck-server-test/absent:none";
    let server = TestServer::builder().image(image).start();
    crate::support::wait_until_async(
        Duration::from_secs(30),
        "health reports the missing image",
        || {
            let url = server.api("/health");
            async move { client::http().get(url).send().await.unwrap().status() == 503 }
        },
    )
    .await;
    let health: serde_json::Value = client::get_json(&server, "/health").await.1;
    assert_eq!(health["status"], "unhealthy");
    assert_eq!(health["image"]["status"], "missing");
    assert!(
        health["image"]["error"]
            .as_str()
            .unwrap()
            .contains(&format!("docker pull {image}")),
        "{health}"
    );

    let run = precheck(&server, "chip_top").await;
    let result = wait(&server, &run).await;
    assert_eq!(result["StatusCode"], 125);
    let message = result["Error"]["Message"].as_str().unwrap();
    assert!(
        message.contains(image) && message.contains(&format!("docker pull {image}")),
        "{message}"
    );
    server.assert_no_containers();
}

/// The storage folder is the server's alone: 0700 folders and 0600 files, for the database, an
/// upload, a run's folder, log and checked layout (copied out of its container, where it was
/// 0644), though the tests start the server with the usual umask 022.
#[tokio::test]
async fn the_storage_folder_and_its_files_are_the_servers_alone() {
    use std::os::unix::fs::PermissionsExt;
    let server = TestServer::start("");
    let upload = client::upload(
        &server,
        "chip_top.gds",
        crate::support::gds_bytes("chip_top"),
    )
    .await;
    let run = client::create(&server, &upload, "chip_top").await["Id"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(wait(&server, &run).await["StatusCode"], 0);
    let mode = |path: std::path::PathBuf| {
        let meta = std::fs::metadata(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        (path, meta.permissions().mode() & 0o777)
    };
    let storage = &server.storage;
    let runs = storage.join("runs").join(&run);
    let mut checked = vec![
        mode(storage.to_path_buf()),
        mode(storage.join("runs")),
        mode(storage.join("uploads")),
        mode(runs.clone()),
        mode(runs.join("output")),
    ];
    for (path, m) in &checked {
        assert_eq!(*m, 0o700, "folder {} is {m:o}", path.display());
    }
    checked = vec![
        mode(storage.join("precheck.sqlite")),
        mode(storage.join("uploads").join(&upload)),
        mode(runs.join("logs.txt")),
        mode(runs.join("output").join("design.gds")),
    ];
    for (path, m) in &checked {
        assert_eq!(*m, 0o600, "file {} is {m:o}", path.display());
    }
    // Nothing anywhere in the folder is open to others.
    let mut stack = vec![storage.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let entry = entry.unwrap();
            let meta = entry.metadata().unwrap();
            assert_eq!(
                meta.permissions().mode() & 0o077,
                0,
                "{} is {:o}",
                entry.path().display(),
                meta.permissions().mode() & 0o777
            );
            if meta.is_dir() {
                stack.push(entry.path());
            }
        }
    }
    server.assert_no_containers();
}
