//! The stand-in LibreLane image ([`librelane_image`]) on its own, run as the server runs
//! containers (no network, no capabilities): it takes `python3 -m librelane ...` as LibreLane's
//! command line, wants the PDK read-only, and writes a run folder with a real GDS.
//!
//! The project goes in and out with `docker cp`, so the files the container writes as root never
//! land on the host; only the PDK is a bind mount of a host folder.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use precheck_server::layout;
use precheck_server::model::LayoutFormat;

use crate::support::{docker, docker_ok, librelane_image};

/// The five steps: (number, id, long name, slug).
const STEPS: [(&str, &str, &str, &str); 5] = [
    ("01", "Verilator.Lint", "Verilator Lint", "verilator-lint"),
    ("02", "Yosys.Synthesis", "Synthesis", "yosys-synthesis"),
    (
        "03",
        "OpenROAD.Floorplan",
        "Floorplan Init",
        "openroad-floorplan",
    ),
    (
        "04",
        "OpenROAD.GlobalPlacement",
        "Global Placement",
        "openroad-globalplacement",
    ),
    (
        "05",
        "KLayout.StreamOut",
        "GDSII Stream Out (KLayout)",
        "klayout-streamout",
    ),
];

/// Removes the container when dropped, also when an assertion fails.
struct Container(String);

impl Drop for Container {
    fn drop(&mut self) {
        let _ = docker(&["rm", "-f", &self.0]);
    }
}

/// How one run of the stand-in ended, with `/project` copied out after it.
struct Run {
    code: i32,
    stdout: String,
    stderr: String,
    project: PathBuf,
    _out: tempfile::TempDir,
}

/// A PDK root holding `gf180mcuD/`; `writable` makes the folder writable by anyone, so the
/// container's root (without capabilities) could write to it if it were mounted read-write.
fn pdk_root(writable: bool) -> tempfile::TempDir {
    let root = tempfile::tempdir().unwrap();
    let pdk = root.path().join("gf180mcuD");
    fs::create_dir_all(pdk.join("libs.tech")).unwrap();
    fs::write(pdk.join("libs.tech/README"), "stand-in PDK\n").unwrap();
    let mode = if writable { 0o777 } else { 0o755 };
    for dir in [root.path(), &pdk, &pdk.join("libs.tech")] {
        fs::set_permissions(dir, fs::Permissions::from_mode(mode)).unwrap();
    }
    root
}

/// Copies `project` to `/project` in a new container of the stand-in image, with `pdk` mounted
/// at `/pdk` (read-only unless `pdk_mode` says `rw`) and `PDK_ROOT=/pdk`, runs `args` there and
/// copies `/project` back out.
fn run(project: &Path, pdk: &Path, pdk_mode: &str, args: &[&str]) -> Run {
    let mount = format!("{}:/pdk:{pdk_mode}", pdk.display());
    let mut create = vec![
        "create",
        "--network",
        "none",
        "--cap-drop",
        "ALL",
        "--security-opt",
        "no-new-privileges",
        "-v",
        &mount,
        "-e",
        "PDK_ROOT=/pdk",
        librelane_image(),
    ];
    create.extend_from_slice(args);
    let container = Container(docker_ok(&create));
    let id = container.0.as_str();
    docker_ok(&[
        "cp",
        &format!("{}/.", project.display()),
        &format!("{id}:/project"),
    ]);
    let out = docker(&["start", "-a", id]);
    let code = docker_ok(&["inspect", "-f", "{{.State.ExitCode}}", id])
        .parse()
        .unwrap();
    let copied = tempfile::tempdir().unwrap();
    let project = copied.path().join("project");
    docker_ok(&[
        "cp",
        &format!("{id}:/project"),
        &project.display().to_string(),
    ]);
    Run {
        code,
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        project,
        _out: copied,
    }
}

