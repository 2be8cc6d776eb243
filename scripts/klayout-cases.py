# Checks the layout reader's geometry cases against KLayout: every NAME.json in the folder `dir`
# names a layout file beside it and what its one top cell must give (the box in database units,
# or null for none, and the layers with a shape), or that KLayout refuses the file. The tests
# write the folder when PRECHECK_KLAYOUT_CASES names it:
#   PRECHECK_KLAYOUT_CASES=/tmp/cases cargo test --lib layout
#   klayout -b -r scripts/klayout-cases.py -rd dir=/tmp/cases
import json
import os

import pya

passed, failed = 0, 0
for name in sorted(os.listdir(dir)):
    if not name.endswith(".json"):
        continue
    with open(os.path.join(dir, name)) as f:
        want = json.load(f)
    layout = pya.Layout()
    try:
        layout.read(os.path.join(dir, want["file"]))
    except Exception as e:
        got = {"refused": True}
        detail = str(e)
    else:
        tops = layout.top_cells()
        if len(tops) != 1:
            got = {"tops": [c.name for c in tops]}
        else:
            top = tops[0]
            box = top.bbox()
            layers = []
            for index in layout.layer_indexes():
                if not top.bbox_per_layer(index).empty():
                    info = layout.get_info(index)
                    layers.append([info.layer, info.datatype])
            got = {
                "bbox": None if box.empty() else [box.left, box.bottom, box.right, box.top],
                "layers": sorted(layers),
            }
        detail = ""
    expected = {k: v for k, v in want.items() if k != "file"}
    if got == expected:
        passed += 1
    else:
        failed += 1
        print(f"{name}: KLayout gives {got} {detail}, the reader {expected}")
print(f"{passed} passed, {failed} failed")
