#!/usr/bin/env python3
"""The gf180mcu precheck of the precheck server's KLayout test image.

It takes the command line of wafer.space's precheck.py (see /work/shared/REAL-PRECHECK.md in the
project, and README.md beside the image's recipe), prints what it prints and lays out its run
folder as LibreLane does, and really checks the layout with KLayout: every check is a
`klayout -b -r` subprocess (scripts/klayout/precheck_step.py, or a DRC deck under
$PDK_ROOT/$PDK/libs.tech/klayout/drc/). It is not LibreLane and holds none of its code; the
PDK's density, antenna and Magic DRC steps are not in this image and are always skipped.

Exit codes: 0 passed, 2 argparse errors, 1 everything else.
"""

import argparse
import concurrent.futures
import csv
import datetime
import fnmatch
import json
import os
import shutil
import subprocess
import sys
import time

WORKSPACE = os.path.dirname(os.path.abspath(__file__))
STEP_SCRIPT = os.path.join(WORKSPACE, "scripts", "klayout", "precheck_step.py")
SLOTS = ["1x1", "0p5x1", "1x0p5", "0p5x0p5"]
FLOW_NAME = "Precheck"

# The DRC decks of the KLayout DRC step, in the PDK's folder, and what each covers.
DRC_DECKS = [
    ("gf180mcu_feol.drc", "COMP, Poly2 and Contact"),
    ("gf180mcu_beol.drc", "Metal1 to Metal4 and Via1"),
]


class StepError(Exception):
    """A step failed: the flow stops at once."""


class DeferredStepError(Exception):
    """A checker found problems: the flow goes on and fails at its end."""


class FlowException(Exception):
    """The flow could not run as asked (a bad step name, a missing input)."""


def _int(text, default):
    try:
        return int(text)
    except (TypeError, ValueError):
        return default


# ---------------------------------------------------------------------------------------------
# Logging, shaped like LibreLane's (rich's log lines and rules, without a terminal)


