"""kernels/dispatch.py's first-use check of the Triton kernels: "auto" on a GPU runs each kernel
family once on a small case against the composed path, and a family that raises or differs is
replaced by the composed path, said once (a log warning and kernel_notes()). No GPU here: a CPU
tensor is made to count as one (dispatch._on_gpu), with a wrong kernel injected, and the real
kernels are checked under TRITON_INTERPRET=1."""

from __future__ import annotations

import logging
import math

import pytest
import torch
from triton_util import needs_triton

import kernels.layouts as L
from kernels import dispatch
from kernels.composed import composed_attention

pytest.importorskip("triton")


@pytest.fixture
def fresh(monkeypatch):
    """A process that has checked nothing yet, where CPU tensors count as on a GPU."""
    monkeypatch.setattr(dispatch, "_verdicts", {})
    monkeypatch.setattr(dispatch, "_notes", [])
    monkeypatch.setattr(dispatch, "_on_gpu", lambda q: True)
    monkeypatch.setenv("TRITON_INTERPRET", "1")  # _kernel_misfit: kernels may run on the CPU
    monkeypatch.delenv(dispatch.ENV_VAR, raising=False)


def composed_kernel(q, k, v, spec, *, scale):
    """A correct 'kernel': the composed path of the check's layout."""
    layout = dispatch.CHECK_LAYOUTS[spec.kind]
    return composed_attention(q, k, v, layout, scale=scale)


def off_by_a_little(q, k, v, spec, *, scale):
    out, lse = composed_kernel(q, k, v, spec, scale=scale)
    return out + 1e-2, lse


def raising(q, k, v, spec, *, scale):
    raise RuntimeError("CUDA error: an illegal memory access was encountered")


def qkv(n: int = 100, d: int = 32, heads: int = 2):
    gen = torch.Generator().manual_seed(1)
    return [torch.randn(1, heads, n, d, generator=gen) for _ in range(3)]


def test_the_check_passes_a_correct_kernel_and_names_what_is_wrong_with_others():
    for family in ("band", "fixed"):
        assert dispatch.check_kernel(family, composed_kernel, torch.float32, "cpu", 32) is None
    why = dispatch.check_kernel("band", off_by_a_little, torch.float32, "cpu", 32)
    assert why.startswith("its output differs from the composed path by up to 0.01")
    assert "tolerance 0.0001 for float32" in why
    why = dispatch.check_kernel("fixed", raising, torch.float32, "cpu", 32)
    assert why == "it raised RuntimeError: CUDA error: an illegal memory access was encountered"

    # a low-precision dtype has its own, wider tolerance: 1e-3 off passes in float16
    def slightly(q, k, v, spec, *, scale):
        out, lse = composed_kernel(q, k, v, spec, scale=scale)
        return out + 1e-3, lse

    assert dispatch.check_kernel("band", slightly, torch.float16, "cpu", 32) is None
    assert dispatch.check_kernel("band", slightly, torch.float32, "cpu", 32) is not None


def test_auto_falls_back_to_composed_once_and_says_so(fresh, monkeypatch, caplog):
    calls = []

    def wrong(family):
        calls.append(family)
        return off_by_a_little if family == "band" else composed_kernel

    monkeypatch.setattr(dispatch, "_kernel_function", wrong)
    q, k, v = qkv()
    with caplog.at_level(logging.WARNING, logger="kernels.dispatch"):
        assert dispatch.resolve_backend(q, L.strided(10)) == "composed"  # band failed
        assert dispatch.resolve_backend(q, L.dense()) == "composed"  # band: dense too
        assert dispatch.resolve_backend(q, L.local(5)) == "composed"
        out = dispatch.attention(q, k, v, L.strided(10))
    assert calls == ["band"]  # checked once for the family, dtype and device
    want, _ = composed_attention(q, k, v, L.strided(10), scale=1 / math.sqrt(32))
    torch.testing.assert_close(out, want)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert (
        len(warnings) == 1 and "Triton band kernel (float32, cpu) failed its check" in warnings[0]
    )
    (note,) = dispatch.kernel_notes()
    assert "differs from the composed path" in note and 'backend="auto" uses the composed' in note
    # fixed passed its own check: "auto" takes its kernel
    assert dispatch.resolve_backend(q, L.fixed(10, 2, num_verts=2)) == "triton"
    assert calls == ["band", "fixed"]
    assert dispatch.kernel_notes() == [note]  # said once


def test_a_kernel_that_raises_is_replaced_and_a_forced_backend_is_not_checked(fresh, monkeypatch):
    monkeypatch.setattr(dispatch, "_kernel_function", lambda family: raising)
    q, _, _ = qkv()
    assert dispatch.resolve_backend(q, L.fixed(10, 2, num_verts=2)) == "composed"
    assert "raised RuntimeError" in dispatch.kernel_notes()[0]
    assert dispatch.resolve_backend(q, L.strided(10), "triton") == "triton"  # asked for: run


def test_a_family_checked_elsewhere_is_not_checked_again(fresh, monkeypatch):
    monkeypatch.setattr(dispatch, "_kernel_function", lambda family: composed_kernel)
    q, _, _ = qkv()
    assert dispatch.resolve_backend(q, L.strided(10)) == "triton"
    assert dispatch.kernel_notes() == []
    q16 = q.half()  # another dtype: its own check (passes)
    assert dispatch.resolve_backend(q16, L.strided(10)) == "triton"
    assert set(dispatch._verdicts) == {
        ("band", torch.float32, "cpu"),
        ("band", torch.float16, "cpu"),
    }


@needs_triton  # TRITON_INTERPRET=1 from the start (scripts/test.sh), or CUDA
def test_the_real_kernels_pass_their_check():
    device = "cuda" if torch.cuda.is_available() else "cpu"
    for family in ("band", "fixed"):
        run = dispatch._kernel_function(family)
        assert dispatch.check_kernel(family, run, torch.float32, device, 16) is None, family
