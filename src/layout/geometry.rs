//! The geometry the precheck's first checks look at, gathered while a layout is read: each cell's
//! own bounding box and layers, the placements of its children, and at the end the top cell's box
//! through the hierarchy as KLayout's `Cell.bbox()` computes it (docs/layout-geometry.md says
//! where that differs from the obvious answer).
//!
//! Memory grows with the cells and with the distinct (child, rotation, mirror, magnification)
//! placements of each cell, never with the shapes: the union of copies of one box that differ only
//! by where they are is that box moved by the box of the displacements, so every placement of a
//! group adds only its displacement to one box.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use super::{CellKey, LayoutError};

/// At most this many distinct placement groups in a file: a bound on memory for hostile input
/// (a real chip has a few per child cell, one for each orientation it is placed in).
pub const MAX_PLACEMENT_GROUPS: usize = 4_000_000;

/// The most points kept for one path (GDSII's PATH and AREF, OASIS's PATH): the only shapes
/// whose box needs their points.
pub const MAX_POINTS: usize = 1 << 20;

/// At most this many child layers are boxed one by one through placements at angles that are
/// not multiples of 90 degrees ([`Geometry::die`]); past it, the whole boxes are turned (a
/// bound on time for hostile input: a real chip has few such placements).
const MAX_LAYER_PLACEMENTS: u64 = 1 << 22;

/// A box in database units; [`Rect::EMPTY`] holds nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rect {
    pub left: i64,
    pub bottom: i64,
    pub right: i64,
    pub top: i64,
}

impl Rect {
    pub const EMPTY: Rect = Rect {
        left: i64::MAX,
        bottom: i64::MAX,
        right: i64::MIN,
        top: i64::MIN,
    };

    pub fn new(left: i64, bottom: i64, right: i64, top: i64) -> Rect {
        Rect {
            left,
            bottom,
            right,
            top,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.left > self.right || self.bottom > self.top
    }

    pub fn add_point(&mut self, x: i64, y: i64) {
        self.left = self.left.min(x);
        self.bottom = self.bottom.min(y);
        self.right = self.right.max(x);
        self.top = self.top.max(y);
    }

    /// Grows to hold `other` too (an empty one adds nothing).
    pub fn add(&mut self, other: &Rect) {
        if !other.is_empty() {
            self.add_point(other.left, other.bottom);
            self.add_point(other.right, other.top);
        }
    }

    /// The box of `points`.
    pub fn of_points(points: impl IntoIterator<Item = (i64, i64)>) -> Rect {
        let mut r = Rect::EMPTY;
        for (x, y) in points {
            r.add_point(x, y);
        }
        r
    }
}

/// How a placement turns its cell before moving it: mirrored about the x axis first (if
/// `mirror`), then magnified by `mag` and rotated counter-clockwise by `angle` degrees; as
/// GDSII's STRANS, MAG and ANGLE and OASIS's PLACEMENT have it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Linear {
    pub mirror: bool,
    pub angle: f64,
    pub mag: f64,
}

impl Linear {
    pub const IDENTITY: Linear = Linear {
        mirror: false,
        angle: 0.0,
        mag: 1.0,
    };

    /// Equal transformations have equal keys (`-0.0` is `0.0`, an angle is taken modulo 360).
    fn key(&self) -> (bool, u64, u64) {
        let angle = self.angle.rem_euclid(360.0) + 0.0;
        (self.mirror, angle.to_bits(), (self.mag + 0.0).to_bits())
    }

    fn is_identity(&self) -> bool {
        self.key() == Linear::IDENTITY.key()
    }

    /// Whether it turns by a multiple of 90 degrees (then the turned box of a union is the
    /// union of the turned boxes).
    fn is_orthogonal(&self) -> bool {
        let quarters = self.angle / 90.0;
        (quarters - quarters.round()).abs() < 1e-12
    }

