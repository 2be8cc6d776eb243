//! `precheck-server submit`, the CI client, against a live server: a passing and a failing
//! layout, a refused one, Ctrl-C, and a server restarted in the middle of the run.

use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use serde_json::Value;

use crate::client::get_json;
use crate::support::{TestServer, gds_bytes, server_bin};

/// `submit ARGS` in `dir`, with the server's URL, output captured; not waited for.
pub fn spawn_submit(server: &TestServer, dir: &Path, args: &[&str]) -> Child {
    Command::new(server_bin())
        .arg("submit")
        .args(args)
        .arg("--server")
        .arg(&server.url)
        .current_dir(dir)
        .env("CI", "true")
        .env_remove("PRECHECK_API_KEY")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run precheck-server submit")
}

pub fn finished(child: Child) -> (i32, String, String) {
    let Output {
        status,
        stdout,
        stderr,
    } = child.wait_with_output().unwrap();
    (
        status.code().unwrap_or(-1),
        String::from_utf8_lossy(&stdout).into_owned(),
        String::from_utf8_lossy(&stderr).into_owned(),
    )
}

/// A folder holding `<top>.gds`, a layout whose only top cell is `top`.
fn layout_in(top: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join(format!("{top}.gds")), gds_bytes(top)).unwrap();
    dir
}

async fn runs(server: &TestServer) -> Vec<Value> {
    get_json(server, "/api/v1/prechecks")
        .await
        .1
        .as_array()
        .unwrap()
        .clone()
}

#[tokio::test]
async fn a_passing_layout_writes_the_output_and_exits_0() {
    let server = TestServer::start("");
    let dir = layout_in("chip_top");
    std::fs::create_dir(dir.path().join("checked")).unwrap();
    let child = spawn_submit(
        &server,
        dir.path(),
        &[
            "chip_top.gds",
            "--id",
            "CI000001",
            "--output",
            "checked/out.gds",
        ],
    );
    let (code, stdout, stderr) = finished(child);
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    assert!(
        stdout.contains("Precheck successfully completed."),
        "{stdout}"
    );
    assert!(stderr.contains("uploading chip_top.gds: 100%"), "{stderr}");
    assert!(
        stderr.contains("passed; the checked layout is checked/out.gds"),
        "{stderr}"
    );
    assert_eq!(
        std::fs::read(dir.path().join("checked/out.gds")).unwrap(),
        gds_bytes("chip_top")
    );
    let runs = runs(&server).await;
    assert_eq!(runs.len(), 1);
    assert_eq!(runs[0]["Config"]["Labels"]["die_id"], "CI000001");
}

#[tokio::test]
async fn a_failing_layout_writes_the_debug_tarball_and_exits_1() {
    let server = TestServer::start("");
    let dir = layout_in("chip_fail");
    let (code, stdout, stderr) = finished(spawn_submit(
        &server,
        dir.path(),
        &["chip_fail.gds", "--debug", "debug.tgz"],
    ));
    assert_eq!(code, 1, "{stdout}\n{stderr}");
    assert!(
        stderr.contains(
            "failed (exit code 1): the precheck found problems (exit code 1): 3 KLayout DRC errors found; see the logs"
        ),
        "{stderr}"
    );
    let tarball = std::fs::read(dir.path().join("debug.tgz")).unwrap();
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(tarball.as_slice()));
    let names: Vec<String> = archive
        .entries()
        .unwrap()
        .map(|e| e.unwrap().path().unwrap().display().to_string())
        .collect();
    assert!(names.iter().any(|n| n.ends_with("logs.txt")), "{names:?}");
    // The checkers' errors are deferred: the checked layout was written, for the designer to
    // read, but only a passed run's is downloaded as the checked layout.
    assert!(
        names.iter().any(|n| n.ends_with("/output/design.gds")),
        "{names:?}"
    );
    assert!(!dir.path().join("chip_fail.checked.gds").exists());
}

