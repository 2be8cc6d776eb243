//! Shared helpers for the integration tests: Docker checks, the stand-in precheck image, a real
//! server process per test ([`TestServer`]), polling, and a small GDSII writer so tests make their
//! own layouts.
//!
//! Tests that need Docker call [`docker_required`] and fail, never skip, when it is missing.

// Each test module uses a different part of this file.
#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::{self, BufRead, BufReader, BufWriter};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

use precheck_server::layout::write::{Cell, Die, GdsWriter, Layer, Library, Placement};

/// The label key the server puts on every container it creates, valued with its storage path.
pub const STORAGE_LABEL: &str = "precheck-server.storage";

/// The label the server puts on its image self-test containers.
pub const PROBE_LABEL: &str = "precheck-server.probe";

/// The label key the server puts on every container it creates, valued with the run id.
pub const RUN_ID_LABEL: &str = "precheck-server.run-id";

const START_TIMEOUT: Duration = Duration::from_secs(30);
const STOP_TIMEOUT: Duration = Duration::from_secs(10);
const POLL_INTERVAL: Duration = Duration::from_millis(50);

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

/// Builds the stand-in precheck image from `tests/standin/precheck` once per test process and
/// returns its tag (see [`build_script_image`]). The build context is a fresh temporary folder (the
/// Dockerfile, the script and a copy of the host's static `/bin/busybox`), so parallel test
/// binaries never share one.
pub fn precheck_image() -> &'static str {
    static IMAGE: OnceLock<String> = OnceLock::new();
    IMAGE.get_or_init(|| {
        docker_required();
        build_script_image("precheck-server-test/precheck", "precheck")
    })
}

