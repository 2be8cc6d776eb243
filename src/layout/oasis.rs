//! OASIS (SEMI P39), read in one streaming pass: the unit from START, every CELL, the cells its
//! PLACEMENTs name, and the CELLNAME table that turns reference numbers into names.
//!
//! Every other record is parsed only to be skipped, byte for byte: geometry, text, properties
//! and extensions carry nothing the server checks. Skipped strings are never allocated, kept
//! names are capped at [`MAX_NAME`] bytes, and counts read from the file are only looped over,
//! each step consuming input, so the file's size bounds the work. A CBLOCK is inflated on the
//! fly and its records read like any others, with the same modal state.

use std::io::{self, BufRead, BufReader, Read};

use flate2::read::DeflateDecoder;

use super::{CellGraph, CellKey, Found, LayoutError, Meter, OASIS, io_error, stopped};

pub(super) const MAGIC: &[u8] = b"%SEMI-OASIS\r\n";

/// The longest name kept (CELLNAME, CELL and PLACEMENT by name); longer is taken as corruption.
const MAX_NAME: u64 = 65_536;

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
            geometry: Default::default(),
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
    fn file<R: Read>(&mut self, r: &mut Counted<R>, meter: &Meter<'_>) -> Res<f64> {
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
    fn start<R: Read>(&mut self, r: &mut Counted<R>) -> Res<f64> {
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
    fn end<R: Read>(&mut self, r: &mut Counted<R>) -> Res<()> {
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
    fn cblock<R: Read>(&mut self, r: &mut Counted<R>, at: u64, meter: &Meter<'_>) -> Res<()> {
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
    fn inflated_records<R: Read>(&mut self, r: &mut Counted<R>, cblock: u64) -> Res<()> {
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
    fn record<R: Read>(&mut self, id: u64, r: &mut Counted<R>) -> Res<()> {
        match id {
            // PAD, XYABSOLUTE, XYRELATIVE, PROPERTY (repeat the last): no fields.
            0 | 15 | 16 | 29 => {}
            3 => {
                let name = name(r)?;
                let number = self.next_cellname;
                self.next_cellname = number.saturating_add(1);
                self.graph.name(number, name, OASIS).map_err(Fail::Done)?;
            }
            4 => {
                let name = name(r)?;
                let number = uint(r)?;
                self.graph.name(number, name, OASIS).map_err(Fail::Done)?;
            }
            // TEXTSTRING, PROPNAME, PROPSTRING: a string, and (6, 8, 10) a reference number.
            5..=10 => {
                skip_string(r)?;
                maybe_uint(r, id % 2 == 0)?;
            }
            // LAYERNAME (geometry or text): a name, a layer interval and a datatype interval.
            11 | 12 => {
                skip_string(r)?;
                interval(r)?;
                interval(r)?;
            }
            13 => self.define(CellKey::Ref(uint(r)?))?,
            14 => self.define(CellKey::Name(name(r)?))?,
            17 | 18 => self.placement(id, r)?,
            19 => {
                // TEXT 0CNXYRTL: the text string (C), by reference number (N).
                let info = byte(r)?;
                if info & 0x40 != 0 {
                    string_or_number(r, info & 0x20 != 0)?;
                }
                layer_datatype(r, info)?;
                position(r, info)?;
            }
            20..=27 => {
                // Geometry: the info byte's low bits are XYRDL in every one of them.
                let info = byte(r)?;
                layer_datatype(r, info)?;
                match id {
                    // RECTANGLE SWHXYRDL: width, height (with S, H is absent and equals W).
                    20 => {
                        maybe_uint(r, info & 0x40 != 0)?;
                        maybe_uint(r, info & 0x20 != 0)?;
                    }
                    // POLYGON 00PXYRDL.
                    21 => {
                        if info & 0x20 != 0 {
                            point_list(r)?;
                        }
                    }
                    // PATH EWPXYRDL: half-width, extension scheme, points.
                    22 => {
                        maybe_uint(r, info & 0x40 != 0)?;
                        if info & 0x80 != 0 {
                            let scheme = uint(r)?;
                            maybe_uint(r, scheme >> 2 & 3 == 3)?;
                            maybe_uint(r, scheme & 3 == 3)?;
                        }
                        if info & 0x20 != 0 {
                            point_list(r)?;
                        }
                    }
                    // TRAPEZOID 0WHXYRDL: width, height, delta-a (23, 24), delta-b (23, 25).
                    23..=25 => {
                        maybe_uint(r, info & 0x40 != 0)?;
                        maybe_uint(r, info & 0x20 != 0)?;
                        maybe_uint(r, id != 25)?;
                        maybe_uint(r, id != 24)?;
                    }
                    // CTRAPEZOID TWHXYRDL: type, width, height.
                    26 => {
                        maybe_uint(r, info & 0x80 != 0)?;
                        maybe_uint(r, info & 0x40 != 0)?;
                        maybe_uint(r, info & 0x20 != 0)?;
                    }
                    // CIRCLE 00rXYRDL: radius.
                    _ => maybe_uint(r, info & 0x20 != 0)?,
                }
                position(r, info)?;
            }
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
            }
            33 => {
                // XGEOMETRY 000XYRDL: attribute, layer, datatype, string, position.
                let info = byte(r)?;
                uint(r)?;
                layer_datatype(r, info)?;
                skip_string(r)?;
                position(r, info)?;
            }
            _ => return bad(format!("unknown record id {id}")),
        }
        Ok(())
    }

    /// CELL: the records up to the next CELL or END belong to `key`. The modal placement-cell
    /// is undefined again (as KLayout has it: a cell's first PLACEMENT must name its cell).
    fn define(&mut self, key: CellKey) -> Res<()> {
        self.graph.define(key.clone(), OASIS).map_err(Fail::Done)?;
        self.cell = Some(key);
        self.placement_cell = None;
        Ok(())
    }

    /// PLACEMENT, 17 (CNXYRAAF) or 18 (CNXYRMAF, with magnification and angle).
    fn placement<R: Read>(&mut self, id: u64, r: &mut Counted<R>) -> Res<()> {
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
        if id == 18 {
            if info & 0x04 != 0 {
                real(r)?;
            }
            if info & 0x02 != 0 {
                real(r)?;
            }
        }
        // X, Y and R sit one bit higher than in the other records.
        position(r, info >> 1)?;
        let Some(parent) = &self.cell else {
            return bad("a PLACEMENT outside any CELL");
        };
        self.graph
            .place(Some(parent), child, OASIS)
            .map_err(Fail::Done)
    }
}

/// The magic, or Corrupt.
fn magic(r: &mut impl Read) -> Res<()> {
    let mut head = Vec::with_capacity(MAGIC.len());
    r.take(MAGIC.len() as u64).read_to_end(&mut head)?;
    if head != MAGIC {
        return bad("it does not begin with the OASIS magic \"%SEMI-OASIS\\r\\n\"");
    }
    Ok(())
}

/// The next byte, or None at the end of the data.
fn next_byte(r: &mut impl Read) -> io::Result<Option<u8>> {
    let mut buf = [0u8];
    loop {
        match r.read(&mut buf) {
            Ok(0) => return Ok(None),
            Ok(_) => return Ok(Some(u8::from_le_bytes(buf))),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
}

fn byte(r: &mut impl Read) -> Res<u8> {
    let mut buf = [0u8];
    r.read_exact(&mut buf)?;
    Ok(u8::from_le_bytes(buf))
}

/// An unsigned integer: 7 bits a byte, low group first, the high bit set on all but the last.
/// Signed integers are the same with the sign in bit 0; they are only ever skipped.
fn uint(r: &mut impl Read) -> Res<u64> {
    let first = byte(r)?;
    uint_from(first, r)
}

/// An unsigned integer whose first byte has been read. Groups of zero bits past the 64th are
/// accepted (KLayout pads its END record with a length written as 0x80 ... 0x80 0x00), any other
/// bit past the 64th is corruption.
fn uint_from(first: u8, r: &mut impl Read) -> Res<u64> {
    let mut value = u64::from(first & 0x7f);
    let (mut last, mut shift) = (first, 0u32);
    while last & 0x80 != 0 {
        last = byte(r)?;
        shift = shift.saturating_add(7);
        let bits = u64::from(last & 0x7f);
        if bits == 0 {
            continue;
        }
        // The tenth byte holds bit 63 only.
        if shift > 63 || (shift == 63 && bits > 1) {
            return bad("an integer of more than 64 bits");
        }
        value |= bits << shift;
    }
    Ok(value)
}

/// An integer that is there when `present`.
fn maybe_uint(r: &mut impl Read, present: bool) -> Res<()> {
    if present {
        uint(r)?;
    }
    Ok(())
}

/// A real: a type, then an integer, a reciprocal, a ratio or an IEEE float.
fn real(r: &mut impl Read) -> Res<f64> {
    let kind = uint(r)?;
    real_of(kind, r)
}

/// A real whose type has been read.
fn real_of(kind: u64, r: &mut impl Read) -> Res<f64> {
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
fn skip(r: &mut impl Read, len: u64) -> Res<()> {
    let skipped = io::copy(&mut r.take(len), &mut io::sink())?;
    if skipped < len {
        return Err(eof());
    }
    Ok(())
}

/// Skips a string (a-, b- or n-string: a length, then the bytes).
fn skip_string(r: &mut impl Read) -> Res<()> {
    let len = uint(r)?;
    skip(r, len)
}

/// A name that is kept, read with a cap; any bytes are accepted.
fn name(r: &mut impl Read) -> Res<String> {
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
fn string_or_number(r: &mut impl Read, number: bool) -> Res<()> {
    if number {
        uint(r).map(drop)
    } else {
        skip_string(r)
    }
}

/// The table offsets in START or END: six pairs of flag and offset.
fn table_offsets(r: &mut impl Read) -> Res<()> {
    uints(r, 12)
}

/// Skips `count` integers (each one consumes input, so a huge count ends with the data).
fn uints(r: &mut impl Read, count: u64) -> Res<()> {
    (0..count).try_for_each(|_| uint(r).map(drop))
}

/// A LAYERNAME interval: a type, then 0 (any), 1 (up to, from, exactly) or 2 (from, to) bounds.
fn interval(r: &mut impl Read) -> Res<()> {
    match uint(r)? {
        0 => Ok(()),
        1..=3 => uints(r, 1),
        4 => uints(r, 2),
        kind => bad(format!("an interval of type {kind} (0 to 4 exist)")),
    }
}

/// Layer (L, bit 0) and datatype (D, bit 1), or textlayer and texttype in TEXT.
fn layer_datatype(r: &mut impl Read, info: u8) -> Res<()> {
    maybe_uint(r, info & 0x01 != 0)?;
    maybe_uint(r, info & 0x02 != 0)
}

/// X (bit 4), Y (bit 3) and a repetition (R, bit 2).
fn position(r: &mut impl Read, info: u8) -> Res<()> {
    maybe_uint(r, info & 0x10 != 0)?;
    maybe_uint(r, info & 0x08 != 0)?;
    if info & 0x04 != 0 {
        repetition(r)?;
    }
    Ok(())
}

/// A g-delta: one integer, or two when the first has bit 0 set.
fn g_delta(r: &mut impl Read) -> Res<()> {
    if uint(r)? & 1 == 1 {
        uint(r)?;
    }
    Ok(())
}

/// A repetition: a type, then its dimensions, spaces or displacements.
fn repetition(r: &mut impl Read) -> Res<()> {
    let kind = uint(r)?;
    match kind {
        // Reuse the last repetition.
        0 => Ok(()),
        // A matrix (columns, rows, their spacings); a row or a column (count, spacing).
        1 => uints(r, 4),
        2 | 3 => uints(r, 2),
        // A general matrix (two dimensions, two displacements); a general row.
        8 => uints(r, 2)
            .and_then(|()| g_delta(r))
            .and_then(|()| g_delta(r)),
        9 => uints(r, 1).and_then(|()| g_delta(r)),
        // Irregular rows or columns (4-7) or displacements (10, 11): a dimension, a grid
        // (5, 7, 11), then dimension + 1 spaces or displacements.
        4..=7 | 10 | 11 => {
            let Some(count) = uint(r)?.checked_add(1) else {
                return bad("a repetition dimension overflows");
            };
            maybe_uint(r, matches!(kind, 5 | 7 | 11))?;
            if kind < 10 {
                uints(r, count)
            } else {
                (0..count).try_for_each(|_| g_delta(r))
            }
        }
        _ => bad(format!("a repetition of type {kind} (0 to 11 exist)")),
    }
}

/// A point list: a type and a count, then that many deltas.
fn point_list(r: &mut impl Read) -> Res<()> {
    // 1-deltas (alternating horizontal, vertical), 2-deltas and 3-deltas are one integer each;
    // g-deltas (4, or 5 for double deltas) one or two.
    let g_deltas = match uint(r)? {
        0..=3 => false,
        4 | 5 => true,
        kind => return bad(format!("a point list of type {kind} (0 to 5 exist)")),
    };
    let count = uint(r)?;
    if g_deltas {
        (0..count).try_for_each(|_| g_delta(r))
    } else {
        uints(r, count)
    }
}

/// A property value: a type, then a real (0-7), an integer (8, 9), a string (10-12) or a
/// PROPSTRING reference number (13-15).
fn property_value(r: &mut impl Read) -> Res<()> {
    match uint(r)? {
        kind @ 0..=7 => real_of(kind, r).map(drop),
        8 | 9 | 13..=15 => uint(r).map(drop),
        10..=12 => skip_string(r),
        kind => bad(format!("a property value of type {kind} (0 to 15 exist)")),
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use flate2::{Compression, write::DeflateEncoder};

    use super::super::{Layout, LayoutError, inspect};
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
}
