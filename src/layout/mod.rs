//! What a layout file holds, read in one streaming pass: its format (by content), its database
//! unit, every cell name and the top cells (cells no other cell places).
//!
//! Pure: it reads from any [`Read`], keeps only cell names and references, and never buffers
//! the file. GDSII ([`gds`]), gzip'd GDSII (through `flate2`) and OASIS ([`oasis`]) are parsed
//! here rather than with a crate: the Rust GDSII readers load a whole library into memory, and
//! none reads OASIS (see ARCHITECTURE.md).

#[cfg(test)]
mod fuzz;
mod gds;
mod geometry;
mod oasis;
pub mod write;

#[cfg(test)]
pub(crate) use gds::tests::Writer as GdsWriter;
pub use geometry::{Die, Rect};

use std::cell::Cell;
use std::collections::HashMap;
use std::io::{self, BufRead, BufReader, Read};
use std::sync::atomic::{AtomicBool, Ordering};

/// The file formats a layout upload may have, told apart by content ([`sniff`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LayoutFormat {
    Gds,
    GdsGz,
    Oasis,
}

impl LayoutFormat {
    pub const ALL: [LayoutFormat; 3] =
        [LayoutFormat::Gds, LayoutFormat::GdsGz, LayoutFormat::Oasis];

    pub fn as_str(self) -> &'static str {
        match self {
            LayoutFormat::Gds => "gds",
            LayoutFormat::GdsGz => "gds.gz",
            LayoutFormat::Oasis => "oasis",
        }
    }

    /// The file name the precheck container reads it as.
    pub fn input_name(self) -> &'static str {
        match self {
            LayoutFormat::Gds => "design.gds",
            LayoutFormat::GdsGz => "design.gds.gz",
            LayoutFormat::Oasis => "design.oas",
        }
    }

    pub fn parse(s: &str) -> Option<LayoutFormat> {
        [LayoutFormat::Gds, LayoutFormat::GdsGz, LayoutFormat::Oasis]
            .into_iter()
            .find(|f| f.as_str() == s)
    }
}

/// The database unit the gf180mcu precheck expects: 1 nm.
pub const EXPECTED_DBU_MICRONS: f64 = 0.001;

/// At most this many cells (real chips have thousands): a bound on memory for hostile input.
pub const MAX_CELLS: usize = 1_000_000;
/// At most this many bytes of cell names in all.
pub const MAX_NAME_BYTES: usize = 64 << 20;

/// By default the ratio bound applies only once this many bytes have been inflated: a small
/// file may compress far better than a big one (a few cells of repeated boxes), and inflating
/// this much costs a fraction of a second.
pub const RATIO_FLOOR: u64 = 64 << 20;

/// Bounds on what decompressors may produce while one layout is read: the gzip stream of a
/// `.gds.gz`, all the CBLOCKs of an OASIS file together (`server.max_inflated_size` and
/// `server.max_inflation_ratio`; docs/decisions.md, "Inputs that cost without limit").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InflationLimits {
    /// At most this many inflated bytes in all.
    pub max_inflated: u64,
    /// At most this many inflated bytes for each compressed byte read, once past
    /// `ratio_floor`.
    pub max_ratio: u64,
    /// Inflated bytes below which the ratio is not looked at ([`RATIO_FLOOR`]).
    pub ratio_floor: u64,
}

impl Default for InflationLimits {
    fn default() -> Self {
        InflationLimits {
            max_inflated: 8 << 30,
            max_ratio: 200,
            ratio_floor: RATIO_FLOOR,
        }
    }
}

/// The facts the server checks before a precheck may use a layout.
#[derive(Debug, Clone, PartialEq)]
pub struct Layout {
    pub format: LayoutFormat,
    /// The database unit in micrometres (0.001 for 1 nm).
    pub dbu_microns: f64,
    /// Every cell the file defines, in the order it defines them.
    pub cells: Vec<String>,
    /// The cells no other cell places, in the same order.
    pub top_cells: Vec<String>,
    /// The top cell's geometry, when there is exactly one top cell.
    pub die: Option<Die>,
}

impl Layout {
    /// Whether the database unit is `microns`, within a relative tolerance (writers store
    /// 1/0.001 as 999.9999999999999).
    pub fn dbu_is(&self, microns: f64) -> bool {
        ((self.dbu_microns - microns) / microns).abs() < 1e-9
    }
}

/// Why a file is not a layout the server can use.
#[derive(Debug, thiserror::Error)]
pub enum LayoutError {
    /// Not GDSII, gzip'd GDSII or OASIS at all.
    #[error("not a layout: expected GDSII, gzip'd GDSII or OASIS, but it starts with {0}")]
    NotALayout(String),
    /// The file ends before the format's end record.
    #[error("truncated {format}: {detail}")]
    Truncated {
        format: &'static str,
        detail: String,
    },
    /// The bytes break the format's rules.
    #[error("corrupt {format}: {detail}")]
    Corrupt {
        format: &'static str,
        detail: String,
    },
    /// Its compressed data inflates past a bound of [`InflationLimits`] (the message names the
    /// config key).
    #[error("{0}")]
    Inflation(String),
    /// Reading was stopped from outside (the client went away).
    #[error("the layout was not read to its end: its upload was abandoned")]
    Abandoned,
    /// Reading failed for a reason of the source's own.
    #[error("cannot read the layout: {0}")]
    Io(io::Error),
}

