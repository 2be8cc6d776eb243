//! The stand-in precheck image on its own, driven the way the server drives it: files in and out
//! through the archive API (`docker cp`), no bind mounts, no network, all capabilities dropped.

use std::fs;
use std::path::Path;

use crate::support::{docker, docker_ok, docker_required, gds_bytes, precheck_image};

const SMOKE_LABEL: &str = "precheck-server.test=smoke";

/// Removes its container however the test ends.
struct Container {
    name: String,
}

impl Drop for Container {
    fn drop(&mut self) {
        let _ = docker(&["rm", "-f", "-v", &self.name]);
    }
}

struct Finished {
    exit_code: i64,
    stdout: String,
    stderr: String,
}

/// Creates a container of the stand-in image for `top`, copies `design.gds` and the empty
/// `/output` and `/work` folders in, and runs it to the end. The container stays for inspection.
fn run_standin(top: &str, design: &[u8], staging: &Path) -> (Container, Finished) {
    let name = format!("precheck-smoke-{}", uuid::Uuid::new_v4().simple());
    docker_ok(&[
        "create",
        "--name",
        &name,
        "--label",
        SMOKE_LABEL,
        "--network",
        "none",
        "--cap-drop",
        "ALL",
        "--security-opt",
        "no-new-privileges",
        "--pids-limit",
        "64",
        "--memory",
        "256m",
        precheck_image(),
        "python3",
        "precheck.py",
        "--input",
        "/input/design.gds",
        "--output",
        "/output/design.gds",
        "--top",
        top,
        "--id",
        "TEST0001",
        "--slot",
        "1x1",
        "--dir",
        "/work",
    ]);
    let container = Container { name };

    let stage = staging.join(top);
    for folder in ["input", "output", "work"] {
        fs::create_dir_all(stage.join(folder)).unwrap();
    }
    fs::write(stage.join("input/design.gds"), design).unwrap();
    for folder in ["input", "output", "work"] {
        let from = stage.join(folder);
        let to = format!("{}:/{folder}", container.name);
        docker_ok(&["cp", from.to_str().unwrap(), &to]);
    }

    let out = docker(&["start", "-a", &container.name]);
    let exit_code: i64 = docker_ok(&[
        "inspect",
        "--format",
        "{{.State.ExitCode}}",
        &container.name,
    ])
    .parse()
    .unwrap();
    assert_eq!(
        out.status.code().map(i64::from),
        Some(exit_code),
        "`docker start -a` reports the container's exit code"
    );
    let finished = Finished {
        exit_code,
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    };
    (container, finished)
}

fn copy_out(container: &Container, from: &str, to: &Path) {
    docker_ok(&[
        "cp",
        &format!("{}:{from}", container.name),
        to.to_str().unwrap(),
    ]);
}

fn assert_removed(container: Container) {
    let name = container.name.clone();
    drop(container);
    let left = docker_ok(&[
        "ps",
        "-aq",
        "--filter",
        &format!("label={SMOKE_LABEL}"),
        "--filter",
        &format!("name={name}"),
    ]);
    assert_eq!(left, "", "container {name} is still there");
}

/// The one run folder under a copied-out `/work/runs/`, named as the real flow names it:
/// `RUN_<YYYY-MM-DD_HH-MM-SS>`.
fn the_run(work: &Path) -> std::path::PathBuf {
    let runs: Vec<_> = fs::read_dir(work.join("runs"))
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .collect();
    assert_eq!(runs.len(), 1, "{runs:?}");
    let name = runs[0].file_name().unwrap().to_str().unwrap().to_string();
    let digits = name
        .strip_prefix("RUN_")
        .unwrap_or_default()
        .replace(['-', '_'], "");
    assert!(
        name.len() == "RUN_2026-11-24_19-22-45".len()
            && digits.len() == 14
            && digits.bytes().all(|b| b.is_ascii_digit()),
        "run folder {name}"
    );
    runs[0].clone()
}

/// The real flow's steps, in order, as their folders are named.
const STEP_FOLDERS: [&str; 16] = [
    "01-klayout-readlayout",
    "02-klayout-checktoplevel",
    "03-klayout-checksize",
    "04-klayout-generateid",
    "05-klayout-render",
    "06-klayout-density",
    "07-checker-klayoutdensity",
    "08-klayout-zeroareapolygons",
    "09-checker-klayoutzeroareapolygons",
    "10-klayout-antenna",
    "11-checker-klayoutantenna",
    "12-magic-drc",
    "13-checker-magicdrc",
    "14-klayout-drc",
    "15-checker-klayoutdrc",
    "16-klayout-writelayout",
];

