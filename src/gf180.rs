//! The gf180mcu precheck's facts about a die, in one table: the slots and their sizes, and the
//! layers its first checks look at. The server checks a layout against them at
//! `POST /api/v1/prechecks` and in `precheck-server inspect`; the layout writer makes its test
//! dies from them. Their source is the wafer.space precheck (docs/layout-geometry.md, "The
//! rules and where they come from").

/// A slot of the shuttle and its die size in µm, seal ring included.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SlotSize {
    /// The name the precheck's `--slot` takes.
    pub name: &'static str,
    pub width_um: i64,
    pub height_um: i64,
}

/// Every slot, the default (`1x1`) first. Half sizes are (full - 60 µm of saw street) / 2.
pub const SLOTS: [SlotSize; 4] = [
    SlotSize {
        name: "1x1",
        width_um: 3932,
        height_um: 5122,
    },
    SlotSize {
        name: "0p5x1",
        width_um: 1936,
        height_um: 5122,
    },
    SlotSize {
        name: "1x0p5",
        width_um: 3932,
        height_um: 2531,
    },
    SlotSize {
        name: "0p5x0p5",
        width_um: 1936,
        height_um: 2531,
    },
];

/// What the first checks require of a layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LayerRule {
    /// The die must have shapes on it.
    Required,
    /// The die must have none.
    Forbidden,
}

/// A layer the first checks look at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CheckedLayer {
    pub name: &'static str,
    pub layer: u32,
    pub datatype: u32,
    pub rule: LayerRule,
    /// Why, as a designer would be told.
    pub why: &'static str,
}

pub const GUARD_RING_MK: CheckedLayer = CheckedLayer {
    name: "GUARD_RING_MK",
    layer: 167,
    datatype: 5,
    rule: LayerRule::Required,
    why: "the die needs its seal ring",
};

pub const VIA5: CheckedLayer = CheckedLayer {
    name: "Via5",
    layer: 82,
    datatype: 0,
    rule: LayerRule::Forbidden,
    why: "this process does not allow",
};

pub const METAL_TOP: CheckedLayer = CheckedLayer {
    name: "MetalTop",
    layer: 53,
    datatype: 0,
    rule: LayerRule::Forbidden,
    why: "this process does not allow",
};

/// The layers the first checks look at, in the order their refusals are told.
pub const CHECKED_LAYERS: [CheckedLayer; 3] = [GUARD_RING_MK, VIA5, METAL_TOP];

/// The cells a chip-on-board die places: its ID step needs them (`--cob`).
pub const COB_ID_CELLS: [&str; 3] = [
    "gf180mcu_ws_ip__qrcode_id",
    "gf180mcu_ws_ip__shuttle_id",
    "gf180mcu_ws_ip__project_id",
];
