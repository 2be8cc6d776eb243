//! GDSII stream format: a sequence of records, each a big-endian `u16` length (header
//! included), a record type, a data type and the data. The records that name cells (STRNAME),
//! place them (SREF and AREF with SNAME, STRANS, MAG, ANGLE, COLROW), give the unit (UNITS) and
//! shape them (BOUNDARY, PATH, BOX and TEXT with their layer, datatype, width, path type,
//! extensions and points) are read; every other record is skipped by its length. Reading ends
//! at ENDLIB: a file that ends before it is truncated, whatever it held so far.

use std::io::{self, BufRead};

use super::geometry::{self, Geometry, Linear, MAX_POINTS, Rect};
use super::{CellGraph, CellKey, Found, LayoutError, io_error};

const HEADER: u8 = 0x00;
const UNITS: u8 = 0x03;
const ENDLIB: u8 = 0x04;
const BGNSTR: u8 = 0x05;
const STRNAME: u8 = 0x06;
const ENDSTR: u8 = 0x07;
const BOUNDARY: u8 = 0x08;
const PATH: u8 = 0x09;
const SREF: u8 = 0x0a;
const AREF: u8 = 0x0b;
const TEXT: u8 = 0x0c;
const LAYER: u8 = 0x0d;
const DATATYPE: u8 = 0x0e;
const WIDTH: u8 = 0x0f;
const XY: u8 = 0x10;
const ENDEL: u8 = 0x11;
const SNAME: u8 = 0x12;
const COLROW: u8 = 0x13;
const NODE: u8 = 0x15;
const TEXTTYPE: u8 = 0x16;
const STRANS: u8 = 0x1a;
const MAG: u8 = 0x1b;
const ANGLE: u8 = 0x1c;
const PATHTYPE: u8 = 0x21;
const BOX: u8 = 0x2d;
const BOXTYPE: u8 = 0x2e;
const BGNEXTN: u8 = 0x30;
const ENDEXTN: u8 = 0x31;
/// The last record type of the format (LIBSECUR is 0x3b).
const LAST_TYPE: u8 = 0x3b;

/// Record type names for messages.
fn type_name(t: u8) -> &'static str {
    const NAMES: [&str; 60] = [
        "HEADER",
        "BGNLIB",
        "LIBNAME",
        "UNITS",
        "ENDLIB",
        "BGNSTR",
        "STRNAME",
        "ENDSTR",
        "BOUNDARY",
        "PATH",
        "SREF",
        "AREF",
        "TEXT",
        "LAYER",
        "DATATYPE",
        "WIDTH",
        "XY",
        "ENDEL",
        "SNAME",
        "COLROW",
        "TEXTNODE",
        "NODE",
        "TEXTTYPE",
        "PRESENTATION",
        "SPACING",
        "STRING",
        "STRANS",
        "MAG",
        "ANGLE",
        "UINTEGER",
        "USTRING",
        "REFLIBS",
        "FONTS",
        "PATHTYPE",
        "GENERATIONS",
        "ATTRTABLE",
        "STYPTABLE",
        "STRTYPE",
        "ELFLAGS",
        "ELKEY",
        "LINKTYPE",
        "LINKKEYS",
        "NODETYPE",
        "PROPATTR",
        "PROPVALUE",
        "BOX",
        "BOXTYPE",
        "PLEX",
        "BGNEXTN",
        "ENDEXTN",
        "TAPENUM",
        "TAPECODE",
        "STRCLASS",
        "RESERVED",
        "FORMAT",
        "MASK",
        "ENDMASKS",
        "LIBDIRSIZE",
        "SRFNAME",
        "LIBSECUR",
    ];
    NAMES.get(t as usize).copied().unwrap_or("unknown")
}

