//! Inputs that cost without limit: decompression bombs (a `.gds.gz` and an OASIS file of
//! CBLOCKs that inflate to 64 GiB), a client that goes away in the middle of one, and tarballs of
//! more files than a project may hold. Every bomb is made here, streamed from a few buffers
//! (`layout::write::Repeated`), never held whole.

use std::io::Read;
use std::time::{Duration, Instant};

use bytes::Bytes;
use precheck_server::layout::write::{Filling, Repeated};
use reqwest::multipart::{Form, Part};
use serde_json::{Value, json};

use crate::client::{http, refused, send};
use crate::support::{TestServer, files_in, wait_until};

/// Bombs and real layouts are answered well within this, even on a loaded machine.
const GENEROUS: Duration = Duration::from_secs(60);

/// POSTs `layout` as the upload `name`, streamed; returns the status, the body and how long the
/// answer took (the test fails if it takes longer than [`GENEROUS`]).
async fn post_streamed(
    server: &TestServer,
    name: &str,
    layout: &Repeated,
) -> (reqwest::StatusCode, Value, Duration) {
    let chunks = layout.chunks().map(Ok::<Bytes, std::io::Error>);
    let body = reqwest::Body::wrap_stream(futures_util::stream::iter(chunks));
    let form = Form::new().part("file", Part::stream(body).file_name(name.to_string()));
    let started = Instant::now();
    let request = send(http().post(server.api("/api/v1/uploads")).multipart(form));
    let (status, body) = tokio::time::timeout(GENEROUS, request)
        .await
        .unwrap_or_else(|_| panic!("{name}: no answer within {GENEROUS:?}"));
    (status, body, started.elapsed())
}

/// Nothing of a refused upload is left: no partial file, no upload.
fn assert_nothing_stored(server: &TestServer) {
    wait_until(Duration::from_secs(10), "tmp/ is empty", || {
        files_in(&server.storage.join("tmp")).is_empty()
    });
    assert!(files_in(&server.storage.join("uploads")).is_empty());
}

/// 64 GiB of zeros in 1 MiB bodies (about 1 KiB each compressed: 64 MB on the wire).
fn bombs() -> [(&'static str, Repeated); 2] {
    [
        (
            "bomb.gds.gz",
            Repeated::gds_gz(Filling::Zeros, 1 << 20, 65536).unwrap(),
        ),
        (
            "bomb.oas",
            Repeated::oasis(Filling::Zeros, 1 << 20, 65536).unwrap(),
        ),
    ]
}

#[tokio::test]
async fn bombs_are_refused_by_the_inflation_ratio_with_the_default_limits() {
    let server = TestServer::start("");
    for (name, bomb) in bombs() {
        assert!(bomb.inflated() >= 64 << 30);
        let (status, body, took) = post_streamed(&server, name, &bomb).await;
        eprintln!(
            "{name}: {} MB inflating to {} GiB refused in {took:?}",
            bomb.size() / 1_000_000,
            bomb.inflated() >> 30
        );
        refused((status, body.clone()), 400, "(server.max_inflation_ratio)");
        let message = body["message"].as_str().unwrap();
        assert!(
            message.starts_with(&format!("{name:?}: ")) && message.contains("200 times"),
            "{message}"
        );
    }
    assert_nothing_stored(&server);
    let (_, list) = send(http().get(server.api("/api/v1/uploads"))).await;
    assert_eq!(list, json!([]));
}

#[tokio::test]
async fn the_absolute_bound_refuses_real_geometry_that_the_ratio_lets_through() {
    let server = TestServer::builder()
        .set("server.max_inflated_size", "16MiB")
        .start();
    for (name, format) in [("boxes.gds.gz", "gds.gz"), ("boxes.oas", "oasis")] {
        let make = |repeats| match format {
            "gds.gz" => Repeated::gds_gz(Filling::Boxes, 1 << 20, repeats).unwrap(),
            _ => Repeated::oasis(Filling::Boxes, 1 << 20, repeats).unwrap(),
        };
        // 32 MiB of boxes, compressed about 5 times: well within the ratio, past 16 MiB.
        let big = make(32);
        assert!(big.inflated() > 16 << 20 && big.inflated() < 20 * big.size());
        let (status, body, _) = post_streamed(&server, name, &big).await;
        refused((status, body), 400, "(server.max_inflated_size)");
        // 8 MiB of the same passes.
        let (status, body, _) = post_streamed(&server, name, &make(8)).await;
        assert_eq!(status, 201, "{name}: {body}");
        assert_eq!(body["Layout"]["TopCells"], json!(["chip_top"]), "{body}");
    }
    wait_until(Duration::from_secs(10), "tmp/ is empty", || {
        files_in(&server.storage.join("tmp")).is_empty()
    });
    assert_eq!(files_in(&server.storage.join("uploads")).len(), 2);
}

/// CPU seconds (user and system) the process has used, from /proc.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // The fields after the command's closing parenthesis; utime and stime are the 12th and 13th.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .unwrap()
        .1
        .split_whitespace()
        .collect();
    let ticks: f64 = fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap();
    // USER_HZ is 100 on Linux.
    ticks / 100.0
}

