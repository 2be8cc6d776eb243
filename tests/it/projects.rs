//! Projects and their files: create, rename, list, put, get, replace, delete; the path rules
//! and size limits; another key's project is not there.

use serde_json::{Value, json};

use crate::client::{http, refused, send};
use crate::support::{ALICE, BOB, TestServer, files_in};

async fn new_project(server: &TestServer, name: &str) -> String {
    let (status, body) = send(
        http()
            .post(server.api("/api/v1/projects"))
            .json(&json!({"name": name})),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    body["Id"].as_str().unwrap().to_string()
}

/// PUTs one byte to `target` exactly as written (no URL normalisation); returns the status and
/// the JSON body.
async fn raw_put(server: &TestServer, target: &str) -> (u16, Value) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = server.url.trim_start_matches("http://");
    let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!(
        "PUT {target} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 1\r\nConnection: close\r\n\r\nx"
    );
    conn.write_all(request.as_bytes()).await.unwrap();
    let mut answer = String::new();
    conn.read_to_string(&mut answer).await.unwrap();
    let status = answer
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in {answer:?}"));
    let body = answer.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    (
        status,
        serde_json::from_str(body).unwrap_or_else(|_| Value::String(body.into())),
    )
}

/// The paths of a file list.
fn paths(list: &Value) -> Vec<&str> {
    list.as_array()
        .unwrap()
        .iter()
        .map(|f| f["Path"].as_str().unwrap())
        .collect()
}

fn file_url(server: &TestServer, project: &str, path: &str) -> String {
    server.api(&format!("/api/v1/projects/{project}/files/{path}"))
}

const COUNTER: &str = "module counter(input clk, output reg [3:0] q);\n  always @(posedge clk) q <= q + 1;\nendmodule\n";
const TB: &str = "module tb;\n  reg clk = 0;\n  counter c(.clk(clk));\n  initial begin\n    #10 $finish;\n  end\nendmodule\n";

