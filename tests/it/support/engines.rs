//! A second Docker engine of a test's own on this machine ([`SecondEngine`]): a second `dockerd`
//! on its own socket, data root, exec root, pid file and network namespace, with no bridge and no
//! iptables, and with `--live-restore`, so its containers keep running while it is stopped (see
//! `../shared/REAL-PRECHECK.md`). Dropping it leaves nothing: no container, no process, no mount,
//! no folder, no cgroup.

use std::fs::{self, File, OpenOptions};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use super::docker::{docker, docker_ok, docker_required};
use super::wait::POLL_INTERVAL;

/// How long a starting daemon may take until `docker info` answers.
const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// How long a stopping daemon may take after SIGTERM before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(20);

/// The cgroup hierarchies (cgroup v1 here) a daemon's `--cgroup-parent` makes folders in.
const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// A second `dockerd` run by the test, in a folder of its own under `/tmp` (a short path: a unix
/// socket path is at most 108 bytes).
pub struct SecondEngine {
    dir: PathBuf,
    daemon: Option<Child>,
    storage_driver: String,
    /// Whether the daemon has answered once: only then does `Drop` start a stopped one again.
    answered: bool,
}

impl SecondEngine {
    /// Starts a second engine with the main engine's storage driver and waits until it answers;
    /// panics with the daemon's log if it does not within 60 s.
    pub fn start() -> SecondEngine {
        docker_required();
        let storage_driver = docker_ok(&["info", "--format", "{{.Driver}}"]);
        let dir = tempfile::Builder::new()
            .prefix("pse-")
            .tempdir_in("/tmp")
            .expect("create the second engine's folder")
            .keep();
        let dir = dir.canonicalize().expect("canonicalize the engine folder");
        fs::write(dir.join("daemon.json"), "{}").expect("write the engine's daemon.json");
        // From here on a panic drops the engine, which removes what it made.
        let mut engine = SecondEngine {
            dir,
            daemon: None,
            storage_driver,
            answered: false,
        };
        engine.start_again();
        let driver = engine.docker_ok(&["info", "--format", "{{.Driver}}"]);
        assert_eq!(
            driver, engine.storage_driver,
            "the second engine's storage driver differs from the main engine's"
        );
        engine
    }

    /// The engine's address, `unix://<folder>/docker.sock`, as `DOCKER_HOST` or `--host` take it.
    pub fn host(&self) -> String {
        format!("unix://{}", self.dir.join("docker.sock").display())
    }

    /// The engine's folder: socket, pid file, log, data root and exec root.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The name of the folder, unique on this machine: a value for a test's labels.
    pub fn name(&self) -> String {
        self.dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    }

