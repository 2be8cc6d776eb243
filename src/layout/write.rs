//! Writing layouts: GDSII, gzip'd GDSII and OASIS, streamed to any `Write`.
//!
//! The server only reads layouts; this is how its tests, benchmarks and the README's examples make
//! theirs (`cargo run --example layout`), so that nothing outside the repository is needed. A
//! [`Library`] is cells of shapes and placements (with rotation, mirror, magnification and
//! arrays) written in any of the three formats; [`Die`] is a die as a designer sends it to the
//! gf180mcu precheck (docs/decisions.md, "Test layouts"), with one documented defect at a time.
//! [`GdsWriter`] streams shape by shape, for files larger than memory.

use std::io::{self, Write};

/// A layer and datatype, as `34/0`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layer(pub u16, pub u16);

/// A shape in database units.
#[derive(Debug, Clone, PartialEq)]
pub enum Shape {
    /// A rectangle from (left, bottom) to (right, top).
    Box { layer: Layer, rect: [i64; 4] },
    /// A closed polygon, without repeating its first point.
    Polygon {
        layer: Layer,
        points: Vec<(i64, i64)>,
    },
    /// A path of `width` through `points`, its ends as `ends` says.
    Path {
        layer: Layer,
        width: i64,
        points: Vec<(i64, i64)>,
        ends: PathEnds,
    },
    /// A text label at a point.
    Text {
        layer: Layer,
        at: (i64, i64),
        text: String,
    },
}

/// How far a path reaches past its first and last points.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathEnds {
    /// Not at all (GDSII path type 0, OASIS extension scheme 1).
    Flush,
    /// Half the width (GDSII path type 2, OASIS scheme 2).
    HalfWidth,
    /// Half the width, rounded (GDSII path type 1; OASIS has no round ends).
    Round,
    /// As given at the start and at the end (GDSII path type 4, OASIS scheme 3).
    Extended(i64, i64),
}

/// Columns and rows of copies, `column_step` and `row_step` apart in the parent's coordinates.
#[derive(Debug, Clone, PartialEq)]
pub struct Array {
    pub columns: u16,
    pub rows: u16,
    pub column_step: (i64, i64),
    pub row_step: (i64, i64),
}

/// One placement of a cell: mirrored about the x axis first (if `mirror`), then magnified,
/// rotated counter-clockwise by `rotation` degrees (0, 90, 180 or 270) and moved to `at`.
#[derive(Debug, Clone, PartialEq)]
pub struct Placement {
    pub cell: String,
    pub at: (i64, i64),
    pub rotation: u16,
    pub mirror: bool,
    pub magnification: f64,
    pub array: Option<Array>,
}

impl Placement {
    /// `cell` at `at`, untransformed.
    pub fn of(cell: &str, at: (i64, i64)) -> Placement {
        Placement {
            cell: cell.to_string(),
            at,
            rotation: 0,
            mirror: false,
            magnification: 1.0,
            array: None,
        }
    }

    pub fn rotated(mut self, degrees: u16) -> Placement {
        self.rotation = degrees;
        self
    }

    pub fn mirrored(mut self) -> Placement {
        self.mirror = true;
        self
    }

    pub fn magnified(mut self, magnification: f64) -> Placement {
        self.magnification = magnification;
        self
    }

    pub fn array(
        mut self,
        columns: u16,
        rows: u16,
        column_step: (i64, i64),
        row_step: (i64, i64),
    ) -> Placement {
        self.array = Some(Array {
            columns,
            rows,
            column_step,
            row_step,
        });
        self
    }
}

/// A cell: its own shapes and its placements of other cells.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Cell {
    pub name: String,
    pub shapes: Vec<Shape>,
    pub placements: Vec<Placement>,
}

impl Cell {
    pub fn new(name: &str) -> Cell {
        Cell {
            name: name.to_string(),
            ..Cell::default()
        }
    }

    pub fn rect(mut self, layer: Layer, rect: [i64; 4]) -> Cell {
        self.shapes.push(Shape::Box { layer, rect });
        self
    }

    pub fn shape(mut self, shape: Shape) -> Cell {
        self.shapes.push(shape);
        self
    }

    pub fn place(mut self, placement: Placement) -> Cell {
        self.placements.push(placement);
        self
    }
}

/// A layout: a database unit and cells, written in the order given (a cell may be placed before
/// it is defined, as both formats allow).
#[derive(Debug, Clone, PartialEq)]
pub struct Library {
    /// The database unit in µm (0.001 for 1 nm).
    pub dbu_microns: f64,
    pub cells: Vec<Cell>,
}

impl Library {
    pub fn new(dbu_microns: f64) -> Library {
        Library {
            dbu_microns,
            cells: Vec::new(),
        }
    }

    pub fn cell(mut self, cell: Cell) -> Library {
        self.cells.push(cell);
        self
    }

    pub fn write_gds(&self, out: impl Write) -> io::Result<()> {
        let mut gds = GdsWriter::new(out, self.dbu_microns)?;
        for cell in &self.cells {
            gds.begin_cell(&cell.name)?;
            for shape in &cell.shapes {
                gds.shape(shape)?;
            }
            for placement in &cell.placements {
                gds.placement(placement)?;
            }
            gds.end_cell()?;
        }
        gds.finish()?;
        Ok(())
    }

    pub fn write_gds_gz(&self, out: impl Write) -> io::Result<()> {
        let mut gz = flate2::write::GzEncoder::new(out, flate2::Compression::default());
        self.write_gds(&mut gz)?;
        gz.finish()?;
        Ok(())
    }

    pub fn write_oasis(&self, out: impl Write) -> io::Result<()> {
        let mut oasis = OasisWriter::new(out, self.dbu_microns)?;
        for cell in &self.cells {
            oasis.begin_cell(&cell.name)?;
            for shape in &cell.shapes {
                oasis.shape(shape)?;
            }
            for placement in &cell.placements {
                oasis.placement(placement)?;
            }
        }
        oasis.finish()?;
        Ok(())
    }

    pub fn gds(&self) -> Vec<u8> {
        in_memory(|out| self.write_gds(out))
    }

    pub fn gds_gz(&self) -> Vec<u8> {
        in_memory(|out| self.write_gds_gz(out))
    }

    pub fn oasis(&self) -> Vec<u8> {
        in_memory(|out| self.write_oasis(out))
    }
}

/// What `write` puts in a `Vec`; panics only on values no format can hold (a coordinate beyond
/// GDSII's 32 bits, a name longer than a record), which a caller of these helpers chose.
fn in_memory(write: impl FnOnce(&mut Vec<u8>) -> io::Result<()>) -> Vec<u8> {
    let mut out = Vec::new();
    write(&mut out).unwrap_or_else(|e| panic!("cannot write this layout: {e}"));
    out
}

fn invalid(what: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, what)
}

