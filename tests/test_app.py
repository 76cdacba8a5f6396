"""The app runs headless through Streamlit's AppTest, with no exception."""

from pathlib import Path

from streamlit.testing.v1 import AppTest

APP = str(Path(__file__).resolve().parents[1] / "app.py")


def test_layouts_page_runs_and_explains_bad_parameters():
    at = AppTest.from_file(APP, default_timeout=60).run()
    assert not at.exception
    table = at.dataframe[0].value
    assert list(table["layout"]) == ["dense()", "local(l=28)", "strided(l=28)", "fixed(l=28, c=4)"]
    at.number_input(key="lay_c").set_value(40).run()  # c > l is impossible for fixed
    assert not at.exception
    assert "c * num_verts <= l" in at.error[0].value
