//! Layouts are inspected at upload: their facts are shown, broken files are refused at once,
//! and a precheck whose layout cannot pass is refused before it takes a queue slot.

use std::collections::BTreeMap;

use precheck_server::layout::write::{Defect, Die, SLOT_SIZES, geometry_cases};
use serde_json::{Value, json};

use crate::client::{self, post_upload, upload};
use crate::klayout_image::klayout_image;
use crate::support::{TestServer, docker_ok, files_in, gds_library};

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
        // The die as the precheck's first checks see it, in µm.
        let die = &layout["Die"];
        assert_eq!(die["Cell"], "chip_top", "{file}: {layout}");
        assert_eq!(die["BBox"], json!([0.0, 0.0, 3932.0, 5122.0]), "{file}");
        let layers: Vec<&str> = die["Layers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l.as_str().unwrap())
            .collect();
        assert_eq!(layers.first(), Some(&"22/0"), "{file}: {layers:?}");
        assert_eq!(
            layers.last(),
            Some(&"167/5"),
            "{file}: sorted by number: {layers:?}"
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
    let server_ref = &server;
    let die = |die: Die| async move { upload(server_ref, "chip_top.gds", die.gds()).await };
    let half = die(Die::new("chip_top").slot("0p5x1")).await;
    let offset = die(Die::new("chip_top").defect(Defect::OffsetOrigin)).await;
    let unsealed = die(Die::new("chip_top").defect(Defect::NoSealRing)).await;
    let forbidden = die(Die::new("chip_top").defect(Defect::ForbiddenLayer)).await;

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
        // The die's geometry (issue 15): a layout of 1 µm cells breaks two rules at once.
        (
            json!({"upload_id": hier}),
            vec![
                "the die would fail 2 of the precheck's first checks: 1) the die is 1 x 1 µm, but slot 1x1 needs 3932 x 5122 µm; 2) no shapes on GUARD_RING_MK (167/5): the die needs its seal ring (or send \"force\": true to skip the layout checks)",
            ],
        ),
        (
            json!({"upload_id": half}),
            vec![
                "the die is 1936 x 5122 µm, but slot 1x1 needs 3932 x 5122 µm; it matches slot 0p5x1: send \"slot\": \"0p5x1\" (or send \"force\": true",
            ],
        ),
        (
            json!({"upload_id": half, "slot": "0p5x0p5"}),
            vec!["but slot 0p5x0p5 needs 1936 x 2531 µm; it matches slot 0p5x1"],
        ),
        (
            json!({"upload_id": offset}),
            vec![
                "the die's lower-left corner is at (100, 100) µm; the precheck needs it at (0, 0) (or send",
            ],
        ),
        (
            json!({"upload_id": unsealed}),
            vec!["no shapes on GUARD_RING_MK (167/5): the die needs its seal ring (or send"],
        ),
        (
            json!({"upload_id": forbidden}),
            vec![
                "shapes on Via5 (82/0) and MetalTop (53/0), which this process does not allow (or send",
            ],
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
        (json!({"upload_id": hier, "force": true}), "chip_top"),
        (json!({"upload_id": half, "slot": "0p5x1"}), "chip_top"),
        // Chip-on-board: the size is the pad mask's to check, in the container.
        (json!({"upload_id": half, "cob": true}), "chip_top"),
        (json!({"upload_id": forbidden, "force": true}), "chip_top"),
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

/// What KLayout (the reader the precheck uses, in the KLayout test image) finds in each layout
/// the tests' writer makes: its unit, top cells, the first top cell's `dbbox()` in µm and, per
/// layer, the merged area (in square database units) and polygon count. `bbox` is in database
/// units, `dbbox` in µm.
fn klayout_reads(files: &[(String, Vec<u8>)]) -> BTreeMap<String, Value> {
    let dir = tempfile::tempdir().unwrap();
    for (name, bytes) in files {
        std::fs::write(dir.path().join(name), bytes).unwrap();
    }
    std::fs::write(
        dir.path().join("read.py"),
        r#"
import glob, json, os
import pya
out = {}
for path in sorted(glob.glob("/layouts/*")):
    if path.endswith(".py"):
        continue
    ly = pya.Layout()
    ly.read(path)
    top = ly.top_cells()[0]
    box, dbox = top.bbox(), top.dbbox()
    layers = {}
    shape_layers = []
    for i in ly.layer_indexes():
        info = ly.get_info(i)
        if not top.begin_shapes_rec(i).at_end():
            shape_layers.append([info.layer, info.datatype])
        region = pya.Region(top.begin_shapes_rec(i))
        region.merge()
        if region.count():
            layers["%d/%d" % (info.layer, info.datatype)] = [region.area(), region.count()]
    out[os.path.basename(path)] = {
        "dbu": ly.dbu,
        "tops": [c.name for c in ly.top_cells()],
        "bbox": [box.left, box.bottom, box.right, box.top],
        "dbbox": [dbox.left, dbox.bottom, dbox.right, dbox.top],
        "layers": layers,
        "shape_layers": sorted(shape_layers),
    }
print(json.dumps(out))
"#,
    )
    .unwrap();
    // Readable by the container's root, whose capabilities are dropped.
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let mount = format!("{}:/layouts:ro", dir.path().display());
    let out = docker_ok(&[
        "run",
        "--rm",
        "--network",
        "none",
        "--cap-drop",
        "ALL",
        "-v",
        &mount,
        klayout_image(),
        "klayout",
        "-b",
        "-r",
        "/layouts/read.py",
    ]);
    let json = out.lines().last().unwrap_or_default();
    serde_json::from_str(json).unwrap_or_else(|e| panic!("{e}: {out}"))
}

/// The writer's dies are what docs/decisions.md ("Test layouts") says, as KLayout reads them:
/// the slot's exact box from (0, 0), a 1 nm unit, the layers each defect adds or takes away, and
/// the same geometry whichever of the three formats carries it (issue 12).
#[test]
fn klayout_reads_the_dies_as_described_in_every_format() {
    let mut dies: Vec<(String, Die, Option<Defect>)> = Vec::new();
    for (slot, _, _) in SLOT_SIZES {
        dies.push((
            format!("good_{slot}"),
            Die::new("chip_top").slot(slot),
            None,
        ));
    }
    dies.push(("cob".into(), Die::new("chip_top").cob(), None));
    for defect in Defect::ALL {
        let name = defect.as_str().replace('-', "_");
        dies.push((name, Die::new("chip_top").defect(defect), Some(defect)));
    }
    let mut files = Vec::new();
    for (name, die, _) in &dies {
        files.push((format!("{name}.gds"), die.gds()));
        files.push((format!("{name}.gds.gz"), die.gds_gz()));
        files.push((format!("{name}.oas"), die.oasis()));
    }
    let read = klayout_reads(&files);
    for (name, die, defect) in &dies {
        let gds = &read[&format!("{name}.gds")];
        for other in [format!("{name}.gds.gz"), format!("{name}.oas")] {
            let (a, b) = (&gds["layers"], &read[&other]["layers"]);
            assert_eq!(a, b, "{name}: {other} holds other geometry than the .gds");
            assert_eq!(gds["bbox"], read[&other]["bbox"], "{other}");
            assert_eq!(gds["tops"], read[&other]["tops"], "{other}");
            let dbu = read[&other]["dbu"].as_f64().unwrap();
            assert!((dbu - 0.001).abs() < 1e-12, "{other}: {dbu}");
        }
        let (w, h) = die.size();
        let at = if *defect == Some(Defect::OffsetOrigin) {
            100_000
        } else {
            0
        };
        assert_eq!(gds["bbox"], json!([at, at, at + w, at + h]), "{name}");
        // In µm, GDSII's box is exact; OASIS's is off in the last digits, since KLayout reads
        // its unit of 1000 steps per µm as 0.0009999999999999998 µm (docs/decisions.md).
        let exact = [at, at, at + w, at + h].map(|v| v as f64 / 1000.0);
        assert_eq!(gds["dbbox"], json!(exact), "{name}");
        let oasis = read[&format!("{name}.oas")]["dbbox"].as_array().unwrap();
        for (v, e) in oasis.iter().zip(exact) {
            assert!(
                (v.as_f64().unwrap() - e).abs() < 1e-9,
                "{name}.oas: {oasis:?}"
            );
        }
        let tops = if *defect == Some(Defect::TwoTopCells) {
            json!(["chip_top", "chip_top_old"])
        } else {
            json!(["chip_top"])
        };
        assert_eq!(gds["tops"], tops, "{name}");
        let layers = gds["layers"].as_object().unwrap();
        let has = |layer: &str| layers.contains_key(layer);
        assert_eq!(
            has("167/5"),
            *defect != Some(Defect::NoSealRing),
            "{name}: {layers:?}"
        );
        let forbidden = *defect == Some(Defect::ForbiddenLayer);
        assert_eq!(has("82/0") || has("53/0"), forbidden, "{name}: {layers:?}");
        if forbidden {
            assert!(has("82/0") && has("53/0"), "{name}: {layers:?}");
        }
        for layer in [
            "22/0", "30/0", "33/0", "34/0", "35/0", "36/0", "42/0", "46/0", "81/0",
        ] {
            assert!(has(layer), "{name}: no {layer} in {layers:?}");
        }
    }
    // The seal ring is 26 µm wide on each side: its merged area says so.
    let (w, h) = (3_932_000_i64, 5_122_000_i64);
    let ring = (w * h - (w - 52_000) * (h - 52_000)) as f64;
    assert_eq!(
        read["good_1x1.gds"]["layers"]["167/5"][0].as_f64(),
        Some(ring)
    );
}

/// The upload reader's die (its box to the database unit and its layers) is KLayout's for every
/// layout the tests make, in every format: the dies of every slot and defect, and the cases whose
/// box is right only when every transformation is (issue 15).
#[test]
fn the_upload_reader_boxes_every_die_as_klayout_does() {
    let mut files: Vec<(String, Vec<u8>)> = Vec::new();
    let mut dies: Vec<(String, Die)> = SLOT_SIZES
        .iter()
        .map(|(slot, _, _)| (format!("good_{slot}"), Die::new("chip_top").slot(slot)))
        .collect();
    dies.push(("cob".into(), Die::new("chip_top").cob()));
    for defect in Defect::ALL
        .into_iter()
        .filter(|d| *d != Defect::TwoTopCells)
    {
        let name = defect.as_str().replace('-', "_");
        dies.push((name, Die::new("chip_top").defect(defect)));
    }
    for (name, die) in &dies {
        files.push((format!("{name}.gds"), die.gds()));
        files.push((format!("{name}.gds.gz"), die.gds_gz()));
        files.push((format!("{name}.oas"), die.oasis()));
    }
    for (name, library, oasis) in geometry_cases() {
        files.push((format!("{name}.gds"), library.gds()));
        files.push((format!("{name}.gds.gz"), library.gds_gz()));
        if oasis {
            files.push((format!("{name}.oas"), library.oasis()));
        }
    }
    let read = klayout_reads(&files);
    for (file, bytes) in &files {
        let layout = precheck_server::layout::inspect(&bytes[..]).unwrap();
        let die = layout.die.unwrap_or_else(|| panic!("{file}: no die"));
        let b = die.bbox.unwrap_or_else(|| panic!("{file}: an empty die"));
        let klayout = &read[file];
        assert_eq!(
            json!([b.left, b.bottom, b.right, b.top]),
            klayout["bbox"],
            "{file}: our box, then KLayout's"
        );
        let layers: Vec<[u32; 2]> = die.layers.iter().map(|(l, d)| [*l, *d]).collect();
        assert_eq!(
            json!(layers),
            klayout["shape_layers"],
            "{file}: our layers, then KLayout's"
        );
    }
}