// GDSII record types and data types (the Calma GDSII Stream Format, release 6).
const HEADER: u8 = 0x00;
const BGNLIB: u8 = 0x01;
const LIBNAME: u8 = 0x02;
const UNITS: u8 = 0x03;
const ENDLIB: u8 = 0x04;
const BGNSTR: u8 = 0x05;
const STRNAME: u8 = 0x06;
const ENDSTR: u8 = 0x07;
const BOUNDARY: u8 = 0x08;
const PATH: u8 = 0x09;
const SREF: u8 = 0x0A;
const AREF: u8 = 0x0B;
const TEXT: u8 = 0x0C;
const LAYER: u8 = 0x0D;
const DATATYPE: u8 = 0x0E;
const WIDTH: u8 = 0x0F;
const XY: u8 = 0x10;
const ENDEL: u8 = 0x11;
const SNAME: u8 = 0x12;
const COLROW: u8 = 0x13;
const TEXTTYPE: u8 = 0x16;
const STRING: u8 = 0x19;
const STRANS: u8 = 0x1A;
const MAG: u8 = 0x1B;
const ANGLE: u8 = 0x1C;
const PATHTYPE: u8 = 0x21;
const BGNEXTN: u8 = 0x30;
const ENDEXTN: u8 = 0x31;

const NO_DATA: u8 = 0x00;
const BITARRAY: u8 = 0x01;
const INT2: u8 = 0x02;
const INT4: u8 = 0x03;
const REAL8: u8 = 0x05;
const ASCII: u8 = 0x06;

/// 2025-01-01 00:00:00, as modification and access time, so a layout's bytes are reproducible.
const TIMESTAMPS: [i16; 12] = [2025, 1, 1, 0, 0, 0, 2025, 1, 1, 0, 0, 0];

/// Streams a GDSII library: `new` writes its header, then cells one after the other, each
/// from `begin_cell` to `end_cell`, then `finish`. Counts the bytes written.
pub struct GdsWriter<W: Write> {
    out: W,
    written: u64,
}

impl<W: Write> GdsWriter<W> {
    /// The library's header, with a database unit of `dbu_microns` µm.
    pub fn new(out: W, dbu_microns: f64) -> io::Result<Self> {
        let mut gds = GdsWriter { out, written: 0 };
        gds.int2(HEADER, &[600])?;
        gds.int2(BGNLIB, &TIMESTAMPS)?;
        gds.ascii(LIBNAME, "precheck_test")?;
        gds.real8(UNITS, &[dbu_microns, dbu_microns * 1e-6])?;
        Ok(gds)
    }

    /// The bytes written so far.
    pub fn written(&self) -> u64 {
        self.written
    }

    pub fn begin_cell(&mut self, name: &str) -> io::Result<()> {
        self.int2(BGNSTR, &TIMESTAMPS)?;
        self.ascii(STRNAME, name)
    }

    pub fn end_cell(&mut self) -> io::Result<()> {
        self.record(ENDSTR, NO_DATA, &[])
    }

    /// ENDLIB; returns the output, flushed.
    pub fn finish(mut self) -> io::Result<W> {
        self.record(ENDLIB, NO_DATA, &[])?;
        self.out.flush()?;
        Ok(self.out)
    }

    pub fn shape(&mut self, shape: &Shape) -> io::Result<()> {
        match shape {
            Shape::Box { layer, rect } => {
                let [l, b, r, t] = *rect;
                self.boundary(*layer, &[(l, b), (r, b), (r, t), (l, t)])
            }
            Shape::Polygon { layer, points } => self.boundary(*layer, points),
            Shape::Path {
                layer,
                width,
                points,
                ends,
            } => {
                self.record(PATH, NO_DATA, &[])?;
                self.layer(*layer, DATATYPE)?;
                let path_type = match ends {
                    PathEnds::Flush => 0,
                    PathEnds::Round => 1,
                    PathEnds::HalfWidth => 2,
                    PathEnds::Extended(..) => 4,
                };
                self.int2(PATHTYPE, &[path_type])?;
                self.int4(WIDTH, &[coordinate(*width)?])?;
                if let PathEnds::Extended(begin, end) = ends {
                    self.int4(BGNEXTN, &[coordinate(*begin)?])?;
                    self.int4(ENDEXTN, &[coordinate(*end)?])?;
                }
                self.points(points.iter().copied())?;
                self.record(ENDEL, NO_DATA, &[])
            }
            Shape::Text { layer, at, text } => {
                self.record(TEXT, NO_DATA, &[])?;
                self.layer(*layer, TEXTTYPE)?;
                self.points([*at])?;
                self.ascii(STRING, text)?;
                self.record(ENDEL, NO_DATA, &[])
            }
        }
    }

    /// A rectangle as a five-point BOUNDARY, as KLayout writes boxes.
    pub fn rect(&mut self, layer: Layer, rect: [i64; 4]) -> io::Result<()> {
        self.shape(&Shape::Box { layer, rect })
    }

    pub fn placement(&mut self, p: &Placement) -> io::Result<()> {
        if !matches!(p.rotation, 0 | 90 | 180 | 270) {
            return Err(invalid(format!(
                "rotation {} is not a multiple of 90",
                p.rotation
            )));
        }
        self.record(if p.array.is_some() { AREF } else { SREF }, NO_DATA, &[])?;
        self.ascii(SNAME, &p.cell)?;
        if p.mirror || p.rotation != 0 || p.magnification != 1.0 {
            let reflection: u16 = if p.mirror { 0x8000 } else { 0 };
            self.record(STRANS, BITARRAY, &reflection.to_be_bytes())?;
            if p.magnification != 1.0 {
                self.real8(MAG, &[p.magnification])?;
            }
            if p.rotation != 0 {
                self.real8(ANGLE, &[f64::from(p.rotation)])?;
            }
        }
        match &p.array {
            None => self.points([p.at])?,
            Some(a) => {
                let data: Vec<u8> = [a.columns, a.rows]
                    .iter()
                    .flat_map(|v| v.to_be_bytes())
                    .collect();
                self.record(COLROW, INT2, &data)?;
                let (x, y) = p.at;
                let (cols, rows) = (i64::from(a.columns), i64::from(a.rows));
                self.points([
                    (x, y),
                    (x + cols * a.column_step.0, y + cols * a.column_step.1),
                    (x + rows * a.row_step.0, y + rows * a.row_step.1),
                ])?;
            }
        }
        self.record(ENDEL, NO_DATA, &[])
    }

    fn boundary(&mut self, layer: Layer, points: &[(i64, i64)]) -> io::Result<()> {
        let Some(&first) = points.first() else {
            return Err(invalid("a polygon needs points".into()));
        };
        self.record(BOUNDARY, NO_DATA, &[])?;
        self.layer(layer, DATATYPE)?;
        self.points(points.iter().copied().chain([first]))?;
        self.record(ENDEL, NO_DATA, &[])
    }

    fn layer(&mut self, layer: Layer, type_record: u8) -> io::Result<()> {
        let number =
            |n: u16| i16::try_from(n).map_err(|_| invalid(format!("layer {n} does not fit GDSII")));
        self.int2(LAYER, &[number(layer.0)?])?;
        self.int2(type_record, &[number(layer.1)?])
    }

    fn points(&mut self, points: impl IntoIterator<Item = (i64, i64)>) -> io::Result<()> {
        let mut values = Vec::new();
        for (x, y) in points {
            values.extend([coordinate(x)?, coordinate(y)?]);
        }
        self.int4(XY, &values)
    }

    fn record(&mut self, record_type: u8, data_type: u8, data: &[u8]) -> io::Result<()> {
        let len = u16::try_from(4 + data.len()).map_err(|_| {
            invalid(format!(
                "a GDSII record of {} bytes is too long",
                data.len()
            ))
        })?;
        self.out.write_all(&len.to_be_bytes())?;
        self.out.write_all(&[record_type, data_type])?;
        self.out.write_all(data)?;
        self.written += u64::from(len);
        Ok(())
    }

