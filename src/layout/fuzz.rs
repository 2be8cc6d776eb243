//! Malformed input never panics: random bytes behind each format's magic, and layouts
//! with bytes flipped, inserted, removed or cut short. Each property runs a fixed number of
//! cases (`PROPTEST_CASES` raises it); proptest keeps every failing case it finds in
//! `proptest-regressions/`, which is committed, so each one is tried again on every run.

use proptest::prelude::*;

use super::{LayoutError, inspect};

/// Layouts of each format: dies as the writer makes them, a hierarchy with two top cells, OASIS
/// files of every record with every field and of shapes placed in every way, and the real
/// layouts in ../shared/fixtures/gds where that folder is.
fn seeds() -> &'static [Vec<u8>] {
    static SEEDS: std::sync::OnceLock<Vec<Vec<u8>>> = std::sync::OnceLock::new();
    SEEDS.get_or_init(make_seeds)
}

fn make_seeds() -> Vec<Vec<u8>> {
    use super::write::{Defect, Die};
    let die = Die::new("chip_top").cob();
    let two = Die::new("chip_top")
        .slot("0p5x0p5")
        .defect(Defect::TwoTopCells);
    let mut seeds = vec![die.gds(), die.gds_gz(), die.oasis(), two.gds(), two.oasis()];
    seeds.extend(super::oasis::tests::fuzz_seeds());
    if let Some(dir) = super::tests::shared_fixtures() {
        for name in [
            "chip_top_hier.gds",
            "chip_top_hier.gds.gz",
            "chip_top_hier.oas",
            "two_tops.gds",
            "gf180mcu_ws_ip__marker.gds",
        ] {
            seeds.push(std::fs::read(dir.join(name)).unwrap_or_else(|e| panic!("{name}: {e}")));
        }
    }
    seeds
}

/// One change to a file.
#[derive(Debug, Clone)]
enum Mutation {
    Set(usize, u8),
    Insert(usize, Vec<u8>),
    Remove(usize, usize),
    Cut(usize),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        4 => (any::<usize>(), any::<u8>()).prop_map(|(at, b)| Mutation::Set(at, b)),
        1 => (any::<usize>(), prop::collection::vec(any::<u8>(), 1..16))
            .prop_map(|(at, bytes)| Mutation::Insert(at, bytes)),
        1 => (any::<usize>(), 1usize..64).prop_map(|(at, n)| Mutation::Remove(at, n)),
        1 => any::<usize>().prop_map(Mutation::Cut),
    ]
}

fn apply(bytes: &mut Vec<u8>, m: &Mutation) {
    if bytes.is_empty() {
        return;
    }
    match m {
        Mutation::Set(at, b) => {
            let at = at % bytes.len();
            bytes[at] = *b;
        }
        Mutation::Insert(at, new) => {
            let at = at % bytes.len();
            bytes.splice(at..at, new.iter().copied());
        }
        Mutation::Remove(at, n) => {
            let at = at % bytes.len();
            let end = (at + n).min(bytes.len());
            bytes.drain(at..end);
        }
        Mutation::Cut(at) => bytes.truncate(at % bytes.len()),
    }
}

/// An OASIS file of a cell "top" holding `records` and a cell "leaf": a START with a unit of
/// 1 nm, and an END of 256 bytes.
fn oasis_cell(records: &[u8]) -> Vec<u8> {
    let mut bytes = super::oasis::MAGIC.to_vec();
    bytes.extend([1, 3, b'1', b'.', b'0', 0, 0xe8, 0x07, 0]);
    bytes.extend([0; 12]);
    bytes.extend([14, 3, b't', b'o', b'p']);
    bytes.extend(records);
    // A leaf to place, with a shape on two layers.
    bytes.extend([14, 4, b'l', b'e', b'a', b'f', 20, 0x7b, 1, 0, 10, 20, 0, 0]);
    bytes.extend([20, 0x7b, 2, 0, 10, 20, 100, 100]);
    bytes.extend([2, 0xfc, 0x01]);
    bytes.extend([0; 252]);
    bytes.push(0);
    bytes
}

