"""app_pages/playground_job.py: the switch that turns the Playground off (closed on an unknown
word), and race folders reserved when a race is queued (two in one second get two; one
cancelled in the queue leaves none)."""

from __future__ import annotations

import threading

import pytest

from analysis.race import RaceConfig
from app_pages import playground_job
from app_pages.jobs import Task, WorkerPool
from app_pages.playground_job import (
    OFF_WORDS,
    ON_WORDS,
    PLAYGROUND_ENV,
    playground_enabled,
    playground_setting,
    race_folder,
    start_race,
)
from tests.test_training import tiny_data  # noqa: F401  (a fixture)


@pytest.mark.parametrize("word", [*ON_WORDS, "ON", " Yes ", "Enabled"])
def test_the_on_words_turn_it_on(word, monkeypatch):
    monkeypatch.setenv(PLAYGROUND_ENV, word)
    assert playground_setting() == (True, None) and playground_enabled()


@pytest.mark.parametrize("word", [*OFF_WORDS, "OFF", " No ", "Disabled", "NONE"])
def test_the_off_words_turn_it_off(word, monkeypatch, capsys):
    monkeypatch.setenv(PLAYGROUND_ENV, word)
    assert playground_setting() == (False, None) and not playground_enabled()
    assert capsys.readouterr().err == ""  # a known word is no news for the log


def test_unset_is_on(monkeypatch):
    monkeypatch.delenv(PLAYGROUND_ENV, raising=False)
    assert playground_enabled()


@pytest.mark.parametrize("word", ["", "  ", "of", "disbled", "2", "maybe", "off!"])
def test_an_unknown_word_fails_closed_and_is_logged_once(word, monkeypatch, capsys):
    monkeypatch.setattr(playground_job, "_warned", set())
    monkeypatch.setenv(PLAYGROUND_ENV, word)
    assert playground_setting() == (False, word)
    for _ in range(3):  # every page run asks again: the log says it once
        assert not playground_enabled()
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{PLAYGROUND_ENV}={word!r}" in err
    assert "stays off" in err and "on, 1, true" in err and "off, 0, false" in err


def test_race_folders_are_reserved_when_asked_for(tmp_path):
    """Two races queued in the same second: two folders, each made at once (mkdir decides,
    so two threads asking together cannot pick the same)."""
    now = 1_700_000_000.0
    got: list = []
    barrier = threading.Barrier(8)

    def ask() -> None:
        barrier.wait()
        got.append(race_folder(tmp_path / "runs", "playground-", now))

    threads = [threading.Thread(target=ask) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(got)) == 8 and all(f.is_dir() and not any(f.iterdir()) for f in got)
    names = sorted(f.name for f in got)
    assert names[0].startswith("playground-") and any(n.endswith("-8") for n in names)


def test_a_race_cancelled_in_the_queue_leaves_no_folder(tiny_data, tmp_path):  # noqa: F811
    pool = WorkerPool(1, max_queued=4)
    gate = threading.Event()
    blocker = Task(lambda task: gate.wait(60), label="blocker")
    pool.submit(blocker)
    cfg = RaceConfig(data=tiny_data, preset="fmnist-tiny", steps=3, minutes=None, batch_size=4)
    a = race_folder(tmp_path, "playground-", 0.0)
    b = race_folder(tmp_path, "playground-", 0.0)
    job_a = start_race(cfg, a, pool=pool)
    job_b = start_race(cfg, b, pool=pool)
    assert a != b and a.is_dir() and b.is_dir()  # reserved while they wait
    job_a.task.cancel("stopped")
    assert not a.exists() and b.is_dir()  # cancelled in the queue: its folder goes at once
    assert job_a.state.view().phase == "discarded" and job_a.state.view().end == "stopped"
    job_b.task.cancel("the session ended")
    gate.set()
    assert job_a.task.wait(60) and job_b.task.wait(60) and blocker.wait(60)
    assert list(tmp_path.iterdir()) == []


def test_an_impossible_race_releases_its_folder(tmp_path):
    folder = race_folder(tmp_path, "playground-", 0.0)
    with pytest.raises(ValueError, match="at least one layout"):
        start_race(RaceConfig(layouts=()), folder, pool=WorkerPool(1))
    assert not folder.exists()


def test_two_races_queued_in_one_second_both_run(tiny_data, tmp_path):  # noqa: F811
    """The bug: both chose the same name at click time and the second failed with
    FileExistsError after waiting its turn. Now each runs into its own reserved folder."""
    pool = WorkerPool(1, max_queued=4)
    cfg = RaceConfig(
        data=tiny_data,
        preset="fmnist-tiny",
        steps=2,
        minutes=None,
        batch_size=4,
        warmup=1,
        eval_images=4,
        completions=0,
    )
    jobs = [start_race(cfg, race_folder(tmp_path, "playground-", 0.0), pool=pool) for _ in "ab"]
    for job in jobs:
        assert job.task.wait(300)
        assert job.task.error is None and job.task.result["saved"]
        assert (job.folder / "race.json").is_file()
    assert len({job.folder for job in jobs}) == 2
