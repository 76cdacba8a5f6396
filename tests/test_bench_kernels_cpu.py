"""tools/bench_kernels_cpu.py: `python -m tools.bench_kernels --device cpu` at a small size, and
the crossover it writes into kernels/crossover.json."""

import json

import pytest

from kernels import composed
from tools import bench_kernels
from tools.bench_kernels_cpu import crossover_lengths, stride_for, write_crossover


def test_stride_is_the_power_of_two_at_or_above_sqrt_n():
    assert [stride_for(n) for n in (1024, 2048, 4096, 16384, 65536)] == [32, 64, 64, 128, 256]


def test_head_dims_are_the_triton_kernels():
    common = pytest.importorskip("kernels.triton.common")
    assert bench_kernels.HEAD_DIMS == common.HEAD_DIMS


def test_the_crossover_is_where_composed_stays_faster():
    rows = [
        {"N": n, "layout": lay, "masked_ms": m, "composed_ms": c}
        for n, lay, m, c in [
            (512, "strided", 1.0, 2.0), (784, "strided", 2.0, 1.0), (1024, "strided", 3.0, 3.5),
            (2048, "strided", 9.0, 4.0), (512, "fixed", 1.0, 0.5), (784, "fixed", 2.0, 1.0),
            (1024, "fixed", 3.0, 4.0), (2048, "fixed", 9.0, 9.5),
        ]
    ]  # fmt: skip
    # strided: faster at 784 but not at 1,024, so from 2,048; fixed: never at the grid's end
    assert crossover_lengths(rows) == {"strided": 2048, "fixed": 2**31}


def test_write_crossover_writes_the_data_composed_reads(tmp_path):
    path = tmp_path / "crossover.json"
    path.write_text(composed.CROSSOVER_FILE.read_text())
    wrote = write_crossover({"strided": 1536, "fixed": 2048}, path)
    assert json.loads(path.read_text()) == wrote
    assert wrote["strided"] == wrote["local"] == wrote["dilated"] == 1536 and wrote["fixed"] == 2048
    assert wrote["axial"] == composed.CROSSOVER_N["axial"]  # not measured: kept
    assert set(wrote) == set(composed.CROSSOVER_N)
    assert write_crossover({"strided": 1, "fixed": 1, "axial": 5}, path)["axial"] == 5


def test_the_shipped_crossover_is_what_composed_loads():
    assert composed.CROSSOVER_FILE.parent.name == "kernels"
    assert json.loads(composed.CROSSOVER_FILE.read_text()) == composed.CROSSOVER_N


def test_a_small_run_prints_every_case_and_writes_its_rows(tmp_path, capsys):
    out = tmp_path / "bench.json"
    args = ["--device", "cpu", "--sizes", "1024", "--reps", "1", "--no-flex", "--no-model"]
    assert bench_kernels.main([*args, "--json", str(out)]) == 0
    table = capsys.readouterr().out
    for case in ("dense causal SDPA", "masked SDPA", "composed"):
        assert f"| 1024 | 32 | {case} |" in table
    data = json.loads(out.read_text())
    cases = {(r["case"], r["layout"]) for r in data["attention"]}
    assert cases == {
        ("dense causal SDPA", "dense"), ("masked SDPA", "strided"), ("masked SDPA", "fixed"),
        ("composed", "strided"), ("composed", "fixed"),
    }  # fmt: skip
    for r in data["attention"]:
        assert r["fwd_ms"] > 0 and r["fwd_bwd_ms"] > 0 and r["peak_mib"] >= 0
    assert data["shape"] == {"B": 1, "H": 4, "D": 64, "dtype": "fp32"}
    assert data["command"].count("--device cpu") == 1  # as given, once


def test_sizes_not_measured_on_the_device_are_refused(capsys):
    assert bench_kernels.main(["--device", "cpu", "--sizes", "3072"]) == 2
    assert "--sizes on cpu: 3072 not among" in capsys.readouterr().err
