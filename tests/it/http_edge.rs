//! The HTTP edge (issue 13, items 6 to 8): idle and slow connections are closed while streaming
//! answers are not, the connection limit, `X-Forwarded-For` over several lines, idempotency keys
//! sent again with another request, and `{"message"}` bodies for the requests hyper cannot read.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::client::{http, precheck, upload, wait};
use crate::support::{TestServer, gds_bytes};

fn addr(server: &TestServer) -> String {
    server.url.trim_start_matches("http://").to_string()
}

/// Reads until the server closes the connection; `None` if it has not within `within`.
async fn closed_within(conn: &mut TcpStream, within: Duration) -> Option<Vec<u8>> {
    let mut seen = vec![];
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, conn.read(&mut buf)).await {
            Err(_) => return None,
            Ok(Ok(0)) | Ok(Err(_)) => return Some(seen),
            Ok(Ok(n)) => seen.extend_from_slice(&buf[..n]),
        }
    }
}

/// One answer read off a raw connection: its status, head and body.
struct Answer {
    status: u16,
    head: String,
    body: Vec<u8>,
}

impl Answer {
    fn parse(bytes: &[u8]) -> Answer {
        let end = bytes
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .unwrap_or_else(|| panic!("no whole head in {:?}", String::from_utf8_lossy(bytes)));
        let head = String::from_utf8_lossy(&bytes[..end]).to_string();
        let status = head
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("no status in {head:?}"));
        Answer {
            status,
            head,
            body: bytes[end + 4..].to_vec(),
        }
    }

    fn message(&self) -> String {
        assert!(
            self.head
                .to_ascii_lowercase()
                .contains("content-type: application/json"),
            "not JSON: {}",
            self.head
        );
        let body: Value = serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "not JSON ({e}): {:?} after {}",
                String::from_utf8_lossy(&self.body),
                self.head
            )
        });
        body["message"]
            .as_str()
            .unwrap_or_else(|| panic!("no message in {body}"))
            .to_string()
    }
}

/// Sends `request` (which should ask for `Connection: close`) and reads the answer to the end,
/// reading while it writes so that an answer given before the whole request is read is seen.
async fn raw(server: &TestServer, request: Vec<u8>) -> Answer {
    let conn = TcpStream::connect(addr(server)).await.unwrap();
    let (mut read, mut write) = conn.into_split();
    let writer = tokio::spawn(async move {
        let _ = write.write_all(&request).await;
        write
    });
    let mut seen = vec![];
    let mut buf = [0u8; 65536];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        match tokio::time::timeout_at(deadline, read.read(&mut buf)).await {
            Err(_) => panic!(
                "no end of the answer after 60 s: {:?}",
                String::from_utf8_lossy(&seen)
            ),
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => seen.extend_from_slice(&buf[..n]),
        }
    }
    drop(writer.await);
    Answer::parse(&seen)
}

/// Sends one keep-alive `GET path` and reads its answer (a `Content-Length` body).
async fn get_on(conn: &mut TcpStream, path: &str) -> Answer {
    conn.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut seen = vec![];
    let mut buf = [0u8; 4096];
    loop {
        if let Some(end) = seen.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&seen[..end]).to_ascii_lowercase();
            let length: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length: "))
                .and_then(|n| n.trim().parse().ok())
                .unwrap_or_else(|| panic!("no content-length in {head}"));
            if seen.len() >= end + 4 + length {
                return Answer::parse(&seen);
            }
        }
        let n = conn.read(&mut buf).await.unwrap();
        assert!(n > 0, "closed before the answer ended");
        seen.extend_from_slice(&buf[..n]);
    }
}

/// Uploads `bytes` as a multipart body sent in `pieces`, `pause` apart; returns the status.
async fn slow_upload(server: &TestServer, bytes: Vec<u8>, pieces: usize, pause: Duration) -> u16 {
    let boundary = "XSLOWBOUNDARYX";
    let head = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"chip_slow.gds\"\r\n\r\n"
    );
    let tail = format!("\r\n--{boundary}--\r\n");
    let mut body = head.into_bytes();
    body.extend_from_slice(&bytes);
    body.extend_from_slice(tail.as_bytes());
    let mut conn = TcpStream::connect(addr(server)).await.unwrap();
    let request = format!(
        "POST /api/v1/uploads HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: multipart/form-data; boundary={boundary}\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    conn.write_all(request.as_bytes()).await.unwrap();
    for piece in body.chunks(body.len().div_ceil(pieces)) {
        conn.write_all(piece).await.unwrap();
        conn.flush().await.unwrap();
        tokio::time::sleep(pause).await;
    }
    let answer = closed_within(&mut conn, Duration::from_secs(60))
        .await
        .expect("an answer to the slow upload");
    let answer = Answer::parse(&answer);
    assert_eq!(
        answer.status,
        201,
        "{} {}",
        answer.head,
        String::from_utf8_lossy(&answer.body)
    );
    answer.status
}

