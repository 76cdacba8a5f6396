"""The bounds on what a person may ask of the app beyond each page's settings' own bounds: the
Complete page's sampling settings (shared by its checks), the rows and rectangle it keeps (they
depend on the model), the number of models side by side, the upload's size.

The widgets take their min/max from here, and the pages check the values again before any work
starts: a value can also arrive through session state (or a stale widget), and Streamlit raises
its own exception, not a message, for an out-of-range slider value. The upload limit is also set
in .streamlit/config.toml (server.maxUploadSize), where the server enforces it first.
"""

from __future__ import annotations

from numbers import Real

from app_pages.settings import Setting
from models.uploads import MAX_IMAGE_PIXELS  # noqa: F401 - checked from the header by prepare_upload

MAX_UPLOAD_MB = 20  # = server.maxUploadSize in .streamlit/config.toml (a test checks they agree)
MAX_UPLOAD_BYTES = MAX_UPLOAD_MB * 2**20
MAX_MODELS = 3  # models completing side by side in one run


# the Complete page's sampling settings (declared there with declare_settings): bounds, default
SAMPLES = Setting("cmp_samples", int, 4, 1, 16, label="Samples")
TEMPERATURE = Setting("cmp_temperature", float, 1.0, 0.0, 2.0, label="Temperature")
TOP_K = Setting("cmp_top_k", int, 0, 0, 256, label="Top-k (0: off)")  # 256 = every value
TOP_P = Setting("cmp_top_p", float, 1.0, 0.05, 1.0, label="Top-p (1: off)")
SEED = Setting("cmp_seed", int, 0, 0, 2**31 - 1, label="Seed")


def keep_rows(height: int) -> Setting:
    """Rows to keep at the top of a ``height``-row image: none to all."""
    return Setting("cmp_rows", int, height // 2, 0, height, label="Rows to keep")


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


def reset_out_of_bounds(settings: list[Setting]) -> list[str]:
    """Check values already in session state against bounds that depend on the model, before
    their widgets are drawn (Streamlit raises on an out-of-range slider value): each bad one is
    reported and dropped, and its default set. Returns the messages (declare_settings does the
    same with the page's fixed bounds)."""
    import streamlit as st

    problems = []
    for setting in settings:
        value = st.session_state.get(setting.key)
        problem = None if value is None else setting.problem(value)
        if problem is not None:
            problems.append(problem)
            del st.session_state[setting.key]
        elif value is not None and not isinstance(value, setting.kind):
            st.session_state[setting.key] = setting.kind(value)  # an int widget refuses 3.0
        st.session_state.setdefault(setting.key, setting.default)
    return problems