class Log:
    def __init__(self):
        self.columns = max(40, _int(os.environ.get("COLUMNS"), 80))
        self.files = []  # (file, minimum level) of the run folder's logs

    def open_run(self, run_dir):
        for name, level in [("flow.log", 0), ("warning.log", 1), ("error.log", 2)]:
            self.files.append((open(os.path.join(run_dir, name), "a", encoding="utf-8"), level))

    def close(self):
        for f, _ in self.files:
            f.close()
        self.files = []

    def _emit(self, text, level):
        print(text, flush=True)
        for f, minimum in self.files:
            if level >= minimum:
                f.write(text + "\n")
                f.flush()

    def line(self, level, message, depth=2):
        caller = sys._getframe(depth)
        where = f"{os.path.basename(caller.f_code.co_filename)}:{caller.f_lineno}"
        stamp = datetime.datetime.now().strftime("%H:%M:%S")
        first, *rest = str(message).split("\n")
        head = f"[{stamp}] {level:<8} {first}"
        pad = self.columns - len(head) - len(where)
        head = head + " " * pad + where if pad >= 1 else head + " " + where
        rank = {"WARNING": 1, "ERROR": 2}.get(level, 0)
        self._emit("\n".join([head] + ["           " + r for r in rest]), rank)

    def info(self, message):
        self.line("INFO", message)

    def warn(self, message):
        self.line("WARNING", message)

    def err(self, message):
        self.line("ERROR", message)

    def rule(self, title):
        title = f" {title} "
        left = max(4, (self.columns - len(title)) // 2)
        right = max(4, self.columns - len(title) - left)
        self._emit("─" * left + title + "─" * right, 0)

    def raw(self, text):
        self._emit(text, 0)


LOG = Log()


# ---------------------------------------------------------------------------------------------
# The state passed from step to step, saved as each step's state_out.json


class State:
    def __init__(self, gds=None, metrics=None):
        self.gds = gds
        self.metrics = dict(metrics or {})

    def to_json(self):
        return {"gds": self.gds, "metrics": self.metrics}

    @staticmethod
    def load(path):
        try:
            with open(path, encoding="utf-8") as f:
                data = json.load(f)
        except (OSError, ValueError) as e:
            raise FlowException(f"Failed to load the state {path}: {e}")
        if not isinstance(data, dict):
            raise FlowException(f"Failed to load the state {path}: not a JSON object")
        return State(data.get("gds"), data.get("metrics") or {})


# ---------------------------------------------------------------------------------------------
# The steps


class Step:
    id = ""
    name = ""
    needs_gds = True
    # Steps the image has no tool for: always skipped, as `--skip` would.
    missing = False

    def __init__(self, flow):
        self.flow = flow

    @property
    def slug(self):
        return self.id.lower().replace(".", "-")

    def run(self, state, step_dir):
        """Returns the metrics to add; raises StepError or DeferredStepError."""
        return {}

    def klayout(self, step_dir, task, state, **extra):
        """Runs one task of precheck_step.py in KLayout on the state's layout; returns its
        result (`metrics`, `error`, and whatever else the task reports)."""
        config = {"task": task, "gds": state.gds, "top": self.flow.args.top, **extra}
        config_path = os.path.join(step_dir, "config.json")
        result_path = os.path.join(step_dir, "result.json")
        with open(config_path, "w", encoding="utf-8") as f:
            json.dump(config, f, indent=2)
        argv = ["klayout", "-b", "-r", STEP_SCRIPT, "-rd", f"config={config_path}",
                "-rd", f"result={result_path}"]
        self.subprocess(argv, step_dir, "klayout")
        try:
            with open(result_path, encoding="utf-8") as f:
                result = json.load(f)
        except (OSError, ValueError) as e:
            raise StepError(f"{self.id}: KLayout wrote no result ({e}); see {self.rel(step_dir)}/klayout.log")
        if result.get("error"):
            raise StepError(result["error"])
        return result

    def subprocess(self, argv, step_dir, log_name):
        """Runs a tool, its output relayed to the log and kept in `<step dir>/<log_name>.log`."""
        log_path = os.path.join(step_dir, f"{log_name}.log")
        LOG.info(f"Logging subprocess to '{self.rel(log_path)}'…")
        env = dict(os.environ, QT_QPA_PLATFORM="offscreen")
        with open(log_path, "w", encoding="utf-8") as log:
            try:
                proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                        env=env, text=True, errors="replace")
            except OSError as e:
                raise StepError(f"{self.id}: cannot run {argv[0]}: {e}")
            for line in proc.stdout:
                log.write(line)
                LOG.raw(line.rstrip("\n"))
            code = proc.wait()
        if code < 0:
            raise StepError(f"{self.id}: {argv[0]} was killed by signal {-code}")
        if code != 0:
            raise StepError(f"{self.id}: {argv[0]} failed with exit code {code}; see {self.rel(log_path)}")

    def rel(self, path):
        return os.path.relpath(path, self.flow.design_dir)


class ReadLayout(Step):
    id = "KLayout.ReadLayout"
    name = "Read in a layout"
    needs_gds = False

    def run(self, state, step_dir):
        source = os.path.abspath(self.flow.args.input)
        if not os.path.isfile(source):
            raise StepError(f"The layout {self.flow.args.input} does not exist.")
        out = os.path.join(step_dir, f"{self.flow.args.top}.gds")
        result = self.klayout(step_dir, "read", State(source), out=out)
        state.gds = out
        return result["metrics"]


class CheckTopLevel(Step):
    id = "KLayout.CheckTopLevel"
    name = "Check top-level name"

    def run(self, state, step_dir):
        return self.klayout(step_dir, "top", state)["metrics"]


class CheckSize(Step):
    id = "KLayout.CheckSize"
    name = "Check the layout size"

    def run(self, state, step_dir):
        return self.klayout(step_dir, "size", state, slot=self.flow.args.slot)["metrics"]


class CheckPadMask(CheckSize):
    # This image has no golden pad masks: it checks the origin, unit and slot size as
    # KLayout.CheckSize does.
    id = "KLayout.CheckPadMask"
    name = "Check the pad mask"


class CheckLayers(Step):
    id = "KLayout.CheckLayers"
    name = "Check the seal ring and forbidden layers"

    def run(self, state, step_dir):
        return self.klayout(step_dir, "layers", state)["metrics"]