/// Reads a whole layout from `reader` and says what it holds, within the default
/// [`InflationLimits`].
pub fn inspect(reader: impl Read) -> Result<Layout, LayoutError> {
    inspect_within(reader, InflationLimits::default(), &AtomicBool::new(false))
}

/// Reads a whole layout from `reader` within `limits`; stops with [`LayoutError::Abandoned`] at
/// its next read once `stop` is set (every read of the source and of inflated data looks).
pub fn inspect_within(
    reader: impl Read,
    limits: InflationLimits,
    stop: &AtomicBool,
) -> Result<Layout, LayoutError> {
    let meter = Meter::new(limits, stop);
    let (head, source) = read_head(Source {
        inner: reader,
        stop,
    })?;
    let reader = BufReader::with_capacity(64 * 1024, source);
    match sniff(&head) {
        Some(LayoutFormat::Gds) => gds::read(reader, GDS)?.into_layout(LayoutFormat::Gds, GDS),
        Some(LayoutFormat::GdsGz) => {
            let decoder = flate2::bufread::MultiGzDecoder::new(meter.compressed(reader));
            let (head, inflated) = read_head(
                meter.inflated(GzipErrors(decoder), "the gzip'd GDSII"),
            )
            .map_err(|e| match e {
                LayoutError::Io(e) => io_error(e, GDS_GZ, "at its start"),
                other => other,
            })?;
            let inflated = BufReader::with_capacity(64 * 1024, inflated);
            if sniff(&head) != Some(LayoutFormat::Gds) {
                return Err(LayoutError::NotALayout(format!(
                    "gzip data that is not GDSII ({})",
                    describe_start(&head)
                )));
            }
            gds::read(inflated, GDS_GZ)?.into_layout(LayoutFormat::GdsGz, GDS_GZ)
        }
        Some(LayoutFormat::Oasis) => {
            oasis::read(reader, &meter)?.into_layout(LayoutFormat::Oasis, OASIS)
        }
        None => Err(LayoutError::NotALayout(describe_start(&head))),
    }
}

/// The formats' names in messages.
const GDS: &str = "GDSII";
const GDS_GZ: &str = "gzip'd GDSII";
const OASIS: &str = "OASIS";

/// Turns a read error into a layout error: the end of the data is truncation (`context` says
/// where, e.g. "inside record 12 at byte 300"), a gzip failure is gzip's, the rest is I/O.
fn io_error(e: io::Error, format: &'static str, context: &str) -> LayoutError {
    if let Some(stop) = stopped(&e) {
        return match stop {
            Stop::Limit(message) => LayoutError::Inflation(message.clone()),
            Stop::Abandoned => LayoutError::Abandoned,
        };
    }
    if e.get_ref().is_some_and(|inner| inner.is::<GzipError>()) {
        return if e.kind() == io::ErrorKind::UnexpectedEof {
            LayoutError::Truncated {
                format: "gzip",
                detail: format!("the compressed stream ends early ({format} {context})"),
            }
        } else {
            LayoutError::Corrupt {
                format: "gzip",
                detail: format!("{e} ({format} {context})"),
            }
        };
    }
    if e.kind() == io::ErrorKind::UnexpectedEof {
        LayoutError::Truncated {
            format,
            detail: format!("file ends {context}"),
        }
    } else {
        LayoutError::Io(e)
    }
}

/// Recognises a layout by its first bytes (GDSII HEADER record, gzip magic, OASIS magic).
pub fn sniff(head: &[u8]) -> Option<LayoutFormat> {
    if head.starts_with(oasis::MAGIC) {
        Some(LayoutFormat::Oasis)
    } else if head.starts_with(&[0x1f, 0x8b]) {
        Some(LayoutFormat::GdsGz)
    } else if head.starts_with(&[0x00, 0x06, 0x00, 0x02]) {
        Some(LayoutFormat::Gds)
    } else {
        None
    }
}

/// The first bytes of a file, for a message: printable text as text, else hex.
pub fn describe_start(head: &[u8]) -> String {
    let head = &head[..head.len().min(16)];
    if head.is_empty() {
        return "nothing (the file is empty)".into();
    }
    let text = head
        .iter()
        .all(|b| b.is_ascii_graphic() || *b == b' ' || b.is_ascii_whitespace());
    if text {
        format!("{:?}", String::from_utf8_lossy(head))
    } else {
        let hex: Vec<String> = head.iter().map(|b| format!("{b:02x}")).collect();
        format!("the bytes {}", hex.join(" "))
    }
}