#[tokio::test]
async fn a_client_that_goes_away_mid_bomb_stops_its_inspection() {
    use tokio::io::AsyncWriteExt;
    // Bounds too high to stop this bomb: only the client's going away can.
    let server = TestServer::builder()
        .set("server.max_inflated_size", "1TiB")
        .set("server.max_inflation_ratio", 1_000_000_000)
        .start();
    // Tiny boxes: the most records per byte, so that what is queued takes long to read.
    let bomb = Repeated::gds_gz(Filling::Dots, 1 << 20, 65536).unwrap();
    let addr = server.url.trim_start_matches("http://").to_string();
    let mut conn = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let boundary = "XBOUNDARYX";
    let head = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"bomb.gds.gz\"\r\n\r\n"
    );
    let request = format!(
        "POST /api/v1/uploads HTTP/1.1\r\nHost: {addr}\r\nContent-Type: multipart/form-data; boundary={boundary}\r\nContent-Length: {}\r\n\r\n{head}",
        bomb.size() + 1024
    );
    conn.write_all(request.as_bytes()).await.unwrap();
    // Send for a second, as fast as the server takes it: more than it can inflate in minutes
    // is queued in the server (its channels) and in the kernel.
    let sending = Instant::now();
    let mut sent = 0u64;
    for chunk in bomb.chunks() {
        if let Ok(result) =
            tokio::time::timeout(Duration::from_millis(100), conn.write_all(&chunk)).await
        {
            result.unwrap();
        }
        sent += chunk.len() as u64;
        if sending.elapsed() > Duration::from_secs(1) {
            break;
        }
    }
    let tmp = server.storage.join("tmp");
    assert!(!files_in(&tmp).is_empty(), "the upload is being written");
    // Reset, not closed: what the server has not read yet is gone, and its next read fails.
    conn.set_zero_linger().unwrap();
    drop(conn);
    let reset = Instant::now();
    eprintln!("sent {sent} bytes in {:?}", sending.elapsed());
    // The server notices the reset within its check of the socket (every 200 ms), though the
    // reader is far behind and the kernel still holds unread bytes; then the partial file goes,
    // and the reader must not go on with the chunks it was handed already.
    wait_until(GENEROUS, "the partial upload is removed", || {
        files_in(&tmp).is_empty()
    });
    eprintln!(
        "partial upload removed {:?} after the reset",
        reset.elapsed()
    );
    let before = cpu_seconds(server.pid());
    tokio::time::sleep(Duration::from_secs(3)).await;
    let spent = cpu_seconds(server.pid()) - before;
    eprintln!("server CPU in the 3 s after: {spent:.2} s");
    assert!(
        spent < 0.5,
        "the server went on for {spent:.2} CPU seconds in the 3 s after the upload was dropped"
    );
    let started = Instant::now();
    let (status, _) = send(http().get(server.api("/health"))).await;
    assert_eq!(status, 200);
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_nothing_stored(&server);
}

