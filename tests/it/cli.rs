//! The admin CLI against a live server's storage: each command in its human and `--json`
//! forms, and one-line failures (exit code 1, or 2 for bad flags) that never hang.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use serde_json::Value;

use crate::client::{self, inspect, precheck, wait};
use crate::support::{
    TestServer, docker, docker_ok, gds_bytes, precheck_image, server_bin, wait_until_async,
};

/// The CLI's exit code, stdout and stderr.
pub struct Ran {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

pub fn cli(server: &TestServer, args: &[&str]) -> Ran {
    cli_at(&server.config_path, &[], args)
}

/// `precheck-server ARGS --config CONFIG` with extra environment variables.
fn cli_at(config: &Path, env: &[(&str, &str)], args: &[&str]) -> Ran {
    let out = Command::new(server_bin())
        .args(args)
        .arg("--config")
        .arg(config)
        .envs(env.iter().copied())
        .output()
        .expect("run precheck-server");
    Ran::from(out)
}

impl From<std::process::Output> for Ran {
    fn from(out: std::process::Output) -> Ran {
        Ran {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }
}

/// Runs a command that must succeed; returns its stdout.
pub fn ok(server: &TestServer, args: &[&str]) -> String {
    let ran = cli(server, args);
    assert_eq!(
        ran.code, 0,
        "precheck-server {args:?} failed:\n{}{}",
        ran.stdout, ran.stderr
    );
    ran.stdout
}

/// Runs a command that must succeed and print JSON.
fn ok_json(server: &TestServer, args: &[&str]) -> Value {
    let stdout = ok(server, args);
    serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{args:?}: not JSON ({e}): {stdout}"))
}

/// Asserts that a command fails with `code` and one line on stderr holding each of `needles`.
fn fails(ran: Ran, code: i32, needles: &[&str]) {
    assert_eq!(
        ran.code, code,
        "stdout: {}\nstderr: {}",
        ran.stdout, ran.stderr
    );
    let lines: Vec<&str> = ran.stderr.lines().collect();
    assert_eq!(lines.len(), 1, "not one line: {:?}", ran.stderr);
    assert!(lines[0].starts_with("precheck-server: "), "{}", lines[0]);
    for needle in needles {
        assert!(
            lines[0].contains(needle),
            "{needle:?} not in {:?}",
            lines[0]
        );
    }
}

/// The table rows (after the header) whose first column is `short`.
fn row<'a>(table: &'a str, short: &str) -> &'a str {
    table
        .lines()
        .skip(1)
        .find(|l| l.starts_with(short))
        .unwrap_or_else(|| panic!("no row {short} in\n{table}"))
}

fn short(id: &str) -> String {
    id.replace('-', "")[..12].to_string()
}

