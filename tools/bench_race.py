"""Time the Playground's race outside the app: bits/dim of every layout at marks of the race's
wall-clock, the time to the first curve point and head maps, and the head types at the end.

    python -m tools.bench_race --minutes 10 --marks 2,5,10 --out runs/bench-race
    python -m tools.bench_race --layouts "axial,neighborhood,sinks" --minutes 3 --marks 1,3 \
        --out runs/bench-race-new
    python -m tools.bench_race --layouts "strided(l=7), fixed(l=14, c=3)" ...

The race is analysis/race.py's, with RaceConfig's defaults (fmnist-mini at 14 x 14, batch 16,
dense, strided and fixed unless --layouts names others: any static family of kernels/layouts.py
by name, sized for the image, or a spec, each family once); one torch thread, as in the app. At
the end a table gives each layout's attention kernel (as kernels/dispatch.py resolves it) and
its step time as the median with the 10th-90th percentiles; the report is also written as
bench_race.json beside race.json in --out (the race folder analysis.race.load_race reads: the
Playground's shipped race in assets/races/ is one). Bad input is one ``error:`` line and exit
status 2 (tools/cli.py).
"""

from __future__ import annotations

import json
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np
import torch

from analysis.race import LAYOUT_KINDS, RACE_FAMILIES, RaceConfig, RaceState, check_race, run_race
from models.checkpoint import write_atomic
from models.model import PRESETS
from tools.cli import (
    Parser,
    UsageError,
    check_output_dir,
    finite_float,
    non_negative_int,
    run_main,
)

MINUTES_MAX = 24 * 60.0
BENCH_FILE = "bench_race.json"  # the report, beside race.json in --out


def split_layouts(text: str) -> tuple[str, ...]:
    """ "axial, strided(l=7), fixed(l=14, c=3)" -> ("axial", "strided(l=7)", "fixed(l=14, c=3)"):
    split at the commas outside parentheses; UsageError on an empty item or unbalanced ones."""
    items, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        depth += {"(": 1, ")": -1}.get(ch, 0)
        if depth < 0:
            break
        if ch == "," and depth == 0:
            items.append(text[start:i])
            start = i + 1
    if depth != 0:
        raise UsageError(f"--layouts {text!r}: unbalanced parentheses")
    items.append(text[start:])
    items = [item.strip() for item in items]
    if not all(items):
        raise UsageError(
            f"--layouts {text!r}: an empty item; give comma-separated families "
            f"({', '.join(RACE_FAMILIES)}) or layout specs such as strided(l=7)"
        )
    return tuple(items)


def parse_marks(text: str) -> list[float]:
    """ "2,5,10" -> [2.0, 5.0, 10.0]: finite minutes > 0, ascending."""
    parse = finite_float(0.0, MINUTES_MAX, lo_open=True)
    try:
        marks = [parse(m.strip()) for m in text.split(",")]
    except Exception as e:  # argparse.ArgumentTypeError: its message names the value
        raise UsageError(f"--marks {text!r}: {e}") from None
    if marks != sorted(marks):
        raise UsageError(f"--marks {text!r}: give the minutes in ascending order")
    return marks