/// A reader given back by [`read_head`]: the head it read, then the rest.
type Restarted<R> = io::Chain<io::Cursor<Vec<u8>>, R>;

/// Reads the first 16 bytes (fewer only where the data ends), however small the pieces the
/// source hands out (a network may deliver one byte at a time), and gives back a reader that
/// starts over from them.
fn read_head<R: Read>(mut reader: R) -> Result<(Vec<u8>, Restarted<R>), LayoutError> {
    let mut head = [0u8; 16];
    let mut len = 0;
    while len < head.len() {
        match reader.read(&mut head[len..]) {
            Ok(0) => break,
            Ok(n) => len += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) if stopped(&e).is_some() => return Err(io_error(e, "", "")),
            Err(e) => return Err(LayoutError::Io(e)),
        }
    }
    let head = head[..len].to_vec();
    Ok((head.clone(), io::Cursor::new(head).chain(reader)))
}

/// Why [`Meter`] or [`Source`] stopped a read (carried inside an `io::Error`).
#[derive(Debug)]
pub enum Stop {
    /// Past a bound; the message says which and names its config key.
    Limit(String),
    /// The stop flag was set.
    Abandoned,
}

impl std::fmt::Display for Stop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Stop::Limit(message) => f.write_str(message),
            Stop::Abandoned => f.write_str("abandoned"),
        }
    }
}

impl std::error::Error for Stop {}

/// The [`Stop`] an error carries, if it is one.
pub fn stopped(e: &io::Error) -> Option<&Stop> {
    e.get_ref().and_then(|inner| inner.downcast_ref::<Stop>())
}

fn abandoned(stop: &AtomicBool) -> io::Result<()> {
    if stop.load(Ordering::Relaxed) {
        return Err(io::Error::other(Stop::Abandoned));
    }
    Ok(())
}

/// The layout's bytes as they arrive, read only while the stop flag is unset.
struct Source<'a, R> {
    inner: R,
    stop: &'a AtomicBool,
}

impl<R: Read> Read for Source<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        abandoned(self.stop)?;
        self.inner.read(buf)
    }
}

/// Counts what goes into decompressors and what comes out, and stops a read that inflates past
/// the [`InflationLimits`] or that comes after the stop flag was set. One meter serves every
/// decompressor of a file (all the CBLOCKs of an OASIS file share it; a project's tarball has
/// one of its own).
pub struct Meter<'a> {
    limits: InflationLimits,
    stop: &'a AtomicBool,
    compressed: Cell<u64>,
    inflated: Cell<u64>,
}

impl<'a> Meter<'a> {
    pub fn new(limits: InflationLimits, stop: &'a AtomicBool) -> Self {
        Meter {
            limits,
            stop,
            compressed: Cell::new(0),
            inflated: Cell::new(0),
        }
    }

    /// Counts the bytes a decompressor consumes from `inner`.
    pub fn compressed<R>(&self, inner: R) -> Compressed<'_, 'a, R> {
        Compressed { inner, meter: self }
    }

    /// Counts and bounds the bytes a decompressor produces; `what` names them in messages ("the
    /// gzip'd GDSII").
    pub fn inflated<R>(&self, inner: R, what: &'static str) -> Inflated<'_, 'a, R> {
        Inflated {
            inner,
            meter: self,
            what,
        }
    }

    /// Adds `n` inflated bytes; fails once past a bound.
    fn add_inflated(&self, n: u64, what: &str) -> io::Result<()> {
        let inflated = self.inflated.get().saturating_add(n);
        self.inflated.set(inflated);
        let InflationLimits {
            max_inflated,
            max_ratio,
            ratio_floor,
        } = self.limits;
        let compressed = self.compressed.get();
        let human = crate::units::human_bytes;
        let message = if inflated > max_inflated {
            format!(
                "{what} inflates to more than {}, the server's limit (server.max_inflated_size)",
                human(max_inflated)
            )
        } else if inflated > ratio_floor && inflated > compressed.saturating_mul(max_ratio) {
            format!(
                "{what} inflates to more than {max_ratio} times its compressed size ({} from {}): \
                 refused as a decompression bomb (server.max_inflation_ratio)",
                human(inflated),
                human(compressed)
            )
        } else {
            return Ok(());
        };
        Err(io::Error::other(Stop::Limit(message)))
    }
}

/// A decompressor's input, counted by its [`Meter`].
pub struct Compressed<'m, 'a, R> {
    inner: R,
    meter: &'m Meter<'a>,
}

impl<R> Compressed<'_, '_, R> {
    fn count(&self, n: usize) {
        let meter = self.meter;
        meter
            .compressed
            .set(meter.compressed.get().saturating_add(n as u64));
    }
}

impl<R: Read> Read for Compressed<'_, '_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.count(n);
        Ok(n)
    }
}

impl<R: BufRead> BufRead for Compressed<'_, '_, R> {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        self.inner.fill_buf()
    }

    fn consume(&mut self, amt: usize) {
        self.count(amt);
        self.inner.consume(amt);
    }
}

