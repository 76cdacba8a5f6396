"""The inspection pages through Streamlit's AppTest: Who looks here (key columns, head summaries,
rollout), Predictions (distributions, bits maps) and Ablation, on tiny models."""

from pathlib import Path

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from tests.figure_util import image_values
from tests.test_app import chart, errors, tiny_models, title, trace, values

APP = str(Path(__file__).resolve().parents[1] / "app.py")


def page(tmp_path, monkeypatch, path: str) -> AppTest:
    monkeypatch.setenv("SPARSE_EXPLORER_MODELS", str(tiny_models(tmp_path)))
    at = AppTest.from_file(APP, default_timeout=300)
    at.switch_page(path).run()
    assert not at.exception, at.exception
    return at


def click(at, key: str, row: int, col: int, width: int = 28) -> None:
    """What st.plotly_chart's on_select puts in session state for a click on pixel (row, col)."""
    at.session_state[key] = {
        "selection": {"points": [{"curve_number": 0, "point_index": row * width + col}]}
    }


def test_who_looks_here_columns_summaries_and_rollout(tmp_path, monkeypatch):
    at = page(tmp_path, monkeypatch, "app_pages/who_looks_here.py")
    total = values(trace(chart(at, "who_key_view"), "pixels")["marker"]["color"]).reshape(28, 28)
    heads = values(trace(chart(at, "who_heads"), "tiles")["z"])
    assert heads.shape == (28, 2 * 29 - 1)  # fmnist-tiny: 2 heads side by side
    # key (10, 14): queries before it give it nothing (causal); summed over 2 heads, <= 2
    assert total.reshape(-1)[: 10 * 28 + 14].sum() == 0
    assert total[10, 14] > 0 and total.max() <= 2 + 1e-6
    # per head, the two tiles sum to the total
    per_head = np.nansum(np.stack([heads[:, :28], heads[:, 29:]]), axis=0)
    assert np.allclose(per_head, total, atol=1e-5)
    summary = values(trace(chart(at, "who_summary"), "tiles")["z"])
    assert summary.shape == (2 * 29 - 1, 3 * 29 - 1)  # 2 layers x (mean, max, rollout)
    rollout = values(trace(chart(at, "who_query_view"), "pixels")["marker"]["color"])
    assert abs(rollout.sum() - 1) < 1e-4  # the rollout row is a distribution
    assert rollout.reshape(28, 28)[21:].sum() == 0  # query (20, 14): nothing from below
    # a click on the key view moves the key; the layer select redraws
    click(at, "who_key_view", 5, 3)
    at.run()
    assert not at.exception
    assert "(5, 3)" in title(chart(at, "who_heads"))
    at.selectbox(key="who_layer").set_value(1).run()
    click(at, "who_query_view", 27, 27)
    at.run()
    assert not at.exception
    rollout = values(trace(chart(at, "who_query_view"), "pixels")["marker"]["color"])
    assert abs(rollout.sum() - 1) < 1e-4
    assert "(27, 27)" in title(chart(at, "who_summary"))


def test_predictions_distribution_and_bits_maps(tmp_path, monkeypatch):
    at = page(tmp_path, monkeypatch, "app_pages/predictions.py")
    dist = chart(at, "prd_dist")
    curves = [t for t in dist["data"] if t["name"] in ("dense", "strided")]
    assert len(curves) == 2
    for t in curves:
        p = values(t["y"])
        assert p.shape == (256,) and abs(p.sum() - 1) < 1e-4
    maps = values(trace(chart(at, "prd_maps"), "tiles")["z"])
    assert maps.shape == (28, 2 * 29 - 1)  # dense and strided side by side
    assert np.nanmin(maps) >= 0
    mean = values(trace(chart(at, "prd_mean_maps"), "tiles")["z"])
    assert mean.shape == maps.shape
    click(at, "prd_pixels", 3, 4)
    at.run()
    assert not at.exception
    assert "pixel (3, 4)" in title(chart(at, "prd_dist"))
    at.slider(key="prd_mean_count").set_value(2).run()
    assert not at.exception
    assert "abl_heads" not in at.session_state  # removing heads is the Ablation page's


