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

#[test]
fn stand_in_image_runs() {
    docker_required();
    let dir = tempfile::tempdir().unwrap();
    let design = gds_bytes("chip_top");

    let (container, pass) = run_standin("chip_top", &design, dir.path());
    assert_eq!(pass.exit_code, 0, "{}\n{}", pass.stdout, pass.stderr);
    assert!(
        pass.stdout
            .contains("--top chip_top --id TEST0001 --slot 1x1"),
        "the log shows the arguments:\n{}",
        pass.stdout
    );
    let got = dir.path().join("pass");
    fs::create_dir(&got).unwrap();
    copy_out(&container, "/output/design.gds", &got.join("design.gds"));
    copy_out(&container, "/work", &got.join("work"));
    assert_eq!(fs::read(got.join("design.gds")).unwrap(), design);
    for file in [
        "runs/RUN_1/01-checker/state_out.json",
        "runs/RUN_1/02-klayout-drc/report.txt",
    ] {
        assert!(got.join("work").join(file).is_file(), "no /work/{file}");
    }
    assert_removed(container);

    let (container, fail) = run_standin("chip_fail", &gds_bytes("chip_fail"), dir.path());
    assert_eq!(fail.exit_code, 1, "{}\n{}", fail.stdout, fail.stderr);
    assert!(
        fail.stderr
            .contains("[ERROR] DRC: 3 violations in chip_fail"),
        "{}",
        fail.stderr
    );
    let got = dir.path().join("fail");
    fs::create_dir(&got).unwrap();
    copy_out(&container, "/work", &got.join("work"));
    let runs: Vec<_> = fs::read_dir(got.join("work/runs"))
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .collect();
    assert_eq!(runs.len(), 1, "{runs:?}");
    assert!(runs[0].join("01-klayout-drc/report.txt").is_file());
    let output = docker(&[
        "cp",
        &format!("{}:/output/design.gds", container.name),
        got.join("design.gds").to_str().unwrap(),
    ]);
    assert!(!output.status.success(), "a failed check writes no output");
    assert_removed(container);
}