/// Builds `tests/standin/<name>`: its Dockerfile, its `python3` script and a copy of the host's
/// static `/bin/busybox`, in a fresh temporary context so parallel test binaries never share one.
/// Returns its tag, `<repository>:standin-<the first 12 hex digits of the sha256 of the Dockerfile
/// and the script>`: a tag per content, so a test run of another version of the stand-in (another
/// branch, on the same engine) neither replaces this image under a running test nor is replaced.
fn build_script_image(repository: &str, name: &str) -> String {
    use sha2::{Digest, Sha256};
    let source = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/standin")
        .join(name);
    let mut content = Sha256::new();
    for file in ["Dockerfile", "python3"] {
        let path = source.join(file);
        let bytes = fs::read(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
        content.update((bytes.len() as u64).to_be_bytes());
        content.update(&bytes);
    }
    let digest: String = content
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let tag = format!("{repository}:standin-{}", &digest[..12]);
    let busybox = Path::new("/bin/busybox");
    assert!(
        busybox.is_file(),
        "the stand-in image needs a static busybox at /bin/busybox: install the Debian package busybox-static"
    );
    let context = tempfile::tempdir().expect("create a build context folder");
    for (from, name) in [
        (source.join("Dockerfile"), "Dockerfile"),
        (source.join("python3"), "python3"),
        (busybox.to_path_buf(), "busybox"),
    ] {
        let to = context.path().join(name);
        fs::copy(&from, &to)
            .unwrap_or_else(|e| panic!("copy {} into the build context: {e}", from.display()));
        fs::set_permissions(&to, fs::Permissions::from_mode(0o755))
            .unwrap_or_else(|e| panic!("make {} executable: {e}", to.display()));
    }
    docker_build(&tag, context.path());
    tag
}

/// `docker build -t TAG CONTEXT`, panicking with what it printed if it fails.
fn docker_build(tag: &str, context: &Path) {
    let out = Command::new("docker")
        .args(["build", "-q", "-t", tag])
        .arg(context)
        .env("DOCKER_BUILDKIT", "0")
        .output()
        .expect("run `docker build`");
    assert!(
        out.status.success(),
        "building the test image {tag} failed ({}); is /bin/busybox the static one \
         (busybox-static)?\n--- stdout\n{}\n--- stderr\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The tag of the test image with a real Icarus Verilog.
pub const SIMULATION_IMAGE: &str = "precheck-server-test/icarus:standin";

/// Builds an image with the host's Icarus Verilog (Debian's `iverilog`: its files and the shared
/// libraries they load, copied in at their paths) once per test process; returns its tag.
pub fn simulation_image() -> &'static str {
    static IMAGE: OnceLock<String> = OnceLock::new();
    IMAGE.get_or_init(|| {
        docker_required();
        build_simulation_image();
        SIMULATION_IMAGE.to_string()
    })
}

fn build_simulation_image() {
    build_package_image(SIMULATION_IMAGE, "icarus", &["iverilog".to_string()], &[]);
}

/// The tag of the test image with a real Verilator.
pub const VERILATOR_IMAGE: &str = "precheck-server-test/verilator:standin";

/// Builds an image with the host's Verilator once per test process and returns its tag. A
/// `verilator --binary` run is a C++ build, so the image holds the installed Debian packages
/// [`VERILATOR_PACKAGES`] and all they depend on, copied in as [`build_package_image`] does.
pub fn verilator_image() -> &'static str {
    static IMAGE: OnceLock<String> = OnceLock::new();
    IMAGE.get_or_init(|| {
        docker_required();
        build_verilator_image();
        VERILATOR_IMAGE.to_string()
    })
}

/// What `verilator --binary` runs: Verilator (a Perl script that writes C++ and runs make on it;
/// the makefile runs Python, g++, and `xargs ar`). Perl is named because apt's `--installed`
/// listing drops Verilator's `perl:any` dependency; g++ and make are no dependencies of it at
/// all, nor is findutils (`xargs`), essential in Debian. Busybox's xargs would not do: it runs
/// its own `ar`, not binutils'.
const VERILATOR_PACKAGES: &[&str] = &["verilator", "g++", "make", "perl", "findutils"];

/// Host files besides the packages': `/bin/sh`, which make and Perl run commands with (Debian's
/// dash, linked there by its install script, so in no package's file list; busybox's shell would
/// not do, it runs busybox's own `ar` for `ar` whatever PATH says), and the static busybox, for
/// the commands no package brings (`cat`, `rm`, ...).
const VERILATOR_PATHS: &[&str] = &["/bin/sh", "/bin/busybox"];

/// Dependencies that no run uses, left out with what only they bring in: Verilator's HTML
/// manual (its Sphinx theme, fonts and JavaScript).
const VERILATOR_UNUSED: &[&str] = &["libjs-sphinxdoc", "sphinx-rtd-theme-common"];

fn build_verilator_image() {
    let packages = installed_dependencies(VERILATOR_PACKAGES, VERILATOR_UNUSED);
    build_package_image(VERILATOR_IMAGE, "verilator", &packages, VERILATOR_PATHS);
}

/// The Debian packages `roots` and, recursively, the installed packages they depend on (Depends
/// and Pre-Depends; every installed choice of an alternative), as `apt-cache depends` lists
/// them. The `pruned` packages are left out, and so is what only they lead to.
fn installed_dependencies(roots: &[&str], pruned: &[&str]) -> Vec<String> {
    let out = Command::new("dpkg-query")
        .args(["-W", "-f", "${Package} ${db:Status-Status}\n"])
        .output()
        .expect("run dpkg-query");
    let listed = String::from_utf8_lossy(&out.stdout);
    let installed: BTreeSet<&str> = listed
        .lines()
        .filter_map(|line| line.strip_suffix(" installed"))
        .collect();
    for root in roots {
        assert!(
            installed.contains(root),
            "a test image needs the Debian package {root}: install it (apt-get install {root})"
        );
    }
    let out = Command::new("apt-cache")
        .args(["depends", "--recurse", "--installed"])
        .args(["--no-recommends", "--no-suggests", "--no-conflicts"])
        .args(["--no-breaks", "--no-replaces", "--no-enhances"])
        .args(roots)
        .output()
        .expect("run apt-cache");
    assert!(
        out.status.success(),
        "`apt-cache depends` failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Each package heads a paragraph of its dependencies: `  Depends: NAME`, ` |Depends: NAME`
    // (an alternative but the last), `  PreDepends: NAME`, and under a virtual `<NAME>` its
    // providers, indented by four.
    let text = String::from_utf8_lossy(&out.stdout);
    let mut depends: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    let mut current = "";
    for line in text.lines() {
        if !line.starts_with(' ') {
            current = line.trim();
        } else {
            let name = line.split_once(": ").map_or(line, |(_, name)| name).trim();
            depends.entry(current).or_default().push(name);
        }
    }
    // Names are architecture-qualified only for other architectures than the host's.
    let is_installed = |name: &str| installed.contains(name.split(':').next().unwrap_or(name));
    let mut found: BTreeSet<&str> = BTreeSet::new();
    let mut pending: Vec<&str> = roots.to_vec();
    while let Some(name) = pending.pop() {
        if pruned.contains(&name) || !is_installed(name) || !found.insert(name) {
            continue;
        }
        pending.extend(depends.get(name).into_iter().flatten());
    }
    found.into_iter().map(str::to_string).collect()
}

/// Builds the image `tag` from the Dockerfile in `tests/standin/<standin>`, in a build context
/// (a fresh temporary folder) that also holds a copy of the host's static `/bin/busybox` and
/// `rootfs/`: the files of the installed Debian `packages` and the host `paths`, and the shared
/// libraries their ELF files load, as `ldd` finds them, at their paths, bar what [`left_out`]
/// names. Links stay links, hard ones too, and what a symbolic link points to comes along; a
/// folder the host reaches through a link (`/lib` on a merged-`/usr` Debian) is one in the image.
fn build_package_image(tag: &str, standin: &str, packages: &[String], paths: &[&str]) {
    let out = Command::new("dpkg")
        .arg("-L")
        .args(packages)
        .output()
        .expect("run dpkg");
    assert!(
        out.status.success(),
        "the test image {tag} needs the Debian packages {}: {}",
        packages.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    let context = tempfile::tempdir().expect("create a build context folder");
    let mut rootfs = Rootfs {
        root: context.path().join("rootfs"),
        added: BTreeSet::new(),
        folders: BTreeMap::new(),
        copies: BTreeMap::new(),
        elves: Vec::new(),
    };
    // One path a line, with a blank line between packages.
    let listed = String::from_utf8_lossy(&out.stdout);
    for path in listed
        .lines()
        .filter(|l| l.starts_with('/'))
        .chain(paths.iter().copied())
    {
        rootfs.add(Path::new(path));
    }
    // `ldd` lists every library a file loads, directly or not, but links it brings in may
    // point to more ELF files, hence the loop; it runs on a share of the files per CPU.
    while !rootfs.elves.is_empty() {
        let elves = std::mem::take(&mut rootfs.elves);
        let cpus = thread::available_parallelism().map_or(1, |n| n.get());
        let listed: Vec<String> = thread::scope(|s| {
            let lists: Vec<_> = elves
                .chunks(elves.len().div_ceil(cpus))
                .map(|share| s.spawn(move || Command::new("ldd").args(share).output()))
                .collect();
            let lists = lists.into_iter().map(|list| list.join().expect("run ldd"));
            let lists = lists.map(|out| out.expect("run ldd").stdout);
            lists
                .map(|out| String::from_utf8_lossy(&out).into_owned())
                .collect()
        });
        // With more than one file, ldd heads each one's list with an unindented `FILE:`.
        let lines = listed.iter().flat_map(|text| text.lines());
        for line in lines.filter(|l| l.starts_with(char::is_whitespace)) {
            for word in line.split_whitespace().filter(|w| w.starts_with('/')) {
                rootfs.add(Path::new(word));
            }
        }
    }
    let dockerfile = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/standin")
        .join(standin)
        .join("Dockerfile");
    fs::copy(&dockerfile, context.path().join("Dockerfile"))
        .unwrap_or_else(|e| panic!("copy {}: {e}", dockerfile.display()));
    fs::copy("/bin/busybox", context.path().join("busybox"))
        .expect("copy /bin/busybox (install the Debian package busybox-static)");
    docker_build(tag, context.path());
}

/// Whether the test images go without `path`: documentation, and what Verilator's C++ builds
/// never use, namely gcc's C compiler (`cc1`; g++ compiles even `.c` files as C++), its
/// link-time optimizer (`lto1`, `lto-dump`) and sanitizer runtimes, static libraries beside
/// shared ones of the same name (the links are dynamic, so the linker takes the shared one), and
/// Verilator's debug builds (`*_dbg`, for `verilator --debug`).
fn left_out(path: &Path) -> bool {
    const DOCS: [&str; 4] = [
        "/usr/share/doc",
        "/usr/share/info",
        "/usr/share/locale",
        "/usr/share/man",
    ];
    const SANITIZERS: [&str; 5] = ["libasan", "libhwasan", "liblsan", "libtsan", "libubsan"];
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    DOCS.iter().any(|docs| path.starts_with(docs))
        || name == "cc1"
        || name == "lto1"
        || name.contains("lto-dump")
        || SANITIZERS.iter().any(|lib| name.starts_with(lib))
        || name
            .strip_suffix(".a")
            .is_some_and(|lib| path.with_file_name(format!("{lib}.so")).exists())
        || name.ends_with("_dbg")
}

/// The `rootfs/` of a build context that [`build_package_image`] fills with host files.
struct Rootfs {
    root: PathBuf,
    /// The real host paths added so far (their folders resolved).
    added: BTreeSet<PathBuf>,
    /// The real path of each host folder met.
    folders: BTreeMap<PathBuf, PathBuf>,
    /// Where each copied file with more than one hard link went first, by (device, inode).
    copies: BTreeMap<(u64, u64), PathBuf>,
    /// The ELF files added since `ldd` last looked.
    elves: Vec<PathBuf>,
}

impl Rootfs {
    /// Puts the host's `path` at the same path under the root, if it is a file or a link and
    /// not [`left_out`]; a link brings what it points to and a folder reached through links
    /// brings those links. Folders themselves come only with what they hold.
    fn add(&mut self, path: &Path) {
        use std::os::unix::fs::MetadataExt;
        let mut pending = vec![path.to_path_buf()];
        while let Some(path) = pending.pop() {
            let (Some(parent), Some(name)) = (path.parent(), path.file_name()) else {
                continue;
            };
            let Some(folder) = self.real_folder(parent, &mut pending) else {
                continue;
            };
            let real = folder.join(name);
            if left_out(&real) || !self.added.insert(real.clone()) {
                continue;
            }
            let Ok(meta) = fs::symlink_metadata(&real) else {
                continue;
            };
            if !meta.is_symlink() && !meta.is_file() {
                continue;
            }
            let to = self
                .root
                .join(real.strip_prefix("/").expect("an absolute path"));
            fs::create_dir_all(to.parent().expect("a parent folder"))
                .unwrap_or_else(|e| panic!("create the folder of {}: {e}", to.display()));
            if meta.is_symlink() {
                let target = fs::read_link(&real)
                    .unwrap_or_else(|e| panic!("read the link {}: {e}", real.display()));
                std::os::unix::fs::symlink(&target, &to)
                    .unwrap_or_else(|e| panic!("make the link {}: {e}", to.display()));
                pending.push(folder.join(target));
                continue;
            }
            let mut magic = [0; 4];
            let elf = fs::File::open(&real)
                .and_then(|mut f| io::Read::read_exact(&mut f, &mut magic))
                .is_ok_and(|()| magic == *b"\x7fELF");
            if elf {
                self.elves.push(real.clone());
            }
            // The build context only reads the file: a hard link to the host's serves, and is
            // made in no time where copying hundreds of megabytes is not. Copy where the host
            // will not link (another filesystem; a file not ours, under protected_hardlinks).
            if fs::hard_link(&real, &to).is_ok() {
                continue;
            }
            if meta.nlink() > 1 {
                let first = self.copies.entry((meta.dev(), meta.ino()));
                if let std::collections::btree_map::Entry::Occupied(first) = first {
                    fs::hard_link(first.get(), &to)
                        .unwrap_or_else(|e| panic!("link {}: {e}", to.display()));
                    continue;
                }
                first.or_insert_with(|| to.clone());
            }
            fs::copy(&real, &to).unwrap_or_else(|e| panic!("copy {}: {e}", real.display()));
        }
    }

    /// The real path of the host folder `folder`, if it exists. When links lead to it, they
    /// are queued on `pending`, so the image has them too.
    fn real_folder(&mut self, folder: &Path, pending: &mut Vec<PathBuf>) -> Option<PathBuf> {
        if let Some(real) = self.folders.get(folder) {
            return Some(real.clone());
        }
        let real = fs::canonicalize(folder).ok()?;
        if real != folder {
            pending.extend(
                folder
                    .ancestors()
                    .filter(|a| fs::symlink_metadata(a).is_ok_and(|m| m.is_symlink()))
                    .map(Path::to_path_buf),
            );
        }
        self.folders.insert(folder.to_path_buf(), real.clone());
        Some(real)
    }
}

/// Polls `f` every 50 ms until it returns true; panics after `timeout` naming `what`.
pub fn wait_until(timeout: Duration, what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    loop {
        if f() {
            return;
        }
        if Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting until {what}");
        }
        thread::sleep(POLL_INTERVAL);
    }
}

/// [`wait_until`] for async tests: polls the future `f` returns every 50 ms.
pub async fn wait_until_async<F, Fut>(timeout: Duration, what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if f().await {
            return;
        }
        if Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting until {what}");
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// The server binary under test.
pub fn server_bin() -> &'static str {
    env!("CARGO_BIN_EXE_precheck-server")
}

/// A `precheck-server serve` process on a free port with its own config and storage in a fresh
/// temporary folder. Dropping it stops the server (SIGTERM, then SIGKILL after 10 s), removes
/// any container it left behind and fails the test if there was one.
pub struct TestServer {
    /// `http://127.0.0.1:PORT`, without a trailing slash.
    pub url: String,
    /// The server's storage folder (absolute, canonical): the value of its containers' storage label.
    pub storage: PathBuf,
    pub child: Child,
    /// The config file the server was started with.
    pub config_path: PathBuf,
    container_prefix: String,
    stdout: Arc<Mutex<Vec<String>>>,
    stderr_path: PathBuf,
    /// Extra arguments of `serve`, kept for restarts.
    serve_args: Vec<String>,
    stopped: bool,
    /// Whether the server was ever killed (SIGKILL) rather than stopped.
    killed: bool,
    tempdir: tempfile::TempDir,
}

/// The config of a [`TestServer`], rendered to TOML when it starts. Keys are dotted paths into
/// the TOML (`"server.max_concurrent"`); later settings override earlier ones.
pub struct TestServerBuilder {
    config: toml::Table,
    unset: Vec<String>,
    serve_args: Vec<String>,
}

impl TestServer {
    pub fn builder() -> TestServerBuilder {
        TestServerBuilder::new()
    }

    /// Starts a server with the default test config merged with `extra_toml` (may be empty).
    pub fn start(extra_toml: &str) -> TestServer {
        TestServer::builder().toml(extra_toml).start()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The server's resident set size in KiB, from `/proc/<pid>/status`.
    pub fn rss_kib(&self) -> u64 {
        let path = format!("/proc/{}/status", self.pid());
        let status = fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {path}: {e}"));
        status
            .lines()
            .find_map(|line| line.strip_prefix("VmRSS:"))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|kib| kib.parse().ok())
            .unwrap_or_else(|| panic!("no VmRSS in {path}"))
    }

    /// The `docker ps --filter` argument matching every container this server created:
    /// `label=precheck-server.storage=<storage>`.
    pub fn storage_label_filter(&self) -> String {
        format!("label={STORAGE_LABEL}={}", self.storage.display())
    }

    /// The container name prefix in this server's config; unique to this server.
    pub fn container_prefix(&self) -> &str {
        &self.container_prefix
    }

    /// `url` + `path`, e.g. `server.api("/api/v1/queue")`.
    pub fn api(&self, path: &str) -> String {
        format!("{}{path}", self.url)
    }

    /// The full ids of the containers, running or not, that carry this server's storage label
    /// or its container name prefix.
    pub fn containers(&self) -> Vec<String> {
        self.list_containers().unwrap_or_else(|e| panic!("{e}"))
    }

    /// Panics, describing them, if any container of this server exists but the image's
    /// self-test, which a running server may be doing at any time. A run's container is removed
    /// just after its end is recorded (which a `/wait` answers), and the engine may take a moment
    /// to remove it (`removing`): containers get 30 s to go.
    pub fn assert_no_containers(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        let ids = loop {
            let listed = self.list().unwrap_or_else(|e| panic!("{e}"));
            let ids: Vec<String> = listed
                .into_iter()
                .filter(|(_, probe)| !probe)
                .map(|(id, _)| id)
                .collect();
            if ids.is_empty() || Instant::now() > deadline {
                break ids;
            }
            thread::sleep(POLL_INTERVAL);
        };
        if !ids.is_empty() {
            panic!(
                "the server left containers behind:\n{}",
                describe_containers(&ids)
            );
        }
    }

    /// What the server has printed on stdout so far, one entry a line.
    pub fn stdout_lines(&self) -> Vec<String> {
        self.stdout.lock().unwrap().clone()
    }

    /// What the server has printed on stderr so far.
    pub fn stderr_text(&self) -> String {
        fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    /// Stops the server like an operator would (SIGTERM, SIGKILL after 10 s) and returns how it
    /// exited. Containers are left alone, so a test can look at what a stop leaves.
    pub fn stop(&mut self) -> ExitStatus {
        if let Some(status) = self.child.try_wait().expect("poll the server process") {
            self.stopped = true;
            return status;
        }
        // Without unsafe code there is no kill(2); the kill command does the same.
        let _ = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status();
        let deadline = Instant::now() + STOP_TIMEOUT;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().expect("poll the server process") {
                self.stopped = true;
                return status;
            }
            thread::sleep(POLL_INTERVAL);
        }
        eprintln!("the server did not stop within {STOP_TIMEOUT:?} of SIGTERM; killing it");
        self.kill()
    }

    /// Kills the server with SIGKILL, as a crash would, and returns its exit status.
    pub fn kill(&mut self) -> ExitStatus {
        let _ = self.child.kill();
        self.stopped = true;
        self.killed = true;
        self.child.wait().expect("wait for the server process")
    }

    /// Stops the server if it runs and starts it again with the same config and storage. The
    /// port is chosen afresh, so `url` changes.
    pub fn restart(&mut self) {
        if !self.stopped {
            self.stop();
        }
        let (child, url) = spawn_server(
            &self.config_path,
            &self.stderr_path,
            &self.stdout,
            &self.serve_args,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        self.child = child;
        self.url = url;
        self.stopped = false;
    }

    /// Like [`TestServer::restart`], on the same port, so that clients holding its URL reach it
    /// again.
    pub fn restart_on_the_same_port(&mut self) {
        if !self.stopped {
            self.stop();
        }
        let port = self
            .url
            .rsplit(':')
            .next()
            .expect("a port in the URL")
            .to_string();
        let text = fs::read_to_string(&self.config_path).expect("read the test config");
        let mut config: toml::Table = toml::from_str(&text).expect("parse the test config");
        let (table, key) = table_for_key(&mut config, "server.port");
        table.insert(key.to_string(), port.parse::<i64>().expect("a port").into());
        fs::write(
            &self.config_path,
            toml::to_string(&config).expect("render the config"),
        )
        .expect("write the test config");
        self.restart();
    }

    fn list_containers(&self) -> Result<Vec<String>, String> {
        Ok(self.list()?.into_iter().map(|(id, _)| id).collect())
    }

    /// This server's image self-test containers.
    fn probe_containers(&self) -> Vec<String> {
        let listed = self.list().unwrap_or_else(|e| panic!("{e}"));
        listed
            .into_iter()
            .filter(|(_, probe)| *probe)
            .map(|(id, _)| id)
            .collect()
    }

    /// The full ids of this server's containers (by storage label or name prefix), each with
    /// whether it is an image self-test's, from one listing per filter.
    fn list(&self) -> Result<Vec<(String, bool)>, String> {
        let mut found = BTreeMap::new();
        let name_filter = format!("name={}", self.container_prefix);
        let format = format!("{{{{.ID}}}} {{{{.Label \"{PROBE_LABEL}\"}}}}");
        for filter in [self.storage_label_filter(), name_filter] {
            let out = Command::new("docker")
                .args([
                    "ps",
                    "-a",
                    "--no-trunc",
                    "--filter",
                    &filter,
                    "--format",
                    &format,
                ])
                .output()
                .map_err(|e| format!("cannot run `docker ps`: {e}"))?;
            if !out.status.success() {
                return Err(format!(
                    "`docker ps --filter {filter}` failed: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                ));
            }
            for line in String::from_utf8_lossy(&out.stdout).lines() {
                let (id, probe) = line.split_once(' ').unwrap_or((line, ""));
                found.insert(id.to_string(), probe == "true");
            }
        }
        Ok(found.into_iter().collect())
    }

    fn print_output(&self) {
        eprintln!(
            "--- server stdout ({})\n{}",
            self.config_path.display(),
            self.stdout_lines().join("\n")
        );
        eprintln!("--- server stderr\n{}", self.stderr_text());
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if !self.stopped {
            self.stop();
        }
        // A killed server may leave its image self-test's container, which its next start
        // removes; a stopped one removes it itself.
        let probes = if self.killed {
            self.probe_containers()
        } else {
            Vec::new()
        };
        for id in &probes {
            let _ = Command::new("docker").args(["rm", "-f", "-v", id]).output();
        }
        let leaked = match self.list_containers() {
            Ok(ids) => ids.into_iter().filter(|id| !probes.contains(id)).collect(),
            Err(e) => {
                eprintln!("cannot check for leftover containers: {e}");
                Vec::new()
            }
        };
        let description = describe_containers(&leaked);
        for id in &leaked {
            let _ = Command::new("docker").args(["rm", "-f", "-v", id]).output();
        }
        if thread::panicking() {
            self.print_output();
        } else if !leaked.is_empty() {
            self.print_output();
            panic!(
                "the server leaked containers (now removed); every run's container must be gone \
                 once the server has stopped:\n{description}"
            );
        }
    }
}

/// The keys of [`TestServerBuilder::alice_and_bob`].
pub const ALICE: &str = "ws_key_alice_0123456789abcdefghijklmnop";
pub const BOB: &str = "ws_key_bob_0123456789abcdefghijklmnopqr";

impl TestServerBuilder {
    fn new() -> TestServerBuilder {
        let prefix = format!(
            "precheck-test-{}-",
            &uuid::Uuid::new_v4().simple().to_string()[..8]
        );
        TestServerBuilder {
            config: toml::Table::new(),
            unset: Vec::new(),
            serve_args: Vec::new(),
        }
        .set("server.host", "127.0.0.1")
        .set("server.port", 0)
        // Relative on purpose: the server resolves it against the config file's folder.
        .set("server.storage_path", "data")
        .set("server.max_concurrent", 2)
        .set("server.upload_expiry_minutes", 15)
        .set("docker.container_prefix", prefix)
        .set("limits.memory", "1GiB")
        .set("limits.timeout", "10m")
    }

    /// Requires a key, and knows two that are not admins: [`ALICE`] and [`BOB`].
    pub fn alice_and_bob(self) -> Self {
        self.toml(&format!(
            "[auth]\nrequired = true\n\
             [[auth.api_keys]]\nname = \"alice\"\nkey = \"{ALICE}\"\n\
             [[auth.api_keys]]\nname = \"bob\"\nkey = \"{BOB}\"\n"
        ))
    }

    /// Adds arguments to `precheck-server serve --config FILE`.
    pub fn serve_args(mut self, args: &[&str]) -> Self {
        self.serve_args.extend(args.iter().map(|a| a.to_string()));
        self
    }

    pub fn max_concurrent(self, n: i64) -> Self {
        self.set("server.max_concurrent", n)
    }

    pub fn upload_expiry_minutes(self, minutes: i64) -> Self {
        self.set("server.upload_expiry_minutes", minutes)
    }

    /// The precheck image; without this the stand-in from [`precheck_image`] is used.
    pub fn image(self, image: &str) -> Self {
        self.set("docker.image", image)
    }

    /// `limits.memory`, e.g. `"64MiB"`.
    pub fn memory(self, memory: &str) -> Self {
        self.set("limits.memory", memory)
    }

    /// `limits.timeout`, e.g. `"3s"`.
    pub fn timeout(self, timeout: &str) -> Self {
        self.set("limits.timeout", timeout)
    }

    /// `server.max_upload_size`, e.g. `"1MiB"`.
    pub fn max_upload_size(self, size: &str) -> Self {
        self.set("server.max_upload_size", size)
    }

    /// Sets any key by its dotted path, e.g. `.set("auth.required", true)`.
    pub fn set(mut self, key: &str, value: impl Into<toml::Value>) -> Self {
        let (table, last) = table_for_key(&mut self.config, key);
        table.insert(last.to_string(), value.into());
        self.unset.retain(|k| k != key);
        self
    }

    /// Removes a key, to test the server's default for it (`"docker.image"` included).
    pub fn unset(mut self, key: &str) -> Self {
        let (table, last) = table_for_key(&mut self.config, key);
        table.remove(last);
        self.unset.push(key.to_string());
        self
    }

    /// Merges a TOML document into the config: its tables are merged key by key, other values
    /// (arrays of tables included) replace what was there.
    pub fn toml(mut self, extra: &str) -> Self {
        if extra.trim().is_empty() {
            return self;
        }
        let extra: toml::Table = extra
            .parse()
            .unwrap_or_else(|e| panic!("the extra TOML given to the test server is invalid: {e}"));
        merge(&mut self.config, extra);
        self
    }

    /// The config as it would be written (without the default image filled in).
    pub fn config_text(&self) -> String {
        toml::to_string(&self.config).expect("render the test config")
    }

    pub fn start(self) -> TestServer {
        self.try_start().unwrap_or_else(|e| panic!("{e}"))
    }

    /// Starts the server; the error says why it did not come up and holds what it printed.
    pub fn try_start(mut self) -> Result<TestServer, String> {
        let has_image = self
            .config
            .get("docker")
            .and_then(|d| d.get("image"))
            .is_some();
        if !has_image && !self.unset.iter().any(|k| k == "docker.image") {
            self = self.image(precheck_image());
        }
        let tempdir = tempfile::tempdir().expect("create a temp folder for the test server");
        let root = fs::canonicalize(tempdir.path()).expect("canonicalize the temp folder");
        let config_path = root.join("config.toml");
        fs::write(&config_path, self.config_text()).expect("write the test config");
        let storage = match self
            .config
            .get("server")
            .and_then(|s| s.get("storage_path"))
            .and_then(|p| p.as_str())
        {
            Some(p) => root.join(p),
            None => root.join("data"),
        };
        let container_prefix = self
            .config
            .get("docker")
            .and_then(|d| d.get("container_prefix"))
            .and_then(|p| p.as_str())
            .unwrap_or("precheck-")
            .to_string();
        let stderr_path = root.join("server-stderr.log");
        let stdout = Arc::new(Mutex::new(Vec::new()));
        let (child, url) = spawn_server(&config_path, &stderr_path, &stdout, &self.serve_args)?;
        let storage = fs::canonicalize(&storage).unwrap_or(storage);
        Ok(TestServer {
            url,
            storage,
            child,
            config_path,
            container_prefix,
            stdout,
            stderr_path,
            serve_args: self.serve_args,
            stopped: false,
            killed: false,
            tempdir,
        })
    }
}

/// Spawns `precheck-server serve --config FILE` and waits for its `listening on http://...` line.
fn spawn_server(
    config_path: &Path,
    stderr_path: &Path,
    stdout_lines: &Arc<Mutex<Vec<String>>>,
    serve_args: &[String],
) -> Result<(Child, String), String> {
    let stderr = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(stderr_path)
        .map_err(|e| format!("open {}: {e}", stderr_path.display()))?;
    let mut child = Command::new(server_bin())
        .arg("serve")
        .arg("--config")
        .arg(config_path)
        .args(serve_args)
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(stderr)
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", server_bin()))?;

    let (tx, rx) = mpsc::channel();
    let mut reader = BufReader::new(child.stdout.take().expect("piped stdout"));
    let lines = Arc::clone(stdout_lines);
    // Keeps draining stdout after start-up so the server never blocks on a full pipe.
    thread::spawn(move || {
        let mut buf = Vec::new();
        let mut announced = false;
        loop {
            buf.clear();
            match reader.read_until(b'\n', &mut buf) {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
            let line = String::from_utf8_lossy(&buf).trim_end().to_string();
            if !announced {
                if let Some(url) = parse_listening_url(&line) {
                    announced = true;
                    let _ = tx.send(url);
                }
            }
            lines.lock().unwrap().push(line);
        }
    });

    let deadline = Instant::now() + START_TIMEOUT;
    let failure = loop {
        match rx.recv_timeout(POLL_INTERVAL) {
            Ok(url) => {
                settle(&url, deadline);
                return Ok((child, url));
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                break "closed its stdout without printing `listening on http://...`".to_string();
            }
        }
        if let Ok(Some(status)) = child.try_wait() {
            break format!("exited ({status}) without printing `listening on http://...`");
        }
        if Instant::now() >= deadline {
            break format!("did not print `listening on http://...` within {START_TIMEOUT:?}");
        }
    };
    let _ = child.kill();
    let status = match child.wait() {
        Ok(status) => status.to_string(),
        Err(e) => format!("unknown ({e})"),
    };
    // Give the drain thread a moment to record the last lines.
    thread::sleep(POLL_INTERVAL);
    Err(format!(
        "the test server ({} serve --config {}) {failure}; {status}\n--- stdout\n{}\n--- stderr\n{}",
        server_bin(),
        config_path.display(),
        stdout_lines.lock().unwrap().join("\n"),
        fs::read_to_string(stderr_path).unwrap_or_default()
    ))
}

/// Waits (until `deadline` at most) while the server's `/health` says the image's self-test is
/// running, as a client that waits for a ready server would: until then the queue claims no run,
/// and tests that count on a run starting at once would see it queued.
fn settle(url: &str, deadline: Instant) {
    let Some(addr) = url.strip_prefix("http://") else {
        return;
    };
    while Instant::now() < deadline {
        let mut body = String::new();
        let answered = std::net::TcpStream::connect(addr).and_then(|mut stream| {
            io::Write::write_all(
                &mut stream,
                format!("GET /health HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes(),
            )?;
            io::Read::read_to_string(&mut stream, &mut body)
        });
        if answered.is_err() || !body.contains(r#""status":"probing""#) {
            return;
        }
        thread::sleep(POLL_INTERVAL);
    }
}

/// The `http://HOST:PORT` from a line containing `listening on http://HOST:PORT`.
fn parse_listening_url(line: &str) -> Option<String> {
    const MARK: &str = "listening on ";
    let start = line.find("listening on http://")? + MARK.len();
    let url: String = line[start..]
        .chars()
        .take_while(|c| !c.is_whitespace() && !c.is_control() && !matches!(c, '"' | '\''))
        .collect();
    let url = url.trim_end_matches(['/', '.', ',', ')']);
    let (_, port) = url.strip_prefix("http://")?.rsplit_once(':')?;
    match port.parse::<u16>() {
        Ok(port) if port != 0 => Some(url.to_string()),
        _ => None,
    }
}

fn table_for_key<'a>(root: &'a mut toml::Table, key: &'a str) -> (&'a mut toml::Table, &'a str) {
    let mut parts: Vec<&str> = key.split('.').collect();
    let last = parts.pop().expect("a non-empty key");
    let mut table = root;
    for part in parts {
        let entry = table
            .entry(part.to_string())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        table = entry
            .as_table_mut()
            .unwrap_or_else(|| panic!("`{part}` in the test config key `{key}` is not a table"));
    }
    (table, last)
}

fn merge(into: &mut toml::Table, from: toml::Table) {
    for (key, value) in from {
        match (into.get_mut(&key), value) {
            (Some(toml::Value::Table(existing)), toml::Value::Table(table)) => {
                merge(existing, table)
            }
            (_, value) => {
                into.insert(key, value);
            }
        }
    }
}

fn describe_containers(ids: &[String]) -> String {
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

/// A good 1x1 die whose top cell is `top`, as GDSII: what a designer sends the precheck
/// (`layout::write::Die`: origin (0, 0), 1 nm, the slot's exact size, a seal ring).
pub fn gds_bytes(top: &str) -> Vec<u8> {
    Die::new(top).gds()
}

/// A GDSII library with a database unit of `dbu_meters` and the given cells, each with one
/// 1 µm square on 1/0 and a placement of each of its children at the origin.
pub fn gds_library(dbu_meters: f64, cells: &[(&str, &[&str])]) -> Vec<u8> {
    let dbu_microns = dbu_meters / 1e-6;
    let square = (1e-6 / dbu_meters).round() as i64;
    let mut library = Library::new(dbu_microns);
    for (name, children) in cells {
        let mut cell = Cell::new(name).rect(Layer(1, 0), [0, 0, square, square]);
        for child in *children {
            cell = cell.place(Placement::of(child, (0, 0)));
        }
        library = library.cell(cell);
    }
    library.gds()
}

/// Writes a valid GDSII file of about `approx_bytes` bytes to `path` in constant memory: one
/// structure `top` holding many squares. Returns the file's exact size.
pub fn write_big_gds(path: impl AsRef<Path>, top: &str, approx_bytes: u64) -> u64 {
    /// BOUNDARY + LAYER + DATATYPE + XY (5 points) + ENDEL.
    const BOUNDARY_BYTES: u64 = 4 + 6 + 6 + (4 + 5 * 8) + 4;
    /// ENDSTR + ENDLIB.
    const END_BYTES: u64 = 4 + 4;
    let path = path.as_ref();
    let file = fs::File::create(path).unwrap_or_else(|e| panic!("create {}: {e}", path.display()));
    let written = (|| -> io::Result<u64> {
        let mut gds = GdsWriter::new(BufWriter::with_capacity(1 << 20, file), 0.001)?;
        gds.begin_cell(top)?;
        let count =
            (approx_bytes.saturating_sub(gds.written() + END_BYTES) / BOUNDARY_BYTES).max(1);
        for i in 0..count {
            let x = (i % 1000) as i64 * 2000;
            let y = ((i / 1000) % 100_000) as i64 * 2000;
            gds.rect(Layer(1, 0), [x, y, x + 1000, y + 1000])?;
        }
        gds.end_cell()?;
        let written = gds.written() + 4;
        gds.finish()?;
        Ok(written)
    })();
    written.unwrap_or_else(|e| panic!("write {}: {e}", path.display()))
}

/// The names in a folder (none if it does not exist).
pub fn files_in(dir: &Path) -> Vec<String> {
    fs::read_dir(dir)
        .map(|d| {
            d.map(|e| e.unwrap().file_name().to_string_lossy().to_string())
                .collect()
        })
        .unwrap_or_default()
}

/// Starts an upload that declares 50 MiB, sends 4 MiB of it and stops: the server is left
/// receiving it. Returns the connection, to drop (or not) as the test needs.
pub async fn partial_upload(server: &TestServer) -> tokio::net::TcpStream {
    use tokio::io::AsyncWriteExt;
    let addr = server.url.trim_start_matches("http://").to_string();
    let mut conn = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let boundary = "XBOUNDARYX";
    let head = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"chip.gds\"\r\n\r\n"
    );
    let declared = 50 << 20;
    let request = format!(
        "POST /api/v1/uploads HTTP/1.1\r\nHost: {addr}\r\nContent-Type: multipart/form-data; boundary={boundary}\r\nContent-Length: {declared}\r\n\r\n{head}"
    );
    conn.write_all(request.as_bytes()).await.unwrap();
    let mut body = gds_bytes("chip_top");
    body.resize(4 << 20, 0);
    conn.write_all(&body).await.unwrap();
    conn.flush().await.unwrap();
    conn
}

/// Builds the stand-in LibreLane image from `tests/standin/librelane` once per test process and
/// returns its tag (see [`build_script_image`]). Its `python3 -m librelane --run-tag TAG
/// --manual-pdk --pdk-root DIR --pdk NAME CONFIG` is a busybox sh script: it checks the command
/// line as click would, wants the PDK mounted read-only, reads DESIGN_NAME and the `dir::` globs
/// from the config, prints LibreLane-like lines for five steps and writes `runs/TAG/` beside the
/// config, with a real GDS (the one cell DESIGN_NAME) in `final/gds/`, and exits with LibreLane's
/// codes. Design names with `fail` fail in synthesis (exit code 2); with `drc` two more steps find
/// DRC errors, which are deferred (final/ is written, then exit code 2); with `sleepN` each step
/// takes N seconds. As for [`precheck_image`], the build context is a fresh temporary folder
/// holding the Dockerfile, the script and a copy of the host's `/bin/busybox`.
pub fn librelane_image() -> &'static str {
    static IMAGE: OnceLock<String> = OnceLock::new();
    IMAGE.get_or_init(|| {
        docker_required();
        build_script_image("precheck-server-test/librelane", "librelane")
    })
}

/// Builds the hostile stand-in (`tests/standin/hostile`): as the precheck, LibreLane and the
/// simulator it plants symlinks, hard links and fifos at every level of what the server copies out
/// of its container (see its `python3`). Built as [`precheck_image`] is; returns its tag.
pub fn hostile_image() -> &'static str {
    static IMAGE: OnceLock<String> = OnceLock::new();
    IMAGE.get_or_init(|| {
        docker_required();
        build_script_image("precheck-server-test/hostile", "hostile")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_big_gds_writes_about_the_size_asked() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("big.gds");
        let size = write_big_gds(&path, "big_top", 200_000);
        assert_eq!(fs::metadata(&path).unwrap().len(), size);
        assert!(size.abs_diff(200_000) < 64, "{size} bytes");
        let layout = precheck_server::layout::inspect(fs::File::open(&path).unwrap()).unwrap();
        assert_eq!(layout.top_cells, ["big_top"]);
    }

    #[test]
    fn gds_library_places_its_children() {
        let bytes = gds_library(1e-8, &[("leaf", &[]), ("chip_top", &["leaf"]), ("b", &[])]);
        let layout = precheck_server::layout::inspect(&bytes[..]).unwrap();
        assert_eq!(layout.top_cells, ["chip_top", "b"]);
        assert!(layout.dbu_is(0.01), "{}", layout.dbu_microns);
    }

    #[test]
    fn listening_url_is_parsed_from_a_log_line() {
        for (line, url) in [
            (
                "listening on http://127.0.0.1:4321",
                Some("http://127.0.0.1:4321"),
            ),
            (
                "2025-01-01T00:00:00Z  INFO precheck_server: listening on http://127.0.0.1:80",
                Some("http://127.0.0.1:80"),
            ),
            (
                "\x1b[32mINFO\x1b[0m listening on http://127.0.0.1:8000\x1b[0m",
                Some("http://127.0.0.1:8000"),
            ),
            ("listening on http://127.0.0.1:0", None),
            ("starting", None),
        ] {
            assert_eq!(parse_listening_url(line).as_deref(), url, "{line:?}");
        }
    }
}
