# One step of the test image's precheck, run by precheck.py in KLayout:
#
#     klayout -b -r precheck_step.py -rd config=CONFIG.json -rd result=RESULT.json
#
# CONFIG names the task and its inputs (`task`, `gds`, `top`, and per task `out`, `slot`, `id`,
# `cob`). The step prints what it finds and writes RESULT: `{"metrics": {...}, "error": null}`,
# or an `error` sentence when the layout fails the check. KLayout's exit code says only whether
# the script ran.

import json
import traceback

import pya

# Slot sizes in µm, the 26 µm seal ring included: (3880 x 5070 of user area) + 2 x 26; the
# half sizes are (full - 60 µm of saw street) / 2.
SLOT_SIZES = {
    "1x1": (3932, 5122),
    "0p5x1": (1936, 5122),
    "1x0p5": (3932, 2531),
    "0p5x0p5": (1936, 2531),
}
DBU = 0.001
SEAL_RING = ("GUARD_RING_MK", 167, 5)
FORBIDDEN = [("Via5", 82, 0), ("MetalTop", 53, 0)]
DUMMY_FILL_DATATYPE = 4
ID_CELLS = ["gf180mcu_ws_ip__qrcode_id", "gf180mcu_ws_ip__shuttle_id", "gf180mcu_ws_ip__project_id"]
ID_LAYER = (81, 0)  # Metal5


class CheckFailed(Exception):
    pass


def um(value):
    """A length in µm as the log shows it: 3932, 1936.5, 0.23."""
    return f"{value:.3f}".rstrip("0").rstrip(".")


def load(path):
    layout = pya.Layout()
    try:
        layout.read(path)
    except RuntimeError as e:
        raise CheckFailed(f"Cannot read the layout {path}: {e}")
    return layout


def the_top(layout, top):
    cell = layout.cell(top)
    if cell is None:
        raise CheckFailed(f"No cell '{top}' in the layout.")
    return cell


def count_shapes(cell, layer_index, stop_at=None):
    it = cell.begin_shapes_rec(layer_index)
    n = 0
    while not it.at_end():
        n += 1
        if stop_at is not None and n >= stop_at:
            break
        it.next()
    return n


def layer_shapes(layout, top, layer, datatype, stop_at=None):
    index = layout.find_layer(layer, datatype)
    return 0 if index is None else count_shapes(top, index, stop_at)


def sniff(path):
    with open(path, "rb") as f:
        head = f.read(16)
    if head.startswith(b"\x1f\x8b"):
        return "gzip'd GDSII"
    if head.startswith(b"%SEMI-OASIS"):
        return "OASIS"
    return "GDSII"


def task_read(config):
    source = config["gds"]
    print(f"Reading {source} ({sniff(source)})…")
    layout = load(source)
    moved = []
    for index in list(layout.layer_indexes()):
        info = layout.get_info(index)
        if info.datatype != DUMMY_FILL_DATATYPE:
            continue
        target = layout.find_layer(info.layer, 0)
        if target is None:
            target = layout.layer(info.layer, 0)
        layout.move_layer(index, target)
        layout.delete_layer(index)
        moved.append(f"{info.layer}/{DUMMY_FILL_DATATYPE}")
    if moved:
        print(f"Dummy fill mapped to datatype 0: {', '.join(moved)}")
    tops = [c.name for c in layout.top_cells()]
    print(f"{layout.cells()} cell(s), top-level cell(s): {', '.join(tops) or 'none'}; "
          f"database unit {layout.dbu!r} µm")
    layout.write(config["out"])
    print(f"Wrote {config['out']}")
    return {"design__cell__count": layout.cells(), "design__top_cell__count": len(tops)}


def task_top(config):
    layout = load(config["gds"])
    top = config["top"]
    tops = [c.name for c in layout.top_cells()]
    if not tops:
        raise CheckFailed("No top-level cell in the layout.")
    if len(tops) > 1:
        raise CheckFailed(f"More than one top-level cell in the layout: {len(tops)} "
                          f"({', '.join(sorted(tops))}); it must have only '{top}'.")
    if tops[0] != top:
        raise CheckFailed(f"The top-level cell is '{tops[0]}', not '{top}' as the design name "
                          "(--top) says.")
    print(f"Design name '{top}' matches the top-level cell.")
    return {}


def task_size(config):
    layout = load(config["gds"])
    top = the_top(layout, config["top"])
    box = top.dbbox()
    if top.bbox().empty():
        raise CheckFailed(f"The top-level cell '{config['top']}' is empty.")
    if box.p1 != pya.DPoint(0, 0):
        raise CheckFailed(f"The layout's origin is not at (0, 0): the lower left corner of the "
                          f"top-level cell is at ({um(box.left)}, {um(box.bottom)}) µm.")
    # Exactly 0.001 µm, but for the rounding of a unit stored as a real number: KLayout reads
    # the unit of its own OASIS files as 0.0009999999999999998.
    if abs(layout.dbu - DBU) > 1e-12:
        raise CheckFailed(f"The database unit is {layout.dbu!r} µm, not {DBU} µm.")
    slot = config["slot"]
    want_w, want_h = SLOT_SIZES[slot]
    width, height = box.width(), box.height()
    print(f"Layout size: {um(width)} x {um(height)} µm")
    print(f"Slot {slot}: {want_w} x {want_h} µm")
    if top.bbox().width() != round(want_w / DBU) or top.bbox().height() != round(want_h / DBU):
        raise CheckFailed(f"The layout is {um(width)} x {um(height)} µm, but the slot {slot} is "
                          f"{want_w} x {want_h} µm (seal ring included).")
    print(f"The layout's size matches the slot {slot}.")
    return {"design__die__bbox": f"0 0 {um(width)} {um(height)}"}