#[tokio::test]
async fn idle_and_slow_header_sockets_are_closed_while_streams_and_slow_uploads_go_on() {
    let server = TestServer::builder()
        .toml("[http]\nheader_read_timeout = \"2s\"\nidle_timeout = \"2s\"")
        .start();
    // The streams are opened first and outlive both timeouts several times over.
    let events = http()
        .get(server.api("/api/v1/events?type=finished"))
        .send()
        .await
        .unwrap();
    assert_eq!(events.status(), 200);
    let run = precheck(&server, "chip_sleep10").await;
    let follow = {
        let url = server.api(&format!("/api/v1/prechecks/{run}/logs?follow=true"));
        tokio::spawn(async move {
            let resp = http().get(url).send().await.unwrap();
            assert_eq!(resp.status(), 200);
            resp.text().await.expect("the followed log ends normally")
        })
    };
    let waited = {
        let url = server.api(&format!("/api/v1/prechecks/{run}/wait?timeout=300"));
        tokio::spawn(async move {
            let resp = http().post(url).send().await.unwrap();
            let status = resp.status();
            let body: Value = resp.json().await.expect("the /wait answer");
            (status, body, Instant::now())
        })
    };
    let opened = Instant::now();

    // 150 sockets that send nothing, 150 that send half a head and then a byte a second.
    let mut sockets = vec![];
    for i in 0..300 {
        let mut conn = TcpStream::connect(addr(&server)).await.unwrap();
        if i % 2 == 1 {
            conn.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n")
                .await
                .unwrap();
        }
        sockets.push((i % 2 == 1, conn));
    }
    let watched: Vec<_> = sockets
        .into_iter()
        .map(|(slow, conn)| {
            tokio::spawn(async move {
                let (mut read, mut write) = conn.into_split();
                if slow {
                    tokio::spawn(async move {
                        loop {
                            tokio::time::sleep(Duration::from_secs(1)).await;
                            if write.write_all(b"X").await.is_err() {
                                return;
                            }
                        }
                    });
                } else {
                    std::mem::forget(write);
                }
                let mut buf = [0u8; 1024];
                let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
                loop {
                    match tokio::time::timeout_at(deadline, read.read(&mut buf)).await {
                        Err(_) => return None,
                        Ok(Ok(0)) | Ok(Err(_)) => return Some(Instant::now()),
                        Ok(Ok(_)) => {}
                    }
                }
            })
        })
        .collect();
    // Meanwhile the server answers.
    let (status, _) = crate::client::get_json(&server, "/health").await;
    assert!(status == 200 || status == 503, "{status}");
    let mut last_closed = opened;
    for (i, socket) in watched.into_iter().enumerate() {
        let closed = socket
            .await
            .unwrap()
            .unwrap_or_else(|| panic!("socket {i} is still open 60 s after it was opened"));
        last_closed = last_closed.max(closed);
    }
    eprintln!(
        "300 idle and slow sockets closed within {:?}",
        last_closed - opened
    );

    // An upload that keeps coming in for longer than both timeouts is not cut.
    slow_upload(&server, gds_bytes("chip_slow"), 6, Duration::from_secs(1)).await;

    let (status, body, answered) = waited.await.unwrap();
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["StatusCode"], 0, "{body}");
    assert!(
        answered - opened > Duration::from_secs(4),
        "the run was expected to outlast the timeouts"
    );
    let log = follow.await.unwrap();
    assert!(log.contains("Precheck successfully completed."), "{log}");
    // The event stream, open since before the run, still delivers its end.
    let mut events = events;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let mut seen = vec![];
    loop {
        let chunk = tokio::time::timeout_at(deadline, events.chunk())
            .await
            .expect("the finished event within 60 s")
            .expect("the event stream goes on")
            .expect("the event stream was cut");
        seen.extend_from_slice(&chunk);
        if String::from_utf8_lossy(&seen).contains(&run) {
            break;
        }
    }
    server.assert_no_containers();
}