class GenerateID(Step):
    id = "KLayout.GenerateID"
    name = "Generate ID"

    def run(self, state, step_dir):
        die_id = self.flow.args.id
        if len(die_id) != 8:
            raise StepError(f"The die ID '{die_id}' has {len(die_id)} characters; it must have 8.")
        out = os.path.join(step_dir, f"{self.flow.args.top}.gds")
        result = self.klayout(step_dir, "id", state, id=die_id, cob=self.flow.args.cob, out=out)
        state.gds = out
        return result["metrics"]


class Render(Step):
    id = "KLayout.Render"
    name = "Render the layout"

    def run(self, state, step_dir):
        out = os.path.join(step_dir, f"{self.flow.args.top}.png")
        return self.klayout(step_dir, "render", state, out=out)["metrics"]


class Missing(Step):
    missing = True


class Density(Missing):
    id = "KLayout.Density"
    name = "Density"


class DensityChecker(Missing):
    id = "Checker.KLayoutDensity"
    name = "KLayout Density Checker"


class ZeroArea(Step):
    id = "KLayout.ZeroArea"
    name = "Zero-area polygons"

    def run(self, state, step_dir):
        return self.klayout(step_dir, "zero_area", state)["metrics"]


class Antenna(Missing):
    id = "KLayout.Antenna"
    name = "Antenna"


class AntennaChecker(Missing):
    id = "Checker.KLayoutAntenna"
    name = "KLayout Antenna Checker"


class MagicDRC(Missing):
    id = "Magic.DRC"
    name = "DRC (Magic)"


class MagicDRCChecker(Missing):
    id = "Checker.MagicDRC"
    name = "Magic DRC Checker"


class KLayoutDRC(Step):
    id = "KLayout.DRC"
    name = "DRC (KLayout)"

    def run(self, state, step_dir):
        decks_dir = os.path.join(self.flow.pdk_root, self.flow.pdk, "libs.tech", "klayout", "drc")
        threads = self.flow.threads
        LOG.info(f"Running {len(DRC_DECKS)} DRC decks, {self.flow.workers} at a time, "
                 f"{threads} thread(s) each.")

        def run_deck(deck):
            name, what = deck
            base = name.rsplit(".", 1)[0]
            report = os.path.join(step_dir, f"{base}.lyrdb")
            argv = ["klayout", "-b", "-r", os.path.join(decks_dir, name),
                    "-rd", f"input={state.gds}", "-rd", f"topcell={self.flow.args.top}",
                    "-rd", f"report={report}", "-rd", f"threads={threads}"]
            LOG.info(f"Running the deck {name} ({what})…")
            self.subprocess(argv, step_dir, base)
            return report

        with concurrent.futures.ThreadPoolExecutor(self.flow.workers) as pool:
            reports = list(pool.map(run_deck, DRC_DECKS))
        counts = {}
        for report in reports:
            for category, count in lyrdb_counts(report).items():
                counts[category] = counts.get(category, 0) + count
        total = sum(counts.values())
        metrics = {"klayout__drc_error__count": total}
        for category, count in counts.items():
            metrics[f"klayout__drc_error__count__rule:{category}"] = count
        if total:
            LOG.warn(f"KLayout DRC: {total} violation(s): {rule_list(counts)}; "
                     f"the reports are {', '.join(self.rel(r) for r in reports)}")
        else:
            LOG.info("KLayout DRC: no violations.")
        return metrics


def lyrdb_counts(path):
    """Violations per category of a KLayout report database, categories without any left out."""
    import xml.etree.ElementTree as ElementTree

    try:
        root = ElementTree.parse(path).getroot()
    except (OSError, ElementTree.ParseError) as e:
        raise StepError(f"KLayout.DRC: cannot read the report {path}: {e}")
    counts = {}
    for item in root.iter("item"):
        category = (item.findtext("category") or "").strip().strip("'")
        multiplicity = _int(item.findtext("multiplicity"), 1)
        counts[category] = counts.get(category, 0) + multiplicity
    return counts


def rule_list(counts):
    return ", ".join(f"{rule} ({n})" for rule, n in sorted(counts.items()))