    /// The cosine and sine of the angle, exact for multiples of 90 degrees.
    fn cos_sin(&self) -> (f64, f64) {
        let quarters = self.angle / 90.0;
        if (quarters - quarters.round()).abs() < 1e-12 {
            match (quarters.round() as i64).rem_euclid(4) {
                0 => (1.0, 0.0),
                1 => (0.0, 1.0),
                2 => (-1.0, 0.0),
                _ => (0.0, -1.0),
            }
        } else {
            let a = self.angle.to_radians();
            (a.cos(), a.sin())
        }
    }

    /// `rect`'s four corners turned, unrounded: (left, bottom, right, top).
    fn turn(&self, rect: &Rect) -> (f64, f64, f64, f64) {
        let (c, s) = self.cos_sin();
        let (c, s) = (c * self.mag, s * self.mag);
        let mut out = (f64::MAX, f64::MAX, f64::MIN, f64::MIN);
        for (x, y) in [
            (rect.left, rect.bottom),
            (rect.right, rect.bottom),
            (rect.left, rect.top),
            (rect.right, rect.top),
        ] {
            let (x, y) = (x as f64, if self.mirror { -y } else { y } as f64);
            let (tx, ty) = (c * x - s * y, s * x + c * y);
            out = (out.0.min(tx), out.1.min(ty), out.2.max(tx), out.3.max(ty));
        }
        out
    }
}

/// Every placement of one child with one [`Linear`]: the box of their displacements.
struct Group {
    child: CellKey,
    linear: Linear,
    displacements: Rect,
}

/// What one cell holds.
struct CellShapes {
    /// The box of its own shapes (made from `layers` when the cell ends).
    own: Rect,
    /// The box of its own shapes on each layer.
    layers: BTreeMap<(u32, u32), Rect>,
    groups: Vec<Group>,
}

/// The geometry of a file's cells, gathered one cell at a time while it is read.
#[derive(Default)]
pub(super) struct Geometry {
    cells: HashMap<CellKey, CellShapes>,
    current: Option<(CellKey, CellShapes)>,
    /// Where each (child, linear) of the current cell is in its `groups`.
    index: HashMap<(CellKey, (bool, u64, u64)), usize>,
    /// The layer of the current cell's last shapes and their box, not yet in its `layers`
    /// (shapes come in runs on one layer).
    pending: Option<((u32, u32), Rect)>,
    groups: usize,
}

/// The top cell as the checks see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Die {
    /// The top cell's name.
    pub cell: String,
    /// Its box through the hierarchy, in database units; `None` when it holds no shape.
    pub bbox: Option<Rect>,
    /// Every layer/datatype with a shape in it or below it, sorted.
    pub layers: Vec<(u32, u32)>,
}

impl Geometry {
    /// The records that follow belong to `cell` (the previous one, if any, ends).
    pub fn begin(&mut self, cell: CellKey) {
        self.end();
        self.current = Some((
            cell,
            CellShapes {
                own: Rect::EMPTY,
                layers: BTreeMap::new(),
                groups: vec![],
            },
        ));
    }

    /// The current cell (if any) is complete.
    pub fn end(&mut self) {
        self.flush();
        if let Some((key, mut cell)) = self.current.take() {
            cell.own = cell.layers.values().fold(Rect::EMPTY, |mut own, rect| {
                own.add(rect);
                own
            });
            // A cell defined twice is refused by the cell graph; the first definition stays.
            self.cells.entry(key).or_insert(cell);
        }
        self.index.clear();
    }

    /// A shape of the current cell on `layer`, within `rect`.
    pub fn shape(&mut self, layer: (u32, u32), rect: Rect) {
        if self.current.is_none() || rect.is_empty() {
            return;
        }
        match &mut self.pending {
            Some((last, pending)) if *last == layer => pending.add(&rect),
            _ => {
                self.flush();
                self.pending = Some((layer, rect));
            }
        }
    }

    /// Puts the pending shapes' box into the current cell's layers.
    fn flush(&mut self) {
        if let (Some((layer, rect)), Some((_, cell))) = (self.pending.take(), &mut self.current) {
            cell.layers.entry(layer).or_insert(Rect::EMPTY).add(&rect);
        }
    }