    fn int2(&mut self, record_type: u8, values: &[i16]) -> io::Result<()> {
        let data: Vec<u8> = values.iter().flat_map(|v| v.to_be_bytes()).collect();
        self.record(record_type, INT2, &data)
    }

    fn int4(&mut self, record_type: u8, values: &[i32]) -> io::Result<()> {
        let data: Vec<u8> = values.iter().flat_map(|v| v.to_be_bytes()).collect();
        self.record(record_type, INT4, &data)
    }

    fn real8(&mut self, record_type: u8, values: &[f64]) -> io::Result<()> {
        let mut data = Vec::new();
        for v in values {
            data.extend(gds_real8(*v)?);
        }
        self.record(record_type, REAL8, &data)
    }

    /// Strings are padded with a NUL to an even length.
    fn ascii(&mut self, record_type: u8, text: &str) -> io::Result<()> {
        let mut data = text.as_bytes().to_vec();
        if data.len() % 2 == 1 {
            data.push(0);
        }
        self.record(record_type, ASCII, &data)
    }
}

fn coordinate(v: i64) -> io::Result<i32> {
    i32::try_from(v).map_err(|_| invalid(format!("coordinate {v} does not fit GDSII's 32 bits")))
}

/// A GDSII 8-byte real: sign bit, 7-bit base-16 exponent in excess 64, 56-bit mantissa m with
/// 1/16 <= m < 1; the value is m * 16^(exponent - 64).
pub fn gds_real8(value: f64) -> io::Result<[u8; 8]> {
    if value == 0.0 {
        return Ok([0; 8]);
    }
    let sign: u64 = if value < 0.0 { 0x80 } else { 0 };
    let mut mantissa = value.abs();
    let mut exponent: i32 = 64;
    // Multiplying or dividing by 16 is exact in binary floating point.
    while mantissa >= 1.0 {
        mantissa /= 16.0;
        exponent += 1;
    }
    while mantissa < 1.0 / 16.0 {
        mantissa *= 16.0;
        exponent -= 1;
    }
    let mut bits = (mantissa * (1u64 << 56) as f64).round() as u64;
    if bits >= 1 << 56 {
        bits >>= 4;
        exponent += 1;
    }
    let exponent = u64::try_from(exponent)
        .ok()
        .filter(|e| *e < 128)
        .ok_or_else(|| invalid(format!("{value} does not fit a GDSII real")))?;
    Ok((((sign | exponent) << 56) | bits).to_be_bytes())
}

/// Streams an OASIS file (SEMI P39): every record with all its fields explicit (no modal
/// variables relied on), cells and placements by name, no name tables, no CBLOCKs, END padded
/// to 256 bytes with no validation.
pub struct OasisWriter<W: Write> {
    out: W,
    written: u64,
}

impl<W: Write> OasisWriter<W> {
    pub fn new(out: W, dbu_microns: f64) -> io::Result<Self> {
        let mut w = OasisWriter { out, written: 0 };
        w.raw(b"%SEMI-OASIS\r\n")?;
        // START: version, unit (grid steps per µm), offset-flag 0 and six empty table offsets.
        w.unsigned(1)?;
        w.string(b"1.0")?;
        // 1 / 0.001 is 999.9999999999999 in floating point: a unit within 1e-9 of a whole
        // number of steps is that number, as KLayout writes it.
        let steps = 1.0 / dbu_microns;
        let rounded = steps.round();
        w.real(if (steps - rounded).abs() < 1e-9 * rounded {
            rounded
        } else {
            steps
        })?;
        w.unsigned(0)?;
        for _ in 0..6 {
            w.unsigned(0)?;
            w.unsigned(0)?;
        }
        Ok(w)
    }

    pub fn begin_cell(&mut self, name: &str) -> io::Result<()> {
        self.unsigned(14)?;
        self.string(name.as_bytes())
    }

    pub fn shape(&mut self, shape: &Shape) -> io::Result<()> {
        match shape {
            Shape::Box { layer, rect } => {
                let [l, b, r, t] = *rect;
                // RECTANGLE, info SWHXYRDL = 0WHXY0DL.
                self.unsigned(20)?;
                self.raw(&[0b0111_1011])?;
                self.layer(*layer)?;
                self.unsigned(length(r - l)?)?;
                self.unsigned(length(t - b)?)?;
                self.signed(l)?;
                self.signed(b)
            }
            Shape::Polygon { layer, points } => {
                let Some((&(x, y), rest)) = points.split_first() else {
                    return Err(invalid("a polygon needs points".into()));
                };
                // POLYGON, info 00PXYRDL = 00PXY0DL.
                self.unsigned(21)?;
                self.raw(&[0b0011_1011])?;
                self.layer(*layer)?;
                self.point_list((x, y), rest)?;
                self.signed(x)?;
                self.signed(y)
            }
            Shape::Path {
                layer,
                width,
                points,
                ends,
            } => {
                let Some((&(x, y), rest)) = points.split_first() else {
                    return Err(invalid("a path needs points".into()));
                };
                if width % 2 != 0 {
                    return Err(invalid(format!(
                        "OASIS paths have even widths, not {width}"
                    )));
                }
                // Extension scheme SSEE: 1 flush, 2 half the width, 3 explicit.
                let (scheme, explicit) = match ends {
                    PathEnds::Flush => (0b0101, None),
                    PathEnds::HalfWidth => (0b1010, None),
                    PathEnds::Round => {
                        return Err(invalid("OASIS paths have no round ends".into()));
                    }
                    PathEnds::Extended(begin, end) => (0b1111, Some((*begin, *end))),
                };
                // PATH, info EWPXYRDL = EWPXY0DL.
                self.unsigned(22)?;
                self.raw(&[0b1111_1011])?;
                self.layer(*layer)?;
                self.unsigned(length(width / 2)?)?;
                self.unsigned(scheme)?;
                if let Some((begin, end)) = explicit {
                    self.signed(begin)?;
                    self.signed(end)?;
                }
                self.point_list((x, y), rest)?;
                self.signed(x)?;
                self.signed(y)
            }
            Shape::Text { layer, at, text } => {
                // TEXT, info 0CNXYRTL = 01011011: an explicit string, text layer and type.
                self.unsigned(19)?;
                self.raw(&[0b0101_1011])?;
                self.string(text.as_bytes())?;
                self.layer(*layer)?;
                self.signed(at.0)?;
                self.signed(at.1)
            }
        }
    }

    pub fn placement(&mut self, p: &Placement) -> io::Result<()> {
        let repetition = u8::from(
            p.array
                .as_ref()
                .is_some_and(|a| a.columns > 1 || a.rows > 1),
        );
        let flip = u8::from(p.mirror);
        // PLACEMENT with magnification and angle, info CNXYRMAF: an explicit cell by name.
        self.unsigned(18)?;
        self.raw(&[0b1011_0110 | repetition << 3 | flip])?;
        self.string(p.cell.as_bytes())?;
        self.real(p.magnification)?;
        self.real(f64::from(p.rotation))?;
        self.signed(p.at.0)?;
        self.signed(p.at.1)?;
        if let Some(a) = p.array.as_ref().filter(|_| repetition == 1) {
            match (a.columns, a.rows) {
                // Type 8: n x m copies along two displacements; type 9: n along one.
                (c, r) if c > 1 && r > 1 => {
                    self.unsigned(8)?;
                    self.unsigned(u64::from(c) - 2)?;
                    self.unsigned(u64::from(r) - 2)?;
                    self.g_delta(a.column_step)?;
                    self.g_delta(a.row_step)?;
                }
                (c, 1) => {
                    self.unsigned(9)?;
                    self.unsigned(u64::from(c) - 2)?;
                    self.g_delta(a.column_step)?;
                }
                (_, r) => {
                    self.unsigned(9)?;
                    self.unsigned(u64::from(r) - 2)?;
                    self.g_delta(a.row_step)?;
                }
            }
        }
        Ok(())
    }