#[tokio::test]
async fn bad_flags_unknown_ids_and_a_missing_database_fail_in_one_line() {
    let server = TestServer::start("");
    fails(cli(&server, &["runs", "list", "--bogus"]), 2, &["--bogus"]);
    fails(
        cli(&server, &["runs", "list", "--status", "sleeping"]),
        2,
        &["sleeping", "queued, running"],
    );
    fails(
        cli(&server, &["runs", "prune", "--older-than", "soon"]),
        2,
        &["soon", "7d"],
    );
    fails(
        cli(&server, &["runs", "prune", "--status", "running"]),
        1,
        &["finished runs only"],
    );
    let unknown = uuid::Uuid::new_v4().to_string();
    for args in [
        vec!["runs", "inspect", &unknown],
        vec!["runs", "delete", &unknown],
        vec!["runs", "delete", "--force", &unknown],
    ] {
        fails(cli(&server, &args), 1, &["no run with id", &unknown]);
    }
    fails(
        cli(&server, &["runs", "inspect", "abc"]),
        1,
        &["no run with an id starting with abc"],
    );
    fails(
        cli(&server, &["runs", "inspect", "12ab;rm"]),
        1,
        &["not a run id"],
    );
    fails(
        cli(&server, &["apikey", "revoke", "nobody"]),
        1,
        &["no API key named \"nobody\""],
    );

    // A config whose storage folder holds no database: every command says so, none creates one.
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.toml");
    std::fs::write(&config, "[server]\nstorage_path = \"nowhere\"\n").unwrap();
    for args in [
        vec!["status"],
        vec!["status", "--json"],
        vec!["cleanup"],
        vec!["runs", "list"],
        vec!["runs", "inspect", &unknown],
        vec!["runs", "delete", &unknown],
        vec!["runs", "prune"],
        vec!["apikey", "list"],
        vec!["apikey", "generate"],
        vec!["apikey", "revoke", "x"],
    ] {
        fails(
            cli_at(&config, &[], &args),
            1,
            &["no database at", "storage_path"],
        );
    }
    assert!(!dir.path().join("nowhere").exists());

    // Without a Docker engine, the commands that need one say so at once.
    let no_engine = [("DOCKER_HOST", "unix:///nonexistent/docker.sock")];
    let started = std::time::Instant::now();
    let ran = cli_at(&server.config_path, &no_engine, &["status"]);
    assert!(
        ran.stdout.contains("Engine:     not reachable"),
        "{}",
        ran.stdout
    );
    fails(ran, 1, &["the Docker engine is not reachable"]);
    fails(
        cli_at(&server.config_path, &no_engine, &["cleanup"]),
        1,
        &["Docker engine"],
    );
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn status_reports_the_server_the_engine_runs_and_disk_in_text_and_json() {
    let mut server = TestServer::start("");
    let run = precheck(&server, "chip_top").await;
    wait(&server, &run).await;

    let text = ok(&server, &["status"]);
    assert!(
        text.contains(&format!(
            "Server:     running at {} (health: healthy)",
            server.url
        )),
        "{text}"
    );
    assert!(text.contains("Engine:     Docker "), "{text}");
    assert!(
        text.contains("Runs:       0 queued, 0 running, 1 completed, 0 failed, 0 cancelled"),
        "{text}"
    );
    assert!(text.contains("Disk used:  "), "{text}");
    let json = ok_json(&server, &["status", "--json"]);
    assert_eq!(json["Server"]["Url"], server.url.as_str());
    assert_eq!(json["Server"]["Reachable"], true);
    assert_eq!(json["Server"]["Health"]["status"], "healthy");
    assert!(json["Engine"]["Version"].as_str().unwrap().len() > 1);
    assert_eq!(json["Runs"]["Completed"], 1);
    assert_eq!(json["Runs"]["Queued"], 0);
    let disk = &json["Disk"];
    assert!(disk["Total"].as_u64().unwrap() >= disk["Runs"].as_u64().unwrap());
    assert!(disk["Uploads"].as_u64().unwrap() > 0);
    assert!(disk["Database"].as_u64().unwrap() > 0);
    assert_eq!(disk["Projects"], 0);

    // Stopped: status still reports, and exits 1 saying why.
    server.stop();
    let ran = cli(&server, &["status"]);
    assert!(
        ran.stdout.contains("Server:     not running"),
        "{}",
        ran.stdout
    );
    assert!(ran.stdout.contains("1 completed"), "{}", ran.stdout);
    fails(ran, 1, &["the server is not running"]);
    let ran = cli(&server, &["status", "--json"]);
    let json: Value = serde_json::from_str(&ran.stdout).unwrap();
    assert_eq!(json["Server"]["Reachable"], false);
    fails(ran, 1, &["not running"]);

    // Killed: its address is left behind, but nothing answers there.
    server.restart();
    server.kill();
    let ran = cli(&server, &["status"]);
    assert!(ran.stdout.contains("not reachable at"), "{}", ran.stdout);
    fails(ran, 1, &["not reachable at", &server.url]);
}

#[tokio::test]
async fn runs_list_inspect_delete_and_prune_while_the_server_runs() {
    let server = TestServer::builder().max_concurrent(1).start();
    // A run is running in the database before its container exists: wait for the container.
    let container_runs = |run: &str| {
        let label = format!("label=precheck-server.run-id={run}");
        async move {
            wait_until_async(Duration::from_secs(30), "the run's container runs", || {
                let label = label.clone();
                async move {
                    !docker_ok(&["ps", "-q", "--filter", &label, "--filter", "status=running"])
                        .is_empty()
                }
            })
            .await
        }
    };
    let failed = precheck(&server, "chip_fail").await;
    wait(&server, &failed).await;
    let passed = precheck(&server, "chip_top").await;
    wait(&server, &passed).await;
    let running = precheck(&server, "chip_sleep60").await;
    let queued = precheck(&server, "chip_queued").await;
    // Running in the database comes before the container exists: wait for the container.
    let running_label = format!("label=precheck-server.run-id={running}");
    wait_until_async(
        Duration::from_secs(30),
        "the sleeper's container runs",
        || async {
            inspect(&server, &running).await["State"]["Status"] == "running"
                && !docker_ok(&[
                    "ps",
                    "-q",
                    "--filter",
                    &running_label,
                    "--filter",
                    "status=running",
                ])
                .is_empty()
        },
    )
    .await;

    let table = ok(&server, &["runs", "list"]);
    let header = table.lines().next().unwrap();
    for column in [
        "RUN ID", "KIND", "SUBJECT", "STATUS", "ENGINE", "CREATED", "OWNER",
    ] {
        assert!(header.contains(column), "{header}");
    }
    assert!(
        row(&table, &short(&failed)).contains("Failed (1) "),
        "{table}"
    );
    assert!(
        row(&table, &short(&passed)).contains("Completed (0) "),
        "{table}"
    );
    assert!(row(&table, &short(&passed)).contains(" local "), "{table}");
    assert!(
        row(&table, &short(&running)).contains("Running for "),
        "{table}"
    );
    assert!(
        row(&table, &short(&queued)).contains("Queued (1 of 1)"),
        "{table}"
    );
    // Newest first, as `docker ps`.
    assert!(table.lines().nth(1).unwrap().starts_with(&short(&queued)));
    let full = ok(
        &server,
        &["runs", "list", "--no-trunc", "--status", "failed"],
    );
    assert_eq!(full.lines().count(), 2, "{full}");
    assert!(row(&full, &failed).contains("chip_fail"), "{full}");

    let json = ok_json(
        &server,
        &[
            "runs",
            "list",
            "--status",
            "completed",
            "--status",
            "failed",
            "--json",
        ],
    );
    let ids: Vec<&str> = json
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["Id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [passed.as_str(), failed.as_str()]);

    // inspect takes a unique start of the id and shows what the API shows.
    let shown = ok_json(&server, &["runs", "inspect", &short(&failed)[..8]]);
    assert_eq!(shown, inspect(&server, &failed).await);
    assert_eq!(
        ok_json(&server, &["runs", "inspect", "--json", &failed]),
        shown
    );

    // A running run needs --force, which stops its container first.
    fails(
        cli(&server, &["runs", "delete", &running]),
        1,
        &["is running", "--force"],
    );
    let deleted = ok_json(&server, &["runs", "delete", "--force", &running, "--json"]);
    assert_eq!(deleted["Deleted"], running.as_str());
    assert_eq!(deleted["ContainerStopped"], true);
    assert_eq!(docker_ok(&["ps", "-aq", "--filter", &running_label]), "");
    let (status, _) = client::get_json(&server, &format!("/api/v1/prechecks/{running}")).await;
    assert_eq!(status, 404);
    assert!(!server.storage.join("runs").join(&running).exists());
    // The queue moves on to the next run.
    assert_eq!(wait(&server, &queued).await["StatusCode"], 0);

    // prune: a dry run deletes nothing; then by status; then an age no run has reached.
    let dry = ok(&server, &["runs", "prune", "--dry-run"]);
    assert_eq!(dry.matches("Would delete run").count(), 3, "{dry}");
    assert!(
        dry.contains("Total space that would be reclaimed: "),
        "{dry}"
    );
    assert_eq!(ok(&server, &["runs", "list"]).lines().count(), 4);
    let pruned = ok_json(&server, &["runs", "prune", "--status", "failed", "--json"]);
    assert_eq!(pruned["RunsDeleted"], serde_json::json!([failed]));
    assert_eq!(pruned["DryRun"], false);
    assert!(pruned["SpaceReclaimed"].as_u64().unwrap() > 0);
    assert!(!server.storage.join("runs").join(&failed).exists());
    let young = ok(&server, &["runs", "prune", "--older-than", "7d"]);
    assert_eq!(young.trim(), "Total reclaimed space: 0 B");
    let all = ok(&server, &["runs", "prune"]);
    assert_eq!(all.matches("Deleted run").count(), 2, "{all}");
    let table = ok(&server, &["runs", "list"]);
    assert_eq!(table.lines().count(), 1, "{table}");
    // A queued run can be deleted without --force.
    let again = precheck(&server, "chip_sleep30").await;
    let next = precheck(&server, "chip_top").await;
    let text = ok(&server, &["runs", "delete", &next]);
    assert!(
        text.starts_with(&format!("Deleted run {next} (queued")),
        "{text}"
    );
    container_runs(&again).await;
    ok(&server, &["runs", "delete", "-f", &again]);
    // The server may still have been preparing its container: it removes it as soon as it
    // sees the run gone.
    wait_until_async(
        Duration::from_secs(30),
        "the server removes the deleted run's container",
        || async { server.containers().is_empty() },
    )
    .await;
    server.assert_no_containers();
}

/// `runs delete --force` while someone else removes the same container: the server (a cancel
/// through the API stops and removes it) or an operator (`docker rm -f`). Whoever gets there
/// first, the CLI exits 0 and the run, its files and its container are gone. Each try starts
/// the other remover a little earlier or later, so that the CLI's stop and remove land before,
/// during and after the other removal.
#[tokio::test]
async fn runs_delete_force_while_the_container_is_being_removed_exits_0() {
    const TRIES: u64 = 12;
    let server = TestServer::builder().max_concurrent(1).start();
    for i in 0..TRIES {
        let run = precheck(&server, "chip_sleep120").await;
        let label = format!("label=precheck-server.run-id={run}");
        wait_until_async(Duration::from_secs(60), "the run's container runs", || {
            let label = label.clone();
            async move {
                !docker_ok(&["ps", "-q", "--filter", &label, "--filter", "status=running"])
                    .is_empty()
            }
        })
        .await;
        let container = docker_ok(&["ps", "-q", "--filter", &label])
            .trim()
            .to_string();
        let by_server = i % 2 == 0;
        let other = if by_server {
            let url = server.api(&format!("/api/v1/prechecks/{run}"));
            tokio::spawn(async move {
                let _ = client::http().delete(url).send().await;
            })
        } else {
            let container = container.clone();
            tokio::task::spawn_blocking(move || {
                let _ = docker(&["rm", "-f", &container]);
            })
        };
        tokio::time::sleep(Duration::from_millis((i / 2) % 3 * 40)).await;
        let config = server.config_path.clone();
        let id = run.clone();
        let ran = tokio::task::spawn_blocking(move || {
            cli_at(&config, &[], &["runs", "delete", "--force", &id])
        })
        .await
        .unwrap();
        other.await.unwrap();
        let who = if by_server {
            "the server"
        } else {
            "docker rm -f"
        };
        assert_eq!(
            ran.code, 0,
            "try {i}: runs delete --force while {who} removes the container:\n{}{}",
            ran.stdout, ran.stderr
        );
        assert!(
            ran.stdout.starts_with(&format!("Deleted run {run}")),
            "{}",
            ran.stdout
        );
        let (status, _) = client::get_json(&server, &format!("/api/v1/prechecks/{run}")).await;
        assert_eq!(status, 404, "try {i}: the run is still there");
        let dir = server.storage.join("runs").join(&run);
        wait_until_async(
            Duration::from_secs(30),
            "the run's files and container are gone",
            || {
                let (dir, label) = (dir.clone(), label.clone());
                async move {
                    !dir.exists() && docker_ok(&["ps", "-aq", "--filter", &label]).is_empty()
                }
            },
        )
        .await;
    }
    server.assert_no_containers();
}

#[tokio::test]
async fn api_keys_generated_listed_and_revoked_without_a_restart() {
    const BOSS: &str = "ws_key_boss_boss_boss_boss_boss_boss";
    let server = TestServer::builder()
        .toml(&format!(
            "[auth]\nrequired = true\n[[auth.api_keys]]\nname = \"boss\"\nkey = \"{BOSS}\"\nadmin = true\n"
        ))
        .start();
    let key = ok(&server, &["apikey", "generate", "--name", "ci"]);
    let key = key.trim();
    assert!(key.starts_with("ws_key_"), "{key}");
    assert_eq!(key.len(), "ws_key_".len() + 32);
    assert!(
        key["ws_key_".len()..]
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'),
        "{key}"
    );
    let get = |key: String| {
        let url = server.api("/api/v1/prechecks");
        async move {
            let resp = client::http()
                .get(url)
                .bearer_auth(key)
                .send()
                .await
                .unwrap();
            (resp.status().as_u16(), resp.json::<Value>().await.unwrap())
        }
    };
    assert_eq!(get(key.to_string()).await.0, 200);

    let table = ok(&server, &["apikey", "list"]);
    assert!(!table.contains(key), "the key itself is never listed");
    let boss = row(&table, "boss");
    assert!(boss.contains("config") && boss.contains("yes"), "{boss}");
    let ci = row(&table, "ci ");
    assert!(ci.contains("database") && ci.contains(" ago"), "{ci}");
    assert!(!ci.contains("never"), "its use is recorded: {ci}");
    let listed = ok_json(&server, &["apikey", "list", "--json"]);
    assert!(!listed.to_string().contains(key));
    let ci = listed
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["Name"] == "ci")
        .unwrap();
    assert_eq!(ci["Source"], "database");
    assert_eq!(ci["Admin"], false);
    assert!(ci["Created"].is_string() && ci["LastUsed"].is_string());
    assert!(ci["Revoked"].is_null());

    // Names are unique across the config and the database, revoked keys included.
    fails(
        cli(&server, &["apikey", "generate", "--name", "boss"]),
        1,
        &["boss", "config.toml"],
    );
    fails(
        cli(&server, &["apikey", "generate", "--name", "ci"]),
        1,
        &["exists already"],
    );
    fails(
        cli(&server, &["apikey", "generate", "--name", "no spaces"]),
        1,
        &["letters, digits"],
    );
    let generated = ok_json(&server, &["apikey", "generate", "--admin", "--json"]);
    let name = generated["Name"].as_str().unwrap();
    assert!(name.starts_with("key-") && name.len() == 12, "{name}");
    assert_eq!(generated["Admin"], true);
    let admin_key = generated["Key"].as_str().unwrap().to_string();
    assert_eq!(get(admin_key).await.0, 200);

    let revoked = ok(&server, &["apikey", "revoke", "ci"]);
    assert!(revoked.starts_with("Revoked API key \"ci\""), "{revoked}");
    let (status, body) = get(key.to_string()).await;
    assert_eq!(status, 401);
    assert!(
        body["message"].as_str().unwrap().contains("revoked"),
        "{body}"
    );
    let again = ok_json(&server, &["apikey", "revoke", "ci", "--json"]);
    assert_eq!(again["Now"], false);
    fails(
        cli(&server, &["apikey", "revoke", "boss"]),
        1,
        &["boss", "remove it there"],
    );
    fails(
        cli(&server, &["apikey", "generate", "--name", "ci"]),
        1,
        &["exists already"],
    );
    let listed = ok_json(&server, &["apikey", "list", "--json"]);
    let ci = listed
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["Name"] == "ci");
    assert!(ci.unwrap()["Revoked"].is_string());
}

