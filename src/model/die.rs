//! The die rules of the precheck's first checks, on the facts the upload's reading found
//! (size, origin, seal ring, forbidden layers): what `POST /api/v1/prechecks` refuses unless
//! `force`, and what `precheck-server inspect` tells. The rules' table is [`crate::gf180`].

use super::prechecks::Slot;
use crate::gf180::{self, CHECKED_LAYERS, LayerRule, SlotSize};
use crate::layout::{Die, Layout};

/// Every reason the precheck would refuse `layout` as it is, checked as `slot` (and as
/// chip-on-board with `cob`): its unit, its top cells, then its die's geometry. Empty when it
/// is ready. What `precheck-server inspect` tells.
pub fn layout_problems(layout: &Layout, slot: Slot, cob: bool) -> Vec<String> {
    let mut problems = vec![];
    if !layout.dbu_is(crate::layout::EXPECTED_DBU_MICRONS) {
        problems.push(format!(
            "the database unit is {} µm, but the precheck needs 0.001 µm (1 nm): export the layout again with a 1 nm database unit",
            layout.dbu_microns
        ));
    }
    match layout.top_cells.as_slice() {
        [_] => {}
        [] => problems.push("the layout has no top cell (every cell is placed by another)".into()),
        tops => problems.push(format!(
            "the layout has {} top cells ({}): the precheck needs exactly one",
            tops.len(),
            tops.iter()
                .take(10)
                .map(|t| format!("{t:?}"))
                .collect::<Vec<_>>()
                .join(", ")
        )),
    }
    if let Some(die) = &layout.die {
        problems.extend(die_problems(die, layout.dbu_microns, slot, cob));
    }
    problems
}

/// What `POST /api/v1/prechecks` answers (400) for a layout whose die would fail the first
/// checks with `top` as its top cell, or `None` when it would pass them or its geometry is not
/// known (several top cells, or an upload read before geometry was).
pub fn die_refusal(layout: &Layout, top: &str, slot: Slot, cob: bool) -> Option<String> {
    let die = layout.die.as_ref().filter(|d| d.cell == top)?;
    let problems = die_problems(die, layout.dbu_microns, slot, cob);
    let skip = "(or send \"force\": true to skip the layout checks)";
    match problems.as_slice() {
        [] => None,
        [one] => Some(format!("{one} {skip}")),
        many => {
            let listed: Vec<String> = many
                .iter()
                .enumerate()
                .map(|(i, p)| format!("{}) {p}", i + 1))
                .collect();
            Some(format!(
                "the die would fail {} of the precheck's first checks: {} {skip}",
                many.len(),
                listed.join("; ")
            ))
        }
    }
}

/// The size of `slot`'s die.
pub fn slot_size(slot: Slot) -> &'static SlotSize {
    &gf180::SLOTS[slot as usize]
}

/// Every way `die` would fail the precheck's first geometry checks for `slot`, each as the
/// designer is told it (facts first, then what to do); empty when it would pass them. With
/// `cob` the size is not checked: for chip-on-board the precheck checks the pad mask instead.
pub fn die_problems(die: &Die, dbu_microns: f64, slot: Slot, cob: bool) -> Vec<String> {
    let mut problems = vec![];
    let nm = |v: i64| (v as f64 * dbu_microns * 1000.0).round() as i64;
    match die.bbox {
        None => problems.push(format!(
            "the top cell {:?} holds no shapes: the die is empty",
            die.cell
        )),
        Some(bbox) => {
            let (left, bottom) = (nm(bbox.left), nm(bbox.bottom));
            let (width, height) = (nm(bbox.right) - left, nm(bbox.top) - bottom);
            let size = slot_size(slot);
            let fits = |s: &SlotSize| width == s.width_um * 1000 && height == s.height_um * 1000;
            if !cob && !fits(size) {
                let mut problem = format!(
                    "the die is {} x {} µm, but slot {} needs {} x {} µm",
                    microns(width),
                    microns(height),
                    size.name,
                    size.width_um,
                    size.height_um
                );
                if let Some(other) = gf180::SLOTS.iter().find(|s| fits(s)) {
                    problem.push_str(&format!(
                        "; it matches slot {0}: send \"slot\": \"{0}\"",
                        other.name
                    ));
                }
                problems.push(problem);
            }
            if (left, bottom) != (0, 0) {
                problems.push(format!(
                    "the die's lower-left corner is at ({}, {}) µm; the precheck needs it at (0, 0)",
                    microns(left),
                    microns(bottom)
                ));
            }
        }
    }
    let has = |l: &gf180::CheckedLayer| die.layers.contains(&(l.layer, l.datatype));
    for layer in CHECKED_LAYERS
        .iter()
        .filter(|l| l.rule == LayerRule::Required && !has(l))
    {
        problems.push(format!(
            "no shapes on {} ({}/{}): {}",
            layer.name, layer.layer, layer.datatype, layer.why
        ));
    }
    let forbidden: Vec<String> = CHECKED_LAYERS
        .iter()
        .filter(|l| l.rule == LayerRule::Forbidden && has(l))
        .map(|l| format!("{} ({}/{})", l.name, l.layer, l.datatype))
        .collect();
    if !forbidden.is_empty() {
        problems.push(format!(
            "shapes on {}, which this process does not allow",
            forbidden.join(" and ")
        ));
    }
    problems
}

