"""Time the Playground's race outside the app: bits/dim of every layout at marks of the race's
wall-clock, the time to the first curve point and head maps, and the head types at the end.

    python -m tools.bench_race --minutes 10 --marks 2,5,10 --out runs/bench-race

The race is models/race.py's, with RaceConfig's defaults (fmnist-mini at 14 x 14, batch 16,
every layout); one torch thread, as in the app.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np
import torch

from models.race import RaceConfig, RaceState, run_race


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m tools.bench_race", description=__doc__.split("\n")[0]
    )
    p.add_argument("--minutes", type=float, default=10.0)
    p.add_argument("--marks", default="2,5,10", help="minutes at which to report bits/dim")
    p.add_argument("--preset", default=RaceConfig.preset)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    from analysis.metrics import head_metrics, head_type

    torch.set_num_threads(1)
    marks = [float(m) for m in args.marks.split(",")]
    state = RaceState()
    start = time.monotonic()
    report: dict = {"marks": {}}
    pending = list(marks)

    def row_of(view) -> dict:
        return {
            lane.name: {
                "step": lane.steps[-1] if lane.steps else 0,
                "held_out_bpd": round(lane.test[-1][2], 4) if lane.test else None,
                "train_bpd_last20": round(float(np.mean(lane.train_bpd[-20:])), 4)
                if lane.train_bpd
                else None,
                "ms_per_step": round(1e3 * (lane.seconds_per_step or 0), 1),
            }
            for lane in view.lanes
        }

    def watch() -> None:
        while state.phase not in ("saving", "saved"):
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
    cfg = RaceConfig(preset=args.preset, minutes=args.minutes, seed=args.seed)
    record = run_race(cfg, args.out, measure=head_metrics, classify=head_type, state=state)
    watcher.join()
    view = state.view()
    if pending:  # a mark at the budget's end: the race's last numbers (its end comes first)
        at = (time.monotonic() - start) / 60
        report["marks"][f"end ({at:.1f} min, for {', '.join(map(str, pending))})"] = row_of(view)
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
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