#[tokio::test]
async fn a_refused_layout_exits_before_any_run() {
    let server = TestServer::start("");
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("notes.gds"),
        b"these are my notes, not a layout",
    )
    .unwrap();
    let (code, _, stderr) = finished(spawn_submit(&server, dir.path(), &["notes.gds"]));
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains("refused (400)") && stderr.contains("is not a layout"),
        "{stderr}"
    );
    assert!(runs(&server).await.is_empty());

    // A layout with two top cells and no --top: refused at the create, before any run.
    let two = crate::support::gds_library(1e-9, &[("top_a", &[]), ("top_b", &[])]);
    std::fs::write(dir.path().join("two.gds"), two).unwrap();
    let (code, _, stderr) = finished(spawn_submit(&server, dir.path(), &["two.gds"]));
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("2 top cells"), "{stderr}");
    assert!(runs(&server).await.is_empty());

    // A die for another slot: refused at the create with the facts and what to send instead.
    let half = precheck_server::layout::write::Die::new("chip_top").slot("0p5x1");
    std::fs::write(dir.path().join("chip_top.gds"), half.gds()).unwrap();
    let (code, _, stderr) = finished(spawn_submit(&server, dir.path(), &["chip_top.gds"]));
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains("die chip_top: 1936 x 5122 µm from (0, 0)"),
        "the upload's die is told: {stderr}"
    );
    assert!(
        stderr.contains(
            "refused (400): the die is 1936 x 5122 µm, but slot 1x1 needs 3932 x 5122 µm; it matches slot 0p5x1: send \"slot\": \"0p5x1\""
        ),
        "{stderr}"
    );
    assert!(runs(&server).await.is_empty());
}

