//! A designer's project, the rules of its name and description, and the paths of its files.
//! Each check's error is the message the API answers with (400).

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

/// The most characters (not bytes) of a project's name and of its description.
pub const MAX_NAME: usize = 100;
pub const MAX_DESCRIPTION: usize = 10_000;

/// Checks a project's name: 1 to 100 characters without control characters once its
/// surrounding spaces are dropped. Returns it trimmed, or the API's message naming the field.
pub fn project_name(name: &str) -> Result<String, String> {
    let name = name.trim();
    if name.is_empty() || name.chars().count() > MAX_NAME || name.chars().any(char::is_control) {
        return Err(format!(
            "name: {name:?} must be 1 to 100 characters without control characters"
        ));
    }
    Ok(name.to_string())
}

/// Checks a project's description: at most 10 000 characters, kept as given.
pub fn project_description(description: String) -> Result<String, String> {
    if description.chars().count() > MAX_DESCRIPTION {
        return Err("description: at most 10 000 characters".into());
    }
    Ok(description)
}

/// A change of a project's name and/or description, each checked as when it is created.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProjectEdit {
    pub name: Option<String>,
    pub description: Option<String>,
}

impl ProjectEdit {
    /// Refuses a change of nothing, then a bad name, then a bad description.
    pub fn new(name: Option<&str>, description: Option<String>) -> Result<ProjectEdit, String> {
        if name.is_none() && description.is_none() {
            return Err("nothing to change: send name and/or description".into());
        }
        Ok(ProjectEdit {
            name: name.map(project_name).transpose()?,
            description: description.map(project_description).transpose()?,
        })
    }
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
    fn project_names_are_1_to_100_characters_without_control_characters() {
        let hundred_e = "é".repeat(100);
        let hundred = "a".repeat(100);
        let padded = format!("  {hundred}  ");
        for (input, kept) in [
            ("chip", "chip"),
            ("  my chip \t", "my chip"),
            ("a", "a"),
            (&hundred[..], &hundred[..]),
            // Characters are counted, not bytes: 100 'é' are 200 bytes.
            (&hundred_e[..], &hundred_e[..]),
            // Surrounding spaces do not count toward the limit.
            (&padded[..], &hundred[..]),
            ("ünï côdé", "ünï côdé"),
        ] {
            assert_eq!(project_name(input).as_deref(), Ok(kept), "{input:?}");
        }
        let too_long = "a".repeat(101);
        let too_long_e = "é".repeat(101);
        for (input, shown) in [
            ("", r#""""#),
            ("   ", r#""""#),
            ("\t\n", r#""""#),
            (&too_long[..], &format!("{too_long:?}")[..]),
            (&too_long_e[..], &format!("{too_long_e:?}")[..]),
            ("my\nchip", r#""my\nchip""#),
            ("my\tchip", r#""my\tchip""#),
            ("red \u{1b}[31m chip", r#""red \u{1b}[31m chip""#),
            ("nul\0", r#""nul\0""#),
        ] {
            assert_eq!(
                project_name(input),
                Err(format!(
                    "name: {shown} must be 1 to 100 characters without control characters"
                )),
                "{input:?}"
            );
        }
    }

    #[test]
    fn project_descriptions_are_at_most_10_000_characters() {
        for good in [
            String::new(),
            "  kept as given\n with its lines\t ".to_string(),
            "a".repeat(10_000),
            "é".repeat(10_000),
        ] {
            assert_eq!(project_description(good.clone()), Ok(good));
        }
        for bad in ["a".repeat(10_001), "é".repeat(10_001)] {
            assert_eq!(
                project_description(bad),
                Err("description: at most 10 000 characters".to_string())
            );
        }
    }

    #[test]
    fn a_project_edit_changes_something_and_checks_what_it_changes() {
        assert_eq!(
            ProjectEdit::new(None, None),
            Err("nothing to change: send name and/or description".to_string())
        );
        assert_eq!(
            ProjectEdit::new(Some(" new "), None),
            Ok(ProjectEdit {
                name: Some("new".into()),
                description: None
            })
        );
        assert_eq!(
            ProjectEdit::new(None, Some(String::new())),
            Ok(ProjectEdit {
                name: None,
                description: Some(String::new())
            })
        );
        assert_eq!(
            ProjectEdit::new(Some("n"), Some("d".into())),
            Ok(ProjectEdit {
                name: Some("n".into()),
                description: Some("d".into())
            })
        );
        let name_error = project_name("").unwrap_err();
        assert_eq!(ProjectEdit::new(Some(""), None), Err(name_error.clone()));
        // The name is checked first.
        assert_eq!(
            ProjectEdit::new(Some(""), Some("a".repeat(10_001))),
            Err(name_error)
        );
        assert_eq!(
            ProjectEdit::new(Some("ok"), Some("a".repeat(10_001))),
            Err("description: at most 10 000 characters".to_string())
        );
    }

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
