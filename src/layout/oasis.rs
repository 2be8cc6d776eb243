//! OASIS (SEMI P39), read in one streaming pass: the unit from START, every CELL, the cells its
//! PLACEMENTs name, the CELLNAME table that turns reference numbers into names, and the geometry
//! of every cell (its shapes' boxes and layers, its placements with their transformations and
//! repetitions) for [`Geometry`].
//!
//! OASIS leaves out of a record whatever equals the last value given (the modal variables), so
//! the reader keeps them ([`Modal`]), reset at each CELL and name record as KLayout resets them.
//! A record that uses a modal variable the spec makes undefined there takes its last value, as
//! KLayout does (with a warning). Only a path keeps its points (at most [`MAX_POINTS`]); a
//! polygon and a repetition keep only the box of theirs, so a shape costs no allocation.
//! Properties, texts' strings and extensions are parsed only to be skipped, byte for byte.
//! Skipped strings are never allocated, kept names are capped at [`MAX_NAME`] bytes, and counts
//! read from the file are only looped over, each step consuming input, so the file's size bounds
//! the work. A CBLOCK is inflated on the fly and its records read like any others, with the same
//! modal state.

use std::io::{self, BufRead, BufReader, Read};

use flate2::read::DeflateDecoder;

use super::geometry::{self, Geometry, Linear, MAX_POINTS, Rect};
use super::{CellGraph, CellKey, Found, LayoutError, Meter, OASIS, io_error, stopped};

pub(super) const MAGIC: &[u8] = b"%SEMI-OASIS\r\n";

/// The longest name kept (CELLNAME, CELL and PLACEMENT by name); longer is taken as corruption.
const MAX_NAME: u64 = 65_536;

/// The position of a single copy, and the box of a point at the origin.
const ORIGIN: Rect = Rect {
    left: 0,
    bottom: 0,
    right: 0,
    top: 0,
};

/// Coordinates are kept within this many database units of the origin (KLayout refuses a file
/// past 2^31), so that no sum of a few of them overflows, whatever a file says.
const COORD_LIMIT: i64 = 1 << 40;

/// Record names by id, for messages.
#[rustfmt::skip]
const RECORD_NAMES: [&str; 35] = [
    "PAD",
    "START",
    "END",
    "CELLNAME",
    "CELLNAME",
    "TEXTSTRING",
    "TEXTSTRING",
    "PROPNAME",
    "PROPNAME",
    "PROPSTRING",
    "PROPSTRING",
    "LAYERNAME",
    "LAYERNAME",
    "CELL",
    "CELL",
    "XYABSOLUTE",
    "XYRELATIVE",
    "PLACEMENT",
    "PLACEMENT",
    "TEXT",
    "RECTANGLE",
    "POLYGON",
    "PATH",
    "TRAPEZOID",
    "TRAPEZOID",
    "TRAPEZOID",
    "CTRAPEZOID",
    "CIRCLE",
    "PROPERTY",
    "PROPERTY",
    "XNAME",
    "XNAME",
    "XELEMENT",
    "XGEOMETRY",
    "CBLOCK",
];

/// A record id's name, or "unknown".
fn record_name(id: u64) -> &'static str {
    usize::try_from(id)
        .ok()
        .and_then(|i| RECORD_NAMES.get(i))
        .copied()
        .unwrap_or("unknown")
}

/// Reads an OASIS file from its magic to its END record.
/// Every CBLOCK's data is inflated through `meter`.
pub(super) fn read(reader: impl BufRead, meter: &Meter<'_>) -> Result<Found, LayoutError> {
    let mut source = Counted::new(reader);
    let mut parser = Parser::default();
    match parser.file(&mut source, meter) {
        Ok(dbu_microns) => Ok(Found {
            dbu_microns,
            graph: parser.graph,
            geometry: parser.geometry,
        }),
        Err(Fail::Done(e)) => Err(e),
        Err(Fail::Io(e)) => Err(io_error(e, OASIS, "while reading")),
        Err(Fail::Bad(detail)) => Err(LayoutError::Corrupt {
            format: OASIS,
            detail,
        }),
    }
}

/// Why reading stopped, before the record loop says in which record.
enum Fail {
    /// Reading failed; the end of the data is truncation.
    Io(io::Error),
    /// The bytes break the format's rules (what is wrong, without where).
    Bad(String),
    /// A finished error, passed on as it is.
    Done(LayoutError),
}

impl From<io::Error> for Fail {
    fn from(e: io::Error) -> Self {
        Fail::Io(e)
    }
}

type Res<T> = Result<T, Fail>;

fn bad<T>(detail: impl Into<String>) -> Res<T> {
    Err(Fail::Bad(detail.into()))
}

/// The end of the data, as an error.
fn eof() -> Fail {
    Fail::Io(io::ErrorKind::UnexpectedEof.into())
}

/// Counts the bytes read through it (for messages) and remembers whether the source failed
/// (so a failure seen through the CBLOCK decoder is reported as I/O, not as bad data).
struct Counted<R> {
    inner: R,
    pos: u64,
    failed: bool,
}

impl<R> Counted<R> {
    fn new(inner: R) -> Self {
        Counted {
            inner,
            pos: 0,
            failed: false,
        }
    }
}

impl<R: Read> Read for Counted<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self.inner.read(buf) {
            Ok(n) => {
                self.pos = self.pos.saturating_add(n as u64);
                Ok(n)
            }
            Err(e) => {
                self.failed |= e.kind() != io::ErrorKind::Interrupted;
                Err(e)
            }
        }
    }
}

/// Bytes are read from the buffer (a record's fields are many integers of a byte or two).
impl<R: BufRead> BufRead for Counted<R> {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        match self.inner.fill_buf() {
            Ok(buf) => Ok(buf),
            Err(e) => {
                self.failed |= e.kind() != io::ErrorKind::Interrupted;
                Err(e)
            }
        }
    }

    fn consume(&mut self, amt: usize) {
        self.pos = self.pos.saturating_add(amt as u64);
        self.inner.consume(amt);
    }
}

/// The reader's state across records (including those inside CBLOCKs).
#[derive(Default)]
struct Parser {
    graph: CellGraph,
    /// Records read so far, for messages.
    records: u64,
    /// Whether START said the table offsets are in END.
    offsets_in_end: bool,
    /// The implicit reference number of the next CELLNAME without one.
    next_cellname: u64,
    /// The cell whose records are being read.
    cell: Option<CellKey>,
    /// The modal placement-cell: the cell of the last PLACEMENT in this cell that named one.
    placement_cell: Option<CellKey>,
    /// Every other modal variable.
    modal: Modal,
    geometry: Geometry,
}

/// The modal variables a shape or a placement may leave out (SEMI P39, "Modal variables").
/// Coordinates are absolute, within [`COORD_LIMIT`]. The spec makes every one but the positions
/// undefined at each CELL and name record; KLayout then warns when one is used and takes its
/// last value in the file all the same, or 0, no points or a single copy if the file never gave
/// one, and so does this reader.
#[derive(Default)]
struct Modal {
    /// xy-mode: XYRELATIVE makes a given x or y an offset from the modal one.
    relative: bool,
    placement: (i64, i64),
    geometry: (i64, i64),
    text: (i64, i64),
    /// Layer numbers as given (one past `u32` makes no shape: KLayout refuses it).
    layer: u64,
    datatype: u64,
    textlayer: u64,
    texttype: u64,
    width: i64,
    height: i64,
    /// polygon-point-list, as the box of its points from its first one and how many it has.
    polygon: Option<(Rect, u64)>,
    halfwidth: i64,
    start_extension: i64,
    end_extension: i64,
    /// path-point-list, from its first point.
    path: Vec<(i64, i64)>,
    /// The point list being read: it replaces `path` unless it equals it.
    next_path: Vec<(i64, i64)>,
    /// The box of the last path boxed, with its half-width and extensions: a cell's paths often
    /// differ only in where they are.
    path_box: Option<((i64, i64, i64), Rect)>,
    ctrapezoid: u64,
    radius: i64,
    /// The box of the last repetition's offsets from its first copy.
    repetition: Option<Rect>,
}

impl Modal {
    /// At a CELL or name record: the positions are 0 and xy-mode absolute again.
    fn reset(&mut self) {
        self.relative = false;
        self.placement = (0, 0);
        self.geometry = (0, 0);
        self.text = (0, 0);
    }

    fn layer(&self) -> Option<(u32, u32)> {
        Some((layer_number(self.layer)?, layer_number(self.datatype)?))
    }
}

/// Where a record starts: `at` bytes into the file, or into the data of the CBLOCK at `cblock`.
#[derive(Clone, Copy)]
struct Place {
    at: u64,
    cblock: Option<u64>,
}

impl std::fmt::Display for Place {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.cblock {
            None => write!(f, "at byte {}", self.at),
            Some(outer) => write!(f, "at byte {} of the CBLOCK at byte {outer}", self.at),
        }
    }
}

impl Parser {
    /// Reads the magic and every record up to END; returns the database unit in micrometres.
    fn file<R: BufRead>(&mut self, r: &mut Counted<R>, meter: &Meter<'_>) -> Res<f64> {
        magic(r)?;
        let mut dbu = None;
        loop {
            let at = r.pos;
            let Some(first) = next_byte(r)? else {
                let detail = match dbu {
                    None => "file ends after the magic, without a START record".to_string(),
                    Some(_) => format!(
                        "file ends after record {} at byte {} without an END record",
                        self.records, r.pos
                    ),
                };
                return Err(Fail::Done(LayoutError::Truncated {
                    format: OASIS,
                    detail,
                }));
            };
            self.records = self.records.saturating_add(1);
            let (n, place) = (self.records, Place { at, cblock: None });
            let id = uint_from(first, r).map_err(|f| self.locate(f, n, u64::MAX, place))?;
            let result = match (id, dbu) {
                (1, None) => self.start(r).map(|d| dbu = Some(d)),
                (_, None) => bad("the file does not begin with a START record"),
                (1, Some(_)) => bad("a second START record"),
                (2, Some(d)) => {
                    return self
                        .end(r)
                        .map(|()| d)
                        .map_err(|f| self.locate(f, n, id, place));
                }
                (34, Some(_)) => self.cblock(r, at, meter),
                _ => self.record(id, r),
            };
            result.map_err(|f| self.locate(f, n, id, place))?;
        }
    }

    /// Says which record a failure happened in. Inside a CBLOCK the end of the data is not
    /// truncation (the caller has checked the file went on): the CBLOCK's data is too short.
    fn locate(&self, fail: Fail, n: u64, id: u64, place: Place) -> Fail {
        let name = record_name(id);
        match fail {
            Fail::Bad(detail) => Fail::Done(LayoutError::Corrupt {
                format: OASIS,
                detail: format!("record {n} ({name}) {place}: {detail}"),
            }),
            Fail::Io(e) if e.kind() == io::ErrorKind::UnexpectedEof => match place.cblock {
                None => Fail::Done(io_error(
                    e,
                    OASIS,
                    &format!("inside record {n} ({name}) {place}"),
                )),
                Some(_) => Fail::Done(LayoutError::Corrupt {
                    format: OASIS,
                    detail: format!("the CBLOCK's data ends inside record {n} ({name}) {place}"),
                }),
            },
            other => other,
        }
    }

    /// START: version, unit, offset flag and (flag 0) the table offsets.
    fn start<R: BufRead>(&mut self, r: &mut Counted<R>) -> Res<f64> {
        skip_string(r)?;
        let unit = real(r)?;
        let dbu = 1.0 / unit;
        if !(unit.is_finite() && unit > 0.0 && dbu.is_finite()) {
            return bad(format!(
                "the unit {unit} is not a positive number of steps per µm"
            ));
        }
        self.offsets_in_end = uint(r)? != 0;
        if !self.offsets_in_end {
            table_offsets(r)?;
        }
        Ok(dbu)
    }

    /// END: (table offsets), padding and the validation scheme with its signature.
    fn end<R: BufRead>(&mut self, r: &mut Counted<R>) -> Res<()> {
        if self.offsets_in_end {
            table_offsets(r)?;
        }
        skip_string(r)?;
        match uint(r)? {
            0 => Ok(()),
            1 | 2 => skip(r, 4),
            scheme => bad(format!(
                "validation scheme {scheme} (only 0, 1 and 2 exist)"
            )),
        }
    }