/// A request whose body stops coming: an upload and a JSON body that send part of what their
/// Content-Length promised and then nothing. Both connections are closed after `idle_timeout`
/// without a byte, and the half upload leaves no file; an answer being read is not a stall.
#[tokio::test]
async fn a_request_body_that_stops_coming_is_closed_after_idle_timeout() {
    let server = TestServer::builder()
        .toml("[http]\nheader_read_timeout = \"60s\"\nidle_timeout = \"2s\"")
        .start();
    let boundary = "XSTALLX";
    let upload = format!(
        "POST /api/v1/uploads HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary={boundary}\r\nContent-Length: 1000000\r\n\r\n--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"chip_top.gds\"\r\n\r\n"
    );
    let mut upload_conn = TcpStream::connect(addr(&server)).await.unwrap();
    upload_conn.write_all(upload.as_bytes()).await.unwrap();
    upload_conn
        .write_all(&gds_bytes("chip_top")[..512])
        .await
        .unwrap();
    let mut json_conn = TcpStream::connect(addr(&server)).await.unwrap();
    json_conn
        .write_all(b"POST /api/v1/prechecks HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"upload_id\":")
        .await
        .unwrap();
    let sent = Instant::now();
    let tmp = server.storage.join("tmp");
    crate::support::wait_until(
        Duration::from_secs(10),
        "the upload is being received",
        || !crate::support::files_in(&tmp).is_empty(),
    );
    for (what, conn) in [("upload", &mut upload_conn), ("JSON body", &mut json_conn)] {
        closed_within(conn, Duration::from_secs(30))
            .await
            .unwrap_or_else(|| panic!("the stalled {what} is still open after 30 s"));
        let after = sent.elapsed();
        assert!(
            after >= Duration::from_secs(2),
            "{what} closed after {after:?}"
        );
    }
    eprintln!("stalled bodies closed after {:?}", sent.elapsed());
    crate::support::wait_until(
        Duration::from_secs(10),
        "the half upload is removed",
        || crate::support::files_in(&tmp).is_empty(),
    );
    let (status, body) = crate::client::get_json(&server, "/api/v1/uploads").await;
    assert_eq!(status, 200);
    assert_eq!(body, json!([]), "{body}");
    // A /wait whose client sends no body at all is a request in flight, not a stalled body.
    let run = precheck(&server, "chip_sleep10").await;
    let waited = wait(&server, &run).await;
    assert_eq!(waited["StatusCode"], 0, "{waited}");
    server.assert_no_containers();
}

#[tokio::test]
async fn connections_beyond_max_connections_wait_until_one_closes() {
    let server = TestServer::builder()
        .toml(
            "[http]\nmax_connections = 4\nidle_timeout = \"120s\"\nheader_read_timeout = \"120s\"",
        )
        .start();
    let mut held = vec![];
    for _ in 0..4 {
        let mut conn = TcpStream::connect(addr(&server)).await.unwrap();
        let answer = get_on(&mut conn, "/api/v1/queue").await;
        assert_eq!(answer.status, 200);
        held.push(conn);
    }
    // The fifth is not served while four are open...
    let mut fifth = TcpStream::connect(addr(&server)).await.unwrap();
    fifth
        .write_all(b"GET /api/v1/queue HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 1];
    let early = tokio::time::timeout(Duration::from_secs(3), fifth.peek(&mut buf)).await;
    assert!(
        early.is_err(),
        "the fifth connection was answered while 4 (max_connections) were open"
    );
    // ...and is once one of them closes.
    drop(held.remove(0));
    let answer = closed_within(&mut fifth, Duration::from_secs(60))
        .await
        .expect("the fifth connection answered once a slot was free");
    assert_eq!(Answer::parse(&answer).status, 200);
    // The held ones still work.
    assert_eq!(get_on(&mut held[0], "/api/v1/queue").await.status, 200);
    assert!(
        server.stderr_text().contains("http.max_connections"),
        "no warning about the limit: {}",
        server.stderr_text()
    );
}

#[tokio::test]
async fn every_forwarded_for_line_counts_and_the_last_untrusted_hop_is_the_client() {
    let server = TestServer::builder()
        .toml("[auth]\nallowed_ips = [\"192.0.2.0/24\"]\ntrusted_proxies = [\"127.0.0.1\"]")
        .start();
    let get = |lines: &[&str]| {
        let mut request = http().get(server.api("/api/v1/queue"));
        for line in lines {
            request = request.header("X-Forwarded-For", *line);
        }
        request.send()
    };
    // A client outside the allowlist sends its own line first; the proxy appends the real one.
    let resp = get(&["192.0.2.7", "198.51.100.1"]).await.unwrap();
    assert_eq!(
        resp.status(),
        403,
        "the client's own first line was believed"
    );
    let message: Value = resp.json().await.unwrap();
    assert!(
        message["message"]
            .as_str()
            .unwrap()
            .contains("198.51.100.1"),
        "{message}"
    );
    // An allowed client behind two proxies, the second on its own line.
    let resp = get(&["198.51.100.1, 192.0.2.7", "127.0.0.1"])
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let resp = get(&["198.51.100.1", "192.0.2.7"]).await.unwrap();
    assert_eq!(resp.status(), 200, "the last line was not read");
    // A line that is not ASCII, through a trusted proxy.
    let request =
        b"GET /api/v1/queue HTTP/1.1\r\nHost: x\r\nConnection: close\r\nX-Forwarded-For: 192.0.2.7\r\nX-Forwarded-For: \xff\r\n\r\n";
    let answer = raw(&server, request.to_vec()).await;
    assert_eq!(answer.status, 400);
    assert!(answer.message().contains("X-Forwarded-For"));
}

#[tokio::test]
async fn an_idempotency_key_sent_with_another_request_is_refused() {
    let server = TestServer::start("");
    let upload_id = upload(&server, "chip_top.gds", gds_bytes("chip_top")).await;
    let create = |key: &'static str, body: Value| {
        http()
            .post(server.api("/api/v1/prechecks"))
            .header("Idempotency-Key", key)
            .json(&body)
            .send()
    };
    let first = create(
        "key-1",
        json!({"upload_id": upload_id, "top_cell": "chip_top", "die_id": "TEST0001"}),
    )
    .await
    .unwrap();
    assert_eq!(first.status(), 201);
    let first: Value = first.json().await.unwrap();
    let id = first["Id"].as_str().unwrap().to_string();
    // The same request, spelled otherwise (defaults given, fields reordered, the id in capitals).
    let again = create(
        "key-1",
        json!({"die_id": "TEST0001", "slot": "1x1", "cob": false,
               "upload_id": upload_id.to_uppercase(), "top_cell": "chip_top"}),
    )
    .await
    .unwrap();
    assert_eq!(again.status(), 200);
    assert_eq!(again.json::<Value>().await.unwrap()["Id"], id.as_str());
    // Another request with the same key.
    let other = create(
        "key-1",
        json!({"upload_id": upload_id, "top_cell": "chip_top", "die_id": "TEST0002"}),
    )
    .await
    .unwrap();
    assert_eq!(other.status(), 422);
    let message: Value = other.json().await.unwrap();
    let message = message["message"].as_str().unwrap();
    assert!(
        message.contains("key-1") && message.contains("different request"),
        "{message}"
    );
    // With a new key it is a new run; the first key still answers the first request.
    let second = create(
        "key-2",
        json!({"upload_id": upload_id, "top_cell": "chip_top", "die_id": "TEST0002"}),
    )
    .await
    .unwrap();
    assert_eq!(second.status(), 201);
    let second: Value = second.json().await.unwrap();
    assert_ne!(second["Id"], id.as_str());
    let again = create(
        "key-1",
        json!({"upload_id": upload_id, "top_cell": "chip_top", "die_id": "TEST0001"}),
    )
    .await
    .unwrap();
    assert_eq!(again.status(), 200);
    wait(&server, &id).await;
    wait(&server, second["Id"].as_str().unwrap()).await;
    server.assert_no_containers();
}