def main(argv: list[str] | None = None) -> int:
    p = Parser(prog="python -m tools.bench_race", description=__doc__.split("\n")[0])
    p.add_argument("--minutes", type=finite_float(0.0, MINUTES_MAX, lo_open=True), default=10.0)
    p.add_argument("--marks", default="2,5,10", help="minutes at which to report bits/dim")
    p.add_argument("--preset", choices=list(PRESETS), default=RaceConfig.preset)
    p.add_argument(
        "--layouts",
        default=",".join(LAYOUT_KINDS),
        help=f"comma-separated families ({', '.join(RACE_FAMILIES)}), sized for the image, or "
        "layout specs such as strided(l=7); each family once (a lane's run folder is its "
        "family's name)",
    )
    p.add_argument(
        "--size", type=int, choices=(7, 14, 28), default=RaceConfig.size, help="image side"
    )
    p.add_argument("--data", default=RaceConfig.data)
    p.add_argument("--seed", type=non_negative_int, default=0)
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    marks = parse_marks(args.marks)
    cfg = RaceConfig(
        layouts=split_layouts(args.layouts),
        preset=args.preset,
        size=args.size,
        data=args.data,
        minutes=args.minutes,
        seed=args.seed,
    )
    check_race(cfg)  # every layout, preset and size, before any data is read
    check_output_dir(args.out)
    if args.out.is_dir() and any(args.out.iterdir()):
        raise UsageError(f"--out {args.out} already holds files: a race writes into a new folder")
    torch.set_num_threads(1)
    state = RaceState()
    start = time.monotonic()
    report: dict = {"marks": {}}
    pending = list(marks)

    def watch() -> None:
        while state.phase not in ("saving", "saved", "discarded"):
            view = state.view()
            now = (time.monotonic() - start) / 60
            if (
                "first_point_s" not in report
                and all(lane.rows is not None and lane.test for lane in view.lanes)
                and view.lanes
            ):
                report["first_point_s"] = round(time.monotonic() - start, 2)
                print(f"first curve point and head maps: {report['first_point_s']} s", flush=True)
            if pending and now >= pending[0]:
                m = pending.pop(0)
                row = row_of(view)
                report["marks"][str(m)] = row
                print(f"after {m} min: {json.dumps(row)}", flush=True)
            time.sleep(0.2)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    record = run_race(cfg, args.out, state=state)
    watcher.join()
    view = state.view()
    if pending:  # a mark at the budget's end: the race's last numbers (its end comes first)
        at = (time.monotonic() - start) / 60
        report["marks"][f"end ({at:.1f} min, for {', '.join(map(str, pending))})"] = row_of(view)
    summarise(report, record, view)
    text = json.dumps(report, indent=1)
    write_atomic(args.out / BENCH_FILE, (text + "\n").encode())
    print(text)
    print(cost_table(record, view))
    return 0


def row_of(view) -> dict:
    """Each lane's numbers at a mark: step, held-out and train bits/dim, kernel, step time."""
    return {
        lane.name: {
            "step": lane.steps[-1] if lane.steps else 0,
            "held_out_bpd": round(lane.test[-1][2], 4) if lane.test else None,
            "train_bpd_last20": round(float(np.mean(lane.train_bpd[-20:])), 4)
            if lane.train_bpd
            else None,
            "backend": lane.backend,
            "ms_per_step_median": round(1e3 * (lane.seconds_per_step or 0), 1),
            "ms_per_step_p10_p90": [round(1e3 * t, 1) for t in lane.step_spread or ()],
        }
        for lane in view.lanes
    }


def summarise(report: dict, record: dict, view) -> None:
    """The race's end into ``report``: final numbers, baselines, head types, when each lane's
    held-out curve first fell below the uniform baseline, and how the race ended."""
    report["final"] = record["layouts"]
    report["baselines"] = record["baselines"]
    report["head_types"] = {
        lane.name: dict(Counter(t for layer in lane.types for t in layer)) for lane in view.lanes
    }
    first_below = {}
    uniform = record["baselines"]["uniform over observed values"]
    for lane in view.lanes:
        below = [s for (_, s, b) in lane.test if b < uniform]
        first_below[lane.name] = None if not below else round(below[0], 1)
    report["first_below_uniform_training_s"] = first_below
    report["race"] = {k: record[k] for k in ("end", "steps", "total", "wall_time_s")}


def cost_table(record: dict, view) -> str:
    """Markdown: each layout's spec, attention kernel, keys a query, step time (median and
    10th-90th percentiles), steps and held-out bits/dim at the end."""
    lines = [
        "| layout | attention kernel | keys a query | ms a step: median (p10-p90) | steps "
        "| held-out bits/dim |",
        "|---|---|---|---|---|---|",
    ]
    for lane in view.lanes:
        final = record["layouts"][lane.name]
        spread = lane.step_spread
        median = lane.seconds_per_step
        timing = (
            "-"
            if median is None or spread is None
            else (f"{1e3 * median:.0f} ({1e3 * spread[0]:.0f}-{1e3 * spread[1]:.0f})")
        )
        lines.append(
            f"| {lane.spec} | {lane.backend} | {lane.nnz / lane.tokens:.1f} | {timing} "
            f"| {final['step']} | {final['test_bpd']:.3f} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(run_main(main))