/// A decompressor's output, counted and bounded by its [`Meter`].
pub struct Inflated<'m, 'a, R> {
    inner: R,
    meter: &'m Meter<'a>,
    what: &'static str,
}

impl<R: Read> Read for Inflated<'_, '_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        abandoned(self.meter.stop)?;
        let n = self.inner.read(buf)?;
        self.meter.add_inflated(n as u64, self.what)?;
        Ok(n)
    }
}

/// Marks errors of the gzip layer, so they are reported as gzip's, not as the GDSII's.
struct GzipErrors<R>(R);

#[derive(Debug)]
struct GzipError(io::Error);

impl std::fmt::Display for GzipError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for GzipError {}

impl<R: Read> Read for GzipErrors<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.read(buf).map_err(|e| {
            if stopped(&e).is_some() {
                e
            } else if e.kind() == io::ErrorKind::UnexpectedEof {
                io::Error::new(io::ErrorKind::UnexpectedEof, GzipError(e))
            } else {
                io::Error::other(GzipError(e))
            }
        })
    }
}

/// Cells and who places whom, as a reader finds them; names may come before or after use.
#[derive(Default)]
struct CellGraph {
    /// Defined cells, in file order, by key.
    defined: Vec<CellKey>,
    /// Keys of cells placed by another cell.
    placed: std::collections::HashSet<CellKey>,
    /// Reference number -> name (OASIS CELLNAME records).
    names: HashMap<u64, String>,
    name_bytes: usize,
}

/// A cell as a record names it: by name, or (OASIS) by reference number.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum CellKey {
    Name(String),
    Ref(u64),
}

/// What a format reader found, before reference numbers are resolved.
struct Found {
    dbu_microns: f64,
    graph: CellGraph,
    geometry: geometry::Geometry,
}

impl CellGraph {
    /// Counts a name against the memory bounds.
    fn charge(&mut self, name: &str, format: &'static str) -> Result<(), LayoutError> {
        self.name_bytes += name.len();
        if self.name_bytes > MAX_NAME_BYTES {
            return Err(LayoutError::Corrupt {
                format,
                detail: format!("more than {} MiB of cell names", MAX_NAME_BYTES >> 20),
            });
        }
        Ok(())
    }

    fn define(&mut self, cell: CellKey, format: &'static str) -> Result<(), LayoutError> {
        if self.defined.len() >= MAX_CELLS {
            return Err(LayoutError::Corrupt {
                format,
                detail: format!("more than {MAX_CELLS} cells"),
            });
        }
        if let CellKey::Name(name) = &cell {
            let name = name.clone();
            self.charge(&name, format)?;
        }
        self.defined.push(cell);
        Ok(())
    }

    /// Records that `child` is placed by the cell being defined (`parent`).
    fn place(
        &mut self,
        parent: Option<&CellKey>,
        child: CellKey,
        format: &'static str,
    ) -> Result<(), LayoutError> {
        if parent == Some(&child) || self.placed.contains(&child) {
            return Ok(());
        }
        if self.placed.len() >= MAX_CELLS {
            return Err(LayoutError::Corrupt {
                format,
                detail: format!("references to more than {MAX_CELLS} cells"),
            });
        }
        if let CellKey::Name(name) = &child {
            let name = name.clone();
            self.charge(&name, format)?;
        }
        self.placed.insert(child);
        Ok(())
    }

    fn name(&mut self, number: u64, name: String, format: &'static str) -> Result<(), LayoutError> {
        self.charge(&name, format)?;
        if self.names.len() >= MAX_CELLS {
            return Err(LayoutError::Corrupt {
                format,
                detail: format!("more than {MAX_CELLS} cell names"),
            });
        }
        self.names.insert(number, name);
        Ok(())
    }

    /// The name of a cell, if the file gives one for its reference number.
    fn resolve(&self, key: &CellKey) -> Option<String> {
        match key {
            CellKey::Name(name) => Some(name.clone()),
            CellKey::Ref(n) => self.names.get(n).cloned(),
        }
    }

    /// Resolves reference numbers to names and finds the top cells.
    fn finish(&self, format: &'static str) -> Result<(Vec<String>, Vec<String>), LayoutError> {
        let resolve = |key: &CellKey| -> Result<String, LayoutError> {
            self.resolve(key).ok_or_else(|| {
                let CellKey::Ref(n) = key else {
                    unreachable!("a name always resolves")
                };
                LayoutError::Corrupt {
                    format,
                    detail: format!("cell reference number {n} has no CELLNAME record"),
                }
            })
        };
        let placed: std::collections::HashSet<String> = self
            .placed
            .iter()
            .filter_map(|key| self.resolve(key))
            .collect();
        let mut cells = Vec::with_capacity(self.defined.len());
        let mut tops = vec![];
        let mut seen = std::collections::HashSet::new();
        for key in &self.defined {
            let name = resolve(key)?;
            if !seen.insert(name.clone()) {
                return Err(LayoutError::Corrupt {
                    format,
                    detail: format!("the cell {name:?} is defined twice"),
                });
            }
            if !placed.contains(&name) {
                tops.push(name.clone());
            }
            cells.push(name);
        }
        Ok((cells, tops))
    }
}

