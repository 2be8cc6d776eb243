//! A designer's project and the paths of its files.

use time::OffsetDateTime;
use uuid::Uuid;

/// A designer's project: HDL sources kept on the server for simulations and builds.
#[derive(Debug, Clone, PartialEq)]
pub struct Project {
    pub id: Uuid,
    pub name: String,
    pub description: String,
    pub owner: Option<String>,
    pub created: OffsetDateTime,
    pub updated: OffsetDateTime,
    /// How many files it holds and their bytes in all.
    pub files: u64,
    pub size: u64,
}

/// One file of a project; its content is the blob named by its sha256.
#[derive(Debug, Clone, PartialEq)]
pub struct ProjectFile {
    pub path: String,
    pub size: u64,
    pub sha256: String,
    pub modified: OffsetDateTime,
}

/// The longest project file path, and the longest part of one.
pub const MAX_PATH: usize = 1024;
pub const MAX_PATH_PART: usize = 255;

/// Checks a project file path: relative, `/`-separated, no empty, `.` or `..` part, no
/// backslash, NUL or control character. Says what is wrong otherwise.
pub fn check_project_path(path: &str) -> Result<(), String> {
    let problem = if path.is_empty() {
        "is empty"
    } else if path.len() > MAX_PATH {
        "is longer than 1024 bytes"
    } else if path.starts_with('/') {
        "is absolute: give it relative to the project, e.g. src/top.v"
    } else if path.chars().any(|c| c.is_control()) {
        "contains a control character"
    } else if path.contains('\\') {
        "contains '\\\\': separate folders with '/'"
    } else if path.split('/').any(|part| part == "..") {
        "contains '..'"
    } else if path.split('/').any(|part| part.is_empty() || part == ".") {
        "has an empty or '.' part"
    } else if path.split('/').any(|part| part.len() > MAX_PATH_PART) {
        "has a part longer than 255 bytes"
    } else {
        return Ok(());
    };
    Err(format!("the path {path:?} {problem}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn project_paths() {
        for good in [
            "top.v",
            "src/top.v",
            "a/b/c/d.sv",
            "tb_top.v",
            "with space.v",
            "ünï.v",
            "..v",
            ".hidden/x.v",
        ] {
            assert_eq!(check_project_path(good), Ok(()), "{good}");
        }
        let long_part = "a".repeat(256);
        let long_path = "a/".repeat(600);
        let last_part = format!("src/{}", "b".repeat(256));
        for (bad, why) in [
            ("", "\"\" is empty"),
            (
                "/etc/passwd",
                "is absolute: give it relative to the project",
            ),
            ("../x.v", "contains '..'"),
            ("src/../../x.v", "contains '..'"),
            ("src/..", "contains '..'"),
            ("src//x.v", "has an empty or '.' part"),
            ("./x.v", "has an empty or '.' part"),
            ("src/./x.v", "has an empty or '.' part"),
            ("src/", "has an empty or '.' part"),
            ("a\\b.v", "contains '\\\\': separate folders with '/'"),
            ("a\0b", "contains a control character"),
            ("a\nb", "contains a control character"),
            ("a\u{1b}[31mb", "contains a control character"),
            (&long_part, "has a part longer than 255 bytes"),
            (&last_part, "has a part longer than 255 bytes"),
            (&long_path, "is longer than 1024 bytes"),
        ] {
            let e = check_project_path(bad).unwrap_err();
            assert!(e.starts_with("the path "), "{bad:?}: {e}");
            assert!(e.contains(why), "{bad:?}: {e}");
        }
    }
}