class MetricChecker(Step):
    """Raises a deferred error if a metric is above 0, as LibreLane's checkers do."""

    metric_name = ""
    metric_description = ""
    rule_prefix = None

    def run(self, state, step_dir):
        value = state.metrics.get(self.metric_name)
        if value is None:
            LOG.warn(f"The {self.metric_description} metric was not found. Are you sure the "
                     "relevant step was run?")
            return {}
        if value > 0:
            message = f"{value} {self.metric_description} found"
            if self.rule_prefix:
                rules = {k[len(self.rule_prefix):]: v for k, v in state.metrics.items()
                         if k.startswith(self.rule_prefix) and v}
                if rules:
                    message += f": {rule_list(rules)}"
            message += "."
            LOG.err(f"{message} - deferred")
            raise DeferredStepError(message)
        LOG.info(f"Check for {self.metric_description} clear.")
        return {}


class ZeroAreaChecker(MetricChecker):
    id = "Checker.ZeroArea"
    name = "Zero-Area Polygon Checker"
    metric_name = "klayout__zero_area_polygon__count"
    metric_description = "zero-area polygons"


class KLayoutDRCChecker(MetricChecker):
    id = "Checker.KLayoutDRC"
    name = "KLayout DRC Checker"
    metric_name = "klayout__drc_error__count"
    metric_description = "KLayout DRC errors"
    rule_prefix = "klayout__drc_error__count__rule:"


class WriteLayout(Step):
    id = "KLayout.WriteLayout"
    name = "Write the layout"

    def run(self, state, step_dir):
        output = self.flow.args.output
        if output is None:
            LOG.info("No --output given: the checked layout is not written.")
            return {}
        target = os.path.abspath(output)
        if not os.path.isdir(os.path.dirname(target)):
            raise StepError(f"Cannot write the layout to {output}: its folder does not exist.")
        self.klayout(step_dir, "write", state, out=target)
        LOG.info(f"Wrote the checked layout to {output}.")
        return {}


def flow_steps(cob):
    return [
        ReadLayout,
        CheckTopLevel,
        CheckPadMask if cob else CheckSize,
        CheckLayers,
        GenerateID,
        Render,
        Density,
        DensityChecker,
        ZeroArea,
        ZeroAreaChecker,
        Antenna,
        AntennaChecker,
        MagicDRC,
        MagicDRCChecker,
        KLayoutDRC,
        KLayoutDRCChecker,
        WriteLayout,
    ]


# ---------------------------------------------------------------------------------------------
# The flow


