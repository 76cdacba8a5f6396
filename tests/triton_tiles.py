"""Pin the fused kernels' tiles in a test: tile edges where autotune's one interpreter config
(16 x 16) would not put them, as the GPU's BLOCK_M != BLOCK_N tiles do."""

from __future__ import annotations

import pytest


def pin_tiles(monkeypatch: pytest.MonkeyPatch, kernels, block_m: int, block_n: int) -> None:
    """Run each of ``kernels`` (@triton.autotune functions) with the one (BLOCK_M, BLOCK_N) tile
    for the rest of the test: an autotuner with one config launches it without benchmarking."""
    import triton

    config = triton.Config({"BLOCK_M": block_m, "BLOCK_N": block_n}, num_warps=4)
    for kernel in kernels:
        monkeypatch.setattr(kernel, "configs", [config])
