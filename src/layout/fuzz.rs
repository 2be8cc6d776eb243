//! Malformed input never panics: random bytes behind each format's magic, and layouts
//! with bytes flipped, inserted, removed or cut short. Each property runs a fixed number of
//! cases (`PROPTEST_CASES` raises it); proptest keeps every failing case it finds in
//! `proptest-regressions/`, which is committed, so each one is tried again on every run.

use proptest::prelude::*;

use super::{LayoutError, inspect};

/// Layouts of each format: dies as the writer makes them, a hierarchy with two top cells, and
/// the real layouts in ../shared/fixtures/gds where that folder is.
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