    /// END, padded to 256 bytes; returns the output, flushed.
    pub fn finish(mut self) -> io::Result<W> {
        let start = self.written;
        self.unsigned(2)?;
        // The padding string's length takes two bytes here; the validation scheme one.
        let used = (self.written - start) as usize + 2 + 1;
        self.unsigned((256 - used) as u64)?;
        self.raw(&vec![0; 256 - used])?;
        self.unsigned(0)?;
        self.out.flush()?;
        Ok(self.out)
    }

    fn layer(&mut self, layer: Layer) -> io::Result<()> {
        self.unsigned(layer.0.into())?;
        self.unsigned(layer.1.into())
    }

    /// A point list of type 4 (general g-deltas) from `first` through `rest`.
    fn point_list(&mut self, first: (i64, i64), rest: &[(i64, i64)]) -> io::Result<()> {
        self.unsigned(4)?;
        self.unsigned(rest.len() as u64)?;
        let mut at = first;
        for &p in rest {
            self.g_delta((p.0 - at.0, p.1 - at.1))?;
            at = p;
        }
        Ok(())
    }

    /// A g-delta in its second form: |dx| with its sign, then dy.
    fn g_delta(&mut self, (dx, dy): (i64, i64)) -> io::Result<()> {
        let sign = u64::from(dx < 0);
        self.unsigned(dx.unsigned_abs() << 2 | sign << 1 | 1)?;
        self.signed(dy)
    }

    fn raw(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.out.write_all(bytes)?;
        self.written += bytes.len() as u64;
        Ok(())
    }

    fn unsigned(&mut self, mut v: u64) -> io::Result<()> {
        let mut bytes = Vec::with_capacity(10);
        while v >= 0x80 {
            bytes.push(v as u8 | 0x80);
            v >>= 7;
        }
        bytes.push(v as u8);
        self.raw(&bytes)
    }

    fn signed(&mut self, v: i64) -> io::Result<()> {
        self.unsigned(v.unsigned_abs() << 1 | u64::from(v < 0))
    }

    fn string(&mut self, s: &[u8]) -> io::Result<()> {
        self.unsigned(s.len() as u64)?;
        self.raw(s)
    }

    /// A whole number as a real of type 0 (1 when it is negative), anything else as an IEEE
    /// double (type 7).
    fn real(&mut self, v: f64) -> io::Result<()> {
        if v.fract() == 0.0 && v.abs() < 1e15 {
            self.unsigned(if v < 0.0 { 1 } else { 0 })?;
            self.unsigned(v.abs() as u64)
        } else {
            self.unsigned(7)?;
            self.raw(&v.to_le_bytes())
        }
    }
}

fn length(v: i64) -> io::Result<u64> {
    u64::try_from(v).map_err(|_| invalid(format!("a length of {v} is negative")))
}

/// Layers of gf180mcu that a die uses (../REAL-PRECHECK.md's table, as GDS layer/datatype).
pub mod layers {
    use super::Layer;
    pub const COMP: Layer = Layer(22, 0);
    pub const POLY2: Layer = Layer(30, 0);
    pub const CONTACT: Layer = Layer(33, 0);
    pub const METAL1: Layer = Layer(34, 0);
    pub const VIA1: Layer = Layer(35, 0);
    pub const METAL2: Layer = Layer(36, 0);
    pub const METAL3: Layer = Layer(42, 0);
    pub const METAL4: Layer = Layer(46, 0);
    pub const METAL5: Layer = Layer(81, 0);
    pub const VIA5: Layer = checked(crate::gf180::VIA5);
    pub const METAL_TOP: Layer = checked(crate::gf180::METAL_TOP);
    pub const GUARD_RING_MK: Layer = checked(crate::gf180::GUARD_RING_MK);

    /// A layer of the rules' table.
    const fn checked(layer: crate::gf180::CheckedLayer) -> Layer {
        Layer(layer.layer as u16, layer.datatype as u16)
    }
}

/// The die sizes of the precheck's slots in µm, seal ring included (the rules' table,
/// [`crate::gf180::SLOTS`]).
pub const SLOT_SIZES: [(&str, i64, i64); 4] = {
    let s = crate::gf180::SLOTS;
    [
        (s[0].name, s[0].width_um, s[0].height_um),
        (s[1].name, s[1].width_um, s[1].height_um),
        (s[2].name, s[2].width_um, s[2].height_um),
        (s[3].name, s[3].width_um, s[3].height_um),
    ]
};

/// The ID cells a chip-on-board die places (`--cob`).
pub const COB_ID_CELLS: [&str; 3] = crate::gf180::COB_ID_CELLS;

/// What makes a die fail the precheck, one at a time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Defect {
    /// 10 µm narrower than its slot.
    WrongSize,
    /// Everything moved by (100 µm, 100 µm): the box's origin is not (0, 0).
    OffsetOrigin,
    /// No shapes on GUARD_RING_MK 167/5 (the ring's metal stays, so the size is right).
    NoSealRing,
    /// A shape on Via5 82/0 and one on MetalTop 53/0.
    ForbiddenLayer,
    /// A second top cell beside the die.
    TwoTopCells,
    /// A Metal1 line 0.20 µm wide (M1.1 wants 0.23).
    DrcWidth,
    /// Two Metal1 lines 0.15 µm apart (M1.2a wants 0.23).
    DrcSpace,
}

impl Defect {
    pub const ALL: [Defect; 7] = [
        Defect::WrongSize,
        Defect::OffsetOrigin,
        Defect::NoSealRing,
        Defect::ForbiddenLayer,
        Defect::TwoTopCells,
        Defect::DrcWidth,
        Defect::DrcSpace,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Defect::WrongSize => "wrong-size",
            Defect::OffsetOrigin => "offset-origin",
            Defect::NoSealRing => "no-seal-ring",
            Defect::ForbiddenLayer => "forbidden-layer",
            Defect::TwoTopCells => "two-top-cells",
            Defect::DrcWidth => "drc-width",
            Defect::DrcSpace => "drc-space",
        }
    }

    pub fn parse(s: &str) -> Option<Defect> {
        Defect::ALL.into_iter().find(|d| d.as_str() == s)
    }
}

/// A die as a designer sends it to the precheck: origin (0, 0), a 1 nm unit, exactly its slot's
/// size, a 26 µm seal ring on GUARD_RING_MK 167/5 (with Metal1 and Metal5 rings), pads and
/// logic on COMP, Poly2, Contact, Metal1-5 and Via1 placed through a hierarchy (arrays,
/// rotations, a mirror, a magnification) that keeps every gf180mcu width and space, nothing on
/// Via5 or MetalTop; with [`Die::cob`] the ID cells too. [`Die::defect`] adds one defect.
#[derive(Debug, Clone)]
pub struct Die {
    top: String,
    slot: &'static str,
    cob: bool,
    defect: Option<Defect>,
}