/// Removes a container the test made itself when the test ends, however it ends.
struct OwnContainer(String);

impl Drop for OwnContainer {
    fn drop(&mut self) {
        let _ = docker(&["rm", "-f", &self.0]);
    }
}

/// Makes a path look untouched for `minutes`.
fn age(path: &Path, minutes: u32) {
    let status = Command::new("touch")
        .args(["-d", &format!("{minutes} minutes ago")])
        .arg(path)
        .status()
        .unwrap();
    assert!(status.success());
}

#[tokio::test]
async fn cleanup_removes_only_what_nothing_owns() {
    let server = TestServer::start("");
    let running = precheck(&server, "chip_sleep8").await;
    wait_until_async(Duration::from_secs(30), "the sleeper runs", || async {
        inspect(&server, &running).await["State"]["Status"] == "running"
    })
    .await;
    let kept_upload = client::upload(&server, "kept.gds", gds_bytes("chip_top")).await;

    // A container of this server's whose run does not exist, and one that is not the server's.
    let ghost_run = uuid::Uuid::new_v4().to_string();
    let storage_label = format!("precheck-server.storage={}", server.storage.display());
    let run_label = format!("precheck-server.run-id={ghost_run}");
    let ghost = docker_ok(&[
        "create",
        "--label",
        &storage_label,
        "--label",
        &run_label,
        precheck_image(),
        "sh",
    ]);
    let _ghost = OwnContainer(ghost.clone());
    let foreign = OwnContainer(docker_ok(&["create", precheck_image(), "sh"]));

    // Files no row references: old ones go, a young one stays (a server may be writing it).
    let stray_upload = server
        .storage
        .join("uploads")
        .join(uuid::Uuid::new_v4().to_string());
    std::fs::write(&stray_upload, gds_bytes("chip_stray")).unwrap();
    age(&stray_upload, 5);
    let stray_run = server.storage.join("runs").join(&ghost_run);
    std::fs::create_dir_all(stray_run.join("output")).unwrap();
    std::fs::write(stray_run.join("logs.txt"), "old\n").unwrap();
    age(&stray_run, 5);
    let young = server
        .storage
        .join("uploads")
        .join(uuid::Uuid::new_v4().to_string());
    std::fs::write(&young, b"young").unwrap();
    let stray_blob = server.storage.join("blobs").join("ab".repeat(32));
    std::fs::write(&stray_blob, b"content no project file has").unwrap();
    age(&stray_blob, 5);
    let not_ours = server.storage.join("uploads").join("README");
    std::fs::write(&not_ours, b"left alone").unwrap();
    age(&not_ours, 5);

    let dry = ok(&server, &["cleanup", "--dry-run"]);
    assert!(dry.contains("Would remove container "), "{dry}");
    assert!(dry.contains(&format!("run {ghost_run}, created")), "{dry}");
    assert!(dry.contains("Would remove runs/"), "{dry}");
    assert!(dry.contains("Would remove uploads/"), "{dry}");
    assert!(dry.contains("no project file has this content"), "{dry}");
    assert_eq!(dry.lines().count(), 5, "{dry}");
    assert!(stray_upload.exists() && stray_run.exists());
    assert_eq!(
        docker_ok(&["inspect", "-f", "{{.State.Status}}", &ghost]),
        "created"
    );

    let cleaned = ok_json(&server, &["cleanup", "--json"]);
    assert_eq!(cleaned["ContainersDeleted"], serde_json::json!([ghost]));
    let mut files: Vec<String> = cleaned["FilesDeleted"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f.as_str().unwrap().to_string())
        .collect();
    files.sort();
    let mut expected = vec![
        format!("blobs/{}", "ab".repeat(32)),
        format!("runs/{ghost_run}"),
        format!(
            "uploads/{}",
            stray_upload.file_name().unwrap().to_string_lossy()
        ),
    ];
    expected.sort();
    assert_eq!(files, expected);
    assert!(cleaned["SpaceReclaimed"].as_u64().unwrap() > 0);
    assert!(!stray_upload.exists() && !stray_run.exists() && !stray_blob.exists());
    assert!(young.exists() && not_ours.exists());
    assert!(!docker(&["inspect", &ghost]).status.success());
    assert!(docker(&["inspect", &foreign.0]).status.success());
    assert_eq!(ok(&server, &["cleanup"]).trim(), "Nothing to clean up.");

    // What runs and what was uploaded were never touched.
    assert_eq!(wait(&server, &running).await["StatusCode"], 0);
    let (status, _) = client::get_json(&server, &format!("/api/v1/uploads/{kept_upload}")).await;
    assert_eq!(status, 200);
    server.assert_no_containers();
}

