//! Containers that hand back hostile trees (issue 13, items 1 to 3): the hostile stand-in
//! ([`hostile_image`]) plants symlinks to host paths, hard links and fifos at every level of what
//! the server copies out, the root of the copied tree included. The server keeps only regular
//! files and folders, notes every entry it skipped in the run's log, and never serves, packs or
//! moves a file of the host. Each endpoint is checked over HTTP against the real server.

use std::fs;
use std::path::Path;
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::client::{self, http, send};
use crate::support::{TestServer, hostile_image};

/// What `/etc/passwd` on every Linux host holds: the first line's start.
const PASSWD: &str = "root:x:0:0:";

fn server(pdk: Option<&Path>) -> TestServer {
    let image = hostile_image();
    let mut builder = TestServer::builder()
        .image(image)
        .set("images.simulation", image)
        .set("images.librelane", image);
    if let Some(pdk) = pdk {
        builder = builder.set("builds.pdk", pdk.display().to_string());
    }
    builder.start()
}

/// A folder on the host, which the server would follow a planted link into: a secret and a
/// waveform, each holding `secret`, and a real layout in `final/gds/`.
fn host_folder(secret: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("secret.txt"), secret).unwrap();
    fs::write(dir.path().join("host.vcd"), secret).unwrap();
    fs::create_dir_all(dir.path().join("final/gds")).unwrap();
    fs::write(
        dir.path().join("final/gds/host.gds"),
        crate::support::gds_bytes("chip"),
    )
    .unwrap();
    dir
}

fn secret() -> String {
    format!("host secret {}", uuid::Uuid::new_v4())
}

/// GET with a bound, so a server that opened a fifo fails the test instead of hanging it.
async fn get_bytes(url: String) -> (StatusCode, Vec<u8>) {
    let resp = http()
        .get(url)
        .timeout(Duration::from_secs(60))
        .send()
        .await
        .unwrap();
    let status = resp.status();
    (status, resp.bytes().await.unwrap().to_vec())
}

/// Every entry of a `.tar.gz`: its name, its type and its content.
fn tar_entries(bytes: &[u8]) -> Vec<(String, tar::EntryType, Vec<u8>)> {
    let mut tar = tar::Archive::new(flate2::read::GzDecoder::new(bytes));
    tar.entries()
        .unwrap()
        .map(|e| {
            let mut e = e.unwrap();
            let name = e.path().unwrap().display().to_string();
            let kind = e.header().entry_type();
            let mut content = vec![];
            std::io::Read::read_to_end(&mut e, &mut content).unwrap();
            (name, kind, content)
        })
        .collect()
}

/// Checks a tarball holds only regular files and folders and nothing that contains `needle`;
/// returns the names of its regular files.
fn assert_inert(bytes: &[u8], needle: &str, what: &str) -> Vec<String> {
    let entries = tar_entries(bytes);
    let mut files = vec![];
    for (name, kind, content) in &entries {
        assert!(
            kind.is_file() || kind.is_dir(),
            "{what} holds {name:?} of type {kind:?}: {:?}",
            names(&entries)
        );
        assert!(
            !String::from_utf8_lossy(content).contains(needle),
            "{what} holds host content in {name:?}"
        );
        if kind.is_file() {
            files.push(name.clone());
        }
    }
    files.sort();
    files
}

fn names(entries: &[(String, tar::EntryType, Vec<u8>)]) -> Vec<&str> {
    entries.iter().map(|(n, _, _)| n.as_str()).collect()
}

/// No symlink, fifo or other special file anywhere in the server's storage folder.
fn assert_only_files_and_folders(root: &Path) {
    let mut pending = vec![root.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for entry in fs::read_dir(&dir).unwrap() {
            let entry = entry.unwrap();
            let kind = entry.file_type().unwrap();
            if kind.is_dir() {
                pending.push(entry.path());
            } else {
                assert!(
                    kind.is_file(),
                    "{} in the storage folder is {kind:?}",
                    entry.path().display()
                );
            }
        }
    }
}

