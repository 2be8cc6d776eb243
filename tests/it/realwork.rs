//! Prechecks with a real verdict: the server runs the KLayout test image
//! ([`klayout_image`], `tests/standin/klayout/`), which checks each die it is sent with KLayout,
//! on dies from `layout::write::Die`, good or with one defect, through the API and through
//! `precheck-server submit`.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;

use precheck_server::layout::write::{Defect, Die};
use precheck_server::model::LayoutFormat;
use serde_json::{Value, json};

use crate::client::{self, upload, wait};
use crate::klayout_image::klayout_image;
use crate::support::{TestServer, docker, docker_required};

/// A server of the KLayout image that runs one precheck at a time: each takes both cores for a
/// while, and the tests beside these need some too.
fn server() -> TestServer {
    TestServer::builder()
        .image(klayout_image())
        .max_concurrent(1)
        .start()
}

/// Uploads `bytes` as `file` and starts a precheck of its `chip_top` with the `extra` fields;
/// returns the run's id.
async fn precheck(server: &TestServer, file: &str, bytes: Vec<u8>, extra: Value) -> String {
    let upload_id = upload(server, file, bytes).await;
    let mut body = json!({"upload_id": upload_id, "top_cell": "chip_top", "die_id": "TEST0001"});
    for (key, value) in extra.as_object().expect("an object of fields") {
        body[key] = value.clone();
    }
    let (status, run) = client::send(
        client::http()
            .post(server.api("/api/v1/prechecks"))
            .json(&body),
    )
    .await;
    assert_eq!(status.as_u16(), 201, "{run}");
    run["Id"].as_str().unwrap().to_string()
}

/// The files of a `.tar.gz`, by path.
fn untar(tarball: &[u8]) -> BTreeMap<String, Vec<u8>> {
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(tarball));
    let mut files = BTreeMap::new();
    for entry in archive.entries().expect("a tar.gz") {
        let mut entry = entry.expect("a tar entry");
        if !entry.header().entry_type().is_file() {
            continue;
        }
        let path = entry.path().unwrap().display().to_string();
        let mut bytes = Vec::new();
        entry.read_to_end(&mut bytes).unwrap();
        files.insert(path, bytes);
    }
    files
}

/// The run's debug tarball: its folder (`logs.txt`, `output/`, the flow's `work/`), by path
/// inside the folder.
async fn debug_files(server: &TestServer, run_id: &str) -> BTreeMap<String, Vec<u8>> {
    let url = server.api(&format!("/api/v1/debug/prechecks/{run_id}"));
    let resp = client::http().get(url).send().await.unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let tarball = resp.bytes().await.unwrap();
    let prefix = format!("precheck-{run_id}/");
    untar(&tarball)
        .into_iter()
        .map(|(path, bytes)| {
            (
                path.strip_prefix(&prefix).unwrap_or(&path).to_string(),
                bytes,
            )
        })
        .collect()
}

/// What the container printed, one entry a line, without the log file's timestamps.
fn log_lines(files: &BTreeMap<String, Vec<u8>>) -> Vec<String> {
    let text = String::from_utf8_lossy(files.get("logs.txt").expect("logs.txt in the tarball"));
    text.lines()
        .map(|line| {
            line.split_once(' ')
                .map_or(line, |(_, rest)| rest)
                .to_string()
        })
        .collect()
}

/// The one file of the flow folder whose path ends with `suffix` (e.g. `-klayout-drc/gf180mcu_beol.lyrdb`).
fn flow_file<'a>(files: &'a BTreeMap<String, Vec<u8>>, suffix: &str) -> (&'a str, String) {
    let found: Vec<_> = files
        .iter()
        .filter(|(path, _)| path.starts_with("work/runs/") && path.ends_with(suffix))
        .collect();
    assert_eq!(
        found.len(),
        1,
        "one *{suffix} in the flow folder: {:?}",
        files.keys()
    );
    let (path, bytes) = found[0];
    (path.as_str(), String::from_utf8_lossy(bytes).into_owned())
}

/// The categories of a KLayout report database and how many items name each.
fn lyrdb_items(xml: &str) -> (Vec<String>, BTreeMap<String, usize>) {
    let between = |text: &str, open: &str, close: &str| -> Vec<String> {
        text.split(open)
            .skip(1)
            .filter_map(|rest| rest.split_once(close).map(|(inside, _)| inside.to_string()))
            .collect()
    };
    let (categories, items) = xml.split_once("<items>").expect("an <items> list");
    let names = between(categories, "<name>", "</name>");
    let mut counts = BTreeMap::new();
    for category in between(items, "<category>", "</category>") {
        *counts
            .entry(category.trim_matches('\'').to_string())
            .or_default() += 1;
    }
    (names, counts)
}