class Flow:
    def __init__(self, args, pdk_root, pdk):
        self.args = args
        self.pdk_root = pdk_root
        self.pdk = pdk
        self.design_dir = os.path.abspath(args.dir)
        cpus = os.cpu_count() or 1
        self.threads = cpus if args.threads == "max" else int(args.threads)
        self.workers = len(DRC_DECKS) if args.workers == "max" else int(args.workers)
        self.steps = [cls(self) for cls in flow_steps(args.cob)]

    def resolve(self, pattern, many=False):
        """Step ids matching `pattern` (case-insensitive, with * and ?), as LibreLane resolves
        --from, --to and --skip."""
        ids = [s.id for s in self.steps if fnmatch.fnmatch(s.id.lower(), pattern.lower())]
        if not ids:
            raise FlowException(
                f"Failed to process '{pattern}': no step(s) with ID '{pattern}' found in flow."
            )
        if len(ids) > 1 and not many:
            raise FlowException(f"{pattern} matched multiple steps.")
        return ids if many else ids[0]

    def run_dir(self):
        runs = os.path.join(self.design_dir, "runs")
        if self.args.last_run is not None:
            found = sorted(
                (e for e in os.scandir(runs) if e.is_dir()) if os.path.isdir(runs) else [],
                key=lambda e: e.stat().st_mtime,
            )
            if not found:
                raise FlowException(f"--last-run: there is no run in {runs}.")
            return found[-1].path
        return os.path.join(runs, self.args.run_tag)

    def start(self):
        frm = self.resolve(self.args.frm) if self.args.frm else None
        to = self.resolve(self.args.to) if self.args.to else None
        skipped = set()
        for pattern in self.args.skip or []:
            skipped.update(self.resolve(pattern, many=True))

        run_dir = self.run_dir()
        os.makedirs(run_dir, exist_ok=True)
        LOG.open_run(run_dir)
        existing = [e.name for e in os.scandir(run_dir) if e.is_dir() and e.name[:2].isdigit()]
        ordinal = max((int(n.split("-", 1)[0]) for n in existing), default=0)
        if existing:
            LOG.info(f"Using existing run at '{os.path.basename(run_dir)}', after its "
                     f"{len(existing)} step(s).")
        self.write_resolved(run_dir)

        state = self.initial_state(run_dir, existing, frm)
        LOG.info("Starting…")
        if any(s.missing for s in self.steps):
            LOG.warn("This test image has no density, antenna or Magic DRC deck: "
                     "those steps are skipped.")
        executing = frm is None
        deferred = []
        started = time.monotonic()
        done = 0
        for step in self.steps:
            if frm == step.id:
                executing = True
            if not executing or step.id in skipped or step.missing:
                LOG.info(f"Skipping step '{step.name}'…")
            else:
                ordinal += 1
                done += 1
                step_dir = os.path.join(run_dir, f"{ordinal:02d}-{step.slug}")
                try:
                    state = self.run_step(step, state, step_dir)
                except DeferredStepError as e:
                    deferred.append(str(e))
            if to == step.id:
                executing = False

        self.save_final(run_dir, state)
        elapsed = time.monotonic() - started
        count = len(self.steps)
        LOG.raw(f"{FLOW_NAME} - Stage {count} - {self.steps[-1].name} {'━' * 40} "
                f"{count}/{count} {datetime.timedelta(seconds=int(elapsed))}")
        if deferred:
            raise StepError("One or more deferred errors were encountered:\n" + "\n".join(deferred))
        LOG.info("Flow complete.")

    def initial_state(self, run_dir, existing, frm):
        if self.args.with_initial_state:
            return State.load(self.args.with_initial_state)
        if frm is None or not existing:
            return State()
        # Resuming at --from: the state the last earlier step of this run left.
        order = [s.slug for s in self.steps]
        earlier = set(order[: order.index(frm.lower().replace(".", "-"))])
        for name in sorted(existing, reverse=True):
            slug = name.split("-", 1)[1]
            path = os.path.join(run_dir, name, "state_out.json")
            if slug in earlier and os.path.isfile(path):
                return State.load(path)
        return State()

    def run_step(self, step, state, step_dir):
        LOG.rule(step.name)
        os.makedirs(step_dir, exist_ok=True)
        LOG.info(f"Running '{step.id}' at '{os.path.relpath(step_dir, self.design_dir)}'…")
        if step.needs_gds and not (state.gds and os.path.isfile(state.gds)):
            raise StepError(f"{step.id}: the state has no GDS layout (gds) to work on; "
                            "start the flow at its first step or give --with-initial-state.")
        out = State(state.gds, state.metrics)
        started = time.monotonic()
        deferred = None
        try:
            metrics = step.run(out, step_dir)
        except DeferredStepError as e:
            deferred, metrics = e, {}
        except StepError as e:
            LOG.err(str(e))
            self.write_step_files(step_dir, time.monotonic() - started, None)
            raise
        out.metrics.update(metrics)
        self.write_step_files(step_dir, time.monotonic() - started, out)
        if deferred:
            raise deferred
        return out

    @staticmethod
    def write_step_files(step_dir, elapsed, state):
        with open(os.path.join(step_dir, "runtime.txt"), "w", encoding="utf-8") as f:
            f.write(runtime(elapsed))
        if state is not None:
            with open(os.path.join(step_dir, "state_out.json"), "w", encoding="utf-8") as f:
                json.dump(state.to_json(), f, indent=4)

    def write_resolved(self, run_dir):
        config = {
            "DESIGN_NAME": self.args.top,
            "KLAYOUT_READ_LAYOUT": os.path.abspath(self.args.input),
            "KLAYOUT_ID": self.args.id,
            "SLOT": self.args.slot,
            "COB": self.args.cob,
            "KLAYOUT_DRC_THREADS": self.threads,
            "KLAYOUT_DRC_WORKERS": self.workers,
            "PDK_ROOT": self.pdk_root,
            "PDK": self.pdk,
        }
        with open(os.path.join(run_dir, "resolved.json"), "w", encoding="utf-8") as f:
            json.dump(config, f, indent=4)

    def save_final(self, run_dir, state):
        final = os.path.join(run_dir, "final")
        os.makedirs(os.path.join(final, "gds"), exist_ok=True)
        if state.gds and os.path.isfile(state.gds):
            shutil.copyfile(state.gds, os.path.join(final, "gds", f"{self.args.top}.gds"))
        with open(os.path.join(final, "metrics.json"), "w", encoding="utf-8") as f:
            json.dump(state.metrics, f, indent=4)
        with open(os.path.join(final, "metrics.csv"), "w", encoding="utf-8", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["Metric", "Value"])
            writer.writerows(sorted(state.metrics.items()))