    /// Copies of `child` turned by `linear` and moved by displacements whose box is
    /// `displacements` (one point for a single placement, an array's corners for an array).
    pub fn place(
        &mut self,
        child: CellKey,
        linear: Linear,
        displacements: Rect,
        format: &'static str,
    ) -> Result<(), LayoutError> {
        let Some((_, cell)) = &mut self.current else {
            return Ok(());
        };
        if displacements.is_empty() {
            return Ok(());
        }
        let key = (child, linear.key());
        if let Some(&i) = self.index.get(&key) {
            cell.groups[i].displacements.add(&displacements);
            return Ok(());
        }
        if self.groups >= MAX_PLACEMENT_GROUPS {
            return Err(LayoutError::Corrupt {
                format,
                detail: format!(
                    "more than {MAX_PLACEMENT_GROUPS} placements that differ in cell, rotation, mirror or magnification"
                ),
            });
        }
        self.groups += 1;
        self.index.insert(key.clone(), cell.groups.len());
        cell.groups.push(Group {
            child: key.0,
            linear,
            displacements,
        });
        Ok(())
    }

    /// The geometry of the cell named `top` through its hierarchy; `name` resolves a key to the
    /// cell's name. A cell placed but never defined (or by a reference number the file never
    /// names) is empty, as KLayout makes it a ghost cell; a cell that places itself, directly or
    /// through others, is corrupt (KLayout cannot read it).
    ///
    /// KLayout's box of a cell is the union of its boxes on each layer, and a placement turned
    /// by an angle that is not a multiple of 90 degrees turns each of its child's layer boxes,
    /// not the child's whole box (which would reach farther): below such placements the boxes
    /// are kept by layer.
    pub fn die(
        mut self,
        top: &str,
        name: impl Fn(&CellKey) -> Option<String>,
        format: &'static str,
    ) -> Result<Die, LayoutError> {
        self.end();
        let mut by_name: HashMap<String, CellShapes> = HashMap::with_capacity(self.cells.len());
        for (key, cell) in self.cells {
            if let Some(cell_name) = name(&key) {
                by_name.insert(cell_name, cell);
            }
        }
        // Unnamed children are ghosts: a name no cell can have.
        let name = |key: &CellKey| name(key).unwrap_or_default();
        let mut order: Vec<String> = vec![];
        let mut done: HashSet<String> = HashSet::new();
        let mut visiting: HashSet<String> = HashSet::new();
        let mut layers = BTreeSet::new();
        // Depth first without recursion (a hostile file may nest a million deep): every cell
        // below `top`, each after every cell it places.
        let mut stack: Vec<(String, bool)> = vec![(top.to_string(), false)];
        while let Some((cell_name, children_done)) = stack.pop() {
            let Some(cell) = by_name.get(&cell_name) else {
                continue;
            };
            if children_done {
                visiting.remove(&cell_name);
                done.insert(cell_name.clone());
                order.push(cell_name);
                continue;
            }
            if done.contains(&cell_name) {
                continue;
            }
            layers.extend(cell.layers.keys().copied());
            visiting.insert(cell_name.clone());
            stack.push((cell_name.clone(), true));
            for group in &cell.groups {
                let child = name(&group.child);
                if visiting.contains(&child) {
                    return Err(LayoutError::Corrupt {
                        format,
                        detail: format!(
                            "the cell {child:?} is placed inside itself (through {cell_name:?})"
                        ),
                    });
                }
                if !done.contains(&child) {
                    stack.push((child, false));
                }
            }
        }
        let boxes =
            boxes(&order, &by_name, &name).unwrap_or_else(|| whole_boxes(&order, &by_name, &name));
        let bbox = boxes.get(top).copied().filter(|b| !b.is_empty());
        Ok(Die {
            cell: top.to_string(),
            bbox,
            layers: layers.into_iter().collect(),
        })
    }
}