def test_ablation_bits_completions_and_ranking(tmp_path, monkeypatch):
    """Remove a head, both modes; completions with the heads removed; the ranking table."""
    at = page(tmp_path, monkeypatch, "app_pages/ablation.py")
    assert at.selectbox(key="abl_model").value == "dense"
    at.multiselect(key="abl_heads").set_value(["L0H0", "L1H1"]).run()
    assert not at.exception, at.exception
    assert not errors(at)
    diff = values(trace(chart(at, "abl_diff"), "pixels")["marker"]["color"])
    assert diff.shape == (784,) and np.abs(diff).sum() > 0
    at.radio(key="abl_mode").set_value("zero").run()
    assert not at.exception
    at.slider(key="abl_samples").set_value(1).run()
    at.button(key="abl_complete").click().run()
    assert not at.exception, at.exception
    key, intact, ablated = at.session_state["abl_done"]
    assert key[1:3] == (((0, 0), (1, 1)), "zero")
    assert intact.shape == ablated.shape == (1, 28, 28, 1)
    assert (intact[0, :14] == ablated[0, :14]).all()  # the kept top half
    at.toggle(key="abl_rank").set_value(True).run()
    assert not at.exception, at.exception
    rise = values(trace(chart(at, "abl_rank_fig"), "heads")["z"])
    assert rise.shape == (2, 2)


def ablation_ready(tmp_path, monkeypatch) -> tuple[AppTest, list]:
    """The Ablation page with a head picked for removal and 1 sample; the tasks its runs
    submit to the worker pool are recorded (and run)."""
    from app_pages.jobs import POOL

    submitted = []
    submit = POOL.submit

    def record(task):
        submitted.append(task)
        return submit(task)

    monkeypatch.setattr(POOL, "submit", record)
    at = page(tmp_path, monkeypatch, "app_pages/ablation.py")
    at.multiselect(key="abl_heads").set_value(["L0H1"]).run()
    at.slider(key="abl_samples").set_value(1).run()
    assert not at.exception, at.exception
    return at, submitted


def captions(at: AppTest) -> str:
    return "\n".join(img.caption for e in at.get("image") for img in e.proto.imgs)


def test_ablation_completion_runs_in_the_worker_pool(tmp_path, monkeypatch):
    from app_pages.jobs import DONE

    at, submitted = ablation_ready(tmp_path, monkeypatch)
    assert not submitted  # only Complete submits one
    at.button(key="abl_complete").click().run()
    assert not at.exception, at.exception
    (task,) = [t for t in submitted if t.label.startswith("ablation completion")]
    assert task.status == DONE and task.share == 1.0 and 0 < task.memory
    assert "without the heads" in task.text  # the progress it reported: the ablated run last
    key, intact, ablated = at.session_state["abl_done"]
    assert key[1:3] == (((0, 1),), "mean")
    assert intact is task.result[0] and ablated is task.result[1]
    assert intact.shape == (1, 28, 28, 1) and (intact[0, :14] == ablated[0, :14]).all()
    assert "intact (top)" in captions(at)
    at.radio(key="abl_mode").set_value("zero").run()  # other settings: the result is not shown
    assert "intact (top)" not in captions(at)
    assert len(submitted) == 1


def test_ablation_completion_over_the_memory_budget_is_refused(tmp_path, monkeypatch):
    import app_pages.jobs as jobs

    at, submitted = ablation_ready(tmp_path, monkeypatch)
    monkeypatch.setattr(jobs, "MEMORY_BUDGET", 2**20)  # 1 MB: less than a copy of the model
    at.button(key="abl_complete").click().run()
    assert not at.exception, at.exception
    error = "\n".join(e.value for e in at.error)
    assert "This ablation completion would need about" in error
    assert "MB per task. Choose fewer samples." in error
    assert not submitted and "abl_done" not in at.session_state