/// 1 µm in database units of 1 nm.
const UM: i64 = 1000;
/// The seal ring's width on each side.
const SEAL_RING: i64 = 26 * UM;

impl Die {
    /// A good 1x1 die whose top cell is `top`.
    pub fn new(top: &str) -> Die {
        Die {
            top: top.to_string(),
            slot: "1x1",
            cob: false,
            defect: None,
        }
    }

    /// The die of `slot`; panics on a slot the precheck does not know.
    pub fn slot(mut self, slot: &str) -> Die {
        self.slot = SLOT_SIZES
            .iter()
            .find(|(name, _, _)| *name == slot)
            .map(|(name, _, _)| *name)
            .unwrap_or_else(|| panic!("unknown slot {slot:?}"));
        self
    }

    /// Places the chip-on-board ID cells.
    pub fn cob(mut self) -> Die {
        self.cob = true;
        self
    }

    pub fn defect(mut self, defect: Defect) -> Die {
        self.defect = Some(defect);
        self
    }

    /// The die's size in database units (its slot's, or 10 µm narrower with [`Defect::WrongSize`]).
    pub fn size(&self) -> (i64, i64) {
        let (_, w, h) = SLOT_SIZES
            .iter()
            .find(|(name, _, _)| *name == self.slot)
            .copied()
            .unwrap_or(SLOT_SIZES[0]);
        let narrower = if self.defect == Some(Defect::WrongSize) {
            10 * UM
        } else {
            0
        };
        (w * UM - narrower, h * UM)
    }

    pub fn library(&self) -> Library {
        use layers::*;
        let (w, h) = self.size();
        let has = |d: Defect| self.defect == Some(d);
        let offset = if has(Defect::OffsetOrigin) {
            100 * UM
        } else {
            0
        };
        let at = |x: i64, y: i64| (x + offset, y + offset);
        let s = SEAL_RING;

        // The ring: four sides on each of its layers.
        let mut ring_layers = vec![METAL1, METAL5];
        if !has(Defect::NoSealRing) {
            ring_layers.insert(0, GUARD_RING_MK);
        }
        let mut seal_ring = Cell::new("seal_ring");
        for layer in ring_layers {
            for rect in [
                [0, 0, w, s],
                [0, h - s, w, h],
                [0, s, s, h - s],
                [w - s, s, w, h - s],
            ] {
                seal_ring = seal_ring.rect(layer, rect);
            }
        }

        // A 60 x 60 µm pad: Metal1 to Metal5 with a grid of Via1 cuts.
        let mut pad = Cell::new("pad");
        for layer in [METAL1, METAL2, METAL3, METAL4, METAL5] {
            pad = pad.rect(layer, [0, 0, 60 * UM, 60 * UM]);
        }
        for i in 0..4 {
            for j in 0..4 {
                let (x, y) = (10 * UM + i * 12 * UM, 10 * UM + j * 12 * UM);
                pad = pad.rect(VIA1, [x, y, x + 260, y + 260]);
            }
        }

        // A transistor-like cell: COMP under Poly2, contacts, Metal1 lines, a via up to Metal2.
        let logic = Cell::new("logic")
            .rect(COMP, [0, 0, 2 * UM, UM])
            .rect(POLY2, [900, -500, 1100, 1500])
            .rect(CONTACT, [200, 390, 420, 610])
            .rect(CONTACT, [1580, 390, 1800, 610])
            .rect(METAL1, [100, 300, 520, 700])
            .rect(METAL1, [1480, 300, 1900, 3 * UM])
            .rect(VIA1, [1560, 2500, 1820, 2760])
            .rect(METAL2, [1480, 2420, 4 * UM, 2840])
            .shape(Shape::Path {
                layer: METAL3,
                width: 400,
                points: vec![(0, 4 * UM), (3 * UM, 4 * UM), (3 * UM, 6 * UM)],
                ends: PathEnds::Flush,
            })
            .shape(Shape::Text {
                layer: METAL1,
                at: (300, 500),
                text: "vdd".into(),
            });
        // Metal1 and Metal2 bus lines, placed magnified (0.5 µm lines at 0.5 µm become 0.75).
        let bus = Cell::new("bus")
            .rect(METAL1, [0, 0, 50 * UM, 500])
            .rect(METAL1, [0, 1000, 50 * UM, 1500])
            .rect(METAL2, [0, 2000, 50 * UM, 2500])
            .shape(Shape::Polygon {
                layer: METAL4,
                points: vec![
                    (0, 3000),
                    (10 * UM, 3000),
                    (10 * UM, 6000),
                    (5 * UM, 8000),
                    (0, 6000),
                ],
            });

        let core = (s + 200 * UM, s + 200 * UM);
        let mut top = Cell::new(&self.top)
            .place(Placement::of("seal_ring", at(0, 0)))
            // Pads along the bottom and the top edge, and (rotated) up the left side.
            .place(Placement::of("pad", at(s + 100 * UM, s + 40 * UM)).array(
                10,
                1,
                (100 * UM, 0),
                (0, 0),
            ))
            .place(
                Placement::of("pad", at(s + 100 * UM, h - s - 100 * UM)).array(
                    10,
                    1,
                    (100 * UM, 0),
                    (0, 0),
                ),
            )
            .place(
                Placement::of("pad", at(s + 100 * UM, s + 200 * UM))
                    .rotated(90)
                    .array(1, 8, (0, 0), (0, 100 * UM)),
            )
            // The logic as an array, mirrored and rotated copies, and the bus magnified.
            .place(Placement::of("logic", at(core.0, core.1)).array(
                20,
                20,
                (10 * UM, 0),
                (0, 10 * UM),
            ))
            .place(Placement::of("logic", at(core.0 + 300 * UM, core.1)).mirrored())
            .place(
                Placement::of("logic", at(core.0 + 320 * UM, core.1))
                    .rotated(270)
                    .mirrored(),
            )
            .place(Placement::of("logic", at(core.0 + 340 * UM, core.1)).rotated(180))
            .place(Placement::of("bus", at(core.0, core.1 + 300 * UM)).magnified(1.5));
        if has(Defect::DrcWidth) {
            top = top.rect(
                METAL1,
                offset_rect(
                    [
                        core.0,
                        core.1 + 400 * UM,
                        core.0 + 20 * UM,
                        core.1 + 400 * UM + 200,
                    ],
                    offset,
                ),
            );
        }
        if has(Defect::DrcSpace) {
            let y = core.1 + 420 * UM;
            top = top
                .rect(
                    METAL1,
                    offset_rect([core.0, y, core.0 + 20 * UM, y + 500], offset),
                )
                .rect(
                    METAL1,
                    offset_rect([core.0, y + 650, core.0 + 20 * UM, y + 1150], offset),
                );
        }
        if has(Defect::ForbiddenLayer) {
            let (x, y) = (core.0 + 500 * UM, core.1 + 500 * UM);
            top = top
                .rect(VIA5, offset_rect([x, y, x + UM, y + UM], offset))
                .rect(
                    METAL_TOP,
                    offset_rect([x, y + 10 * UM, x + 10 * UM, y + 20 * UM], offset),
                );
        }

        let mut library = Library::new(0.001)
            .cell(seal_ring)
            .cell(pad)
            .cell(logic)
            .cell(bus);
        if self.cob {
            let mut x = core.0 + 1000 * UM;
            for name in COB_ID_CELLS {
                library = library.cell(
                    Cell::new(name)
                        .rect(METAL5, [0, 0, 40 * UM, 40 * UM])
                        .rect(METAL4, [5 * UM, 5 * UM, 35 * UM, 35 * UM]),
                );
                top = top.place(Placement::of(name, at(x, core.1)));
                x += 100 * UM;
            }
        }
        library = library.cell(top);
        if has(Defect::TwoTopCells) {
            library = library.cell(
                Cell::new(&format!("{}_old", self.top)).rect(METAL1, [0, 0, 10 * UM, 10 * UM]),
            );
        }
        library
    }

