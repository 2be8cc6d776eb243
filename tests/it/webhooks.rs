//! Webhooks: a run's end POSTed to a local receiver, signed, retried after a 500, delivered
//! after a restart; bad `notify_url`s refused; a retried create with an `Idempotency-Key`
//! returns the run it made.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::{HeaderMap, StatusCode};
use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use sha2::Sha256;

use crate::client::{http, upload, wait};
use crate::support::{TestServer, gds_bytes, wait_until};

const SECRET: &str = "webhook-secret-0123456789";

/// What a receiver got: each request's headers and body.
type Got = Arc<Mutex<Vec<(HeaderMap, Vec<u8>)>>>;

/// A local webhook receiver that records what it gets and answers with `status`.
#[derive(Clone)]
struct Receiver {
    url: String,
    got: Got,
    status: Arc<Mutex<StatusCode>>,
}

impl Receiver {
    async fn start() -> Receiver {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hooks/precheck", listener.local_addr().unwrap());
        let receiver = Receiver {
            url,
            got: Arc::default(),
            status: Arc::new(Mutex::new(StatusCode::OK)),
        };
        let r = receiver.clone();
        let app = axum::Router::new().route(
            "/hooks/precheck",
            axum::routing::post(move |headers: HeaderMap, body: axum::body::Bytes| {
                let r = r.clone();
                async move {
                    r.got.lock().unwrap().push((headers, body.to_vec()));
                    *r.status.lock().unwrap()
                }
            }),
        );
        tokio::spawn(async move { axum::serve(listener, app).await });
        receiver
    }

    fn answer(&self, status: StatusCode) {
        *self.status.lock().unwrap() = status;
    }

    fn count(&self) -> usize {
        self.got.lock().unwrap().len()
    }

    /// The `n`th request: its headers and JSON body, after checking its signature.
    fn request(&self, n: usize) -> (HeaderMap, Value) {
        let (headers, body) = self.got.lock().unwrap()[n].clone();
        let mut mac = Hmac::<Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
        mac.update(&body);
        let expected = format!("sha256={:x}", mac.finalize().into_bytes());
        assert_eq!(headers["x-precheck-signature-256"], expected.as_str());
        assert_eq!(headers["content-type"], "application/json");
        (headers, serde_json::from_slice(&body).unwrap())
    }
}

fn server_for(receiver_host: &str) -> crate::support::TestServerBuilder {
    TestServer::builder()
        .set("webhooks.secret", SECRET)
        .set(
            "webhooks.allowed_hosts",
            toml::Value::Array(vec![receiver_host.into()]),
        )
        .set("webhooks.first_retry_after", "1s")
}