#[tokio::test]
async fn requests_the_server_cannot_read_get_a_json_message() {
    let server = TestServer::start("");
    let close = "Host: x\r\nConnection: close\r\n";
    // Headers beyond hyper's buffer.
    let big = format!(
        "GET /api/v1/queue HTTP/1.1\r\n{close}X-Pad: {}\r\n\r\n",
        "a".repeat(500_000)
    );
    let answer = raw(&server, big.into_bytes()).await;
    assert_eq!(answer.status, 431, "{}", answer.head);
    assert!(answer.message().contains("headers are too large"));
    // Too many header lines.
    let many: String = (0..150).map(|i| format!("X-Header-{i}: {i}\r\n")).collect();
    let answer = raw(
        &server,
        format!("GET /api/v1/queue HTTP/1.1\r\n{close}{many}\r\n").into_bytes(),
    )
    .await;
    assert_eq!(answer.status, 431, "{}", answer.head);
    assert!(answer.message().contains("header lines"));
    // Raw bytes that are not ASCII in the path.
    let mut request = b"GET /api/v1/prechecks/\xff\xfe HTTP/1.1\r\n".to_vec();
    request.extend_from_slice(close.as_bytes());
    request.extend_from_slice(b"\r\n");
    let answer = raw(&server, request).await;
    assert_eq!(answer.status, 400, "{}", answer.head);
    assert!(answer.message().contains("percent-encode"));
    // Percent-encoded bytes that are not UTF-8.
    for path in [
        "/api/v1/prechecks/%FF",
        "/api/v1/uploads/%FF%FE",
        "/api/v1/projects/%C3%28/jobs",
    ] {
        let answer = raw(
            &server,
            format!("GET {path} HTTP/1.1\r\n{close}\r\n").into_bytes(),
        )
        .await;
        assert_eq!(answer.status, 400, "{path}: {}", answer.head);
        assert!(answer.message().contains("UTF-8"), "{path}");
    }
    // The server is none the worse.
    let mut conn = TcpStream::connect(addr(&server)).await.unwrap();
    assert_eq!(get_on(&mut conn, "/api/v1/queue").await.status, 200);
}