impl Found {
    fn into_layout(self, format: LayoutFormat, name: &'static str) -> Result<Layout, LayoutError> {
        let (cells, top_cells) = self.graph.finish(name)?;
        let die = match top_cells.as_slice() {
            [top] => Some(
                self.geometry
                    .die(top, |key| self.graph.resolve(key), name)?,
            ),
            _ => None,
        };
        Ok(Layout {
            format,
            dbu_microns: self.dbu_microns,
            cells,
            top_cells,
            die,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    /// `../shared/fixtures/gds/` beside the repository, where it is: the real layouts our
    /// machines keep there, which a clone does not have. Tests that read them say that they
    /// skipped when it is missing; every property they check is also checked on layouts the
    /// tests make (`write`).
    pub(crate) fn shared_fixtures() -> Option<PathBuf> {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/fixtures/gds");
        if dir.is_dir() {
            Some(dir)
        } else {
            eprintln!(
                "skipped: {} is not there (a clone without ../shared)",
                dir.display()
            );
            None
        }
    }

    fn inspect_file(path: &std::path::Path) -> Layout {
        let file = std::fs::File::open(path).unwrap();
        inspect(file).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    }

    /// The table in ../shared/fixtures/README.md, when the fixtures are there.
    #[test]
    fn shared_fixtures_give_the_top_cells_and_units_of_their_table() {
        let Some(dir) = shared_fixtures() else {
            return;
        };
        let table: &[(&str, &[&str])] = &[
            ("gf180mcu_ws_ip__logo.gds", &["gf180mcu_ws_ip__logo"]),
            ("gf180mcu_ws_ip__marker.gds", &["gf180mcu_ws_ip__marker"]),
            (
                "gf180mcu_ws_ip__project_id.gds",
                &["gf180mcu_ws_ip__project_id"],
            ),
            (
                "gf180mcu_ws_ip__qrcode_id.gds",
                &["gf180mcu_ws_ip__qrcode_id"],
            ),
            ("mask_1x1.gds", &["chip_top"]),
            ("mask_0p5x0p5.gds", &["chip_top"]),
            ("mask_0p5x1.gds", &["chip_top"]),
            ("mask_1x0p5.gds", &["chip_top"]),
            ("chip_top_hier.gds", &["chip_top"]),
            ("chip_top_hier.gds.gz", &["chip_top"]),
            ("chip_top_hier.oas", &["chip_top"]),
            ("two_tops.gds", &["top_a", "top_b"]),
        ];
        for (name, tops) in table {
            let layout = inspect_file(&dir.join(name));
            let mut found = layout.top_cells.clone();
            found.sort();
            assert_eq!(found, *tops, "{name}");
            assert!(
                layout.dbu_is(EXPECTED_DBU_MICRONS),
                "{name}: {}",
                layout.dbu_microns
            );
        }
        // The boxes KLayout 0.28's `Cell.bbox()` gives for them.
        let boxes: &[(&str, [i64; 4])] = &[
            ("gf180mcu_ws_ip__logo.gds", [0, 0, 143250, 143250]),
            ("gf180mcu_ws_ip__marker.gds", [0, 0, 245000, 245000]),
            ("gf180mcu_ws_ip__project_id.gds", [0, 0, 195500, 59500]),
            ("gf180mcu_ws_ip__qrcode_id.gds", [0, 0, 142800, 142800]),
            ("mask_1x1.gds", [3000, 3000, 3929000, 5119000]),
            ("mask_0p5x0p5.gds", [3000, 3000, 1933000, 2528000]),
            ("mask_0p5x1.gds", [3000, 3000, 1933000, 5119000]),
            ("mask_1x0p5.gds", [3000, 3000, 3929000, 2528000]),
            ("chip_top_hier.gds", [0, 0, 3932000, 5122000]),
            ("chip_top_hier.gds.gz", [0, 0, 3932000, 5122000]),
            ("chip_top_hier.oas", [0, 0, 3932000, 5122000]),
        ];
        for (name, [l, b, r, t]) in boxes {
            let die = inspect_file(&dir.join(name)).die.expect("one top cell");
            assert_eq!(die.bbox, Some(Rect::new(*l, *b, *r, *t)), "{name}");
        }
        let hier = inspect_file(&dir.join("chip_top_hier.gds")).die.unwrap();
        let layers = [
            (0, 0),
            (34, 0),
            (36, 0),
            (42, 0),
            (46, 0),
            (81, 0),
            (111, 5),
            (152, 5),
        ];
        assert_eq!(hier.layers, layers);
        let oas = inspect_file(&dir.join("chip_top_hier.oas")).die.unwrap();
        assert_eq!(oas.layers, layers);
        assert_eq!(inspect_file(&dir.join("two_tops.gds")).die, None);
        let [gds, gz, oas] = [
            "chip_top_hier.gds",
            "chip_top_hier.gds.gz",
            "chip_top_hier.oas",
        ]
        .map(|name| inspect_file(&dir.join(name)));
        assert_eq!(gds.cells.len(), 5);
        assert_eq!(gds.cells, gz.cells);
        let (mut a, mut b) = (gds.cells.clone(), oas.cells.clone());
        a.sort();
        b.sort();
        assert_eq!(a, b);
        assert_eq!(gds.top_cells, oas.top_cells);
    }

    #[test]
    fn the_three_formats_of_one_die_agree() {
        let die = write::Die::new("chip_top").cob();
        let [gds, gz, oas] =
            [die.gds(), die.gds_gz(), die.oasis()].map(|bytes| inspect(&bytes[..]).unwrap());
        assert_eq!(gds.format, LayoutFormat::Gds);
        assert_eq!(gz.format, LayoutFormat::GdsGz);
        assert_eq!(oas.format, LayoutFormat::Oasis);
        assert_eq!(gds.cells.len(), 8, "{:?}", gds.cells);
        assert_eq!(gds.cells, gz.cells);
        assert_eq!(gds.cells, oas.cells);
        assert_eq!(gds.top_cells, ["chip_top"]);
        assert_eq!(gds.top_cells, oas.top_cells);
        assert_eq!(gds.dbu_microns, gz.dbu_microns);
        assert!(oas.dbu_is(EXPECTED_DBU_MICRONS), "{}", oas.dbu_microns);
        let bbox = gds.die.as_ref().and_then(|d| d.bbox);
        assert_eq!(bbox, Some(Rect::new(0, 0, 3_932_000, 5_122_000)));
        assert_eq!(gds.die, gz.die);
        assert_eq!(gds.die, oas.die);
    }

    #[test]
    fn gzip_truncation_and_corruption_are_gzips() {
        let bytes = write::Die::new("chip_top").gds_gz();
        let e = inspect(&bytes[..bytes.len() / 2]).unwrap_err().to_string();
        assert!(
            e.starts_with("truncated gzip: the compressed stream ends early"),
            "{e}"
        );
        let mut bad = bytes.clone();
        for b in &mut bad[20..40] {
            *b ^= 0x5a;
        }
        let e = inspect(&bad[..]).unwrap_err().to_string();
        assert!(
            e.starts_with("corrupt gzip") || e.starts_with("truncated gzip"),
            "{e}"
        );
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut gz, b"just some text").unwrap();
        let e = inspect(&gz.finish().unwrap()[..]).unwrap_err().to_string();
        assert!(e.contains("gzip data that is not GDSII"), "{e}");
    }

    /// A [`write::Repeated`] layout as a reader: counts what it hands out, and sets `stop` once
    /// it has handed out `stop_after` bytes (then counts the reads that still come).
    struct Wire<'a> {
        chunks: Box<dyn Iterator<Item = bytes::Bytes> + 'a>,
        current: bytes::Bytes,
        pulled: u64,
        stop: Option<(u64, &'a AtomicBool)>,
        reads_after_stop: &'a std::cell::Cell<u64>,
    }

    impl<'a> Wire<'a> {
        fn new(layout: &write::Repeated, reads_after_stop: &'a std::cell::Cell<u64>) -> Self {
            Wire {
                chunks: Box::new(layout.chunks()),
                current: bytes::Bytes::new(),
                pulled: 0,
                stop: None,
                reads_after_stop,
            }
        }
    }

    impl Read for Wire<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            if let Some((after, stop)) = self.stop {
                if stop.load(Ordering::Relaxed) {
                    self.reads_after_stop.set(self.reads_after_stop.get() + 1);
                } else if self.pulled >= after {
                    stop.store(true, Ordering::Relaxed);
                }
            }
            while self.current.is_empty() {
                match self.chunks.next() {
                    Some(chunk) => self.current = chunk,
                    None => return Ok(0),
                }
            }
            let n = buf.len().min(self.current.len());
            buf[..n].copy_from_slice(&self.current.split_to(n));
            self.pulled += n as u64;
            Ok(n)
        }
    }