/// Waits until the server's only run is running; returns its id.
async fn running_run(server: &TestServer) -> String {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(run) = runs(server).await.first()
            && run["State"]["Status"] == "running"
        {
            return run["Id"].as_str().unwrap().to_string();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no running run after 60 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn ctrl_c_cancels_the_run_on_the_server() {
    let server = TestServer::start("");
    let dir = layout_in("chip_sleep30");
    let child = spawn_submit(&server, dir.path(), &["chip_sleep30.gds"]);
    let run = running_run(&server).await;
    let status = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let (code, _, stderr) = finished(child);
    assert_eq!(code, 130, "{stderr}");
    assert!(
        stderr.contains(&format!("precheck {run} cancelled")),
        "{stderr}"
    );
    let (_, body) = get_json(&server, &format!("/api/v1/prechecks/{run}")).await;
    assert_eq!(body["State"]["Status"], "cancelled", "{body}");
    server.assert_no_containers();
}

#[tokio::test]
async fn a_server_restarted_mid_run_still_gives_the_result_and_the_whole_log() {
    let mut server = TestServer::start("");
    let dir = layout_in("chip_sleep6");
    let child = spawn_submit(&server, dir.path(), &["chip_sleep6.gds"]);
    running_run(&server).await;
    server.kill();
    tokio::time::sleep(Duration::from_secs(2)).await;
    server.restart_on_the_same_port();
    let (code, stdout, stderr) = finished(child);
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    assert!(
        stderr.contains("retrying"),
        "the client saw the server go: {stderr}"
    );
    // Every line once, in order, though the connection was lost in the middle.
    let seconds: Vec<&str> = stdout.lines().filter(|l| l.contains("second ")).collect();
    let expected: Vec<String> = (1..=6)
        .map(|i| format!("working on chip_sleep6: second {i} of 6"))
        .collect();
    assert_eq!(seconds, expected, "{stdout}");
    assert!(dir.path().join("chip_sleep6.checked.gds").is_file());
    assert_eq!(
        runs(&server).await.len(),
        1,
        "one run, however often the client retried"
    );
}

/// A YAML file as JSON, read by Python's PyYAML (as CI systems read YAML, not by this project).
fn yaml(path: &Path) -> Value {
    let out = Command::new("python3")
        .args([
            "-c",
            "import json, sys, yaml; print(json.dumps(yaml.safe_load(open(sys.argv[1]))))",
        ])
        .arg(path)
        .output()
        .expect("run python3 (with PyYAML)");
    assert!(
        out.status.success(),
        "cannot read {}: {}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Runs a CI script with bash, as the CI system would, with the job's variables, the server's
/// URL and this build's binary first on the PATH; returns its exit code and output.
fn run_ci_script(server: &TestServer, dir: &Path, script: &str, vars: &Value) -> (i32, String) {
    let bin = Path::new(server_bin()).parent().unwrap();
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut command = Command::new("bash");
    command
        .args(["-eo", "pipefail", "-c", script])
        .current_dir(dir)
        .env("PATH", path)
        .env("PRECHECK_SERVER", &server.url)
        .env("CI", "true")
        .env_remove("PRECHECK_API_KEY");
    for (k, v) in vars.as_object().unwrap() {
        if let Some(v) = v.as_str().filter(|v| !v.contains("${{")) {
            command.env(k, v);
        }
    }
    let out = command.output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[tokio::test]
async fn the_ci_examples_precheck_a_layout_with_submit() {
    let server = TestServer::start("");
    let docs = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/ci");

    let github = yaml(&docs.join("github-actions.yml"));
    let job = &github["jobs"]["precheck"];
    let step = job["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "Precheck")
        .expect("a step named Precheck");
    let gitlab = yaml(&docs.join("gitlab-ci.yml"));
    let gitlab_job = &gitlab["precheck"];
    let gitlab_script: Vec<&str> = gitlab_job["script"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l.as_str().unwrap())
        .collect();

    for (script, vars, top) in [
        (
            step["run"].as_str().unwrap().to_string(),
            &job["env"],
            "chip_top",
        ),
        (
            gitlab_script.join("\n"),
            &gitlab_job["variables"],
            "chip_top",
        ),
        (
            step["run"].as_str().unwrap().to_string(),
            &job["env"],
            "chip_fail",
        ),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let layout = dir.path().join(vars["LAYOUT"].as_str().unwrap());
        std::fs::create_dir_all(layout.parent().unwrap()).unwrap();
        std::fs::write(&layout, gds_bytes(top)).unwrap();
        let (code, printed) = run_ci_script(&server, dir.path(), &script, vars);
        if top == "chip_top" {
            assert_eq!(code, 0, "{script}\n{printed}");
            assert!(dir.path().join("checked.gds").is_file(), "{printed}");
        } else {
            assert_eq!(code, 1, "the job fails with the precheck: {printed}");
            assert!(
                dir.path().join("precheck-debug.tar.gz").is_file(),
                "{printed}"
            );
        }
    }
}

#[tokio::test]
async fn on_a_terminal_the_upload_shows_a_progress_bar() {
    let server = TestServer::start("");
    let dir = tempfile::tempdir().unwrap();
    crate::support::write_big_gds(dir.path().join("chip_top.gds"), "chip_top", 64 << 20);
    // `script` runs the client on a pseudo-terminal and copies what it drew.
    let command = format!(
        "{} submit chip_top.gds --server {} --output out.gds",
        server_bin(),
        server.url
    );
    let out = Command::new("script")
        .args(["-qefc", &command, "/dev/null"])
        .current_dir(dir.path())
        .env_remove("CI")
        .env("TERM", "xterm")
        .output()
        .expect("run script (util-linux)");
    let drawn = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{drawn}");
    assert!(
        drawn.contains("uploading chip_top.gds ["),
        "no bar drawn: {drawn}"
    );
    assert!(drawn.contains("MiB/"), "the bar counts bytes: {drawn}");
    assert!(!drawn.contains("uploading chip_top.gds: 10%"), "{drawn}");
    assert!(dir.path().join("out.gds").is_file());
}

#[tokio::test]
async fn the_key_comes_from_the_environment_and_the_fields_from_the_flags() {
    use crate::support::ALICE;
    let server = TestServer::builder().alice_and_bob().start();
    let dir = layout_in("chip_top");
    let args = [
        "chip_top.gds",
        "--top",
        "chip_top",
        "--slot",
        "0p5x1",
        "--cob",
        "--id",
        "KEYED001",
    ];
    // Without a key: refused before anything is stored.
    let (code, _, stderr) = finished(spawn_submit(&server, dir.path(), &args));
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("refused (401)"), "{stderr}");

    let child = Command::new(server_bin())
        .arg("submit")
        .args(args)
        .env("PRECHECK_SERVER", &server.url)
        .env("PRECHECK_API_KEY", ALICE)
        .env("CI", "true")
        .current_dir(dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (code, stdout, stderr) = finished(child);
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    let runs: Value = crate::client::send(
        crate::client::http()
            .get(server.api("/api/v1/prechecks"))
            .bearer_auth(ALICE),
    )
    .await
    .1;
    let labels = &runs[0]["Config"]["Labels"];
    assert_eq!(runs[0]["Owner"], "alice");
    assert_eq!(
        (
            &labels["top_cell"],
            &labels["slot"],
            &labels["cob"],
            &labels["die_id"]
        ),
        (
            &Value::from("chip_top"),
            &Value::from("0p5x1"),
            &Value::from("true"),
            &Value::from("KEYED001")
        )
    );
}

#[tokio::test]
async fn a_timeout_cancels_the_run_and_exits_124() {
    let server = TestServer::start("");
    let dir = layout_in("chip_sleep30");
    let (code, _, stderr) = finished(spawn_submit(
        &server,
        dir.path(),
        &["chip_sleep30.gds", "--timeout", "3s"],
    ));
    assert_eq!(code, 124, "{stderr}");
    assert!(stderr.contains("--timeout ran out"), "{stderr}");
    let runs = runs(&server).await;
    assert_eq!(runs[0]["State"]["Status"], "cancelled", "{runs:?}");
    server.assert_no_containers();
}