def test_a_stopped_ablation_completion_says_so_and_shows_nothing(tmp_path, monkeypatch):
    """What Stop does (its callback cancels the task): the sampler stops at its next token,
    and the page says so; nothing stays in the pool's workers."""
    import threading

    import models.completion
    from app_pages.jobs import CANCELLED, POOL
    from models.sampling import SamplingCancelled

    def endless(model, image, keep, *, cancel, **kwargs):
        while not cancel():
            threading.Event().wait(0.01)
        raise SamplingCancelled(None, 0)

    at, submitted = ablation_ready(tmp_path, monkeypatch)
    monkeypatch.setattr(models.completion, "complete", endless)
    submit, timers = POOL.submit, []

    def stop_soon(task):  # as if Stop were clicked while the run follows the task
        timers.append(threading.Timer(0.3, task.cancel, args=("stopped",)))
        timers[-1].start()
        return submit(task)

    monkeypatch.setattr(POOL, "submit", stop_soon)
    at.button(key="abl_complete").click().run()
    assert not at.exception, at.exception
    assert len(timers) == 1
    assert submitted[-1].status == CANCELLED
    warnings = "\n".join(w.value for w in at.warning)
    assert "was stopped; press Complete to sample again." in warnings
    assert "abl_done" not in at.session_state


def colour_page(tmp_path, monkeypatch, path: str) -> tuple[AppTest, object, np.ndarray]:
    """A page on one tiny colour model (32 x 32 x 3: three tokens a pixel), with the model and
    the image the page shows (the first sample, prepared for it)."""
    import torch

    from models import ModelConfig, SparseTransformer, load_model, save_model
    from models.uploads import prepare_image

    torch.manual_seed(0)
    cfg = ModelConfig.from_name("cifar-tiny", layout="strided(l=96)")
    save_model(SparseTransformer(cfg), tmp_path / "colour")
    monkeypatch.setenv("SPARSE_EXPLORER_MODELS", str(tmp_path))
    at = AppTest.from_file(APP, default_timeout=300)
    at.switch_page(path).run()
    assert not at.exception, at.exception
    model = load_model(tmp_path / "colour")
    first = sorted((Path(APP).parent / "assets" / "samples").glob("*.png"))[0]
    return at, model, prepare_image(first.read_bytes(), model.config.geometry)


def test_who_looks_here_is_channel_aware(tmp_path, monkeypatch):
    from analysis.reverse import column_from_full
    from models.tokens import image_to_tokens, pixel_to_token

    at, model, image = colour_page(tmp_path, monkeypatch, "app_pages/who_looks_here.py")
    g = model.config.geometry
    assert at.radio(key="who_channel").value == "all"
    at.radio(key="who_channel").set_value("green").run()
    assert not at.exception
    total = values(trace(chart(at, "who_key_view"), "pixels")["marker"]["color"])
    # by hand: the green token of key pixel (10, 14); each pixel's green query token
    probs = model.capture(image_to_tokens(image)[None], layers=[0], form="full")[0].probs
    column = column_from_full(probs.float(), pixel_to_token(10, 14, 1, g))[0].sum(0)  # [N]
    want = [column[pixel_to_token(r, c, 1, g)] for r in range(32) for c in range(32)]
    np.testing.assert_allclose(total, want, atol=1e-5)
    # the whole pixel: its three key tokens together, the mean over each pixel's query tokens
    at.radio(key="who_channel").set_value("all").run()
    total = values(trace(chart(at, "who_key_view"), "pixels")["marker"]["color"])
    keys = [pixel_to_token(10, 14, ch, g) for ch in range(3)]
    column = sum(column_from_full(probs.float(), k)[0].sum(0) for k in keys)
    want = [
        np.mean([column[pixel_to_token(r, c, ch, g)] for ch in range(3)])
        for r in range(32)
        for c in range(32)
    ]
    np.testing.assert_allclose(total, want, atol=1e-5)
    assert (
        "pixel %{customdata[1]}, %{customdata[2]}, %{customdata[3]}"
        in (trace(chart(at, "who_key_view"), "pixels")["hovertemplate"])
    )