fn assert_has_line(lines: &[String], needle: &str) {
    assert!(
        lines.iter().any(|l| l.contains(needle)),
        "no line with {needle:?} in the log:\n{}",
        lines.join("\n")
    );
}

#[tokio::test]
async fn good_dies_complete_with_their_output_layout() {
    let server = server();
    let runs = [
        ("chip_top.gds", Die::new("chip_top").gds(), json!({})),
        ("chip_top.gds.gz", Die::new("chip_top").gds_gz(), json!({})),
        (
            "chip_top.oas",
            Die::new("chip_top").slot("0p5x1").cob().oasis(),
            json!({"slot": "0p5x1", "cob": true}),
        ),
    ];
    let mut ids = Vec::new();
    for (file, bytes, extra) in runs {
        ids.push((file, precheck(&server, file, bytes, extra).await));
    }
    for (file, run_id) in &ids {
        let result = wait(&server, run_id).await;
        let files = debug_files(&server, run_id).await;
        let lines = log_lines(&files);
        assert_eq!(
            result["StatusCode"],
            0,
            "{file}: {result}\n{}",
            lines.join("\n")
        );

        // The checked layout: GDSII whatever came in, the die's one top cell in 1 nm.
        let url = server.api(&format!("/api/v1/prechecks/{run_id}/output"));
        let output = client::http().get(url).send().await.unwrap();
        assert_eq!(output.status().as_u16(), 200, "{file}");
        let bytes = output.bytes().await.unwrap();
        let layout = precheck_server::layout::inspect(&bytes[..]).expect("a layout");
        assert_eq!(layout.format, LayoutFormat::Gds, "{file}");
        assert_eq!(layout.top_cells, ["chip_top"], "{file}");
        assert!((layout.dbu_microns - 0.001).abs() < 1e-12, "{file}");

        // The real precheck's lines, then LibreLane's.
        assert_eq!(lines[0], "None", "{file}");
        assert_eq!(lines[1], "PDK_ROOT = /workspace/gf180mcu", "{file}");
        assert_eq!(lines[2], "PDK = gf180mcuD", "{file}");
        assert_eq!(lines[3], "top_cell: chip_top", "{file}");
        assert_has_line(&lines, "──── Read in a layout ────");
        assert_has_line(&lines, "Check for KLayout DRC errors clear.");
        assert_eq!(
            lines
                .iter()
                .rev()
                .find(|l| !l.starts_with("[precheck-server]")),
            Some(&"Precheck successfully completed.".to_string()),
            "{file}"
        );

        // The flow folder: a step folder per step run, each with its runtime and state.
        let (path, runtime) = flow_file(&files, "-klayout-readlayout/runtime.txt");
        assert!(path.contains("/01-klayout-readlayout/"), "{path}");
        let digits = runtime.bytes().filter(u8::is_ascii_digit).count();
        assert!(
            runtime.len() == 12 && digits == 9,
            "hh:mm:ss.mmm: {runtime:?}"
        );
        let (_, state) = flow_file(&files, "-klayout-drc/state_out.json");
        let state: Value = serde_json::from_str(&state).unwrap();
        assert_eq!(state["metrics"]["klayout__drc_error__count"], 0, "{state}");
        let (_, report) = flow_file(&files, "-klayout-drc/gf180mcu_beol.lyrdb");
        let (categories, items) = lyrdb_items(&report);
        assert!(categories.contains(&"M1.1".to_string()), "{categories:?}");
        assert!(items.is_empty(), "{items:?}");
        if file.ends_with(".oas") {
            assert_has_line(
                &lines,
                "Drew the ID TEST0001 into gf180mcu_ws_ip__qrcode_id",
            );
            assert_has_line(&lines, "──── Check the pad mask ────");
            assert_has_line(&lines, "Layout size: 1936 x 5122 µm");
        }
        flow_file(&files, "/final/gds/chip_top.gds");
        flow_file(&files, "-klayout-render/chip_top.png");
    }
    server.assert_no_containers();
}

