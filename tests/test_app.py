"""The app runs headless through Streamlit's AppTest: every page, every control, no exception."""

import base64
import json
from pathlib import Path

import numpy as np
from streamlit.testing.v1 import AppTest

APP = str(Path(__file__).resolve().parents[1] / "app.py")


def charts(at) -> list[dict]:
    return [json.loads(c.proto.spec) for c in at.get("plotly_chart")]


def values(a) -> np.ndarray:
    """A plotly array from a figure spec: a list, or plotly 6+'s typed array {dtype, bdata}."""
    if isinstance(a, dict) and "bdata" in a:
        out = np.frombuffer(base64.b64decode(a["bdata"]), dtype=a["dtype"])
        shape = a.get("shape")
        if isinstance(shape, str):  # plotly writes "rows, cols"
            shape = [int(x) for x in shape.split(",")]
        return out.reshape(shape) if shape else out
    return np.asarray(a)


def test_layouts_page_strided_fixed_and_side_by_side():
    at = AppTest.from_file(APP, default_timeout=60).run()
    assert not at.exception
    table = at.dataframe[0].value
    assert list(table["layout"]) == ["strided(l=28)"]
    specs = charts(at)
    assert len(specs) == 2  # pixel view + mask
    pixels = specs[0]["data"][0]
    assert len(values(pixels["x"])) == 784  # one marker per pixel
    colors = values(pixels["marker"]["color"])
    # query (14, 14) of strided(l=28): the 28 keys of the window + 14 keys above in its column
    assert (colors > 0).sum() == 28 + 14
    at.radio(key="lay_mode").set_value("side by side").run()
    assert not at.exception
    assert list(at.dataframe[0].value["layout"]) == ["strided(l=28)", "fixed(l=28, c=2)"]
    assert len(charts(at)) == 4


def test_layouts_page_explains_impossible_parameters():
    at = AppTest.from_file(APP, default_timeout=60).run()
    at.radio(key="lay_mode").set_value("fixed").run()
    at.number_input(key="lay_c").set_value(40).run()  # c > l is impossible for fixed
    assert not at.exception
    assert "c * num_verts <= l" in at.error[0].value


def test_layouts_page_rgb_and_pooled_mask():
    at = AppTest.from_file(APP, default_timeout=60).run()
    at.selectbox(key="lay_geometry").set_value("32x32 RGB (CIFAR-10)").run()
    assert not at.exception
    assert list(at.dataframe[0].value["layout"]) == ["strided(l=96)"]
    mask = charts(at)[1]["data"][0]
    assert values(mask["z"]).shape[0] < 3072  # pooled: N = 3072 is drawn as tiles
