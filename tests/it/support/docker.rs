//! Docker helpers: the labels the server puts on its containers, the check that an engine
//! answers, `docker ARGS` and a description of containers for failure messages.

use std::process::{Command, Output};
use std::sync::OnceLock;

/// The label key the server puts on every container it creates, valued with its storage path.
pub const STORAGE_LABEL: &str = "precheck-server.storage";

/// The label the server puts on its image self-test containers.
pub const PROBE_LABEL: &str = "precheck-server.probe";

/// The label key the server puts on every container it creates, valued with the run id.
pub const RUN_ID_LABEL: &str = "precheck-server.run-id";

/// Panics unless a Docker engine answers `docker info`: tests that need Docker fail without it.
pub fn docker_required() {
    static DOCKER: OnceLock<Result<(), String>> = OnceLock::new();
    let result = DOCKER.get_or_init(|| {
        match Command::new("docker")
            .args(["info", "--format", "{{.ServerVersion}}"])
            .output()
        {
            Ok(out) if out.status.success() => Ok(()),
            Ok(out) => Err(format!(
                "`docker info` failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            )),
            Err(e) => Err(format!("cannot run `docker`: {e}")),
        }
    });
    if let Err(reason) = result {
        panic!(
            "this test needs a reachable Docker engine and does not skip without one: {reason}; \
             start Docker (or set DOCKER_HOST) and run the tests again"
        );
    }
}

/// Runs `docker ARGS`, panicking only if the command cannot be started.
pub fn docker(args: &[&str]) -> Output {
    Command::new("docker")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run `docker {}`: {e}", args.join(" ")))
}

/// Runs `docker ARGS`, panics unless it succeeds, and returns its trimmed stdout.
pub fn docker_ok(args: &[&str]) -> String {
    let out = docker(args);
    assert!(
        out.status.success(),
        "`docker {}` failed ({}): {}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

pub(super) fn describe_containers(ids: &[String]) -> String {
    if ids.is_empty() {
        return String::new();
    }
    let mut args = vec![
        "inspect",
        "--format",
        "{{.Name}} {{.State.Status}} labels={{json .Config.Labels}}",
    ];
    args.extend(ids.iter().map(String::as_str));
    let out = docker(&args);
    let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
    if text.is_empty() {
        ids.join("\n")
    } else {
        text
    }
}
