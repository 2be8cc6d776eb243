//! The precheck test image that does real work (`tests/standin/klayout/`, its README says what
//! it checks): Debian's python3 and KLayout in a root filesystem that `mmdebstrap` makes from
//! Debian's package mirror, `docker import`ed as a base, and `precheck.py`, its KLayout scripts
//! and DRC decks built on it. Nothing comes from a registry.
//!
//! It is built once per machine: its tag names a hash of every file of that folder, so a test
//! process that finds the tag builds nothing, and a change to any file builds it anew. The base
//! (the slow part, about a minute) has its own tag, a hash of the recipe that makes it, so a
//! change to the scripts only runs the quick `docker build` on top.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use crate::support::{docker, docker_required};

/// The repository of the image's tags; each tag is a content hash.
pub const KLAYOUT_IMAGE_NAME: &str = "precheck-server-test/precheck-klayout";

/// The repository of the base's tags (Debian, python3 and klayout, nothing of this project).
pub const KLAYOUT_BASE_NAME: &str = "precheck-server-test/precheck-klayout-base";

/// Part of both hashes: bump it to build everything anew after a change outside the folder
/// that the image depends on (this file's way of calling `build.sh`).
const RECIPE_VERSION: &str = "klayout-image 1";

/// The file of the folder that makes the base; the base's hash covers only it.
const BASE_RECIPE: &str = "build.sh";

/// Other tags of the same names are removed once they are this much older than the image just
/// built: a test process of another checkout may be using one right now.
const KEEP_OLDER_TAGS_FOR: Duration = Duration::from_secs(3600);

/// The tag of the KLayout precheck image, built if the engine does not have it yet. Panics,
/// saying what to install, if it cannot be built.
pub fn klayout_image() -> &'static str {
    static IMAGE: OnceLock<String> = OnceLock::new();
    IMAGE.get_or_init(|| {
        docker_required();
        let folder = source_folder();
        let base = format!("{KLAYOUT_BASE_NAME}:{}", hash(&folder, Some(BASE_RECIPE)));
        let image = format!("{KLAYOUT_IMAGE_NAME}:{}", hash(&folder, None));
        if !image_exists(&image) {
            build(&folder, &base, &image);
            remove_older_tags(KLAYOUT_IMAGE_NAME, &image);
            remove_older_tags(KLAYOUT_BASE_NAME, &base);
        }
        image
    })
}

fn source_folder() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/standin/klayout")
}

/// The first 16 hex digits of a sha256 over [`RECIPE_VERSION`] and each file of `folder`
/// (or only `only`): its path, whether it is executable, and its bytes, in path order.
fn hash(folder: &Path, only: Option<&str>) -> String {
    use std::os::unix::fs::PermissionsExt;
    let mut files = match only {
        Some(name) => vec![folder.join(name)],
        None => files_under(folder),
    };
    files.sort();
    let mut sha = Sha256::new();
    sha.update(RECIPE_VERSION.as_bytes());
    for file in files {
        let bytes = fs::read(&file).unwrap_or_else(|e| panic!("read {}: {e}", file.display()));
        let mode = fs::metadata(&file).map_or(0, |m| m.permissions().mode());
        let name = file.strip_prefix(folder).expect("a file of the folder");
        sha.update(name.to_string_lossy().as_bytes());
        sha.update([0, u8::from(mode & 0o111 != 0)]);
        sha.update((bytes.len() as u64).to_le_bytes());
        sha.update(&bytes);
    }
    let digest = sha.finalize();
    digest[..8].iter().map(|b| format!("{b:02x}")).collect()
}

/// Every file under `folder`, bar Python's caches (which running the scripts on the host makes).
fn files_under(folder: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut pending = vec![folder.to_path_buf()];
    while let Some(dir) = pending.pop() {
        let entries = fs::read_dir(&dir).unwrap_or_else(|e| panic!("list {}: {e}", dir.display()));
        for entry in entries {
            let path = entry.expect("a folder entry").path();
            if path.file_name().is_some_and(|n| n == "__pycache__") {
                continue;
            }
            if path.is_dir() {
                pending.push(path);
            } else {
                files.push(path);
            }
        }
    }
    files
}

fn image_exists(tag: &str) -> bool {
    docker(&["image", "inspect", "--format", "{{.Id}}", tag])
        .status
        .success()
}