#[tokio::test]
async fn projects_and_files_from_create_to_delete() {
    let server = TestServer::start("");
    let (status, created) = send(
        http()
            .post(server.api("/api/v1/projects"))
            .json(&json!({"name": "counter", "description": "a 4-bit counter"})),
    )
    .await;
    assert_eq!(status, 201, "{created}");
    let id = created["Id"].as_str().unwrap().to_string();
    assert_eq!(created["Name"], "counter");
    assert_eq!(created["Description"], "a 4-bit counter");
    assert_eq!(
        (created["Files"].clone(), created["Size"].clone()),
        (json!(0), json!(0))
    );

    for (path, content) in [("src/counter.v", COUNTER), ("tb/tb.v", TB)] {
        let (status, body) = send(http().put(file_url(&server, &id, path)).body(content)).await;
        assert_eq!(status, 201, "{body}");
        assert_eq!(body["Path"], path);
        assert_eq!(body["Size"], content.len());
        let (status, got) = send(http().get(file_url(&server, &id, path))).await;
        assert_eq!(status, 200);
        assert_eq!(got, Value::String(content.into()));
    }
    let (_, list) = send(http().get(server.api(&format!("/api/v1/projects/{id}/files")))).await;
    assert_eq!(paths(&list), ["src/counter.v", "tb/tb.v"]);
    let sha = list[0]["Sha256"].as_str().unwrap().to_string();
    assert_eq!(sha.len(), 64);
    assert!(list[0]["Modified"].is_string());

    // Replacing a file answers 200 and serves the new content; the old content's blob goes.
    let (status, body) = send(
        http().put(file_url(&server, &id, "src/counter.v")).body(
            COUNTER
                .replace("4-bit", "four-bit")
                .replace("[3:0]", "[7:0]"),
        ),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_ne!(body["Sha256"], sha.as_str());
    assert!(!server.storage.join("blobs").join(&sha).exists());
    let (_, got) = send(http().get(file_url(&server, &id, "src/counter.v"))).await;
    assert!(got.as_str().unwrap().contains("[7:0]"));

    // PATCH renames; the project counts its files.
    let (status, patched) = send(
        http()
            .patch(server.api(&format!("/api/v1/projects/{id}")))
            .json(&json!({"name": "counter8"})),
    )
    .await;
    assert_eq!(status, 200, "{patched}");
    assert_eq!(patched["Name"], "counter8");
    assert_eq!(patched["Description"], "a 4-bit counter");
    assert_eq!(patched["Files"], 2);
    let (_, listed) = send(http().get(server.api("/api/v1/projects"))).await;
    assert_eq!(listed[0]["Id"], id.as_str());

    // Deleting a file, then the project: nothing of either is left.
    let (status, _) = send(http().delete(file_url(&server, &id, "tb/tb.v"))).await;
    assert_eq!(status, 204);
    let (status, body) = send(http().get(file_url(&server, &id, "tb/tb.v"))).await;
    assert_eq!(status, 404, "{body}");
    let (status, _) = send(http().delete(server.api(&format!("/api/v1/projects/{id}")))).await;
    assert_eq!(status, 204);
    let (status, _) = send(http().get(server.api(&format!("/api/v1/projects/{id}")))).await;
    assert_eq!(status, 404);
    assert!(files_in(&server.storage.join("blobs")).is_empty());
}

#[tokio::test]
async fn bad_paths_sizes_and_requests_are_refused() {
    let server = TestServer::builder()
        .set("projects.max_file_size", "1KiB")
        .set("projects.max_project_size", "2KiB")
        .start();
    let id = new_project(&server, "limits").await;
    let (status, _) = send(http().put(file_url(&server, &id, "ok.v")).body(COUNTER)).await;
    assert_eq!(status, 201);

    // Each path rule, sent as is (an HTTP client library would resolve `..` itself, as
    // `curl --path-as-is` does not); percent-encoded bytes are decoded before the check.
    for (path, needle) in [
        ("src/../../etc/passwd", "'..'"),
        ("src/%2E%2E/%2E%2E/etc/passwd", "'..'"),
        ("..", "'..'"),
        ("src//x.v", "empty"),
        ("src/./x.v", "'.'"),
        ("%2Fetc%2Fpasswd", "absolute"),
        ("a%5Cb.v", "'\\\\'"),
        ("a%00b.v", "control"),
        ("a%0Ab.v", "control"),
        (&"x".repeat(300), "255"),
    ] {
        let (status, body) = raw_put(&server, &format!("/api/v1/projects/{id}/files/{path}")).await;
        assert_eq!(status, 400, "{path}: {body}");
        let message = body["message"].as_str().unwrap();
        assert!(
            message.contains(needle),
            "{path}: {needle:?} not in {message:?}"
        );
    }

    // A file over max_file_size, declared or streamed; a project over max_project_size.
    let put =
        |path: &str, body: reqwest::Body| send(http().put(file_url(&server, &id, path)).body(body));
    refused(
        put("big.v", "x".repeat(2000).into()).await,
        413,
        "projects.max_file_size",
    );
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        (0..4).map(|_| Ok(vec![b'x'; 500])).collect();
    let streamed = reqwest::Body::wrap_stream(futures_util::stream::iter(chunks));
    refused(put("big.v", streamed).await, 413, "projects.max_file_size");
    assert_eq!(put("a.v", "y".repeat(1000).into()).await.0, 201);
    refused(
        put("b.v", "z".repeat(1000).into()).await,
        413,
        "projects.max_project_size",
    );

    // Nothing refused was kept: two files, and only their blobs.
    let (_, list) = send(http().get(server.api(&format!("/api/v1/projects/{id}/files")))).await;
    assert_eq!(list.as_array().unwrap().len(), 2, "{list}");
    assert_eq!(files_in(&server.storage.join("blobs")).len(), 2);
    assert!(files_in(&server.storage.join("tmp")).is_empty());

    // Bad project requests.
    for (request, status, needle) in [
        (
            http().post(server.api("/api/v1/projects")).json(&json!({})),
            400,
            "name",
        ),
        (
            http()
                .post(server.api("/api/v1/projects"))
                .json(&json!({"name": " "})),
            400,
            "name",
        ),
        (
            http()
                .post(server.api("/api/v1/projects"))
                .json(&json!({"name": "a", "owner": "x"})),
            400,
            "owner",
        ),
        (
            http()
                .patch(server.api(&format!("/api/v1/projects/{id}")))
                .json(&json!({})),
            400,
            "nothing to change",
        ),
        (
            http().get(server.api("/api/v1/projects/nope")),
            404,
            "no such project",
        ),
        (
            http().get(file_url(&server, &uuid::Uuid::new_v4().to_string(), "a.v")),
            404,
            "no such project",
        ),
        (
            http().get(file_url(&server, &id, "missing.v")),
            404,
            "has no file",
        ),
        (
            http().delete(file_url(&server, &id, "missing.v")),
            404,
            "has no file",
        ),
    ] {
        refused(send(request).await, status, needle);
    }
}

#[tokio::test]
async fn another_keys_project_is_not_there() {
    let server = TestServer::builder().alice_and_bob().start();
    let (status, created) = send(
        http()
            .post(server.api("/api/v1/projects"))
            .bearer_auth(ALICE)
            .json(&json!({"name": "alice's"})),
    )
    .await;
    assert_eq!(status, 201);
    assert_eq!(created["Owner"], "alice");
    let id = created["Id"].as_str().unwrap();
    let (status, _) = send(
        http()
            .put(file_url(&server, id, "a.v"))
            .bearer_auth(ALICE)
            .body(COUNTER),
    )
    .await;
    assert_eq!(status, 201);
    for request in [
        http().get(server.api(&format!("/api/v1/projects/{id}"))),
        http().get(server.api(&format!("/api/v1/projects/{id}/files"))),
        http().get(file_url(&server, id, "a.v")),
        http().put(file_url(&server, id, "b.v")).body("x"),
        http().delete(file_url(&server, id, "a.v")),
        http().delete(server.api(&format!("/api/v1/projects/{id}"))),
    ] {
        let (status, body) = send(request.bearer_auth(BOB)).await;
        assert_eq!(status, 404, "{body}");
    }
    let (_, list) = send(http().get(server.api("/api/v1/projects")).bearer_auth(BOB)).await;
    assert_eq!(list, json!([]));
    let (status, got) = send(http().get(file_url(&server, id, "a.v")).bearer_auth(ALICE)).await;
    assert_eq!((status.as_u16(), got), (200, Value::String(COUNTER.into())));
}

/// One tarball entry: a name written as is (even `../x`), and its kind and content.
enum Entry<'a> {
    File(&'a str, &'a [u8]),
    Dir(&'a str),
    Symlink(&'a str, &'a str),
}

/// A `.tar.gz` of `entries`, names written byte for byte (the tar crate refuses `..` itself).
fn tar_gz(entries: &[Entry]) -> Vec<u8> {
    let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    let mut tar = tar::Builder::new(gz);
    for entry in entries {
        let mut header = tar::Header::new_ustar();
        let (name, data): (&str, &[u8]) = match entry {
            Entry::File(name, data) => {
                header.set_entry_type(tar::EntryType::Regular);
                (name, data)
            }
            Entry::Dir(name) => {
                header.set_entry_type(tar::EntryType::Directory);
                (name, b"")
            }
            Entry::Symlink(name, target) => {
                header.set_entry_type(tar::EntryType::Symlink);
                header.set_link_name(target).unwrap();
                (name, b"")
            }
        };
        header.as_mut_bytes()[..name.len()].copy_from_slice(name.as_bytes());
        header.set_size(data.len() as u64);
        header.set_mode(0o644);
        header.set_cksum();
        tar.append(&header, data).unwrap();
    }
    tar.into_inner().unwrap().finish().unwrap()
}

#[tokio::test]
async fn a_source_tree_is_imported_from_a_tarball_all_or_nothing() {
    let server = TestServer::builder()
        .set("projects.max_file_size", "1KiB")
        .set("projects.max_project_size", "4KiB")
        .start();
    let id = new_project(&server, "imported").await;
    let url = server.api(&format!("/api/v1/projects/{id}/files"));
    let good = tar_gz(&[
        Entry::Dir("./"),
        Entry::Dir("./src/"),
        Entry::File("./src/counter.v", COUNTER.as_bytes()),
        Entry::File("tb/tb.v", TB.as_bytes()),
        Entry::File("README", b"a counter"),
    ]);
    let (status, body) = send(http().post(&url).body(good)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["Imported"], 3);
    let (_, list) = send(http().get(&url)).await;
    assert_eq!(paths(&list), ["README", "src/counter.v", "tb/tb.v"]);
    let (_, got) = send(http().get(file_url(&server, &id, "tb/tb.v"))).await;
    assert_eq!(got, Value::String(TB.into()));

    // Each bad tarball is refused whole: the project is as it was.
    for (tarball, status, needle) in [
        (
            tar_gz(&[Entry::File("ok.v", b"x"), Entry::File("../evil.v", b"x")]),
            400,
            "'..'",
        ),
        (tar_gz(&[Entry::File("/etc/evil.v", b"x")]), 400, "absolute"),
        (
            tar_gz(&[
                Entry::File("ok.v", b"x"),
                Entry::Symlink("link.v", "/etc/passwd"),
            ]),
            400,
            "symbolic link",
        ),
        (
            tar_gz(&[Entry::File("big.v", &[b'x'; 2000])]),
            413,
            "projects.max_file_size",
        ),
        (
            tar_gz(&[
                Entry::File("a.v", &[b'a'; 1000]),
                Entry::File("b.v", &[b'b'; 1000]),
                Entry::File("c.v", &[b'c'; 1000]),
                Entry::File("d.v", &[b'd'; 1000]),
            ]),
            413,
            "projects.max_project_size",
        ),
        (b"just text".to_vec(), 400, "not gzip"),
        (good_prefix_cut(), 400, "cannot be read"),
    ] {
        refused(send(http().post(&url).body(tarball)).await, status, needle);
        let (_, list) = send(http().get(&url)).await;
        assert_eq!(list.as_array().unwrap().len(), 3, "{list}");
    }
    assert_eq!(files_in(&server.storage.join("blobs")).len(), 3);
    assert!(files_in(&server.storage.join("tmp")).is_empty());
}

/// A tarball cut in the middle of its compressed stream.
fn good_prefix_cut() -> Vec<u8> {
    let bytes = tar_gz(&[Entry::File("ok.v", COUNTER.repeat(5).as_bytes())]);
    bytes[..bytes.len() / 2].to_vec()
}