/// Asserts that a finished step folder holds what LibreLane writes: its states and its runtime
/// as hours:minutes:seconds.milliseconds.
fn assert_finished_step(step: &Path) {
    for file in ["state_in.json", "config.json", "state_out.json"] {
        let text = fs::read_to_string(step.join(file))
            .unwrap_or_else(|e| panic!("{}/{file}: {e}", step.display()));
        serde_json::from_str::<serde_json::Value>(&text)
            .unwrap_or_else(|e| panic!("{}/{file}: {e}: {text}", step.display()));
    }
    let runtime = fs::read_to_string(step.join("runtime.txt")).unwrap();
    let shape: String = runtime
        .chars()
        .map(|c| if c.is_ascii_digit() { '0' } else { c })
        .collect();
    assert_eq!(shape, "00:00:00.000", "{}: {runtime}", step.display());
}

#[test]
fn stand_in_image_runs() {
    docker_required();
    let dir = tempfile::tempdir().unwrap();
    let design = gds_bytes("chip_top");

    let (container, pass) = run_standin("chip_top", &design, dir.path());
    assert_eq!(pass.exit_code, 0, "{}\n{}", pass.stdout, pass.stderr);
    assert!(
        pass.stdout.starts_with(
            "None\nPDK_ROOT = /workspace/gf180mcu\nPDK = gf180mcuD\ntop_cell: chip_top\n\
             die_id: TEST0001\ncob: False\nslot: 1x1\nthreads: max\nworkers: 1\n"
        ),
        "the real precheck's first lines, then its arguments:\n{}",
        pass.stdout
    );
    assert!(
        pass.stdout.ends_with("Precheck successfully completed.\n"),
        "{}",
        pass.stdout
    );
    assert!(
        pass.stdout.contains("] SUCCESS  Flow complete.\n"),
        "{}",
        pass.stdout
    );
    let got = dir.path().join("pass");
    fs::create_dir(&got).unwrap();
    copy_out(&container, "/output/design.gds", &got.join("design.gds"));
    copy_out(&container, "/work", &got.join("work"));
    assert_eq!(fs::read(got.join("design.gds")).unwrap(), design);
    let run = the_run(&got.join("work"));
    for step in STEP_FOLDERS {
        assert_finished_step(&run.join(step));
    }
    for file in [
        "flow.log",
        "resolved.json",
        "final/gds/chip_top.gds",
        "final/metrics.json",
    ] {
        assert!(run.join(file).is_file(), "no {file} in {}", run.display());
    }
    assert_removed(container);

    // A check that fails is a deferred checker error: the layout is written first.
    let failing = gds_bytes("chip_fail");
    let (container, fail) = run_standin("chip_fail", &failing, dir.path());
    assert_eq!(fail.exit_code, 1, "{}\n{}", fail.stdout, fail.stderr);
    assert!(
        fail.stdout
            .contains("] ERROR    3 KLayout DRC errors found. - deferred\n"),
        "the checker's error, as LibreLane logs it:\n{}",
        fail.stdout
    );
    assert!(
        fail.stdout.ends_with(
            "Error: The precheck failed with the following exception: \n\
             One or more deferred errors were encountered:\n3 KLayout DRC errors found.\n"
        ),
        "{}",
        fail.stdout
    );
    let got = dir.path().join("fail");
    fs::create_dir(&got).unwrap();
    copy_out(&container, "/work", &got.join("work"));
    copy_out(&container, "/output/design.gds", &got.join("design.gds"));
    assert_eq!(
        fs::read(got.join("design.gds")).unwrap(),
        failing,
        "a failed check still writes the output"
    );
    let run = the_run(&got.join("work"));
    for step in STEP_FOLDERS {
        assert_finished_step(&run.join(step));
    }
    let report = fs::read_to_string(run.join("14-klayout-drc/violations.lyrdb")).unwrap();
    assert_eq!(report.matches("<item>").count(), 3, "{report}");
    assert!(run.join("final/gds/chip_fail.gds").is_file());
    assert!(
        fs::read_to_string(run.join("error.log"))
            .unwrap()
            .contains("3 KLayout DRC errors found. - deferred")
    );
    assert_removed(container);

    // A tool killed by a signal stops the flow: exit 1 as well, but no checker error and no output.
    let (container, crash) = run_standin("chip_crash", &gds_bytes("chip_crash"), dir.path());
    assert_eq!(crash.exit_code, 1, "{}\n{}", crash.stdout, crash.stderr);
    assert!(
        crash.stdout.ends_with(
            "Error: The precheck failed with the following exception: \nDRC: Interrupted (SIGSEGV)\n"
        ),
        "{}",
        crash.stdout
    );
    assert!(!crash.stdout.contains("deferred"), "{}", crash.stdout);
    let got = dir.path().join("crash");
    fs::create_dir(&got).unwrap();
    copy_out(&container, "/work", &got.join("work"));
    let run = the_run(&got.join("work"));
    assert_finished_step(&run.join("11-checker-klayoutantenna"));
    assert!(run.join("12-magic-drc").is_dir());
    assert!(!run.join("12-magic-drc/state_out.json").exists());
    assert!(!run.join("13-checker-magicdrc").exists());
    assert!(!run.join("final").exists());
    let output = docker(&[
        "cp",
        &format!("{}:/output/design.gds", container.name),
        got.join("design.gds").to_str().unwrap(),
    ]);
    assert!(!output.status.success(), "a crashed flow writes no output");
    assert_removed(container);
}

