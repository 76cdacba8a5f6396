"""The kernel benchmark on the CPU: `python -m tools.bench_kernels --device cpu`.

    python -m tools.bench_kernels --device cpu                    # N = 1,024 .. 65,536
    python -m tools.bench_kernels --device cpu --sizes 1024 4096 --no-model   # a quick run
    python -m tools.bench_kernels --device cpu --crossover        # also measure CROSSOVER_N

For each N (l = 2^ceil(log2(N) / 2), the power of two at or above sqrt(N); c = l / 8), in one
run: dense causal SDPA (the anchor), SDPA with the layout's mask (what "auto" ran before
kernels/composed.py), FlexAttention compiled for the CPU (its compile and block-mask time on
their own line) and kernels/composed.py, forward and forward+backward: the median time, the
ratio to dense, and the peak resident memory of one cold call (the masked path's N x N mask
included). A path whose estimated memory would not fit in what the machine has free is not run
and says so. Then what a person feels: a training step of the colour preset (3,072 tokens) and a
16-sample colour completion, on the masked SDPA ("before") and on "auto" ("after").

``--crossover`` times composed against the masked SDPA at the shipped models' shapes around
N = 1,024 and writes, per layout, the length from which composed is faster into the one place
"auto" reads it (kernels/crossover.json, loaded as kernels.composed.CROSSOVER_N). ``--json PATH``
writes every row for the "Models & speed" page (default docs/benchmarks/cpu_attention.json).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import json
import math
import os
import platform
import statistics
import time
from collections.abc import Callable
from datetime import date
from pathlib import Path

import torch
import torch.nn.functional as F

from kernels import composed as composed_module
from kernels.dispatch import _additive_mask, attention
from kernels.layouts import Layout, axial, fixed, strided
from kernels.reference import cached_mask
from tools.memory import current_rss, peak_rss, reset_peak_rss

ROOT = Path(__file__).resolve().parent.parent
SIZES = (1024, 2048, 4096, 8192, 16384, 32768, 65536)
CROSSOVER_SIZES = (256, 512, 784, 1024, 1536, 2048, 3072, 4096)
DEFAULT_JSON = ROOT / "docs" / "benchmarks" / "cpu_attention.json"
CASES = ("dense causal SDPA", "masked SDPA", "FlexAttention", "composed")


def stride_for(n: int) -> int:
    """The benchmark's l at length n: the power of two at or above sqrt(n)."""
    return 2 ** math.ceil(math.log2(n) / 2)