/// Every cell's box, the children's turned as whole boxes: KLayout's box where every turn is
/// by a multiple of 90 degrees. `order` has each cell after the cells it places.
fn whole_boxes<'a>(
    order: &'a [String],
    cells: &HashMap<String, CellShapes>,
    name: &impl Fn(&CellKey) -> String,
) -> HashMap<&'a str, Rect> {
    let mut boxes: HashMap<&str, Rect> = HashMap::with_capacity(order.len());
    for cell_name in order {
        let cell = &cells[cell_name];
        let mut bbox = cell.own;
        for group in &cell.groups {
            if let Some(child) = boxes.get(name(&group.child).as_str()) {
                bbox.add(&placed(child, group));
            }
        }
        boxes.insert(cell_name, bbox);
    }
    boxes
}

/// Every cell's box as KLayout makes it, with the boxes by layer of the cells below a turn
/// that is not a multiple of 90 degrees; `None` past [`MAX_LAYER_PLACEMENTS`].
fn boxes<'a>(
    order: &'a [String],
    cells: &HashMap<String, CellShapes>,
    name: &impl Fn(&CellKey) -> String,
) -> Option<HashMap<&'a str, Rect>> {
    // The cells that need their boxes by layer: below such a turn. Parents come before their
    // children in the reverse of `order`.
    let mut by_layer: HashSet<String> = HashSet::new();
    for cell_name in order.iter().rev() {
        let marked = by_layer.contains(cell_name);
        for group in &cells[cell_name].groups {
            if marked || !group.linear.is_orthogonal() {
                by_layer.insert(name(&group.child));
            }
        }
    }
    let mut boxes: HashMap<&str, Rect> = HashMap::with_capacity(order.len());
    let mut layer_boxes: HashMap<&str, BTreeMap<(u32, u32), Rect>> = HashMap::new();
    let mut work = 0u64;
    for cell_name in order {
        let cell = &cells[cell_name];
        let mut bbox = cell.own;
        let mut own_layers = by_layer.contains(cell_name).then(|| cell.layers.clone());
        for group in &cell.groups {
            let child = name(&group.child);
            let orthogonal = group.linear.is_orthogonal();
            if let Some(child_layers) = layer_boxes.get(child.as_str())
                && (!orthogonal || own_layers.is_some())
            {
                work += child_layers.len() as u64;
                if work > MAX_LAYER_PLACEMENTS {
                    return None;
                }
                for (layer, rect) in child_layers {
                    let rect = placed(rect, group);
                    if !orthogonal {
                        bbox.add(&rect);
                    }
                    if let Some(own) = &mut own_layers {
                        own.entry(*layer).or_insert(Rect::EMPTY).add(&rect);
                    }
                }
            }
            if orthogonal && let Some(child) = boxes.get(child.as_str()) {
                bbox.add(&placed(child, group));
            }
        }
        if let Some(own) = own_layers {
            layer_boxes.insert(cell_name, own);
        }
        boxes.insert(cell_name, bbox);
    }
    Some(boxes)
}

/// The box of a group's copies of a child whose box is `child`: the turned box, moved by the
/// displacements' extremes, each coordinate rounded as KLayout rounds a transformed point (half
/// away from zero; rounding is monotonic, so the extremes of the rounded copies are the rounded
/// extremes).
fn placed(child: &Rect, group: &Group) -> Rect {
    if child.is_empty() {
        return Rect::EMPTY;
    }
    let d = &group.displacements;
    if group.linear.is_identity() {
        // Saturating: an OASIS magnification may be any real, and its box is then saturated.
        return Rect::new(
            child.left.saturating_add(d.left),
            child.bottom.saturating_add(d.bottom),
            child.right.saturating_add(d.right),
            child.top.saturating_add(d.top),
        );
    }
    let (l, b, r, t) = group.linear.turn(child);
    Rect::new(
        (l + d.left as f64).round() as i64,
        (b + d.bottom as f64).round() as i64,
        (r + d.right as f64).round() as i64,
        (t + d.top as f64).round() as i64,
    )
}

