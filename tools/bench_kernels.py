"""Benchmark the sparse kernels against the anchors, all measured in one run.

    python -m tools.bench_kernels                 # N in {3072, 16384, 65536}, B=1, H=16, D=64, bf16
    python -m tools.bench_kernels --sizes 3072    # a quick run
    python -m tools.bench_kernels --device cpu    # kernels/composed.py: tools/bench_kernels_cpu.py

For each N (l = 96, 128, 256; c = l / 8) it prints forward and forward+backward times of dense
causal SDPA, FlexAttention with the exact mask, FlexAttention composed as in docs/DESIGN.md,
"Composing sparse attention from dense pieces" (tools/flex_anchors.py), and ours
(kernels.attention with backend="triton"), with the ratio to dense, the useful-work TFLOP/s
(4 * nnz * D flops per head for the forward) and the forward's peak memory; the tiles
@triton.autotune picked for each of our kernels at each N; the capture of one layer in each form
(time, peak memory, ratio to the forward); then one training step of a 32x32x3 model (3,072
tokens) with strided attention against the same model on dense SDPA.
"""

from __future__ import annotations

import sys
from datetime import date

import torch
import torch.nn.functional as F

from kernels import capture as C
from kernels.dispatch import attention
from kernels.layouts import Layout, fixed, strided
from tools.bench_kernels_cpu import DEFAULT_JSON, main_cpu
from tools.bench_kernels_cpu import SIZES as CPU_SIZES
from tools.cli import Parser, int_range, run_main
from tools.flex_anchors import composed, flex_exact

HEAD_DIMS = (16, 32, 64, 128)  # kernels.triton.common.HEAD_DIMS, without importing triton

SIZES = {3072: 96, 16384: 128, 65536: 256}


def timed(fn, grad=None) -> tuple[float, float]:
    """(milliseconds, peak MiB) of fn(), or of fn() plus its backward with ``grad``."""
    from triton.testing import do_bench

    def run():
        out = fn()
        out = out[0] if isinstance(out, tuple) else out
        if grad is not None:
            out.backward(grad)

    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    run()
    torch.cuda.synchronize()
    peak = (torch.cuda.max_memory_allocated() - base) / 2**20
    return do_bench(run, warmup=5, rep=25), peak


def tuned() -> dict[str, str]:
    """{kernel: the tiles autotune picked for its last launch} of our attention kernels."""
    from kernels.triton import band_column, common
    from kernels.triton import fixed as fixed_kernels

    return common.tuned_configs(*band_column.KERNELS, *fixed_kernels.KERNELS)


def relative_error(got: torch.Tensor, want: torch.Tensor) -> float:
    return ((got.float() - want.float()).norm() / want.float().norm()).item()