/// Reads GDSII records up to ENDLIB. `format` names the format in messages ("GDSII", or
/// "gzip'd GDSII" when the bytes come through gzip).
pub(super) fn read(reader: impl BufRead, format: &'static str) -> Result<Found, LayoutError> {
    let mut r = Counted {
        inner: reader,
        pos: 0,
    };
    let mut graph = CellGraph::default();
    let mut dbu_microns = None;
    // The cell whose records are being read, and whether a reference element awaits its SNAME.
    let mut in_structure = false;
    let mut current: Option<CellKey> = None;
    let mut in_reference = false;
    let mut geometry = Geometry::default();
    // The element whose records are being read (BOUNDARY, PATH, SREF, AREF, TEXT, NODE, BOX).
    let mut element: Option<Element> = None;
    let mut data = Vec::with_capacity(64);
    let corrupt = |detail: String| LayoutError::Corrupt { format, detail };
    let mut record = 0u64;
    loop {
        record += 1;
        let start = r.pos;
        let mut header = [0u8; 4];
        let got = r
            .fill(&mut header)
            .map_err(|e| io_error(e, format, &at(record, r.pos)))?;
        if got < header.len() {
            let detail = if got == 0 {
                format!(
                    "file ends after record {} at byte {start} without ENDLIB",
                    record - 1
                )
            } else {
                format!("file ends inside record {record} at byte {}", r.pos)
            };
            return Err(LayoutError::Truncated { format, detail });
        }
        let len = u16::from_be_bytes([header[0], header[1]]) as usize;
        let kind = header[2];
        if len < 4 || len % 2 != 0 {
            return Err(corrupt(format!(
                "record {record} at byte {start} has length {len} (a record is at least 4 bytes, and even)"
            )));
        }
        if kind > LAST_TYPE {
            return Err(corrupt(format!(
                "record {record} at byte {start} has the unknown type 0x{kind:02x}"
            )));
        }
        if record == 1 && kind != HEADER {
            return Err(corrupt("the first record is not HEADER".into()));
        }
        // The records that matter are read; every other one is skipped by its length.
        let body = len - 4;
        let got = if matches!(
            kind,
            UNITS
                | STRNAME
                | SNAME
                | LAYER
                | DATATYPE
                | TEXTTYPE
                | BOXTYPE
                | WIDTH
                | XY
                | COLROW
                | STRANS
                | MAG
                | ANGLE
                | PATHTYPE
                | BGNEXTN
                | ENDEXTN
        ) {
            data.resize(body, 0);
            r.fill(&mut data).map(|n| n as u64)
        } else {
            r.skip(body as u64)
        };
        let got = got.map_err(|e| io_error(e, format, &at(record, r.pos)))?;
        if got < body as u64 {
            return Err(LayoutError::Truncated {
                format,
                detail: format!(
                    "file ends inside record {record} ({}) at byte {}",
                    type_name(kind),
                    r.pos
                ),
            });
        }
        let misplaced = || {
            corrupt(format!(
                "record {record} ({}) at byte {start} is out of place",
                type_name(kind)
            ))
        };
        match kind {
            UNITS => {
                let meters = data.get(8..16).map(gds_real).ok_or_else(|| {
                    corrupt(format!(
                        "record {record} (UNITS) at byte {start} is too short"
                    ))
                })?;
                let microns = meters * 1e6;
                if !(microns.is_finite() && microns > 0.0) {
                    return Err(corrupt(format!(
                        "the database unit is {meters} m, which is not a size"
                    )));
                }
                dbu_microns = Some(microns);
            }
            BGNSTR => {
                if in_structure {
                    return Err(misplaced());
                }
                in_structure = true;
            }
            STRNAME => {
                if !in_structure || current.is_some() {
                    return Err(misplaced());
                }
                let key = CellKey::Name(name(&data));
                graph.define(key.clone(), format)?;
                geometry.begin(key.clone());
                current = Some(key);
            }
            ENDSTR => {
                if !in_structure {
                    return Err(misplaced());
                }
                in_structure = false;
                current = None;
                in_reference = false;
                element = None;
                geometry.end();
            }
            SREF | AREF | BOUNDARY | PATH | TEXT | NODE | BOX => {
                if current.is_none() {
                    return Err(misplaced());
                }
                in_reference = matches!(kind, SREF | AREF);
                element = Some(Element::new(kind));
            }
            SNAME => {
                if !in_reference {
                    return Err(misplaced());
                }
                let child = CellKey::Name(name(&data));
                graph.place(current.as_ref(), child.clone(), format)?;
                if let Some(e) = &mut element {
                    e.child = Some(child);
                }
                in_reference = false;
            }
            ENDEL => {
                in_reference = false;
                if let Some(e) = element.take() {
                    e.finish(&mut geometry, format)?;
                }
            }
            LAYER | DATATYPE | TEXTTYPE | BOXTYPE | WIDTH | XY | COLROW | STRANS | MAG | ANGLE
            | PATHTYPE | BGNEXTN | ENDEXTN => {
                if let Some(e) = &mut element {
                    e.record(kind, &data).map_err(corrupt)?;
                }
            }
            ENDLIB => {
                if in_structure {
                    return Err(misplaced());
                }
                let dbu_microns =
                    dbu_microns.ok_or_else(|| corrupt("the library has no UNITS record".into()))?;
                return Ok(Found {
                    dbu_microns,
                    graph,
                    geometry,
                });
            }
            _ => {}
        }
    }
}

