//! The run lists at scale: 10 000 queued prechecks, made through the API, listed a page at a
//! time (issue 13, item 15). Only correctness is asserted here; the latency is measured by
//! scripts/bench-list.sh (docs/benchmarks.md).

use std::collections::HashSet;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::client::{refused, send, upload};
use crate::support::{TestServer, docker, docker_ok, gds_bytes, server_bin, wait_until_async};

const QUEUED: usize = 10_000;

/// One page: the runs, and the `X-Next-Before` cursor if older runs follow.
async fn page(
    http: &reqwest::Client,
    server: &TestServer,
    query: &str,
) -> (Vec<Value>, Option<String>) {
    let resp = http
        .get(server.api(&format!("/api/v1/prechecks{query}")))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "GET /api/v1/prechecks{query}");
    let next = resp
        .headers()
        .get("x-next-before")
        .map(|v| v.to_str().unwrap().to_string());
    let body: Value = resp.json().await.unwrap();
    (body.as_array().expect("a bare JSON array").clone(), next)
}

/// Every run `query` lists, page by page; asserts each page's size and cursor.
async fn walk(
    http: &reqwest::Client,
    server: &TestServer,
    query: &str,
    limit: usize,
) -> Vec<Value> {
    let mut all = Vec::new();
    let mut before: Option<String> = None;
    loop {
        let cursor = before
            .as_ref()
            .map(|b| format!("&before={b}"))
            .unwrap_or_default();
        let (runs, next) = page(http, server, &format!("?limit={limit}{query}{cursor}")).await;
        assert!(
            runs.len() <= limit,
            "a page of {} runs at limit={limit}",
            runs.len()
        );
        match &next {
            Some(next) => {
                assert_eq!(runs.len(), limit, "a page before the last is full");
                assert_eq!(
                    runs.last().unwrap()["Id"],
                    next.as_str(),
                    "the cursor is the page's last run"
                );
            }
            None => assert!(!runs.is_empty() || all.is_empty(), "an empty last page"),
        }
        all.extend(runs);
        match next {
            Some(next) => before = Some(next),
            None => return all,
        }
    }
}

fn ids(runs: &[Value]) -> Vec<String> {
    runs.iter()
        .map(|r| r["Id"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test]
async fn ten_thousand_queued_prechecks_page_by_page_with_their_queue_positions() {
    let mut server = TestServer::builder().max_concurrent(1).start();
    let http = crate::client::http();
    // The one slot is taken by a run that sleeps; every later run stays queued.
    let top = "chip_sleep900";
    let layout = upload(&server, &format!("{top}.gds"), gds_bytes(top)).await;
    let create = |http: reqwest::Client, url: String, layout: String| async move {
        let body = json!({"upload_id": layout, "top_cell": top, "die_id": "TEST0001"});
        let resp = http.post(url).json(&body).send().await.unwrap();
        assert_eq!(resp.status(), 201);
        resp.json::<Value>().await.unwrap()["Id"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let url = server.api("/api/v1/prechecks");
    let sleeper = create(http.clone(), url.clone(), layout.clone()).await;
    wait_until_async(Duration::from_secs(60), "the sleeper runs", || {
        let (http, url) = (
            http.clone(),
            server.api(&format!("/api/v1/prechecks/{sleeper}")),
        );
        async move {
            let run: Value = http.get(url).send().await.unwrap().json().await.unwrap();
            run["State"]["Status"] == "running"
        }
    })
    .await;
    let started = Instant::now();
    let mut queued = Vec::with_capacity(QUEUED);
    for _ in 0..QUEUED {
        queued.push(create(http.clone(), url.clone(), layout.clone()).await);
    }
    eprintln!("{QUEUED} prechecks created in {:?}", started.elapsed());

    // Newest first, each run once, a page of 1 000 at a time.
    let all = walk(&http, &server, "", 1000).await;
    let mut expected: Vec<String> = queued.iter().rev().cloned().collect();
    expected.push(sleeper.clone());
    assert_eq!(
        ids(&all),
        expected,
        "the pages hold every run once, newest first"
    );
    assert_eq!(ids(&all).iter().collect::<HashSet<_>>().len(), QUEUED + 1);
    // Queue positions: the first queued is next, the newest last.
    for (run, id) in all.iter().zip(&expected) {
        if *id == sleeper {
            assert_eq!(run["State"]["Status"], "running");
            assert!(run["Queue"].is_null(), "{run}");
            continue;
        }
        let position = queued.iter().position(|q| q == id).unwrap() + 1;
        assert_eq!(run["State"]["Status"], "queued");
        assert_eq!(
            run["Queue"],
            json!({"Position": position, "Length": QUEUED}),
            "{id}"
        );
    }

    // The default page: the newest 100, and the cursor to the rest.
    let (first, next) = page(&http, &server, "").await;
    assert_eq!(ids(&first), expected[..100]);
    assert_eq!(next.as_deref(), Some(expected[99].as_str()));
    let (second, _) = page(&http, &server, &format!("?before={}", expected[99])).await;
    assert_eq!(ids(&second), expected[100..200]);
    // Filtered by status, at another page size, the cursor still walks each once.
    let only_queued = walk(&http, &server, "&status=queued", 333).await;
    assert_eq!(ids(&only_queued), expected[..QUEUED]);
    let running = walk(&http, &server, "&status=running", 10).await;
    assert_eq!(ids(&running), std::slice::from_ref(&sleeper));
    let (last, next) = page(&http, &server, &format!("?before={}", expected[QUEUED - 1])).await;
    assert_eq!((ids(&last), next), (vec![sleeper.clone()], None));

    // Bad pages say what to give.
    for (query, needle) in [
        ("?limit=0", "limit"),
        ("?limit=1001", "from 1 to 1000"),
        ("?limit=ten", "limit"),
        ("?limit=-1", "limit"),
        ("?before=yesterday", "before"),
        (
            "?before=00000000-0000-4000-8000-000000000000",
            "no such precheck",
        ),
        ("?page=2", "use status, limit or before"),
    ] {
        let url = server.api(&format!("/api/v1/prechecks{query}"));
        refused(send(http.get(url)).await, 400, needle);
    }

    // The admin CLI lists them all, or the newest N.
    let list = |args: &[&str]| {
        let out = std::process::Command::new(server_bin())
            .args(["runs", "list"])
            .args(args)
            .arg("--config")
            .arg(&server.config_path)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let newest = list(&["--limit", "3", "--no-trunc"]);
    let rows: Vec<&str> = newest.lines().skip(1).collect();
    assert_eq!(rows.len(), 3, "{newest}");
    assert!(
        rows[0].starts_with(&expected[0])
            && rows[0].contains(&format!("Queued ({QUEUED} of {QUEUED})")),
        "{newest}"
    );
    assert_eq!(list(&[]).lines().count(), QUEUED + 2);

    // The queued runs stay in the database; the sleeper's container goes with the test.
    server.stop();
    for id in server.containers() {
        docker(&["rm", "-f", "-v", &id]);
    }
    assert!(
        docker_ok(&[
            "ps",
            "-aq",
            "--filter",
            &format!("label=precheck-server.run-id={sleeper}")
        ])
        .is_empty()
    );
}