/// Runs the stand-in once with `docker run --rm --network none`, the layout given on stdin
/// (written to `/in/design.gds`, `/out` created), and each command line in turn in the same
/// container; returns the exit code and the combined output of each.
fn invocations(design: &[u8], env: &[&str], command_lines: &[&[&str]]) -> Vec<(i32, String)> {
    let name = format!("precheck-smoke-{}", uuid::Uuid::new_v4().simple());
    let _container = Container { name: name.clone() };
    let mut script = String::from("mkdir -p /in /out && cat >/in/design.gds || exit 99\n");
    for args in command_lines {
        // The arguments are plain words: no quoting needed.
        assert!(args.iter().all(|a| {
            !a.is_empty()
                && a.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_=./".contains(&b))
        }));
        script.push_str(&format!(
            "python3 precheck.py {} 2>&1; echo \"=== exit $?\"\n",
            args.join(" ")
        ));
    }
    let mut cmd = std::process::Command::new("docker");
    cmd.args([
        "run",
        "--rm",
        "-i",
        "--name",
        &name,
        "--label",
        SMOKE_LABEL,
        "--network",
        "none",
    ]);
    for var in env {
        cmd.args(["-e", var]);
    }
    cmd.args([precheck_image(), "sh", "-c", &script]);
    let mut child = cmd
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run docker");
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(design).unwrap();
    }
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{}\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let mut results = Vec::new();
    let mut rest = stdout.as_str();
    while let Some(at) = rest.find("=== exit ") {
        let (text, after) = rest.split_at(at);
        let (code, next) = after["=== exit ".len()..].split_once('\n').unwrap();
        results.push((code.parse().unwrap(), text.to_string()));
        rest = next;
    }
    assert_eq!(results.len(), command_lines.len(), "{stdout}");
    results
}

/// Runs one command line (see [`invocations`]) and checks its exit code and that its output
/// holds every one of `expected`.
fn check(args: &[&str], expected_code: i32, expected: &[&str]) {
    check_with(&[], &[args], &[(expected_code, expected)]);
}

fn check_with(env: &[&str], command_lines: &[&[&str]], expected: &[(i32, &[&str])]) {
    let results = invocations(&gds_bytes("chip_top"), env, command_lines);
    for ((args, (code, output)), (expected_code, needles)) in
        command_lines.iter().zip(&results).zip(expected)
    {
        assert_eq!(code, expected_code, "{args:?}:\n{output}");
        for needle in *needles {
            assert!(
                output.contains(needle),
                "{args:?}: no {needle:?} in:\n{output}"
            );
        }
    }
}

