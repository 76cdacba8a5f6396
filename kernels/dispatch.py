"""The one attention entry point, the choice of backend behind it, and every input check.

    out = attention(q, k, v, strided(28))                                  # [B, H, N, D]
    out, lse = attention(q, k, v, fixed(128, 16), return_lse=True)         # lse [B, H, N]

Backends (one meaning each):
    "reference"  kernels/reference.py: plain masked softmax, O(N^2) memory; the ground truth.
    "sdpa"       torch's fused scaled_dot_product_attention with the layout's boolean mask
                 (is_causal for dense): the same exact math, much faster on the CPU; it gives
                 no log-sum-exp, so it refuses return_lse.
    "triton"     the fused kernels of kernels/triton/ for dense, local, column, strided and
                 fixed (CUDA tensors; on the CPU only under TRITON_INTERPRET=1, slowly, which is
                 how the tests run them).
    "composed"   kernels/composed.py: the layout's pieces as fused dense attention, merged
                 through their log-sum-exps: O(N·√N) work for strided on any device, with the
                 log-sum-exp and a backward (dense, local, column, strided, fixed, axial;
                 dilated where w * r >= N or r = 1; kernels.composed.composed_misfit says why
                 the other families stay on the masked path).
    "auto"       "triton" for CUDA tensors when a kernel fits the layout, dtype and head dim
                 and its family passed the first-use check (below; else "composed");
                 on other devices "composed" from the layout's measured crossover length on
                 (kernels.composed.CROSSOVER_N; dense only when the log-sum-exp is asked);
                 otherwise "sdpa", or "reference" when return_lse is asked.

The choice can be forced for a whole process with the environment variable
SPARSE_ATTENTION_BACKEND, or for a block of code with ``with use_backend("reference"):``;
both replace what "auto" means, and an explicit ``backend=`` other than "auto" wins over both.

The first-use check: before "auto" first runs a Triton kernel family ("band": dense, local,
column, strided; "fixed") for a dtype on a device, it runs that family on a small case
(CHECK_LAYOUTS) and compares its output and log-sum-exp with the composed path within the dtype's
tolerance (CHECK_TOLERANCE). A family that raises or differs is not used by "auto" in this
process: it falls back to "composed" and says so once (a warning in the log, and kernel_notes(),
which the Models & speed page shows). check_kernel is that comparison for any kernel function,
so the tests run it on the CPU with a wrong kernel, or the real ones under TRITON_INTERPRET=1.
An explicit backend="triton" is not checked: it runs the kernel asked for.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import os
import threading
from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import Tensor

from kernels.composed import composed_attention, composed_misfit, crossover
from kernels.layouts import Dense, Layout, fixed, strided
from kernels.reference import cached_mask, reference_attention
from kernels.selection import Selection, selection_attention

BACKENDS = ("auto", "reference", "sdpa", "triton", "composed")
ENV_VAR = "SPARSE_ATTENTION_BACKEND"
_forced: list[str] = []
log = logging.getLogger(__name__)

# the first-use check of each kernel family: a small case with every part of the family (a band,
# its column part; fixed's own block and summaries), ragged against the kernels' tiles
CHECK_LAYOUTS: dict[str, Layout] = {"band": strided(8), "fixed": fixed(8, 2, num_verts=2)}
CHECK_SHAPE = (1, 2, 88)  # B, H, N (D is the caller's head dim)
# |kernel - composed| <= atol + rtol * |composed| for out and lse, per dtype
CHECK_TOLERANCE = {torch.float32: 1e-4, torch.float16: 1e-2, torch.bfloat16: 5e-2}
_verdicts: dict[tuple[str, torch.dtype, str], str | None] = {}  # (family, dtype, device): why not
_notes: list[str] = []
_check_lock = threading.Lock()


def _check_backend(name: str) -> str:
    if name not in BACKENDS:
        raise ValueError(
            f"unknown attention backend {name!r}; backend must be one of {', '.join(BACKENDS)}"
        )
    return name


@contextlib.contextmanager
def use_backend(name: str) -> Iterator[None]:
    """Force a backend for every ``attention(..., backend="auto")`` call inside the block."""
    _forced.append(_check_backend(name))
    try:
        yield
    finally:
        _forced.pop()


def check_inputs(q: Tensor, k: Tensor, v: Tensor, layout: Layout | Selection) -> None:
    """Raise ValueError / TypeError with what is wrong and what is allowed (every backend)."""
    if not isinstance(layout, (Layout, Selection)):
        raise TypeError(
            f"layout must be a kernels.layouts.Layout or a kernels.selection.Selection, "
            f"got {type(layout).__name__}"
        )
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.ndim != 4:
            raise ValueError(f"{name} must be [B, H, N, D], got shape {tuple(t.shape)}")
    if not (q.shape == k.shape == v.shape):
        raise ValueError(
            f"q, k, v must have the same shape [B, H, N, D]; got {tuple(q.shape)}, "
            f"{tuple(k.shape)}, {tuple(v.shape)}"
        )
    if not (q.dtype == k.dtype == v.dtype):
        raise ValueError(f"q, k, v must share a dtype; got {q.dtype}, {k.dtype}, {v.dtype}")
    if not (q.device == k.device == v.device):
        raise ValueError(f"q, k, v must be on one device; got {q.device}, {k.device}, {v.device}")
    if q.shape[2] < 1:
        raise ValueError("the sequence is empty (N = 0)")
    layout.check_heads(q.shape[1])


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


def _kernel_misfit(q: Tensor, layout: Layout) -> str | None:
    """Why no fused kernel takes (q, layout), or None when one does."""
    if not (q.is_cuda or _interpreting()):
        return (
            "backend='triton' needs CUDA tensors, or TRITON_INTERPRET=1 to run the kernels "
            "on the CPU (slowly; that is how the tests run them)"
        )
    try:
        from kernels.triton.common import DTYPES, HEAD_DIMS, MAX_GRID_AXIS, kernel_spec
    except ImportError as e:  # triton is installed on Linux only (requirements.txt)
        return f"backend='triton' needs the triton package ({e})"
    try:
        spec = kernel_spec(layout, q.shape[2])
    except ValueError as e:
        return str(e)
    if q.dtype not in DTYPES:
        return f"the Triton kernels take float32, float16 or bfloat16, not {q.dtype}"
    if q.shape[-1] not in HEAD_DIMS:
        return f"the Triton kernels take head dims {HEAD_DIMS}, got D = {q.shape[-1]}"
    # B * H and the column part's l residues each take one grid axis of at most 65,535 programs
    if q.shape[0] * q.shape[1] > MAX_GRID_AXIS:
        return f"the Triton kernels take B * H <= {MAX_GRID_AXIS}, got {q.shape[0] * q.shape[1]}"
    if (spec.step or 1) > MAX_GRID_AXIS:
        return f"the Triton kernels take l <= {MAX_GRID_AXIS} for the column part, got {spec.step}"
    return None


def resolve_backend(
    q: Tensor, layout: Layout, backend: str = "auto", *, return_lse: bool = False
) -> str:
    """The concrete backend ``attention(q, ..., layout, backend=backend, return_lse=...)`` runs.

    A forced backend (use_backend, then SPARSE_ATTENTION_BACKEND) takes the place of "auto".
    ValueError when the backend cannot: "triton" without a kernel for this layout, dtype, head
    dim or device; "composed" for a layout it cannot compose; "sdpa" asked for the log-sum-exp.
    """
    _check_backend(backend)
    if backend == "auto" and _forced:
        backend = _forced[-1]
    if backend == "auto" and os.environ.get(ENV_VAR):
        backend = _check_backend(os.environ[ENV_VAR])
    if backend == "auto":
        # kernels are looked up for CUDA tensors only: a CPU-only install imports no triton
        if _on_gpu(q) and _kernel_misfit(q, layout) is None:
            if kernel_verdict(q, layout) is None:
                return "triton"
            if composed_misfit(layout, q.shape[2]) is None:  # the family failed its check
                return "composed"
        elif not _on_gpu(q) and _composed_pays(q, layout, return_lse):
            return "composed"
        return "reference" if return_lse else "sdpa"
    if backend == "composed":
        misfit = composed_misfit(layout, q.shape[2])
        if misfit is not None:
            raise ValueError(misfit)
    if backend == "triton":
        misfit = _kernel_misfit(q, layout)
        if misfit is not None:
            raise ValueError(misfit)
    if backend == "sdpa" and return_lse:
        raise ValueError(
            "backend='sdpa' cannot return the log-sum-exp (torch's SDPA does not give it); "
            "use backend='reference', 'triton' or 'auto'"
        )
    return backend


def _on_gpu(q: Tensor) -> bool:
    """Whether "auto" treats q as on a GPU (the tests make a CPU tensor one)."""
    return q.is_cuda


def _kernel_function(family: str) -> Callable:
    """The fused kernel of a family: (q, k, v, spec, *, scale) -> (out, lse)."""
    if family == "fixed":
        from kernels.triton.fixed import fixed_attention

        return fixed_attention
    from kernels.triton.band_column import band_column_attention

    return band_column_attention


def _family(layout: Layout, n: int) -> str:
    from kernels.triton.common import kernel_spec

    return kernel_spec(layout, n).kind


def check_kernel(
    family: str, run: Callable, dtype: torch.dtype, device: torch.device | str, head_dim: int
) -> str | None:
    """Run the kernel ``run`` of ``family`` on its small case (CHECK_LAYOUTS, CHECK_SHAPE) and
    compare its output and log-sum-exp with the composed path: None when they agree within
    CHECK_TOLERANCE[dtype], else what went wrong (the exception, or the largest difference)."""
    from kernels.triton.common import kernel_spec

    layout = CHECK_LAYOUTS[family]
    b, h, n = CHECK_SHAPE
    gen = torch.Generator().manual_seed(0)
    q, k, v = (
        torch.randn(b, h, n, head_dim, generator=gen).to(device=device, dtype=dtype)
        for _ in range(3)
    )
    scale = 1.0 / math.sqrt(head_dim)
    tol = CHECK_TOLERANCE.get(dtype, 1e-4)
    try:
        with torch.no_grad():
            want_out, want_lse = composed_attention(q, k, v, layout, scale=scale)
            got_out, got_lse = run(q, k, v, kernel_spec(layout, n), scale=scale)
        for what, got, want in (("output", got_out, want_out), ("lse", got_lse, want_lse)):
            got, want = got.double(), want.double()
            if got.shape != want.shape:
                return f"its {what} has shape {tuple(got.shape)}, not {tuple(want.shape)}"
            bad = ~torch.isclose(got, want, rtol=tol, atol=tol)
            if bad.any():
                worst = float((got - want).abs().nan_to_num(math.inf).max())
                return (
                    f"its {what} differs from the composed path by up to {worst:.3g} "
                    f"(tolerance {tol:g} for {str(dtype).removeprefix('torch.')})"
                )
    except Exception as e:  # noqa: BLE001  (any failure of the kernel is a verdict)
        return f"it raised {type(e).__name__}: {e}"
    return None


def kernel_verdict(q: Tensor, layout: Layout) -> str | None:
    """None when the Triton kernel family of ``layout`` passed its first-use check for q's
    dtype and device (run now if it has not been), else why it did not."""
    family = _family(layout, q.shape[2])
    key = (family, q.dtype, str(q.device))
    if key in _verdicts:
        return _verdicts[key]
    with _check_lock:
        if key not in _verdicts:
            why = check_kernel(family, _kernel_function(family), q.dtype, q.device, q.shape[-1])
            _verdicts[key] = why
            if why is not None:
                note = (
                    f"The Triton {family} kernel ({str(q.dtype).removeprefix('torch.')}, "
                    f"{q.device}) failed its check against the composed path: {why}. "
                    'backend="auto" uses the composed path instead.'
                )
                _notes.append(note)
                log.warning(note)
    return _verdicts[key]


def kernel_notes() -> list[str]:
    """What the first-use checks found wrong in this process, one line each (none: [])."""
    return list(_notes)


def _composed_pays(q: Tensor, layout: Layout, return_lse: bool) -> bool:
    """Whether "auto" takes "composed": a layout it composes, at a length from which it beats
    the masked SDPA (dense: only for the log-sum-exp, which SDPA does not give)."""
    if isinstance(layout, Dense) and not return_lse:
        return False
    return composed_misfit(layout, q.shape[2]) is None and q.shape[2] >= crossover(layout)


def attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    layout: Layout | Selection,
    *,
    scale: float | None = None,
    backend: str = "auto",
    return_lse: bool = False,
) -> Tensor | tuple[Tensor, Tensor]:
    """Exact attention of q, k, v [B, H, N, D] restricted to ``layout``: out [B, H, N, D], and
    with ``return_lse`` also the log-sum-exp of every row, lse [B, H, N] (natural log; float32,
    float64 for float64 inputs on the reference and the composed pieces). The log-sum-exp of
    the fused backends ("triton", "composed") carries no gradient. A content-based selection
    (kernels/selection.py: topk, moba) runs its exact masked path whatever the backend."""
    check_inputs(q, k, v, layout)
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale)
    if isinstance(layout, Selection):  # chosen from the scores: the exact masked path only
        return selection_attention(q, k, v, layout, scale=scale, return_lse=return_lse)
    chosen = resolve_backend(q, layout, backend, return_lse=return_lse)
    if chosen in ("triton", "composed"):
        run = _triton_attention if chosen == "triton" else composed_attention
        out, lse = run(q, k, v, layout, scale=scale)
        return (out, lse) if return_lse else out
    if chosen == "reference":
        res = reference_attention(q, k, v, layout, scale=scale, return_lse=return_lse)
        return (res.out, res.lse) if return_lse else res.out
    return _sdpa_attention(q, k, v, layout, scale)


def _triton_attention(
    q: Tensor, k: Tensor, v: Tensor, layout: Layout, *, scale: float
) -> tuple[Tensor, Tensor]:
    from kernels.triton.band_column import band_column_attention
    from kernels.triton.common import kernel_spec
    from kernels.triton.fixed import fixed_attention

    spec = kernel_spec(layout, q.shape[2])
    run = fixed_attention if spec.kind == "fixed" else band_column_attention
    return run(q, k, v, spec, scale=scale)


def _sdpa_attention(q: Tensor, k: Tensor, v: Tensor, layout: Layout, scale: float) -> Tensor:
    B, H, N, _ = q.shape
    if isinstance(layout, Dense):
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale)
    bias = _additive_mask(layout, N, H, q.device, q.dtype)  # [H or 1, N, N]: 0 or -inf
    # expanded to the full [B, H, N, N] view (no copy): torch's fused CPU kernel takes this
    # shape and is ~3x faster than with a broadcast mask, which falls back to the math path
    return F.scaled_dot_product_attention(q, k, v, attn_mask=bias.expand(B, H, N, N), scale=scale)


@functools.lru_cache(maxsize=32)
def _additive_mask(
    layout: Layout, n: int, n_heads: int, device: torch.device, dtype: torch.dtype
) -> Tensor:
    allowed = cached_mask(layout, n, n_heads, device)
    return torch.zeros(allowed.shape, dtype=dtype, device=device).masked_fill(~allowed, -math.inf)
