//! Layouts the tests make themselves: a good die, a library of given cells, and a big GDSII file
//! written in constant memory.

use std::fs;
use std::io::BufWriter;
use std::path::Path;

use precheck_server::layout::write::{Cell, Die, Layer, Library, Placement, big_gds};

/// A good 1x1 die whose top cell is `top`, as GDSII: what a designer sends the precheck
/// (`layout::write::Die`: origin (0, 0), 1 nm, the slot's exact size, a seal ring).
pub fn gds_bytes(top: &str) -> Vec<u8> {
    Die::new(top).gds()
}

/// A GDSII library with a database unit of `dbu_meters` and the given cells, each with one
/// 1 µm square on 1/0 and a placement of each of its children at the origin.
pub fn gds_library(dbu_meters: f64, cells: &[(&str, &[&str])]) -> Vec<u8> {
    let dbu_microns = dbu_meters / 1e-6;
    let square = (1e-6 / dbu_meters).round() as i64;
    let mut library = Library::new(dbu_microns);
    for (name, children) in cells {
        let mut cell = Cell::new(name).rect(Layer(1, 0), [0, 0, square, square]);
        for child in *children {
            cell = cell.place(Placement::of(child, (0, 0)));
        }
        library = library.cell(cell);
    }
    library.gds()
}

/// Writes a valid GDSII file of about `approx_bytes` bytes to `path` in constant memory: one
/// structure `top` holding many squares inside a 1x1 die (a GUARD_RING_MK box of the slot's
/// size), so that a precheck of it passes the server's die checks. Returns the file's exact
/// size.
pub fn write_big_gds(path: impl AsRef<Path>, top: &str, approx_bytes: u64) -> u64 {
    let path = path.as_ref();
    let file = fs::File::create(path).unwrap_or_else(|e| panic!("create {}: {e}", path.display()));
    big_gds(BufWriter::with_capacity(1 << 20, file), top, approx_bytes)
        .unwrap_or_else(|e| panic!("write {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_big_gds_writes_about_the_size_asked() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("big.gds");
        let size = write_big_gds(&path, "big_top", 200_000);
        assert_eq!(fs::metadata(&path).unwrap().len(), size);
        assert!(size.abs_diff(200_000) < 64, "{size} bytes");
        let layout = precheck_server::layout::inspect(fs::File::open(&path).unwrap()).unwrap();
        assert_eq!(layout.top_cells, ["big_top"]);
        let die = layout.die.unwrap();
        let b = die.bbox.unwrap();
        assert_eq!(
            [b.left, b.bottom, b.right, b.top],
            [0, 0, 3_932_000, 5_122_000]
        );
    }

    #[test]
    fn gds_library_places_its_children() {
        let bytes = gds_library(1e-8, &[("leaf", &[]), ("chip_top", &["leaf"]), ("b", &[])]);
        let layout = precheck_server::layout::inspect(&bytes[..]).unwrap();
        assert_eq!(layout.top_cells, ["chip_top", "b"]);
        assert!(layout.dbu_is(0.01), "{}", layout.dbu_microns);
    }
}