    /// Inspects `layout` within `limits`; returns the result and the bytes read from the wire.
    fn inspect_repeated(
        layout: &write::Repeated,
        limits: InflationLimits,
    ) -> (Result<Layout, LayoutError>, u64) {
        let unused = std::cell::Cell::new(0);
        let mut wire = Wire::new(layout, &unused);
        let result = inspect_within(&mut wire, limits, &AtomicBool::new(false));
        (result, wire.pulled)
    }

    fn bombs() -> [(&'static str, write::Repeated); 2] {
        use write::{Filling::Zeros, Repeated};
        // 1 MiB bodies repeated to 64 GiB.
        [
            ("gds.gz", Repeated::gds_gz(Zeros, 1 << 20, 65536).unwrap()),
            ("oasis", Repeated::oasis(Zeros, 1 << 20, 65536).unwrap()),
        ]
    }

    /// The defaults with a floor of 1 MiB, so that tests need not inflate 64 MiB to show it.
    fn low_floor() -> InflationLimits {
        InflationLimits {
            ratio_floor: 1 << 20,
            ..Default::default()
        }
    }

    #[test]
    fn bombs_are_stopped_by_the_ratio_once_past_its_floor() {
        for (name, bomb) in bombs() {
            assert!(bomb.inflated() > 60 << 30, "{name}: {}", bomb.inflated());
            let ratio = bomb.body_inflated / bomb.body.len() as u64;
            assert!(ratio > 500, "{name}: a bomb compresses {ratio} times");
            let (result, pulled) = inspect_repeated(&bomb, low_floor());
            let e = result.unwrap_err();
            assert!(matches!(e, LayoutError::Inflation(_)), "{name}: {e:?}");
            let e = e.to_string();
            assert!(
                e.contains("more than 200 times its compressed size")
                    && e.contains("(server.max_inflation_ratio)"),
                "{name}: {e}"
            );
            // Refused once past the floor: after about 1 KiB of the 64 MiB sent (and what the
            // readers buffer).
            assert!(pulled < 256 << 10, "{name}: read {pulled} bytes");
        }
        // With the default floor, after about 64 KiB (the integration tests do OASIS).
        let (result, pulled) = inspect_repeated(&bombs()[0].1, InflationLimits::default());
        assert!(
            matches!(result, Err(LayoutError::Inflation(_))),
            "{result:?}"
        );
        assert!(pulled < 1 << 20, "read {pulled} bytes");
    }

    #[test]
    fn small_files_may_compress_better_than_the_ratio() {
        use write::{Filling::Zeros, Repeated};
        // 1 MiB from about 1 KiB: a thousand times, but below the floor.
        for bomb in [
            Repeated::gds_gz(Zeros, 100 << 10, 4).unwrap(),
            Repeated::oasis(Zeros, 100 << 10, 4).unwrap(),
        ] {
            assert!(bomb.inflated() < low_floor().ratio_floor);
            let (layout, _) = inspect_repeated(&bomb, low_floor());
            assert_eq!(layout.unwrap().top_cells, ["chip_top"]);
        }
    }

    #[test]
    fn real_geometry_past_the_floor_passes_and_the_absolute_bound_holds() {
        use write::{Filling::Boxes, Repeated};
        // 8 MiB of boxes, past the floor, compressed about 5 times.
        for layout in [
            Repeated::gds_gz(Boxes, 1 << 20, 8).unwrap(),
            Repeated::oasis(Boxes, 1 << 20, 8).unwrap(),
        ] {
            let ratio = layout.inflated() as f64 / layout.size() as f64;
            assert!(
                layout.inflated() > low_floor().ratio_floor && ratio < 20.0,
                "{ratio}"
            );
            let (found, _) = inspect_repeated(&layout, low_floor());
            let found = found.unwrap_or_else(|e| panic!("ratio {ratio:.1}: {e}"));
            assert_eq!(found.top_cells, ["chip_top"]);
            let small = InflationLimits {
                max_inflated: 4 << 20,
                ..low_floor()
            };
            let (refused, _) = inspect_repeated(&layout, small);
            let e = refused.unwrap_err().to_string();
            assert!(
                e.contains("inflates to more than 4 MiB")
                    && e.contains("(server.max_inflated_size)"),
                "{e}"
            );
        }
    }

    #[test]
    fn the_stop_flag_ends_reading_at_the_next_read() {
        let unbounded = InflationLimits {
            max_inflated: u64::MAX,
            max_ratio: u64::MAX,
            ratio_floor: 0,
        };
        for (name, bomb) in bombs() {
            let stop = AtomicBool::new(false);
            let reads_after_stop = std::cell::Cell::new(0);
            let mut wire = Wire::new(&bomb, &reads_after_stop);
            wire.stop = Some((16 << 10, &stop));
            let e = inspect_within(&mut wire, unbounded, &stop).unwrap_err();
            assert!(matches!(e, LayoutError::Abandoned), "{name}: {e:?}");
            assert_eq!(reads_after_stop.get(), 0, "{name}");
            assert!(wire.pulled < 1 << 20, "{name}: read {}", wire.pulled);
        }
    }

    #[test]
    fn layouts_are_recognised_by_content() {
        assert_eq!(sniff(b"%SEMI-OASIS\r\n\x01"), Some(LayoutFormat::Oasis));
        assert_eq!(sniff(&[0x1f, 0x8b, 8, 0]), Some(LayoutFormat::GdsGz));
        assert_eq!(sniff(&[0, 6, 0, 2, 2, 88]), Some(LayoutFormat::Gds));
        assert_eq!(sniff(b"hello world"), None);
        assert_eq!(sniff(b""), None);
    }

    #[test]
    fn not_a_layout_says_how_it_starts() {
        let e = inspect(&b"hello world"[..]).unwrap_err().to_string();
        assert!(e.contains("\"hello world\""), "{e}");
        let e = inspect(&[0x89, b'P', b'N', b'G'][..])
            .unwrap_err()
            .to_string();
        assert!(e.contains("89 50 4e 47"), "{e}");
        let e = inspect(&b""[..]).unwrap_err().to_string();
        assert!(e.contains("empty"), "{e}");
    }
}
#[cfg(test)]
mod geometry_tests {
    use super::*;