/// Records of the kinds that carry geometry (xy-mode, PLACEMENT, TEXT, the shapes, XGEOMETRY),
/// each with a random info byte and exactly the fields it calls for, their values (counts,
/// coordinates, types of repetitions, point lists and reals) drawn from a pool of any size: the
/// modal variables, repetitions, point lists and transformations meet values no seed holds.
fn geometry_records() -> impl Strategy<Value = Vec<u8>> {
    let ids: Vec<u64> = vec![15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27, 33];
    let value = prop_oneof![4 => 0u64..8, 4 => 0u64..4000, 1 => any::<u64>()];
    let record = (
        prop::sample::select(ids),
        any::<u8>(),
        prop::collection::vec(value, 0..24),
    );
    prop::collection::vec(record, 1..20).prop_map(|records| {
        let mut w = Encoder::default();
        for (id, info, pool) in records {
            w.record(id, info, pool);
        }
        w.bytes
    })
}

/// Writes the records of [`geometry_records`].
#[derive(Default)]
struct Encoder {
    bytes: Vec<u8>,
    pool: Vec<u64>,
    at: usize,
}

impl Encoder {
    /// The next value of the pool (1 once it is used up).
    fn next(&mut self) -> u64 {
        let v = self.pool.get(self.at).copied().unwrap_or(1);
        self.at += 1;
        v
    }

    fn u(&mut self, mut v: u64) {
        while v >= 0x80 {
            self.bytes.push(v as u8 | 0x80);
            v >>= 7;
        }
        self.bytes.push(v as u8);
    }

    fn value(&mut self) {
        let v = self.next();
        self.u(v);
    }

    fn maybe(&mut self, present: bool) {
        if present {
            self.value();
        }
    }

    /// A type below `types`.
    fn typed(&mut self, types: u64) -> u64 {
        let kind = self.next() % types;
        self.u(kind);
        kind
    }

    fn string(&mut self) {
        let name: &[u8] = [&b"leaf"[..], b"top", b"ghost"][(self.next() % 3) as usize];
        self.u(name.len() as u64);
        self.bytes.extend(name);
    }

    fn real(&mut self) {
        let v = self.next();
        match self.typed(8) {
            kind @ 0..=5 => (0..1 + kind / 4).for_each(|_| self.value()),
            6 => self.bytes.extend((v as f32 / 7.0).to_le_bytes()),
            _ => self.bytes.extend((v as f64 / 3.0 - 100.0).to_le_bytes()),
        }
    }

    /// A g-delta in either form.
    fn g_delta(&mut self) {
        let v = self.next();
        self.u(v);
        if v & 1 == 1 {
            self.value();
        }
    }

    fn repetition(&mut self) {
        match self.typed(12) {
            0 => {}
            1 => (0..4).for_each(|_| self.value()),
            2 | 3 => (0..2).for_each(|_| self.value()),
            kind @ (4..=7 | 10 | 11) => {
                let n = self.next() % 6;
                self.u(n);
                self.maybe(matches!(kind, 5 | 7 | 11));
                for _ in 0..=n {
                    if kind < 10 {
                        self.value()
                    } else {
                        self.g_delta()
                    }
                }
            }
            8 => {
                (0..2).for_each(|_| self.value());
                (0..2).for_each(|_| self.g_delta());
            }
            _ => {
                self.value();
                self.g_delta();
            }
        }
    }

    fn point_list(&mut self) {
        let kind = self.typed(6);
        let n = self.next() % 9;
        self.u(n);
        for _ in 0..n {
            if kind >= 4 {
                self.g_delta()
            } else {
                self.value()
            }
        }
    }

    /// X (bit 4), Y (bit 3) and R (bit 2) of `info`.
    fn position(&mut self, info: u8) {
        self.maybe(info & 0x10 != 0);
        self.maybe(info & 0x08 != 0);
        if info & 0x04 != 0 {
            self.repetition();
        }
    }