/// Nanometres as µm for a message: 3932000 as "3932", -10500 as "-10.5".
pub fn microns(nm: i64) -> String {
    let sign = if nm < 0 { "-" } else { "" };
    let (whole, part) = (nm.unsigned_abs() / 1000, nm.unsigned_abs() % 1000);
    if part == 0 {
        format!("{sign}{whole}")
    } else {
        let digits = format!("{part:03}");
        format!("{sign}{whole}.{}", digits.trim_end_matches('0'))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::Rect;

    fn die(bbox: Option<[i64; 4]>, layers: &[(u32, u32)]) -> Die {
        Die {
            cell: "chip_top".into(),
            bbox: bbox.map(|[l, b, r, t]| Rect::new(l, b, r, t)),
            layers: layers.to_vec(),
        }
    }

    const GOOD_LAYERS: &[(u32, u32)] = &[(22, 0), (34, 0), (167, 5)];

    #[test]
    fn the_slot_table_is_the_slots_order() {
        for slot in Slot::ALL {
            assert_eq!(slot_size(slot).name, slot.as_str());
        }
    }

    #[test]
    fn a_die_of_every_slot_passes_and_any_other_size_is_told() {
        for slot in Slot::ALL {
            let s = slot_size(slot);
            let good = die(
                Some([0, 0, s.width_um * 1000, s.height_um * 1000]),
                GOOD_LAYERS,
            );
            assert_eq!(
                die_problems(&good, 0.001, slot, false),
                Vec::<String>::new()
            );
            // The same die in a 10 nm unit, 1/10 of the numbers.
            let coarse = die(
                Some([0, 0, s.width_um * 100, s.height_um * 100]),
                GOOD_LAYERS,
            );
            assert!(
                die_problems(&coarse, 0.01, slot, false).is_empty(),
                "{slot}"
            );
            // One nanometre off is off.
            let off = die(
                Some([0, 0, s.width_um * 1000 + 1, s.height_um * 1000]),
                GOOD_LAYERS,
            );
            let problems = die_problems(&off, 0.001, slot, false);
            assert_eq!(problems.len(), 1, "{problems:?}");
            assert!(problems[0].starts_with("the die is "), "{problems:?}");
        }
    }

    #[test]
    fn refusals_say_the_facts_and_what_to_do() {
        type Case<'a> = (
            Option<[i64; 4]>,
            &'a [(u32, u32)],
            Slot,
            bool,
            &'a [&'a str],
        );
        let table: &[Case] = &[
            (
                Some([0, 0, 100_000, 100_000]),
                GOOD_LAYERS,
                Slot::Full,
                false,
                &["the die is 100 x 100 µm, but slot 1x1 needs 3932 x 5122 µm"],
            ),
            (
                Some([0, 0, 1_936_000, 5_122_000]),
                GOOD_LAYERS,
                Slot::Full,
                false,
                &[
                    "the die is 1936 x 5122 µm, but slot 1x1 needs 3932 x 5122 µm; it matches slot 0p5x1: send \"slot\": \"0p5x1\"",
                ],
            ),
            // With CoB the size is the pad mask's to check.
            (
                Some([0, 0, 100_000, 100_000]),
                GOOD_LAYERS,
                Slot::Full,
                true,
                &[],
            ),
            (
                Some([-10_000, 0, 3_922_000, 5_122_000]),
                GOOD_LAYERS,
                Slot::Full,
                false,
                &["the die's lower-left corner is at (-10, 0) µm; the precheck needs it at (0, 0)"],
            ),
            (
                Some([100_500, 100_000, 4_032_500, 5_222_000]),
                GOOD_LAYERS,
                Slot::Full,
                true,
                &[
                    "the die's lower-left corner is at (100.5, 100) µm; the precheck needs it at (0, 0)",
                ],
            ),
            (
                Some([0, 0, 3_932_000, 5_122_000]),
                &[(22, 0), (34, 0)],
                Slot::Full,
                false,
                &["no shapes on GUARD_RING_MK (167/5): the die needs its seal ring"],
            ),
            (
                Some([0, 0, 3_932_000, 5_122_000]),
                &[(22, 0), (53, 0), (82, 0), (167, 5)],
                Slot::Full,
                false,
                &["shapes on Via5 (82/0) and MetalTop (53/0), which this process does not allow"],
            ),
            (
                Some([0, 0, 3_932_000, 5_122_000]),
                &[(53, 0), (167, 5)],
                Slot::Full,
                false,
                &["shapes on MetalTop (53/0), which this process does not allow"],
            ),
            (
                None,
                &[],
                Slot::Quarter,
                false,
                &[
                    "the top cell \"chip_top\" holds no shapes: the die is empty",
                    "no shapes on GUARD_RING_MK (167/5): the die needs its seal ring",
                ],
            ),
            // Everything at once, in the order the precheck checks them.
            (
                Some([-1, -1, 99_999, 99_999]),
                &[(82, 0)],
                Slot::HalfHeight,
                false,
                &[
                    "the die is 100 x 100 µm, but slot 1x0p5 needs 3932 x 2531 µm",
                    "the die's lower-left corner is at (-0.001, -0.001) µm; the precheck needs it at (0, 0)",
                    "no shapes on GUARD_RING_MK (167/5): the die needs its seal ring",
                    "shapes on Via5 (82/0), which this process does not allow",
                ],
            ),
        ];
        for (bbox, layers, slot, cob, expected) in table {
            let got = die_problems(&die(*bbox, layers), 0.001, *slot, *cob);
            assert_eq!(got, *expected, "{bbox:?} {layers:?} {slot} cob={cob}");
        }
    }

    #[test]
    fn a_refusal_says_every_problem_and_how_to_skip_the_checks() {
        let layout = |die| Layout {
            format: crate::layout::LayoutFormat::Gds,
            dbu_microns: 0.001,
            cells: vec!["chip_top".into()],
            top_cells: vec!["chip_top".into()],
            die,
        };
        let good = die(Some([0, 0, 3_932_000, 5_122_000]), GOOD_LAYERS);
        assert_eq!(
            die_refusal(&layout(Some(good)), "chip_top", Slot::Full, false),
            None
        );
        // Unknown geometry, or another top cell than the one read: nothing to say.
        assert_eq!(
            die_refusal(&layout(None), "chip_top", Slot::Full, false),
            None
        );
        let small = die(Some([0, 0, 100_000, 100_000]), GOOD_LAYERS);
        assert_eq!(
            die_refusal(&layout(Some(small.clone())), "other", Slot::Full, false),
            None
        );
        assert_eq!(
            die_refusal(&layout(Some(small)), "chip_top", Slot::Full, false).unwrap(),
            "the die is 100 x 100 µm, but slot 1x1 needs 3932 x 5122 µm (or send \"force\": true to skip the layout checks)"
        );
        let bad = die(Some([-10_000, 0, 3_922_000, 5_122_000]), &[(53, 0)]);
        assert_eq!(
            die_refusal(&layout(Some(bad)), "chip_top", Slot::Full, false).unwrap(),
            "the die would fail 3 of the precheck's first checks: \
             1) the die's lower-left corner is at (-10, 0) µm; the precheck needs it at (0, 0); \
             2) no shapes on GUARD_RING_MK (167/5): the die needs its seal ring; \
             3) shapes on MetalTop (53/0), which this process does not allow \
             (or send \"force\": true to skip the layout checks)"
        );
    }

    #[test]
    fn a_layouts_problems_are_its_unit_its_top_cells_and_its_die() {
        let good = die(Some([0, 0, 1_936_000, 2_531_000]), GOOD_LAYERS);
        let mut layout = Layout {
            format: crate::layout::LayoutFormat::Oasis,
            dbu_microns: 0.001,
            cells: vec!["chip_top".into()],
            top_cells: vec!["chip_top".into()],
            die: Some(good),
        };
        assert!(layout_problems(&layout, Slot::Quarter, false).is_empty());
        assert_eq!(
            layout_problems(&layout, Slot::Full, false),
            [
                "the die is 1936 x 2531 µm, but slot 1x1 needs 3932 x 5122 µm; it matches slot 0p5x0p5: send \"slot\": \"0p5x0p5\""
            ]
        );
        assert!(layout_problems(&layout, Slot::Full, true).is_empty());
        layout.dbu_microns = 0.01;
        layout.top_cells = vec!["a".into(), "b".into()];
        layout.die = None;
        assert_eq!(
            layout_problems(&layout, Slot::Full, false),
            [
                "the database unit is 0.01 µm, but the precheck needs 0.001 µm (1 nm): export the layout again with a 1 nm database unit",
                "the layout has 2 top cells (\"a\", \"b\"): the precheck needs exactly one",
            ]
        );
        layout.top_cells.clear();
        assert_eq!(
            layout_problems(&layout, Slot::Full, false)[1],
            "the layout has no top cell (every cell is placed by another)"
        );
    }

    #[test]
    fn microns_are_written_short() {
        for (nm, text) in [
            (0, "0"),
            (3_932_000, "3932"),
            (-10_000, "-10"),
            (100_500, "100.5"),
            (1, "0.001"),
            (-1, "-0.001"),
            (1_230, "1.23"),
        ] {
            assert_eq!(microns(nm), text);
        }
    }
}
