//! The stand-in images built for the tests: the script images (precheck, LibreLane, hostile) from
//! `tests/standin/`, and the images holding the host's installed Debian packages (Icarus Verilog,
//! Verilator), with their builds and tags.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::thread;

use super::docker::docker_required;

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