def attention_rows(n: int, l: int, heads: int, dim: int) -> list[dict]:
    flex = torch.compile(
        __import__("torch.nn.attention.flex_attention", fromlist=["flex_attention"]).flex_attention
    )
    q, k, v = (
        torch.randn(1, heads, n, dim, device="cuda", dtype=torch.bfloat16, requires_grad=True)
        for _ in range(3)
    )
    grad = torch.randn_like(q)
    layouts: dict[str, Layout] = {"strided": strided(l), "fixed": fixed(l, max(1, l // 8))}
    dense_flops = 4 * n * (n + 1) / 2 * dim * heads
    cases = [
        (
            "dense causal SDPA",
            "dense",
            dense_flops,
            lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True),
        )
    ]
    for name, lay in layouts.items():
        useful = 4 * lay.nnz(n) * dim * heads
        cases += [
            (
                f"Flex exact mask {name}",
                name,
                useful,
                lambda lay=lay: flex_exact(q, k, v, lay, compiled=flex),
            ),
            (
                f"Flex composed {name}",
                name,
                useful,
                lambda lay=lay: composed(q, k, v, lay, compiled=flex),
            ),
        ]
        cases.append(
            (
                f"ours {name}",
                name,
                useful,
                lambda lay=lay: attention(q, k, v, lay, backend="triton"),
            )
        )
    rows = []
    exact = {}
    for label, layout, flops, fn in cases:
        with torch.no_grad():
            out = fn()
            out = out[0] if isinstance(out, tuple) else out
        if label.startswith("Flex exact"):
            exact[layout] = out
        # error against FlexAttention with the exact mask (same bf16 inputs): "-" for anchors
        err = relative_error(out, exact[layout]) if label.startswith("ours") else None
        fwd, peak = timed(fn)
        fwd_bwd, _ = timed(fn, grad)
        rows.append(
            {
                "N": n,
                "case": label,
                "layout": layout,
                "fwd_ms": fwd,
                "fwd_bwd_ms": fwd_bwd,
                "tflops": flops / fwd / 1e9,
                "peak_mib": peak,
                "rel_err": err,
            }
        )
    dense = rows[0]
    for r in rows:
        r["fwd_x"] = dense["fwd_ms"] / r["fwd_ms"]
        r["fwd_bwd_x"] = dense["fwd_bwd_ms"] / r["fwd_bwd_ms"]
    return rows


def capture_rows(n: int, l: int, heads: int, dim: int) -> list[dict]:
    """Capture of all heads of one layer in each form: time, peak memory, and the layer's own
    forward time for scale."""
    q, k, v = (torch.randn(1, heads, n, dim, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    lay = strided(l)
    forward, _ = timed(lambda: attention(q, k, v, lay, backend="triton"))
    rows = []
    for form, fn in (
        ("sparse (CSR on the layout)", lambda: C.capture_sparse(q, k, lay, backend="triton")),
        ("pooled 128x128 mean+max", lambda: C.capture_pooled(q, k, lay, 128, backend="triton")),
        (
            "16 exact rows",
            lambda: C.capture_rows(q, k, lay, torch.arange(0, n, n // 16), backend="triton"),
        ),
    ):
        ms, peak = timed(fn)
        rows.append({"N": n, "form": form, "ms": ms, "peak_mib": peak, "vs_forward": ms / forward})
    return rows


def training_step_rows(batch: int = 8) -> list[dict]:
    from models.model import ModelConfig, SparseTransformer

    rows = []
    for label, layout, backend in (
        ("dense SDPA", "dense()", "sdpa"),
        ("strided (ours)", "strided(l=96)", "triton"),
    ):
        config = ModelConfig.from_name("cifar-small", layout=layout, attention_backend=backend)
        model = SparseTransformer(config).cuda()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
        x = torch.randint(0, 256, (batch, config.block_size), device="cuda")

        def step(model=model, opt=opt, x=x):
            with torch.autocast("cuda", dtype=torch.bfloat16):
                loss = model.loss(x)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

        from triton.testing import do_bench

        rows.append({"case": label, "ms": do_bench(step, warmup=3, rep=20)})
    return rows


def main(argv: list[str] | None = None) -> int:
    """The command line: bad input is one ``error:`` line and exit status 2 (tools/cli.py)."""
    return run_main(_main, argv)


def _main(argv: list[str] | None = None) -> int:
    p = Parser(prog="python -m tools.bench_kernels", description=__doc__.split("\n")[0])
    p.add_argument(
        "--device",
        choices=["cuda", "cpu"],
        default="cuda",
        help="cuda (the Triton kernels, default) or cpu (kernels/composed.py: see "
        "tools/bench_kernels_cpu.py)",
    )
    p.add_argument(
        "--sizes",
        type=int_range(1, max(CPU_SIZES)),
        nargs="+",
        help=f"sequence lengths N: of {', '.join(map(str, SIZES))} on cuda (default all), of "
        f"{', '.join(map(str, CPU_SIZES))} on cpu (default all)",
    )
    # 128 heads at N = 65,536 is ~1 GiB per bf16 tensor: the most one GPU holds comfortably
    p.add_argument("--heads", type=int_range(1, 128), help="1-128 (default 16 on cuda, 4 on cpu)")
    p.add_argument(
        "--dim",
        type=int_range(1, max(HEAD_DIMS)),
        default=64,
        choices=list(HEAD_DIMS),
        help="head dimension the Triton kernels take (default 64)",
    )
    p.add_argument("--no-train", action="store_true", help="skip the training-step table (cuda)")
    p.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32", help="cpu: default fp32")
    p.add_argument("--reps", type=int_range(1, 100), default=5, help="cpu: timed calls per case")
    p.add_argument("--no-flex", action="store_true", help="cpu: skip FlexAttention")
    p.add_argument(
        "--no-model", action="store_true", help="cpu: skip the training step and completion"
    )
    p.add_argument(
        "--crossover",
        action="store_true",
        help="cpu: measure composed against the masked SDPA near N = 1,024 and write the "
        "crossover lengths into kernels/crossover.json",
    )
    p.add_argument(
        "--json",
        default=str(DEFAULT_JSON),
        help="cpu: where to write the rows (default docs/benchmarks/cpu_attention.json; '' for "
        "none)",
    )
    args = p.parse_args(argv)
    sizes = CPU_SIZES if args.device == "cpu" else tuple(SIZES)
    if args.sizes is None:
        args.sizes = list(sizes)
    bad = [n for n in args.sizes if n not in sizes]
    if bad:
        p.error(
            f"--sizes on {args.device}: {', '.join(map(str, bad))} not among "
            f"{', '.join(map(str, sizes))}"
        )
    if args.device == "cpu":
        args.heads = args.heads or 4
        args.argv = list(argv if argv is not None else sys.argv[1:])
        return main_cpu(args)
    args.heads = args.heads or 16
    if not torch.cuda.is_available():
        print("error: the kernel benchmark needs a CUDA GPU", file=sys.stderr)
        return 2
    import triton

    # FlexAttention is compiled once per mask, size and grad mode: far more than dynamo's
    # default of 8 recompilations, after which it would silently run unfused
    torch._dynamo.config.recompile_limit = 256
    torch._dynamo.config.accumulated_recompile_limit = 4096

    print(
        f"# tools.bench_kernels, {date.today()}, {torch.cuda.get_device_name()}, torch "
        f"{torch.__version__}, triton {triton.__version__}; B=1, H={args.heads}, D={args.dim}, "
        "bf16\n"
    )
    print(
        "| N | case | fwd ms | vs dense | fwd+bwd ms | vs dense | useful TFLOP/s | peak MiB "
        "| rel. err vs Flex exact |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for n in args.sizes:
        for r in attention_rows(n, SIZES[n], args.heads, args.dim):
            err = "-" if r["rel_err"] is None else f"{r['rel_err']:.1e}"
            print(
                f"| {n} | {r['case']} | {r['fwd_ms']:.3f} | {r['fwd_x']:.2f}x "
                f"| {r['fwd_bwd_ms']:.3f} | {r['fwd_bwd_x']:.2f}x | {r['tflops']:.1f} "
                f"| {r['peak_mib']:.0f} | {err} |",
                flush=True,
            )
    print("\n| kernel (autotune key) | tiles autotune picked (BLOCK_MxBLOCK_N, warps, stages) |")
    print("|---|---|")
    for name, config in tuned().items():
        print(f"| {name} | {config} |")
    print("\n| N | capture of one layer (strided, all heads) | ms | x forward | peak MiB |")
    print("|---|---|---|---|---|")
    for n in args.sizes:
        for r in capture_rows(n, SIZES[n], args.heads, args.dim):
            print(
                f"| {n} | {r['form']} | {r['ms']:.3f} | {r['vs_forward']:.2f} "
                f"| {r['peak_mib']:.0f} |",
                flush=True,
            )
    if args.no_train:
        return 0
    steps = training_step_rows()
    print("\n| training step, 32x32x3 (3,072 tokens), batch 8, bf16 | ms |")
    print("|---|---|")
    for r in steps:
        print(f"| {r['case']} | {r['ms']:.2f} |")
    print(f"\nstrided / dense speed-up: {steps[0]['ms'] / steps[1]['ms']:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