/// A project folder: `counter` at the top (JSON config, `src/`), `counter_fail` in `sub/`
/// (YAML config, `rtl/`) and `counter_drc` in `drc/`.
fn project() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    fs::create_dir_all(root.join("src")).unwrap();
    fs::create_dir_all(root.join("sub/rtl")).unwrap();
    fs::write(
        root.join("config.json"),
        "{\n  \"DESIGN_NAME\": \"counter\",\n  \"VERILOG_FILES\": [\"dir::src/*.v\"],\n  \
         \"CLOCK_PORT\": \"clk\"\n}\n",
    )
    .unwrap();
    fs::write(
        root.join("src/counter.v"),
        "module counter(input clk, output reg [3:0] q = 0);\n  always @(posedge clk) q <= q + 1;\nendmodule\n",
    )
    .unwrap();
    fs::write(
        root.join("sub/config.yaml"),
        "DESIGN_NAME: \"counter_fail\"  # fails in synthesis\nVERILOG_FILES:\n  - dir::rtl/*.v\n",
    )
    .unwrap();
    fs::write(
        root.join("sub/rtl/counter_fail.v"),
        "module counter_fail;\nendmodule\n",
    )
    .unwrap();
    fs::create_dir_all(root.join("drc")).unwrap();
    fs::write(
        root.join("drc/config.json"),
        "{\"DESIGN_NAME\": \"counter_drc\", \"VERILOG_FILES\": [\"dir::*.v\"]}\n",
    )
    .unwrap();
    fs::write(
        root.join("drc/counter_drc.v"),
        "module counter_drc;\nendmodule\n",
    )
    .unwrap();
    dir
}

fn describe(run: &Run) -> String {
    format!(
        "exit {}\n--- stdout\n{}--- stderr\n{}",
        run.code, run.stdout, run.stderr
    )
}