/// One element as its records describe it, made a shape or a placement at its ENDEL.
struct Element {
    kind: u8,
    layer: u32,
    datatype: u32,
    width: i64,
    path_type: i16,
    begin_extension: i64,
    end_extension: i64,
    /// The points of a PATH or AREF.
    points: Vec<(i64, i64)>,
    /// The box of every point (BOUNDARY, BOX and TEXT need only that).
    bbox: Rect,
    child: Option<CellKey>,
    linear: Linear,
    columns: u64,
    rows: u64,
}

impl Element {
    fn new(kind: u8) -> Element {
        Element {
            kind,
            layer: 0,
            datatype: 0,
            width: 0,
            path_type: 0,
            begin_extension: 0,
            end_extension: 0,
            points: vec![],
            bbox: Rect::EMPTY,
            child: None,
            linear: Linear::IDENTITY,
            columns: 1,
            rows: 1,
        }
    }

    /// Takes in one of its records (a record too short for its value is corrupt).
    fn record(&mut self, kind: u8, data: &[u8]) -> Result<(), String> {
        let short = || format!("a {} record is too short", type_name(kind));
        let int2 = |at: usize| {
            data.get(at..at + 2)
                .map(|b| u16::from_be_bytes([b[0], b[1]]))
                .ok_or_else(short)
        };
        let int4 = |at: usize| {
            data.get(at..at + 4)
                .map(|b| i64::from(i32::from_be_bytes([b[0], b[1], b[2], b[3]])))
                .ok_or_else(short)
        };
        let real = || data.get(0..8).map(gds_real).ok_or_else(short);
        match kind {
            LAYER => self.layer = u32::from(int2(0)?),
            DATATYPE | TEXTTYPE | BOXTYPE => self.datatype = u32::from(int2(0)?),
            WIDTH => self.width = int4(0)?,
            PATHTYPE => self.path_type = int2(0)? as i16,
            BGNEXTN => self.begin_extension = int4(0)?,
            ENDEXTN => self.end_extension = int4(0)?,
            STRANS => self.linear.mirror = int2(0)? & 0x8000 != 0,
            MAG => self.linear.mag = real()?,
            ANGLE => self.linear.angle = real()?,
            COLROW => {
                self.columns = u64::from(int2(0)?);
                self.rows = u64::from(int2(2)?);
            }
            XY => {
                let keep = matches!(self.kind, PATH | AREF);
                for pair in data.chunks_exact(8) {
                    let x = i64::from(i32::from_be_bytes([pair[0], pair[1], pair[2], pair[3]]));
                    let y = i64::from(i32::from_be_bytes([pair[4], pair[5], pair[6], pair[7]]));
                    self.bbox.add_point(x, y);
                    if keep {
                        if self.points.len() >= MAX_POINTS {
                            return Err(format!(
                                "a {} has more than {MAX_POINTS} points",
                                type_name(self.kind)
                            ));
                        }
                        self.points.push((x, y));
                    }
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// Adds the element to the cell being read.
    fn finish(self, geometry: &mut Geometry, format: &'static str) -> Result<(), LayoutError> {
        let layer = (self.layer, self.datatype);
        match self.kind {
            BOUNDARY | BOX => geometry.shape(layer, self.bbox),
            // A TEXT is its point (KLayout boxes a text as its position).
            TEXT => geometry.shape(layer, self.bbox),
            PATH => {
                // Path type 1 (round) and 2 reach half the width past their ends, 4 as
                // BGNEXTN and ENDEXTN say, 0 not at all.
                let half = self.width.abs() / 2;
                let (begin, end) = match self.path_type {
                    1 | 2 => (half, half),
                    4 => (self.begin_extension, self.end_extension),
                    _ => (0, 0),
                };
                let rect = geometry::path_box(&self.points, self.width, begin, end);
                geometry.shape(layer, rect);
            }
            SREF => {
                if let Some(child) = self.child {
                    geometry.place(child, self.linear, self.bbox, format)?;
                }
            }
            AREF => {
                if let (Some(child), [origin, across, up, ..]) = (self.child, &self.points[..]) {
                    let step = |to: (i64, i64), n: u64| {
                        let n = n.max(1) as f64;
                        (
                            ((to.0 - origin.0) as f64 / n).round() as i64,
                            ((to.1 - origin.1) as f64 / n).round() as i64,
                        )
                    };
                    let column = step(*across, self.columns);
                    let row = step(*up, self.rows);
                    let corners = geometry::lattice(*origin, self.columns, column, self.rows, row);
                    geometry.place(child, self.linear, corners, format)?;
                }
            }
            _ => {}
        }
        Ok(())
    }
}

fn at(record: u64, pos: u64) -> String {
    format!("inside record {record} at byte {pos}")
}

/// A cell name as stored: ASCII padded with NULs to an even length.
fn name(data: &[u8]) -> String {
    let end = data.iter().rposition(|b| *b != 0).map_or(0, |i| i + 1);
    String::from_utf8_lossy(&data[..end]).into_owned()
}

/// An 8-byte GDSII real: sign bit, excess-64 base-16 exponent, 56-bit fraction.
fn gds_real(b: &[u8]) -> f64 {
    let sign = if b[0] & 0x80 != 0 { -1.0 } else { 1.0 };
    let exponent = i32::from(b[0] & 0x7f) - 64;
    let fraction = b[1..8]
        .iter()
        .fold(0u64, |acc, byte| acc << 8 | u64::from(*byte));
    sign * (fraction as f64 / 2f64.powi(56)) * 16f64.powi(exponent)
}

/// A reader that counts the bytes it has consumed, for messages.
struct Counted<R> {
    inner: R,
    pos: u64,
}

impl<R: BufRead> Counted<R> {
    /// Reads until `buf` is full or the data ends; returns how many bytes it got.
    fn fill(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let mut got = 0;
        while got < buf.len() {
            let available = match self.inner.fill_buf() {
                Ok(available) => available,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            if available.is_empty() {
                break;
            }
            let n = available.len().min(buf.len() - got);
            buf[got..got + n].copy_from_slice(&available[..n]);
            self.inner.consume(n);
            got += n;
        }
        self.pos += got as u64;
        Ok(got)
    }

    /// Skips up to `n` bytes; returns how many there were.
    fn skip(&mut self, n: u64) -> io::Result<u64> {
        let mut skipped = 0;
        while skipped < n {
            let available = match self.inner.fill_buf() {
                Ok(available) => available.len(),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            if available == 0 {
                break;
            }
            let step = (available as u64).min(n - skipped);
            self.inner.consume(step as usize);
            skipped += step;
        }
        self.pos += skipped;
        Ok(skipped)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::super::inspect;
    use crate::layout::LayoutFormat;

    /// Writes GDSII for tests: a library of structures, each placing others by SREF or AREF.
    pub struct Writer {
        pub bytes: Vec<u8>,
    }

    impl Writer {
        /// A library with the given database unit in metres (1e-9 for 1 nm).
        pub fn new(dbu_meters: f64) -> Writer {
            let mut w = Writer { bytes: vec![] };
            w.record(0x00, 0x02, &600u16.to_be_bytes());
            w.record(0x01, 0x02, &[0; 24]);
            w.record(0x02, 0x06, b"LIB\0");
            let mut units = real(dbu_meters / 1e-6).to_vec();
            units.extend(real(dbu_meters));
            w.record(0x03, 0x05, &units);
            w
        }

        pub fn record(&mut self, kind: u8, data_type: u8, data: &[u8]) {
            let mut data = data.to_vec();
            if data.len() % 2 == 1 {
                data.push(0);
            }
            self.bytes.extend(((data.len() + 4) as u16).to_be_bytes());
            self.bytes.extend([kind, data_type]);
            self.bytes.extend(data);
        }

        /// A structure `name` with one box and a reference to each of `sref` and `aref`.
        pub fn cell(&mut self, name: &str, sref: &[&str], aref: &[&str]) {
            self.record(0x05, 0x02, &[0; 24]);
            self.record(0x06, 0x06, name.as_bytes());
            self.record(0x08, 0x00, &[]);
            self.record(0x0d, 0x02, &1u16.to_be_bytes());
            self.record(0x0e, 0x02, &0u16.to_be_bytes());
            let square: Vec<u8> = [0i32, 0, 1000, 0, 1000, 1000, 0, 1000, 0, 0]
                .iter()
                .flat_map(|v| v.to_be_bytes())
                .collect();
            self.record(0x10, 0x03, &square);
            self.record(0x11, 0x00, &[]);
            for child in sref {
                self.record(0x0a, 0x00, &[]);
                self.record(0x12, 0x06, child.as_bytes());
                self.record(0x10, 0x03, &[0; 8]);
                self.record(0x11, 0x00, &[]);
            }
            for child in aref {
                self.record(0x0b, 0x00, &[]);
                self.record(0x12, 0x06, child.as_bytes());
                self.record(0x13, 0x02, &[0, 2, 0, 3]);
                self.record(0x10, 0x03, &[0; 24]);
                self.record(0x11, 0x00, &[]);
            }
            self.record(0x07, 0x00, &[]);
        }

        pub fn finish(mut self) -> Vec<u8> {
            self.record(0x04, 0x00, &[]);
            self.bytes
        }
    }

    /// An 8-byte GDSII real, as the layout writer makes it.
    pub fn real(v: f64) -> [u8; 8] {
        crate::layout::write::gds_real8(v).expect("a real GDSII can hold")
    }

    fn tops(bytes: &[u8]) -> Vec<String> {
        inspect(bytes).unwrap().top_cells
    }

    #[test]
    fn srefs_arefs_and_the_unit() {
        let mut w = Writer::new(1e-9);
        w.cell("leaf", &[], &[]);
        w.cell("array_only", &[], &["leaf"]);
        w.cell("chip_top", &["array_only"], &[]);
        w.cell("orphan", &[], &[]);
        let layout = inspect(&w.finish()[..]).unwrap();
        assert_eq!(layout.format, LayoutFormat::Gds);
        assert!(layout.dbu_is(0.001), "{}", layout.dbu_microns);
        assert_eq!(layout.cells, ["leaf", "array_only", "chip_top", "orphan"]);
        assert_eq!(layout.top_cells, ["chip_top", "orphan"]);
    }

    #[test]
    fn references_before_definitions_and_to_missing_cells() {
        let mut w = Writer::new(1e-9);
        w.cell("top", &["later", "never_defined"], &[]);
        w.cell("later", &["top_again_not"], &[]);
        assert_eq!(tops(&w.finish()), ["top"]);
    }

    #[test]
    fn truncation_is_never_a_layout() {
        let mut w = Writer::new(1e-9);
        w.cell("leaf", &[], &[]);
        w.cell("top", &["leaf"], &[]);
        let bytes = w.finish();
        for len in 0..bytes.len() {
            match inspect(&bytes[..len]) {
                Err(super::super::LayoutError::Truncated { .. }) => {}
                Err(super::super::LayoutError::NotALayout(_)) if len < 4 => {}
                other => panic!("{len} of {} bytes: {other:?}", bytes.len()),
            }
        }
        let e = inspect(&bytes[..30]).unwrap_err().to_string();
        assert_eq!(
            e,
            "truncated GDSII: file ends inside record 2 (BGNLIB) at byte 30"
        );
        let end = bytes.len() - 4;
        let e = inspect(&bytes[..end]).unwrap_err().to_string();
        assert!(e.ends_with(&format!("at byte {end} without ENDLIB")), "{e}");
    }

    #[test]
    fn corrupt_records_are_named() {
        let mut w = Writer::new(1e-9);
        w.record(0x77, 0x00, &[]);
        let e = inspect(&w.finish()[..]).unwrap_err().to_string();
        assert_eq!(
            e,
            "corrupt GDSII: record 5 at byte 62 has the unknown type 0x77"
        );
        let mut w = Writer::new(1e-9);
        w.bytes.extend([0x00, 0x03, 0x07, 0x00]);
        let e = inspect(&w.finish()[..]).unwrap_err().to_string();
        assert!(e.contains("has length 3"), "{e}");
        let mut w = Writer::new(1e-9);
        w.record(0x12, 0x06, b"stray");
        let e = inspect(&w.finish()[..]).unwrap_err().to_string();
        assert!(e.contains("(SNAME) at byte 62 is out of place"), "{e}");
    }

    #[test]
    fn deep_hierarchies_and_many_cells() {
        let names: Vec<String> = (0..10_000).map(|i| format!("cell_{i}")).collect();
        let mut w = Writer::new(1e-9);
        // A chain 10 000 deep: each cell places the one before it.
        w.cell(&names[0], &[], &[]);
        for i in 1..names.len() {
            w.cell(&names[i], &[&names[i - 1]], &[]);
        }
        let layout = inspect(&w.finish()[..]).unwrap();
        assert_eq!(layout.cells.len(), 10_000);
        assert_eq!(layout.top_cells, ["cell_9999"]);

        // 10 000 cells under one top, placed only through AREFs.
        let mut w = Writer::new(1e-9);
        for name in &names {
            w.cell(name, &[], &[]);
        }
        let all: Vec<&str> = names.iter().map(String::as_str).collect();
        w.cell("top", &[], &all);
        let layout = inspect(&w.finish()[..]).unwrap();
        assert_eq!(layout.cells.len(), 10_001);
        assert_eq!(layout.top_cells, ["top"]);
    }

    #[test]
    fn nul_padded_odd_names() {
        let mut w = Writer::new(1e-9);
        w.cell("a b$c.d", &[], &[]);
        w.cell("odd", &["a b$c.d"], &[]);
        let layout = inspect(&w.finish()[..]).unwrap();
        assert_eq!(layout.cells, ["a b$c.d", "odd"]);
        assert_eq!(layout.top_cells, ["odd"]);
    }

    #[test]
    fn real_roundtrip() {
        for v in [1e-9, 1e-3, 0.001, 1.0, 1000.0, 2.5e-10] {
            let got = super::gds_real(&real(v));
            assert!(((got - v) / v).abs() < 1e-12, "{v} -> {got}");
        }
    }
}