async fn precheck_notifying(server: &TestServer, top: &str, notify_url: &str) -> String {
    let upload_id = upload(server, &format!("{top}.gds"), gds_bytes(top)).await;
    let resp = http()
        .post(server.api("/api/v1/prechecks"))
        .json(&json!({"upload_id": upload_id, "notify_url": notify_url}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    let run: Value = resp.json().await.unwrap();
    run["Id"].as_str().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signed_webhook_is_retried_after_a_500_until_delivered() {
    let receiver = Receiver::start().await;
    receiver.answer(StatusCode::INTERNAL_SERVER_ERROR);
    let server = server_for("127.0.0.1").start();
    let run = precheck_notifying(&server, "chip_fail", &receiver.url).await;
    assert_eq!(wait(&server, &run).await["StatusCode"], 1);
    wait_until(Duration::from_secs(30), "a first attempt", || {
        receiver.count() >= 1
    });
    receiver.answer(StatusCode::NO_CONTENT);
    wait_until(Duration::from_secs(30), "a second attempt", || {
        receiver.count() >= 2
    });
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(receiver.count(), 2, "delivered once the receiver took it");

    let (first, body) = receiver.request(0);
    let (second, again) = receiver.request(1);
    assert_eq!(first["x-precheck-delivery"], second["x-precheck-delivery"]);
    assert_eq!(first["x-precheck-event"], "run.finished");
    assert_eq!(body, again);
    assert_eq!(body["Event"], "run.finished");
    assert_eq!(body["Run"]["Id"], run.as_str());
    assert_eq!(body["Run"]["State"]["Status"], "failed");
    assert_eq!(body["Run"]["State"]["ExitCode"], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_is_delivered_after_a_restart() {
    let receiver = Receiver::start().await;
    receiver.answer(StatusCode::SERVICE_UNAVAILABLE);
    let mut server = server_for("127.0.0.1")
        .set("webhooks.first_retry_after", "2s")
        .start();
    let run = precheck_notifying(&server, "chip_top", &receiver.url).await;
    assert_eq!(wait(&server, &run).await["StatusCode"], 0);
    wait_until(Duration::from_secs(30), "a first attempt", || {
        receiver.count() >= 1
    });
    server.kill();
    receiver.answer(StatusCode::OK);
    server.restart();
    wait_until(
        Duration::from_secs(30),
        "the delivery after the restart",
        || receiver.count() >= 2,
    );
    let (_, body) = receiver.request(receiver.count() - 1);
    assert_eq!(body["Run"]["Id"], run.as_str());
    assert_eq!(body["Run"]["State"]["Status"], "completed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notify_urls_are_checked_and_the_default_applies() {
    let receiver = Receiver::start().await;
    let server = server_for("127.0.0.1")
        .set("webhooks.default_url", receiver.url.as_str())
        .start();
    let upload_id = upload(&server, "chip_top.gds", gds_bytes("chip_top")).await;
    for (url, needle) in [
        ("ftp://127.0.0.1/x", "not an http or https URL"),
        ("http://example.com/hook", "not in webhooks.allowed_hosts"),
        ("not a url", "not a URL"),
    ] {
        let resp = http()
            .post(server.api("/api/v1/prechecks"))
            .json(&json!({"upload_id": upload_id, "notify_url": url}))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 400);
        let body: Value = resp.json().await.unwrap();
        let message = body["message"].as_str().unwrap();
        assert!(
            message.starts_with("notify_url:") && message.contains(needle),
            "{message}"
        );
    }
    // Without notify_url, the config's default gets the run's end.
    let resp = http()
        .post(server.api("/api/v1/prechecks"))
        .json(&json!({"upload_id": upload_id}))
        .send()
        .await
        .unwrap();
    let run: Value = resp.json().await.unwrap();
    wait(&server, run["Id"].as_str().unwrap()).await;
    wait_until(Duration::from_secs(30), "the default webhook", || {
        receiver.count() == 1
    });

    // A server without a secret sends none and says so.
    let plain = TestServer::start("");
    let upload_id = upload(&plain, "chip_top.gds", gds_bytes("chip_top")).await;
    let resp = http()
        .post(plain.api("/api/v1/prechecks"))
        .json(&json!({"upload_id": upload_id, "notify_url": receiver.url}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    let body: Value = resp.json().await.unwrap();
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("webhooks.secret"),
        "{body}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_create_retried_with_its_idempotency_key_returns_the_same_run() {
    let server = TestServer::start("");
    let upload_id = upload(&server, "chip_top.gds", gds_bytes("chip_top")).await;
    let create = |key: &str| {
        http()
            .post(server.api("/api/v1/prechecks"))
            .header("Idempotency-Key", key)
            .json(&json!({"upload_id": upload_id}))
            .send()
    };
    let first = create("ci-run-7f3a").await.unwrap();
    assert_eq!(first.status(), 201);
    let first: Value = first.json().await.unwrap();
    let again = create("ci-run-7f3a").await.unwrap();
    assert_eq!(again.status(), 200);
    let again: Value = again.json().await.unwrap();
    assert_eq!(first["Id"], again["Id"]);
    let other = create("ci-run-other").await.unwrap();
    assert_eq!(other.status(), 201);
    let other: Value = other.json().await.unwrap();
    let (_, runs) = crate::client::get_json(&server, "/api/v1/prechecks").await;
    assert_eq!(runs.as_array().unwrap().len(), 2);
    for run in [&first, &other] {
        wait(&server, run["Id"].as_str().unwrap()).await;
    }
    let bad = create("has space").await.unwrap();
    assert_eq!(bad.status(), 400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_nobody_takes_is_given_up_after_give_up_after() {
    let receiver = Receiver::start().await;
    receiver.answer(StatusCode::INTERNAL_SERVER_ERROR);
    let server = server_for("127.0.0.1")
        .set("webhooks.give_up_after", "4s")
        .start();
    let run = precheck_notifying(&server, "chip_top", &receiver.url).await;
    wait(&server, &run).await;
    // Tries at about 0, 1 and 3 s after the end (1 s, then 2 s later); the next (4 s later)
    // would be past give_up_after.
    wait_until(Duration::from_secs(30), "three attempts", || {
        receiver.count() >= 3
    });
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert_eq!(receiver.count(), 3, "no attempt after give_up_after");
    let (_, body) = receiver.request(2);
    assert_eq!(body["Run"]["Id"], run.as_str());
}
