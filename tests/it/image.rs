//! The precheck image's self-test (issue 12): `python3 precheck.py --help` under exactly a run's
//! isolation, at start and whenever the image appears; `/health` reports `ready`, `probing`,
//! `pulling`, `missing` or `broken`, and a broken image fails new runs at once.

use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::client::{self, precheck, wait};
use crate::support::{TestServer, docker, docker_ok, precheck_image, wait_until_async};

/// An image tag that exists only while the test holds it.
struct Tag(String);

impl Drop for Tag {
    fn drop(&mut self) {
        docker(&["rmi", "-f", &self.0]);
    }
}

/// A tag whose registry is a closed loopback port: a pull of it fails at once, and no traffic
/// leaves the host.
fn unreachable_tag(name: &str) -> String {
    format!(
        "127.0.0.1:9/precheck-server-test/{name}:{}",
        std::process::id()
    )
}

/// The stand-in behind an entrypoint that needs a capability, as the real image's Nix entrypoint
/// may: it works under `docker run`, and fails under the runs' isolation (all capabilities dropped).
fn broken_image() -> Tag {
    let tag = Tag(unreachable_tag("needs-chown"));
    let context = tempfile::tempdir().unwrap();
    std::fs::write(
        context.path().join("entrypoint.sh"),
        "#!/bin/sh\n\
         if ! chown 65534 /workspace/precheck.py 2>/dev/null; then\n\
         \x20   echo 'entrypoint: cannot copy /workspace into the store: chown: Operation not permitted' >&2\n\
         \x20   exit 1\n\
         fi\n\
         exec \"$@\"\n",
    )
    .unwrap();
    std::fs::write(
        context.path().join("Dockerfile"),
        format!(
            "FROM {}\nCOPY entrypoint.sh /entrypoint.sh\nENTRYPOINT [\"/bin/sh\", \"/entrypoint.sh\"]\n",
            precheck_image()
        ),
    )
    .unwrap();
    let out = Command::new("docker")
        .args(["build", "-q", "-t", &tag.0])
        .arg(context.path())
        .env("DOCKER_BUILDKIT", "0")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    tag
}

async fn health(server: &TestServer) -> (u16, Value) {
    client::get_json(server, "/health").await
}

async fn health_says(server: &TestServer, status: &str) -> Value {
    wait_until_async(
        Duration::from_secs(60),
        &format!("/health says the image is {status}"),
        || async { health(server).await.1["image"]["status"] == status },
    )
    .await;
    health(server).await.1
}

#[tokio::test]
async fn a_broken_image_is_reported_by_health_and_fails_new_runs_at_once() {
    let image = broken_image();
    // With its capabilities the image works: only the runs' isolation breaks it.
    docker_ok(&[
        "run",
        "--rm",
        "--network",
        "none",
        &image.0,
        "python3",
        "precheck.py",
        "--help",
    ]);

    let server = TestServer::builder().image(&image.0).start();
    let body = health_says(&server, "broken").await;
    assert_eq!(health(&server).await.0, 503, "{body}");
    assert_eq!(body["status"], "unhealthy");
    let error = body["image"]["error"].as_str().unwrap();
    assert!(
        error.contains("fails its self-test") && error.contains("exited with code 1"),
        "{body}"
    );
    let log = body["image"]["log"].as_array().unwrap();
    assert!(
        log.iter().any(|l| l
            .as_str()
            .unwrap()
            .contains("chown: Operation not permitted")),
        "{body}"
    );
    assert!(
        body["image"]["id"].as_str().unwrap().starts_with("sha256:"),
        "{body}"
    );

    let started = Instant::now();
    let run = precheck(&server, "chip_top").await;
    let result = wait(&server, &run).await;
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(result["StatusCode"], 125, "{result}");
    let message = result["Error"]["Message"].as_str().unwrap();
    assert!(
        message.contains("fails its self-test") && message.contains("Operation not permitted"),
        "{message}"
    );
    // The run names the image that failed it, and left no container.
    let (_, body) = client::get_json(&server, &format!("/api/v1/prechecks/{run}")).await;
    assert_eq!(body["Image"], log_image_id(&image.0), "{body}");
    server.assert_no_containers();
}

fn log_image_id(tag: &str) -> String {
    docker_ok(&["image", "inspect", "--format", "{{.Id}}", tag])
}

#[tokio::test]
async fn an_image_tagged_later_turns_health_ready_and_one_removed_turns_it_missing() {
    let tag = Tag(unreachable_tag("later"));
    let server = TestServer::builder().image(&tag.0).start();
    let body = health_says(&server, "missing").await;
    assert!(
        body["image"]["error"]
            .as_str()
            .unwrap()
            .contains(&format!("docker pull {}", tag.0)),
        "{body}"
    );

    // No restart: /health finds the new image, its self-test runs, and runs pass.
    docker_ok(&["tag", precheck_image(), &tag.0]);
    let body = health_says(&server, "ready").await;
    assert_eq!(body["status"], "healthy");
    assert_eq!(body["image"]["id"], log_image_id(&tag.0));
    let run = precheck(&server, "chip_top").await;
    assert_eq!(wait(&server, &run).await["StatusCode"], 0);

    docker_ok(&["rmi", &tag.0]);
    let body = health_says(&server, "missing").await;
    assert_eq!(body["status"], "unhealthy");
    server.assert_no_containers();
}

#[tokio::test]
async fn a_failed_pull_is_tried_again_with_a_growing_wait() {
    let tag = unreachable_tag("never");
    let server = TestServer::builder().image(&tag).start();
    let body = health_says(&server, "missing").await;
    assert!(
        body["image"]["error"]
            .as_str()
            .unwrap()
            .contains("tried again in 5 s"),
        "{body}"
    );
    crate::support::wait_until(
        Duration::from_secs(30),
        "a second pull, then a longer wait",
        || {
            let text = server.stderr_text();
            text.matches("pulling it").count() >= 2 && text.contains("tried again in 10 s")
        },
    );
    server.assert_no_containers();
}
