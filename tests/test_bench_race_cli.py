"""tools/bench_race.py's command line: the new layout families by name or spec, and bad input
as one ``error:`` line with exit status 2, never a traceback (tools/cli.py's contract)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tools import bench_race
from tools.cli import run_main

ROOT = Path(__file__).resolve().parents[1]


def _fails(argv: list[str], capsys) -> str:
    assert run_main(bench_race.main, argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (["--minutes", "0"], "--minutes"),
        (["--minutes", "nan"], "finite"),
        (["--preset", "nonsense"], "nonsense"),
        (["--marks", "nan"], "--marks"),
        (["--marks", "5,2"], "ascending"),
        (["--marks", "2,,5"], "--marks"),
        (["--size", "12"], "--size"),
        (["--seed", "-1"], "--seed"),
        (["--layouts", "nonsense"], "unknown layout 'nonsense'"),
        (["--layouts", "axial,,sinks"], "an empty item"),
        (["--layouts", "strided(l=7"], "unbalanced"),
        (["--layouts", "sinks(s=0, w=3)"], "sinks: s must be >= 1"),
        (["--layouts", "strided, strided(l=7)"], "each layout kind once: strided"),
    ],
)
def test_bad_input_is_one_error_line(args, said, capsys, tmp_path):
    line = _fails([*args, "--out", str(tmp_path / "race")], capsys)
    assert said in line
    assert not (tmp_path / "race").exists()  # refused before any work


def test_an_out_folder_with_files_is_refused_before_any_work(capsys, tmp_path):
    (tmp_path / "taken.txt").write_text("x")
    assert "already holds files" in _fails(["--out", str(tmp_path)], capsys)


def test_families_by_name_and_specs_split_at_the_top_level_commas():
    assert bench_race.split_layouts("axial,neighborhood, sinks") == (
        "axial",
        "neighborhood",
        "sinks",
    )
    assert bench_race.split_layouts("strided(l=7), fixed(l=14, c=3)") == (
        "strided(l=7)",
        "fixed(l=14, c=3)",
    )
    assert bench_race.parse_marks("1, 2.5,3") == [1.0, 2.5, 3.0]


def test_the_command_itself_prints_no_traceback():
    done = subprocess.run(
        [sys.executable, "-m", "tools.bench_race", "--minutes", "0", "--out", "unused"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2
    assert done.stderr.startswith("error: ") and "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