/// The corners of an array's displacements: `origin` plus 0 to `columns - 1` steps of `column`
/// and 0 to `rows - 1` steps of `row`.
pub fn lattice(
    origin: (i64, i64),
    columns: u64,
    column: (i64, i64),
    rows: u64,
    row: (i64, i64),
) -> Rect {
    let (c, r) = (
        columns.saturating_sub(1) as i64,
        rows.saturating_sub(1) as i64,
    );
    let mut out = Rect::EMPTY;
    for (i, j) in [(0, 0), (c, 0), (0, r), (c, r)] {
        out.add_point(
            origin.0 + i * column.0 + j * row.0,
            origin.1 + i * column.1 + j * row.1,
        );
    }
    out
}

/// KLayout's tolerance for a direction being axis-parallel or diagonal.
const EPSILON: f64 = 1e-10;

/// The box of a path of `width` through `points`, its start extended by `begin` and its end by
/// `end`, as KLayout computes a path's box: the points of its outline with square ends (round
/// ends have the same box), where each joint is the meeting of the two offset edges, cut off
/// when that would reach farther than the width.
pub fn path_box(points: &[(i64, i64)], width: i64, begin: i64, end: i64) -> Rect {
    let points = real_points(points);
    let mut rect = Rect::EMPTY;
    let width = width.abs();
    shifted(&points, begin, end, width, true, &mut rect);
    let reversed: Vec<(i64, i64)> = points.iter().rev().copied().collect();
    shifted(&reversed, end, begin, width, false, &mut rect);
    rect
}

/// The points without repeats and without points inside a straight run.
fn real_points(points: &[(i64, i64)]) -> Vec<(i64, i64)> {
    let mut out: Vec<(i64, i64)> = Vec::with_capacity(points.len());
    let mut i = 0;
    while i < points.len() {
        out.push(points[i]);
        let last = points[i];
        i += 1;
        while i < points.len() && points[i] == last {
            i += 1;
        }
        if i < points.len() {
            // Skip points that lie on the segment from `last` to a later point.
            let mut candidate = i;
            let mut next = i + 1;
            loop {
                while next < points.len() && points[next] == points[candidate] {
                    next += 1;
                }
                if next >= points.len() || !on_segment(last, points[next], points[candidate]) {
                    break;
                }
                candidate = next;
                next += 1;
            }
            i = candidate;
        }
    }
    out
}

/// Whether `p` lies on the segment from `a` to `b`, ends included.
fn on_segment(a: (i64, i64), b: (i64, i64), p: (i64, i64)) -> bool {
    let (ax, ay, bx, by, px, py) = (
        a.0 as i128,
        a.1 as i128,
        b.0 as i128,
        b.1 as i128,
        p.0 as i128,
        p.1 as i128,
    );
    if a == b {
        return p == a;
    }
    let cross = (bx - ax) * (py - ay) - (by - ay) * (px - ax);
    let dot = (px - ax) * (bx - ax) + (py - ay) * (by - ay);
    let len = (bx - ax) * (bx - ax) + (by - ay) * (by - ay);
    cross == 0 && dot >= 0 && dot <= len
}

/// `v` times `d`, with `d` rounded to the grid when `v` is axis-parallel or diagonal, so that
/// such outlines stay on the grid (as KLayout does).
fn grid_scaled(v: (f64, f64), d: f64) -> (f64, f64) {
    let k = if v.0.abs() < EPSILON || v.1.abs() < EPSILON {
        d.round()
    } else if (v.0.abs() - v.1.abs()).abs() < EPSILON {
        std::f64::consts::SQRT_2 * (d * std::f64::consts::FRAC_1_SQRT_2).round()
    } else {
        d
    };
    (v.0 * k, v.1 * k)
}

fn cross(a: (f64, f64), b: (f64, f64)) -> f64 {
    a.0 * b.1 - a.1 * b.0
}

