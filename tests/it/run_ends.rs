//! A run's end is recorded once, whatever the database, the disk or a stop does at that
//! moment: another process holding the database's lock, a full disk while the log or the
//! results are written, a server stopped while a container is being started.

use std::collections::HashMap;
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::client::{self, get_json, inspect, precheck, upload, wait, wait_for_line};
use crate::support::{TestServer, docker_ok, gds_bytes, write_big_gds};

/// A small tmpfs of its own, unmounted when dropped: a disk that fills up.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    fn new(size: &str) -> Tmpfs {
        let dir = tempfile::tempdir().expect("a folder for the tmpfs");
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .output()
            .expect("run mount");
        assert!(
            out.status.success(),
            "the disk-full tests mount a small tmpfs and need root for it (CI runs as root): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Tmpfs { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn remount(&self, mode: &str) {
        let out = Command::new("mount")
            .args(["-o", &format!("remount,{mode}")])
            .arg(self.path())
            .output()
            .expect("run mount");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Bytes still free.
    fn free(&self) -> u64 {
        let out = Command::new("df")
            .args(["-B1", "--output=avail"])
            .arg(self.path())
            .output()
            .expect("run df");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .nth(1)
            .and_then(|l| l.trim().parse().ok())
            .expect("df's free bytes")
    }

    /// Fills the disk with a file of its own until at most `leave` bytes are free (none: to
    /// the last byte); returns the file, whose removal frees the space again.
    fn fill(&self, leave: u64) -> PathBuf {
        use std::io::Write;
        let path = self.path().join("filler");
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .expect("create the filler");
        let block = vec![0u8; 64 * 1024];
        while self.free() > leave {
            let n = (self.free() - leave).min(block.len() as u64) as usize;
            if file.write_all(&block[..n]).is_err() {
                break;
            }
        }
        if leave == 0 {
            // The last partial blocks, byte by byte.
            while file.write_all(&block[..512]).is_ok() {}
            while file.write_all(&block[..1]).is_ok() {}
        }
        let _ = file.flush();
        path
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(self.path()).status();
    }
}

/// A server whose storage folder is on `disk`.
fn server_on(disk: &Tmpfs) -> TestServer {
    let storage = disk.path().join("data");
    TestServer::builder()
        .set("server.storage_path", storage.display().to_string())
        .start()
}

