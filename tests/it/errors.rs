//! Every bad input in SPEC.md's error column: its status, and a `{"message"}` body that says what
//! to fix. Each test runs one real server and walks a table of bad requests through [`check`];
//! afterwards what the client sent before must be intact.

use std::fs;
use std::time::Duration;

use reqwest::multipart::{Form, Part};
use reqwest::{Client, RequestBuilder, Response, header};
use serde_json::{Value, json};

use crate::support::{TestServer, files_in, gds_bytes, wait_until_async, write_big_gds};

/// A request and what the server must answer: `status` and a message holding every needle.
struct Case {
    what: String,
    request: RequestBuilder,
    status: u16,
    needles: Vec<String>,
}

fn case(what: impl Into<String>, request: RequestBuilder, status: u16, needles: &[&str]) -> Case {
    Case {
        what: what.into(),
        request,
        status,
        needles: needles.iter().map(|n| n.to_string()).collect(),
    }
}

/// Asserts that `resp` has `status` and a body that is exactly `{"message": "..."}` (JSON, one
/// key) whose message contains every needle. Returns the message.
async fn check(what: &str, resp: Response, status: u16, needles: &[String]) -> String {
    let got = resp.status().as_u16();
    let content_type = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let text = resp
        .text()
        .await
        .unwrap_or_else(|e| panic!("{what}: cannot read the body: {e}"));
    assert_eq!(got, status, "{what}: expected {status}, got {got}: {text}");
    assert!(
        content_type.starts_with("application/json"),
        "{what}: Content-Type {content_type:?}, expected application/json: {text}"
    );
    let body: Value = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("{what}: the error body is not JSON ({e}): {text}"));
    let keys: Vec<&String> = body
        .as_object()
        .map(|o| o.keys().collect())
        .unwrap_or_default();
    assert_eq!(
        keys,
        ["message"],
        "{what}: the error body is not {{\"message\"}}: {text}"
    );
    let message = body["message"]
        .as_str()
        .unwrap_or_else(|| panic!("{what}: `message` is not a string: {text}"));
    assert!(!message.trim().is_empty(), "{what}: empty message: {text}");
    for needle in needles {
        assert!(
            message.contains(needle.as_str()),
            "{what}: the message does not say {needle:?}: {message:?}"
        );
    }
    message.to_string()
}

async fn check_all(cases: Vec<Case>) {
    for Case {
        what,
        request,
        status,
        needles,
    } in cases
    {
        let resp = request
            .send()
            .await
            .unwrap_or_else(|e| panic!("{what}: the request failed: {e}"));
        check(&what, resp, status, &needles).await;
    }
}

/// Asserts `status` and returns the JSON body.
async fn expect_json(what: &str, resp: Response, status: u16) -> Value {
    let got = resp.status().as_u16();
    let text = resp.text().await.expect("read the body");
    assert_eq!(got, status, "{what}: expected {status}, got {got}: {text}");
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{what}: not JSON ({e}): {text}"))
}

/// Uploads a generated layout with top cell `top`; returns the upload body.
async fn upload(client: &Client, server: &TestServer, top: &str) -> Value {
    let form = Form::new().part(
        "file",
        Part::bytes(gds_bytes(top)).file_name(format!("{top}.gds")),
    );
    let resp = client
        .post(server.api("/api/v1/uploads"))
        .multipart(form)
        .send()
        .await
        .unwrap();
    expect_json(&format!("upload {top}"), resp, 201).await
}

/// Creates a precheck of `upload_id` with `top`; returns the run body.
async fn create_run(client: &Client, server: &TestServer, upload_id: &str, top: &str) -> Value {
    let resp = client
        .post(server.api("/api/v1/prechecks"))
        .json(&json!({"upload_id": upload_id, "top_cell": top}))
        .send()
        .await
        .unwrap();
    expect_json(&format!("create a precheck of {top}"), resp, 201).await
}

