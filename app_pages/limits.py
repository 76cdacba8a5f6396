"""Every bound on what a person may ask of the app, in one place.

The widgets take their min/max from here, and the pages check the values again before any work
starts: a value can also arrive through session state (or a stale widget), and Streamlit raises
its own exception, not a message, for an out-of-range slider value. The upload limit is also set
in .streamlit/config.toml (server.maxUploadSize), where the server enforces it first.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from numbers import Real

from models.uploads import MAX_IMAGE_PIXELS  # noqa: F401 - checked from the header by prepare_upload

MAX_UPLOAD_MB = 20  # = server.maxUploadSize in .streamlit/config.toml (a test checks they agree)
MAX_UPLOAD_BYTES = MAX_UPLOAD_MB * 2**20
MAX_MODELS = 3  # models completing side by side in one run


@dataclass(frozen=True)
class Bound:
    """A closed interval [low, high] with the widget's default; ``integer`` refuses fractions."""

    label: str
    low: float
    high: float
    default: float
    integer: bool = False

    def problem(self, value: object) -> str | None:
        """None when ``value`` is within bounds, else a message naming the bound."""
        if isinstance(value, bool) or not isinstance(value, Real):
            return f"{self.label} must be a number, got {value!r}."
        if not math.isfinite(value) or (self.integer and value != int(value)):
            kind = "a whole number" if self.integer else "a finite number"
            return f"{self.label} must be {kind}, got {value!r}."
        if not self.low <= value <= self.high:
            return f"{self.label} must be between {self.low} and {self.high}, got {value!r}."
        return None


SAMPLES = Bound("Samples", 1, 16, 4, integer=True)
TEMPERATURE = Bound("Temperature", 0.0, 2.0, 1.0)
TOP_K = Bound("Top-k (0: off)", 0, 256, 0, integer=True)  # 256 = every pixel value
TOP_P = Bound("Top-p (1: off)", 0.05, 1.0, 1.0)
SEED = Bound("Seed", 0, 2**31 - 1, 0, integer=True)


def keep_rows(height: int) -> Bound:
    """Rows to keep at the top of a ``height``-row image: none to all."""
    return Bound("Rows to keep", 0, height, height // 2, integer=True)


def rect_problem(rect: tuple[int, int, int, int], width: int, height: int) -> str | None:
    """None when ``rect`` = (x0, y0, x1, y1), end exclusive, lies inside the image, else why."""
    x0, y0, x1, y1 = rect
    for name, v in zip(("x0", "y0", "x1", "y1"), rect, strict=True):
        if isinstance(v, bool) or not isinstance(v, Real) or v != int(v):
            return f"Rectangle {name} must be a whole number, got {v!r}."
    if not (0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height):
        return (
            f"The rectangle {tuple(int(v) for v in rect)} must satisfy 0 <= x0 < x1 <= {width} "
            f"and 0 <= y0 < y1 <= {height} (x1, y1 exclusive)."
        )
    return None


def completion_problems(
    *, n_samples: object, temperature: object, top_k: object, top_p: object, seed: object
) -> list[str]:
    """Every sampling parameter out of bounds, as messages (empty: all fine)."""
    checks = [
        (SAMPLES, n_samples),
        (TEMPERATURE, temperature),
        (TOP_K, top_k),
        (TOP_P, top_p),
        (SEED, seed),
    ]
    return [p for bound, value in checks if (p := bound.problem(value)) is not None]


def upload_problem(n_bytes: int) -> str | None:
    """None when an upload of ``n_bytes`` is allowed, else why not."""
    if n_bytes > MAX_UPLOAD_BYTES:
        return f"is {n_bytes / 2**20:.1f} MiB; the limit is {MAX_UPLOAD_MB} MiB"
    return None


def reset_out_of_bounds(bounds: dict[str, Bound]) -> list[str]:
    """Check values already in session state before their widgets are drawn (Streamlit raises
    on an out-of-range slider value): each bad one is reported and dropped, so its widget starts
    again from the default. Returns the messages."""
    import streamlit as st

    problems = []
    for key, bound in bounds.items():
        if key not in st.session_state:
            continue
        value = st.session_state[key]
        problem = bound.problem(value)
        if problem is not None:
            problems.append(problem)
            del st.session_state[key]
        elif bound.integer and not isinstance(value, int):
            st.session_state[key] = int(value)  # an int widget refuses 3.0
        elif not bound.integer and isinstance(value, int):
            st.session_state[key] = float(value)  # a float slider refuses an int
    return problems