#[test]
fn stand_in_takes_every_flag_of_the_real_precheck() {
    docker_required();
    let input = "--input=/in/design.gds";
    // Every flag, with its value as a separate argument.
    check(
        &[
            "--input",
            "/in/design.gds",
            "--output",
            "/out/checked.gds",
            "--top",
            "chip_top",
            "--id",
            "ABCD1234",
            "--cob",
            "--dir",
            "/work",
            "--threads",
            "2",
            "--workers",
            "max",
            "--slot",
            "0p5x1",
            "--run-tag",
            "T1",
            "--from",
            "KLayout.ReadLayout",
            "--to",
            "KLayout.WriteLayout",
            "--skip",
            "KLayout.Render",
            "Checker.KLayoutDensity",
        ],
        0,
        &[
            "top_cell: chip_top\ndie_id: ABCD1234\ncob: True\nslot: 0p5x1\nthreads: 2\nworkers: max\n",
            "Starting a new run of the 'PrecheckFlow' flow with the tag 'T1'.",
            // --cob checks the pad mask instead of the size.
            "Running 'KLayout.CheckPadMask' at '../work/runs/T1/03-klayout-checkpadmask'…",
            "INFO     Skipping step 'Render Image (w/ KLayout)'…",
            "INFO     Skipping step 'KLayout Density Checker'…",
            "Running 'KLayout.WriteLayout' at '../work/runs/T1/14-klayout-writelayout'…",
            "Wrote '/out/checked.gds'",
            "Precheck successfully completed.",
        ],
    );
    // --flag=value.
    check(
        &[
            input,
            "--output=/out/o.gds",
            "--top=chip_top",
            "--id=ABCD1234",
            "--dir=/work",
            "--threads=max",
            "--workers=3",
            "--slot=1x0p5",
            "--run-tag=T2",
            "--skip=KLayout.Render",
            "--to=KLayout.CheckSize",
        ],
        0,
        &[
            "slot: 1x0p5\nthreads: max\nworkers: 3\n",
            "Running 'KLayout.CheckSize' at '../work/runs/T2/03-klayout-checksize'…",
            "INFO     Skipping step 'Write the Layout'…",
        ],
    );
    // The defaults: the top cell from the file's name, the run in the working directory, no
    // output.
    check(
        &[input],
        0,
        &[
            "top_cell: design\ndie_id: FFFFFFFF\ncob: False\nslot: 1x1\nthreads: max\nworkers: 1\n",
            "Running 'KLayout.ReadLayout' at 'runs/RUN_",
            "No --output: the layout stays in the run folder.",
        ],
    );
    check(
        &["--help"],
        0,
        &[
            "usage: precheck.py [-h] --input INPUT",
            "--with-initial-state",
        ],
    );
    // argparse's errors are exit 2; a die id argparse does not check fails in the ID step: 1.
    let usage_error = "usage: precheck.py [-h] --input INPUT [--output OUTPUT]";
    check(
        &["--top", "chip_top"],
        2,
        &[
            usage_error,
            "precheck.py: error: the following arguments are required: --input",
        ],
    );
    check(
        &[input, "--slot", "2x2"],
        2,
        &[
            "precheck.py: error: argument --slot: invalid choice: '2x2' (choose from '1x1', '0p5x1', '1x0p5', '0p5x0p5')",
        ],
    );
    check(
        &[input, "--inp", "x"],
        2,
        &["precheck.py: error: unrecognized arguments: --inp x"],
    );
    check(
        &[input, "--top"],
        2,
        &["error: argument --top: expected one argument"],
    );
    check(
        &[input, "--skip"],
        2,
        &["error: argument --skip: expected at least one argument"],
    );
    check(
        &[input, "--cob=yes"],
        2,
        &["error: argument --cob: ignored explicit argument 'yes'"],
    );
    check(
        &[input, "--id", "ABC", "--output", "/out/o.gds"],
        1,
        &[
            "[Error]: The ID must be 8 characters long, not 3: 'ABC'.",
            "Error: The precheck failed with the following exception: \nGenerate ID: subprocess (1, ['python3', '/workspace/scripts/klayout/generate_id.py'",
        ],
    );
    check(
        &[input, "--from", "Nope"],
        1,
        &["Failed to process start step 'Nope'"],
    );
    // --last-run and --with-initial-state go on from an earlier run.
    check_with(
        &[],
        &[
            &[
                input,
                "--dir",
                "/work",
                "--run-tag",
                "R",
                "--to",
                "KLayout.CheckTopLevel",
            ],
            &[
                input,
                "--dir",
                "/work",
                "--last-run",
                "1",
                "--from",
                "KLayout.CheckSize",
                "--to",
                "KLayout.CheckSize",
            ],
            &[
                input,
                "--dir",
                "/work",
                "--run-tag",
                "S",
                "--with-initial-state",
                "/work/runs/R/02-klayout-checktoplevel/state_out.json",
                "--from",
                "KLayout.GenerateID",
                "--to",
                "KLayout.GenerateID",
            ],
            &[input, "--with-initial-state", "/work/none.json"],
        ],
        &[
            (
                0,
                &["Running 'KLayout.CheckTopLevel' at '../work/runs/R/02-klayout-checktoplevel'…"],
            ),
            (
                0,
                &[
                    "Using existing run at '../work/runs/R' with the 'PrecheckFlow' flow.",
                    "Running 'KLayout.CheckSize' at '../work/runs/R/03-klayout-checksize'…",
                ],
            ),
            (
                0,
                &["Running 'KLayout.GenerateID' at '../work/runs/S/01-klayout-generateid'…"],
            ),
            (
                1,
                &["FileNotFoundError: [Errno 2] No such file or directory: '/work/none.json'"],
            ),
        ],
    );
    // The precheck runs on gf180mcuD only.
    check_with(
        &["PDK=sky130A"],
        &[&[input]],
        &[(
            1,
            &["None\nError: Precheck is only supported for gf180mcuD. PDK = sky130A\n"],
        )],
    );
}
