"""The Playground page through AppTest: a short race on tiny synthetic data, live, saved as run
folders that the Training page lists and the other pages offer as models; the queue, Stop, the
memory refusal and the switch that turns the page off."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from app_pages import playground_job
from app_pages.jobs import WorkerPool
from tests.test_app import chart, trace, values
from tests.test_training import tiny_data  # noqa: F401  (a fixture)

APP = str(Path(__file__).resolve().parents[1] / "app.py")


@pytest.fixture
def playground(tiny_data, tmp_path, monkeypatch):  # noqa: F811
    """The app pointed at tiny data, an empty runs folder and a fresh training pool."""
    monkeypatch.setenv("SPARSE_EXPLORER_PLAYGROUND_DATA", tiny_data)
    monkeypatch.setenv("SPARSE_EXPLORER_RUNS", str(tmp_path / "runs"))
    monkeypatch.setattr(playground_job, "TRAINING_POOL", WorkerPool(1, max_queued=2))
    import app_pages.playground as _  # noqa: F401  (nothing: the page is a script)

    return tmp_path / "runs"


def wait_for(at, done, timeout: float = 120.0) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        at.run()
        assert not at.exception, at.exception
        if done(at):
            return
        time.sleep(0.5)
    raise AssertionError("the race did not get there in time")


def progress_text(at) -> str:
    """The texts of the page's progress bars."""
    return "\n".join(str(p.proto.text) for p in at.get("progress"))


def texts(at) -> str:
    return "\n".join(
        [
            *(s.value for s in at.success),
            *(c.value for c in at.caption),
            *(i.value for i in at.info),
        ]
    )


def test_a_short_race_runs_live_and_saves_run_folders(playground):
    at = AppTest.from_file(APP, default_timeout=120)
    at.switch_page("app_pages/playground.py").run()
    assert not at.exception, at.exception
    at.selectbox(key="pg_preset").set_value("fmnist-tiny")
    at.radio(key="pg_budget").set_value("steps").run()
    at.number_input(key="pg_steps").set_value(8).run()
    assert "MB of memory" in texts(at)
    at.button(key="pg_train").click().run()
    assert not at.exception, at.exception
    wait_for(at, lambda at: "Saved:" in texts(at))
    curves = chart(at, "pg_by_step")
    held = values(trace(curves, "strided held-out")["x"])
    assert held[0] == 0 and len(held) >= 2
    assert trace(chart(at, "pg_by_time"), "dense train")
    # the cost table says which attention kernel each layout trained with (sdpa at 196 tokens)
    table = next(m.value for m in at.markdown if "attention kernel" in m.value)
    assert "| 1.000 | sdpa |" in table and table.count("| sdpa |") == 3
    for name in ("dense", "strided", "fixed"):
        assert chart(at, f"pg_heads_{name}")
    races = list(playground.glob("playground-*"))
    assert len(races) == 1
    for name in ("dense", "strided", "fixed"):
        assert (races[0] / name / "model.safetensors").is_file()
        assert (races[0] / name / "timeline.npz").is_file()
    # the other pages see the models and the runs
    at.switch_page("app_pages/attention.py").run()
    assert not at.exception, at.exception
    assert f"{races[0].name}/strided" in at.selectbox(key="att_model").options
    at.switch_page("app_pages/training.py").run()
    assert not at.exception, at.exception
    assert any(f.endswith("/strided") for f in at.selectbox(key="trn_folder").options)


def test_stop_saves_and_a_second_session_waits_its_turn(playground):
    first = AppTest.from_file(APP, default_timeout=120)
    first.switch_page("app_pages/playground.py").run()
    first.selectbox(key="pg_preset").set_value("fmnist-tiny")
    first.radio(key="pg_budget").set_value("steps").run()
    first.number_input(key="pg_steps").set_value(5000).run()
    first.button(key="pg_train").click().run()
    # a step taken (the bar says "step 0 of ..." from the start: a race stopped before its
    # first step saves nothing, and on a busy machine the Stop below could come that early)
    wait_for(first, lambda at: re.search(r"step [1-9]", progress_text(at)) is not None)
    second = AppTest.from_file(APP, default_timeout=120)
    second.switch_page("app_pages/playground.py").run()
    second.selectbox(key="pg_preset").set_value("fmnist-tiny")
    second.radio(key="pg_budget").set_value("steps").run()
    second.button(key="pg_train").click().run()
    assert not second.exception, second.exception
    assert "number 1 in the queue" in texts(second)
    first.button(key="pg_stop").click().run()
    wait_for(first, lambda at: "Saved:" in texts(at))
    assert "stopped" in "\n".join(str(p.proto.text) for p in first.get("progress"))
    job = second.session_state["pg_job"]
    job.task.cancel("test over")
    job.task.wait(60)


def test_refused_over_budget_and_switched_off(playground, monkeypatch):
    at = AppTest.from_file(APP, default_timeout=120)
    at.switch_page("app_pages/playground.py").run()
    at.selectbox(key="pg_preset").set_value("fmnist-small")
    at.radio(key="pg_size").set_value("28 x 28 (Fashion-MNIST)").run()
    at.multiselect(key="pg_layouts").set_value(["dense", "strided", "fixed"]).run()
    monkeypatch.setattr("app_pages.jobs.MEMORY_BUDGET", 100 * 2**20)
    at.run()
    assert any("would need about" in e.value for e in at.error)
    assert at.button(key="pg_train").disabled
    monkeypatch.setenv("SPARSE_EXPLORER_PLAYGROUND", "off")
    at.run()
    assert not at.exception
    assert "switched off" in texts(at)