#[tokio::test]
async fn dirty_dies_fail_after_writing_their_output_and_their_reports_name_the_rules() {
    let server = server();
    let dies = [(Defect::DrcWidth, "M1.1"), (Defect::DrcSpace, "M1.2a")];
    let mut ids = Vec::new();
    for (defect, rule) in dies {
        let gds = Die::new("chip_top").defect(defect).gds();
        ids.push((
            rule,
            precheck(&server, "chip_top.gds", gds, json!({})).await,
        ));
    }
    for (rule, run_id) in &ids {
        let result = wait(&server, run_id).await;
        let files = debug_files(&server, run_id).await;
        let lines = log_lines(&files);
        assert_eq!(
            result["StatusCode"],
            1,
            "{rule}: {result}\n{}",
            lines.join("\n")
        );
        let message = result["Error"]["Message"].as_str().unwrap_or_default();
        assert!(message.contains("found problems"), "{message}");

        // The checker's error, deferred to the end of the flow, names the rule.
        let found = format!("1 KLayout DRC errors found: {rule} (1).");
        assert_has_line(&lines, &format!("{found} - deferred"));
        assert_has_line(&lines, "One or more deferred errors were encountered:");
        assert_eq!(
            lines.iter().filter(|l| **l == found).count(),
            1,
            "{}",
            lines.join("\n")
        );
        assert_has_line(
            &lines,
            "Error: The precheck failed with the following exception:",
        );

        // Written before the flow failed: the output layout and the report.
        let output = files
            .get("output/design.gds")
            .expect("the output in the tarball");
        let layout = precheck_server::layout::inspect(&output[..]).expect("a layout");
        assert_eq!(layout.top_cells, ["chip_top"]);
        let (_, report) = flow_file(&files, "-klayout-drc/gf180mcu_beol.lyrdb");
        let (categories, items) = lyrdb_items(&report);
        assert!(categories.contains(&rule.to_string()), "{categories:?}");
        assert_eq!(items, BTreeMap::from([(rule.to_string(), 1)]), "{report}");
        assert!(report.contains("<description>"), "{report}");
        let (_, state) = flow_file(&files, "-klayout-drc/state_out.json");
        let state: Value = serde_json::from_str(&state).unwrap();
        assert_eq!(state["metrics"]["klayout__drc_error__count"], 1, "{state}");

        // The API keeps a failed run's output to itself; the tarball has it.
        let url = server.api(&format!("/api/v1/prechecks/{run_id}/output"));
        let status = client::http().get(url).send().await.unwrap().status();
        assert_eq!(status.as_u16(), 409);
    }
    server.assert_no_containers();
}

#[tokio::test]
async fn each_broken_die_fails_with_its_own_message_and_no_output() {
    let server = server();
    let die = || Die::new("chip_top");
    // The server refuses most of these itself (issue 15); `force` sends them on to the
    // precheck, whose own words are the point here.
    let cases = [
        (
            "wrong size",
            die().defect(Defect::WrongSize).gds(),
            json!({"force": true}),
            "The layout is 3922 x 5122 µm, but the slot 1x1 is 3932 x 5122 µm",
        ),
        (
            "another slot's size",
            die().slot("0p5x0p5").gds(),
            json!({"slot": "1x0p5", "force": true}),
            "The layout is 1936 x 2531 µm, but the slot 1x0p5 is 3932 x 2531 µm",
        ),
        (
            "offset origin",
            die().defect(Defect::OffsetOrigin).gds(),
            json!({"force": true}),
            "The layout's origin is not at (0, 0): the lower left corner of the top-level cell is at (100, 100) µm.",
        ),
        (
            "no seal ring",
            die().defect(Defect::NoSealRing).gds(),
            json!({"force": true}),
            "No seal ring: there are no shapes on GUARD_RING_MK (167/5).",
        ),
        (
            "forbidden layers",
            die().defect(Defect::ForbiddenLayer).gds(),
            json!({"force": true}),
            "1 shape(s) on Via5 (82/0), a layer this process does not allow.",
        ),
        (
            "two top cells",
            die().defect(Defect::TwoTopCells).gds(),
            json!({"force": true}),
            "More than one top-level cell in the layout: 2 (chip_top, chip_top_old); it must have only 'chip_top'.",
        ),
        (
            "no ID cells with --cob",
            die().gds(),
            json!({"cob": true}),
            "With --cob the die must place the ID cells: gf180mcu_ws_ip__qrcode_id (not in the layout)",
        ),
        (
            // The server refuses this unit itself unless told not to.
            "a 10 nm unit",
            crate::support::gds_library(1e-8, &[("chip_top", &[])]),
            json!({"force": true}),
            "The database unit is 0.01 µm, not 0.001 µm.",
        ),
    ];
    let mut ids = Vec::new();
    for (what, bytes, extra, message) in cases {
        ids.push((
            what,
            message,
            precheck(&server, "chip_top.gds", bytes, extra).await,
        ));
    }
    for (what, message, run_id) in &ids {
        let result = wait(&server, run_id).await;
        let files = debug_files(&server, run_id).await;
        let lines = log_lines(&files);
        let log = lines.join("\n");
        assert_eq!(result["StatusCode"], 1, "{what}: {result}\n{log}");
        // Logged as the step's error, then as the precheck's exception.
        let error_line = lines
            .iter()
            .position(|l| l.contains("] ERROR") && l.contains(message));
        assert!(
            error_line.is_some(),
            "{what}: no ERROR line with {message:?}:\n{log}"
        );
        let exception = lines
            .iter()
            .position(|l| l.starts_with("Error: The precheck failed with the following exception:"))
            .unwrap_or_else(|| panic!("{what}: no exception in\n{log}"));
        assert!(lines[exception + 1].starts_with(message), "{what}:\n{log}");
        // The flow stops at the failed check: nothing is written.
        assert!(!files.contains_key("output/design.gds"), "{what}");
        assert!(!log.contains("──── Write the layout ────"), "{what}");
    }
    server.assert_no_containers();
}

