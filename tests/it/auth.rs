//! API keys, the address allowlist and who sees what (issue 4).

use reqwest::StatusCode;
use serde_json::json;

use crate::client::http;
use crate::support::{ALICE, BOB, TestServer, gds_bytes};

const ADMIN: &str = "ws_key_admin_0123456789abcdefghijklmno";

fn keyed_server(extra: &str) -> TestServer {
    TestServer::builder()
        .toml(&format!(
            "[auth]\nrequired = true\n{extra}\n\
             [[auth.api_keys]]\nname = \"alice\"\nkey = \"{ALICE}\"\n\
             [[auth.api_keys]]\nname = \"bob\"\nkey = \"{BOB}\"\n\
             [[auth.api_keys]]\nname = \"ops\"\nkey = \"{ADMIN}\"\nadmin = true\n"
        ))
        .start()
}

/// GET `path`, with `key` as a bearer token if given.
async fn get_as(server: &TestServer, path: &str, key: Option<&str>) -> reqwest::Response {
    let request = http().get(server.api(path));
    let request = match key {
        Some(key) => request.bearer_auth(key),
        None => request,
    };
    request.send().await.unwrap()
}

async fn message(resp: reqwest::Response) -> String {
    let body: serde_json::Value = resp.json().await.unwrap();
    body["message"]
        .as_str()
        .unwrap_or_else(|| panic!("no message in {body}"))
        .to_string()
}

#[tokio::test]
async fn keys_are_required_everywhere_but_health() {
    let server = keyed_server("");
    assert_eq!(
        get_as(&server, "/health", None).await.status(),
        StatusCode::OK
    );
    let resp = get_as(&server, "/api/v1/queue", None).await;
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    assert!(message(resp).await.contains("Authorization: Bearer"));
    let resp = get_as(&server, "/api/v1/queue", Some("ws_key_wrong")).await;
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    assert!(message(resp).await.contains("unknown API key"));
    let resp = get_as(&server, "/api/v1/queue", Some(ALICE)).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let resp = http()
        .get(server.api("/api/v1/queue"))
        .header("X-API-Key", BOB)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
}

#[tokio::test]
async fn a_key_sees_only_its_own_uploads_and_runs_and_an_admin_sees_all() {
    let server = keyed_server("");
    let form = reqwest::multipart::Form::new().part(
        "file",
        reqwest::multipart::Part::bytes(gds_bytes("chip_top")).file_name("a.gds"),
    );
    let resp = http()
        .post(server.api("/api/v1/uploads"))
        .bearer_auth(ALICE)
        .multipart(form)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::CREATED);
    let upload = resp.json::<serde_json::Value>().await.unwrap()["Id"]
        .as_str()
        .unwrap()
        .to_string();

    // Bob can neither see Alice's upload nor precheck it.
    let resp = get_as(&server, &format!("/api/v1/uploads/{upload}"), Some(BOB)).await;
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    let body = json!({"upload_id": upload, "top_cell": "chip_top"});
    let resp = http()
        .post(server.api("/api/v1/prechecks"))
        .bearer_auth(BOB)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);

    let resp = http()
        .post(server.api("/api/v1/prechecks"))
        .bearer_auth(ALICE)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::CREATED);
    let run = resp.json::<serde_json::Value>().await.unwrap()["Id"]
        .as_str()
        .unwrap()
        .to_string();
    for path in [
        format!("/api/v1/prechecks/{run}"),
        format!("/api/v1/prechecks/{run}/logs"),
        format!("/api/v1/prechecks/{run}/output"),
        format!("/api/v1/debug/prechecks/{run}"),
    ] {
        let resp = get_as(&server, &path, Some(BOB)).await;
        assert_eq!(resp.status(), StatusCode::NOT_FOUND, "{path}");
    }
    let resp = http()
        .delete(server.api(&format!("/api/v1/prechecks/{run}")))
        .bearer_auth(BOB)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    let list: serde_json::Value = get_as(&server, "/api/v1/prechecks", Some(BOB))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(list, json!([]));

    let resp = http()
        .post(server.api(&format!("/api/v1/prechecks/{run}/wait?timeout=120")))
        .bearer_auth(ALICE)
        .send()
        .await
        .unwrap();
    assert_eq!(
        resp.json::<serde_json::Value>().await.unwrap()["StatusCode"],
        0
    );
    let list: serde_json::Value = get_as(&server, "/api/v1/prechecks", Some(ADMIN))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(list.as_array().unwrap().len(), 1);
    let resp = get_as(
        &server,
        &format!("/api/v1/prechecks/{run}/output"),
        Some(ADMIN),
    )
    .await;
    assert_eq!(resp.status(), StatusCode::OK);
    server.assert_no_containers();
}

#[tokio::test]
async fn addresses_outside_allowed_ips_get_403_and_forwarded_for_is_believed_only_from_trusted_proxies()
 {
    // Loopback is not allowed: every request of ours is refused, with or without a forged header.
    let server = TestServer::builder()
        .toml("[auth]\nallowed_ips = [\"192.0.2.0/24\"]")
        .start();
    let resp = get_as(&server, "/api/v1/queue", None).await;
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);
    assert!(message(resp).await.contains("127.0.0.1"));
    let resp = http()
        .get(server.api("/api/v1/queue"))
        .header("X-Forwarded-For", "192.0.2.7")
        .send()
        .await
        .unwrap();
    assert_eq!(
        resp.status(),
        StatusCode::FORBIDDEN,
        "a forged X-Forwarded-For was believed"
    );
    drop(server);

    // Behind a trusted proxy on loopback: its last untrusted hop is the client.
    let server = TestServer::builder()
        .toml("[auth]\nallowed_ips = [\"192.0.2.0/24\", \"127.0.0.1\"]\ntrusted_proxies = [\"127.0.0.1\"]")
        .start();
    let get = |xff: &'static str| {
        http()
            .get(server.api("/api/v1/queue"))
            .header("X-Forwarded-For", xff)
            .send()
    };
    assert_eq!(get("192.0.2.7").await.unwrap().status(), StatusCode::OK);
    assert_eq!(
        get("192.0.2.7, 198.51.100.1").await.unwrap().status(),
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        get("198.51.100.1, 192.0.2.7").await.unwrap().status(),
        StatusCode::OK
    );
    assert_eq!(
        get("not an address").await.unwrap().status(),
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        get_as(&server, "/api/v1/queue", None).await.status(),
        StatusCode::OK
    );
}

/// Keys in the config without `auth.required`: anyone reaches the API without one, which the
/// server says at start; with `required` (or without keys) it says nothing of the kind.
#[test]
fn keys_without_auth_required_are_warned_of_at_start() {
    const WARNING: &str = "but auth.required is false";
    let keys = format!("[[auth.api_keys]]\nname = \"alice\"\nkey = \"{ALICE}\"\n");
    let open = TestServer::builder()
        .toml(&format!("[auth]\nrequired = false\n{keys}"))
        .start();
    let log = open.stderr_text();
    let line = log
        .lines()
        .find(|l| l.contains(WARNING))
        .unwrap_or_else(|| panic!("no warning of keys that are not required:\n{log}"));
    assert!(
        line.contains("WARN") && line.contains("1 in the config"),
        "{line}"
    );
    drop(open);
    for config in [format!("[auth]\nrequired = true\n{keys}"), String::new()] {
        let server = TestServer::builder().toml(&config).start();
        let log = server.stderr_text();
        assert!(!log.contains(WARNING), "{config:?}:\n{log}");
    }
}