    fn record(&mut self, id: u64, info: u8, pool: Vec<u64>) {
        (self.pool, self.at) = (pool, 0);
        self.u(id);
        if matches!(id, 15 | 16) {
            return;
        }
        // A placement names its cell, so that a cell's first one is valid.
        let info = if matches!(id, 17 | 18) {
            info | 0x80
        } else {
            info
        };
        self.bytes.push(info);
        match id {
            17 | 18 => {
                if info & 0x40 != 0 {
                    self.value()
                } else {
                    self.string()
                }
                if id == 18 {
                    if info & 0x04 != 0 {
                        self.real()
                    }
                    if info & 0x02 != 0 {
                        self.real()
                    }
                }
                self.position(info >> 1);
            }
            19 => {
                if info & 0x40 != 0 {
                    if info & 0x20 != 0 {
                        self.value()
                    } else {
                        self.string()
                    }
                }
                self.maybe(info & 0x01 != 0);
                self.maybe(info & 0x02 != 0);
                self.position(info);
            }
            33 => {
                self.value();
                self.maybe(info & 0x01 != 0);
                self.maybe(info & 0x02 != 0);
                self.string();
                self.position(info);
            }
            _ => {
                self.maybe(info & 0x01 != 0);
                self.maybe(info & 0x02 != 0);
                match id {
                    20 => {
                        self.maybe(info & 0x40 != 0);
                        self.maybe(info & 0xa0 == 0x20);
                    }
                    21 => {
                        if info & 0x20 != 0 {
                            self.point_list()
                        }
                    }
                    22 => {
                        self.maybe(info & 0x40 != 0);
                        if info & 0x80 != 0 {
                            let scheme = self.next() % 16;
                            self.u(scheme);
                            self.maybe(scheme >> 2 & 3 == 3);
                            self.maybe(scheme & 3 == 3);
                        }
                        if info & 0x20 != 0 {
                            self.point_list()
                        }
                    }
                    23..=25 => {
                        self.maybe(info & 0x40 != 0);
                        self.maybe(info & 0x20 != 0);
                        self.maybe(id != 25);
                        self.maybe(id != 24);
                    }
                    26 => {
                        if info & 0x80 != 0 {
                            let kind = self.next() % 27;
                            self.u(kind);
                        }
                        self.maybe(info & 0x40 != 0);
                        self.maybe(info & 0x20 != 0);
                    }
                    _ => self.maybe(info & 0x20 != 0),
                }
                self.position(info);
            }
        }
    }
}

/// What any input may give: a layout or an error, never a panic; I/O errors cannot happen
/// when reading from memory.
fn check(bytes: &[u8]) {
    match inspect(bytes) {
        Ok(_)
        | Err(LayoutError::NotALayout(_))
        | Err(LayoutError::Truncated { .. })
        | Err(LayoutError::Corrupt { .. }) => {}
        Err(LayoutError::Io(e)) => panic!("an I/O error from memory: {e}"),
        // Small inputs cannot inflate past the ratio's floor, and nothing sets the stop flag.
        Err(e @ (LayoutError::Inflation(_) | LayoutError::Abandoned)) => panic!("{e}"),
    }
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 2000,
        failure_persistence: Some(Box::new(
            proptest::test_runner::FileFailurePersistence::SourceParallel("proptest-regressions"),
        )),
        ..ProptestConfig::default()
    })]

    #[test]
    fn random_bytes_behind_each_magic(
        magic in 0usize..3,
        body in prop::collection::vec(any::<u8>(), 0..2048),
    ) {
        let mut bytes = match magic {
            0 => super::oasis::MAGIC.to_vec(),
            1 => vec![0x00, 0x06, 0x00, 0x02],
            _ => vec![0x1f, 0x8b, 0x08, 0x00],
        };
        bytes.extend(body);
        check(&bytes);
    }

    #[test]
    fn random_geometry_records_in_a_cell(records in geometry_records()) {
        check(&oasis_cell(&records));
    }

    #[test]
    fn mutated_layouts(
        seed in any::<prop::sample::Index>(),
        mutations in prop::collection::vec(mutation(), 1..8),
    ) {
        let mut bytes = seed.get(seeds()).clone();
        for m in &mutations {
            apply(&mut bytes, m);
        }
        check(&bytes);
    }
}