/// Runs `build.sh BASE IMAGE`: the base only if the engine lacks it, then the image on it.
///
/// Under an exclusive lock on a file in the temporary folder (`flock`, util-linux), shared by
/// every checkout and test process on the machine: a second build waits for the first, then
/// finds its base and the image layers in the engine's cache, and is done in a second. Each
/// `build.sh` step ends in a tag, which `docker` sets at once, so a build that dies midway
/// leaves no tag behind for another process to trust.
fn build(folder: &Path, base: &str, image: &str) {
    if !image_exists(base) {
        let found = Command::new("mmdebstrap")
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        assert!(
            found,
            "the KLayout precheck test image is built from Debian's packages with mmdebstrap, \
             which is not installed: install the Debian package mmdebstrap \
             (apt-get install mmdebstrap) and run the tests again"
        );
        eprintln!("building the KLayout test image's base {base} with mmdebstrap (about a minute)");
    }
    let lock = std::env::temp_dir().join("precheck-server-test-klayout-image.lock");
    let started = Instant::now();
    let out = Command::new("flock")
        .arg(&lock)
        .arg("bash")
        .arg(folder.join("build.sh"))
        .args([base, image])
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run flock (install the Debian package util-linux): {e}")
        });
    assert!(
        out.status.success(),
        "building the KLayout test image {image} failed ({}); mmdebstrap needs Debian's package \
         mirror (MIRROR=... picks another) and, unless run as root, user namespaces\n\
         --- stdout\n{}\n--- stderr\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let _ = writeln!(
        std::io::stderr(),
        "built the KLayout test image {image} in {:.0?}",
        started.elapsed()
    );
}

/// Removes the other tags of `name` whose images are older than `keep`'s by more than
/// [`KEEP_OLDER_TAGS_FOR`]; an image a container still uses stays (no `--force`).
fn remove_older_tags(name: &str, keep: &str) {
    let Some(newest) = created(keep) else {
        return;
    };
    let out = docker(&["images", "--format", "{{.Repository}}:{{.Tag}}", name]);
    let listed = String::from_utf8_lossy(&out.stdout);
    for tag in listed.lines().map(str::trim).filter(|t| *t != keep) {
        let old = created(tag).is_some_and(|t| newest - t > KEEP_OLDER_TAGS_FOR);
        if old && docker(&["image", "rm", tag]).status.success() {
            eprintln!("removed the older test image {tag}");
        }
    }
}

/// When the image `tag` was made, from `docker image inspect`.
fn created(tag: &str) -> Option<time::OffsetDateTime> {
    use time::format_description::well_known::Rfc3339;
    let out = docker(&["image", "inspect", "--format", "{{.Created}}", tag]);
    let text = String::from_utf8_lossy(&out.stdout);
    time::OffsetDateTime::parse(text.trim(), &Rfc3339).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hash_follows_every_file_and_the_base_only_its_recipe() {
        let dir = tempfile::tempdir().unwrap();
        let folder = dir.path();
        fs::create_dir_all(folder.join("workspace/__pycache__")).unwrap();
        fs::write(folder.join("build.sh"), "mmdebstrap ...").unwrap();
        fs::write(folder.join("workspace/precheck.py"), "print(None)").unwrap();
        let (full, base) = (hash(folder, None), hash(folder, Some(BASE_RECIPE)));
        assert_eq!(full.len(), 16);
        assert!(full.chars().all(|c| c.is_ascii_hexdigit()), "{full}");

        fs::write(folder.join("workspace/__pycache__/x.pyc"), "cache").unwrap();
        assert_eq!(hash(folder, None), full, "Python's caches do not count");

        fs::write(folder.join("workspace/precheck.py"), "print(1)").unwrap();
        assert_ne!(hash(folder, None), full, "a script changed");
        assert_eq!(hash(folder, Some(BASE_RECIPE)), base, "the base did not");

        fs::write(folder.join("build.sh"), "mmdebstrap --variant=essential").unwrap();
        assert_ne!(hash(folder, Some(BASE_RECIPE)), base, "the recipe changed");
    }

    #[test]
    fn the_base_recipe_is_in_the_folder() {
        assert!(source_folder().join(BASE_RECIPE).is_file());
    }
}