#[test]
fn inspect_reads_a_local_layout_in_text_and_json() {
    let dir = tempfile::tempdir().unwrap();
    let two = dir.path().join("two.gds");
    std::fs::write(
        &two,
        crate::support::gds_library(1e-9, &[("top_a", &[]), ("top_b", &[])]),
    )
    .unwrap();
    let hier = dir.path().join("hier.gds");
    let bytes = crate::support::gds_library(1e-9, &[("leaf", &[]), ("chip_top", &["leaf"])]);
    std::fs::write(&hier, &bytes).unwrap();
    let cut = dir.path().join("cut.gds");
    std::fs::write(&cut, &bytes[..bytes.len() - 6]).unwrap();
    // `inspect` needs no config: it reads only the file.
    let nowhere = dir.path().join("no-config.toml");
    let run = |args: &[&str]| cli_at(&nowhere, &[], args);

    let die = dir.path().join("chip_top.gds.gz");
    std::fs::write(
        &die,
        precheck_server::layout::write::Die::new("chip_top").gds_gz(),
    )
    .unwrap();
    let ran = run(&["inspect", die.to_str().unwrap()]);
    assert_eq!(ran.code, 0, "{}", ran.stderr);
    for line in [
        "Format:     gds.gz",
        "Unit:       0.001 µm (1 nm)",
        "Top cells:  chip_top",
        "Die:        chip_top: 3932 x 5122 µm from (0, 0)",
        "Layers:     22/0 30/0 33/0 34/0 35/0 36/0 42/0 46/0 81/0 167/5",
        "Precheck:   ready (slot 1x1)",
    ] {
        assert!(ran.stdout.contains(line), "{line:?} not in\n{}", ran.stdout);
    }
    // The same die is refused for another slot, and is fine as chip-on-board.
    let ran = run(&["inspect", "--slot", "0p5x0p5", die.to_str().unwrap()]);
    assert_eq!(ran.code, 1, "{}", ran.stdout);
    assert!(
        ran.stdout.contains(
            "Precheck:   refused (slot 0p5x0p5):\n  - the die is 3932 x 5122 µm, but slot 0p5x0p5 needs 1936 x 2531 µm; it matches slot 1x1: send \"slot\": \"1x1\"\n"
        ),
        "{}",
        ran.stdout
    );
    let ran = run(&[
        "inspect",
        "--slot",
        "0p5x0p5",
        "--cob",
        die.to_str().unwrap(),
    ]);
    assert_eq!(ran.code, 0, "{}", ran.stdout);
    assert!(
        ran.stdout
            .contains("Precheck:   ready (slot 0p5x0p5, chip-on-board)")
    );
    let ran = run(&["inspect", "--slot", "2x2", die.to_str().unwrap()]);
    assert_eq!(ran.code, 2, "{}", ran.stderr);
    assert!(
        ran.stderr
            .contains("slot: \"2x2\" is not a slot size: use one of 1x1, 0p5x1, 1x0p5, 0p5x0p5"),
        "{}",
        ran.stderr
    );
    // A layout of 1 µm cells: every rule it breaks is told.
    let ran = run(&["inspect", hier.to_str().unwrap()]);
    assert_eq!(ran.code, 1, "{}", ran.stderr);
    for line in [
        "Cells:      2",
        "Top cells:  chip_top",
        "Die:        chip_top: 1 x 1 µm from (0, 0)",
        "Layers:     1/0",
        "  - the die is 1 x 1 µm, but slot 1x1 needs 3932 x 5122 µm\n",
        "  - no shapes on GUARD_RING_MK (167/5): the die needs its seal ring\n",
    ] {
        assert!(ran.stdout.contains(line), "{line:?} not in\n{}", ran.stdout);
    }
    let ran = run(&["inspect", "--json", two.to_str().unwrap()]);
    assert_eq!(ran.code, 1, "{}", ran.stderr);
    let json: Value = serde_json::from_str(&ran.stdout).unwrap();
    assert_eq!(
        json,
        serde_json::json!({"Format": "gds", "TopCells": ["top_a", "top_b"],
        "DbuMicrons": 0.001, "Cells": ["top_a", "top_b"],
        "Precheck": {"Slot": "1x1", "Cob": false, "Ready": false, "Problems": [
            "the layout has 2 top cells (\"top_a\", \"top_b\"): the precheck needs exactly one"
        ]}})
    );
    fails(
        run(&["inspect", cut.to_str().unwrap()]),
        1,
        &["cut.gds", "truncated GDSII: file ends"],
    );
    fails(
        run(&["inspect", dir.path().join("missing.gds").to_str().unwrap()]),
        1,
        &["cannot open", "missing.gds"],
    );
}

