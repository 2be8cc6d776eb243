//! A build's progress, read from LibreLane's log as it is written.
//!
//! LibreLane draws its progress bar only on a terminal; a container's log is not one, so what
//! the log holds per step is what its logger prints: a rule (`──── Global Placement ────`) when
//! a step starts, or `Skipping step 'Name'…` when it is skipped. Each is one stage of the bar,
//! so counting them gives the step number the bar would show. The number of steps appears only
//! in the bar's last drawing (`Classic - Stage 78 - Name ━━━━ 78/78 0:12:34`), printed when
//! the flow ends; until then the count is the one the last completed build of the same project
//! and config had, if any (see docs/decisions.md).

use std::io::{self, BufRead};
use std::path::Path;

use crate::model::Progress;

/// The progress after one line of the log, if the line changes it. `line` may start with the
/// engine's RFC 3339 timestamp.
pub fn advance(current: &Progress, line: &str) -> Option<Progress> {
    let text = strip_timestamp(line).trim();
    if let Some(name) = rule_title(text) {
        return Some(Progress {
            step: current.step + 1,
            name: name.to_string(),
            count: current.count,
        });
    }
    if let Some(name) = skipped_step(text) {
        return Some(Progress {
            step: current.step + 1,
            name: format!("{name} (skipped)"),
            count: current.count,
        });
    }
    if let Some(count) = final_bar(text) {
        return Some(Progress {
            count: Some(count),
            ..current.clone()
        });
    }
    None
}

/// The progress after every line of a log file, from `start`; `start` if there is no file.
pub fn replay(start: Progress, path: &Path) -> io::Result<Progress> {
    let file = match std::fs::File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(start),
        Err(e) => return Err(e),
    };
    let mut progress = start;
    let mut line = Vec::new();
    let mut reader = io::BufReader::new(file);
    while reader.read_until(b'\n', &mut line)? > 0 {
        if let Some(next) = advance(&progress, &String::from_utf8_lossy(&line)) {
            progress = next;
        }
        line.clear();
    }
    Ok(progress)
}

fn strip_timestamp(line: &str) -> &str {
    match line.split_once(' ') {
        Some((first, rest)) if first.len() >= 20 && first.ends_with('Z') && first.contains('T') => {
            rest
        }
        _ => line,
    }
}

/// `──── Name ────` -> `Name`.
fn rule_title(text: &str) -> Option<&str> {
    let inner = text.trim_matches('─');
    if inner.len() == text.len() || !text.starts_with('─') || !text.ends_with('─') {
        return None;
    }
    let title = inner.trim();
    (!title.is_empty() && !title.contains('─')).then_some(title)
}

/// `[12:00:00] INFO     Skipping step 'Name'…` -> `Name`.
fn skipped_step(text: &str) -> Option<&str> {
    let start = text.find("Skipping step '")? + "Skipping step '".len();
    let rest = &text[start..];
    let end = rest.rfind('\'')?;
    let name = &rest[..end];
    (!name.is_empty()).then_some(name)
}

/// The number of steps in the bar's last drawing: `Classic - Stage 78 - Signoff ━━━━ 77/78
/// 0:12:34` -> 78 (the first number counts the steps finished, not the one the flow was in).
fn final_bar(text: &str) -> Option<u32> {
    if !text.contains(" - Stage ") || !text.contains('━') {
        return None;
    }
    let after_bar = text.rsplit('━').next()?.trim();
    let fraction = after_bar.split_whitespace().next()?;
    let (done, total) = fraction.split_once('/')?;
    let (done, total): (u32, u32) = (done.parse().ok()?, total.parse().ok()?);
    (done <= total && total > 0).then_some(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed(lines: &[&str]) -> Progress {
        let mut p = Progress::default();
        for line in lines {
            if let Some(next) = advance(&p, line) {
                p = next;
            }
        }
        p
    }

    #[test]
    fn rules_and_skips_count_steps_and_the_last_bar_gives_the_count() {
        let p = feed(&[
            "2026-11-24T18:00:00.000000001Z [18:00:00] INFO     Starting a new run of the 'Classic' flow with the tag 'x'.",
            "2026-11-24T18:00:00.000000002Z ──────────────────── Verilator Lint ────────────────────",
            "2026-11-24T18:00:00.000000003Z [18:00:00] VERBOSE  Running 'Verilator.Lint'… (Log: runs/x/01-verilator-lint/verilator-lint.log)",
            "──── Synthesis ────",
        ]);
        assert_eq!(
            p,
            Progress {
                step: 2,
                name: "Synthesis".into(),
                count: None
            }
        );
        let p = advance(&p, "[18:00:01] INFO     Skipping step 'Magic DRC'…").unwrap();
        assert_eq!((p.step, p.name.as_str()), (3, "Magic DRC (skipped)"));
        let p = advance(
            &p,
            "2026-11-24T18:00:09Z Classic - Stage 3 - Magic DRC ━━━━━━━━━━━━━━━━ 3/3 0:00:09",
        )
        .unwrap();
        assert_eq!(p.count, Some(3));
        assert_eq!(p.step, 3);
        // A flow that stopped in step 2 of 5 draws "1/5": the step stays the one it was in.
        let failed = feed(&[
            "──── Verilator Lint ────",
            "──── Synthesis ────",
            "Classic - Stage 2 - Synthesis ━━━━━━━━━━ 1/5 0:00:00",
        ]);
        assert_eq!(
            (failed.step, failed.name.as_str(), failed.count),
            (2, "Synthesis", Some(5))
        );
    }

    #[test]
    fn a_log_file_is_replayed_from_a_start() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("logs.txt");
        let start = Progress {
            count: Some(78),
            ..Progress::default()
        };
        assert_eq!(replay(start.clone(), &path).unwrap(), start);
        std::fs::write(
            &path,
            "2026-11-24T18:00:00Z ──── Verilator Lint ────\n2026-11-24T18:00:01Z x\n2026-11-24T18:00:02Z ──── Synthesis ────\n",
        )
        .unwrap();
        let p = replay(start, &path).unwrap();
        assert_eq!(
            (p.step, p.name.as_str(), p.count),
            (2, "Synthesis", Some(78))
        );
    }

    #[test]
    fn other_lines_change_nothing() {
        let p = Progress::default();
        for line in [
            "",
            "────────",
            "a ── b",
            "2026-11-24T18:00:00Z plain text",
            "[ERROR] something ─ went wrong",
            "Stage 3 of 5",
            "Classic - Stage 1 - X ━━━ 9/3",
        ] {
            assert_eq!(advance(&p, line), None, "{line:?}");
        }
    }
}