    /// The boxes KLayout 0.28's `Cell.bbox()` gives for [`write::geometry_cases`] (checked with
    /// `klayout -b`; `tests/it/layouts.rs` checks them against KLayout on every run), and the
    /// layers with shapes.
    const KLAYOUT_BOXES: [(&str, [i64; 4]); 7] = [
        ("turned", [-30300, -16000, 36000, 16000]),
        ("arrays", [-20000, -15000, 51300, 55500]),
        ("magnified", [-1600, -18000, 30900, 22100]),
        ("below_left", [-5000700, -3003000, 10000, 10000]),
        ("nested", [-17000, -10000, 136000, 55000]),
        ("paths", [-2070, -5150, 20030, 9200]),
        ("round_and_odd_paths", [-9500, -125, 5125, 3125]),
    ];

    #[test]
    fn the_geometry_cases_have_klayouts_boxes_in_every_format() {
        let cases = write::geometry_cases();
        assert_eq!(cases.len(), KLAYOUT_BOXES.len());
        for ((name, library, oasis), (expected_name, [l, b, r, t])) in
            cases.into_iter().zip(KLAYOUT_BOXES)
        {
            assert_eq!(name, expected_name);
            let gds = inspect(&library.gds()[..]).unwrap().die.unwrap();
            assert_eq!(gds.bbox, Some(Rect::new(l, b, r, t)), "{name}.gds");
            let gz = inspect(&library.gds_gz()[..]).unwrap().die.unwrap();
            assert_eq!(gz, gds, "{name}.gds.gz");
            if oasis {
                let oas = inspect(&library.oasis()[..]).unwrap().die.unwrap();
                assert_eq!(oas, gds, "{name}.oas");
            }
            let expected_layers: &[(u32, u32)] = match name {
                "paths" | "round_and_odd_paths" => &[(46, 0)],
                "below_left" => &[(22, 0), (34, 0), (36, 0), (63, 0), (167, 5)],
                "nested" => &[(22, 0), (34, 0), (36, 0), (42, 0), (63, 0)],
                _ => &[(22, 0), (34, 0), (36, 0), (63, 0)],
            };
            assert_eq!(gds.layers, expected_layers, "{name}");
        }
    }