def runtime(seconds):
    ms = int(round(seconds * 1000))
    h, ms = divmod(ms, 3_600_000)
    m, ms = divmod(ms, 60_000)
    s, ms = divmod(ms, 1000)
    return f"{h:02d}:{m:02d}:{s:02d}.{ms:03d}"


# ---------------------------------------------------------------------------------------------
# The command line


def count_or_max(text):
    if text == "max":
        return text
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid value: '{text}' (a number or 'max')")
    if value < 1:
        raise argparse.ArgumentTypeError(f"invalid value: '{text}' (at least 1)")
    return str(value)


def parser():
    p = argparse.ArgumentParser(description="Run the gf180mcu precheck on a layout.")
    p.add_argument("--input", required=True, help="The layout to check: GDSII, gzip'd GDSII or OASIS.")
    p.add_argument("--output", help="Where to write the checked layout (GDSII).")
    p.add_argument("--top", help="The top-level cell (default: the input's name up to its first dot).")
    p.add_argument("--id", default="FFFFFFFF", help="The die ID, 8 characters.")
    p.add_argument("--cob", action="store_true", help="Chip-on-board: check the pad mask and the ID cells.")
    p.add_argument("--dir", default=".", help="The flow's design folder; the run goes to DIR/runs/TAG.")
    p.add_argument("--threads", default="max", type=count_or_max,
                   help="KLayout DRC threads, or 'max' for the host's CPU count.")
    p.add_argument("--workers", default="1", type=count_or_max,
                   help="DRC decks run at once, or 'max' for all.")
    p.add_argument("--slot", default="1x1", choices=SLOTS, help="The slot size.")
    runs = p.add_mutually_exclusive_group()
    runs.add_argument("--run-tag", default=datetime.datetime.now().strftime("RUN_%Y-%m-%d_%H-%M-%S"),
                      help="The run's folder name.")
    runs.add_argument("--last-run", help="Use the latest run folder.")
    p.add_argument("--from", dest="frm", metavar="STEP", help="Start the flow at this step.")
    p.add_argument("--to", metavar="STEP", help="Stop the flow after this step.")
    p.add_argument("--skip", nargs="+", metavar="STEP", help="Skip these steps.")
    p.add_argument("--with-initial-state", metavar="FILE", help="Start from this state_out.json.")
    return p


def main():
    args = parser().parse_args()
    if args.top is None:
        args.top = os.path.basename(args.input).split(".", 1)[0]

    # The real precheck prints a stray None first.
    print(None)
    pdk_root = os.getenv("PDK_ROOT", os.path.expanduser("~/.ciel"))
    pdk = os.getenv("PDK", "gf180mcuD")
    if pdk != "gf180mcuD":
        print(f"Error: Precheck is only supported for gf180mcuD. PDK = {pdk}")
        sys.exit(1)
    print(f"PDK_ROOT = {pdk_root}")
    print(f"PDK = {pdk}")
    for key, value in [("top_cell", args.top), ("die_id", args.id), ("cob", args.cob),
                       ("slot", args.slot), ("threads", args.threads), ("workers", args.workers)]:
        print(f"{key}: {value}")
    sys.stdout.flush()

    try:
        Flow(args, pdk_root, pdk).start()
    except (StepError, FlowException) as e:
        print(f"Error: The precheck failed with the following exception: \n{e}", flush=True)
        sys.exit(1)
    except Exception as e:  # noqa: BLE001 - anything else is a crash of the flow: exit 1
        print(f"Error: The precheck failed with the following exception: \n{type(e).__name__}: {e}",
              flush=True)
        sys.exit(1)
    finally:
        LOG.close()
    print("Precheck successfully completed.", flush=True)


if __name__ == "__main__":
    main()