#[test]
fn librelane_standin_follows_the_cli_and_writes_a_gds() {
    let project = project();
    let pdk = pdk_root(false);

    // A passing flow, options in another order and in both forms, the PDK root from the env.
    let ok = run(
        project.path(),
        pdk.path(),
        "ro",
        &[
            "python3",
            "-m",
            "librelane",
            "--pdk=gf180mcuD",
            "/project/config.json",
            "--run-tag",
            "RUN_T",
            "--manual-pdk",
        ],
    );
    assert_eq!(ok.code, 0, "{}", describe(&ok));
    assert_eq!(ok.stderr, "", "{}", describe(&ok));
    let lines: Vec<&str> = ok.stdout.lines().collect();
    let logged = |level: &str, text: &str| {
        lines.iter().any(|line| {
            line.len() > 11
                && line.starts_with('[')
                && line[11..].strip_prefix(&format!("{level:<8} ")) == Some(text)
        })
    };
    assert!(
        logged(
            "INFO",
            "Starting a new run of the 'Classic' flow with the tag 'RUN_T'."
        ),
        "{}",
        describe(&ok)
    );
    let run_dir = ok.project.join("runs/RUN_T");
    for (number, id, long_name, slug) in STEPS {
        let rule = lines.iter().find(|line| {
            line.starts_with('─') && line.ends_with('─') && line.contains(&format!(" {long_name} "))
        });
        let rule = rule.unwrap_or_else(|| panic!("no rule for {long_name}: {}", describe(&ok)));
        assert_eq!(rule.chars().count(), 80, "{rule}");
        let log = format!("runs/RUN_T/{number}-{slug}/{slug}.log");
        assert!(
            logged("VERBOSE", &format!("Running '{id}'… (Log: {log})")),
            "{}",
            describe(&ok)
        );
        let step = run_dir.join(format!("{number}-{slug}"));
        assert!(step.join(format!("{slug}.log")).is_file(), "{log}");
        assert!(step.join("state_out.json").is_file(), "{}", step.display());
        let runtime = fs::read_to_string(step.join("runtime.txt")).unwrap();
        assert!(
            runtime.len() == "00:00:01.234".len() && runtime.starts_with("00:00:0"),
            "{}: {runtime}",
            step.display()
        );
    }
    assert!(logged("SUCCESS", "Flow complete."), "{}", describe(&ok));
    assert!(
        lines.iter().any(|line| line.starts_with(
            "Classic - Stage 5 - GDSII Stream Out (KLayout) ━━━━━━━━━━━━━━━━━━━━ 5/5 0:00:0"
        )),
        "{}",
        describe(&ok)
    );
    assert_eq!(
        fs::read_to_string(run_dir.join("flow.log")).unwrap(),
        ok.stdout,
        "flow.log holds what was printed"
    );
    let resolved: serde_json::Value =
        serde_json::from_slice(&fs::read(run_dir.join("resolved.json")).unwrap()).unwrap();
    assert_eq!(
        resolved,
        serde_json::json!({"DESIGN_NAME": "counter", "PDK": "gf180mcuD"})
    );
    let metrics: serde_json::Value =
        serde_json::from_slice(&fs::read(run_dir.join("final/metrics.json")).unwrap()).unwrap();
    assert!(metrics.is_object(), "{metrics}");
    let gds = run_dir.join("final/gds/counter.gds");
    let layout = layout::inspect(fs::File::open(&gds).unwrap())
        .unwrap_or_else(|e| panic!("{}: {e}", gds.display()));
    assert_eq!(layout.format, LayoutFormat::Gds);
    assert_eq!(layout.cells, ["counter"]);
    assert_eq!(layout.top_cells, ["counter"]);
    assert!(layout.dbu_is(0.001), "{}", layout.dbu_microns);

    // Synthesis fails for a design named *fail*: flow.log is written, final/ is not. The YAML
    // config in a subfolder makes that subfolder the design folder.
    let failed = run(
        project.path(),
        pdk.path(),
        "ro",
        &[
            "python3",
            "-m",
            "librelane",
            "--run-tag=RUN_F",
            "--manual-pdk",
            "--pdk-root",
            "/pdk",
            "/project/sub/config.yaml",
        ],
    );
    // A step that fails is a FlowError: exit code 2.
    assert_eq!(failed.code, 2, "{}", describe(&failed));
    assert!(
        failed.stdout.contains("rtl/counter_fail.v:3: syntax error"),
        "{}",
        describe(&failed)
    );
    let failed_lines: Vec<&str> = failed.stdout.lines().collect();
    let at = failed_lines
        .iter()
        .position(|l| {
            l.ends_with("ERROR    The following error was encountered while running the flow:")
        })
        .unwrap_or_else(|| panic!("no flow error: {}", describe(&failed)));
    assert!(
        failed_lines[at + 1]
            .trim_start()
            .starts_with("Synthesis: subprocess (1, "),
        "{}",
        describe(&failed)
    );
    assert!(
        failed_lines[at + 2].ends_with("ERROR    LibreLane will now quit."),
        "{}",
        describe(&failed)
    );
    let failed_dir = failed.project.join("sub/runs/RUN_F");
    let flow_log = fs::read_to_string(failed_dir.join("flow.log")).unwrap();
    assert!(flow_log.contains("ERROR    "), "{flow_log}");
    assert!(failed_dir.join("02-yosys-synthesis").is_dir());
    assert!(!failed_dir.join("03-openroad-floorplan").exists());
    assert!(!failed_dir.join("final").exists());

    // A checker's error is deferred: the flow ends, final/ (with the GDS) is written, then it
    // fails with exit code 2.
    let deferred = run(
        project.path(),
        pdk.path(),
        "ro",
        &[
            "python3",
            "-m",
            "librelane",
            "--run-tag",
            "RUN_D",
            "--manual-pdk",
            "/project/drc/config.json",
        ],
    );
    assert_eq!(deferred.code, 2, "{}", describe(&deferred));
    let deferred_lines: Vec<&str> = deferred.stdout.lines().collect();
    assert!(
        deferred_lines
            .iter()
            .any(|l| l.ends_with("ERROR    3 KLayout DRC errors found. - deferred")),
        "{}",
        describe(&deferred)
    );
    let at = deferred_lines
        .iter()
        .position(|l| {
            l.ends_with("ERROR    The following error was encountered while running the flow:")
        })
        .unwrap_or_else(|| panic!("no flow error: {}", describe(&deferred)));
    assert_eq!(
        deferred_lines[at + 1..at + 3]
            .iter()
            .map(|l| l.trim())
            .collect::<Vec<_>>(),
        [
            "One or more deferred errors were encountered:",
            "3 KLayout DRC errors found."
        ],
        "{}",
        describe(&deferred)
    );
    let deferred_dir = deferred.project.join("drc/runs/RUN_D");
    assert!(
        deferred_dir
            .join("07-checker-klayoutdrc/state_out.json")
            .is_file()
    );
    let gds = deferred_dir.join("final/gds/counter_drc.gds");
    let layout = layout::inspect(fs::File::open(&gds).unwrap())
        .unwrap_or_else(|e| panic!("{}: {e}", gds.display()));
    assert_eq!(layout.top_cells, ["counter_drc"]);
    let metrics: serde_json::Value =
        serde_json::from_slice(&fs::read(deferred_dir.join("final/metrics.json")).unwrap())
            .unwrap();
    assert_eq!(metrics["klayout__drc_error__count"], 3, "{metrics}");

    // A missing PDK is not a flow error: exit code 1, as is a download (no --manual-pdk),
    // which cannot work without a network.
    for (what, args) in [
        (
            "a PDK that is not there",
            &["--pdk", "sky130A", "--manual-pdk"][..],
        ),
        ("a download", &[][..]),
    ] {
        let mut command = vec!["python3", "-m", "librelane", "--run-tag", "RUN_P"];
        command.extend_from_slice(args);
        command.push("/project/config.json");
        let missing = run(project.path(), pdk.path(), "ro", &command);
        assert_eq!(missing.code, 1, "{what}: {}", describe(&missing));
        assert!(
            missing
                .stdout
                .ends_with("ERROR    LibreLane will now quit.\n"),
            "{what}: {}",
            describe(&missing)
        );
        assert!(!missing.project.join("runs").exists(), "{what}");
    }

    // A PDK mounted read-write is refused.
    let writable_pdk = pdk_root(true);
    let writable = run(
        project.path(),
        writable_pdk.path(),
        "rw",
        &[
            "python3",
            "-m",
            "librelane",
            "--run-tag",
            "RUN_W",
            "--manual-pdk",
            "/project/config.json",
        ],
    );
    assert_eq!(writable.code, 1, "{}", describe(&writable));
    assert!(
        writable
            .stdout
            .contains("PDK_ROOT is writable: it must be mounted read-only"),
        "{}",
        describe(&writable)
    );
    assert!(!writable.project.join("runs").exists());
    assert!(!writable_pdk.path().join("gf180mcuD/.write-test").exists());

    // A config that does not exist is a usage error, as click reports it.
    let missing = run(
        project.path(),
        pdk.path(),
        "ro",
        &[
            "python3",
            "-m",
            "librelane",
            "--run-tag",
            "RUN_M",
            "--manual-pdk",
            "/project/missing.json",
        ],
    );
    assert_eq!(missing.code, 2, "{}", describe(&missing));
    assert!(
        missing.stderr.starts_with(
            "Usage: python3 -m librelane [OPTIONS] [CONFIG_FILES]...\n"
        ) && missing.stderr.contains(
            "Error: Invalid value for '[CONFIG_FILES]...': Path '/project/missing.json' does not exist."
        ),
        "{}",
        describe(&missing)
    );
}