#[test]
fn the_image_answers_with_the_real_command_line_under_the_runs_isolation() {
    docker_required();
    let image = klayout_image();
    let isolated = [
        "run",
        "--rm",
        "--network",
        "none",
        "--cap-drop",
        "ALL",
        "--security-opt",
        "no-new-privileges",
        image,
        "python3",
        "precheck.py",
    ];
    let help = docker(&[&isolated[..], &["--help"]].concat());
    let text = String::from_utf8_lossy(&help.stdout);
    assert!(
        help.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&help.stderr)
    );
    for flag in [
        "--input",
        "--output",
        "--top",
        "--id",
        "--cob",
        "--dir",
        "--threads",
        "--workers",
        "--slot",
        "--run-tag",
        "--last-run",
        "--from",
        "--to",
        "--skip",
        "--with-initial-state",
    ] {
        assert!(text.contains(flag), "{flag} not in the help:\n{text}");
    }
    // argparse's errors, and only they, exit 2.
    for args in [
        &["--input", "x.gds", "--slot", "2x2"][..],
        &["--output", "x.gds"][..],
        &["--input", "x.gds", "--threads", "none"][..],
    ] {
        let out = docker(&[&isolated[..], args].concat());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains("precheck.py: error: "), "{stderr}");
    }
    // A missing input is the flow's error, not argparse's.
    let out = docker(
        &[
            &isolated[..],
            &["--input", "/input/missing.gds", "--id", "A"],
        ]
        .concat(),
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains("The layout /input/missing.gds does not exist."),
        "{stdout}"
    );
}

/// `precheck-server submit ARGS` in `dir` against `server`; returns its exit code and output.
fn submit(server: &TestServer, dir: &Path, args: &[&str]) -> (i32, String, String) {
    crate::submit::finished(crate::submit::spawn_submit(server, dir, args))
}

#[test]
fn submit_passes_a_good_die_and_fails_a_dirty_one() {
    let server = server();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("chip_top.gds"), Die::new("chip_top").gds()).unwrap();
    let dirty = Die::new("chip_top").defect(Defect::DrcWidth).gds();
    std::fs::write(dir.path().join("dirty.gds"), dirty).unwrap();

    let (code, stdout, stderr) = submit(&server, dir.path(), &["chip_top.gds", "--id", "CI000001"]);
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    assert!(
        stdout.contains("Precheck successfully completed."),
        "{stdout}"
    );
    let checked = std::fs::read(dir.path().join("chip_top.checked.gds")).unwrap();
    let layout = precheck_server::layout::inspect(&checked[..]).expect("a layout");
    assert_eq!(layout.top_cells, ["chip_top"]);

    let args = ["dirty.gds", "--top", "chip_top", "--debug", "debug.tgz"];
    let (code, stdout, stderr) = submit(&server, dir.path(), &args);
    assert_eq!(code, 1, "{stdout}\n{stderr}");
    assert!(stderr.contains("failed (exit code 1)"), "{stderr}");
    assert!(
        stdout.contains("1 KLayout DRC errors found: M1.1 (1). - deferred"),
        "{stdout}"
    );
    assert!(!dir.path().join("dirty.checked.gds").exists());
    let files = untar(&std::fs::read(dir.path().join("debug.tgz")).unwrap());
    let report = files
        .iter()
        .find(|(path, _)| path.ends_with("-klayout-drc/gf180mcu_beol.lyrdb"))
        .map(|(_, bytes)| String::from_utf8_lossy(bytes).into_owned())
        .unwrap_or_else(|| panic!("no BEOL report in the debug tarball: {:?}", files.keys()));
    assert_eq!(
        lyrdb_items(&report).1,
        BTreeMap::from([("M1.1".to_string(), 1)])
    );
    assert!(
        files.keys().any(|p| p.ends_with("/output/design.gds")),
        "{:?}",
        files.keys()
    );
    server.assert_no_containers();
}