/// `serve` and the admin commands find the config the same way (issue 12): `--config`, else
/// PRECHECK_CONFIG, else `config.toml` in the current folder; and say where they looked.
#[tokio::test]
async fn serve_and_the_admin_commands_find_the_config_alike() {
    let server = TestServer::start("");
    let here = tempfile::tempdir().unwrap();
    let in_folder = |folder: &Path, env: &[(&str, &str)], args: &[&str]| {
        let out = Command::new(server_bin())
            .args(args)
            .current_dir(folder)
            .env_remove("PRECHECK_CONFIG")
            .envs(env.iter().copied())
            .output()
            .expect("run precheck-server");
        Ran::from(out)
    };
    let folder = here.path().canonicalize().unwrap();
    let looked = format!("looked for config.toml in {}", folder.display());
    for args in [
        &["serve"][..],
        &["status"],
        &["runs", "list"],
        &["apikey", "list"],
    ] {
        fails(
            in_folder(&folder, &[], args),
            1,
            &[&looked, "--config", "PRECHECK_CONFIG"],
        );
    }
    // The server's config by PRECHECK_CONFIG, and as config.toml in its own folder.
    let config = server.config_path.to_str().unwrap();
    let ran = in_folder(
        &folder,
        &[("PRECHECK_CONFIG", config)],
        &["runs", "list", "--json"],
    );
    assert_eq!(ran.code, 0, "{}", ran.stderr);
    let ran = in_folder(
        server.config_path.parent().unwrap(),
        &[],
        &["status", "--json"],
    );
    assert_eq!(ran.code, 0, "{}{}", ran.stdout, ran.stderr);
    let ran = in_folder(
        &folder,
        &[("PRECHECK_CONFIG", "/nowhere.toml")],
        &["status"],
    );
    fails(ran, 1, &["cannot read config file /nowhere.toml"]);
}