    /// The daemon's pid while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.daemon.as_ref().map(Child::id)
    }

    /// `docker --host HOST ARGS`, panicking only if the command cannot be started.
    pub fn docker(&self, args: &[&str]) -> Output {
        let host = self.host();
        docker(&host_args(&host, args))
    }

    /// `docker --host HOST ARGS`, panicking unless it succeeds; returns its trimmed stdout.
    pub fn docker_ok(&self, args: &[&str]) -> String {
        let host = self.host();
        docker_ok(&host_args(&host, args))
    }

    /// Copies `image` from the main engine into this one (`docker save | docker load`), panicking
    /// with what the commands printed if either fails.
    pub fn load(&self, image: &str) {
        let mut save = Command::new("docker")
            .args(["save", image])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run `docker save`");
        let image_tar = save.stdout.take().expect("the stdout of `docker save`");
        let load = Command::new("docker")
            .args(["--host", &self.host(), "load", "--quiet"])
            .stdin(image_tar)
            .output()
            .expect("run `docker load`");
        let save = save.wait_with_output().expect("wait for `docker save`");
        assert!(
            save.status.success() && load.status.success(),
            "copying {image} into the second engine failed: `docker save` {}: {}; \
             `docker load` {}: {}",
            save.status,
            String::from_utf8_lossy(&save.stderr).trim(),
            load.status,
            String::from_utf8_lossy(&load.stderr).trim()
        );
    }

    /// Stops the daemon: SIGTERM by its pid, SIGKILL if it has not exited after 20 s. Its
    /// containers keep running (live-restore).
    pub fn stop(&mut self) {
        let Some(mut daemon) = self.daemon.take() else {
            return;
        };
        signal("TERM", daemon.id());
        let deadline = Instant::now() + STOP_TIMEOUT;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = daemon.try_wait() {
                return;
            }
            thread::sleep(POLL_INTERVAL);
        }
        let _ = daemon.kill();
        let _ = daemon.wait();
    }

    /// Starts the daemon again on the same folders with the same flags and waits until it
    /// answers, panicking with its log if it does not within 60 s.
    pub fn start_again(&mut self) {
        if let Err(reason) = self.spawn_and_wait() {
            panic!("{reason}");
        }
    }

    fn spawn_and_wait(&mut self) -> Result<(), String> {
        assert!(
            self.daemon.is_none(),
            "the second engine is already running"
        );
        let log_path = self.log_path();
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(|e| format!("open {}: {e}", log_path.display()))?;
        let log_err = log
            .try_clone()
            .map_err(|e| format!("open {}: {e}", log_path.display()))?;
        let dir = &self.dir;
        // In a network namespace of its own: a daemon started with `--bridge=none` deletes the
        // host's `docker0`, the main engine's default bridge (`docker build` needs it). Its
        // containers have no network anyway, and its socket is a file, reached from any
        // namespace. `unshare` execs the daemon in place, so the child's pid is the daemon's.
        let daemon = Command::new("/usr/bin/unshare")
            .args(["--net", "--", "/usr/sbin/dockerd"])
            .arg("--host")
            .arg(self.host())
            .arg("--data-root")
            .arg(dir.join("data"))
            .arg("--exec-root")
            .arg(dir.join("exec"))
            .arg("--pidfile")
            .arg(dir.join("docker.pid"))
            .arg("--config-file")
            .arg(dir.join("daemon.json"))
            .args(["--iptables=false", "--ip-masq=false", "--bridge=none"])
            .arg("--live-restore")
            .args(["--storage-driver", &self.storage_driver])
            .args(["--cgroup-parent", &format!("/{}", self.name())])
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .spawn()
            .map_err(|e| format!("cannot run unshare --net /usr/sbin/dockerd: {e}"))?;
        self.daemon = Some(daemon);
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if self
                .docker(&["info", "--format", "{{.Driver}}"])
                .status
                .success()
            {
                self.answered = true;
                return Ok(());
            }
            let exited = match self.daemon.as_mut().map(Child::try_wait) {
                Some(Ok(Some(status))) => Some(status.to_string()),
                _ => None,
            };
            if exited.is_some() || Instant::now() >= deadline {
                let what = match exited {
                    Some(status) => format!("exited ({status})"),
                    None => format!("did not answer `docker info` within {READY_TIMEOUT:?}"),
                };
                self.stop();
                return Err(format!(
                    "the second Docker engine {what}; its log {}:\n{}",
                    log_path.display(),
                    self.log_tail()
                ));
            }
            thread::sleep(POLL_INTERVAL);
        }
    }

    fn log_path(&self) -> PathBuf {
        self.dir.join("dockerd.log")
    }

    /// The last 4 KiB of the daemon's log, for failure messages (the folder goes with the engine).
    fn log_tail(&self) -> String {
        let mut text = String::new();
        if let Ok(mut file) = File::open(self.log_path()) {
            let _ = file.read_to_string(&mut text);
        }
        let start = text.len().saturating_sub(4096);
        let start = (start..text.len())
            .find(|&i| text.is_char_boundary(i))
            .unwrap_or(0);
        text[start..].to_string()
    }

    /// The cgroup folders `--cgroup-parent` made, deepest first.
    fn cgroup_dirs(&self) -> Vec<PathBuf> {
        let name = self.name();
        let mut dirs = Vec::new();
        for hierarchy in fs::read_dir(CGROUP_ROOT).into_iter().flatten().flatten() {
            let parent = hierarchy.path().join(&name);
            if parent.is_dir() {
                collect_dirs(&parent, &mut dirs);
            }
        }
        dirs.sort_by_key(|d| std::cmp::Reverse(d.components().count()));
        dirs
    }
}