    /// CBLOCK starting at byte `at`: inflates its data and reads the records in it. The whole
    /// compressed span is consumed whatever happens inside, and the data must inflate to exactly
    /// the size the CBLOCK declares, unless the meter stops it (then nothing more is read).
    fn cblock<R: BufRead>(&mut self, r: &mut Counted<R>, at: u64, meter: &Meter<'_>) -> Res<()> {
        let method = uint(r)?;
        if method != 0 {
            return bad(format!(
                "compression type {method} (only 0, DEFLATE, exists)"
            ));
        }
        let size = uint(r)?;
        let compressed = uint(r)?;
        let mut span = meter.compressed(r.by_ref().take(compressed));
        let result = {
            let decoder = BufReader::new(meter.inflated(
                DeflateDecoder::new(&mut span),
                "the OASIS file's CBLOCK data",
            ));
            let mut inflated = Counted::new(decoder.take(size));
            let mut result = self.inflated_records(&mut inflated, at);
            if result.is_ok() {
                // The records ended where the data did: it must be `size` bytes, and no more.
                result = if inflated.pos < size {
                    bad(format!(
                        "its data inflates to {} bytes, not {size}",
                        inflated.pos
                    ))
                } else {
                    match next_byte(inflated.inner.get_mut()) {
                        Ok(Some(_)) => bad(format!("its data inflates to more than {size} bytes")),
                        Ok(None) => Ok(()),
                        Err(e) => Err(Fail::Io(e)),
                    }
                };
            }
            result
        };
        if let Err(Fail::Io(e)) = &result
            && stopped(e).is_some()
        {
            return result;
        }
        io::copy(&mut span, &mut io::sink())?;
        if span.inner.limit() > 0 {
            // The file ends inside the compressed bytes: truncation, whatever the records said.
            return Err(eof());
        }
        match result {
            // A read error that did not come from the file is the decoder's.
            Err(Fail::Io(e)) if !r.failed => bad(format!("its compressed data is corrupt: {e}")),
            other => other,
        }
    }

    /// Reads records from a CBLOCK's inflated data to its end.
    fn inflated_records<R: BufRead>(&mut self, r: &mut Counted<R>, cblock: u64) -> Res<()> {
        while let Some(first) = next_byte(r)? {
            self.records = self.records.saturating_add(1);
            let n = self.records;
            let place = Place {
                at: r.pos.saturating_sub(1),
                cblock: Some(cblock),
            };
            let id = uint_from(first, r).map_err(|f| self.locate(f, n, u64::MAX, place))?;
            let result = match id {
                1 | 2 | 34 => bad(format!("a {} record inside a CBLOCK", record_name(id))),
                _ => self.record(id, r),
            };
            result.map_err(|f| self.locate(f, n, id, place))?;
        }
        Ok(())
    }

    /// Any record but START, END and CBLOCK.
    fn record<R: BufRead>(&mut self, id: u64, r: &mut Counted<R>) -> Res<()> {
        match id {
            // PAD, PROPERTY (repeat the last): no fields.
            0 | 29 => {}
            // XYABSOLUTE, XYRELATIVE: no fields, the xy-mode.
            15 | 16 => self.modal.relative = id == 16,
            3 => {
                let name = name(r)?;
                let number = self.next_cellname;
                self.next_cellname = number.saturating_add(1);
                self.graph.name(number, name, OASIS).map_err(Fail::Done)?;
                self.modal.reset();
            }
            4 => {
                let name = name(r)?;
                let number = uint(r)?;
                self.graph.name(number, name, OASIS).map_err(Fail::Done)?;
                self.modal.reset();
            }
            // TEXTSTRING, PROPNAME, PROPSTRING: a string, and (6, 8, 10) a reference number.
            5..=10 => {
                skip_string(r)?;
                maybe_uint(r, id % 2 == 0)?;
                self.modal.reset();
            }
            // LAYERNAME (geometry or text): a name, a layer interval and a datatype interval.
            11 | 12 => {
                skip_string(r)?;
                interval(r)?;
                interval(r)?;
                self.modal.reset();
            }
            13 => self.define(CellKey::Ref(uint(r)?))?,
            14 => self.define(CellKey::Name(name(r)?))?,
            17 | 18 => self.placement(id, r)?,
            19 => self.text(r)?,
            20..=27 => self.shape(id, r)?,
            28 => {
                // PROPERTY UUUUVCNS: the name (C) by reference number (N), then unless V
                // (reuse the last values) UUUU values, or a count when UUUU is 15.
                let info = byte(r)?;
                if info & 0x04 != 0 {
                    string_or_number(r, info & 0x02 != 0)?;
                }
                if info & 0x08 == 0 {
                    let count = match info >> 4 {
                        15 => uint(r)?,
                        n => u64::from(n),
                    };
                    (0..count).try_for_each(|_| property_value(r))?;
                }
            }
            // XNAME and XELEMENT: attribute, string, and (31) a reference number.
            30..=32 => {
                uint(r)?;
                skip_string(r)?;
                maybe_uint(r, id == 31)?;
                if id != 32 {
                    self.modal.reset();
                }
            }
            33 => {
                // XGEOMETRY 000XYRDL: attribute, layer, datatype, string, position. It adds no
                // shape, but its layer, datatype, position and repetition are the modal ones
                // after it (as KLayout reads it).
                let info = byte(r)?;
                uint(r)?;
                self.layer_datatype(r, info)?;
                skip_string(r)?;
                let m = &mut self.modal;
                xy(r, info, m.relative, &mut m.geometry)?;
                self.offsets(r, info & 0x04 != 0)?;
            }
            _ => return bad(format!("unknown record id {id}")),
        }
        Ok(())
    }

    /// CELL: the records up to the next CELL or END belong to `key`. The modal variables are
    /// undefined again ([`Modal::reset`]), and the placement-cell is refused until a PLACEMENT
    /// of the cell names one (KLayout warns and takes the last one).
    fn define(&mut self, key: CellKey) -> Res<()> {
        self.graph.define(key.clone(), OASIS).map_err(Fail::Done)?;
        self.geometry.begin(key.clone());
        self.cell = Some(key);
        self.placement_cell = None;
        self.modal.reset();
        Ok(())
    }

    /// PLACEMENT, 17 (CNXYRAAF) or 18 (CNXYRMAF, with magnification and angle).
    fn placement<R: BufRead>(&mut self, id: u64, r: &mut Counted<R>) -> Res<()> {
        let info = byte(r)?;
        let child = if info & 0x80 != 0 {
            let key = if info & 0x40 != 0 {
                CellKey::Ref(uint(r)?)
            } else {
                CellKey::Name(name(r)?)
            };
            self.placement_cell = Some(key.clone());
            key
        } else {
            match &self.placement_cell {
                Some(key) => key.clone(),
                None => return bad("no earlier PLACEMENT in this cell names the cell to reuse"),
            }
        };
        let mirror = info & 0x01 != 0;
        let linear = if id == 18 {
            let mag = if info & 0x04 != 0 { real(r)? } else { 1.0 };
            let angle = if info & 0x02 != 0 { real(r)? } else { 0.0 };
            turned(mirror, angle, mag)
        } else {
            Linear {
                mirror,
                angle: f64::from(info >> 1 & 3) * 90.0,
                mag: 1.0,
            }
        };
        // X, Y and R sit one bit higher than in the other records.
        let m = &mut self.modal;
        let at = xy(r, info >> 1, m.relative, &mut m.placement)?;
        let offsets = self.offsets(r, info & 0x08 != 0)?;
        let Some(parent) = &self.cell else {
            return bad("a PLACEMENT outside any CELL");
        };
        self.graph
            .place(Some(parent), child.clone(), OASIS)
            .map_err(Fail::Done)?;
        self.geometry
            .place(child, linear, moved(ORIGIN, at, offsets), OASIS)
            .map_err(Fail::Done)
    }

    /// TEXT 0CNXYRTL: the text string (C), by reference number (N); a shape of the text's point
    /// on the textlayer and texttype.
    fn text<R: BufRead>(&mut self, r: &mut Counted<R>) -> Res<()> {
        let info = byte(r)?;
        let m = &mut self.modal;
        if info & 0x40 != 0 {
            string_or_number(r, info & 0x20 != 0)?;
        }
        if info & 0x01 != 0 {
            m.textlayer = uint(r)?;
        }
        if info & 0x02 != 0 {
            m.texttype = uint(r)?;
        }
        let at = xy(r, info, m.relative, &mut m.text)?;
        let offsets = self.offsets(r, info & 0x04 != 0)?;
        let m = &self.modal;
        if let (Some(layer), Some(datatype)) = (layer_number(m.textlayer), layer_number(m.texttype))
        {
            self.geometry
                .shape((layer, datatype), moved(ORIGIN, at, offsets));
        }
        Ok(())
    }

    /// RECTANGLE, POLYGON, PATH, TRAPEZOID, CTRAPEZOID or CIRCLE: a shape of its box on the
    /// layer and datatype. The info byte's low bits are XYRDL in every one of them.
    fn shape<R: BufRead>(&mut self, id: u64, r: &mut Counted<R>) -> Res<()> {
        let info = byte(r)?;
        self.layer_datatype(r, info)?;
        let m = &mut self.modal;
        // The shape's box with its position at the origin, where the modal variables define it.
        let outline = match id {
            20 => {
                // RECTANGLE SWHXYRDL: width, height; with S a square, whose height is its width
                // and whose H bit means nothing (KLayout reads no height then).
                if info & 0x40 != 0 {
                    m.width = ucoord(r)?;
                }
                if info & 0x80 != 0 {
                    m.height = m.width;
                } else if info & 0x20 != 0 {
                    m.height = ucoord(r)?;
                }
                Some(Rect::new(0, 0, m.width, m.height))
            }
            21 => {
                // POLYGON 00PXYRDL; KLayout ignores one of fewer than 3 points.
                if info & 0x20 != 0 {
                    m.polygon = Some(point_list(r, true, None)?);
                }
                m.polygon.filter(|&(_, n)| n >= 3).map(|(b, _)| b)
            }
            22 => path(r, info, m)?,
            23..=25 => {
                // TRAPEZOID OWHXYRDL: width, height, delta-a (23, 24), delta-b (23, 25); O
                // makes it vertical.
                if info & 0x40 != 0 {
                    m.width = ucoord(r)?;
                }
                if info & 0x20 != 0 {
                    m.height = ucoord(r)?;
                }
                let a = if id != 25 { sint(r)? } else { 0 };
                let b = if id != 24 { sint(r)? } else { 0 };
                Some(trapezoid(m.width, m.height, a, b, info & 0x80 != 0))
            }
            26 => {
                // CTRAPEZOID TWHXYRDL: type, width, height. The modal width and height become
                // the shape's (as KLayout sets them), whichever of them its type implies.
                if info & 0x80 != 0 {
                    m.ctrapezoid = uint(r)?;
                }
                if info & 0x40 != 0 {
                    m.width = ucoord(r)?;
                }
                if info & 0x20 != 0 {
                    m.height = ucoord(r)?;
                }
                ctrapezoid(m.ctrapezoid, m.width, m.height).map(|corners| {
                    let b = Rect::of_points(corners);
                    m.width = b.right.max(0);
                    m.height = b.top.max(0);
                    b
                })
            }
            _ => {
                // CIRCLE 00rXYRDL: radius; KLayout ignores a circle of radius 0.
                if info & 0x20 != 0 {
                    m.radius = ucoord(r)?;
                }
                let radius = m.radius;
                (radius > 0).then(|| Rect::new(-radius, -radius, radius, radius))
            }
        };
        let at = xy(r, info, m.relative, &mut m.geometry)?;
        let offsets = self.offsets(r, info & 0x04 != 0)?;
        if let (Some(layer), Some(outline)) = (self.modal.layer(), outline) {
            self.geometry.shape(layer, moved(outline, at, offsets));
        }
        Ok(())
    }

