//! Layouts are inspected at upload: their facts are shown, broken files are refused at once,
//! and a precheck whose layout cannot pass is refused before it takes a queue slot.

use precheck_server::layout::write::Die;
use serde_json::{Value, json};

use crate::client::{self, post_upload, upload};
use crate::support::{TestServer, files_in, gds_library};

/// POSTs a precheck request; returns the status and the JSON body.
async fn post_precheck(server: &TestServer, body: Value) -> (u16, Value) {
    let resp = client::http()
        .post(server.api("/api/v1/prechecks"))
        .json(&body)
        .send()
        .await
        .unwrap();
    (resp.status().as_u16(), resp.json().await.unwrap())
}

#[tokio::test]
async fn uploads_show_their_layout_in_every_format() {
    let server = TestServer::start("");
    let die = Die::new("chip_top").cob();
    for (file, format, bytes) in [
        ("chip_top.gds", "gds", die.gds()),
        ("chip_top.gds.gz", "gds.gz", die.gds_gz()),
        ("chip_top.oas", "oasis", die.oasis()),
    ] {
        let (status, body) = post_upload(&server, file, bytes).await;
        assert_eq!(status, 201, "{file}: {body}");
        let layout = &body["Layout"];
        assert_eq!(layout["Format"], format, "{file}");
        assert_eq!(layout["TopCells"], json!(["chip_top"]), "{file}");
        assert!(
            (layout["DbuMicrons"].as_f64().unwrap() - 0.001).abs() < 1e-12,
            "{file}: {layout}"
        );
        let mut cells: Vec<&str> = layout["Cells"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c.as_str().unwrap())
            .collect();
        cells.sort();
        assert_eq!(cells.len(), 8, "{file}: {layout}");
        assert!(
            cells.contains(&"gf180mcu_ws_ip__qrcode_id"),
            "{file}: {layout}"
        );
        // The same facts come back from the database.
        let id = body["Id"].as_str().unwrap();
        let (_, again) = client::get_json(&server, &format!("/api/v1/uploads/{id}")).await;
        assert_eq!(again["Layout"], body["Layout"]);
    }
}

#[tokio::test]
async fn broken_layouts_are_refused_at_upload_and_leave_nothing() {
    let server = TestServer::start("");
    let whole = gds_library(1e-9, &[("leaf", &[]), ("chip_top", &["leaf"])]);
    let truncated = whole[..whole.len() - 10].to_vec();
    let (status, body) = post_upload(&server, "cut.gds", truncated).await;
    assert_eq!(status, 400, "{body}");
    let message = body["message"].as_str().unwrap();
    assert!(
        message.starts_with("\"cut.gds\": truncated GDSII: file ends inside record"),
        "{message}"
    );
    assert!(message.contains(" at byte "), "{message}");

    let mut corrupt = whole.clone();
    corrupt[72 + 2] = 0x70;
    let (status, body) = post_upload(&server, "bad.gds", corrupt).await;
    assert_eq!(status, 400, "{body}");
    let message = body["message"].as_str().unwrap();
    assert!(
        message.contains("corrupt GDSII: record 5 at byte 72 has the unknown type 0x70"),
        "{message}"
    );

    let gz = Die::new("chip_top").gds_gz();
    let (status, body) = post_upload(&server, "cut.gds.gz", gz[..gz.len() / 2].to_vec()).await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["message"].as_str().unwrap().contains("truncated gzip"),
        "{body}"
    );

    let oas = Die::new("chip_top").oasis();
    let (status, body) = post_upload(&server, "cut.oas", oas[..oas.len() - 300].to_vec()).await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("truncated OASIS"),
        "{body}"
    );

    assert!(files_in(&server.storage.join("uploads")).is_empty());
    assert!(files_in(&server.storage.join("tmp")).is_empty());
    let (_, list) = client::get_json(&server, "/api/v1/uploads").await;
    assert_eq!(list, json!([]));
}

#[tokio::test]
async fn prechecks_are_refused_when_the_layout_cannot_pass() {
    let server = TestServer::builder().max_concurrent(1).start();
    let two = upload(
        &server,
        "two.gds",
        gds_library(1e-9, &[("top_a", &[]), ("top_b", &[])]),
    )
    .await;
    let hier = upload(
        &server,
        "hier.gds",
        gds_library(1e-9, &[("leaf", &[]), ("chip_top", &["leaf"])]),
    )
    .await;
    let coarse = upload(
        &server,
        "coarse.gds",
        gds_library(1e-8, &[("chip_top", &[])]),
    )
    .await;

    let refusals = [
        (
            json!({"upload_id": two}),
            vec![
                "top_cell",
                "2 top cells",
                "\"top_a\", \"top_b\"",
                "say which",
            ],
        ),
        (
            json!({"upload_id": hier, "top_cell": "leaf"}),
            vec![
                "\"leaf\"",
                "placed by another cell",
                "\"chip_top\"",
                "force",
            ],
        ),
        (
            json!({"upload_id": hier, "top_cell": "chip"}),
            vec!["\"chip\"", "not a cell of the layout", "\"chip_top\""],
        ),
        (
            json!({"upload_id": coarse, "top_cell": "chip_top"}),
            vec!["database unit is 0.01 µm", "0.001 µm (1 nm)", "force"],
        ),
        (
            json!({"upload_id": coarse}),
            vec!["database unit is 0.01 µm"],
        ),
        // `force` skips the layout rules, never the argument rules.
        (
            json!({"upload_id": hier, "top_cell": "-rf", "force": true}),
            vec!["top_cell", "starts with '-'"],
        ),
        (
            json!({"upload_id": two, "force": true}),
            vec!["2 top cells"],
        ),
    ];
    for (body, needles) in refusals {
        let (status, answer) = post_precheck(&server, body.clone()).await;
        assert_eq!(status, 400, "{body}: {answer}");
        let message = answer["message"].as_str().unwrap();
        for needle in needles {
            assert!(
                message.contains(needle),
                "{body}: {needle:?} not in {message:?}"
            );
        }
    }
    let (_, runs) = client::get_json(&server, "/api/v1/prechecks").await;
    assert_eq!(runs, json!([]), "no refused precheck took a queue slot");

    // The only top cell is the default; a named top cell and `force` are taken.
    let accepted = [
        (json!({"upload_id": hier}), "chip_top"),
        (json!({"upload_id": two, "top_cell": "top_b"}), "top_b"),
        (
            json!({"upload_id": coarse, "top_cell": "chip_top", "force": true}),
            "chip_top",
        ),
        (
            json!({"upload_id": hier, "top_cell": "leaf", "force": true}),
            "leaf",
        ),
    ];
    for (body, top) in accepted {
        let (status, run) = post_precheck(&server, body.clone()).await;
        assert_eq!(status, 201, "{body}: {run}");
        assert_eq!(run["Config"]["Labels"]["top_cell"], top, "{body}");
        client::wait(&server, run["Id"].as_str().unwrap()).await;
    }
    server.assert_no_containers();
}