    /// However small the pieces the bytes come in, every format is recognised and read alike.
    #[test]
    fn a_layout_read_a_byte_at_a_time_is_the_same() {
        struct ByteByByte<'a>(&'a [u8]);
        impl Read for ByteByByte<'_> {
            fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
                let n = self.0.len().min(buf.len()).min(1);
                buf[..n].copy_from_slice(&self.0[..n]);
                self.0 = &self.0[n..];
                Ok(n)
            }
        }
        let die = write::Die::new("chip_top");
        for bytes in [die.gds(), die.gds_gz(), die.oasis()] {
            let whole = inspect(&bytes[..]).unwrap();
            assert_eq!(inspect(ByteByByte(&bytes)).unwrap(), whole);
        }
    }

    #[test]
    fn the_dies_of_every_slot_and_defect_are_what_they_say() {
        use write::{Defect, Die as TestDie, SLOT_SIZES};
        for (slot, w, h) in SLOT_SIZES {
            let die = TestDie::new("chip_top").slot(slot);
            let read = inspect(&die.gds()[..]).unwrap().die.unwrap();
            assert_eq!(
                read.bbox,
                Some(Rect::new(0, 0, w * 1000, h * 1000)),
                "{slot}"
            );
            assert!(read.layers.contains(&(167, 5)), "{slot}");
        }
        for defect in Defect::ALL {
            let die = TestDie::new("chip_top").defect(defect);
            let layout = inspect(&die.gds()[..]).unwrap();
            let Some(read) = layout.die else {
                assert_eq!(defect, Defect::TwoTopCells);
                continue;
            };
            let (w, h) = die.size();
            let at = if defect == Defect::OffsetOrigin {
                100_000
            } else {
                0
            };
            assert_eq!(
                read.bbox,
                Some(Rect::new(at, at, at + w, at + h)),
                "{defect:?}"
            );
            assert_eq!(
                read.layers.contains(&(167, 5)),
                defect != Defect::NoSealRing
            );
            let forbidden = read.layers.contains(&(82, 0)) || read.layers.contains(&(53, 0));
            assert_eq!(forbidden, defect == Defect::ForbiddenLayer, "{defect:?}");
        }
    }
}