    /// Layer (L, bit 0) and datatype (D, bit 1), into the modal ones.
    fn layer_datatype(&mut self, r: &mut impl BufRead, info: u8) -> Res<()> {
        if info & 0x01 != 0 {
            self.modal.layer = uint(r)?;
        }
        if info & 0x02 != 0 {
            self.modal.datatype = uint(r)?;
        }
        Ok(())
    }

    /// The box of the offsets of a record's copies from its position: none, or (`repeated`)
    /// those of its repetition, which becomes the modal one.
    fn offsets(&mut self, r: &mut impl BufRead, repeated: bool) -> Res<Rect> {
        if !repeated {
            return Ok(ORIGIN);
        }
        if let Some(offsets) = repetition(r)? {
            self.modal.repetition = Some(offsets);
        }
        Ok(self.modal.repetition.unwrap_or(ORIGIN))
    }
}

/// PATH EWPXYRDL: half-width, extension scheme, point list; the path's box from its first
/// point, as KLayout boxes a path of twice the half-width. KLayout ignores a path of one point.
fn path(r: &mut impl BufRead, info: u8, m: &mut Modal) -> Res<Option<Rect>> {
    if info & 0x40 != 0 {
        m.halfwidth = ucoord(r)?;
    }
    if info & 0x80 != 0 {
        // Two bits for each end: 0 the modal extension, 1 none, 2 the half-width, 3 explicit.
        let scheme = uint(r)?;
        let mut extension = |code: u64, modal: i64| match code {
            0 => Ok(modal),
            1 => Ok(0),
            2 => Ok(m.halfwidth),
            _ => sint(r),
        };
        m.start_extension = extension(scheme >> 2 & 3, m.start_extension)?;
        m.end_extension = extension(scheme & 3, m.end_extension)?;
    }
    if info & 0x20 != 0 {
        // Writers often repeat the last list: then its box is the last one.
        m.next_path.clear();
        point_list(r, false, Some(&mut m.next_path))?;
        if m.next_path != m.path {
            std::mem::swap(&mut m.path, &mut m.next_path);
            m.path_box = None;
        }
    }
    if m.path.len() < 2 {
        return Ok(None);
    }
    let key = (m.halfwidth, m.start_extension, m.end_extension);
    Ok(Some(match m.path_box {
        Some((k, b)) if k == key => b,
        _ => {
            let b = geometry::path_box(&m.path, 2 * key.0, key.1, key.2);
            m.path_box = Some((key, b));
            b
        }
    }))
}

/// A TRAPEZOID's box: `w` by `h`, its top side (vertical: its left side) shortened by delta-a
/// at its start and its bottom (right) side by delta-b at its end, or the other side where a
/// delta is negative, as KLayout makes its corners.
fn trapezoid(w: i64, h: i64, a: i64, b: i64, vertical: bool) -> Rect {
    let corners = if vertical {
        [
            (0, a.max(0)),
            (0, h + b.min(0)),
            (w, h - b.max(0)),
            (w, -a.min(0)),
        ]
    } else {
        [
            (a.max(0), h),
            (w + b.min(0), h),
            (w - b.max(0), 0),
            (-a.min(0), 0),
        ]
    };
    Rect::of_points(corners)
}

/// A CTRAPEZOID's corners by its type (0 to 25, the table of SEMI P39) from the width and the
/// height (20 and 21 are made of the height alone; 16 to 19, 22, 23 and 25 of the width
/// alone); `None` for another type (KLayout refuses it).
fn ctrapezoid(kind: u64, w: i64, h: i64) -> Option<[(i64, i64); 4]> {
    Some(match kind {
        0 => [(0, 0), (0, h), (w - h, h), (w, 0)],
        1 => [(0, 0), (0, h), (w, h), (w - h, 0)],
        2 => [(0, 0), (h, h), (w, h), (w, 0)],
        3 => [(h, 0), (0, h), (w, h), (w, 0)],
        4 => [(0, 0), (h, h), (w - h, h), (w, 0)],
        5 => [(h, 0), (0, h), (w, h), (w - h, 0)],
        6 => [(0, 0), (h, h), (w, h), (w - h, 0)],
        7 => [(h, 0), (0, h), (w - h, h), (w, 0)],
        8 => [(0, 0), (0, h), (w, h - w), (w, 0)],
        9 => [(0, 0), (0, h - w), (w, h), (w, 0)],
        10 => [(0, 0), (0, h), (w, h), (w, w)],
        11 => [(0, w), (0, h), (w, h), (w, 0)],
        12 => [(0, 0), (0, h), (w, h - w), (w, w)],
        13 => [(0, w), (0, h - w), (w, h), (w, 0)],
        14 => [(0, 0), (0, h - w), (w, h), (w, w)],
        15 => [(0, w), (0, h), (w, h - w), (w, 0)],
        16 => [(0, 0), (0, w), (w, 0), (0, 0)],
        17 => [(0, 0), (0, w), (w, w), (0, 0)],
        18 => [(0, 0), (w, w), (w, 0), (0, 0)],
        19 => [(0, w), (w, w), (w, 0), (0, w)],
        20 => [(0, 0), (h, h), (2 * h, 0), (0, 0)],
        21 => [(0, h), (2 * h, h), (h, 0), (0, h)],
        22 => [(0, 0), (0, 2 * w), (w, w), (0, 0)],
        23 => [(w, 0), (0, w), (w, 2 * w), (w, 0)],
        24 => [(0, 0), (0, h), (w, h), (w, 0)],
        25 => [(0, 0), (0, w), (w, w), (w, 0)],
        _ => return None,
    })
}

/// A PLACEMENT's magnification and angle as KLayout takes them: a magnification within 1e-6
/// of 1 with an angle within 1e-6 quarter turns of a multiple of 90 degrees is that exact turn,
/// unmagnified; anything else keeps both as the file gives them.
fn turned(mirror: bool, angle: f64, mag: f64) -> Linear {
    let quarters = angle / 90.0;
    let nearest = quarters.round();
    if (mag - 1.0).abs() <= 1e-6 && (quarters - nearest).abs() <= 1e-6 {
        Linear {
            mirror,
            angle: nearest.rem_euclid(4.0) * 90.0,
            mag: 1.0,
        }
    } else {
        Linear { mirror, angle, mag }
    }
}

/// X (bit 4) and Y (bit 3) of `info`, read into the modal coordinates `at` (added to them in
/// relative mode); returns the position.
fn xy(r: &mut impl BufRead, info: u8, relative: bool, at: &mut (i64, i64)) -> Res<(i64, i64)> {
    let mut read = |present: bool, modal: &mut i64| -> Res<()> {
        if present {
            let v = sint(r)?;
            *modal = if relative { add(*modal, v) } else { v };
        }
        Ok(())
    };
    read(info & 0x10 != 0, &mut at.0)?;
    read(info & 0x08 != 0, &mut at.1)?;
    Ok(*at)
}

/// `outline` (a box about the origin) at `at`, and copied to every offset within `offsets`.
fn moved(outline: Rect, at: (i64, i64), offsets: Rect) -> Rect {
    Rect::new(
        outline.left + at.0 + offsets.left,
        outline.bottom + at.1 + offsets.bottom,
        outline.right + at.0 + offsets.right,
        outline.top + at.1 + offsets.top,
    )
}

/// A layer or datatype number; `None` past what KLayout holds (it refuses such a file).
fn layer_number(v: u64) -> Option<u32> {
    u32::try_from(v).ok()
}

/// `v` within [`COORD_LIMIT`] of 0.
fn clamp(v: i128) -> i64 {
    v.clamp(-i128::from(COORD_LIMIT), i128::from(COORD_LIMIT)) as i64
}

fn add(a: i64, b: i64) -> i64 {
    clamp(i128::from(a) + i128::from(b))
}

fn add2(a: (i64, i64), b: (i64, i64)) -> (i64, i64) {
    (add(a.0, b.0), add(a.1, b.1))
}

/// The offset of the last of `n + 2` copies `step` apart (OASIS gives a repetition's counts
/// less 2).
fn last_copy(n: u64, step: (i64, i64)) -> (i64, i64) {
    let n = i128::from(n) + 1;
    (clamp(n * i128::from(step.0)), clamp(n * i128::from(step.1)))
}

/// The magic, or Corrupt.
fn magic(r: &mut impl BufRead) -> Res<()> {
    let mut head = Vec::with_capacity(MAGIC.len());
    r.take(MAGIC.len() as u64).read_to_end(&mut head)?;
    if head != MAGIC {
        return bad("it does not begin with the OASIS magic \"%SEMI-OASIS\\r\\n\"");
    }
    Ok(())
}

