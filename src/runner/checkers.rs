//! The errors a flow's checkers found, read from the end of its log. A precheck's flow and a
//! build's defer them to the end and raise them together, so they tell a layout with problems
//! from a crashed tool that exited with the same code.

use crate::logs;

/// How much of a log's end is read for the checkers' errors: a failed flow prints them last.
const CHECKER_TAIL_LINES: usize = 200;
const CHECKER_TAIL_BYTES: u64 = 64 * 1024;

/// The errors a flow's checkers found, as a clause ending in "; " (`"3 KLayout DRC errors
/// found; "`, or empty if they were not named), read from the end of the run's log; `None` if
/// the flow did not end with checker errors.
pub(super) async fn checker_errors(log: std::path::PathBuf) -> Option<String> {
    let lines = tokio::task::spawn_blocking(move || {
        logs::last_lines(&log, CHECKER_TAIL_LINES, CHECKER_TAIL_BYTES)
    })
    .await
    .ok()?
    .inspect_err(|e| tracing::warn!("cannot read the end of a run's log: {e}"))
    .ok()?;
    let found = deferred_errors(&lines)?;
    Some(if found.is_empty() {
        String::new()
    } else {
        format!("{}; ", found.join("; "))
    })
}

/// What LibreLane raises when a flow's checkers found errors: this line, then one line per
/// error (precheck.py prints them as they are; LibreLane's log indents them under its error).
const DEFERRED_ERRORS: &str = "One or more deferred errors were encountered";

/// At most this many of the checkers' messages are kept, each at most this long.
const MAX_CHECKER_MESSAGES: usize = 8;
const MAX_CHECKER_MESSAGE: usize = 300;

/// The checkers' messages after the last "One or more deferred errors were encountered" of a
/// log's last lines, without their final periods; `None` if there is no such line. Items of a
/// list (`* corner`) join the message they belong to.
fn deferred_errors(lines: &[String]) -> Option<Vec<String>> {
    let start = lines.iter().rposition(|l| l.contains(DEFERRED_ERRORS))?;
    let mut found: Vec<String> = Vec::new();
    for line in &lines[start + 1..] {
        let text = line.trim();
        // A blank line, a new log record ("[12:00:00] ERROR ...", "[precheck-server] ...") or a
        // traceback ends the list.
        if text.is_empty() || line.starts_with('[') || text.starts_with("Traceback") {
            break;
        }
        let full = found.len() == MAX_CHECKER_MESSAGES;
        match (text.strip_prefix("* "), found.last_mut()) {
            (Some(item), Some(last)) => {
                let joint = if last.ends_with(':') { " " } else { ", " };
                last.push_str(joint);
                last.push_str(item);
            }
            _ if full => break,
            _ => found.push(text.to_string()),
        }
    }
    Some(
        found
            .into_iter()
            .map(|m| {
                let m = m.trim_end_matches('.');
                match m.char_indices().nth(MAX_CHECKER_MESSAGE) {
                    Some((cut, _)) => format!("{}...", &m[..cut]),
                    None => m.to_string(),
                }
            })
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The checkers' messages read from a log's last lines (`None`: no checker errors).
    fn check(log: &[&str], expected: Option<&[&str]>) {
        let lines: Vec<String> = log.iter().map(|l| l.to_string()).collect();
        let found = deferred_errors(&lines);
        let expected = expected.map(|e| e.iter().map(|m| m.to_string()).collect::<Vec<_>>());
        assert_eq!(found, expected, "{log:#?}");
    }

    #[test]
    fn checker_errors_come_from_the_end_of_the_flow() {
        // precheck.py prints the flow's exception as it is.
        check(
            &[
                "[12:00:01] ERROR    3 KLayout DRC errors found. - deferred",
                "PrecheckFlow - Stage 16 - Write the Layout ━━━━ 16/16 0:00:03",
                "Error: The precheck failed with the following exception: ",
                "One or more deferred errors were encountered:",
                "2 KLayout antenna errors found.",
                "3 KLayout DRC errors found.",
            ],
            Some(&[
                "2 KLayout antenna errors found",
                "3 KLayout DRC errors found",
            ]),
        );
        // LibreLane's own log indents them under its error; lists join their message.
        check(
            &[
                "[12:00:01] ERROR    The following error was encountered while running the flow:",
                "                    One or more deferred errors were encountered:",
                "                    Setup violations found in the following corners:",
                "                    * max_ss_100C_1v60",
                "                    * nom_ss_100C_1v60",
                "                    3 XOR differences found.",
                "[12:00:01] ERROR    LibreLane will now quit.",
                "[precheck-server] run failed (exit code 2)",
            ],
            Some(&[
                "Setup violations found in the following corners: max_ss_100C_1v60, nom_ss_100C_1v60",
                "3 XOR differences found",
            ]),
        );
        // The older form logs the messages before and names none in the exception.
        check(
            &["[12:00:01] ERROR    One or more deferred errors were encountered."],
            Some(&[]),
        );
    }

    #[test]
    fn a_crash_is_not_a_checker_error() {
        check(
            &[
                "[12:00:01] ERROR    3 KLayout DRC errors found. - deferred",
                "PrecheckFlow - Stage 16 - Write the Layout ━━━━ 15/16 0:00:03",
                "Error: The precheck failed with the following exception: ",
                "Write the Layout: Interrupted (SIGSEGV)",
            ],
            None,
        );
        check(
            &[
                "Traceback (most recent call last):",
                "  File \"/workspace/precheck.py\", line 1, in <module>",
                "MemoryError",
            ],
            None,
        );
        check(&[], None);
    }

    #[test]
    fn checker_messages_are_bounded() {
        let long = "x".repeat(1000);
        let many: Vec<String> = (0..20).map(|i| format!("{i} errors found.")).collect();
        let mut log = vec![
            "One or more deferred errors were encountered:",
            long.as_str(),
        ];
        log.extend(many.iter().map(String::as_str));
        let lines: Vec<String> = log.iter().map(|l| l.to_string()).collect();
        let found = deferred_errors(&lines).unwrap();
        assert_eq!(found.len(), MAX_CHECKER_MESSAGES);
        assert_eq!(found[0], format!("{}...", "x".repeat(MAX_CHECKER_MESSAGE)));
        assert_eq!(found[1], "0 errors found");
    }
}