impl Drop for SecondEngine {
    /// Removes every container on the engine (starting it again if it is stopped, so its
    /// containers are removed the ordinary way), stops it, and removes what is left: processes
    /// still naming its folder, the processes in its cgroups, mounts under its folder, the folder
    /// and the cgroups. Never panics.
    fn drop(&mut self) {
        if self.daemon.is_none() && self.answered {
            let _ = self.spawn_and_wait();
        }
        if self.daemon.is_some() {
            let ids = self.docker(&["ps", "-aq"]);
            let ids = String::from_utf8_lossy(&ids.stdout).into_owned();
            let ids: Vec<&str> = ids.split_whitespace().collect();
            if !ids.is_empty() {
                let mut args = vec!["rm", "-f"];
                args.extend(ids);
                let _ = self.docker(&args);
            }
        }
        self.stop();
        // A daemon that could not remove its containers leaves their shims and fuse mounts.
        for pid in self.cgroup_dirs().iter().flat_map(|d| pids_in_cgroup(d)) {
            signal("KILL", pid);
        }
        for pid in processes_naming(&self.dir) {
            signal("KILL", pid);
        }
        for _ in 0..5 {
            let mounts = mounts_under(&self.dir);
            if mounts.is_empty() {
                break;
            }
            for mount in mounts {
                let umounted = Command::new("umount")
                    .arg(&mount)
                    .stderr(Stdio::null())
                    .status()
                    .is_ok_and(|s| s.success());
                if !umounted {
                    let _ = Command::new("umount")
                        .arg("-l")
                        .arg(&mount)
                        .stderr(Stdio::null())
                        .status();
                }
            }
            thread::sleep(POLL_INTERVAL);
        }
        let _ = fs::remove_dir_all(&self.dir);
        for dir in self.cgroup_dirs() {
            let _ = fs::remove_dir(dir);
        }
    }
}

/// The mount points at or under `dir` (from `/proc/self/mountinfo`), deepest first.
pub fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    let info = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut mounts: Vec<PathBuf> = info
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(|point| PathBuf::from(unescape_mountinfo(point)))
        .filter(|point| point.starts_with(dir))
        .collect();
    mounts.sort_by_key(|m| std::cmp::Reverse(m.components().count()));
    mounts.dedup();
    mounts
}

/// The pids of the processes whose command line names `dir` (`dockerd`, `containerd`, shims and
/// `fuse-overlayfs` of an engine all do), the caller's own excepted.
pub fn processes_naming(dir: &Path) -> Vec<u32> {
    let needle = dir.to_string_lossy().into_owned();
    let own = std::process::id();
    fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| pid != own)
        .filter(|pid| {
            fs::read(format!("/proc/{pid}/cmdline"))
                .map(|cmdline| String::from_utf8_lossy(&cmdline).contains(&needle))
                .unwrap_or(false)
        })
        .collect()
}

fn host_args<'a>(host: &'a str, args: &[&'a str]) -> Vec<&'a str> {
    let mut full = vec!["--host", host];
    full.extend_from_slice(args);
    full
}

/// Mount points in mountinfo escape space, tab, newline and backslash as octal.
fn unescape_mountinfo(field: &str) -> String {
    field
        .replace("\\040", " ")
        .replace("\\011", "\t")
        .replace("\\012", "\n")
        .replace("\\134", "\\")
}

fn collect_dirs(dir: &Path, dirs: &mut Vec<PathBuf>) {
    dirs.push(dir.to_path_buf());
    for entry in fs::read_dir(dir).into_iter().flatten().flatten() {
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            collect_dirs(&entry.path(), dirs);
        }
    }
}

fn pids_in_cgroup(dir: &Path) -> Vec<u32> {
    fs::read_to_string(dir.join("cgroup.procs"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

/// `kill -SIGNAL PID` (the tests forbid unsafe code, so no libc).
fn signal(name: &str, pid: u32) {
    let _ = Command::new("kill")
        .arg(format!("-{name}"))
        .arg(pid.to_string())
        .stderr(Stdio::null())
        .status();
}