/// `/wait` for run `id` until it ends; returns `{"StatusCode","Error"}`.
async fn wait_run(client: &Client, server: &TestServer, id: &str) -> Value {
    let resp = client
        .post(server.api(&format!("/api/v1/prechecks/{id}/wait?timeout=120")))
        .send()
        .await
        .unwrap();
    expect_json(&format!("wait for {id}"), resp, 200).await
}

async fn run_status(client: &Client, server: &TestServer, id: &str) -> String {
    let resp = client
        .get(server.api(&format!("/api/v1/prechecks/{id}")))
        .send()
        .await
        .unwrap();
    expect_json(&format!("inspect {id}"), resp, 200).await["State"]["Status"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

fn id_of(body: &Value) -> String {
    body["Id"]
        .as_str()
        .unwrap_or_else(|| panic!("no Id in {body}"))
        .to_string()
}

/// The names of the files in `dir`.
#[tokio::test]
async fn unknown_routes_methods_ids_and_statuses_get_a_message() {
    let server = TestServer::builder().start();
    let c = Client::new();
    let unknown = uuid::Uuid::new_v4().to_string();
    let u = unknown.as_str();
    let api = |path: &str| server.api(path);

    let mut cases = vec![
        case(
            "unknown route",
            c.get(api("/api/v1/nope")),
            404,
            &["/api/v1/nope"],
        ),
        case("unknown root", c.get(api("/")), 404, &["no route"]),
        case(
            "unknown version",
            c.get(api("/api/v2/queue")),
            404,
            &["/api/v2/queue"],
        ),
        case(
            "PUT queue",
            c.put(api("/api/v1/queue")),
            405,
            &["PUT", "/api/v1/queue"],
        ),
        case(
            "POST health",
            c.post(api("/health")),
            405,
            &["POST", "/health"],
        ),
        case(
            "DELETE uploads",
            c.delete(api("/api/v1/uploads")),
            405,
            &["DELETE"],
        ),
        case(
            "PATCH prechecks",
            c.patch(api("/api/v1/prechecks")),
            405,
            &["PATCH"],
        ),
        case(
            "GET wait",
            c.get(api(&format!("/api/v1/prechecks/{u}/wait"))),
            405,
            &["GET"],
        ),
        case(
            "POST output",
            c.post(api(&format!("/api/v1/prechecks/{u}/output"))),
            405,
            &["POST"],
        ),
        case(
            "list prechecks, unknown status",
            c.get(api("/api/v1/prechecks?status=bogus")),
            400,
            &[
                "bogus",
                "queued",
                "running",
                "completed",
                "failed",
                "cancelled",
            ],
        ),
        case(
            "list prechecks, one good and one unknown status",
            c.get(api("/api/v1/prechecks?status=queued&status=done")),
            400,
            &["done", "completed"],
        ),
        case(
            "list prechecks, unknown parameter",
            c.get(api("/api/v1/prechecks?state=queued")),
            400,
            &["state", "status"],
        ),
    ];
    // Unknown ids, and ids that are not UUIDs, name nothing: 404 naming the id.
    for id in [u, "not-a-uuid", "..%2F..%2Fetc"] {
        let shown = if id.contains('%') { "etc" } else { id };
        cases.extend([
            case(
                format!("GET upload {id}"),
                c.get(api(&format!("/api/v1/uploads/{id}"))),
                404,
                &["upload", shown],
            ),
            case(
                format!("DELETE upload {id}"),
                c.delete(api(&format!("/api/v1/uploads/{id}"))),
                404,
                &["upload", shown],
            ),
            case(
                format!("GET precheck {id}"),
                c.get(api(&format!("/api/v1/prechecks/{id}"))),
                404,
                &["precheck", shown],
            ),
            case(
                format!("DELETE precheck {id}"),
                c.delete(api(&format!("/api/v1/prechecks/{id}"))),
                404,
                &["precheck", shown],
            ),
            case(
                format!("wait precheck {id}"),
                c.post(api(&format!("/api/v1/prechecks/{id}/wait?timeout=1"))),
                404,
                &["precheck", shown],
            ),
            case(
                format!("logs precheck {id}"),
                c.get(api(&format!("/api/v1/prechecks/{id}/logs"))),
                404,
                &["precheck", shown],
            ),
            case(
                format!("output precheck {id}"),
                c.get(api(&format!("/api/v1/prechecks/{id}/output"))),
                404,
                &["precheck", shown],
            ),
            case(
                format!("debug precheck {id}"),
                c.get(api(&format!("/api/v1/debug/prechecks/{id}"))),
                404,
                &["precheck", shown],
            ),
        ]);
    }
    check_all(cases).await;

    // Several statuses at once are fine.
    let resp = c
        .get(api("/api/v1/prechecks?status=queued&status=running"))
        .send()
        .await
        .unwrap();
    let runs = expect_json("list queued and running", resp, 200).await;
    assert_eq!(runs, json!([]));
    server.assert_no_containers();
}

#[tokio::test]
async fn bad_uploads_are_refused_and_leave_no_file() {
    let server = TestServer::builder().max_upload_size("64KiB").start();
    let c = Client::new();
    let url = server.api("/api/v1/uploads");
    let dir = tempfile::tempdir().unwrap();
    let big_path = dir.path().join("big.gds");
    write_big_gds(&big_path, "chip_big", 200 * 1024);
    let big = fs::read(&big_path).unwrap();
    // Over the limit, but small enough that the declared length passes the early check: the
    // limit must hold while the file is streamed.
    let medium_path = dir.path().join("medium.gds");
    write_big_gds(&medium_path, "chip_medium", 100 * 1024);
    let medium = fs::read(&medium_path).unwrap();
    let file = |bytes: Vec<u8>, name: &str| {
        Form::new().part("file", Part::bytes(bytes).file_name(name.to_string()))
    };
    // 200 KiB in chunks and without a length: chunked transfer encoding.
    let streamed = {
        let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
            big.chunks(8192).map(|c| Ok(c.to_vec())).collect();
        let body = reqwest::Body::wrap_stream(futures_util::stream::iter(chunks));
        Form::new().part("file", Part::stream(body).file_name("streamed.gds"))
    };

    let cases = vec![
        case(
            "a JSON body",
            c.post(&url).json(&json!({"file": "chip_top.gds"})),
            400,
            &["multipart", "file"],
        ),
        case(
            "a plain text body",
            c.post(&url).body("hello"),
            400,
            &["multipart", "file"],
        ),
        case(
            "multipart without a boundary",
            c.post(&url)
                .header(header::CONTENT_TYPE, "multipart/form-data")
                .body("--x\r\n"),
            400,
            &["multipart"],
        ),
        case(
            "a broken multipart body",
            c.post(&url)
                .header(header::CONTENT_TYPE, "multipart/form-data; boundary=XYZ")
                .body("--XYZ\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.gds\"\r\n\r\n\x00\x06\x00\x02"),
            400,
            &["multipart"],
        ),
        case(
            "multipart without any field",
            c.post(&url).multipart(Form::new()),
            400,
            &["multipart"],
        ),
        case(
            "multipart with only a text field",
            c.post(&url).multipart(Form::new().text("name", "chip_top.gds")),
            400,
            &["`file`"],
        ),
        case(
            "the layout under another field name",
            c.post(&url).multipart(Form::new().part(
                "upload",
                Part::bytes(gds_bytes("chip_top")).file_name("chip_top.gds"),
            )),
            400,
            &["`file`"],
        ),
        case(
            "a text file",
            c.post(&url).multipart(file(
                b"this is not a layout, just some notes\n".to_vec(),
                "notes.txt",
            )),
            400,
            &["notes.txt", "not a layout", "GDSII"],
        ),
        case(
            "a PNG named .gds",
            c.post(&url).multipart(file(
                b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR".to_vec(),
                "chip_top.gds",
            )),
            400,
            &["not a layout"],
        ),
        case(
            "an empty file",
            c.post(&url).multipart(file(Vec::new(), "empty.gds")),
            400,
            &["empty"],
        ),
        case(
            "200 KiB with a Content-Length",
            c.post(&url).multipart(file(big.clone(), "big.gds")),
            413,
            &["64 KiB", "max_upload_size"],
        ),
        case(
            "100 KiB with a Content-Length",
            c.post(&url).multipart(file(medium, "medium.gds")),
            413,
            &["64 KiB", "max_upload_size"],
        ),
        case(
            "200 KiB streamed without a length",
            c.post(&url).multipart(streamed),
            413,
            &["64 KiB", "max_upload_size"],
        ),
    ];
    check_all(cases).await;

    // Nothing of the refused uploads is kept, partial or whole.
    let tmp = server.storage.join("tmp");
    let uploads = server.storage.join("uploads");
    wait_until_async(
        Duration::from_secs(5),
        "the refused uploads' partial files are removed",
        || async { files_in(&tmp).is_empty() },
    )
    .await;
    assert_eq!(files_in(&uploads), Vec::<String>::new(), "uploads/");
    let resp = c.get(&url).send().await.unwrap();
    assert_eq!(expect_json("list uploads", resp, 200).await, json!([]));

    // A layout just under the limit is still taken.
    let fits_path = dir.path().join("fits.gds");
    let size = write_big_gds(&fits_path, "chip_top", 60 * 1024);
    let resp = c
        .post(&url)
        .multipart(file(fs::read(&fits_path).unwrap(), "fits.gds"))
        .send()
        .await
        .unwrap();
    let body = expect_json("a 60 KiB upload", resp, 201).await;
    assert_eq!(body["Size"], json!(size));
    assert_eq!(files_in(&uploads), [id_of(&body)]);
    assert!(files_in(&tmp).is_empty(), "tmp/ holds {:?}", files_in(&tmp));
    server.assert_no_containers();
}

#[tokio::test]
async fn bad_precheck_requests_are_refused_and_damage_nothing() {
    let server = TestServer::builder().start();
    let c = Client::new();
    let url = server.api("/api/v1/prechecks");
    let good = upload(&c, &server, "chip_top").await;
    let good_id = id_of(&good);
    let g = good_id.as_str();
    let unknown = uuid::Uuid::new_v4().to_string();

    let raw_json = |body: &str| {
        c.post(&url)
            .header(header::CONTENT_TYPE, "application/json")
            .body(body.to_string())
    };
    let body = |value: Value| c.post(&url).json(&value);
    let with = |key: &str, value: Value| {
        let mut b = json!({"upload_id": g, "top_cell": "chip_top"});
        b[key] = value;
        c.post(&url).json(&b)
    };

    let mut cases = vec![
        case(
            "truncated JSON",
            raw_json("{\"upload_id\": "),
            400,
            &["JSON"],
        ),
        case("not JSON", raw_json("upload_id=1"), 400, &["JSON"]),
        case("an empty body", raw_json(""), 400, &["JSON"]),
        case("a JSON array", raw_json("[]"), 400, &["JSON"]),
        case(
            "no Content-Type",
            c.post(&url)
                .body(json!({"upload_id": g, "top_cell": "chip_top"}).to_string()),
            400,
            &["Content-Type", "application/json"],
        ),
        case(
            "a form body",
            c.post(&url)
                .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
                .body(format!("upload_id={g}&top_cell=chip_top")),
            400,
            &["Content-Type", "application/json"],
        ),
        case("an empty object", body(json!({})), 400, &["upload_id"]),
        case(
            "no upload_id",
            body(json!({"top_cell": "chip_top"})),
            400,
            &["upload_id"],
        ),
        case(
            "upload_id a number",
            with("upload_id", json!(7)),
            400,
            &["upload_id"],
        ),
        case(
            "upload_id null",
            with("upload_id", json!(null)),
            400,
            &["upload_id"],
        ),
        case(
            "upload_id not a UUID",
            with("upload_id", json!("abc")),
            400,
            &["upload_id", "abc"],
        ),
        case(
            "an unknown field",
            with("topcell", json!("chip_top")),
            400,
            &["topcell"],
        ),
        case(
            "a Docker-style field",
            with("Image", json!("evil:latest")),
            400,
            &["Image"],
        ),
        case(
            "die_id too short",
            with("die_id", json!("ABC")),
            400,
            &["die_id", "ABC", "8"],
        ),
        case(
            "die_id a number",
            with("die_id", json!(12345678)),
            400,
            &["die_id"],
        ),
        case(
            "slot unknown",
            with("slot", json!("2x2")),
            400,
            &["slot", "2x2", "1x1", "0p5x1", "1x0p5", "0p5x0p5"],
        ),
        case("slot a number", with("slot", json!(1)), 400, &["slot"]),
        case("cob a string", with("cob", json!("yes")), 400, &["cob"]),
        case("cob a number", with("cob", json!(1)), 400, &["cob"]),
        case(
            "top_cell not a cell of the layout",
            with("top_cell", json!("chip_other")),
            400,
            &[
                "top_cell",
                "chip_other",
                "not a cell",
                "\"chip_top\"",
                "force",
            ],
        ),
        case(
            "top_cell a number",
            with("top_cell", json!(5)),
            400,
            &["top_cell"],
        ),
        case(
            "unknown upload",
            with("upload_id", json!(unknown)),
            404,
            &["upload", unknown.as_str()],
        ),
    ];
    // One case per rule of a field's own: the unit tables of `model::prechecks` (`DieId`, `Slot`,
    // `TopCell`, `PrecheckSource`) hold every value each refuses, without a server; these show
    // that a refusal is a 400 with its message, and (below) that it leaves nothing behind.
    cases.push(case(
        "top_cell with a newline",
        with("top_cell", json!("chip_top\n--cob")),
        400,
        &["top_cell", "whitespace or control"],
    ));
    check_all(cases).await;

    // An expired upload: 410, saying so and what to do. The server keeps uploads until their
    // `expires_at`; moving it into the past is what waiting `upload_expiry_minutes` would do.
    let old = upload(&c, &server, "chip_old").await;
    let old_id = id_of(&old);
    {
        let db = rusqlite::Connection::open(server.storage.join("precheck.sqlite")).unwrap();
        db.busy_timeout(Duration::from_secs(10)).unwrap();
        let changed = db
            .execute("UPDATE uploads SET expires_at = 0 WHERE id = ?1", [&old_id])
            .unwrap();
        assert_eq!(changed, 1, "the upload {old_id} is in the database");
    }
    let resp = c
        .post(&url)
        .json(&json!({"upload_id": old_id, "top_cell": "chip_old"}))
        .send()
        .await
        .unwrap();
    let message = check(
        "an expired upload",
        resp,
        410,
        &[old_id.clone(), "expired".into()],
    )
    .await;
    assert!(
        message.contains("upload the layout again"),
        "the 410 should say to upload again: {message:?}"
    );

    // Nothing the client sent before is damaged: no run was made, the upload is as it was and
    // a precheck of it still passes.
    let resp = c.get(&url).send().await.unwrap();
    assert_eq!(expect_json("list prechecks", resp, 200).await, json!([]));
    let resp = c
        .get(server.api(&format!("/api/v1/uploads/{g}")))
        .send()
        .await
        .unwrap();
    let again = expect_json("inspect the good upload", resp, 200).await;
    assert_eq!(again["Checksums"]["sha256"], good["Checksums"]["sha256"]);
    assert_eq!(again["Size"], good["Size"]);
    assert_eq!(again["State"]["Expired"], json!(false));

    let run = create_run(&c, &server, g, "chip_top").await;
    let run_id = id_of(&run);
    let waited = wait_run(&c, &server, &run_id).await;
    assert_eq!(
        waited,
        json!({"StatusCode": 0, "Error": null}),
        "the precheck of the untouched upload passes"
    );
    // A completed run cannot be cancelled.
    let resp = c
        .delete(server.api(&format!("/api/v1/prechecks/{run_id}")))
        .send()
        .await
        .unwrap();
    check(
        "cancel a completed run",
        resp,
        409,
        &["completed".into(), "finished".into()],
    )
    .await;
    server.assert_no_containers();
}

#[tokio::test]
async fn runs_in_the_wrong_state_and_bad_parameters_are_refused() {
    let server = TestServer::builder().max_concurrent(1).start();
    let c = Client::new();
    let sleeper_upload = id_of(&upload(&c, &server, "chip_sleep30").await);
    let queued_upload = id_of(&upload(&c, &server, "chip_top").await);
    // Long enough to stay running through every check below; it is cancelled at the end.
    let running = id_of(&create_run(&c, &server, &sleeper_upload, "chip_sleep30").await);
    wait_until_async(Duration::from_secs(60), "the sleeper runs", || async {
        run_status(&c, &server, &running).await == "running"
    })
    .await;
    let queued = id_of(&create_run(&c, &server, &queued_upload, "chip_top").await);
    assert_eq!(run_status(&c, &server, &queued).await, "queued");

    let (r, q) = (running.as_str(), queued.as_str());
    let api = |path: String| server.api(&path);
    let cases = vec![
        case(
            "delete an upload a queued run uses",
            c.delete(api(format!("/api/v1/uploads/{queued_upload}"))),
            409,
            &[q, "cancel it or wait"],
        ),
        case(
            "delete an upload a running run uses",
            c.delete(api(format!("/api/v1/uploads/{sleeper_upload}"))),
            409,
            &[r],
        ),
        case(
            "output of a queued run",
            c.get(api(format!("/api/v1/prechecks/{q}/output"))),
            409,
            &["queued", "completed"],
        ),
        case(
            "debug of a queued run",
            c.get(api(format!("/api/v1/debug/prechecks/{q}"))),
            409,
            &["queued"],
        ),
        case(
            "output of a running run",
            c.get(api(format!("/api/v1/prechecks/{r}/output"))),
            409,
            &["running", "completed"],
        ),
        case(
            "wait 0 s on a running run",
            c.post(api(format!("/api/v1/prechecks/{r}/wait?timeout=0"))),
            408,
            &["running", "/wait"],
        ),
        case(
            "wait 0 s on a queued run",
            c.post(api(format!("/api/v1/prechecks/{q}/wait?timeout=0"))),
            408,
            &["queued"],
        ),
        case(
            "wait timeout not a number",
            c.post(api(format!("/api/v1/prechecks/{r}/wait?timeout=abc"))),
            400,
            &["timeout", "abc"],
        ),
        case(
            "wait timeout negative",
            c.post(api(format!("/api/v1/prechecks/{r}/wait?timeout=-1"))),
            400,
            &["timeout"],
        ),
        case(
            "wait timeout empty",
            c.post(api(format!("/api/v1/prechecks/{r}/wait?timeout="))),
            400,
            &["timeout"],
        ),
        case(
            "wait with an unknown parameter",
            c.post(api(format!("/api/v1/prechecks/{r}/wait?timout=5"))),
            400,
            &["timout", "timeout"],
        ),
        case(
            "logs tail not a number",
            c.get(api(format!("/api/v1/prechecks/{r}/logs?tail=abc"))),
            400,
            &["tail", "abc"],
        ),
        case(
            "logs tail negative",
            c.get(api(format!("/api/v1/prechecks/{r}/logs?tail=-5"))),
            400,
            &["tail"],
        ),
        case(
            "logs since not a time",
            c.get(api(format!("/api/v1/prechecks/{r}/logs?since=x"))),
            400,
            &["since"],
        ),
        case(
            "logs follow not a bool",
            c.get(api(format!("/api/v1/prechecks/{r}/logs?follow=maybe"))),
            400,
            &["follow", "maybe"],
        ),
        case(
            "logs timestamps not a bool",
            c.get(api(format!("/api/v1/prechecks/{r}/logs?timestamps=2"))),
            400,
            &["timestamps"],
        ),
        case(
            "logs with an unknown parameter",
            c.get(api(format!("/api/v1/prechecks/{r}/logs?lines=5"))),
            400,
            &["lines", "tail"],
        ),
    ];
    check_all(cases).await;
    // The refused requests changed nothing.
    assert_eq!(run_status(&c, &server, &running).await, "running");
    assert_eq!(run_status(&c, &server, &queued).await, "queued");

    // Cancel both (the queued one first, so it never starts) and wait for them.
    for id in [q, r] {
        let resp = c
            .delete(server.api(&format!("/api/v1/prechecks/{id}")))
            .send()
            .await
            .unwrap();
        let run = expect_json(&format!("cancel {id}"), resp, 200).await;
        assert_eq!(run["State"]["Status"], "cancelled", "{run}");
        let waited = wait_run(&c, &server, id).await;
        assert_eq!(waited["StatusCode"], 130, "{waited}");
    }

    // A failed run.
    let fail_upload = id_of(&upload(&c, &server, "chip_fail").await);
    let failed = id_of(&create_run(&c, &server, &fail_upload, "chip_fail").await);
    let waited = wait_run(&c, &server, &failed).await;
    assert_eq!(waited["StatusCode"], 1, "{waited}");
    let f = failed.as_str();

    let cases = vec![
        case(
            "cancel a cancelled run",
            c.delete(api(format!("/api/v1/prechecks/{q}"))),
            409,
            &["cancelled", "nothing to cancel"],
        ),
        case(
            "cancel a failed run",
            c.delete(api(format!("/api/v1/prechecks/{f}"))),
            409,
            &["failed"],
        ),
        case(
            "output of a failed run",
            c.get(api(format!("/api/v1/prechecks/{f}/output"))),
            409,
            &["failed", "completed"],
        ),
        case(
            "output of a cancelled run",
            c.get(api(format!("/api/v1/prechecks/{r}/output"))),
            409,
            &["cancelled"],
        ),
    ];
    check_all(cases).await;

    // Once no unfinished run uses it, the upload can be deleted.
    let resp = c
        .delete(server.api(&format!("/api/v1/uploads/{queued_upload}")))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 204);
    server.assert_no_containers();
}

/// A fault of the server's own (here a run's folder that has become a file, so the debug
/// tarball cannot be made) answers 500 with nothing but the request's id: no path of the
/// storage folder, no OS or SQLite message. The detail is in the server's log, under that id.
#[tokio::test]
async fn an_internal_error_tells_the_client_only_its_request_id() {
    let server = TestServer::start("");
    let client = Client::new();
    let upload = upload(&client, &server, "chip_top").await;
    let id = id_of(&create_run(&client, &server, &id_of(&upload), "chip_top").await);
    assert_eq!(wait_run(&client, &server, &id).await["StatusCode"], 0);
    // The run's end is recorded and its container removed: nothing writes its folder any more.
    wait_until_async(
        Duration::from_secs(60),
        "the run's container is gone",
        || async { server.containers().is_empty() },
    )
    .await;
    let dir = server.storage.join("runs").join(&id);
    fs::remove_dir_all(&dir).unwrap();
    fs::write(&dir, "not a folder").unwrap();

    let request_id = "it-internal-error-1";
    let resp = client
        .get(server.api(&format!("/api/v1/debug/prechecks/{id}")))
        .header("X-Request-Id", request_id)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers()["x-request-id"], request_id);
    let message = check("the debug tarball of a broken run", resp, 500, &[]).await;
    assert_eq!(message, format!("internal error (request {request_id})"));

    // The log line of the error has the request's id (its span's and the message's) and the
    // detail the client did not get: the path, and what the OS said.
    let log = server.stderr_text();
    let line = log
        .lines()
        .find(|l| l.contains("ERROR") && l.contains(&format!("request_id={request_id}")))
        .unwrap_or_else(|| panic!("no error logged under {request_id}:\n{log}"));
    for detail in [dir.display().to_string(), "os error".to_string()] {
        assert!(line.contains(&detail), "{detail:?} not in {line:?}");
    }
}
