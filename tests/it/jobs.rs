//! A project's jobs: simulations with a real Icarus Verilog, builds with the LibreLane stand-in,
//! a build's layout prechecked, and the requests a job refuses.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::client::{http, refused, send};
use crate::simulation::{COUNTER, testbench_dumping_to};
use crate::support::{
    ALICE, BOB, SIMULATION_IMAGE, TestServer, TestServerBuilder, librelane_image, simulation_image,
};

/// A server whose simulations run the Icarus test image and builds the LibreLane stand-in,
/// with `pdk` as the builds' PDK.
fn server(pdk: Option<&std::path::Path>, max_concurrent: i64) -> TestServer {
    simulation_image();
    let mut builder: TestServerBuilder = TestServer::builder()
        .max_concurrent(max_concurrent)
        .set("images.simulation", SIMULATION_IMAGE)
        .set("images.librelane", librelane_image());
    if let Some(pdk) = pdk {
        builder = builder.set("builds.pdk", pdk.display().to_string());
    }
    builder.start()
}

/// A PDK root as the stand-in wants it: `gf180mcuD/` inside.
fn pdk() -> tempfile::TempDir {
    let root = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(root.path().join("gf180mcuD/libs.tech")).unwrap();
    root
}

async fn new_project(server: &TestServer) -> String {
    let (status, body) = send(
        http()
            .post(server.api("/api/v1/projects"))
            .json(&json!({"name": "counter"})),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    body["Id"].as_str().unwrap().to_string()
}

async fn put(server: &TestServer, project: &str, path: &str, content: &str) {
    let url = server.api(&format!("/api/v1/projects/{project}/files/{path}"));
    let (status, body) = send(http().put(url).body(content.to_string())).await;
    assert!(status == 201 || status == 200, "{status} {body}");
}

fn jobs_url(server: &TestServer, project: &str) -> String {
    server.api(&format!("/api/v1/projects/{project}/jobs"))
}

fn job_url(server: &TestServer, project: &str, job: &str, rest: &str) -> String {
    server.api(&format!("/api/v1/projects/{project}/jobs/{job}{rest}"))
}

async fn start_job(server: &TestServer, project: &str, body: Value) -> Value {
    let (status, job) = send(http().post(jobs_url(server, project)).json(&body)).await;
    assert_eq!(status, 201, "{job}");
    job
}

/// Starts a job; returns its id.
async fn new_job(server: &TestServer, project: &str, body: Value) -> String {
    start_job(server, project, body).await["Id"]
        .as_str()
        .unwrap()
        .to_string()
}

async fn wait_job(server: &TestServer, project: &str, job: &str) -> Value {
    let url = job_url(server, project, job, "/wait?timeout=300");
    let (status, body) = send(http().post(url)).await;
    assert_eq!(status, 200, "{body}");
    body
}

async fn job_log(server: &TestServer, project: &str, job: &str) -> String {
    let (status, logs) = send(http().get(job_url(server, project, job, "/logs"))).await;
    assert_eq!(status, 200, "{logs}");
    logs["lines"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l.as_str().unwrap())
        .collect::<Vec<_>>()
        .join("\n")
}

async fn get_bytes(url: String) -> (StatusCode, Vec<u8>) {
    let resp = http().get(url).send().await.unwrap();
    (resp.status(), resp.bytes().await.unwrap().to_vec())
}

/// The names in a `.tar.gz`.
fn tar_names(bytes: &[u8]) -> Vec<String> {
    let mut tar = tar::Archive::new(flate2::read::GzDecoder::new(bytes));
    tar.entries()
        .unwrap()
        .map(|e| e.unwrap().path().unwrap().display().to_string())
        .collect()
}

/// The testbench, writing its waveforms into a folder of the project.
fn testbench(expected: u32) -> String {
    testbench_dumping_to(expected, "waves/tb.vcd")
}

/// Simulates with `tool` a testbench that passes and, after `tb/tb.v` is replaced once the first
/// job exists (which must not change that job), one that fails; checks their ends, their logs
/// and the passing one's waveforms. Returns the project and the two jobs.
async fn pass_then_fail(server: &TestServer, tool: &str) -> (String, String, String) {
    let project = new_project(server).await;
    put(server, &project, "rtl/counter.v", COUNTER).await;
    put(server, &project, "tb/tb.v", &testbench(5)).await;
    put(server, &project, "waves/README", "waveforms land here\n").await;
    let job = json!({"kind": "simulation", "tool": tool, "top": "tb"});
    let passing = new_job(server, &project, job).await;
    put(server, &project, "tb/tb.v", &testbench(7)).await;
    let job = json!({"kind": "simulation", "tool": tool, "top": "tb", "files": ["rtl/counter.v", "tb/tb.v"]});
    let failing = new_job(server, &project, job).await;

    let waited = wait_job(server, &project, &passing).await;
    assert_eq!(waited, json!({"StatusCode": 0, "Error": null}));
    assert!(
        job_log(server, &project, &passing)
            .await
            .contains("PASS q=5")
    );
    let url = job_url(server, &project, &passing, "/artifacts/waves/tb.vcd");
    let (status, vcd) = get_bytes(url).await;
    assert_eq!(status, 200);
    let vcd = String::from_utf8_lossy(&vcd);
    assert!(
        vcd.contains("$var") && vcd.contains("$enddefinitions"),
        "{vcd}"
    );

    let waited = wait_job(server, &project, &failing).await;
    assert_ne!(waited["StatusCode"], 0, "{waited}");
    let error = waited["Error"]["Message"].as_str().unwrap();
    assert!(error.contains("simulation of tb failed"), "{error}");
    assert!(
        job_log(server, &project, &failing)
            .await
            .contains("FAIL q=5")
    );
    (project, passing, failing)
}

#[tokio::test]
async fn simulations_pass_fail_report_syntax_errors_and_keep_their_inputs() {
    // One slot: a precheck holds it while the first simulation waits in the queue.
    let server = server(None, 1);
    let sleeper = crate::client::precheck(&server, "chip_sleep3").await;
    let (project, passing, failing) = pass_then_fail(&server, "icarus").await;
    let (_, job) = send(http().get(job_url(&server, &project, &passing, ""))).await;
    assert_eq!(job["Kind"], "simulation");
    assert_eq!(job["Config"]["Labels"]["tool"], "icarus");
    assert_eq!(job["Config"]["Labels"]["files"], "rtl/counter.v tb/tb.v");
    let (_, job) = send(http().get(job_url(&server, &project, &failing, ""))).await;
    assert_eq!(job["State"]["ExitCode"], 1, "{job}");
    let (status, tarball) = get_bytes(job_url(&server, &project, &passing, "/artifacts")).await;
    assert_eq!(status, 200);
    let names = tar_names(&tarball);
    assert!(
        names.contains(&format!("simulation-{passing}/waves/tb.vcd")),
        "{names:?}"
    );
    assert!(
        !names
            .iter()
            .any(|n| n.ends_with(".v") || n.ends_with("README")),
        "{names:?}"
    );
    crate::client::wait(&server, &sleeper).await;

    // A syntax error: the job fails and the compiler's message, naming the file, is in the log.
    put(
        &server,
        &project,
        "rtl/counter.v",
        &COUNTER.replace("endmodule", "endmodul"),
    )
    .await;
    let broken = new_job(
        &server,
        &project,
        json!({"kind": "simulation", "top": "tb"}),
    )
    .await;
    let waited = wait_job(&server, &project, &broken).await;
    assert_ne!(waited["StatusCode"], 0, "{waited}");
    let log = job_log(&server, &project, &broken).await;
    assert!(log.contains("/project/rtl/counter.v"), "{log}");
    assert!(log.to_lowercase().contains("syntax error"), "{log}");

    // Jobs are runs: listed under the project (and by kind), not among the prechecks.
    let (_, jobs) = send(http().get(jobs_url(&server, &project))).await;
    assert_eq!(jobs.as_array().unwrap().len(), 3, "{jobs}");
    let (_, builds) = send(http().get(format!("{}?kind=build", jobs_url(&server, &project)))).await;
    assert_eq!(builds, json!([]));
    let (_, prechecks) = send(http().get(server.api("/api/v1/prechecks"))).await;
    assert_eq!(prechecks.as_array().unwrap().len(), 1, "{prechecks}");
    let (status, _) = send(http().get(server.api(&format!("/api/v1/prechecks/{passing}")))).await;
    assert_eq!(status, 404);
    let table = crate::cli::ok(&server, &["runs", "list", "--no-trunc"]);
    let row = table.lines().find(|l| l.starts_with(&passing)).unwrap();
    assert!(
        row.contains("simulation") && row.contains("tb (icarus)"),
        "{table}"
    );
    assert!(
        table
            .lines()
            .any(|l| l.contains("precheck") && l.contains("chip_sleep3")),
        "{table}"
    );
    server.assert_no_containers();
}

#[tokio::test]
async fn a_simulation_that_never_ends_times_out_by_its_own_limit() {
    simulation_image();
    let server = TestServer::builder()
        .set("images.simulation", SIMULATION_IMAGE)
        .set("limits.simulation.timeout", "3s")
        .start();
    let project = new_project(&server).await;
    put(
        &server,
        &project,
        "tb.v",
        "module tb;\n  reg clk = 0;\n  always #1 clk = ~clk;\nendmodule\n",
    )
    .await;
    let job = new_job(
        &server,
        &project,
        json!({"kind": "simulation", "top": "tb"}),
    )
    .await;
    let waited = wait_job(&server, &project, &job).await;
    assert_eq!(waited["StatusCode"], 124, "{waited}");
    let error = waited["Error"]["Message"].as_str().unwrap();
    assert!(
        error.contains("timed out after 3 s (limits.simulation.timeout)"),
        "{error}"
    );
    server.assert_no_containers();
}

/// A LibreLane config of the counter under the name `design`, its sources at `sources` (a
/// `dir::` path is relative to the config's folder).
fn build_config(design: &str, sources: &str) -> String {
    format!(
        "{{\n  \"DESIGN_NAME\": \"{design}\",\n  \"VERILOG_FILES\": [\"dir::{sources}\"],\n  \"CLOCK_PORT\": \"clk\"\n}}\n"
    )
}

/// A project of the counter's source in `src/` and a LibreLane config at `config` naming the
/// design `design`.
async fn counter_project(server: &TestServer, config: &str, design: &str) -> String {
    let project = new_project(server).await;
    put(server, &project, "src/counter.v", COUNTER).await;
    let sources = match config.rsplit_once('/') {
        Some(_) => "../src/*.v",
        None => "src/*.v",
    };
    put(server, &project, config, &build_config(design, sources)).await;
    project
}

/// A running build's `State.Progress` once it has reached `step`.
async fn progress_while_running(server: &TestServer, project: &str, job: &str, step: u64) -> Value {
    let url = job_url(server, project, job, "");
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let (_, job) = send(http().get(&url)).await;
        let state = &job["State"];
        if state["Progress"]["Step"].as_u64() >= Some(step) {
            assert_eq!(state["Status"], "running", "{job}");
            return state["Progress"].clone();
        }
        if state["Status"] != "queued" && state["Status"] != "running" {
            let log = job_log(server, project, job["Id"].as_str().unwrap()).await;
            panic!("the build ended before step {step}: {job}\n{log}");
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no step {step} after 60 s: {job}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn a_build_reports_progress_and_its_layout_passes_the_precheck() {
    let pdk = pdk();
    let server = server(Some(pdk.path()), 2);
    let project = counter_project(&server, "flow/config.json", "counter_sleep1").await;
    // The stand-in works a second in each of its five steps.
    let build = start_job(
        &server,
        &project,
        json!({"kind": "build", "config": "flow/config.json"}),
    )
    .await;
    assert_eq!(build["Kind"], "build");
    assert_eq!(build["Config"]["Labels"]["config"], "flow/config.json");
    let build = build["Id"].as_str().unwrap().to_string();
    let inspect = |job: String| {
        let url = job_url(&server, &project, &job, "");
        async move { send(http().get(url)).await.1 }
    };
    let seen = progress_while_running(&server, &project, &build, 2).await;
    assert!(seen["Name"].is_string(), "{seen}");
    assert_eq!(
        seen["Count"],
        Value::Null,
        "no build of it has completed yet: {seen}"
    );

    let waited = wait_job(&server, &project, &build).await;
    assert_eq!(waited, json!({"StatusCode": 0, "Error": null}));
    let done = inspect(build.clone()).await;
    assert_eq!(
        done["State"]["Progress"],
        json!({"Step": 5, "Name": "GDSII Stream Out (KLayout)", "Count": 5})
    );
    let log = job_log(&server, &project, &build).await;
    assert!(log.contains(&format!("with the tag '{build}'")), "{log}");
    assert!(log.contains("Flow complete."), "{log}");

    // Artefacts: the run folder LibreLane wrote beside the config, named by the job's id.
    let (status, tarball) = get_bytes(job_url(&server, &project, &build, "/artifacts")).await;
    assert_eq!(status, 200);
    let names = tar_names(&tarball);
    for name in [
        "final/gds/counter_sleep1.gds",
        "final/metrics.json",
        "01-verilator-lint/verilator-lint.log",
        "flow.log",
    ] {
        let full = format!("build-{build}/{name}");
        assert!(names.contains(&full), "{full} not in {names:?}");
    }
    final_gds_holds(&server, &project, &build, "counter_sleep1").await;

    // A request that cannot succeed makes no upload of the build's layout.
    refused(
        send(
            http()
                .post(server.api("/api/v1/prechecks"))
                .json(&json!({"job_id": build, "die_id": "short"})),
        )
        .await,
        400,
        "die_id",
    );
    let (_, uploads) = send(http().get(server.api("/api/v1/uploads"))).await;
    assert_eq!(uploads, json!([]));
    // The stand-in's final GDS is a 10 µm macro, not a die: the precheck refuses its geometry
    // as it would any upload's, before a run exists.
    refused(
        send(
            http()
                .post(server.api("/api/v1/prechecks"))
                .json(&json!({"job_id": build, "die_id": "BUILD001"})),
        )
        .await,
        400,
        "the die is 10 x 10 µm, but slot 1x1 needs 3932 x 5122 µm",
    );
    // ...and the upload made of it for that request goes with the refusal.
    let (_, uploads) = send(http().get(server.api("/api/v1/uploads"))).await;
    assert_eq!(uploads, json!([]));
    // RTL to checked layout: the build's final GDS goes to the precheck as an upload (`force`:
    // the stand-in's precheck passes whatever it is given).
    let (status, run) = send(
        http()
            .post(server.api("/api/v1/prechecks"))
            .json(&json!({"job_id": build, "die_id": "BUILD001", "force": true})),
    )
    .await;
    assert_eq!(status, 201, "{run}");
    assert_eq!(run["Config"]["Labels"]["top_cell"], "counter_sleep1");
    let run_id = run["Id"].as_str().unwrap();
    let upload = run["Config"]["Labels"]["upload_id"].as_str().unwrap();
    let (_, upload) = send(http().get(server.api(&format!("/api/v1/uploads/{upload}")))).await;
    assert_eq!(upload["Name"], "counter_sleep1.gds");
    assert_eq!(upload["Layout"]["TopCells"], json!(["counter_sleep1"]));
    assert_eq!(
        crate::client::wait(&server, run_id).await,
        json!({"StatusCode": 0, "Error": null})
    );

    // A second build of the same config knows the flow's length while it runs.
    let again = new_job(
        &server,
        &project,
        json!({"kind": "build", "config": "flow/config.json"}),
    )
    .await;
    let seen = progress_while_running(&server, &project, &again, 1).await;
    assert_eq!(seen["Count"], 5, "{seen}");
    wait_job(&server, &project, &again).await;

    // A failing build names the step it failed in, and has no layout to precheck.
    put(
        &server,
        &project,
        "flow/config.json",
        &build_config("counter_fail", "../src/*.v"),
    )
    .await;
    let failed = new_job(
        &server,
        &project,
        json!({"kind": "build", "config": "flow/config.json"}),
    )
    .await;
    let waited = wait_job(&server, &project, &failed).await;
    assert_eq!(
        waited,
        json!({"StatusCode": 2, "Error": {"Message":
            "the build failed in step 2 (Synthesis) with exit code 2 (a step failed): see the logs"}})
    );
    refused(
        send(
            http()
                .post(server.api("/api/v1/prechecks"))
                .json(&json!({"job_id": failed})),
        )
        .await,
        409,
        "only a completed build",
    );

    // Checker errors are deferred: exit code 2 too, but the flow ran to its end and its final
    // views (the GDS included) are in the artefacts.
    put(
        &server,
        &project,
        "flow/config.json",
        &build_config("counter_drc", "../src/*.v"),
    )
    .await;
    let deferred = new_job(
        &server,
        &project,
        json!({"kind": "build", "config": "flow/config.json"}),
    )
    .await;
    let waited = wait_job(&server, &project, &deferred).await;
    assert_eq!(
        waited,
        json!({"StatusCode": 2, "Error": {"Message":
            "the build's checkers found problems (exit code 2): 3 KLayout DRC errors found; its final views are in the artifacts; see the logs"}})
    );
    final_gds_holds(&server, &project, &deferred, "counter_drc").await;
    refused(
        send(
            http()
                .post(server.api("/api/v1/prechecks"))
                .json(&json!({"job_id": deferred})),
        )
        .await,
        409,
        "only a completed build",
    );
    server.assert_no_containers();
}

#[tokio::test]
async fn a_build_without_its_pdk_fails_with_exit_code_1() {
    // A PDK root without gf180mcuD: LibreLane quits before any step, with exit code 1.
    let empty = tempfile::tempdir().unwrap();
    let server = server(Some(empty.path()), 1);
    let project = counter_project(&server, "config.json", "counter").await;
    let build = new_job(
        &server,
        &project,
        json!({"kind": "build", "config": "config.json"}),
    )
    .await;
    let waited = wait_job(&server, &project, &build).await;
    assert_eq!(
        waited,
        json!({"StatusCode": 1, "Error": {"Message":
            "the build failed with exit code 1 (an unexpected error, an invalid config or a missing PDK): see the logs"}})
    );
    let log = job_log(&server, &project, &build).await;
    assert!(log.contains("The PDK 'gf180mcuD' was not found"), "{log}");
    server.assert_no_containers();
}

#[tokio::test]
async fn jobs_refuse_bad_requests_and_projects_with_running_jobs_stay() {
    let pdk = pdk();
    let server = server(Some(pdk.path()), 2);
    let project = new_project(&server).await;
    put(&server, &project, "rtl/counter.v", COUNTER).await;
    put(&server, &project, "tb.v", &testbench(5)).await;
    put(
        &server,
        &project,
        "config.json",
        &build_config("counter_sleep5", "rtl/*.v"),
    )
    .await;
    let post = |body: Value| http().post(jobs_url(&server, &project)).json(&body);
    for (body, status, needle) in [
        (json!({"kind": "synthesis"}), 400, "use simulation or build"),
        (json!({"kind": "simulation"}), 400, "top: missing"),
        (
            json!({"kind": "simulation", "top": "tb_missing"}),
            400,
            "no module \"tb_missing\"",
        ),
        (
            json!({"kind": "simulation", "top": "-tb"}),
            400,
            "not a Verilog module name",
        ),
        (
            json!({"kind": "simulation", "top": "tb", "tool": "vcs"}),
            400,
            "icarus, verilator",
        ),
        (
            json!({"kind": "simulation", "top": "tb", "files": []}),
            400,
            "files: empty",
        ),
        (
            json!({"kind": "simulation", "top": "tb", "files": ["../tb.v"]}),
            400,
            "'..'",
        ),
        (
            json!({"kind": "simulation", "top": "tb", "files": ["tb.v", "tb.v"]}),
            400,
            "listed twice",
        ),
        (
            json!({"kind": "simulation", "top": "tb", "files": ["nope.v"]}),
            400,
            "has no file \"nope.v\"",
        ),
        (
            json!({"kind": "simulation", "top": "tb", "config": "config.json"}),
            400,
            "config: not a field",
        ),
        (json!({"kind": "build"}), 400, "config: missing"),
        (
            json!({"kind": "build", "config": "missing.json"}),
            400,
            "has no file \"missing.json\"",
        ),
        (
            json!({"kind": "build", "config": "rtl/counter.v"}),
            400,
            ".json, .yaml or .yml",
        ),
        (
            json!({"kind": "build", "config": "/etc/config.json"}),
            400,
            "absolute",
        ),
        (
            json!({"kind": "build", "config": "config.json", "top": "x"}),
            400,
            "top: not a field",
        ),
        (
            json!({"kind": "build", "config": "config.json", "extra": 1}),
            400,
            "extra",
        ),
    ] {
        refused(send(post(body.clone())).await, status, needle);
    }
    let missing = uuid::Uuid::new_v4();
    refused(
        send(
            http()
                .post(server.api(&format!("/api/v1/projects/{missing}/jobs")))
                .json(&json!({"kind": "build", "config": "config.json"})),
        )
        .await,
        404,
        "no such project",
    );
    refused(
        send(http().get(job_url(&server, &project, &missing.to_string(), ""))).await,
        404,
        "has no job",
    );

    // A project with a running job is not deleted; once the job is cancelled, it is.
    let build = new_job(
        &server,
        &project,
        json!({"kind": "build", "config": "config.json"}),
    )
    .await;
    refused(
        send(http().get(job_url(&server, &project, &build, "/artifacts"))).await,
        409,
        "once it has finished",
    );
    let delete = || http().delete(server.api(&format!("/api/v1/projects/{project}")));
    refused(send(delete()).await, 409, "queued or running");
    let (status, cancelled) = send(http().delete(job_url(&server, &project, &build, ""))).await;
    assert_eq!(status, 200, "{cancelled}");
    assert_eq!(cancelled["State"]["Status"], "cancelled");
    assert_eq!(cancelled["State"]["ExitCode"], 130);
    let (status, _) = send(delete()).await;
    assert_eq!(status, 204);
    server.assert_no_containers();
}

#[tokio::test]
async fn without_a_pdk_builds_are_refused_and_another_keys_jobs_are_not_there() {
    simulation_image();
    let server = TestServer::builder()
        .set("images.simulation", SIMULATION_IMAGE)
        .alice_and_bob()
        .start();
    let (_, created) = send(
        http()
            .post(server.api("/api/v1/projects"))
            .bearer_auth(ALICE)
            .json(&json!({"name": "alice's"})),
    )
    .await;
    let project = created["Id"].as_str().unwrap().to_string();
    for (path, content) in [
        ("counter.v", COUNTER.to_string()),
        ("tb.v", testbench(5)),
        ("config.json", build_config("counter", "*.v")),
    ] {
        let url = server.api(&format!("/api/v1/projects/{project}/files/{path}"));
        let (status, _) = send(http().put(url).bearer_auth(ALICE).body(content)).await;
        assert_eq!(status, 201);
    }
    refused(
        send(
            http()
                .post(jobs_url(&server, &project))
                .bearer_auth(ALICE)
                .json(&json!({"kind": "build", "config": "config.json"})),
        )
        .await,
        503,
        "[builds] pdk",
    );
    let (status, job) = send(
        http()
            .post(jobs_url(&server, &project))
            .bearer_auth(ALICE)
            .json(&json!({"kind": "simulation", "top": "tb"})),
    )
    .await;
    assert_eq!(status, 201, "{job}");
    let job = job["Id"].as_str().unwrap().to_string();
    for request in [
        http()
            .post(jobs_url(&server, &project))
            .json(&json!({"kind": "simulation", "top": "tb"})),
        http().get(jobs_url(&server, &project)),
        http().get(job_url(&server, &project, &job, "")),
        http().post(job_url(&server, &project, &job, "/wait")),
        http().get(job_url(&server, &project, &job, "/logs")),
        http().get(job_url(&server, &project, &job, "/artifacts")),
        http().delete(job_url(&server, &project, &job, "")),
    ] {
        refused(send(request.bearer_auth(BOB)).await, 404, "no such project");
    }
    refused(
        send(
            http()
                .post(server.api("/api/v1/prechecks"))
                .bearer_auth(BOB)
                .json(&json!({"job_id": job})),
        )
        .await,
        404,
        "no such build job",
    );
    let waited = send(
        http()
            .post(job_url(&server, &project, &job, "/wait?timeout=120"))
            .bearer_auth(ALICE),
    )
    .await;
    assert_eq!(waited.1, json!({"StatusCode": 0, "Error": null}));
    let (_, jobs) = send(http().get(jobs_url(&server, &project)).bearer_auth(ALICE)).await;
    assert_eq!(jobs.as_array().unwrap().len(), 1, "{jobs}");
    server.assert_no_containers();
}

#[tokio::test]
async fn a_build_survives_a_killed_server_with_its_progress_and_artifacts() {
    let pdk = pdk();
    let mut server = server(Some(pdk.path()), 2);
    let project = counter_project(&server, "config.json", "counter_sleep2").await;
    let build = new_job(
        &server,
        &project,
        json!({"kind": "build", "config": "config.json"}),
    )
    .await;
    let before = progress_while_running(&server, &project, &build, 2).await;
    server.kill();
    // Steps go on while the server is down.
    tokio::time::sleep(Duration::from_secs(3)).await;
    server.restart();
    let (_, job) = send(http().get(job_url(&server, &project, &build, ""))).await;
    assert!(
        job["State"]["Progress"]["Step"].as_u64() >= before["Step"].as_u64(),
        "{job} after {before}"
    );
    let waited = wait_job(&server, &project, &build).await;
    assert_eq!(waited, json!({"StatusCode": 0, "Error": null}));
    let (_, job) = send(http().get(job_url(&server, &project, &build, ""))).await;
    assert_eq!(
        job["State"]["Progress"],
        json!({"Step": 5, "Name": "GDSII Stream Out (KLayout)", "Count": 5})
    );
    // Every step's rule line once, in order, though the server missed some of them live.
    let log = job_log(&server, &project, &build).await;
    let rules: Vec<&str> = log.lines().filter(|l| l.starts_with('─')).collect();
    assert_eq!(rules.len(), 5, "{log}");
    let (status, _) = get_bytes(job_url(
        &server,
        &project,
        &build,
        "/artifacts/final/gds/counter_sleep2.gds",
    ))
    .await;
    assert_eq!(status, 200);
    server.assert_no_containers();
}

/// A Docker volume, removed when dropped.
struct Volume(String);

impl Drop for Volume {
    fn drop(&mut self) {
        let _ = crate::support::docker(&["volume", "rm", "-f", &self.0]);
    }
}

#[tokio::test]
async fn a_pdk_volume_is_mounted_read_only_and_a_missing_one_fails_the_build() {
    let volume = Volume(format!(
        "precheck-test-pdk-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    ));
    crate::support::docker_ok(&["volume", "create", &volume.0]);
    crate::support::docker_ok(&[
        "run",
        "--rm",
        "--network",
        "none",
        "-v",
        &format!("{}:/pdk", volume.0),
        librelane_image(),
        "mkdir",
        "-p",
        "/pdk/gf180mcuD/libs.tech",
    ]);
    let server = TestServer::builder()
        .set("images.librelane", librelane_image())
        .set("builds.pdk", volume.0.as_str())
        .start();
    let project = counter_project(&server, "config.json", "counter").await;
    let build = new_job(
        &server,
        &project,
        json!({"kind": "build", "config": "config.json"}),
    )
    .await;
    // The stand-in fails (exit code 1) if it can write to the PDK.
    let waited = wait_job(&server, &project, &build).await;
    assert_eq!(waited, json!({"StatusCode": 0, "Error": null}));

    // `/wait` answers before the container is removed: the volume is free once it is gone.
    server.assert_no_containers();
    crate::support::docker_ok(&["volume", "rm", &volume.0]);
    let build = new_job(
        &server,
        &project,
        json!({"kind": "build", "config": "config.json"}),
    )
    .await;
    let waited = wait_job(&server, &project, &build).await;
    assert_eq!(waited["StatusCode"], 125, "{waited}");
    let error = waited["Error"]["Message"].as_str().unwrap();
    assert!(
        error.contains(&format!(
            "the PDK volume {} (builds.pdk) does not exist",
            volume.0
        )),
        "{error}"
    );
    server.assert_no_containers();
}

#[tokio::test]
async fn verilator_simulations_pass_fail_and_keep_their_waveforms() {
    crate::support::verilator_image();
    let server = TestServer::builder()
        .set("images.simulation", crate::support::VERILATOR_IMAGE)
        .set("limits.simulation.memory", "2GiB")
        .start();
    pass_then_fail(&server, "verilator").await;
    server.assert_no_containers();
}

/// The build's `final/gds/DESIGN.gds` is served as an artefact and its one top cell is DESIGN.
async fn final_gds_holds(server: &TestServer, project: &str, build: &str, design: &str) {
    let path = format!("/artifacts/final/gds/{design}.gds");
    let (status, gds) = get_bytes(job_url(server, project, build, &path)).await;
    assert_eq!(status, 200, "{path}");
    let layout = precheck_server::layout::inspect(gds.as_slice()).unwrap();
    assert_eq!(layout.top_cells, [design]);
}

/// A project's job list a page at a time (issue 13, item 13): 25 jobs, one running and 24 queued
/// behind it, walked with `limit` and `before` newest first; the queued ones carry their place
/// in the queue; a `before` of another list is refused.
#[tokio::test]
async fn a_projects_jobs_are_listed_a_page_at_a_time() {
    let server = server(None, 1);
    let project = new_project(&server).await;
    let other = new_project(&server).await;
    put(
        &server,
        &project,
        "tb.v",
        "module tb;\n  reg clk = 0;\n  always #1 clk = ~clk;\nendmodule\n",
    )
    .await;
    let body = json!({"kind": "simulation", "top": "tb"});
    let mut made = vec![];
    for _ in 0..25 {
        made.push(new_job(&server, &project, body.clone()).await);
    }
    // The oldest has left the queue (its container is made before it does): the places of
    // the others hold still while the pages are read.
    let first = job_url(&server, &project, &made[0], "");
    crate::support::wait_until_async(Duration::from_secs(60), "the first job runs", || {
        let first = first.clone();
        async move { send(http().get(first)).await.1["State"]["Status"] == "running" }
    })
    .await;
    let newest_first: Vec<String> = made.iter().rev().cloned().collect();
    let mut listed = vec![];
    let mut queued = vec![];
    let mut before: Option<String> = None;
    let mut pages = 0;
    loop {
        let cursor = before.map(|b| format!("&before={b}")).unwrap_or_default();
        let url = format!("{}?limit=10{cursor}", jobs_url(&server, &project));
        let resp = http().get(&url).send().await.unwrap();
        assert_eq!(resp.status(), 200, "{url}");
        let next = resp
            .headers()
            .get("x-next-before")
            .map(|v| v.to_str().unwrap().to_string());
        let page: Value = resp.json().await.unwrap();
        let page = page.as_array().unwrap().clone();
        pages += 1;
        assert_eq!(page.len(), if pages < 3 { 10 } else { 5 }, "page {pages}");
        for job in &page {
            let id = job["Id"].as_str().unwrap().to_string();
            if job["State"]["Status"] == "queued" {
                let position = job["Queue"]["Position"]
                    .as_u64()
                    .expect("a queued job's place");
                queued.push((position, id.clone(), job["Queue"]["Length"].clone()));
            }
            listed.push(id);
        }
        match next {
            Some(next) => {
                assert_eq!(page.last().unwrap()["Id"], next.as_str());
                before = Some(next);
            }
            None => break,
        }
    }
    assert_eq!(pages, 3);
    assert_eq!(listed, newest_first);
    // One slot: at most the oldest runs; the rest are queued oldest first, from 1 on.
    assert!(queued.len() >= 24, "{} queued", queued.len());
    queued.sort_by_key(|(position, _, _)| *position);
    let in_queue: Vec<&String> = queued.iter().map(|(_, id, _)| id).collect();
    assert_eq!(
        in_queue,
        made[made.len() - queued.len()..].iter().collect::<Vec<_>>()
    );
    for (n, (position, _, length)) in queued.iter().enumerate() {
        assert_eq!(*position, n as u64 + 1);
        assert_eq!(length, &json!(queued.len()));
    }
    // Another project's job, or no job at all, is no cursor of this list.
    let url = format!("{}?before={}", jobs_url(&server, &other), made[3]);
    refused(send(http().get(url)).await, 400, "before: no such job");
    let url = format!("{}?limit=0", jobs_url(&server, &project));
    refused(send(http().get(url)).await, 400, "limit:");
    for job in &made {
        let _ = send(http().delete(job_url(&server, &project, job, ""))).await;
    }
    crate::support::wait_until_async(
        Duration::from_secs(60),
        "the jobs' containers are gone",
        || async { server.containers().is_empty() },
    )
    .await;
    server.assert_no_containers();
}
