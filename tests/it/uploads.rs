//! Uploads: streamed to disk with their sha256, nothing left behind by a client that goes away,
//! expired ones swept.

use std::time::{Duration, Instant};

use crate::client::{self, upload};
use crate::runs::{RSS_SLACK_KIB, idle_rss, sample_rss};
use crate::support::{TestServer, files_in, gds_bytes, partial_upload, wait_until, write_big_gds};

#[tokio::test]
async fn a_1_gib_upload_is_hashed_right_in_constant_memory() {
    let server = TestServer::start("");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("big.gds");
    let size = write_big_gds(&path, "chip_top", 1 << 30);
    let expected = std::process::Command::new("sha256sum")
        .arg(&path)
        .output()
        .unwrap();
    let expected = String::from_utf8_lossy(&expected.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_string();

    let idle = idle_rss(&server).await;
    let peak = sample_rss(server.pid());
    let file = tokio::fs::File::open(&path).await.unwrap();
    let stream = tokio_util::io::ReaderStream::new(file);
    let part =
        reqwest::multipart::Part::stream_with_length(reqwest::Body::wrap_stream(stream), size)
            .file_name("big.gds");
    let form = reqwest::multipart::Form::new().part("file", part);
    let started = Instant::now();
    let resp = client::http()
        .post(server.api("/api/v1/uploads"))
        .multipart(form)
        .send()
        .await
        .unwrap();
    let elapsed = started.elapsed();
    let status = resp.status();
    let body: serde_json::Value = resp.json().await.unwrap();
    let peak = peak();
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["Size"], size);
    assert_eq!(body["Checksums"]["sha256"], expected.as_str());
    let mbps = size as f64 / 1e6 / elapsed.as_secs_f64();
    // The same bytes by `cat FILE > DEST && sync` onto the storage folder's disk, for the
    // benchmark's ratio (scripts/bench.sh prints this line; nothing here is timed).
    let dest = server.storage.join("tmp").join("cat.gds");
    let started = Instant::now();
    let copied = std::process::Command::new("sh")
        .args(["-c", "cat \"$1\" > \"$2\" && sync", "sh"])
        .arg(&path)
        .arg(&dest)
        .status()
        .unwrap();
    let cat_mbps = size as f64 / 1e6 / started.elapsed().as_secs_f64();
    assert!(copied.success());
    std::fs::remove_file(&dest).unwrap();
    eprintln!(
        "1 GiB upload: idle RSS {idle} KiB, peak {peak} KiB, {mbps:.0} MB/s; cat > DEST && sync {cat_mbps:.0} MB/s: {:.2}x",
        mbps / cat_mbps
    );
    assert!(
        peak <= idle + RSS_SLACK_KIB,
        "RSS grew from {idle} KiB to {peak} KiB during the upload"
    );
    let id = body["Id"].as_str().unwrap();
    assert_eq!(
        std::fs::metadata(server.storage.join("uploads").join(id))
            .unwrap()
            .len(),
        size
    );
}

#[tokio::test]
async fn a_client_that_disconnects_mid_upload_leaves_nothing() {
    let server = TestServer::start("");
    let conn = partial_upload(&server).await;
    let tmp = server.storage.join("tmp");
    wait_until(
        Duration::from_secs(10),
        "the partial upload is being written",
        || !files_in(&tmp).is_empty(),
    );
    drop(conn);
    wait_until(
        Duration::from_secs(10),
        "the partial upload is removed",
        || files_in(&tmp).is_empty(),
    );
    assert!(files_in(&server.storage.join("uploads")).is_empty());
    let list: serde_json::Value = client::get_json(&server, "/api/v1/uploads").await.1;
    assert_eq!(list, serde_json::json!([]));
}

#[tokio::test]
async fn uploads_list_inspect_delete_and_keep_the_client_name_as_text() {
    let server = TestServer::start("");
    let id = upload(&server, "../../etc/chip top.gds", gds_bytes("chip_top")).await;
    let url = server.api(&format!("/api/v1/uploads/{id}"));
    let body: serde_json::Value = client::http()
        .get(&url)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(body["Name"], "chip top.gds");
    assert_eq!(body["Layout"]["Format"], "gds");
    assert_eq!(body["State"]["Expired"], false);
    assert!(body["State"]["ExpiresAt"].is_string());
    assert_eq!(files_in(&server.storage.join("uploads")), vec![id.clone()]);

    let gz = upload(
        &server,
        "x.gds.gz",
        precheck_server::layout::write::Die::new("chip_top").gds_gz(),
    )
    .await;
    let oas = upload(
        &server,
        "x.oas",
        precheck_server::layout::write::Die::new("chip_top").oasis(),
    )
    .await;
    let list = client::get_json(&server, "/api/v1/uploads").await.1;
    let list = list.as_array().unwrap();
    let formats: Vec<&str> = list
        .iter()
        .map(|u| u["Layout"]["Format"].as_str().unwrap())
        .collect();
    assert_eq!(formats, vec!["oasis", "gds.gz", "gds"], "newest first");
    assert_eq!(list[0]["Id"], oas.as_str());
    assert_eq!(list[1]["Id"], gz.as_str());

    let resp = client::http().delete(&url).send().await.unwrap();
    assert_eq!(resp.status(), 204);
    assert_eq!(client::http().get(&url).send().await.unwrap().status(), 404);
    assert!(!server.storage.join("uploads").join(&id).exists());
}

#[tokio::test]
async fn expired_uploads_are_swept_unless_a_run_uses_them() {
    let mut server = TestServer::start("");
    let idle = upload(&server, "idle.gds", gds_bytes("chip_top")).await;
    let used = upload(&server, "used.gds", gds_bytes("chip_top")).await;
    let run = client::create(&server, &used, "chip_top").await;
    assert_eq!(
        client::wait(&server, run["Id"].as_str().unwrap()).await["StatusCode"],
        0
    );
    // Move every upload's expiry into the past, then let the sweeper run (it runs at start).
    let db = rusqlite::Connection::open(server.storage.join("precheck.sqlite")).unwrap();
    db.execute(
        "UPDATE uploads SET expires_at = 0 WHERE expires_at IS NOT NULL",
        [],
    )
    .unwrap();
    drop(db);
    server.restart();
    let uploads = server.storage.join("uploads");
    wait_until(
        Duration::from_secs(10),
        "the expired upload's file is removed",
        || !uploads.join(&idle).exists(),
    );
    assert!(
        uploads.join(&used).exists(),
        "an upload a run used was swept"
    );
    let body: serde_json::Value = client::get_json(&server, &format!("/api/v1/uploads/{idle}"))
        .await
        .1;
    assert_eq!(body["State"]["Expired"], true);
    let resp = client::http()
        .post(server.api("/api/v1/prechecks"))
        .json(&serde_json::json!({"upload_id": idle, "top_cell": "chip_top"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 410);
}