/// The next byte, or None at the end of the data.
fn next_byte(r: &mut impl BufRead) -> io::Result<Option<u8>> {
    loop {
        match r.fill_buf() {
            Ok(buf) => {
                let Some(&first) = buf.first() else {
                    return Ok(None);
                };
                r.consume(1);
                return Ok(Some(first));
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
}

fn byte(r: &mut impl BufRead) -> Res<u8> {
    next_byte(r)?.ok_or_else(eof)
}

/// An unsigned integer: 7 bits a byte, low group first, the high bit set on all but the last.
/// Signed integers are the same with the sign in bit 0 ([`signed`]).
fn uint(r: &mut impl BufRead) -> Res<u64> {
    // Most integers are whole in the buffer: decoded there and consumed at once.
    let whole = match r.fill_buf() {
        Ok(buf) => buf
            .iter()
            .take(10)
            .position(|b| b & 0x80 == 0)
            .map(|last| (groups(&buf[..=last]), last + 1)),
        Err(e) if e.kind() == io::ErrorKind::Interrupted => None,
        Err(e) => return Err(e.into()),
    };
    if let Some((value, len)) = whole {
        r.consume(len);
        return value;
    }
    let first = byte(r)?;
    uint_from(first, r)
}

/// The integer of at most 10 bytes, the last one's high bit clear (as [`uint_from`] reads it).
fn groups(bytes: &[u8]) -> Res<u64> {
    let mut value = 0u64;
    for (i, b) in bytes.iter().enumerate() {
        add_group(&mut value, *b, 7 * i as u32)?;
    }
    Ok(value)
}

/// Adds the low 7 bits of `byte` at `shift`: zero bits anywhere are fine, others past the 64th
/// are corruption (the tenth byte holds bit 63 only).
fn add_group(value: &mut u64, byte: u8, shift: u32) -> Res<()> {
    let bits = u64::from(byte & 0x7f);
    if bits == 0 {
        return Ok(());
    }
    if shift > 63 || (shift == 63 && bits > 1) {
        return bad("an integer of more than 64 bits");
    }
    *value |= bits << shift;
    Ok(())
}

/// An unsigned integer whose first byte has been read. Groups of zero bits past the 64th are
/// accepted (KLayout pads its END record with a length written as 0x80 ... 0x80 0x00), any other
/// bit past the 64th is corruption.
fn uint_from(first: u8, r: &mut impl BufRead) -> Res<u64> {
    let mut value = u64::from(first & 0x7f);
    let (mut last, mut shift) = (first, 0u32);
    while last & 0x80 != 0 {
        last = byte(r)?;
        shift = shift.saturating_add(7);
        add_group(&mut value, last, shift)?;
    }
    Ok(value)
}

/// An integer that is there when `present`.
fn maybe_uint(r: &mut impl BufRead, present: bool) -> Res<()> {
    if present {
        uint(r)?;
    }
    Ok(())
}

/// A real: a type, then an integer, a reciprocal, a ratio or an IEEE float.
fn real(r: &mut impl BufRead) -> Res<f64> {
    let kind = uint(r)?;
    real_of(kind, r)
}

/// A real whose type has been read.
fn real_of(kind: u64, r: &mut impl BufRead) -> Res<f64> {
    let sign = if kind % 2 == 0 { 1.0 } else { -1.0 };
    Ok(match kind {
        0 | 1 => sign * uint(r)? as f64,
        2 | 3 => sign / uint(r)? as f64,
        4 | 5 => {
            let numerator = uint(r)? as f64;
            sign * numerator / uint(r)? as f64
        }
        6 => {
            let mut buf = [0u8; 4];
            r.read_exact(&mut buf)?;
            f64::from(f32::from_le_bytes(buf))
        }
        7 => {
            let mut buf = [0u8; 8];
            r.read_exact(&mut buf)?;
            f64::from_le_bytes(buf)
        }
        _ => return bad(format!("a real of type {kind} (0 to 7 exist)")),
    })
}

/// Skips `len` bytes without holding them.
fn skip(r: &mut impl BufRead, len: u64) -> Res<()> {
    let skipped = io::copy(&mut r.take(len), &mut io::sink())?;
    if skipped < len {
        return Err(eof());
    }
    Ok(())
}

/// Skips a string (a-, b- or n-string: a length, then the bytes).
fn skip_string(r: &mut impl BufRead) -> Res<()> {
    let len = uint(r)?;
    skip(r, len)
}

/// A name that is kept, read with a cap; any bytes are accepted.
fn name(r: &mut impl BufRead) -> Res<String> {
    let len = uint(r)?;
    if len > MAX_NAME {
        return bad(format!("a name of {len} bytes"));
    }
    let mut bytes = Vec::new();
    r.take(len).read_to_end(&mut bytes)?;
    if (bytes.len() as u64) < len {
        return Err(eof());
    }
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

/// A reference number, or a string (skipped).
fn string_or_number(r: &mut impl BufRead, number: bool) -> Res<()> {
    if number {
        uint(r).map(drop)
    } else {
        skip_string(r)
    }
}

/// The table offsets in START or END: six pairs of flag and offset.
fn table_offsets(r: &mut impl BufRead) -> Res<()> {
    uints(r, 12)
}

/// Skips `count` integers (each one consumes input, so a huge count ends with the data).
fn uints(r: &mut impl BufRead, count: u64) -> Res<()> {
    (0..count).try_for_each(|_| uint(r).map(drop))
}

/// A LAYERNAME interval: a type, then 0 (any), 1 (up to, from, exactly) or 2 (from, to) bounds.
fn interval(r: &mut impl BufRead) -> Res<()> {
    match uint(r)? {
        0 => Ok(()),
        1..=3 => uints(r, 1),
        4 => uints(r, 2),
        kind => bad(format!("an interval of type {kind} (0 to 4 exist)")),
    }
}

/// A signed integer: the unsigned one that encodes it, with the sign in bit 0.
fn signed(u: u64) -> i64 {
    let magnitude = (u >> 1) as i64;
    if u & 1 == 1 { -magnitude } else { magnitude }
}

/// A signed coordinate.
fn sint(r: &mut impl BufRead) -> Res<i64> {
    Ok(clamp(i128::from(signed(uint(r)?))))
}

/// An unsigned coordinate (a width, a spacing).
fn ucoord(r: &mut impl BufRead) -> Res<i64> {
    Ok(clamp(i128::from(uint(r)?)))
}

/// A 2-delta (east, north, west, south) or, with `diagonal`, a 3-delta (and the diagonals):
/// the direction in the low 2 or 3 bits, the magnitude above them.
fn octant(u: u64, diagonal: bool) -> (i64, i64) {
    let bits = if diagonal { 3 } else { 2 };
    let m = clamp(i128::from(u >> bits));
    match u & if diagonal { 7 } else { 3 } {
        0 => (m, 0),
        1 => (0, m),
        2 => (-m, 0),
        3 => (0, -m),
        4 => (m, m),
        5 => (-m, m),
        6 => (-m, -m),
        _ => (m, -m),
    }
}

/// A g-delta: a 3-delta above bit 0, or (bit 0 set) x with its sign in bit 1, then y.
fn g_delta(r: &mut impl BufRead) -> Res<(i64, i64)> {
    let u = uint(r)?;
    if u & 1 == 0 {
        return Ok(octant(u >> 1, true));
    }
    let x = clamp(i128::from(u >> 2));
    Ok((if u & 2 != 0 { -x } else { x }, sint(r)?))
}

/// A repetition: a type, then its dimensions, spaces or displacements. Returns the box of its
/// copies' offsets from the first one, or `None` for type 0 (reuse the last repetition).
fn repetition(r: &mut impl BufRead) -> Res<Option<Rect>> {
    let kind = uint(r)?;
    // A regular repetition's copies are at the corners of the lattice and between them.
    let lattice = |a: (i64, i64), b: (i64, i64)| Rect::of_points([(0, 0), a, b, add2(a, b)]);
    let offsets = match kind {
        // Reuse the last repetition.
        0 => return Ok(None),
        // A matrix (columns and rows, their spacings); a row or a column (count, spacing).
        1 => {
            let (columns, rows) = (uint(r)?, uint(r)?);
            let (dx, dy) = (ucoord(r)?, ucoord(r)?);
            lattice(last_copy(columns, (dx, 0)), last_copy(rows, (0, dy)))
        }
        2 => {
            let columns = uint(r)?;
            lattice(last_copy(columns, (ucoord(r)?, 0)), (0, 0))
        }
        3 => {
            let rows = uint(r)?;
            lattice((0, 0), last_copy(rows, (0, ucoord(r)?)))
        }
        // A general matrix (two dimensions, two displacements); a general row.
        8 => {
            let (n, m) = (uint(r)?, uint(r)?);
            let (dn, dm) = (g_delta(r)?, g_delta(r)?);
            lattice(last_copy(n, dn), last_copy(m, dm))
        }
        9 => {
            let n = uint(r)?;
            lattice(last_copy(n, g_delta(r)?), (0, 0))
        }
        // Irregular rows or columns (4-7) or displacements (10, 11): a dimension, a grid
        // (5, 7, 11), then dimension + 1 spaces or displacements from one copy to the next.
        4..=7 | 10 | 11 => {
            let Some(count) = uint(r)?.checked_add(1) else {
                return bad("a repetition dimension overflows");
            };
            let grid = if matches!(kind, 5 | 7 | 11) {
                ucoord(r)?
            } else {
                1
            };
            let mut at = (0, 0);
            let mut offsets = ORIGIN;
            for _ in 0..count {
                let step = match kind {
                    4 | 5 => (ucoord(r)?, 0),
                    6 | 7 => (0, ucoord(r)?),
                    _ => g_delta(r)?,
                };
                let on_grid = |v: i64| clamp(i128::from(v) * i128::from(grid));
                at = add2(at, (on_grid(step.0), on_grid(step.1)));
                offsets.add_point(at.0, at.1);
            }
            offsets
        }
        _ => return bad(format!("a repetition of type {kind} (0 to 11 exist)")),
    };
    Ok(Some(offsets))
}

/// A point list (a type and a count, then that many deltas) from an implicit first point at
/// (0, 0): the box of its points and how many there are, with, for a `polygon` of type 0 or 1,
/// the point that closes it (which adds nothing to the box). With `keep`, the points are
/// pushed there too, at most [`MAX_POINTS`].
fn point_list(
    r: &mut impl BufRead,
    polygon: bool,
    mut keep: Option<&mut Vec<(i64, i64)>>,
) -> Res<(Rect, u64)> {
    // 1-deltas (alternating horizontal and vertical from 0 or 1), 2-deltas and 3-deltas are
    // one integer each; g-deltas (4, or 5 for double deltas) one or two.
    let kind = uint(r)?;
    if kind > 5 {
        return bad(format!("a point list of type {kind} (0 to 5 exist)"));
    }
    let count = uint(r)?;
    let mut bbox = ORIGIN;
    let (mut at, mut delta) = ((0, 0), (0, 0));
    if let Some(points) = keep.as_deref_mut() {
        points.push(at);
    }
    for i in 0..count {
        let step = match kind {
            0 | 1 => {
                let v = sint(r)?;
                if (i % 2 == 0) == (kind == 0) {
                    (v, 0)
                } else {
                    (0, v)
                }
            }
            2 | 3 => octant(uint(r)?, kind == 3),
            4 => g_delta(r)?,
            _ => {
                delta = add2(delta, g_delta(r)?);
                delta
            }
        };
        at = add2(at, step);
        bbox.add_point(at.0, at.1);
        if let Some(points) = keep.as_deref_mut() {
            if points.len() >= MAX_POINTS {
                return bad(format!("a PATH has more than {MAX_POINTS} points"));
            }
            points.push(at);
        }
    }
    let closing = u64::from(polygon && kind < 2);
    Ok((bbox, count.saturating_add(1).saturating_add(closing)))
}

/// A property value: a type, then a real (0-7), an integer (8, 9), a string (10-12) or a
/// PROPSTRING reference number (13-15).
fn property_value(r: &mut impl BufRead) -> Res<()> {
    match uint(r)? {
        kind @ 0..=7 => real_of(kind, r).map(drop),
        8 | 9 | 13..=15 => uint(r).map(drop),
        10..=12 => skip_string(r),
        kind => bad(format!("a property value of type {kind} (0 to 15 exist)")),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::io::Write;

    use flate2::{Compression, write::DeflateEncoder};

    use super::super::{Layout, LayoutError, Rect, inspect};
    use super::MAGIC;
    use crate::layout::LayoutFormat;

    /// Writes OASIS bytes, field by field.
    #[derive(Default)]
    struct W(Vec<u8>);

    /// A signed integer as the unsigned one that encodes it (the sign in bit 0).
    fn s(v: i64) -> u64 {
        v.unsigned_abs() << 1 | u64::from(v < 0)
    }

    impl W {
        /// A file: the magic and a START record (table offsets in START or in END).
        fn file(offsets_in_start: bool) -> W {
            let mut w = W(MAGIC.to_vec());
            w.u(1).str(b"1.0").u(7).raw(&1000f64.to_le_bytes());
            w.u(u64::from(!offsets_in_start));
            if offsets_in_start {
                w.offsets();
            }
            w
        }

        fn u(&mut self, mut v: u64) -> &mut Self {
            while v >= 0x80 {
                self.0.push(v as u8 | 0x80);
                v >>= 7;
            }
            self.0.push(v as u8);
            self
        }

        fn us(&mut self, values: &[u64]) -> &mut Self {
            values.iter().fold(self, |w, &v| w.u(v))
        }

        /// A record with an info byte and integer fields.
        fn rec(&mut self, id: u64, info: u8, fields: &[u64]) -> &mut Self {
            self.u(id).raw(&[info]).us(fields)
        }

        fn raw(&mut self, bytes: &[u8]) -> &mut Self {
            self.0.extend_from_slice(bytes);
            self
        }

        fn str(&mut self, s: &[u8]) -> &mut Self {
            self.u(s.len() as u64).raw(s)
        }

        fn offsets(&mut self) -> &mut Self {
            (0..6).fold(self, |w, i| w.us(&[1, i * 100]))
        }

        /// END (with the table offsets if START had none), 256 bytes long; the file's bytes.
        fn end(&mut self, offsets_in_end: bool, validation: u64) -> Vec<u8> {
            let start = self.0.len();
            self.u(2);
            if offsets_in_end {
                self.offsets();
            }
            // The padding's 2-byte length, the scheme and the signature follow the padding.
            let used = self.0.len() - start + 3 + if validation == 0 { 0 } else { 4 };
            self.str(&vec![0; 256 - used]).u(validation);
            if validation != 0 {
                self.raw(&[1, 2, 3, 4]);
            }
            self.0.clone()
        }

        fn cellname(&mut self, name: &str) -> &mut Self {
            self.u(3).str(name.as_bytes())
        }

        fn cell(&mut self, name: &str) -> &mut Self {
            self.u(14).str(name.as_bytes())
        }

        fn cell_ref(&mut self, n: u64) -> &mut Self {
            self.us(&[13, n])
        }

        /// PLACEMENT by name at (10, -20).
        fn place(&mut self, name: &str) -> &mut Self {
            self.rec(17, 0xb0, &[])
                .str(name.as_bytes())
                .us(&[s(10), s(-20)])
        }

        /// PLACEMENT by reference number, as a 3 x 2 array.
        fn place_ref(&mut self, n: u64) -> &mut Self {
            self.rec(17, 0xc8, &[n, 1, 3, 2, 100, 200])
        }

        /// CBLOCK of `records`, declaring `size` inflated bytes (their length if None).
        fn cblock_sized(&mut self, records: &[u8], size: Option<u64>) -> &mut Self {
            let mut encoder = DeflateEncoder::new(Vec::new(), Compression::default());
            encoder.write_all(records).unwrap();
            let data = encoder.finish().unwrap();
            let size = size.unwrap_or(records.len() as u64);
            self.us(&[34, 0, size, data.len() as u64]).raw(&data)
        }

        fn cblock(&mut self, records: &[u8]) -> &mut Self {
            self.cblock_sized(records, None)
        }
    }

    fn read_ok(bytes: &[u8]) -> Layout {
        inspect(bytes).unwrap_or_else(|e| panic!("{e}"))
    }

    fn error(bytes: &[u8]) -> LayoutError {
        match inspect(bytes) {
            Ok(layout) => panic!("read a broken file as {layout:?}"),
            Err(e) => e,
        }
    }

    fn corrupt(bytes: &[u8], expected: &str) {
        match error(bytes) {
            LayoutError::Corrupt { detail, .. } if detail.contains(expected) => {}
            other => panic!("expected Corrupt mentioning {expected:?}, got {other:?}"),
        }
    }

    fn truncated(bytes: &[u8]) -> String {
        match error(bytes) {
            LayoutError::Truncated { detail, .. } => detail,
            other => panic!("expected Truncated, got {other:?}"),
        }
    }

    /// gdstk writes CELLNAME records after the cells and the unit as 999.9999999999999.
    #[test]
    fn reads_the_gdstk_fixture_when_it_is_there() {
        let Some(dir) = crate::layout::tests::shared_fixtures() else {
            return;
        };
        let bytes = std::fs::read(dir.join("chip_top_hier.oas")).unwrap();
        let layout = read_ok(&bytes);
        assert_eq!(layout.format, LayoutFormat::Oasis);
        assert_eq!(layout.top_cells, ["chip_top"]);
        assert_eq!(layout.cells.len(), 5, "{:?}", layout.cells);
        assert!(layout.dbu_is(0.001), "{}", layout.dbu_microns);
    }

    #[test]
    fn reads_the_unit_as_gdstk_writes_it() {
        let mut w = W(MAGIC.to_vec());
        w.u(1)
            .str(b"1.0")
            .u(7)
            .raw(&999.9999999999999f64.to_le_bytes())
            .u(0);
        w.offsets();
        w.cell("chip_top");
        let layout = read_ok(&w.end(false, 0));
        assert!(layout.dbu_is(0.001), "{}", layout.dbu_microns);
    }

    /// top places a (by number) and b (by name); a places b (by number); b is defined by name.
    /// Bit 0 of `cblock` compresses the names, bit 1 the cells.
    fn small(names_first: bool, offsets_in_start: bool, cblock: u8) -> Vec<u8> {
        let mut names = W::default();
        names.cellname("top").cellname("a").cellname("b");
        let mut cells = W::default();
        cells
            .cell_ref(0)
            .place_ref(1)
            .place("b")
            .cell_ref(1)
            .place_ref(2);
        cells.cell("b").rec(20, 0x63, &[1, 10, 20, 5]);
        let mut parts = [(names, cblock & 1 != 0), (cells, cblock & 2 != 0)];
        if !names_first {
            parts.reverse();
        }
        let mut w = W::file(offsets_in_start);
        for (part, compress) in parts {
            if compress {
                w.cblock(&part.0)
            } else {
                w.raw(&part.0)
            };
        }
        w.end(!offsets_in_start, 0)
    }

    #[test]
    fn reads_names_tables_and_cblocks_in_any_arrangement() {
        for names_first in [true, false] {
            for offsets_in_start in [true, false] {
                for cblock in 0..4 {
                    let layout = read_ok(&small(names_first, offsets_in_start, cblock));
                    let case = format!("{names_first} {offsets_in_start} {cblock}");
                    assert_eq!(layout.cells, ["top", "a", "b"], "{case}");
                    assert_eq!(layout.top_cells, ["top"], "{case}");
                    assert!(layout.dbu_is(0.001), "{case}");
                }
            }
        }
    }

    #[test]
    fn reads_a_deep_hierarchy_and_many_cells() {
        let mut w = W::file(true);
        for depth in (0..50).rev() {
            w.cell(&format!("c{depth}"));
            if depth < 49 {
                w.place(&format!("c{}", depth + 1));
            }
        }
        let layout = read_ok(&w.end(false, 1));
        assert_eq!(layout.cells.len(), 50);
        assert_eq!(layout.top_cells, ["c0"]);

        let mut w = W::file(false);
        w.cell_ref(0);
        for n in 1..=10_000 {
            w.place_ref(n);
        }
        for n in 1..=10_000 {
            w.cell_ref(n).rec(20, 0xc3, &[1, 2, 50]);
        }
        for n in 0..=10_000 {
            w.cellname(&format!("cell{n}"));
        }
        let layout = read_ok(&w.end(true, 2));
        assert_eq!(layout.cells.len(), 10_001);
        assert_eq!(layout.top_cells, ["cell0"]);
    }

    #[test]
    fn keeps_odd_names_and_finds_two_tops() {
        let mut w = W::file(true);
        w.u(4).str(b"my cell $1").u(7);
        w.u(4)
            .str("caf\u{e9}".as_bytes())
            .u(8)
            .u(4)
            .str(b"x\xff")
            .u(9);
        w.cell_ref(7)
            .place_ref(9)
            .cell("t w o")
            .place_ref(9)
            .cell_ref(8)
            .cell_ref(9);
        let layout = read_ok(&w.end(false, 0));
        let cells = ["my cell $1", "t w o", "caf\u{e9}", "x\u{fffd}"];
        assert_eq!(layout.cells, cells);
        assert_eq!(layout.top_cells, cells[..3]);
    }

    #[test]
    fn a_placement_without_a_cell_reuses_the_last_one_in_its_cell() {
        // C = 0, with X and a repetition, then with nothing: mid again, twice.
        let mut w = W::file(true);
        w.cell("top")
            .place("mid")
            .rec(17, 0x28, &[s(-7), 2, 4, 9])
            .rec(17, 0, &[]);
        w.cell("mid").place("leaf").rec(17, 0, &[]).cell("leaf");
        let layout = read_ok(&w.end(false, 0));
        assert_eq!(layout.cells, ["top", "mid", "leaf"]);
        assert_eq!(layout.top_cells, ["top"]);
        // A cell's first PLACEMENT must name its cell: the modal one ends with the last cell.
        let mut w = W::file(true);
        w.cell("top").place("leaf").cell("other").rec(17, 0, &[]);
        corrupt(&w.end(false, 0), "no earlier PLACEMENT in this cell");
        let mut w = W::file(true);
        w.place("leaf");
        corrupt(&w.end(false, 0), "outside any CELL");
    }

    /// The name records (they go between cells), with implicit or explicit reference numbers
    /// (a file may not mix them), naming 0 in each table; and LAYERNAMEs with every interval.
    fn every_name_record(explicit: bool) -> Vec<u8> {
        let mut w = W::default();
        for id in [5, 7, 9] {
            w.u(id + u64::from(explicit))
                .str(b"zero")
                .us(if explicit { &[0] } else { &[] });
        }
        w.us(&[30 + u64::from(explicit), 1])
            .str(b"x")
            .us(if explicit { &[0] } else { &[] });
        w.u(11).str(b"metal").us(&[0, 1, 5]);
        w.u(12).str(b"label").us(&[2, 3, 4, 1, 9]);
        w.u(11).str(b"via").us(&[3, 7, 0]);
        w.0
    }

    /// Every record a cell holds, with most of their optional fields and every repetition,
    /// point list, real and property value type. KLayout reads it without a warning.
    fn every_cell_record() -> Vec<u8> {
        let mut w = W::default();
        w.us(&[0, 16, 15]);
        // TEXT by string with everything, then by number.
        w.rec(19, 0x5f, &[])
            .str(b"hello")
            .us(&[1, 2, s(3), s(-4), 1, 2, 3, 4, 5]);
        w.rec(19, 0x60, &[0]);
        // RECTANGLE: a square (no height), then one with every field and each repetition.
        w.rec(20, 0xdf, &[1, 2, 30, s(1), s(2), 0]);
        let repetitions: [&[u64]; 12] = [
            &[0],
            &[1, 2, 3, 4, 5],
            &[2, 3, 4],
            &[3, 3, 4],
            &[4, 2, 1, 2, 3],
            &[5, 1, 10, 1, 2],
            &[6, 0, 7],
            &[7, 1, 10, 3, 4],
            &[8, 2, 3, 0x40, 0x41, 0x22],
            &[9, 4, 0x33, 0x50],
            &[10, 1, 0x20, 0x61, 0x62],
            &[11, 0, 10, 0x30],
        ];
        for repetition in repetitions {
            w.rec(20, 0x7f, &[1, 2, 3, 4, s(5), s(6)]).us(repetition);
        }
        // POLYGON with each point-list type.
        let lists: [&[u64]; 6] = [
            &[0, 2, 4, 6],
            &[1, 2, 5, 7],
            &[2, 3, 8, 9, 10],
            &[3, 2, 12, 13],
            &[4, 3, 0x10, 0x11, 0x12, 0x14],
            &[5, 2, 0x21, 0x21, 0x30],
        ];
        for list in lists {
            w.rec(21, 0x3b, &[1, 2]).us(list).us(&[s(-1), s(2)]);
        }
        // PATH with explicit extensions, then with implied ones and no point list.
        w.rec(
            22,
            0xff,
            &[1, 2, 5, 0x0f, s(-3), s(3), 0, 2, 4, 6, s(1), s(1), 2, 3, 4],
        );
        w.rec(22, 0xc0, &[5, 0x06]);
        // TRAPEZOID (both deltas, delta-a, delta-b), CTRAPEZOID, CIRCLE.
        w.rec(23, 0x7f, &[1, 2, 10, 20, s(-2), s(3), s(1), s(1), 0]);
        w.rec(24, 0x60, &[10, 20, s(4)]).rec(25, 0, &[s(-4)]);
        w.rec(26, 0xff, &[1, 2, 17, 10, 20, s(1), s(2), 0]);
        w.rec(27, 0x3f, &[1, 2, 100, s(1), s(2), 0]);
        // PROPERTY: 16 values of every type, then two by reference, then the last values again.
        w.rec(28, 0xf4, &[]).str(b"all").u(16);
        w.us(&[0, 5, 1, 5, 2, 3, 3, 3, 4, 1, 3, 5, 1, 3]);
        w.u(6)
            .raw(&1.5f32.to_le_bytes())
            .u(7)
            .raw(&2.5f64.to_le_bytes());
        w.us(&[8, 300, 9, s(-300), 10])
            .str(b"a")
            .u(11)
            .str(b"\0\x01")
            .u(12)
            .str(b"n");
        w.us(&[13, 0, 14, 0, 15, 0]);
        w.rec(28, 0x26, &[0, 8, 1, 10])
            .str(b"")
            .rec(28, 0x08, &[29]);
        // XELEMENT, XGEOMETRY.
        w.us(&[32, 1]).str(b"\xff\xfe data");
        w.rec(33, 0x1f, &[1, 2, 3])
            .str(b"geometry")
            .us(&[s(1), s(2), 0]);
        // PLACEMENT with magnification and angle, and with angle bits and flip.
        w.rec(18, 0xbe, &[])
            .str(b"after")
            .us(&[4, 1, 2, 6])
            .raw(&90f32.to_le_bytes());
        w.us(&[s(1), s(2), 9, 2, 0x41, 0x02]);
        w.rec(17, 0xbf, &[]).str(b"after").us(&[s(3), s(4), 0]);
        w.0
    }

    /// Seeds for the fuzzing (`fuzz.rs`): every record with every field, plain and in CBLOCKs,
    /// and a hierarchy of shapes of every kind placed in every way, with repetitions, in
    /// relative mode and through the modal variables.
    pub(crate) fn fuzz_seeds() -> Vec<Vec<u8>> {
        let mut seeds = vec![];
        for compressed in [false, true] {
            let (names, records) = (every_name_record(compressed), every_cell_record());
            let mut w = W::file(true);
            if compressed {
                w.cblock(&names).cell("top").cblock(&records);
            } else {
                w.raw(&names).cell("top").raw(&records);
            }
            w.cell("after").rec(20, 0x63, &[1, 2, 3, 4]);
            seeds.push(w.end(false, 0));
        }
        let mut shapes = W::default();
        shapes
            .u(16)
            .rec(20, 0x7f, &[1, 0, 10, 10, s(5), s(5), 2, 1, 20]);
        shapes.rec(21, 0x3f, &[2, 3, 5, 2, 10 << 4, 10 << 4 | 2, s(1), s(1), 0]);
        shapes.rec(
            22,
            0xff,
            &[1, 0, 5, 0b1011, s(7), 3, 2, 40 << 3 | 4, 40 << 3 | 7],
        );
        shapes
            .us(&[s(-3), s(9), 8, 0, 1])
            .us(&g(3, 4))
            .us(&g(-4, 3));
        shapes.rec(
            23,
            0xff,
            &[1, 0, 30, 20, s(-5), s(5), s(1), s(1), 4, 1, 2, 3],
        );
        shapes.rec(26, 0xfc, &[21, 10, 10, s(-9), s(9), 0]);
        shapes
            .rec(27, 0x3c, &[4, s(20), s(20), 11, 0, 3])
            .us(&g(5, -5));
        shapes
            .rec(19, 0x5f, &[])
            .str(b"x")
            .us(&[7, 7, s(1), s(1), 0]);
        let mut w = W::default();
        w.rec(17, 0xb6, &[]).str(b"shapes").us(&[s(100), s(0)]);
        w.rec(17, 0x3d, &[s(0), s(-100), 1, 0, 1, 30, 40]);
        let placement = w.rec(18, 0xbf, &[]).str(b"shapes");
        f(placement, 1.5);
        f(placement, 33.0)
            .us(&[s(-50), s(50), 10, 1])
            .us(&g(7, 7))
            .us(&g(-9, 1));
        seeds.push(cells(&[("top", &w), ("shapes", &shapes)]));
        seeds
    }

    /// Every record and field at once, and shapes placed in every way (among them copies turned
    /// by 33 degrees, whose box is the union of their layers' turned boxes).
    #[test]
    fn the_fuzz_seeds_give_klayouts_boxes() {
        let seeds = fuzz_seeds();
        die_is(
            "seed_every_record",
            &seeds[0],
            Some([-99, -98, 117, 210]),
            &[(1, 2)],
        );
        die_is(
            "seed_every_record_compressed",
            &seeds[1],
            Some([-99, -98, 117, 210]),
            &[(1, 2)],
        );
        let layers = [(1, 0), (2, 3), (7, 7)];
        die_is(
            "seed_placed",
            &seeds[2],
            Some([-95, -114, 173, 129]),
            &layers,
        );
    }

    /// Integers are decoded in the read buffer when they are whole in it, byte by byte when
    /// they straddle its end: a source that hands out one byte at a time (after the 16 the
    /// format is told by) reads the same.
    #[test]
    fn reads_the_same_a_byte_at_a_time() {
        struct ByteByByte<'a>(&'a [u8], usize);
        impl std::io::Read for ByteByByte<'_> {
            fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
                let n = self.1.min(self.0.len()).min(buf.len());
                buf[..n].copy_from_slice(&self.0[..n]);
                (self.0, self.1) = (&self.0[n..], 1);
                Ok(n)
            }
        }
        let mut big = W::file(true);
        big.cell("top").rec(
            20,
            0x7b,
            &[1, 0, u64::MAX >> 20, 1 << 40, s(-(1 << 50)), s(3)],
        );
        for bytes in fuzz_seeds().into_iter().chain([big.end(false, 0)]) {
            let whole = read_ok(&bytes);
            assert_eq!(inspect(ByteByByte(&bytes, 16)).unwrap(), whole);
        }
        let mut w = W::file(true);
        w.u(13).raw(&[0xff; 9]).raw(&[0x02]);
        let bytes = w.end(false, 0);
        for e in [error(&bytes), inspect(ByteByByte(&bytes, 16)).unwrap_err()] {
            assert!(e.to_string().contains("more than 64 bits"), "{e}");
        }
    }

    #[test]
    fn skips_every_record_type_exactly() {
        let records = every_cell_record();
        for compressed in [false, true] {
            let names = every_name_record(compressed);
            let mut w = W::file(true);
            if compressed {
                w.cblock(&names).cell("top").cblock(&records);
            } else {
                w.raw(&names).cell("top").raw(&records);
            }
            w.cell("after").rec(20, 0x63, &[1, 2, 3, 4]);
            let layout = read_ok(&w.end(false, 0));
            assert_eq!(layout.cells, ["top", "after"], "compressed {compressed}");
            assert_eq!(layout.top_cells, ["top"], "compressed {compressed}");
        }
    }

    #[test]
    fn every_prefix_is_truncated() {
        for (offsets_in_start, validation) in [(true, 1), (false, 0)] {
            let mut cells = W::default();
            cells.cell_ref(0).place("b").cell("b");
            let mut w = W::file(offsets_in_start);
            w.cellname("top").cblock(&cells.0).u(0);
            let bytes = w.end(!offsets_in_start, validation);
            assert_eq!(read_ok(&bytes).top_cells, ["top"]);
            for len in MAGIC.len()..bytes.len() {
                assert!(truncated(&bytes[..len]).starts_with("file ends"), "{len}");
            }
        }
    }

    #[test]
    fn says_where_a_file_ends() {
        let mut w = W::file(true);
        let at = w.cell("top").0.len();
        let expected = format!("file ends after record 2 at byte {at} without an END record");
        assert_eq!(truncated(&w.0), expected);
        w.place("leaf");
        let expected = format!("file ends inside record 3 (PLACEMENT) at byte {at}");
        assert_eq!(truncated(&w.0[..w.0.len() - 1]), expected);
    }

    #[test]
    fn rejects_bad_records() {
        let mut w = W::file(true);
        let at = w.cell("top").0.len();
        w.u(35);
        let expected = format!("record 3 (unknown) at byte {at}: unknown record id 35");
        corrupt(&w.end(false, 0), &expected);
        let mut w = W::file(true);
        w.cell("top").u(200);
        corrupt(&w.end(false, 0), "unknown record id 200");
        // A reference number no CELLNAME names (mod.rs finds it).
        let mut w = W::file(true);
        w.cell_ref(7);
        corrupt(
            &w.end(false, 0),
            "reference number 7 has no CELLNAME record",
        );
        // Bad types of a real, an interval, a repetition, a point list, a property value.
        for (record, expected) in [
            (&[28, 0x10, 16][..], "property value of type 16"),
            (&[11, 1, b'x', 5], "interval of type 5"),
            (&[20, 0x04, 12], "repetition of type 12"),
            (&[21, 0x20, 6, 0], "point list of type 6"),
            (&[18, 0x84, 1, b'x', 8], "real of type 8"),
        ] {
            let mut w = W::file(true);
            w.cell("top").raw(record);
            corrupt(&w.end(false, 0), expected);
        }
        // A unit that is not positive, a file without START, a second START.
        let mut w = W(MAGIC.to_vec());
        w.u(1).str(b"1.0").us(&[0, 0, 0]);
        corrupt(&w.offsets().end(false, 0), "is not a positive number");
        let mut w = W(MAGIC.to_vec());
        corrupt(
            &w.cell("top").end(false, 0),
            "does not begin with a START record",
        );
        let mut bytes = W::file(true).end(false, 0);
        bytes.splice(
            MAGIC.len()..MAGIC.len(),
            W::file(true).0.split_off(MAGIC.len()),
        );
        corrupt(&bytes, "a second START record");
        // A wrong magic, read directly (inspect would not take it for OASIS).
        let stop = std::sync::atomic::AtomicBool::new(false);
        let meter = super::Meter::new(Default::default(), &stop);
        let wrong = super::read(&b"%SEMI-OASIS\r\r\x01"[..], &meter);
        assert!(matches!(wrong, Err(LayoutError::Corrupt { .. })));
    }

    #[test]
    fn reads_integers_of_up_to_64_bits() {
        // 11 bytes, and 10 bytes, with bits past the 64th.
        let mut w = W::file(true);
        w.u(13).raw(&[0x80; 10]).raw(&[1]);
        corrupt(&w.end(false, 0), "more than 64 bits");
        let mut w = W::file(true);
        w.u(13).raw(&[0xff; 9]).raw(&[0x02]);
        corrupt(&w.end(false, 0), "more than 64 bits");
        // u64::MAX in 10 bytes, and zero groups past the 64th bit, as in KLayout's END record
        // (the padding's length is a zero spread over 253 bytes).
        let mut w = W::file(true);
        w.cell_ref(u64::MAX).u(4).str(b"max").u(u64::MAX);
        w.u(2).raw(&[0x80; 253]).raw(&[0, 0]);
        assert_eq!(read_ok(&w.0).cells, ["max"]);
    }

    #[test]
    fn rejects_huge_lengths_quickly() {
        // A name is capped; a skipped string is skipped until the file ends.
        let mut w = W::file(true);
        w.us(&[3, 1 << 60]).raw(b"short");
        corrupt(&w.0, &format!("a name of {} bytes", 1u64 << 60));
        let mut w = W::file(true);
        w.us(&[5, 1 << 60]).raw(b"short");
        truncated(&w.0);
        // A huge count of point-list deltas, a repetition dimension that overflows.
        let mut w = W::file(true);
        w.cell("top").rec(21, 0x20, &[0, u64::MAX, 1]);
        truncated(&w.0);
        let mut w = W::file(true);
        w.cell("top").rec(20, 0x04, &[4, u64::MAX]);
        corrupt(&w.0, "repetition dimension overflows");
    }

    #[test]
    fn rejects_bad_cblocks() {
        let mut inner = W::default();
        let records = inner.cell("a").cell("b").u(0).0.clone();
        let len = records.len() as u64;
        for (size, expected) in [
            (len - 1, format!("inflates to more than {} bytes", len - 1)),
            (len + 1, format!("inflates to {len} bytes, not {}", len + 1)),
        ] {
            let mut w = W::file(true);
            w.cblock_sized(&records, Some(size));
            corrupt(&w.end(false, 0), &expected);
        }
        // A CBLOCK inside a CBLOCK; the error names the outer byte offset.
        let mut nested = W::default();
        nested.cell("a").cblock(&records);
        let mut w = W::file(true);
        let at = w.0.len();
        w.cblock(&nested.0);
        let expected = format!("record 4 (CBLOCK) at byte 3 of the CBLOCK at byte {at}");
        corrupt(&w.end(false, 0), &expected);
        // Not DEFLATE, and data that does not inflate.
        let mut w = W::file(true);
        w.us(&[34, 1, 1, 1, 0]);
        corrupt(&w.end(false, 0), "compression type 1");
        let mut w = W::file(true);
        w.us(&[34, 0, 10, 4]).raw(&[0xff; 4]);
        corrupt(&w.end(false, 0), "compressed data is corrupt");
    }

    /// A g-delta in its second form (x with its sign, then y): two integers.
    fn g(dx: i64, dy: i64) -> [u64; 2] {
        [dx.unsigned_abs() << 2 | u64::from(dx < 0) << 1 | 1, s(dy)]
    }

    /// A real of type 7 (an IEEE double).
    fn f(w: &mut W, v: f64) -> &mut W {
        w.u(7).raw(&v.to_le_bytes())
    }

    /// A file of `cells`, each the records after its CELL by name.
    fn cells(cells: &[(&str, &W)]) -> Vec<u8> {
        let mut w = W::file(true);
        for (name, records) in cells {
            w.cell(name).raw(&records.0);
        }
        w.end(false, 0)
    }

    /// A file of one cell, "top", of `records`.
    fn top(records: &W) -> Vec<u8> {
        cells(&[("top", records)])
    }

    /// "leaf": a 100 x 50 rectangle on 1/0 at the origin.
    fn leaf() -> W {
        let mut w = W::default();
        w.rec(20, 0x7b, &[1, 0, 100, 50, s(0), s(0)]);
        w
    }

    /// A file whose top cell places "leaf" by `placement` (a PLACEMENT record).
    fn placing(placement: &W) -> Vec<u8> {
        cells(&[("top", placement), ("leaf", &leaf())])
    }

    /// Asserts the die of `bytes`: `bbox` (None for no shape) and `layers`. Where
    /// PRECHECK_KLAYOUT_CASES names a folder, the file and its expectation are written there as
    /// `name`, for scripts/klayout-cases.py to check against KLayout (every expectation below
    /// was checked so with KLayout 0.28.5).
    /// The top cell of `records` has `bbox` and only layer 1/0.
    fn on_layer_1(name: &str, records: &W, bbox: [i64; 4]) {
        die_is(name, &top(records), Some(bbox), &[(1, 0)]);
    }

    fn die_is(name: &str, bytes: &[u8], bbox: Option<[i64; 4]>, layers: &[(u32, u32)]) {
        dump(
            name,
            bytes,
            serde_json::json!({ "bbox": bbox, "layers": layers }),
        );
        let die = read_ok(bytes)
            .die
            .unwrap_or_else(|| panic!("{name}: no single top"));
        let expected = bbox.map(|[l, b, r, t]| Rect::new(l, b, r, t));
        assert_eq!(die.bbox, expected, "{name}");
        assert_eq!(die.layers, layers, "{name}");
    }

    fn dump(name: &str, bytes: &[u8], mut expected: serde_json::Value) {
        let Some(dir) = std::env::var_os("PRECHECK_KLAYOUT_CASES") else {
            return;
        };
        let dir = std::path::PathBuf::from(dir);
        std::fs::create_dir_all(&dir).unwrap();
        let file = format!("{name}.oas");
        std::fs::write(dir.join(&file), bytes).unwrap();
        expected["file"] = file.into();
        std::fs::write(dir.join(format!("{name}.json")), expected.to_string()).unwrap();
    }

    #[test]
    fn rectangles_squares_and_their_modal_sizes() {
        let mut w = W::default();
        w.rec(20, 0x7b, &[1, 0, 100, 50, s(10), s(20)]);
        on_layer_1("rectangle", &w, [10, 20, 110, 70]);
        // S: a square, whose height is its width.
        let mut w = W::default();
        w.rec(20, 0xdb, &[2, 3, 40, s(-5), s(-5)]);
        die_is("square", &top(&w), Some([-5, -5, 35, 35]), &[(2, 3)]);
        // Layer, datatype, width and height left out: the last ones; a square's height is
        // the modal height after it.
        let mut w = W::default();
        w.rec(20, 0x7b, &[1, 0, 100, 50, s(0), s(0)])
            .rec(20, 0x18, &[s(500), s(500)]);
        on_layer_1("rectangle_modal", &w, [0, 0, 600, 550]);
        let mut w = W::default();
        w.rec(20, 0xdb, &[1, 0, 40, s(0), s(0)])
            .rec(20, 0x18, &[s(100), s(0)]);
        on_layer_1("square_sets_height", &w, [0, 0, 140, 40]);
        // With S, the H bit brings no height (the spec says it must be 0).
        let mut w = W::default();
        w.rec(20, 0xfb, &[1, 0, 40, s(3), s(5)])
            .rec(20, 0x7b, &[1, 0, 1, 1, s(-50), s(-50)]);
        on_layer_1("square_with_h", &w, [-50, -50, 43, 45]);
        // A width of 0 is a box all the same.
        let mut w = W::default();
        w.rec(20, 0x7b, &[1, 0, 0, 50, s(10), s(20)]);
        on_layer_1("rectangle_flat", &w, [10, 20, 10, 70]);
    }

    #[test]
    fn absolute_and_relative_positions() {
        // XYRELATIVE: a given x or y is added to the modal one, and x and y are modal apart.
        let mut w = W::default();
        w.u(16)
            .rec(20, 0x7b, &[1, 0, 10, 10, s(100), s(100)])
            .rec(20, 0x10, &[s(-300)])
            .rec(20, 0x08, &[s(50)]);
        on_layer_1("relative", &w, [-200, 100, 110, 160]);
        // Back to absolute; then a text's position is its own modal one, not the shapes'.
        let mut w = W::default();
        w.u(16)
            .rec(20, 0x7b, &[1, 0, 10, 10, s(100), s(100)])
            .u(15)
            .rec(20, 0x10, &[s(-300)]);
        w.u(16)
            .rec(19, 0x5b, &[])
            .str(b"t")
            .us(&[7, 8, s(5), s(-5)]);
        die_is(
            "relative_then_absolute",
            &top(&w),
            Some([-300, -5, 110, 110]),
            &[(1, 0), (7, 8)],
        );
        // The mode starts absolute in every cell.
        let mut a = W::default();
        a.u(16).rec(20, 0x7b, &[1, 0, 10, 10, s(100), s(100)]);
        let mut b = W::default();
        b.rec(20, 0x7b, &[1, 0, 10, 10, s(5), s(5)])
            .rec(20, 0x18, &[s(500), s(500)]);
        b.rec(17, 0xb0, &[]).str(b"a").us(&[s(0), s(0)]);
        die_is(
            "relative_ends_with_its_cell",
            &cells(&[("a", &a), ("b", &b)]),
            Some([5, 5, 510, 510]),
            &[(1, 0)],
        );
    }

    #[test]
    fn modal_variables_run_through_cblocks() {
        let mut inner = W::default();
        inner
            .u(16)
            .rec(20, 0x7f, &[1, 0, 10, 10, s(100), s(100), 2, 0, 50]);
        let mut w = W::default();
        w.cblock(&inner.0).rec(20, 0x14, &[s(100), 0]);
        on_layer_1("modal_through_cblock", &w, [100, 100, 260, 110]);
    }

    #[test]
    fn polygons_of_every_point_list_type() {
        let polygon = |list: &[u64]| {
            let mut w = W::default();
            w.rec(21, 0x3b, &[1, 0]).us(list).us(&[s(10), s(10)]);
            top(&w)
        };
        // Types 0 and 1: alternating 1-deltas from x (0) or y (1), closed by an implied point.
        let cases: [(&str, Vec<u64>, [i64; 4]); 7] = [
            (
                "polygon_type0",
                vec![0, 2, s(100), s(50)],
                [10, 10, 110, 60],
            ),
            (
                "polygon_type1",
                vec![1, 2, s(30), s(-20)],
                [-10, 10, 10, 40],
            ),
            // 2-deltas east, north, west.
            (
                "polygon_type2",
                vec![2, 3, 100 << 2, 50 << 2 | 1, 100 << 2 | 2],
                [10, 10, 110, 60],
            ),
            // 3-deltas north-east, south-east.
            (
                "polygon_type3",
                vec![3, 2, 40 << 3 | 4, 40 << 3 | 7],
                [10, 10, 90, 50],
            ),
            // g-deltas: 30 north-west (first form), then (-50, -70) (second form).
            (
                "polygon_type4",
                [vec![4, 2, 30 << 4 | 5 << 1], g(-50, -70).to_vec()].concat(),
                [-70, -30, 10, 40],
            ),
            // Double deltas: each delta adds to the last one.
            (
                "polygon_type5",
                vec![5, 3, 10 << 4, 10 << 4, 20 << 4 | 1 << 1],
                [10, 10, 60, 30],
            ),
            // One 1-delta: the implied point makes it three (a polygon of no area).
            ("polygon_flat", vec![0, 1, s(100)], [10, 10, 110, 10]),
        ];
        for (name, list, bbox) in cases {
            die_is(name, &polygon(&list), Some(bbox), &[(1, 0)]);
        }
        // Two points are no polygon (KLayout ignores it); the modal point list moves along.
        let mut w = W::default();
        w.rec(21, 0x3b, &[5, 0, 4, 1, 10 << 4, s(0), s(0)]);
        w.rec(21, 0x3b, &[1, 0, 2, 2, 10 << 2, 10 << 2 | 1, s(0), s(0)])
            .rec(21, 0x18, &[s(-100), s(100)]);
        on_layer_1("polygon_modal", &w, [-100, 0, 10, 110]);
    }

    #[test]
    fn paths_with_every_extension_scheme() {
        // Half-width 10, from (0, 0) 100 east, at (1000, 0); the scheme's two bits for each end.
        let path = |scheme: u64, extensions: &[u64]| {
            let mut w = W::default();
            w.rec(22, 0xfb, &[1, 0, 10, scheme]).us(extensions).us(&[
                2,
                1,
                100 << 2,
                s(1000),
                s(0),
            ]);
            top(&w)
        };
        let cases: [(&str, u64, &[u64], [i64; 4]); 4] = [
            ("path_flush", 0b0101, &[], [1000, -10, 1100, 10]),
            ("path_half_width", 0b1010, &[], [990, -10, 1110, 10]),
            (
                "path_explicit",
                0b1111,
                &[s(5), s(-3)],
                [995, -10, 1097, 10],
            ),
            (
                "path_half_width_and_explicit",
                0b1011,
                &[s(20)],
                [990, -10, 1120, 10],
            ),
        ];
        for (name, scheme, extensions, bbox) in cases {
            die_is(name, &path(scheme, extensions), Some(bbox), &[(1, 0)]);
        }
        // Scheme 0 keeps the modal extensions; the half-width's is the one it had then; a path
        // with no E bit keeps them too; a right angle's outer corner.
        let mut w = W::default();
        w.rec(22, 0xfb, &[1, 0, 10, 0b1010, 2, 1, 100 << 2, s(0), s(0)]);
        w.rec(22, 0xd8, &[20, 0b0000, s(0), s(1000)]);
        w.rec(22, 0x38, &[2, 2, 100 << 2, 100 << 2 | 1, s(0), s(2000)]);
        on_layer_1("path_modal", &w, [-10, -10, 120, 2110]);
        // A path of no length: its width across, its extensions along x.
        let mut w = W::default();
        w.rec(
            22,
            0xfb,
            &[1, 0, 10, 0b1111, s(3), s(4), 2, 1, 0, s(0), s(0)],
        );
        on_layer_1("path_of_no_length", &w, [-3, -10, 4, 10]);
    }

    #[test]
    fn trapezoids_both_ways() {
        let trapezoid = |id: u64, info: u8, deltas: &[u64]| {
            let mut w = W::default();
            w.rec(id, info, &[1, 0, 100, 50])
                .us(deltas)
                .us(&[s(10), s(20)]);
            top(&w)
        };
        // Name, record id, info byte, deltas, box.
        type Case<'a> = (&'a str, u64, u8, &'a [u64], [i64; 4]);
        let cases: [Case; 6] = [
            ("trapezoid", 23, 0x7b, &[s(20), s(-30)], [10, 20, 110, 70]),
            // Deltas past the width reach past it, where KLayout puts the corners.
            (
                "trapezoid_wide_a",
                23,
                0x7b,
                &[s(150), s(0)],
                [10, 20, 160, 70],
            ),
            ("trapezoid_a", 24, 0x7b, &[s(-130)], [10, 20, 140, 70]),
            ("trapezoid_b", 25, 0x7b, &[s(-130)], [-20, 20, 110, 70]),
            // O: vertical, the deltas along the height.
            (
                "trapezoid_vertical",
                23,
                0xfb,
                &[s(80), s(0)],
                [10, 20, 110, 100],
            ),
            ("trapezoid_vertical_b", 25, 0xfb, &[s(70)], [10, 0, 110, 70]),
        ];
        for (name, id, info, deltas, bbox) in cases {
            die_is(name, &trapezoid(id, info, deltas), Some(bbox), &[(1, 0)]);
        }
    }

    #[test]
    fn every_ctrapezoid_type() {
        // Width 100 and height 40 (types 8 to 15 are taller than wide: 40 by 100), at (10, 20).
        let expected = |kind: u64| -> [i64; 4] {
            match kind {
                0..=7 | 24 => [10, 20, 110, 60],
                8..=15 => [10, 20, 50, 120],
                16..=19 | 25 => [10, 20, 110, 120],
                20 | 21 => [10, 20, 90, 60],
                _ => [10, 20, 110, 220],
            }
        };
        for kind in 0..26 {
            let (w, h) = if (8..16).contains(&kind) {
                (40, 100)
            } else {
                (100, 40)
            };
            let mut records = W::default();
            records.rec(26, 0xfb, &[1, 0, kind, w, h, s(10), s(20)]);
            let name = format!("ctrapezoid_type{kind}");
            die_is(&name, &top(&records), Some(expected(kind)), &[(1, 0)]);
        }
        // A type made of the width alone needs no height; the modal width and height become
        // the shape's (type 20, of the height alone, is twice as wide as high).
        let mut w = W::default();
        w.rec(26, 0xdb, &[1, 0, 16, 30, s(0), s(0)])
            .rec(26, 0x98, &[20, s(100), s(0)])
            .rec(20, 0x18, &[s(0), s(100)]);
        on_layer_1("ctrapezoid_modal", &w, [0, 0, 160, 130]);
    }

    #[test]
    fn circles_and_texts() {
        let mut w = W::default();
        w.rec(27, 0x3b, &[1, 0, 25, s(100), s(100)]);
        on_layer_1("circle", &w, [75, 75, 125, 125]);
        // A circle of radius 0 is no shape.
        let mut w = W::default();
        w.rec(27, 0x3b, &[2, 0, 0, s(100), s(100)])
            .rec(20, 0x7b, &[1, 0, 1, 1, s(0), s(0)]);
        on_layer_1("circle_of_no_radius", &w, [0, 0, 1, 1]);
        // A text is its point, on its textlayer and texttype (not the shapes' layer).
        let mut w = W::default();
        w.rec(20, 0x7b, &[1, 0, 10, 10, s(0), s(0)]);
        w.rec(19, 0x5b, &[])
            .str(b"label")
            .us(&[5, 6, s(-40), s(70)]);
        w.rec(19, 0x08, &[s(-80)]);
        die_is(
            "text",
            &top(&w),
            Some([-40, -80, 10, 70]),
            &[(1, 0), (5, 6)],
        );
    }

    #[test]
    fn every_repetition_type() {
        // A 10 x 10 rectangle at the origin, repeated.
        let repeated = |repetition: &[u64]| {
            let mut w = W::default();
            w.rec(20, 0x7f, &[1, 0, 10, 10, s(0), s(0)]).us(repetition);
            top(&w)
        };
        let cases: [(&str, Vec<u64>, [i64; 4]); 11] = [
            // 3 columns 20 apart, 2 rows 30 apart (counts less 2).
            ("repetition_type1", vec![1, 1, 0, 20, 30], [0, 0, 50, 40]),
            ("repetition_type2", vec![2, 2, 15], [0, 0, 55, 10]),
            ("repetition_type3", vec![3, 0, 25], [0, 0, 10, 35]),
            // Spaces from one copy to the next, with a grid (5, 7).
            ("repetition_type4", vec![4, 1, 10, 30], [0, 0, 50, 10]),
            ("repetition_type5", vec![5, 1, 5, 2, 6], [0, 0, 50, 10]),
            ("repetition_type6", vec![6, 0, 7], [0, 0, 10, 17]),
            ("repetition_type7", vec![7, 0, 3, 5], [0, 0, 10, 25]),
            // 2 x 2 along two g-deltas; 3 along one.
            (
                "repetition_type8",
                [vec![8, 0, 0], g(20, 5).to_vec(), g(-5, 20).to_vec()].concat(),
                [-5, 0, 30, 35],
            ),
            (
                "repetition_type9",
                [vec![9, 1], g(-20, -10).to_vec()].concat(),
                [-40, -20, 10, 10],
            ),
            // Displacements from one copy to the next, with a grid (11).
            (
                "repetition_type10",
                [vec![10, 1], g(30, 0).to_vec(), g(-50, 10).to_vec()].concat(),
                [-20, 0, 40, 20],
            ),
            (
                "repetition_type11",
                [vec![11, 1, 2], g(30, 0).to_vec(), g(-50, 10).to_vec()].concat(),
                [-40, 0, 70, 30],
            ),
        ];
        for (name, repetition, bbox) in cases {
            die_is(name, &repeated(&repetition), Some(bbox), &[(1, 0)]);
        }
        // Type 0 reuses the last repetition, whichever record gave it (here a PLACEMENT).
        let mut w = W::default();
        w.rec(20, 0x7f, &[1, 0, 10, 10, s(0), s(0), 2, 0, 100])
            .rec(20, 0x1c, &[s(0), s(500), 0]);
        w.rec(17, 0xb8, &[])
            .str(b"leaf")
            .us(&[s(0), s(1000), 3, 0, 300]);
        w.rec(27, 0x3f, &[2, 0, 5, s(0), s(-100), 0]);
        die_is(
            "repetition_type0",
            &cells(&[("top", &w), ("leaf", &leaf())]),
            Some([-5, -105, 110, 1350]),
            &[(1, 0), (2, 0)],
        );
    }

    #[test]
    fn placements_turned_flipped_magnified_and_repeated() {
        // PLACEMENT 17 at (1000, 0): its AA bits are quarter turns, F flips about x first.
        let place17 = |bits: u8| {
            let mut w = W::default();
            w.rec(17, 0xb0 | bits, &[])
                .str(b"leaf")
                .us(&[s(1000), s(0)]);
            placing(&w)
        };
        let cases: [(&str, u8, [i64; 4]); 6] = [
            ("placement_r0", 0, [1000, 0, 1100, 50]),
            ("placement_r90", 0b010, [950, 0, 1000, 100]),
            ("placement_r180", 0b100, [900, -50, 1000, 0]),
            ("placement_r270", 0b110, [1000, -100, 1050, 0]),
            ("placement_flip", 0b001, [1000, -50, 1100, 0]),
            ("placement_flip_r90", 0b011, [1000, 0, 1050, 100]),
        ];
        for (name, bits, bbox) in cases {
            die_is(name, &place17(bits), Some(bbox), &[(1, 0)]);
        }
        // PLACEMENT 18: magnification and angle as reals, any angle.
        let place18 = |mag: Option<f64>, angle: Option<f64>, flip: bool| {
            let mut w = W::default();
            let bits = u8::from(mag.is_some()) << 2 | u8::from(angle.is_some()) << 1;
            w.rec(18, 0xb0 | bits | u8::from(flip), &[]).str(b"leaf");
            if let Some(mag) = mag {
                f(&mut w, mag);
            }
            if let Some(angle) = angle {
                f(&mut w, angle);
            }
            w.us(&[s(1000), s(0)]);
            placing(&w)
        };
        // Name, magnification, angle, flip, box.
        type Case<'a> = (&'a str, Option<f64>, Option<f64>, bool, [i64; 4]);
        let cases: [Case; 7] = [
            (
                "placement_mag2",
                Some(2.0),
                None,
                false,
                [1000, 0, 1200, 100],
            ),
            (
                "placement_mag_half",
                Some(0.5),
                None,
                false,
                [1000, 0, 1050, 25],
            ),
            // Corners (0, 0), (70.7, 70.7), (-35.4, 35.4) and (35.4, 106.1), rounded.
            (
                "placement_angle45",
                None,
                Some(45.0),
                false,
                [965, 0, 1071, 106],
            ),
            (
                "placement_angle90_flip",
                None,
                Some(90.0),
                true,
                [1000, 0, 1050, 100],
            ),
            (
                "placement_angle_minus90",
                None,
                Some(-90.0),
                false,
                [1000, -100, 1050, 0],
            ),
            (
                "placement_angle450",
                None,
                Some(450.0),
                false,
                [950, 0, 1000, 100],
            ),
            (
                "placement_mag3_angle30",
                Some(3.0),
                Some(30.0),
                false,
                [925, 0, 1260, 280],
            ),
        ];
        for (name, mag, angle, flip, bbox) in cases {
            die_is(name, &place18(mag, angle, flip), Some(bbox), &[(1, 0)]);
        }
        // KLayout turns each layer's box, not the whole box, by an angle that is not a multiple
        // of 90 degrees, and so do the boxes of the cells above.
        let mut two = W::default();
        two.rec(20, 0x7b, &[1, 0, 10, 10, s(0), s(0)]).rec(
            20,
            0x7b,
            &[2, 0, 10, 10, s(100), s(100)],
        );
        let mut mid = W::default();
        mid.rec(18, 0xb2, &[]).str(b"leaf");
        f(&mut mid, 45.0).us(&[s(0), s(0)]);
        let mut w = W::default();
        w.rec(17, 0xb2, &[]).str(b"mid").us(&[s(1000), s(0)]);
        die_is(
            "placement_angle45_by_layer",
            &cells(&[("top", &w), ("mid", &mid), ("leaf", &two)]),
            Some([844, -7, 1000, 7]),
            &[(1, 0), (2, 0)],
        );
        // A turned array: 3 x 2 copies (type 1: 200 apart, 300 apart), each rotated 90.
        let mut w = W::default();
        w.rec(17, 0xba, &[])
            .str(b"leaf")
            .us(&[s(0), s(0), 1, 1, 0, 200, 300]);
        die_is(
            "placement_array_r90",
            &placing(&w),
            Some([-50, 0, 400, 400]),
            &[(1, 0)],
        );
        // Relative positions, a cell by reference number, the modal cell and position.
        let mut w = W::file(true);
        w.cellname("top").cellname("leaf");
        w.cell_ref(0).u(16).rec(17, 0xf0, &[1, s(100), s(100)]);
        w.rec(17, 0x20, &[s(100)]).u(15).rec(17, 0x10, &[s(-500)]);
        w.cell_ref(1).raw(&leaf().0);
        die_is(
            "placement_modal",
            &w.end(false, 0),
            Some([100, -500, 300, 150]),
            &[(1, 0)],
        );
    }

    /// The spec makes a record that uses an undefined modal variable an error; KLayout warns,
    /// takes its last value in the file (across cells), or 0, no points or one copy, and reads
    /// on. So does the reader.
    #[test]
    fn undefined_modal_variables_keep_their_last_value() {
        // Cell a's layer, datatype, width and height, in the top cell after it.
        let mut a = W::default();
        a.rec(20, 0x7b, &[1, 0, 10, 10, s(0), s(0)]);
        let mut t = W::default();
        t.rec(20, 0x18, &[s(500), s(500)])
            .rec(27, 0x3b, &[2, 0, 5, s(-100), s(0)]);
        t.rec(17, 0xb0, &[]).str(b"a").us(&[s(0), s(0)]);
        die_is(
            "undefined_after_cell",
            &cells(&[("a", &a), ("top", &t)]),
            Some([-105, -5, 510, 510]),
            &[(1, 0), (2, 0)],
        );
        // A repetition of type 0 before any other is one copy, a path's extensions 0.
        let mut w = W::default();
        w.rec(20, 0x7f, &[1, 0, 10, 10, s(0), s(0), 0])
            .rec(22, 0x7b, &[1, 0, 5, 2, 1, 100 << 2, s(0), s(0)])
            .rec(27, 0x3b, &[2, 0, 5, s(-100), s(0)]);
        die_is(
            "undefined_repetition",
            &top(&w),
            Some([-105, -5, 100, 10]),
            &[(1, 0), (2, 0)],
        );
        // Nothing ever given: a rectangle of no size on 0/0; a text with no string is a text.
        let mut w = W::default();
        w.rec(20, 0x18, &[s(7), s(8)])
            .rec(19, 0x18, &[s(-7), s(-8)]);
        die_is(
            "undefined_never_given",
            &top(&w),
            Some([-7, -8, 7, 8]),
            &[(0, 0)],
        );
        // XGEOMETRY adds no shape but sets the layer, datatype, position and repetition.
        let mut w = W::default();
        w.rec(33, 0x1f, &[0, 3, 4])
            .str(b"x")
            .us(&[s(50), s(60), 2, 0, 100]);
        w.rec(20, 0x64, &[10, 10, 0]);
        die_is(
            "xgeometry_sets_modal",
            &top(&w),
            Some([50, 60, 160, 70]),
            &[(3, 4)],
        );
    }
}