fn assert_logged(log: &str, needles: &[&str]) {
    for needle in needles {
        assert!(log.contains(needle), "{needle:?} not in the log:\n{log}");
    }
}

async fn precheck_log(server: &TestServer, id: &str) -> String {
    client::lines(&client::logs(server, id, "").await).join("\n")
}

#[tokio::test]
async fn a_precheck_that_plants_links_in_output_and_work_serves_no_host_file() {
    let server = server(None);
    let passwd = fs::read_to_string("/etc/passwd").unwrap();
    assert!(passwd.starts_with(PASSWD), "{passwd}");

    // /output/design.gds is a symlink to /etc/passwd; /work holds every kind of link.
    let id = client::precheck(&server, "links").await;
    let waited = client::wait(&server, &id).await;
    assert_eq!(
        waited["Error"]["Message"],
        "the precheck exited 0 but wrote no /output/design.gds: see the logs",
        "{waited}"
    );
    let (status, body) = get_bytes(server.api(&format!("/api/v1/prechecks/{id}/output"))).await;
    assert_eq!(status, 409, "{}", String::from_utf8_lossy(&body));
    assert!(!String::from_utf8_lossy(&body).contains(PASSWD));
    let log = precheck_log(&server, &id).await;
    assert_logged(
        &log,
        &[
            "skipped symlink \"/output/design.gds\" -> \"/etc/passwd\"",
            "skipped symlink \"/work/file-link\" -> \"/etc/passwd\"",
            "skipped symlink \"/work/dir-link\" -> \"/etc\"",
            "skipped symlink \"/work/sub/dir-link\" -> \"/etc\"",
            "skipped symlink \"/work/sub/file-link\" -> \"/etc/passwd\"",
            "skipped fifo \"/work/fifo\"",
        ],
    );
    // Docker packs the second name of a file as a hard link to the first, in either order.
    assert!(
        log.contains("skipped hard link \"/work/hard-link\" -> \"/work/real.txt\"")
            || log.contains("skipped hard link \"/work/real.txt\" -> \"/work/hard-link\""),
        "{log}"
    );
    let (status, tarball) = get_bytes(server.api(&format!("/api/v1/debug/prechecks/{id}"))).await;
    assert_eq!(status, 200);
    let files = assert_inert(&tarball, PASSWD, "the debug tarball");
    let prefix = format!("precheck-{id}");
    let work: Vec<&String> = files
        .iter()
        .filter(|f| f.starts_with(&format!("{prefix}/work/")))
        .collect();
    assert_eq!(work.len(), 2, "{files:?}");
    assert!(
        files.contains(&format!("{prefix}/work/sub/real.txt")),
        "{files:?}"
    );

    // /work itself a symlink to /etc: nothing of it is kept, and the real output is served.
    let id = client::precheck(&server, "worklink").await;
    let waited = client::wait(&server, &id).await;
    assert_eq!(waited, json!({"StatusCode": 0, "Error": null}));
    let (status, gds) = get_bytes(server.api(&format!("/api/v1/prechecks/{id}/output"))).await;
    assert_eq!(status, 200);
    assert_eq!(gds, crate::support::gds_bytes("worklink"));
    assert_logged(
        &precheck_log(&server, &id).await,
        &["skipped symlink \"/work\" -> \"/etc\""],
    );
    let (status, tarball) = get_bytes(server.api(&format!("/api/v1/debug/prechecks/{id}"))).await;
    assert_eq!(status, 200);
    let files = assert_inert(&tarball, PASSWD, "the debug tarball");
    assert_eq!(
        files,
        [
            format!("precheck-{id}/logs.txt"),
            format!("precheck-{id}/output/design.gds")
        ],
    );

    assert_only_files_and_folders(&server.storage.join("runs"));
    server.assert_no_containers();
}

