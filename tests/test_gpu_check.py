"""scripts/gpu_check.sh, the one check a session with a GPU runs first, in its CPU dry run: the
steps that need no CUDA run, every CUDA step says "skipped: no CUDA", and it exits 0."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
CUDA_STEPS = ["kernel-gpu", "kernel-small", "bench-65536", "bench-3072", "sampling", "app"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="with CUDA the script runs for minutes")
@pytest.mark.skipif(shutil.which("timeout") is None, reason="needs coreutils' timeout")
def test_the_gpu_check_dry_runs_on_the_cpu(tmp_path):
    env = {**os.environ, "PYTHON": sys.executable, "OUT": str(tmp_path)}
    run = subprocess.run(
        ["bash", str(ROOT / "scripts" / "gpu_check.sh")],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    summary = (tmp_path / "summary.txt").read_text()
    for name in ("env", "bench-help"):
        assert f"{name} " in summary and "ok" in summary.split(f"{name} ")[1].splitlines()[0]
    for name in CUDA_STEPS:
        assert (tmp_path / f"{name}.log").read_text().strip() == "skipped: no CUDA"
        assert f"{name} " in summary
    assert "usage: python -m tools.bench_kernels" in (tmp_path / "bench-help.log").read_text()