def test_any_family_races_with_its_parameters_and_a_bad_one_is_named(playground):
    """New families by name, each one's parameters editable within a stated range (defaults
    sized for the image); a bad combination is one message and Train waits; the cost table
    gives each family's kernel and its median step time with the spread."""
    at = AppTest.from_file(APP, default_timeout=120)
    at.switch_page("app_pages/playground.py").run()
    at.multiselect(key="pg_layouts").set_value(["dense", "fixed"]).run()
    at.number_input(key="pg_fixed_l").set_value(5).run()
    at.number_input(key="pg_fixed_c").set_value(6).run()
    assert any("c \\* num\\_verts \\<= l" in e.value for e in at.error)
    assert at.button(key="pg_train").disabled
    at.multiselect(key="pg_layouts").set_value(["axial", "neighborhood", "sinks"]).run()
    assert not at.exception, at.exception
    assert at.number_input(key="pg_axial_width").value == 14  # one image row
    assert "axial\\: width in 1..196" in texts(at)
    at.number_input(key="pg_sinks_w").set_value(9).run()
    assert "sinks(s=2, w=9)" in texts(at)
    at.selectbox(key="pg_preset").set_value("fmnist-tiny")
    at.radio(key="pg_budget").set_value("steps").run()
    at.number_input(key="pg_steps").set_value(6).run()
    at.button(key="pg_train").click().run()
    wait_for(at, lambda at: "Saved:" in texts(at))
    table = next(m.value for m in at.markdown if "attention kernel" in m.value)
    assert "median (p10-p90)" in table and table.count("| sdpa |") == 3
    races = list(playground.glob("playground-*"))
    for name in ("axial", "neighborhood", "sinks"):
        assert (races[0] / name / "model.safetensors").is_file()


SHIPPED = Path(APP).parent / "assets" / "races" / "fmnist14-dense-strided-fixed"


def test_the_shipped_race_is_shown_before_anyone_trains(playground):
    """A finished race of dense, strided and fixed at 14 x 14, trained by tools.bench_race on a
    CPU for ten minutes or more, small (weights only, each model well under 2 MB): its curves,
    head maps and completions, before Train is pressed, with how long a live race needs."""
    record = json.loads((SHIPPED / "race.json").read_text())
    assert set(record["layouts"]) == {"dense", "strided", "fixed"}
    assert record["race"]["size"] == 14 and record["wall_time_s"] >= 10 * 60
    assert record["end"] and record["saved"]
    for name in ("dense", "strided", "fixed"):
        files = {p.name: p.stat().st_size for p in (SHIPPED / name).iterdir()}
        assert set(files) == {
            "config.json",
            "model.safetensors",
            "run.json",
            "timeline.json",
            "timeline.npz",
        }  # no optimizer state
        assert files["model.safetensors"] < 2 * 2**20
    total = sum(p.stat().st_size for p in SHIPPED.rglob("*") if p.is_file())
    assert total < 5 * 2**20
    at = AppTest.from_file(APP, default_timeout=120)
    at.switch_page("app_pages/playground.py").run()
    assert not at.exception, at.exception
    said = texts(at)
    assert "finished race shipped with the project" in said
    assert "How long a live race needs to show a difference" in said
    assert "Shipped:" in said and record["end"] in str(at.get("progress")[0].proto.text)
    for name in ("dense", "strided", "fixed"):
        steps = values(trace(chart(at, "pg_by_step"), f"{name} held-out")["x"])
        assert steps[0] == 0 and steps[-1] == record["layouts"][name]["step"]
        assert chart(at, f"pg_heads_{name}")
    assert len(at.get("image")) >= 4  # three lanes' completions and the probe image
    assert not list(playground.glob("*"))  # showing it trains and writes nothing


def test_an_unknown_switch_value_keeps_the_page_off(playground, monkeypatch):
    monkeypatch.setattr(playground_job, "_warned", set())
    for word in ("disbled", ""):
        monkeypatch.setenv("SPARSE_EXPLORER_PLAYGROUND", word)
        at = AppTest.from_file(APP, default_timeout=120)
        at.switch_page("app_pages/playground.py").run()
        assert not at.exception, at.exception
        said = texts(at)
        assert "switched off" in said and f"is '{word}'" in said and "not one of its words" in said
        assert not [b for b in at.button if b.key == "pg_train"]  # no Train button


def test_a_race_that_fails_while_loading_says_so_and_leaves_nothing(
    playground, monkeypatch, tmp_path
):
    monkeypatch.setenv("SPARSE_EXPLORER_PLAYGROUND_DATA", f"fashion-mnist:{tmp_path / 'none'}")
    at = AppTest.from_file(APP, default_timeout=120)
    at.switch_page("app_pages/playground.py").run()
    at.selectbox(key="pg_preset").set_value("fmnist-tiny")
    at.radio(key="pg_budget").set_value("steps").run()
    at.button(key="pg_train").click().run()
    assert not at.exception, at.exception
    wait_for(at, lambda at: any("The race failed" in e.value for e in at.error))
    assert "Loading the images" not in texts(at)
    assert not list(playground.glob("playground-*"))  # its reserved folder went with it
