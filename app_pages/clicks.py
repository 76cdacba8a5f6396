"""Clicks and hover on the pages' charts: a click taken once (new_click), a click a fragment
hands to a full run (pending_click), a pixel click setting row and column inputs, and the
image's values in a pixel view's hover."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import streamlit as st


def new_click(chart_key: str, read: Callable[[object], object | None]) -> object | None:
    """What the chart drawn with ``chart_key`` holds as clicked, read from its selection event
    by ``read`` (viz.pixels.clicked_pixel, viz.mosaics.clicked_tile...), in the first run
    after the click only: the event stays in the session at every rerun, and applying it again
    would undo a later change of the inputs it set."""
    picked = read(st.session_state.get(chart_key))
    if picked is None or picked == st.session_state.get(f"{chart_key}_last"):
        return None
    st.session_state[f"{chart_key}_last"] = picked
    return picked


def pending_click(chart_key: str, read: Callable[[object], object | None]) -> bool:
    """Whether the chart ``chart_key`` holds a click that new_click has not yet taken: a
    fragment's rerun hands such a click to a run of the whole page."""
    picked = read(st.session_state.get(chart_key))
    return picked is not None and picked != st.session_state.get(f"{chart_key}_last")


def take_pixel_click(chart_key: str, row_key: str, col_key: str, width: int) -> None:
    """A new click on a pixel view (viz.pixels.pixel_grid_figure, ``width`` pixels a row)
    sets the row and column inputs ``row_key`` and ``col_key``, before they are drawn."""
    from viz.pixels import clicked_pixel

    picked = new_click(chart_key, lambda event: clicked_pixel(event, width))
    if picked is not None:
        st.session_state[row_key], st.session_state[col_key] = picked


def pixel_values_hover(image: np.ndarray, channel: int | None, first: int) -> tuple:
    """The image's values for a pixel view's hover: numbers [H, W, K] to append to its
    hover_values, and the words a hover_template shows them with, from customdata[first] on:
    the shown channel's value, or R, G, B when a colour pixel is shown whole."""
    if image.shape[2] == 1 or channel is not None:
        return image[..., [channel or 0]].astype(np.float32), f"pixel %{{customdata[{first}]}}"
    values = ", ".join(f"%{{customdata[{first + k}]}}" for k in range(image.shape[2]))
    return image.astype(np.float32), f"pixel {values}"