async fn new_project(server: &TestServer, files: &[(&str, &str)]) -> String {
    let (status, body) = send(
        http()
            .post(server.api("/api/v1/projects"))
            .json(&json!({"name": "hostile"})),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    let project = body["Id"].as_str().unwrap().to_string();
    for (path, content) in files {
        let url = server.api(&format!("/api/v1/projects/{project}/files/{path}"));
        let (status, body) = send(http().put(url).body(content.to_string())).await;
        assert!(status == 201 || status == 200, "{status} {body}");
    }
    project
}

/// Runs a job to its end; returns the job's id, its `/wait` answer and its log.
async fn run_job(server: &TestServer, project: &str, job: Value) -> (String, Value, String) {
    let jobs = server.api(&format!("/api/v1/projects/{project}/jobs"));
    let (status, body) = send(http().post(jobs).json(&job)).await;
    assert_eq!(status, 201, "{body}");
    let job = body["Id"].as_str().unwrap().to_string();
    let url = server.api(&format!(
        "/api/v1/projects/{project}/jobs/{job}/wait?timeout=300"
    ));
    let (status, waited) = send(http().post(url)).await;
    assert_eq!(status, 200, "{waited}");
    let url = server.api(&format!("/api/v1/projects/{project}/jobs/{job}/logs"));
    let (status, logs) = send(http().get(url)).await;
    assert_eq!(status, 200, "{logs}");
    let log = logs["lines"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l.as_str().unwrap())
        .collect::<Vec<_>>()
        .join("\n");
    (job, waited, log)
}

#[tokio::test]
async fn a_simulation_that_makes_project_a_link_moves_no_host_waveform() {
    let server = server(None);
    let secret = secret();
    let host = host_folder(&secret);
    let target = host.path().display().to_string();
    let project = new_project(
        &server,
        &[
            ("hostile.txt", &format!("{target}\n")),
            ("tb.v", "module tb;\nendmodule\n"),
        ],
    )
    .await;
    let (job, waited, log) = run_job(
        &server,
        &project,
        json!({"kind": "simulation", "top": "tb"}),
    )
    .await;
    assert_eq!(waited, json!({"StatusCode": 0, "Error": null}), "{log}");
    assert_logged(
        &log,
        &[&format!("skipped symlink \"/project\" -> \"{target}\"")],
    );
    // The host's waveform is where it was, as it was, and not in the job.
    assert_eq!(
        fs::read_to_string(host.path().join("host.vcd")).unwrap(),
        secret
    );
    let base = server.api(&format!("/api/v1/projects/{project}/jobs/{job}/artifacts"));
    let (status, _) = get_bytes(format!("{base}/host.vcd")).await;
    assert_eq!(status, 404);
    let (status, tarball) = get_bytes(base).await;
    assert_eq!(status, 200);
    assert_eq!(
        assert_inert(&tarball, &secret, "the artefacts"),
        Vec::<String>::new()
    );
    assert_only_files_and_folders(&server.storage.join("runs"));
    server.assert_no_containers();
}

/// A PDK root as LibreLane wants it (the hostile stand-in does not look at it).
fn pdk() -> tempfile::TempDir {
    let root = tempfile::tempdir().unwrap();
    fs::create_dir_all(root.path().join("gf180mcuD/libs.tech")).unwrap();
    root
}

#[tokio::test]
async fn a_build_whose_run_folder_is_a_link_serves_no_host_file() {
    let pdk = pdk();
    let server = server(Some(pdk.path()));
    let secret = secret();
    let host = host_folder(&secret);
    let target = host.path().display().to_string();
    let project = new_project(
        &server,
        &[
            ("hostile.txt", &format!("{target}\n")),
            ("config.json", "{\"DESIGN_NAME\": \"chip\"}\n"),
        ],
    )
    .await;
    let (job, waited, log) = run_job(
        &server,
        &project,
        json!({"kind": "build", "config": "config.json"}),
    )
    .await;
    // Its run folder was not kept, so it has no final layout: it did not complete.
    assert_eq!(
        waited["Error"]["Message"], "LibreLane exited 0 but wrote no final/gds/*.gds: see the logs",
        "{waited}\n{log}"
    );
    assert_logged(
        &log,
        &[&format!(
            "skipped symlink \"/project/runs/{job}\" -> \"{target}\""
        )],
    );
    let base = server.api(&format!("/api/v1/projects/{project}/jobs/{job}/artifacts"));
    for path in ["secret.txt", "final/gds/host.gds", "host.vcd"] {
        let (status, body) = get_bytes(format!("{base}/{path}")).await;
        assert_eq!(status, 404, "{path}: {}", String::from_utf8_lossy(&body));
        assert!(!String::from_utf8_lossy(&body).contains(&secret));
    }
    let (status, tarball) = get_bytes(base).await;
    assert_eq!(status, 200);
    assert_eq!(
        assert_inert(&tarball, &secret, "the artefacts"),
        Vec::<String>::new()
    );
    // Its "final layout" cannot be prechecked: it has none.
    let (status, body) = send(
        http()
            .post(server.api("/api/v1/prechecks"))
            .json(&json!({"job_id": job, "top_cell": "chip", "die_id": "TEST0001"})),
    )
    .await;
    assert_eq!(status, 409, "{body}");
    assert!(host.path().join("secret.txt").is_file());
    assert_only_files_and_folders(&server.storage.join("runs"));
    server.assert_no_containers();
}

#[tokio::test]
async fn a_build_with_links_inside_its_run_folder_keeps_only_its_real_files() {
    let pdk = pdk();
    let server = server(Some(pdk.path()));
    let secret = secret();
    let host = host_folder(&secret);
    let target = host.path().display().to_string();
    let project = new_project(
        &server,
        &[
            ("hostile.txt", &format!("{target}\ninner\n")),
            ("config.json", "{\"DESIGN_NAME\": \"chip\"}\n"),
        ],
    )
    .await;
    let (job, waited, log) = run_job(
        &server,
        &project,
        json!({"kind": "build", "config": "config.json"}),
    )
    .await;
    // final/gds is a link to the host's folder of layouts: skipped, so there is no final layout.
    assert_eq!(
        waited["Error"]["Message"], "LibreLane exited 0 but wrote no final/gds/*.gds: see the logs",
        "{waited}\n{log}"
    );
    let run = format!("/project/runs/{job}");
    assert_logged(
        &log,
        &[
            &format!("skipped symlink \"{run}/final/gds\" -> \"{target}/final/gds\""),
            &format!("skipped symlink \"{run}/file-link\" -> \"{target}/secret.txt\""),
            &format!("skipped symlink \"{run}/dir-link\" -> \"{target}\""),
            &format!("skipped fifo \"{run}/fifo\""),
            "skipped hard link",
        ],
    );
    let base = server.api(&format!("/api/v1/projects/{project}/jobs/{job}/artifacts"));
    let (status, real) = get_bytes(format!("{base}/sub/real.txt")).await;
    assert_eq!(status, 200);
    assert_eq!(real, b"a real file below\n");
    for path in [
        "file-link",
        "dir-link/secret.txt",
        "sub/dir-link/secret.txt",
        "final/gds/host.gds",
        "fifo",
    ] {
        let (status, body) = get_bytes(format!("{base}/{path}")).await;
        assert_eq!(status, 404, "{path}: {}", String::from_utf8_lossy(&body));
    }
    let (status, tarball) = get_bytes(base).await;
    assert_eq!(status, 200);
    let files = assert_inert(&tarball, &secret, "the artefacts");
    let prefix = format!("build-{job}");
    assert_eq!(files.len(), 2, "{files:?}");
    assert!(
        files.contains(&format!("{prefix}/sub/real.txt")),
        "{files:?}"
    );
    assert_only_files_and_folders(&server.storage.join("runs"));
    server.assert_no_containers();
}
