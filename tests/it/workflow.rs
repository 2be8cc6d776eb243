//! The Python server's "Complete Workflow Example" (curl + jq), run unchanged against ours.

use std::process::Command;

use crate::support::{TestServer, gds_bytes};

fn run_workflow(server: &TestServer, top: &str) -> (String, tempfile::TempDir) {
    run_workflow_on(server, top, gds_bytes(top))
}

fn run_workflow_on(server: &TestServer, top: &str, layout: Vec<u8>) -> (String, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let gds = dir.path().join("chip_top.gds");
    std::fs::write(&gds, layout).unwrap();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/scripts/workflow.sh");
    let out = Command::new("bash")
        .arg(script)
        .env("SERVER", &server.url)
        .env("GDS", &gds)
        .env("TOP", top)
        .env("WORKDIR", dir.path())
        .output()
        .expect("run bash");
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "workflow failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    (stdout, dir)
}

/// The names in the `debug.tar.gz` the workflow saved in `dir`, one a line.
fn debug_tarball_files(dir: &std::path::Path) -> String {
    let listing = Command::new("tar")
        .arg("tzf")
        .arg(dir.join("debug.tar.gz"))
        .output()
        .unwrap();
    assert!(
        listing.status.success(),
        "not a tar.gz: {}",
        String::from_utf8_lossy(&listing.stderr)
    );
    String::from_utf8_lossy(&listing.stdout).to_string()
}

#[test]
fn passing_layout_downloads_the_checked_output() {
    let server = TestServer::start("");
    let (stdout, dir) = run_workflow(&server, "chip_top");
    assert!(stdout.contains("Precheck passed!"), "{stdout}");
    let output = std::fs::read(dir.path().join("output.gds")).unwrap();
    assert_eq!(
        output,
        gds_bytes("chip_top"),
        "the stand-in copies its input to --output"
    );
    server.assert_no_containers();
}

#[test]
fn failing_layout_gets_status_1_and_a_debug_tarball_with_flow_and_logs() {
    let server = TestServer::start("");
    let (stdout, dir) = run_workflow(&server, "chip_fail");
    assert!(
        stdout.contains("Precheck failed with exit code: 1"),
        "{stdout}"
    );
    let files = debug_tarball_files(dir.path());
    assert!(
        files.lines().any(|f| f.ends_with("/logs.txt")),
        "no logs in {files}"
    );
    assert!(
        files
            .lines()
            .any(|f| f.contains("/work/runs/RUN_") && f.ends_with("/runtime.txt")),
        "no flow files in {files}"
    );
    // The checkers' errors are deferred to the end of the flow: the checked layout and the
    // final views were written before the run failed.
    for written in [
        "/output/design.gds",
        "/final/gds/chip_fail.gds",
        "/14-klayout-drc/violations.lyrdb",
    ] {
        assert!(
            files.lines().any(|f| f.ends_with(written)),
            "no {written} in {files}"
        );
    }
    server.assert_no_containers();
}

/// README, "Try it without the real image": `scripts/standin.sh` builds an image the server runs,
/// the README's `sed` points the example config at it, and the die that `cargo run --example
/// layout` writes passes (issue 12).
#[tokio::test]
async fn the_readme_way_to_try_the_server_without_the_real_image() {
    crate::support::docker_required();
    let tag = format!("precheck-server-test/try:{}", std::process::id());
    let root = env!("CARGO_MANIFEST_DIR");
    let built = Command::new(format!("{root}/scripts/standin.sh"))
        .arg(&tag)
        .output()
        .expect("run scripts/standin.sh");
    assert!(
        built.status.success(),
        "{}",
        String::from_utf8_lossy(&built.stderr)
    );
    let _image = RemoveImage(tag.clone());

    let sed = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "sed 's|^image = .*|image = \"{tag}\"|' {root}/config.example.toml"
        ))
        .output()
        .unwrap();
    let config = String::from_utf8(sed.stdout).unwrap();
    let parsed: toml::Table = toml::from_str(&config).unwrap();
    assert_eq!(parsed["docker"]["image"].as_str(), Some(tag.as_str()));

    let dir = tempfile::tempdir().unwrap();
    let gds = dir.path().join("chip_top.gds");
    let example = std::path::Path::new(crate::support::server_bin())
        .with_file_name("examples")
        .join("layout");
    let wrote = Command::new(&example)
        .arg(&gds)
        .output()
        .expect("run the layout example");
    assert!(
        wrote.status.success(),
        "{}",
        String::from_utf8_lossy(&wrote.stderr)
    );

    let server = TestServer::builder().image(&tag).start();
    let upload = crate::client::upload(&server, "chip_top.gds", std::fs::read(&gds).unwrap()).await;
    let run = crate::client::create(&server, &upload, "chip_top").await;
    let id = run["Id"].as_str().unwrap();
    assert_eq!(crate::client::wait(&server, id).await["StatusCode"], 0);
    server.assert_no_containers();
}

/// Removes a test's image when dropped.
struct RemoveImage(String);

impl Drop for RemoveImage {
    fn drop(&mut self) {
        crate::support::docker(&["rmi", "-f", &self.0]);
    }
}

/// The same workflow against the precheck image that does real work: a good die passes with its
/// checked layout, a die with a DRC error fails with the DRC report in its debug tarball.
#[test]
fn the_workflow_gets_real_verdicts_from_the_klayout_image() {
    use precheck_server::layout::write::{Defect, Die};
    let server = TestServer::builder()
        .image(crate::klayout_image::klayout_image())
        .start();
    let (stdout, dir) = run_workflow_on(&server, "chip_top", Die::new("chip_top").gds());
    assert!(stdout.contains("Precheck passed!"), "{stdout}");
    let checked = precheck_server::layout::inspect(
        std::fs::File::open(dir.path().join("output.gds")).unwrap(),
    )
    .unwrap();
    assert_eq!(checked.top_cells, ["chip_top"]);

    let dirty = Die::new("chip_top").defect(Defect::DrcWidth).gds();
    let (stdout, dir) = run_workflow_on(&server, "chip_top", dirty);
    assert!(
        stdout.contains("Precheck failed with exit code: 1"),
        "{stdout}"
    );
    let files = debug_tarball_files(dir.path());
    assert!(
        files
            .lines()
            .any(|f| f.contains("/work/runs/") && f.ends_with(".lyrdb")),
        "no DRC report in {files}"
    );
    server.assert_no_containers();
}