    pub fn gds(&self) -> Vec<u8> {
        self.library().gds()
    }

    pub fn gds_gz(&self) -> Vec<u8> {
        self.library().gds_gz()
    }

    pub fn oasis(&self) -> Vec<u8> {
        self.library().oasis()
    }
}

fn offset_rect([l, b, r, t]: [i64; 4], by: i64) -> [i64; 4] {
    [l + by, b + by, r + by, t + by]
}

/// What a [`Repeated`] layout's compressed data holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Filling {
    /// Nearly all zeros (polygons of 8 190 points at the origin, OASIS PAD records): what a
    /// decompression bomb holds, about 1 000 times smaller compressed.
    Zeros,
    /// Boxes on a grid: compresses about 5 times, like real geometry.
    Boxes,
    /// One tiny box at the origin over and over: about 300 times smaller compressed, and the
    /// most records for each byte (the costliest to read).
    Dots,
}

/// A valid layout of one cell, `chip_top`, made to inflate to far more than it is sent as: its
/// bytes are `head`, then `body` `repeats` times, then `tail`, so a file that inflates to many
/// GiB streams from three small buffers (the tests of decompression bombs and
/// docs/decisions.md, "Inputs that cost without limit").
#[derive(Debug, Clone)]
pub struct Repeated {
    pub head: bytes::Bytes,
    pub body: bytes::Bytes,
    pub repeats: u64,
    pub tail: bytes::Bytes,
    /// What one `body`'s compressed data inflates to.
    pub body_inflated: u64,
}

impl Repeated {
    /// A `.gds.gz` of gzip members (a reader of gzip reads them as one stream): the header and
    /// the cell's start, then `repeats` members each of about `body_bytes` of elements, then the
    /// cell's and the library's end.
    pub fn gds_gz(filling: Filling, body_bytes: u64, repeats: u64) -> io::Result<Repeated> {
        use flate2::{Compression, write::GzEncoder};
        let member = || GzEncoder::new(Vec::new(), Compression::best());
        let mut head = GdsWriter::new(member(), 0.001)?;
        head.begin_cell("chip_top")?;
        let mut body = GdsWriter {
            out: member(),
            written: 0,
        };
        let mut i = 0i64;
        while body.written < body_bytes.max(1) {
            match filling {
                Filling::Zeros => body.shape(&Shape::Polygon {
                    layer: Layer(0, 0),
                    points: vec![(0, 0); 8190],
                })?,
                Filling::Boxes => {
                    let (x, y) = (i % 1000 * 2000, i / 1000 * 2000);
                    body.rect(Layer(1, 0), [x, y, x + 1000, y + 1000])?;
                }
                Filling::Dots => body.rect(Layer(1, 0), [0, 0, 1, 1])?,
            }
            i += 1;
        }
        let body_inflated = body.written;
        let mut tail = GdsWriter {
            out: member(),
            written: 0,
        };
        tail.end_cell()?;
        let tail = tail.finish()?;
        Ok(Repeated {
            head: head.out.finish()?.into(),
            body: body.out.finish()?.into(),
            repeats,
            tail: tail.finish()?.into(),
            body_inflated,
        })
    }

    /// An OASIS file whose cell holds `repeats` CBLOCKs, each inflating to about `body_bytes`.
    pub fn oasis(filling: Filling, body_bytes: u64, repeats: u64) -> io::Result<Repeated> {
        use flate2::{Compression, write::DeflateEncoder};
        let mut head = OasisWriter::new(Vec::new(), 0.001)?;
        head.begin_cell("chip_top")?;
        let mut records = OasisWriter {
            out: DeflateEncoder::new(Vec::new(), Compression::best()),
            written: 0,
        };
        let mut i = 0i64;
        while records.written < body_bytes.max(1) {
            match filling {
                Filling::Zeros => records.raw(&[0; 64 * 1024])?,
                Filling::Boxes => {
                    let (x, y) = (i % 1000 * 2000, i / 1000 * 2000);
                    records.shape(&Shape::Box {
                        layer: Layer(1, 0),
                        rect: [x, y, x + 1000, y + 1000],
                    })?;
                }
                Filling::Dots => records.shape(&Shape::Box {
                    layer: Layer(1, 0),
                    rect: [0, 0, 1, 1],
                })?,
            }
            i += 1;
        }
        let body_inflated = records.written;
        let deflated = records.out.finish()?;
        let mut body = OasisWriter {
            out: Vec::new(),
            written: 0,
        };
        body.unsigned(34)?;
        body.unsigned(0)?;
        body.unsigned(body_inflated)?;
        body.unsigned(deflated.len() as u64)?;
        body.raw(&deflated)?;
        let tail = OasisWriter {
            out: Vec::new(),
            written: 0,
        };
        Ok(Repeated {
            head: head.out.into(),
            body: body.out.into(),
            repeats,
            tail: tail.finish()?.into(),
            body_inflated,
        })
    }

    /// Bytes on the wire.
    pub fn size(&self) -> u64 {
        (self.head.len() + self.tail.len()) as u64 + self.body.len() as u64 * self.repeats
    }

    /// Bytes the repeated bodies inflate to.
    pub fn inflated(&self) -> u64 {
        self.body_inflated.saturating_mul(self.repeats)
    }

    /// The file's bytes in order, sharing the three buffers.
    pub fn chunks(&self) -> impl Iterator<Item = bytes::Bytes> + Send + 'static {
        let body = self.body.clone();
        std::iter::once(self.head.clone())
            .chain((0..self.repeats).map(move |_| body.clone()))
            .chain(std::iter::once(self.tail.clone()))
    }

    pub fn write_to(&self, mut out: impl Write) -> io::Result<()> {
        for chunk in self.chunks() {
            out.write_all(&chunk)?;
        }
        out.flush()
    }
}

