//! `precheck-server inspect FILE [--slot S] [--cob]`: the server's layout checks on a local
//! file, before uploading: its format, unit, cells and die, and whether the precheck would take
//! it (exit 0) or refuse it (exit 1, each reason told).

use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use serde::Serialize;

use super::{Output, print_json};
use crate::api::LayoutBody;
use crate::layout::{self, EXPECTED_DBU_MICRONS, Layout};
use crate::model::{Slot, layout_problems, microns};

/// What `--json` prints: the layout as an upload shows it, and the verdict.
#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct InspectBody {
    #[serde(flatten)]
    layout: LayoutBody,
    precheck: Verdict,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct Verdict {
    slot: String,
    cob: bool,
    ready: bool,
    /// Each reason the precheck would refuse the layout, in the order it checks them.
    problems: Vec<String>,
}

pub fn run(file: &Path, slot: Slot, cob: bool, output: Output) -> Result<ExitCode> {
    let opened =
        std::fs::File::open(file).with_context(|| format!("cannot open {}", file.display()))?;
    let layout = match layout::inspect(opened) {
        Ok(layout) => layout,
        Err(e) => bail!("{}: {e}", file.display()),
    };
    let problems = layout_problems(&layout, slot, cob);
    let code = if problems.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    };
    if output.json {
        print_json(&InspectBody {
            layout: LayoutBody::new(layout.format, Some(&layout)),
            precheck: Verdict {
                slot: slot.to_string(),
                cob,
                ready: problems.is_empty(),
                problems,
            },
        })?;
        return Ok(code);
    }
    let unit = if layout.dbu_is(EXPECTED_DBU_MICRONS) {
        format!("{} µm (1 nm)", layout.dbu_microns)
    } else {
        format!(
            "{} µm (the precheck needs {EXPECTED_DBU_MICRONS} µm)",
            layout.dbu_microns
        )
    };
    outln!("File:       {}", file.display())?;
    outln!("Format:     {}", layout.format.as_str())?;
    outln!("Unit:       {unit}")?;
    outln!("Cells:      {}", layout.cells.len())?;
    outln!("Top cells:  {}", layout.top_cells.join(", "))?;
    if let Some((die, layers)) = die_lines(&layout) {
        outln!("Die:        {die}")?;
        outln!("Layers:     {layers}")?;
    }
    let what = if cob {
        format!("slot {slot}, chip-on-board")
    } else {
        format!("slot {slot}")
    };
    match problems.as_slice() {
        [] => outln!("Precheck:   ready ({what})")?,
        problems => {
            outln!("Precheck:   refused ({what}):")?;
            for problem in problems {
                outln!("  - {problem}")?;
            }
        }
    }
    Ok(code)
}

/// The die's line ("chip_top: 3932 x 5122 µm from (0, 0)") and its layers, when it is known.
fn die_lines(layout: &Layout) -> Option<(String, String)> {
    let die = layout.die.as_ref()?;
    let nm = |v: i64| (v as f64 * layout.dbu_microns * 1000.0).round() as i64;
    let size = match die.bbox {
        Some(b) => format!(
            "{} x {} µm from ({}, {})",
            microns(nm(b.right) - nm(b.left)),
            microns(nm(b.top) - nm(b.bottom)),
            microns(nm(b.left)),
            microns(nm(b.bottom))
        ),
        None => "no shapes".into(),
    };
    let layers: Vec<String> = die.layers.iter().map(|(l, d)| format!("{l}/{d}")).collect();
    Some((format!("{}: {size}", die.cell), layers.join(" ")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_that_is_not_a_layout_is_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let output = Output { json: true };
        let missing = dir.path().join("missing.gds");
        assert_eq!(
            run(&missing, Slot::Full, false, output)
                .unwrap_err()
                .to_string(),
            format!("cannot open {}", missing.display())
        );
        let text = dir.path().join("chip_top.gds");
        std::fs::write(&text, "PK\u{3}\u{4} a zip, not a layout").unwrap();
        let e = run(&text, Slot::Full, false, output)
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with(&format!(
                "{}: not a layout: expected GDSII, gzip'd GDSII or OASIS, but it starts with ",
                text.display()
            )),
            "{e}"
        );
    }

    #[test]
    fn a_die_is_ready_for_its_slot_and_refused_for_another() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("chip_top.gds");
        std::fs::write(&file, crate::layout::write::Die::new("chip_top").gds()).unwrap();
        let output = Output { json: true };
        assert_eq!(
            run(&file, Slot::Full, false, output).unwrap(),
            ExitCode::SUCCESS
        );
        assert_eq!(
            run(&file, Slot::Quarter, false, output).unwrap(),
            ExitCode::FAILURE
        );
        assert_eq!(
            run(&file, Slot::Quarter, true, output).unwrap(),
            ExitCode::SUCCESS
        );
        let layout = layout::inspect(std::fs::File::open(&file).unwrap()).unwrap();
        let (die, layers) = die_lines(&layout).unwrap();
        assert_eq!(die, "chip_top: 3932 x 5122 µm from (0, 0)");
        assert!(layers.ends_with(" 167/5"), "{layers}");
    }
}