/// The points of one side of a path's outline (its square ends included), added to `rect`.
fn shifted(
    points: &[(i64, i64)],
    start: i64,
    end: i64,
    width: i64,
    forward: bool,
    rect: &mut Rect,
) {
    let Some(&first) = points.first() else {
        return;
    };
    let half = width as f64 * 0.5;
    let mut add = |p: (i64, i64), v: (f64, f64)| {
        rect.add_point(p.0 + v.0.round() as i64, p.1 + v.1.round() as i64);
    };
    if points.len() == 1 {
        // One point: a segment of no length pointing along x.
        let ed = (if forward { 1.0 } else { -1.0 }, 0.0);
        let nd = (-ed.1, ed.0);
        add(
            first,
            (
                ed.0 * -(start as f64) + nd.0 * half,
                ed.1 * -(start as f64) + nd.1 * half,
            ),
        );
        add(
            first,
            (
                ed.0 * end as f64 + nd.0 * half,
                ed.1 * end as f64 + nd.1 * half,
            ),
        );
        return;
    }
    let unit = |a: (i64, i64), b: (i64, i64)| {
        let (dx, dy) = ((b.0 - a.0) as f64, (b.1 - a.1) as f64);
        let len = dx.hypot(dy);
        (dx / len, dy / len)
    };
    let mut p = 0;
    for pp in 1..points.len() {
        let ed = unit(points[p], points[pp]);
        let nd = grid_scaled((-ed.1, ed.0), half);
        if pp == 1 {
            let back = grid_scaled(ed, -(start as f64));
            add(points[p], (back.0 + nd.0, back.1 + nd.1));
        }
        if pp + 1 == points.len() {
            let ahead = grid_scaled(ed, end as f64);
            add(points[pp], (ahead.0 + nd.0, ahead.1 + nd.1));
            break;
        }
        let at = points[pp];
        let eed = unit(at, points[pp + 1]);
        let nnd = grid_scaled((-eed.1, eed.0), half);
        let l1max = nd.0.hypot(nd.1);
        let l2max = nnd.0.hypot(nnd.1);
        let dist = |a: (i64, i64), b: (i64, i64)| ((b.0 - a.0) as f64).hypot((b.1 - a.1) as f64);
        let l1min = -dist(points[p], at) - l1max;
        let l2min = -dist(points[pp + 1], at) - l2max;
        let dv = cross(ed, eed);
        if dv.abs() > EPSILON {
            let diff = (nnd.0 - nd.0, nnd.1 - nd.1);
            let l1 = cross(diff, eed) / dv;
            let l2 = cross((-diff.0, -diff.1), ed) / dv;
            if (l1 < -EPSILON) != (l2 < -EPSILON) {
                add(at, nd);
                add(at, nnd);
            } else if l1 < l1min - EPSILON || l2 < l2min - EPSILON {
                add(at, nd);
                add(at, (0.0, 0.0));
                add(at, nnd);
            } else if l1 < l1max + EPSILON && l2 < l2max + EPSILON {
                add(at, (nd.0 + ed.0 * l1, nd.1 + ed.1 * l1));
            } else {
                let (a, b) = (l1max.min(l1), l2max.min(l2));
                add(at, (nd.0 + ed.0 * a, nd.1 + ed.1 * a));
                add(at, (nnd.0 - eed.0 * b, nnd.1 - eed.1 * b));
            }
            p = pp;
        } else if ed.0 * eed.0 + ed.1 * eed.1 < -EPSILON {
            // The path turns back on itself.
            let a = grid_scaled(ed, half);
            let b = grid_scaled(eed, half);
            add(at, (nd.0 + a.0, nd.1 + a.1));
            add(at, (nnd.0 - b.0, nnd.1 - b.1));
            p = pp;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(name: &str) -> CellKey {
        CellKey::Name(name.into())
    }

    fn resolve(key: &CellKey) -> Option<String> {
        match key {
            CellKey::Name(n) => Some(n.clone()),
            CellKey::Ref(_) => None,
        }
    }

    fn point(x: i64, y: i64) -> Rect {
        Rect::new(x, y, x, y)
    }

    #[test]
    fn paths_as_klayout_boxes_them() {
        // Straight, flush ends: the width across, nothing along.
        assert_eq!(
            path_box(&[(0, 0), (100, 0)], 10, 0, 0),
            Rect::new(0, -5, 100, 5)
        );
        // Extended ends reach past the points.
        assert_eq!(
            path_box(&[(0, 0), (100, 0)], 10, 5, 7),
            Rect::new(-5, -5, 107, 5)
        );
        // A right angle: the outer corner is the meeting of the offset edges.
        assert_eq!(
            path_box(&[(0, 0), (100, 0), (100, 100)], 20, 0, 0),
            Rect::new(0, -10, 110, 100)
        );
        // Repeated and collinear points change nothing.
        assert_eq!(
            path_box(&[(0, 0), (0, 0), (50, 0), (100, 0), (100, 100)], 20, 0, 0),
            Rect::new(0, -10, 110, 100)
        );
        // One point: a square of the width (with extensions) around it.
        assert_eq!(path_box(&[(10, 10)], 20, 10, 10), Rect::new(0, 0, 20, 20));
        // A negative width is the width (GDSII's absolute width).
        assert_eq!(
            path_box(&[(0, 0), (100, 0)], -10, 0, 0),
            Rect::new(0, -5, 100, 5)
        );
        // A sharp turn is cut off at the width instead of reaching to the miter's point.
        let sharp = path_box(&[(0, 0), (1000, 0), (0, 10)], 100, 0, 0);
        assert!(sharp.right <= 1000 + 100, "{sharp:?}");
        // Turning straight back.
        assert_eq!(
            path_box(&[(0, 0), (100, 0), (50, 0)], 10, 0, 0),
            Rect::new(0, -5, 105, 5)
        );
        // A diagonal: its offsets stay on the grid.
        let diagonal = path_box(&[(0, 0), (100, 100)], 20, 0, 0);
        assert_eq!(diagonal, Rect::new(-7, -7, 107, 107));
        assert_eq!(path_box(&[], 10, 0, 0), Rect::EMPTY);
    }

    #[test]
    fn boxes_through_turned_and_arrayed_placements() {
        let mut g = Geometry::default();
        g.begin(key("leaf"));
        g.shape((1, 0), Rect::new(0, 0, 10, 20));
        g.begin(key("top"));
        // Rotated 90: (0,0,10,20) turns to (-20,0,0,10), moved by (100, 100).
        let r90 = Linear {
            angle: 90.0,
            ..Linear::IDENTITY
        };
        g.place(key("leaf"), r90, point(100, 100), "GDSII").unwrap();
        // Mirrored: y flips to (0,-20,10,0); an array of 3 x 2 steps (100, 0) and (0, 100).
        let m = Linear {
            mirror: true,
            ..Linear::IDENTITY
        };
        let array = lattice((-50, -50), 3, (100, 0), 2, (0, 100));
        assert_eq!(array, Rect::new(-50, -50, 150, 50));
        g.place(key("leaf"), m, array, "GDSII").unwrap();
        // Magnified 3 and rotated 180: (-30,-60,0,0), at (0, 0).
        let big = Linear {
            angle: 180.0,
            mag: 3.0,
            mirror: false,
        };
        g.place(key("leaf"), big, point(0, 0), "GDSII").unwrap();
        g.place(key("ghost"), Linear::IDENTITY, point(1000, 1000), "GDSII")
            .unwrap();
        g.shape((167, 5), Rect::new(5, 5, 6, 6));
        let die = g.die("top", resolve, "GDSII").unwrap();
        assert_eq!(die.bbox, Some(Rect::new(-50, -70, 160, 110)));
        assert_eq!(die.layers, [(1, 0), (167, 5)]);
    }

    #[test]
    fn an_arbitrary_angle_boxes_the_turned_corners() {
        let mut g = Geometry::default();
        g.begin(key("leaf"));
        g.shape((1, 0), Rect::new(0, 0, 100, 100));
        g.begin(key("top"));
        let turned = Linear {
            angle: 45.0,
            ..Linear::IDENTITY
        };
        g.place(key("leaf"), turned, point(0, 0), "GDSII").unwrap();
        let die = g.die("top", resolve, "GDSII").unwrap();
        // Corners (0,0), (70.7,70.7), (-70.7,70.7), (0,141.4).
        assert_eq!(die.bbox, Some(Rect::new(-71, 0, 71, 141)));
    }

    #[test]
    fn an_arbitrary_angle_turns_each_layers_box() {
        // Two layers on a diagonal: turned by 45 degrees, each one's box is narrow, the whole
        // box turned would be wide.
        let mut g = Geometry::default();
        g.begin(key("leaf"));
        g.shape((1, 0), Rect::new(0, 0, 10, 10));
        g.shape((2, 0), Rect::new(100, 100, 110, 110));
        g.shape((1, 0), Rect::new(5, 5, 6, 6));
        g.begin(key("mid"));
        let turned = Linear {
            angle: 45.0,
            ..Linear::IDENTITY
        };
        g.place(key("leaf"), turned, point(0, 0), "GDSII").unwrap();
        g.begin(key("top"));
        let r90 = Linear {
            angle: 90.0,
            ..Linear::IDENTITY
        };
        g.place(key("mid"), r90, point(1000, 0), "GDSII").unwrap();
        let die = g.die("top", resolve, "GDSII").unwrap();
        // Layer 1 turned: x from -7 to 7, y from 0 to 14; layer 2: x -7..7, y 141..156; turned
        // again by 90 and moved by 1000: x from 1000 - 156 to 1000, y from -7 to 7.
        assert_eq!(die.bbox, Some(Rect::new(844, -7, 1000, 7)));
        assert_eq!(die.layers, [(1, 0), (2, 0)]);
    }

    #[test]
    fn empty_cells_ghosts_and_cycles() {
        let mut g = Geometry::default();
        g.begin(key("top"));
        g.place(key("empty"), Linear::IDENTITY, point(5, 5), "GDSII")
            .unwrap();
        g.begin(key("empty"));
        let die = g.die("top", resolve, "GDSII").unwrap();
        assert_eq!(die.bbox, None);
        assert!(die.layers.is_empty());

        let mut g = Geometry::default();
        g.begin(key("a"));
        g.shape((1, 0), Rect::new(0, 0, 1, 1));
        g.place(key("b"), Linear::IDENTITY, point(0, 0), "GDSII")
            .unwrap();
        g.begin(key("b"));
        g.place(key("a"), Linear::IDENTITY, point(0, 0), "GDSII")
            .unwrap();
        let e = g.die("a", resolve, "GDSII").unwrap_err().to_string();
        assert_eq!(
            e,
            "corrupt GDSII: the cell \"a\" is placed inside itself (through \"b\")"
        );
    }

    #[test]
    fn a_deep_chain_needs_no_deep_stack() {
        let mut g = Geometry::default();
        let n = 200_000;
        for i in 0..n {
            g.begin(key(&format!("c{i}")));
            if i == 0 {
                g.shape((1, 0), Rect::new(0, 0, 1, 1));
            } else {
                g.place(
                    key(&format!("c{}", i - 1)),
                    Linear::IDENTITY,
                    point(1, 0),
                    "GDSII",
                )
                .unwrap();
            }
        }
        let die = g.die(&format!("c{}", n - 1), resolve, "GDSII").unwrap();
        assert_eq!(die.bbox, Some(Rect::new(n - 1, 0, n, 1)));
    }

    #[test]
    fn placements_differing_only_in_place_share_one_group() {
        let mut g = Geometry::default();
        g.begin(key("top"));
        for i in 0..1000 {
            g.place(key("leaf"), Linear::IDENTITY, point(i, -i), "GDSII")
                .unwrap();
        }
        assert_eq!(g.groups, 1);
    }
}