/// Layouts whose top cell's box is right only when every transformation is: rotated and
/// mirrored placements and arrays, magnifications, cells placed below and left of the origin,
/// hierarchies that compose them, paths whose ends reach past their points and texts outside
/// every other shape. The tests compare what the reader makes of them with KLayout's
/// `Cell.bbox()` (docs/layout-geometry.md). Each is written in all three formats, except that
/// `oasis` is false for the one with round path ends and a path of one point, which OASIS
/// cannot hold.
pub fn geometry_cases() -> Vec<(&'static str, Library, bool)> {
    use layers::*;
    // An asymmetric cell: any wrong turn moves its box.
    let leaf = || {
        Cell::new("leaf")
            .rect(METAL1, [0, 0, 3000, 1000])
            .rect(METAL2, [0, 0, 500, 5000])
            .shape(Shape::Polygon {
                layer: COMP,
                points: vec![(0, 0), (2000, 0), (0, -700)],
            })
            .shape(Shape::Text {
                layer: Layer(63, 0),
                at: (-300, 6000),
                text: "pin".into(),
            })
    };
    let library = |cells: Vec<Cell>| {
        cells
            .into_iter()
            .fold(Library::new(0.001), |lib, cell| lib.cell(cell))
    };
    let mut turned = Cell::new("top");
    for (i, rotation) in [0u16, 90, 180, 270].into_iter().enumerate() {
        for (j, mirror) in [false, true].into_iter().enumerate() {
            let at = (i as i64 * 20_000 - 30_000, j as i64 * 20_000 - 10_000);
            let mut p = Placement::of("leaf", at).rotated(rotation);
            if mirror {
                p = p.mirrored();
            }
            turned = turned.place(p);
        }
    }
    let arrays = Cell::new("top")
        .place(
            Placement::of("leaf", (1000, 2000))
                .rotated(90)
                .mirrored()
                .array(3, 2, (4000, 0), (0, 7000)),
        )
        .place(Placement::of("leaf", (-2000, -3000)).rotated(180).array(
            4,
            1,
            (-5000, 1000),
            (0, 0),
        ))
        .place(
            Placement::of("leaf", (50_000, 0))
                .rotated(270)
                .mirrored()
                .array(1, 3, (0, 0), (300, -6000)),
        )
        .place(Placement::of("leaf", (0, 40_000)).array(2, 2, (3000, 500), (-700, 9000)));
    let magnified = Cell::new("top")
        .place(Placement::of("leaf", (-1000, -1000)).magnified(2.0))
        .place(
            Placement::of("leaf", (777, 333))
                .magnified(0.5)
                .rotated(90)
                .mirrored(),
        )
        .place(
            Placement::of("leaf", (20_000, 0))
                .magnified(3.0)
                .rotated(180)
                .array(2, 2, (10_000, 0), (0, 20_000)),
        );
    let below_left = Cell::new("top")
        .rect(GUARD_RING_MK, [0, 0, 10_000, 10_000])
        .place(Placement::of("leaf", (-5_000_000, -3_000_000)).rotated(270));
    let mid = Cell::new("mid")
        .place(Placement::of("leaf", (1000, 2000)).rotated(90))
        .place(
            Placement::of("leaf", (-4000, 0))
                .mirrored()
                .array(2, 1, (0, 0), (0, 0)),
        )
        .rect(METAL3, [-100, -100, 100, 100]);
    let nested = Cell::new("top")
        .place(
            Placement::of("mid", (100_000, 50_000))
                .rotated(270)
                .mirrored()
                .array(2, 3, (30_000, 0), (0, -25_000)),
        )
        .place(Placement::of("mid", (-7000, 0)).magnified(2.0).rotated(90));
    let path = |width, points: Vec<(i64, i64)>, ends| Shape::Path {
        layer: METAL4,
        width,
        points,
        ends,
    };
    let paths = Cell::new("top")
        .shape(path(200, vec![(0, 0), (10_000, 0)], PathEnds::Flush))
        .shape(path(
            400,
            vec![(0, 5000), (0, 9000), (3000, 9000)],
            PathEnds::HalfWidth,
        ))
        .shape(path(
            100,
            vec![(-2000, -2000), (-1000, -1000)],
            PathEnds::HalfWidth,
        ))
        .shape(path(
            60,
            vec![(20_000, 0), (20_000, 4000)],
            PathEnds::Extended(700, 1300),
        ))
        .shape(path(
            300,
            vec![(0, -5000), (8000, -5000), (1000, -4200)],
            PathEnds::Flush,
        ));
    // GDSII only: OASIS has no round ends, and KLayout refuses an OASIS path of one point.
    let round = Cell::new("top")
        .shape(path(
            250,
            vec![(0, 0), (5000, 0), (5000, 3000)],
            PathEnds::Round,
        ))
        .shape(path(
            101,
            vec![(-3000, 0), (-3000, 2000)],
            PathEnds::HalfWidth,
        ))
        .shape(path(80, vec![(-9000, 3000)], PathEnds::Extended(500, 500)));
    vec![
        ("turned", library(vec![leaf(), turned]), true),
        ("arrays", library(vec![arrays, leaf()]), true),
        ("magnified", library(vec![leaf(), magnified]), true),
        ("below_left", library(vec![leaf(), below_left]), true),
        ("nested", library(vec![nested, mid, leaf()]), true),
        ("paths", library(vec![paths]), true),
        ("round_and_odd_paths", library(vec![round]), false),
    ]
}