def task_layers(config):
    layout = load(config["gds"])
    top = the_top(layout, config["top"])
    problems = []
    name, layer, datatype = SEAL_RING
    seal = layer_shapes(layout, top, layer, datatype, stop_at=1)
    if seal:
        print(f"Seal ring: shapes on {name} ({layer}/{datatype}).")
    else:
        problems.append(f"No seal ring: there are no shapes on {name} ({layer}/{datatype}).")
    metrics = {}
    for name, layer, datatype in FORBIDDEN:
        n = layer_shapes(layout, top, layer, datatype)
        metrics[f"design__forbidden_layer__count__layer:{name}"] = n
        if n:
            problems.append(f"{n} shape(s) on {name} ({layer}/{datatype}), a layer this process "
                            "does not allow.")
        else:
            print(f"Nothing on {name} ({layer}/{datatype}).")
    if problems:
        raise CheckFailed("\n".join(problems))
    return metrics


def task_id(config):
    layout = load(config["gds"])
    top = the_top(layout, config["top"])
    placed = {layout.cell(i).name for i in top.called_cells()}
    missing = []
    for name in ID_CELLS:
        if layout.cell(name) is None:
            missing.append(f"{name} (not in the layout)")
        elif name not in placed:
            missing.append(f"{name} (not placed in '{config['top']}')")
    die_id = config["id"]
    if missing and config["cob"]:
        raise CheckFailed("With --cob the die must place the ID cells: " + ", ".join(missing) + ".")
    if missing:
        print("No ID cells in the layout: the ID is placed with the shuttle's frame.")
    else:
        draw_id(layout, die_id)
        print(f"Drew the ID {die_id} into {ID_CELLS[0]} and {ID_CELLS[2]}.")
    layout.write(config["out"])
    return {}


def draw_id(layout, die_id):
    """The ID cells' content: the ID's bits as squares (a stand-in for the QR code) and the ID
    as a text, each filling the placeholder it replaces."""
    layer = layout.layer(*ID_LAYER)
    qr = layout.cell(ID_CELLS[0])
    area = qr.bbox()
    if area.empty() or area.width() < 8000 or area.height() < 8000:
        area = pya.Box(0, 0, 80000, 80000)
    qr.clear_shapes()
    pitch = min(area.width(), area.height()) // 8
    for row, char in enumerate(die_id.encode("ascii", "replace")[:8]):
        for bit in range(8):
            if char >> (7 - bit) & 1:
                x = area.left + bit * pitch
                y = area.top - (row + 1) * pitch
                qr.shapes(layer).insert(pya.Box(x, y, x + pitch * 3 // 4, y + pitch * 3 // 4))
    project = layout.cell(ID_CELLS[2])
    where = project.bbox()
    project.clear_shapes()
    origin = where.p1 if not where.empty() else pya.Point(0, 0)
    project.shapes(layer).insert(pya.Text(die_id, pya.Trans(origin)))


def task_render(config):
    view = pya.LayoutView()
    view.load_layout(config["gds"], True)
    view.max_hier()
    view.zoom_fit()
    layout = view.cellview(0).layout()
    box = layout.cell(config["top"]).dbbox() if layout.cell(config["top"]) else None
    width = 1000
    height = 1000 if not box or box.width() <= 0 else max(100, int(width * box.height() / box.width()))
    view.save_image(config["out"], width, height)
    print(f"Rendered {config['out']} ({width} x {height} pixels)")
    return {}


def task_zero_area(config):
    layout = load(config["gds"])
    found = 0
    for cell in layout.each_cell():
        for index in layout.layer_indexes():
            for shape in cell.shapes(index).each():
                if not (shape.is_box() or shape.is_polygon() or shape.is_path()):
                    continue
                polygon = shape.polygon
                if polygon is not None and polygon.area() == 0:
                    found += 1
                    if found <= 10:
                        info = layout.get_info(index)
                        p = polygon.bbox().p1
                        print(f"Zero-area polygon on {info.layer}/{info.datatype} in {cell.name} "
                              f"at ({um(p.x * layout.dbu)}, {um(p.y * layout.dbu)})")
    print(f"{found} zero-area polygon(s).")
    return {"klayout__zero_area_polygon__count": found}


def task_write(config):
    layout = load(config["gds"])
    layout.write(config["out"])
    print(f"Wrote {config['out']}")
    return {}


TASKS = {
    "read": task_read,
    "top": task_top,
    "size": task_size,
    "layers": task_layers,
    "id": task_id,
    "render": task_render,
    "zero_area": task_zero_area,
    "write": task_write,
}


def main():
    with open(config, encoding="utf-8") as f:  # noqa: F821 - `config` comes from -rd
        settings = json.load(f)
    outcome = {"metrics": {}, "error": None}
    try:
        outcome["metrics"] = TASKS[settings["task"]](settings)
    except CheckFailed as e:
        outcome["error"] = str(e)
    except Exception as e:  # noqa: BLE001 - reported as the step's failure
        traceback.print_exc()
        outcome["error"] = f"KLayout failed in the {settings['task']} task: {type(e).__name__}: {e}"
    with open(result, "w", encoding="utf-8") as f:  # noqa: F821 - `result` comes from -rd
        json.dump(outcome, f, indent=2)


main()