/// `precheck-server runs inspect ID | head`: the reader closes the pipe before the command has
/// printed; every printing command then exits quietly (141, as if killed by SIGPIPE), never
/// with Rust's "failed printing to stdout" panic.
#[tokio::test]
async fn commands_whose_reader_closes_the_pipe_exit_quietly() {
    let server = TestServer::start("");
    let run = precheck(&server, "chip_top").await;
    wait(&server, &run).await;
    let layout = server.storage.parent().unwrap().join("chip_top.gds");
    std::fs::write(&layout, gds_bytes("chip_top")).unwrap();
    let layout = layout.to_str().unwrap().to_string();
    let config = server.config_path.to_str().unwrap().to_string();
    let c = config.as_str();
    let commands: Vec<Vec<&str>> = vec![
        vec!["runs", "inspect", &run, "--config", c],
        vec!["runs", "list", "--config", c],
        vec!["runs", "list", "--json", "--config", c],
        vec!["apikey", "list", "--config", c],
        vec!["apikey", "list", "--json", "--config", c],
        vec!["status", "--config", c],
        vec!["inspect", &layout],
        vec!["inspect", "--json", &layout],
    ];
    for args in commands {
        let mut child = Command::new(server_bin())
            .args(&args)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("run precheck-server");
        // The reader goes away at once, before the command has written anything.
        drop(child.stdout.take());
        let out = child.wait_with_output().expect("wait for precheck-server");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!stderr.contains("panicked"), "{args:?} panicked: {stderr}");
        assert!(
            matches!(out.status.code(), Some(0 | 141)),
            "{args:?}: {:?}: {stderr}",
            out.status
        );
        assert!(stderr.is_empty(), "{args:?} said: {stderr}");
    }
    server.assert_no_containers();
}