/// Writes a valid GDSII library of about `approx_bytes` bytes in constant memory: one structure
/// `top` holding many 1 µm squares on 1/0 inside a 1x1 die (a GUARD_RING_MK box of the slot's
/// size, 1 nm units), so that a precheck of it passes the server's die checks. Returns the
/// exact number of bytes written. For the tests, the benchmarks and `examples/layout.rs --size`.
pub fn big_gds<W: Write>(out: W, top: &str, approx_bytes: u64) -> io::Result<u64> {
    /// BOUNDARY + LAYER + DATATYPE + XY (5 points) + ENDEL.
    const BOUNDARY_BYTES: u64 = 4 + 6 + 6 + (4 + 5 * 8) + 4;
    /// ENDSTR + ENDLIB.
    const END_BYTES: u64 = 4 + 4;
    let mut gds = GdsWriter::new(out, 0.001)?;
    gds.begin_cell(top)?;
    gds.rect(Layer(167, 5), [0, 0, 3_932_000, 5_122_000])?;
    let count = (approx_bytes.saturating_sub(gds.written() + END_BYTES) / BOUNDARY_BYTES).max(1);
    for i in 0..count {
        // Rows of 1900 squares, 2500 rows, then over again: all inside the die.
        let x = (i % 1900) as i64 * 2000;
        let y = ((i / 1900) % 2500) as i64 * 2000;
        gds.rect(Layer(1, 0), [x, y, x + 1000, y + 1000])?;
    }
    gds.end_cell()?;
    let written = gds.written() + 4;
    gds.finish()?.flush()?;
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::LayoutFormat;
    use crate::layout::inspect;

    /// A hierarchy with every kind of shape and placement, odd names and two top cells.
    fn odd_library(dbu_microns: f64) -> Library {
        Library::new(dbu_microns)
            .cell(Cell::new("top two").rect(Layer(1, 0), [0, 0, 10, 10]))
            .cell(
                Cell::new("caf\u{e9} $top")
                    .place(
                        Placement::of("leaf", (5, -5))
                            .rotated(90)
                            .mirrored()
                            .magnified(2.5),
                    )
                    .place(Placement::of("mid", (0, 0)).array(3, 2, (100, 0), (0, 200)))
                    .place(Placement::of("leaf", (-7, 0)).array(1, 4, (0, 0), (10, 10)))
                    .place(Placement::of("leaf", (1, 1)).array(5, 1, (-3, 4), (0, 0))),
            )
            .cell(
                Cell::new("mid")
                    .place(Placement::of("leaf", (0, 0)).rotated(270))
                    .shape(Shape::Path {
                        layer: Layer(2, 3),
                        width: 20,
                        points: vec![(0, 0), (100, 0), (100, -50)],
                        ends: PathEnds::Flush,
                    }),
            )
            .cell(
                Cell::new("leaf")
                    .shape(Shape::Polygon {
                        layer: Layer(255, 7),
                        points: vec![(0, 0), (10, 0), (5, 8)],
                    })
                    .shape(Shape::Text {
                        layer: Layer(63, 0),
                        at: (1, 2),
                        text: "a label".into(),
                    }),
            )
    }

    #[test]
    fn the_three_formats_of_a_library_read_the_same() {
        for dbu in [0.001, 0.0001, 0.005, 1.0] {
            let library = odd_library(dbu);
            let read = [
                (LayoutFormat::Gds, library.gds()),
                (LayoutFormat::GdsGz, library.gds_gz()),
                (LayoutFormat::Oasis, library.oasis()),
            ]
            .map(|(format, bytes)| {
                let layout = inspect(&bytes[..]).unwrap_or_else(|e| panic!("{format:?}: {e}"));
                assert_eq!(layout.format, format);
                assert!(layout.dbu_is(dbu), "{format:?}: {}", layout.dbu_microns);
                let mut cells = layout.cells.clone();
                cells.sort();
                (cells, layout.top_cells, layout.die)
            });
            assert_eq!(read[0].0, ["caf\u{e9} $top", "leaf", "mid", "top two"]);
            assert_eq!(read[0].1, ["top two", "caf\u{e9} $top"]);
            assert!(read.iter().all(|r| *r == read[0]), "{read:?}");
        }
    }

    #[test]
    fn dies_have_one_top_cell_and_a_1_nm_unit_but_for_their_defect() {
        for defect in [None].into_iter().chain(Defect::ALL.map(Some)) {
            let mut die = Die::new("chip_top").slot("0p5x1").cob();
            if let Some(d) = defect {
                die = die.defect(d);
            }
            let dies = [die.gds(), die.gds_gz(), die.oasis()]
                .map(|bytes| inspect(&bytes[..]).unwrap().die);
            assert!(dies.iter().all(|d| *d == dies[0]), "{defect:?}: {dies:?}");
            for bytes in [die.gds(), die.gds_gz(), die.oasis()] {
                let layout = inspect(&bytes[..]).unwrap();
                assert!(layout.dbu_is(0.001), "{defect:?}");
                let tops = if defect == Some(Defect::TwoTopCells) {
                    vec!["chip_top", "chip_top_old"]
                } else {
                    vec!["chip_top"]
                };
                assert_eq!(layout.top_cells, tops, "{defect:?}");
                for id in COB_ID_CELLS {
                    assert!(layout.cells.iter().any(|c| c == id), "{defect:?}: {id}");
                }
            }
        }
        assert_eq!(Die::new("t").size(), (3_932_000, 5_122_000));
        assert_eq!(Die::new("t").slot("1x0p5").size(), (3_932_000, 2_531_000));
        assert_eq!(
            Die::new("t").defect(Defect::WrongSize).size(),
            (3_922_000, 5_122_000)
        );
        for d in Defect::ALL {
            assert_eq!(Defect::parse(d.as_str()), Some(d));
        }
    }

    #[test]
    fn values_no_format_holds_are_errors_not_files() {
        let far = Library::new(0.001).cell(Cell::new("t").rect(Layer(1, 0), [0, 0, 1 << 40, 1]));
        assert!(far.write_gds(Vec::new()).is_err());
        assert!(
            far.write_oasis(Vec::new()).is_ok(),
            "OASIS integers have no such bound"
        );
        let skew =
            Library::new(0.001).cell(Cell::new("t").place(Placement::of("t", (0, 0)).rotated(45)));
        assert!(skew.write_gds(Vec::new()).is_err());
        let layer = Library::new(0.001).cell(Cell::new("t").rect(Layer(40000, 0), [0, 0, 1, 1]));
        assert!(layer.write_gds(Vec::new()).is_err());
    }
}

#[cfg(test)]
mod gds_stream_tests {
    use super::*;

    /// The records of a GDSII stream as (record type, data type, data), checking that the
    /// lengths add up to the whole stream.
    fn records(bytes: &[u8]) -> Vec<(u8, u8, &[u8])> {
        let mut records = Vec::new();
        let mut rest = bytes;
        while !rest.is_empty() {
            assert!(rest.len() >= 4, "a truncated record header");
            let len = usize::from(u16::from_be_bytes([rest[0], rest[1]]));
            assert!(len >= 4 && len % 2 == 0, "bad record length {len}");
            assert!(len <= rest.len(), "record length {len} runs past the end");
            records.push((rest[2], rest[3], &rest[4..len]));
            rest = &rest[len..];
        }
        records
    }

    fn decode_real8(bytes: &[u8]) -> f64 {
        let bits = u64::from_be_bytes(bytes.try_into().unwrap());
        let sign = if bits >> 63 == 1 { -1.0 } else { 1.0 };
        let exponent = ((bits >> 56) & 0x7f) as i32 - 64;
        let mantissa = (bits & ((1 << 56) - 1)) as f64 / (1u64 << 56) as f64;
        sign * mantissa * 16f64.powi(exponent)
    }

    #[test]
    fn a_cell_with_a_box_is_a_well_formed_stream() {
        let bytes = Library::new(0.001)
            .cell(Cell::new("chip_top").rect(Layer(1, 0), [0, 0, 1000, 1000]))
            .gds();
        let records = records(&bytes);
        let types: Vec<u8> = records.iter().map(|r| r.0).collect();
        assert_eq!(
            types,
            [
                HEADER, BGNLIB, LIBNAME, UNITS, BGNSTR, STRNAME, BOUNDARY, LAYER, DATATYPE, XY,
                ENDEL, ENDSTR, ENDLIB
            ]
        );
        assert_eq!(records[0].2, 600i16.to_be_bytes());
        assert_eq!(records[5], (STRNAME, ASCII, &b"chip_top"[..]));
        let xy = records[9];
        assert_eq!((xy.1, xy.2.len()), (INT4, 40));
        assert_eq!(&xy.2[..8], &xy.2[32..], "a closed boundary");
        let units = records[3];
        assert_eq!((units.0, units.1), (UNITS, REAL8));
        assert_eq!(
            units.2,
            [
                0x3E, 0x41, 0x89, 0x37, 0x4B, 0xC6, 0xA7, 0xF0, // 1e-3 user units per db unit
                0x39, 0x44, 0xB8, 0x2F, 0xA0, 0x9B, 0x5A, 0x54, // 1e-9 m per db unit
            ]
        );
    }

    #[test]
    fn names_of_odd_length_are_nul_padded() {
        let bytes = Library::new(0.001).cell(Cell::new("top")).gds();
        assert_eq!(records(&bytes)[5], (STRNAME, ASCII, &b"top\0"[..]));
    }

    #[test]
    fn gds_real8_round_trips() {
        for value in [
            1.0,
            -1.0,
            0.5,
            1e-3,
            1e-9,
            2.5e-10,
            1234.5678,
            1.0 / 16.0,
            15.999999,
        ] {
            let decoded = decode_real8(&gds_real8(value).unwrap());
            assert!(
                ((decoded - value) / value).abs() < 1e-15,
                "{value} came back as {decoded}"
            );
        }
        assert_eq!(gds_real8(0.0).unwrap(), [0; 8]);
        assert!(gds_real8(1e300).is_err());
    }
}