def test_predictions_are_channel_aware(tmp_path, monkeypatch):
    from analysis.prediction import predicted_probs
    from models.tokens import image_to_tokens, pixel_to_token

    at, model, image = colour_page(tmp_path, monkeypatch, "app_pages/predictions.py")
    assert not errors(at)  # the averaged maps come from the colour photos' test split
    g = model.config.geometry
    tokens = image_to_tokens(image)
    probs = predicted_probs(model, tokens[None])[0].float().numpy()  # [N, 256]
    bits = -np.log2(probs[np.arange(g.n_tokens), tokens.numpy()])
    # "all": a pixel's bits are the sum over its three values; one curve per channel
    shown = values(trace(chart(at, "prd_pixels"), "pixels")["marker"]["color"]).reshape(32, 32)
    r, c = 5, 7
    assert shown[r, c] == pytest.approx(
        sum(bits[pixel_to_token(r, c, ch, g)] for ch in range(3)), rel=1e-4
    )
    names = [t["name"] for t in chart(at, "prd_dist")["data"] if "lines" in t.get("mode", "")]
    assert names == ["colour red", "colour green", "colour blue"]
    # one channel: its bits, its distribution and its true value
    at.radio(key="prd_channel").set_value("blue").run()
    assert not at.exception
    shown = values(trace(chart(at, "prd_pixels"), "pixels")["marker"]["color"]).reshape(32, 32)
    assert shown[r, c] == pytest.approx(bits[pixel_to_token(r, c, 2, g)], rel=1e-4)
    row, col = at.number_input(key="prd_row").value, at.number_input(key="prd_col").value
    assert f"true value {int(image[row, col, 2])}" in title(chart(at, "prd_dist"))


def test_attention_page_shows_a_colour_pixels_keys_by_channel_or_whole(tmp_path, monkeypatch):
    from analysis.attention import query_rows
    from models.tokens import pixel_to_token

    at, model, image = colour_page(tmp_path, monkeypatch, "app_pages/attention.py")
    g = model.config.geometry
    at.number_input(key="att_channel").set_value(2).run()  # the blue token of pixel (14, 14)
    row = query_rows(model, image, pixel_to_token(14, 14, 2, g))[0, 0]  # layer 0, head 0: [N]
    by_hand = {
        ch: np.array([[row[pixel_to_token(r, c, ch, g)] for c in range(32)] for r in range(32)])
        for ch in range(3)
    }
    shown = values(trace(chart(at, "att_pixels"), "pixels")["marker"]["color"]).reshape(32, 32)
    np.testing.assert_allclose(shown, sum(by_hand.values()), atol=1e-6)  # the keys' pixels
    at.radio(key="att_key_channel").set_value("green").run()
    assert not at.exception
    shown = values(trace(chart(at, "att_pixels"), "pixels")["marker"]["color"]).reshape(32, 32)
    np.testing.assert_allclose(shown, by_hand[1], atol=1e-6)
    tiles = image_values(trace(chart(at, "att_grid"), "heads"))  # its colours, read back
    np.testing.assert_allclose(tiles[:32, :32], by_hand[1] / by_hand[1].max(), atol=0.005)


def test_a_colour_model_completes_in_colour(tmp_path, monkeypatch):
    at, model, image = colour_page(tmp_path, monkeypatch, "app_pages/complete.py")
    at.multiselect(key="cmp_models").set_value(["colour"]).run()
    at.slider(key="cmp_samples").set_value(1).run()
    at.slider(key="cmp_rows").set_value(31).run()  # sample only the last row: fast
    at.button(key="cmp_run").click().run()
    assert not at.exception, at.exception
    pick = chart(at, "cmp_look_pixels")
    picture = trace(pick, "image")
    assert picture["type"] == "image"  # the sample drawn in colour, not as grey values
    rgb = values(picture["z"]).astype(np.uint8)
    assert rgb.shape == (32, 32, 3)
    np.testing.assert_array_equal(rgb[:31], image[:31])  # the kept rows are the image's
    look = values(trace(chart(at, "cmp_look_attention"), "pixels")["marker"]["color"])
    assert look.shape == (1024,) and abs(look.sum() - 1) < 1e-3  # a pixel's mean row, per pixel