def layouts_for(n: int) -> dict[str, Layout]:
    l = stride_for(n)
    return {"strided": strided(l), "fixed": fixed(l, max(1, l // 8))}


def free_bytes() -> int:
    """What the machine has free now (MemAvailable), or 8 GiB where /proc is missing."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 8 * 2**30


def masked_estimate(n: int, itemsize: int) -> int:
    """Bytes the masked SDPA path holds at length n: the boolean mask and the additive one built
    from it (one head's, shared by all heads: kernels.dispatch._additive_mask), N x N each."""
    return n * n * (1 + itemsize)


def _malloc_tuned() -> Callable[[], None]:
    """glibc: big blocks always mmapped (the dynamic threshold off), and a function that hands
    freed heap memory back, so that each case's resident high-water mark is its own and not
    hidden in memory an earlier case freed. Elsewhere: a no-op."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallopt(-3, 1 << 20)  # M_MMAP_THRESHOLD: 1 MiB
        return lambda: libc.malloc_trim(0)
    except (OSError, AttributeError):
        return lambda: None


_trim = _malloc_tuned()


def timed(fn: Callable[[], object], *, reps: int, budget_s: float = 3.0) -> tuple[float, float]:
    """(median milliseconds, peak MiB of the first call): the first call is cold (it builds any
    mask or plan, and its resident-memory high-water mark above what was resident before is the
    peak reported); then up to ``reps`` timed calls, fewer when they would pass ``budget_s``
    (a first call over budget is its own measurement)."""
    gc.collect()
    _trim()
    reset_peak_rss()
    base = current_rss()
    start = time.perf_counter()
    fn()
    first = time.perf_counter() - start
    peak = max(0, peak_rss() - base) / 2**20
    times = []
    spent = 0.0
    while len(times) < reps and spent + (first if not times else times[-1]) <= budget_s:
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
        spent += times[-1]
    return 1e3 * statistics.median(times or [first]), peak


def _forget_masks() -> None:
    """Drop the cached N x N masks so that each case's memory is its own."""
    _additive_mask.cache_clear()
    cached_mask.cache_clear()
    gc.collect()


class Flex:
    """FlexAttention on the CPU: compiled once (dynamic=False, as its docs advise), a block mask
    per layout and length; forward only (no backward on the CPU)."""

    def __init__(self) -> None:
        from torch.nn.attention.flex_attention import flex_attention

        torch._dynamo.config.recompile_limit = 256
        torch._dynamo.config.accumulated_recompile_limit = 4096
        self.fn = torch.compile(flex_attention, dynamic=False)

    def block_mask(self, layout: Layout, n: int):
        from torch.nn.attention.flex_attention import create_block_mask

        return create_block_mask(layout.mask_mod, None, None, n, n, device="cpu", _compile=True)

    def __call__(self, q, k, v, block_mask):
        return self.fn(q, k, v, block_mask=block_mask)


def attention_rows(
    n: int,
    *,
    heads: int,
    dim: int,
    dtype: torch.dtype,
    reps: int,
    flex: Flex | None,
    history: dict[tuple, tuple[int, float]],
) -> tuple[list[dict], list[str]]:
    """Every case at length n: rows, and the notes (compile times). ``history`` holds the
    masked path's last measured peaks {(layout, "fwd" | "fwd_bwd"): (N, MiB)}, from which its
    peak here is predicted (N^2) before it is run."""
    g = torch.Generator().manual_seed(n)
    q, k, v = (torch.randn(1, heads, n, dim, generator=g, dtype=dtype) for _ in range(3))
    grad = torch.randn(q.shape, generator=g, dtype=dtype)
    leaves = [t.detach().clone().requires_grad_() for t in (q, k, v)]
    notes: list[str] = []
    rows: list[dict] = []

    def backward_of(fn):
        def run():
            for t in leaves:
                t.grad = None
            fn(*leaves).backward(grad)

        return run

    def too_big(case: str, layout: str, kind: str) -> str | None:
        """Why the masked path is not run here: its N x N masks (and, for the backward, what
        its last measured peak predicts at this N) would not fit in what is free."""
        if case != "masked SDPA":
            return None
        need = masked_estimate(n, torch.finfo(dtype).bits // 8)
        if (layout, kind) in history:
            m, peak = history[(layout, kind)]
            need = max(need, int(peak * 2**20 * (n / m) ** 2))
        free = free_bytes()
        if need <= 0.6 * free:
            return None
        return f"would need ~{need / 2**30:.0f} GiB ({free / 2**30:.0f} GiB free): not run"

    def add(case: str, layout: str, fwd, fwd_bwd, nnz: int) -> None:
        row = {"N": n, "l": stride_for(n), "case": case, "layout": layout, "nnz": nnz}
        row.update(fwd_ms=None, peak_mib=None, fwd_bwd_ms=None, fwd_bwd_peak_mib=None)
        skip = too_big(case, layout, "fwd")
        if skip is None:
            with torch.no_grad():
                row["fwd_ms"], row["peak_mib"] = timed(lambda: fwd(q, k, v), reps=reps)
            if case == "masked SDPA":
                history[(layout, "fwd")] = (n, row["peak_mib"])
            _forget_masks()
        else:
            row["skipped"] = skip
        skip = None if fwd_bwd is None else too_big(case, layout, "fwd_bwd")
        if fwd_bwd is not None and skip is None:
            row["fwd_bwd_ms"], row["fwd_bwd_peak_mib"] = timed(backward_of(fwd_bwd), reps=reps)
            if case == "masked SDPA":
                history[(layout, "fwd_bwd")] = (n, row["fwd_bwd_peak_mib"])
            _forget_masks()
        elif skip is not None:
            row["fwd_bwd_skipped"] = skip
        rows.append(row)

    def dense(a, b, c):
        return F.scaled_dot_product_attention(a, b, c, is_causal=True)

    add("dense causal SDPA", "dense", dense, dense, n * (n + 1) // 2)
    for name, layout in layouts_for(n).items():
        nnz = layout.nnz(n)

        def masked(a, b, c, layout=layout):
            return attention(a, b, c, layout, backend="sdpa")

        add("masked SDPA", name, masked, masked, nnz)
        if flex is not None:
            start = time.perf_counter()
            block_mask = flex.block_mask(layout, n)
            made = time.perf_counter() - start
            start = time.perf_counter()
            with torch.no_grad():
                flex(q, k, v, block_mask)
            first = time.perf_counter() - start
            add("FlexAttention", name, lambda a, b, c, bm=block_mask: flex(a, b, c, bm), None, nnz)
            notes.append(
                f"N={n} {name}: FlexAttention block mask {made:.1f} s, first (compiling) call "
                f"{first:.1f} s, then {rows[-1]['fwd_ms']:.0f} ms"
            )
            del block_mask

        def ours(a, b, c, layout=layout):
            return attention(a, b, c, layout, backend="composed")

        add("composed", name, ours, ours, nnz)
    dense_row = rows[0]
    for r in rows:
        for key in ("fwd", "fwd_bwd"):
            mine, base = r.get(f"{key}_ms"), dense_row[f"{key}_ms"]
            r[f"{key}_x"] = base / mine if mine and base else None
    return rows, notes


def crossover_layouts(n: int) -> dict[str, Layout]:
    """The layouts whose crossover is measured at length n, l = round(sqrt(N)) (axial's width:
    one row of a square image of N tokens)."""
    l = round(math.sqrt(n))
    return {"strided": strided(l), "fixed": fixed(l, max(1, l // 8)), "axial": axial(l)}


def crossover_rows(
    reps: int, sizes: tuple[int, ...] = CROSSOVER_SIZES, names: tuple[str, ...] | None = None
) -> list[dict]:
    """Composed against the masked SDPA at the shipped models' attention shape (batch 8, 4
    heads of 32 channels, float32, forward as the app runs it), l = round(sqrt(N)); ``names``
    picks some of crossover_layouts (default: all)."""
    rows = []
    for n in sizes:
        l = round(math.sqrt(n))
        g = torch.Generator().manual_seed(n)
        q, k, v = (torch.randn(8, 4, n, 32, generator=g) for _ in range(3))
        for name, layout in crossover_layouts(n).items():
            if names is not None and name not in names:
                continue
            times = {}
            for backend in ("sdpa", "composed"):
                with torch.no_grad():
                    times[backend], _ = timed(
                        lambda: attention(q, k, v, layout, backend=backend),  # noqa: B023
                        reps=reps,
                    )
            masked, ours = times["sdpa"], times["composed"]
            rows.append({"N": n, "l": l, "layout": name, "masked_ms": masked, "composed_ms": ours})
            _forget_masks()
    return rows


def crossover_lengths(rows: list[dict]) -> dict[str, int]:
    """Per layout measured: the smallest measured N from which composed is faster at every
    larger N measured (past the grid's end: never, written as a length no image reaches)."""
    out = {}
    for name in dict.fromkeys(r["layout"] for r in rows):
        mine = sorted((r for r in rows if r["layout"] == name), key=lambda r: r["N"])
        at = 2**31
        for r in reversed(mine):
            if r["composed_ms"] >= r["masked_ms"]:
                break
            at = r["N"]
        out[name] = at
    return out


def write_crossover(lengths: dict[str, int], path: Path | None = None) -> dict[str, int]:
    """Write the crossover lengths "auto" reads (kernels/crossover.json, loaded by
    kernels/composed.py as CROSSOVER_N): strided's length also for local, column and dilated
    (the same pieces), fixed's for fixed, axial's for axial (where not measured: the value
    there now), dense only for the log-sum-exp (see dispatch). Returns what it wrote."""
    path = path or composed_module.CROSSOVER_FILE
    values = {
        "dense": lengths["strided"],
        "local": lengths["strided"],
        "column": lengths["strided"],
        "strided": lengths["strided"],
        "fixed": lengths["fixed"],
        "axial": lengths.get("axial", json.loads(path.read_text())["axial"]),
        "dilated": lengths["strided"],
    }
    path.write_text(json.dumps(values, indent=1) + "\n")
    return values


def model_rows(reps: int) -> list[dict]:
    """A training step of the colour preset (batch 4, 3,072 tokens) and a 16-sample completion
    of the image's lower half, on the masked SDPA ("before") and on "auto" ("after"). Weights
    are a fixed random init: the cost does not depend on them."""
    from models.model import ModelConfig, SparseTransformer
    from models.sampling import sample

    rows = []
    for label, backend in (("before (masked SDPA)", "sdpa"), ("after (auto)", "auto")):
        config = ModelConfig.from_name("cifar-strided-96", attention_backend=backend)
        torch.manual_seed(0)
        model = SparseTransformer(config)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
        x = torch.randint(
            0, 256, (4, config.block_size), generator=torch.Generator().manual_seed(0)
        )

        def step(model=model, opt=opt, x=x):
            loss = model.loss(x)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

        step_ms, step_peak = timed(step, reps=reps, budget_s=20.0)
        model.eval()
        prefix = torch.randint(0, 256, (config.block_size // 2,))

        def complete(model=model, prefix=prefix):
            sample(model, n_samples=16, prefix=prefix, seed=0)

        completion_ms, _ = timed(complete, reps=1, budget_s=0.0)
        rows.append(
            {
                "case": label,
                "backend": backend,
                "train_step_ms": step_ms,
                "train_step_peak_mib": step_peak,
                "completion_s": completion_ms / 1e3,
            }
        )
        _forget_masks()
    return rows


def _fmt(x: float | None, spec: str, unit: str = "") -> str:
    return "-" if x is None else format(x, spec) + unit


def main_cpu(args) -> int:
    """The CPU run of tools.bench_kernels (its parser checked the arguments)."""
    torch.manual_seed(0)
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[args.dtype]
    print(
        f"# tools.bench_kernels --device cpu, {date.today()}, {platform.processor() or 'cpu'} "
        f"({os.cpu_count()} cores, {torch.get_num_threads()} threads), torch "
        f"{torch.__version__}; B=1, H={args.heads}, D={args.dim}, {args.dtype}; "
        "l = 2^ceil(log2(N)/2), c = l/8\n",
        flush=True,
    )
    flex = None if args.no_flex else Flex()
    print("| N | l | case | layout | fwd ms | vs dense | fwd+bwd ms | vs dense | peak MiB (fwd) |")
    print("|---|---|---|---|---|---|---|---|---|")
    rows: list[dict] = []
    notes: list[str] = []
    history: dict[tuple, tuple[int, float]] = {}
    for n in args.sizes:
        got, said = attention_rows(
            n, heads=args.heads, dim=args.dim, dtype=dtype, reps=args.reps, flex=flex,
            history=history,
        )  # fmt: skip
        rows += got
        notes += said
        for r in got:
            fwd = r.get("skipped") or f"{r['fwd_ms']:.1f}"
            if r["case"] == "FlexAttention":
                fwd_bwd = "no backward on the CPU"
            else:
                fwd_bwd = r.get("fwd_bwd_skipped") or _fmt(r["fwd_bwd_ms"], ".1f")
            print(
                f"| {n} | {r['l']} | {r['case']} | {r['layout']} | {fwd} "
                f"| {_fmt(r['fwd_x'], '.2f', 'x')} | {fwd_bwd} "
                f"| {_fmt(r['fwd_bwd_x'], '.2f', 'x')} "
                f"| {_fmt(r['peak_mib'], '.0f')} |",
                flush=True,
            )
    for line in notes:
        print(f"\n{line}", end="")
    print()
    result: dict = {
        "command": " ".join(["python -m tools.bench_kernels", *args.argv]),  # argv has --device
        "date": str(date.today()),
        "machine": f"{os.cpu_count()}-core CPU ({platform.processor() or platform.machine()})",
        "torch": torch.__version__,
        "shape": {"B": 1, "H": args.heads, "D": args.dim, "dtype": args.dtype},
        "attention": rows,
        "notes": notes,
    }
    if args.crossover:
        cross = crossover_rows(args.reps)
        lengths = crossover_lengths(cross)
        print("\n| N | l | layout | masked SDPA ms | composed ms | (B=8, H=4, D=32, fwd) |")
        print("|---|---|---|---|---|---|")
        for r in cross:
            print(
                f"| {r['N']} | {r['l']} | {r['layout']} | {r['masked_ms']:.2f} "
                f"| {r['composed_ms']:.2f} | {r['masked_ms'] / r['composed_ms']:.2f}x |"
            )
        print(f"\nwrote {write_crossover(lengths)} into kernels/crossover.json")
        result["crossover"] = {"rows": cross, "lengths": lengths}
    if not args.no_model:
        models = model_rows(args.reps)
        print("\n| colour preset (cifar-strided-96, 3,072 tokens) | training step ms (batch 4) "
              "| peak MiB | 16-sample completion of the lower half, s |")  # fmt: skip
        print("|---|---|---|---|")
        for r in models:
            print(
                f"| {r['case']} | {r['train_step_ms']:.0f} | {r['train_step_peak_mib']:.0f} "
                f"| {r['completion_s']:.1f} |"
            )
        result["model"] = models
    if args.json:
        path = Path(args.json)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result, indent=1) + "\n")
        print(f"\nwrote {path}")
    return 0


def interleaved_crossover_rows(
    sizes: tuple[int, ...], names: tuple[str, ...], reps: int
) -> list[dict]:
    """crossover_rows' comparison, timed for a shared machine: after one warm call of each
    backend (masks, plans), ``reps`` rounds of one masked-SDPA call and one composed call in
    turn, so that a burst of another process's load hits both alike; the median and the
    minimum of each."""
    rows = []
    for n in sizes:
        g = torch.Generator().manual_seed(n)
        q, k, v = (torch.randn(8, 4, n, 32, generator=g) for _ in range(3))
        for name, layout in crossover_layouts(n).items():
            if name not in names:
                continue
            times: dict[str, list[float]] = {"sdpa": [], "composed": []}
            with torch.no_grad():
                for backend in times:
                    attention(q, k, v, layout, backend=backend)
                for _ in range(reps):
                    for backend, got in times.items():
                        start = time.perf_counter()
                        attention(q, k, v, layout, backend=backend)
                        got.append(1e3 * (time.perf_counter() - start))
            rows.append(
                {
                    "N": n, "l": round(math.sqrt(n)), "layout": name,
                    "masked_ms": statistics.median(times["sdpa"]),
                    "composed_ms": statistics.median(times["composed"]),
                    "masked_min_ms": min(times["sdpa"]),
                    "composed_min_ms": min(times["composed"]),
                }
            )  # fmt: skip
            _forget_masks()
    return rows


def crossover_main(argv: list[str] | None = None) -> int:
    """python -m tools.bench_kernels_cpu: the crossover table alone, interleaved (nothing is
    written into kernels/crossover.json: `python -m tools.bench_kernels --device cpu --crossover`
    does that)."""
    from tools.cli import Parser, int_range

    p = Parser(prog="python -m tools.bench_kernels_cpu", description=crossover_main.__doc__)
    p.add_argument("--sizes", type=int_range(16, 65_536), nargs="+", default=CROSSOVER_SIZES)
    p.add_argument("--layouts", default="strided,fixed,axial")
    p.add_argument("--reps", type=int_range(1, 1000), default=9)
    p.add_argument("--threads", type=int_range(1, 1024), default=None)
    args = p.parse_args(argv)
    names = tuple(x.strip() for x in args.layouts.split(","))
    unknown = set(names) - set(crossover_layouts(1024))
    if unknown:
        raise ValueError(
            f"--layouts: {', '.join(sorted(unknown))}; choose from strided, fixed, axial"
        )
    if args.threads:
        torch.set_num_threads(args.threads)
    print(
        f"# python -m tools.bench_kernels_cpu {' '.join(argv or [])}, {date.today()}, "
        f"{os.cpu_count()} cores, {torch.get_num_threads()} torch threads, torch "
        f"{torch.__version__}; B=8, H=4, D=32, float32, forward, l = round(sqrt(N)); "
        f"{args.reps} interleaved rounds: median (min) ms\n"
    )
    print("| N | l | layout | masked SDPA ms | composed ms | masked / composed |")
    print("|---|---|---|---|---|---|", flush=True)
    rows = interleaved_crossover_rows(tuple(args.sizes), names, args.reps)
    for r in rows:
        print(
            f"| {r['N']} | {r['l']} | {r['layout']} | {r['masked_ms']:.2f} "
            f"({r['masked_min_ms']:.2f}) | {r['composed_ms']:.2f} ({r['composed_min_ms']:.2f}) "
            f"| {r['masked_ms'] / r['composed_ms']:.2f}x |"
        )
    print(f"\nfrom (composed faster at every larger N measured): {crossover_lengths(rows)}")
    return 0


if __name__ == "__main__":
    import sys

    from tools.cli import run_main

    sys.exit(run_main(crossover_main, sys.argv[1:]))