async fn status_of(server: &TestServer, run: &str) -> String {
    inspect(server, run).await["State"]["Status"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// Every line of a run's log file is whole (`<time> <text>`), and the server's notes start
/// lines of their own.
fn assert_whole_lines(server: &TestServer, run: &str) -> Vec<String> {
    let path = server.storage.join("runs").join(run).join("logs.txt");
    let text = std::fs::read(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    assert!(text.ends_with(b"\n"), "the log ends inside a line");
    let text = String::from_utf8_lossy(&text);
    let lines: Vec<String> = text.lines().map(str::to_string).collect();
    for line in &lines {
        let stamp = line.split(' ').next().unwrap_or_default();
        assert!(
            time::OffsetDateTime::parse(stamp, &time::format_description::well_known::Rfc3339)
                .is_ok(),
            "a line without its time (half a line, or one glued to another): {line:?}"
        );
        let notes = line.matches("[precheck-server]").count();
        assert!(
            notes == 0 || (notes == 1 && line.split(' ').nth(1) == Some("[precheck-server]")),
            "a note glued to a line: {line:?}"
        );
    }
    lines
}

/// `precheck_runs_finished_total` of prechecks with `status`.
async fn finished_count(server: &TestServer, status: &str) -> f64 {
    let text = client::http()
        .get(server.api("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let series = format!("precheck_runs_finished_total{{kind=\"precheck\",status=\"{status}\"}}");
    text.lines()
        .find_map(|l| l.strip_prefix(&series))
        .map(|v| v.trim().parse().unwrap())
        .unwrap_or(0.0)
}

/// Holds the write lock of the server's database from another process's connection (as
/// `precheck-server runs delete` or an operator's `sqlite3` would) for `hold`.
fn hold_write_lock(server: &TestServer, hold: Duration) -> std::thread::JoinHandle<()> {
    let path = server.storage.join("precheck.sqlite");
    let (locked, is_locked) = mpsc::channel();
    let holder = std::thread::spawn(move || {
        let conn = rusqlite::Connection::open(&path).expect("open the server's database");
        conn.execute_batch("BEGIN IMMEDIATE")
            .expect("take the write lock");
        locked.send(()).unwrap();
        std::thread::sleep(hold);
        conn.execute_batch("ROLLBACK").expect("release the lock");
    });
    is_locked
        .recv_timeout(Duration::from_secs(30))
        .expect("the lock was taken");
    holder
}

#[tokio::test]
async fn a_write_waits_for_another_process_that_holds_the_lock() {
    let server = TestServer::start("");
    let upload_id = upload(&server, "chip_top.gds", gds_bytes("chip_top")).await;
    let holder = hold_write_lock(&server, Duration::from_secs(2));
    // A create reads (the upload, an idempotency key) before it writes: taken as a deferred
    // transaction, it could not wait for the lock and failed at once with "database is locked".
    let asked = Instant::now();
    let run = client::create(&server, &upload_id, "chip_top").await;
    let took = asked.elapsed();
    holder.join().unwrap();
    assert!(
        took >= Duration::from_millis(1500),
        "created in {took:?}, inside the lock"
    );
    assert_eq!(
        wait(&server, run["Id"].as_str().unwrap()).await["StatusCode"],
        0
    );
}

#[tokio::test]
async fn a_run_that_ends_while_the_database_is_locked_is_recorded_once() {
    let server = TestServer::start("");
    let spare = upload(&server, "chip_top.gds", gds_bytes("chip_top")).await;
    let run = precheck(&server, "chip_sleep3").await;
    wait_for_line(&server, &run, "second 1 of 3").await;
    // Longer than the busy timeout (10 s) twice over: the run's end waits behind the create
    // below, then fails once at least, and is tried again until the lock is gone.
    let holder = hold_write_lock(&server, Duration::from_secs(25));
    let (status, body) = client::send(
        client::http()
            .post(server.api("/api/v1/prechecks"))
            .json(&json!({"upload_id": spare, "top_cell": "chip_top", "die_id": "TEST0001"})),
    )
    .await;
    assert_eq!(status, 503, "{body}");
    let message = body["message"].as_str().unwrap();
    assert!(message.contains("locked by another process"), "{message}");
    assert_eq!(status_of(&server, &run).await, "running");
    holder.join().unwrap();

    let result = wait(&server, &run).await;
    assert_eq!(result["StatusCode"], 0, "{result}");
    assert_eq!(status_of(&server, &run).await, "completed");
    let log = assert_whole_lines(&server, &run);
    let ends: Vec<&String> = log
        .iter()
        .filter(|l| l.contains("[precheck-server] run "))
        .collect();
    assert_eq!(ends.len(), 1, "{ends:#?}");
    assert_eq!(finished_count(&server, "completed").await, 1.0);
    let stderr = server.stderr_text();
    assert!(
        stderr.contains("cannot record the end of the run, trying again until it is"),
        "the end was never refused, so this test proved nothing: {stderr}"
    );
    assert!(
        stderr.contains("the end of the run is recorded"),
        "{stderr}"
    );
    // Nothing of the wait is left in the run's folder.
    assert!(
        !server
            .storage
            .join("runs")
            .join(&run)
            .join("ending")
            .exists()
    );
    server.assert_no_containers();
}

/// The end kept in the run's folder outlives a killed server and a container removed while it
/// was down: the next start records it, instead of failing the run as lost.
#[tokio::test]
async fn a_kept_end_is_recorded_after_a_restart_without_its_container() {
    let mut server = TestServer::start("");
    let run = precheck(&server, "chip_sleep3").await;
    wait_for_line(&server, &run, "second 1 of 3").await;
    let holder = hold_write_lock(&server, Duration::from_secs(20));
    let ending = server.storage.join("runs").join(&run).join("ending");
    crate::support::wait_until(Duration::from_secs(20), "the end is kept", || {
        ending.exists()
    });
    server.kill();
    for container in server.containers() {
        crate::support::docker(&["rm", "-f", &container]);
    }
    holder.join().unwrap();
    server.restart();
    let result = wait(&server, &run).await;
    assert_eq!(result["StatusCode"], 0, "{result}");
    assert_eq!(status_of(&server, &run).await, "completed");
    assert!(!ending.exists(), "the kept end is still there");
    assert!(
        !server
            .stderr_text()
            .contains(precheck_server::recovery::LOST),
        "{}",
        server.stderr_text()
    );
    server.assert_no_containers();
}

#[tokio::test]
async fn a_full_disk_while_the_log_is_written_fails_the_run_with_disk_full() {
    let disk = Tmpfs::new("24m");
    let server = server_on(&disk);
    // The stand-in prints 200 000 lines (about 10 MB of log) into the last 2 MB.
    let run = precheck(&server, "chip_spam").await;
    // Once the container runs (its start, recorded first, must fit), its log has the room left.
    let log = server.storage.join("runs").join(&run).join("logs.txt");
    crate::support::wait_until(Duration::from_secs(60), "the run's log is written", || {
        std::fs::metadata(&log).is_ok_and(|m| m.len() > 0)
    });
    let filler = disk.fill(2 << 20);
    let deadline = Instant::now() + Duration::from_secs(120);
    // The end may not fit in the database either: it waits until space is freed.
    while status_of(&server, &run).await == "running" {
        if server.stderr_text().contains("trying again until it is") || Instant::now() > deadline {
            let _ = std::fs::remove_file(&filler);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let _ = std::fs::remove_file(&filler);
    let result = wait(&server, &run).await;
    assert_ne!(result["StatusCode"], 0, "{result}");
    let message = result["Error"]["Message"].as_str().unwrap();
    assert!(message.contains("disk is full"), "{message}");
    assert!(
        message.contains("its log could not be written"),
        "{message}"
    );
    assert_eq!(status_of(&server, &run).await, "failed");
    let log = assert_whole_lines(&server, &run);
    assert!(
        log.last().unwrap().contains("[precheck-server] run failed"),
        "{:?}",
        log.last()
    );
    // It was stopped: nowhere near all of its lines were kept.
    assert!(log.len() < 200_000, "{} lines", log.len());
    server.assert_no_containers();
}

#[tokio::test]
async fn a_full_disk_while_the_output_is_copied_keeps_no_half_output() {
    let disk = Tmpfs::new("32m");
    let server = server_on(&disk);
    let layout = disk.path().join("big.gds");
    write_big_gds(&layout, "chip_top", 8 << 20);
    let bytes = std::fs::read(&layout).unwrap();
    std::fs::remove_file(&layout).unwrap();
    let upload_id = upload(&server, "chip_top.gds", bytes).await;
    // Room for the run's log and folders, not for its 8 MB output.
    let filler = disk.fill(3 << 20);
    let run = client::create(&server, &upload_id, "chip_top").await["Id"]
        .as_str()
        .unwrap()
        .to_string();
    let deadline = Instant::now() + Duration::from_secs(120);
    while status_of(&server, &run).await == "running" {
        assert!(
            Instant::now() < deadline,
            "the run's end was not recorded though its partial copies were removed"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let result = wait(&server, &run).await;
    let message = result["Error"]["Message"].as_str().unwrap_or_default();
    assert!(message.contains("disk is full"), "{result}");
    assert!(
        message.contains("results could not be copied out"),
        "{message}"
    );
    let (status, body) = get_json(&server, &format!("/api/v1/prechecks/{run}/output")).await;
    assert_eq!(status, 409, "{body}");
    assert!(
        !server
            .storage
            .join("runs")
            .join(&run)
            .join("output")
            .exists()
    );
    assert_whole_lines(&server, &run);
    std::fs::remove_file(&filler).unwrap();
    server.assert_no_containers();
}

#[tokio::test]
async fn a_full_disk_answers_507_and_deleting_an_upload_frees_it() {
    let disk = Tmpfs::new("16m");
    let server = server_on(&disk);
    let first = upload(&server, "chip_top.gds", gds_bytes("chip_top")).await;
    let big = disk.path().join("big.gds");
    write_big_gds(&big, "chip_top", 4 << 20);
    let bytes = std::fs::read(&big).unwrap();
    std::fs::remove_file(&big).unwrap();
    let second = upload(&server, "big.gds", bytes).await;
    let filler = disk.fill(0);

    let (status, body) = client::send(
        client::http()
            .post(server.api("/api/v1/prechecks"))
            .json(&json!({"upload_id": first, "top_cell": "chip_top", "die_id": "TEST0001"})),
    )
    .await;
    assert_eq!(status, 507, "{body}");
    assert!(
        body["message"].as_str().unwrap().contains("disk is full"),
        "{body}"
    );
    let (status, health) = get_json(&server, "/health").await;
    assert_eq!(status, 503, "{health}");
    assert_eq!(health["database"]["ok"], false, "{health}");
    let (status, body) = client::post_upload(&server, "chip_top.gds", gds_bytes("chip_top")).await;
    assert_eq!(status, 507, "{body}");
    assert!(
        body["message"].as_str().unwrap().contains("disk is full"),
        "{body}"
    );

    // Space is freed through the API: the big upload goes, file first.
    let resp = client::http()
        .delete(server.api(&format!("/api/v1/uploads/{second}")))
        .send()
        .await
        .unwrap();
    assert_eq!(
        resp.status().as_u16(),
        204,
        "{}",
        resp.text().await.unwrap()
    );
    let (status, _) = get_json(&server, &format!("/api/v1/uploads/{second}")).await;
    assert_eq!(status, 404);
    assert!(disk.free() > 2 << 20, "{} bytes free", disk.free());
    // ... and what was refused works now.
    let run = client::create(&server, &first, "chip_top").await;
    assert_eq!(
        wait(&server, run["Id"].as_str().unwrap()).await["StatusCode"],
        0
    );
    std::fs::remove_file(&filler).unwrap();
    let (status, health) = get_json(&server, "/health").await;
    assert_eq!(status, 200, "{health}");
}

#[tokio::test]
async fn the_server_refuses_a_database_it_cannot_write() {
    let disk = Tmpfs::new("16m");
    let mut server = server_on(&disk);
    server.stop();
    disk.remount("ro");
    let out = Command::new(crate::support::server_bin())
        .args(["serve", "--config"])
        .arg(&server.config_path)
        .stdout(Stdio::null())
        .output()
        .unwrap();
    disk.remount("rw");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("is read-only"), "{stderr}");
}

/// The `start` events of every container of this storage folder, by run id, from `docker
/// events` running for the whole test.
struct Starts {
    child: std::process::Child,
    events: mpsc::Receiver<(String, String)>,
    seen: Vec<(String, String)>,
}

impl Starts {
    fn watch(server: &TestServer) -> Starts {
        let mut child = Command::new("docker")
            .args([
                "events",
                "--filter",
                "type=container",
                "--filter",
                &server.storage_label_filter(),
                "--format",
                "{{.Action}} {{index .Actor.Attributes \"precheck-server.run-id\"}}",
            ])
            .stdout(Stdio::piped())
            .spawn()
            .expect("run docker events");
        let out = std::io::BufReader::new(child.stdout.take().unwrap());
        let (tx, events) = mpsc::channel();
        std::thread::spawn(move || {
            for line in out.lines().map_while(Result::ok) {
                let (action, run) = line.split_once(' ').unwrap_or((&line, ""));
                if tx.send((action.to_string(), run.to_string())).is_err() {
                    return;
                }
            }
        });
        // `docker events` reports from when it has connected: give it that moment.
        std::thread::sleep(Duration::from_millis(500));
        Starts {
            child,
            events,
            seen: vec![],
        }
    }

    /// Waits for `action` of `run`'s container.
    fn wait_for(&mut self, action: &str, run: &str) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if self.seen.iter().any(|(a, r)| a == action && r == run) {
                return;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match self.events.recv_timeout(left) {
                Ok(event) => self.seen.push(event),
                Err(_) => panic!("no {action} event for run {run}: {:?}", self.seen),
            }
        }
    }

    /// The starts seen so far, by run.
    fn starts(&mut self) -> HashMap<String, usize> {
        std::thread::sleep(Duration::from_millis(500));
        while let Ok(event) = self.events.try_recv() {
            self.seen.push(event);
        }
        let mut starts = HashMap::new();
        for (action, run) in &self.seen {
            if action == "start" && !run.is_empty() {
                *starts.entry(run.clone()).or_default() += 1;
            }
        }
        starts
    }
}

impl Drop for Starts {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn state_of_container(run: &str) -> String {
    docker_ok(&[
        "ps",
        "-a",
        "--filter",
        &format!("label=precheck-server.run-id={run}"),
        "--format",
        "{{.State}}",
    ])
    .trim()
    .to_string()
}

/// How many rounds of the stop-during-start test must have stopped the server while the
/// run's container was created but not started, of each kind of stop.
const WINDOW_HITS: usize = 4;
/// ... within at most this many rounds.
const MAX_ROUNDS: usize = 60;

#[tokio::test]
async fn a_stop_while_a_container_starts_never_starts_it_twice() {
    let mut server = TestServer::builder().max_concurrent(1).start();
    // A layout of 16 MB: its copy into the container widens the moment between the
    // container's creation and its start.
    let layout = server.storage.join("big.gds");
    write_big_gds(&layout, "chip_top", 16 << 20);
    let bytes = std::fs::read(&layout).unwrap();
    std::fs::remove_file(&layout).unwrap();
    let upload_id = upload(&server, "chip_top.gds", bytes).await;
    let mut starts = Starts::watch(&server);
    let mut hits = HashMap::from([("KILL", 0), ("TERM", 0)]);
    let mut runs = vec![];
    for round in 0..MAX_ROUNDS {
        let signal = if round % 2 == 0 { "KILL" } else { "TERM" };
        if hits.values().all(|n| *n >= WINDOW_HITS) {
            break;
        }
        let run = client::create(&server, &upload_id, "chip_top").await["Id"]
            .as_str()
            .unwrap()
            .to_string();
        starts.wait_for("create", &run);
        // Stepped through the copy of the layout into the container, its start and after.
        let delay_ms = (round as u64 * 37) % 240;
        std::thread::sleep(Duration::from_millis(delay_ms));
        if signal == "KILL" {
            server.kill();
        } else {
            server.stop();
        }
        let state = state_of_container(&run);
        if state == "created" {
            *hits.get_mut(signal).unwrap() += 1;
        }
        eprintln!("round {round}: SIG{signal} {delay_ms} ms after the create: container {state}");
        server.restart();
        runs.push(run.clone());
        let result = wait(&server, &run).await;
        assert_eq!(result["StatusCode"], 0, "round {round}: {result}");
    }
    let rounds = runs.len();
    let counted = starts.starts();
    for run in &runs {
        assert_eq!(
            counted.get(run),
            Some(&1),
            "starts of run {run}: {counted:?}"
        );
    }
    eprintln!(
        "stop-during-start: {rounds} rounds, {} with SIGKILL and {} with SIGTERM while the container was created, no run started twice",
        hits["KILL"], hits["TERM"]
    );
    assert!(
        hits.values().all(|n| *n >= WINDOW_HITS),
        "the stops missed the window between create and start: {hits:?} in {rounds} rounds"
    );
    server.assert_no_containers();
    let body: Value = inspect(&server, runs.last().unwrap()).await;
    assert_eq!(body["State"]["Status"], "completed");
}
