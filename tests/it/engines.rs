//! The second Docker engine the tests of several engines start (issue 16): it runs the stand-in
//! image, its containers outlive a stop of the daemon, and dropping it leaves nothing behind.

use std::path::Path;
use std::process::Command;

use crate::support::{SecondEngine, docker_ok, mounts_under, precheck_image, processes_naming};

/// The label the test puts on its container, valued with the engine's folder name.
const TEST_LABEL: &str = "precheck-server-test.engine";

#[test]
fn a_second_engine_runs_the_stand_in_and_keeps_its_container_across_a_restart() {
    let image = precheck_image();
    // The host's network interfaces (the main engine's `docker0` among them) are the same after.
    let interfaces = || {
        let mut names: Vec<String> = std::fs::read_dir("/sys/class/net")
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| !n.starts_with("veth"))
            .collect();
        names.sort();
        names
    };
    let before = interfaces();
    let mut engine = SecondEngine::start();
    let dir = engine.dir().to_path_buf();
    let label = format!("{TEST_LABEL}={}", engine.name());
    engine.load(image);

    let id = engine.docker_ok(&[
        "run",
        "-d",
        "--network",
        "none",
        "--label",
        &label,
        image,
        "sleep",
        "600",
    ]);
    let pid = engine.docker_ok(&["inspect", "--format", "{{.State.Pid}}", &id]);
    assert!(
        pid.parse::<u32>().is_ok_and(|p| p > 0),
        "the container's pid: {pid:?}"
    );
    let daemon = engine.pid().expect("the daemon runs");

    engine.stop();
    assert!(
        !Path::new(&format!("/proc/{daemon}")).exists(),
        "the daemon {daemon} is still there after the stop"
    );
    assert!(
        !engine.docker(&["info"]).status.success(),
        "the stopped engine still answers"
    );
    assert!(
        Path::new(&format!("/proc/{pid}")).exists(),
        "the container's process {pid} died with the daemon (no live-restore?)"
    );

    engine.start_again();
    assert_eq!(
        engine.docker_ok(&[
            "inspect",
            "--format",
            "{{.State.Status}} {{.State.Pid}}",
            &id
        ]),
        format!("running {pid}"),
        "the container after the engine's restart"
    );
    assert_eq!(
        docker_ok(&["ps", "-aq", "--filter", &format!("label={label}")]),
        "",
        "the main engine has a container of the test"
    );
    engine.docker_ok(&["rm", "-f", &id]);
    assert!(
        !Path::new(&format!("/proc/{pid}")).exists(),
        "the container's process {pid} outlived its removal"
    );

    drop(engine);
    let ours: Vec<String> = ps_lines()
        .into_iter()
        .filter(|line| line.contains(dir.to_string_lossy().as_ref()))
        .collect();
    assert!(
        ours.is_empty(),
        "processes of the engine are left: {ours:?}"
    );
    assert!(
        processes_naming(&dir).is_empty(),
        "processes naming {} are left",
        dir.display()
    );
    assert!(
        mounts_under(&dir).is_empty(),
        "mounts are left under {}: {:?}",
        dir.display(),
        mounts_under(&dir)
    );
    assert!(
        !dir.exists(),
        "the engine's folder {} is left",
        dir.display()
    );
    let name = dir.file_name().expect("a folder name");
    let cgroups: Vec<_> = std::fs::read_dir("/sys/fs/cgroup")
        .expect("read /sys/fs/cgroup")
        .flatten()
        .map(|h| h.path().join(name))
        .filter(|p| p.exists())
        .collect();
    assert!(cgroups.is_empty(), "cgroups are left: {cgroups:?}");
    assert_eq!(
        interfaces(),
        before,
        "the second engine changed the host's network interfaces"
    );
}

/// `ps -eo pid,args`, one line a process.
fn ps_lines() -> Vec<String> {
    let out = Command::new("ps")
        .args(["-eo", "pid,args"])
        .output()
        .expect("run `ps`");
    assert!(out.status.success(), "`ps` failed: {}", out.status);
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}
