//! Writes a test layout: a gf180mcu die as a designer sends it to the precheck, good or with one
//! defect, as GDSII, gzip'd GDSII or OASIS (the writer the tests use, `layout::write`).
//!
//! ```text
//! cargo run --example layout -- chip_top.gds
//! cargo run --example layout -- --slot 0p5x1 --cob --top my_chip my_chip.oas
//! cargo run --example layout -- --defect drc-space chip_top.gds.gz
//! cargo run --example layout -- --size 1073741824 chip_top.gds   # 1 GiB, for the benchmark
//! ```
//! The format follows the file name (`.gds`, `.gds.gz`, `.oas`); the top cell defaults to the
//! name up to its first dot, as the precheck's `--top` does.

use std::path::PathBuf;

use clap::Parser;
use precheck_server::layout::write::{Defect, Die, SLOT_SIZES, big_gds};

#[derive(Parser)]
#[command(
    about = "Writes a gf180mcu test die (good, or with one defect) as GDSII, .gds.gz or OASIS"
)]
struct Args {
    /// The file to write: `.gds`, `.gds.gz` or `.oas`.
    file: PathBuf,
    /// The top cell (default: the file name up to its first dot).
    #[arg(long)]
    top: Option<String>,
    /// The slot: 1x1, 0p5x1, 1x0p5 or 0p5x0p5.
    #[arg(long, default_value = "1x1")]
    slot: String,
    /// Place the chip-on-board ID cells.
    #[arg(long)]
    cob: bool,
    /// One defect: wrong-size, offset-origin, no-seal-ring, forbidden-layer, two-top-cells,
    /// drc-width or drc-space.
    #[arg(long)]
    defect: Option<String>,
    /// Instead: a big GDSII die of about this many bytes (many squares in a 1x1 die), written
    /// in constant memory, as the upload benchmark sends it.
    #[arg(long, conflicts_with_all = ["slot", "cob", "defect"])]
    size: Option<u64>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let name = args
        .file
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default();
    let top = args
        .top
        .clone()
        .unwrap_or_else(|| name.split('.').next().unwrap_or_default().to_string());
    anyhow::ensure!(!top.is_empty(), "give the top cell with --top");
    anyhow::ensure!(
        SLOT_SIZES.iter().any(|(slot, _, _)| *slot == args.slot),
        "--slot {:?}: use one of {}",
        args.slot,
        SLOT_SIZES.map(|(slot, _, _)| slot).join(", ")
    );
    if let Some(size) = args.size {
        anyhow::ensure!(
            name.ends_with(".gds"),
            "{name}: --size writes GDSII: name it .gds"
        );
        let file = std::fs::File::create(&args.file)
            .map_err(|e| anyhow::anyhow!("cannot create {}: {e}", args.file.display()))?;
        big_gds(std::io::BufWriter::with_capacity(1 << 20, file), &top, size)
            .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", args.file.display()))?;
        return Ok(());
    }
    let mut die = Die::new(&top).slot(&args.slot);
    if args.cob {
        die = die.cob();
    }
    if let Some(defect) = &args.defect {
        let defect = Defect::parse(defect).ok_or_else(|| {
            anyhow::anyhow!(
                "--defect {defect:?}: use one of {}",
                Defect::ALL.map(Defect::as_str).join(", ")
            )
        })?;
        die = die.defect(defect);
    }
    let bytes = if name.ends_with(".gds.gz") {
        die.gds_gz()
    } else if name.ends_with(".oas") {
        die.oasis()
    } else if name.ends_with(".gds") {
        die.gds()
    } else {
        anyhow::bail!("{name}: the name must end in .gds, .gds.gz or .oas");
    };
    std::fs::write(&args.file, bytes)
        .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", args.file.display()))?;
    Ok(())
}
