//! `precheck-server inspect FILE`: the server's layout checks on a local file, before uploading.

use std::path::Path;

use anyhow::{Context, Result, bail};

use super::{Output, print_json};
use crate::api::LayoutBody;
use crate::layout::{self, EXPECTED_DBU_MICRONS, Layout};

pub fn run(file: &Path, output: Output) -> Result<()> {
    let opened =
        std::fs::File::open(file).with_context(|| format!("cannot open {}", file.display()))?;
    let layout = match layout::inspect(opened) {
        Ok(layout) => layout,
        Err(e) => bail!("{}: {e}", file.display()),
    };
    if output.json {
        return print_json(&LayoutBody::new(layout.format, Some(&layout)));
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
    outln!("Precheck:   {}", verdict(&layout))?;
    Ok(())
}

/// What the server would say to a precheck of this layout without `top_cell`.
fn verdict(layout: &Layout) -> String {
    if !layout.dbu_is(EXPECTED_DBU_MICRONS) {
        return "refused: export the layout again with a 1 nm database unit".into();
    }
    match layout.top_cells.as_slice() {
        [only] => format!("ready (top cell {only})"),
        [] => "refused: no top cell (every cell is placed by another)".into(),
        tops => format!("name the top cell to check: there are {}", tops.len()),
    }
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
            run(&missing, output).unwrap_err().to_string(),
            format!("cannot open {}", missing.display())
        );
        let text = dir.path().join("chip_top.gds");
        std::fs::write(&text, "PK\u{3}\u{4} a zip, not a layout").unwrap();
        let e = run(&text, output).unwrap_err().to_string();
        assert!(
            e.starts_with(&format!(
                "{}: not a layout: expected GDSII, gzip'd GDSII or OASIS, but it starts with ",
                text.display()
            )),
            "{e}"
        );
    }
}