async fn new_project(server: &TestServer) -> String {
    let (status, body) = send(
        http()
            .post(server.api("/api/v1/projects"))
            .json(&json!({"name": "many"})),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    body["Id"].as_str().unwrap().to_string()
}

/// A `.tar.gz` of the files at `paths`, each holding `content`.
fn tar_gz(paths: impl IntoIterator<Item = String>, content: &[u8]) -> Vec<u8> {
    let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    let mut tar = tar::Builder::new(gz);
    for path in paths {
        let mut header = tar::Header::new_gnu();
        header.set_size(content.len() as u64);
        header.set_mode(0o644);
        header.set_entry_type(tar::EntryType::Regular);
        tar.append_data(&mut header, &path, content).unwrap();
    }
    tar.into_inner().unwrap().finish().unwrap()
}

async fn project_paths(server: &TestServer, id: &str) -> Vec<String> {
    let (status, list) =
        send(http().get(server.api(&format!("/api/v1/projects/{id}/files")))).await;
    assert_eq!(status, 200, "{list}");
    list.as_array()
        .unwrap()
        .iter()
        .map(|f| f["Path"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test]
async fn a_tarball_of_more_files_than_a_project_may_hold_is_refused_early() {
    let server = TestServer::start("");
    let id = new_project(&server).await;
    let url = server.api(&format!("/api/v1/projects/{id}/files"));
    // 20 000 empty files: about 100 KB compressed, twice the default projects.max_files.
    let tarball = tar_gz((0..20_000).map(|i| format!("src/f{i}.v")), b"");
    assert!(tarball.len() < 1 << 20, "{}", tarball.len());
    let started = Instant::now();
    let answer = tokio::time::timeout(GENEROUS, send(http().post(&url).body(tarball)))
        .await
        .expect("an answer in time");
    eprintln!("20 000 files refused in {:?}", started.elapsed());
    refused(answer, 413, "(projects.max_files)");
    assert!(project_paths(&server, &id).await.is_empty());
    assert!(files_in(&server.storage.join("blobs")).is_empty());
    wait_until(Duration::from_secs(10), "tmp/ is empty", || {
        files_in(&server.storage.join("tmp")).is_empty()
    });
}

#[tokio::test]
async fn a_project_near_its_file_limit_refuses_what_would_pass_it() {
    let server = TestServer::builder().set("projects.max_files", 5).start();
    let id = new_project(&server).await;
    let url = server.api(&format!("/api/v1/projects/{id}/files"));
    let four: Vec<String> = (0..4).map(|i| format!("f{i}.v")).collect();
    let (status, body) = send(http().post(&url).body(tar_gz(four.clone(), b"x"))).await;
    assert_eq!(status, 200, "{body}");

    // Two new files would make six: refused, naming what the project holds.
    let two_new = tar_gz(["a.v".to_string(), "b.v".to_string()], b"y");
    let answer = send(http().post(&url).body(two_new)).await;
    assert!(
        answer.1["message"]
            .as_str()
            .unwrap()
            .contains("it holds 4 already"),
        "{}",
        answer.1
    );
    refused(answer, 413, "(projects.max_files)");
    assert_eq!(project_paths(&server, &id).await, four);

    // Replacing the four and adding one makes five: the limit, not past it.
    let mut five = four.clone();
    five.insert(0, "a.v".into());
    let (status, body) = send(http().post(&url).body(tar_gz(five.clone(), b"z"))).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["Imported"], 5);
    assert_eq!(project_paths(&server, &id).await, five);

    // A sixth file, one by one, is refused too.
    let put = http()
        .put(server.api(&format!("/api/v1/projects/{id}/files/sixth.v")))
        .body("x");
    refused(send(put).await, 413, "(projects.max_files)");
    assert_eq!(project_paths(&server, &id).await, five);
    wait_until(Duration::from_secs(10), "tmp/ is empty", || {
        files_in(&server.storage.join("tmp")).is_empty()
    });
}

#[tokio::test]
async fn a_tarball_that_inflates_without_limit_is_refused() {
    let server = TestServer::builder()
        .toml("[projects]\nmax_file_size = \"1GiB\"\nmax_project_size = \"1GiB\"")
        .start();
    let id = new_project(&server).await;
    let url = server.api(&format!("/api/v1/projects/{id}/files"));
    // One path given 20 000 times makes one file, but costs 20 000 staged blobs: each counts.
    let same = tar_gz((0..20_000).map(|_| "f.v".to_string()), b"");
    refused(
        send(http().post(&url).body(same)).await,
        413,
        "a path given twice counts twice",
    );
    // A file of 256 MiB of zeros is within every size limit here, but its gzip stream inflates
    // past 200 times what it was sent.
    let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    let mut tar = tar::Builder::new(gz);
    let mut header = tar::Header::new_gnu();
    header.set_size(256 << 20);
    header.set_mode(0o644);
    header.set_entry_type(tar::EntryType::Regular);
    tar.append_data(&mut header, "zeros.v", std::io::repeat(0).take(256 << 20))
        .unwrap();
    let bomb = tar.into_inner().unwrap().finish().unwrap();
    assert!(bomb.len() < 1 << 20, "{}", bomb.len());
    refused(
        send(http().post(&url).body(bomb)).await,
        400,
        "(server.max_inflation_ratio)",
    );
    assert!(project_paths(&server, &id).await.is_empty());
    assert!(files_in(&server.storage.join("blobs")).is_empty());
    wait_until(Duration::from_secs(10), "tmp/ is empty", || {
        files_in(&server.storage.join("tmp")).is_empty()
    });
}
