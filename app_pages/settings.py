"""Settings: each page declares its own in one call at its top (declare_settings: key, type,
bounds, default); they are kept for the whole session across pages and mirrored in the page's
URL, so a view can be shared as a link and survives a reload.

Streamlit forgets a widget's value when a run does not draw it (another page, or an early
st.stop() such as "upload an image first"); re-assigning the key at the top of every run
(keep_settings, called by app.py) keeps it. The settings of the page shown are written to
st.query_params (share_settings). A session's first run, and a run the browser's Back or
Forward started, keeps the URL's values aside (keep_settings, before any page runs); each page
takes those of its own settings when it declares them, checked, so a link restores a view even
of a page that has not run yet in this server.
"""

from __future__ import annotations

import functools
import math
import re
from dataclasses import dataclass
from numbers import Real

import streamlit as st
from streamlit.runtime.scriptrunner import get_script_run_ctx

from app_pages.models_cache import model_names
from kernels.layouts import FAMILY_PARAMS

CHANNEL_NAMES = ("red", "green", "blue")
LAYOUT_FAMILIES = tuple(FAMILY_PARAMS)  # every static family the Layouts page draws
PENDING = "_settings_from_url"  # session key: the URL's values no page has taken yet


@dataclass(frozen=True)
class Setting:
    """One setting: its key, type, default and the values it may take (a URL can hold
    anything; a session value out of the bounds is reset to the default)."""

    key: str
    kind: type  # int, float, bool, str or list (of str)
    default: object = None  # set once a session; None: the page sets it (it depends on models)
    low: float | None = None  # for a list: the fewest items
    high: float | None = None  # for a list: the most items (a multiselect's max_selections)
    choices: tuple | None = None  # for str and list; None: any (the page checks)
    pattern: str | None = None  # for str and list: a regular expression each text must match
    models: bool = False  # model names, checked against model_names() when read
    besides: tuple = ()  # with models: other values it may take ("none")
    label: str = ""  # how a message names it; "" : its key

    def parse(self, texts: list[str]):
        """The value of the URL's texts for this setting, or None when they are not one."""
        try:
            if self.kind is list:
                value = list(texts)
                ok = all(v in self.allowed() and self._matches(v) for v in value)
                ok = ok and len(set(value)) == len(value)  # a multiselect holds each once
                ok = ok and (self.low is None or len(value) >= self.low)
                ok = ok and (self.high is None or len(value) <= self.high)
                return value if ok else None
            (text,) = texts
            if self.kind is bool:
                return {"1": True, "0": False}.get(text)
            value = self.kind(text)
        except (TypeError, ValueError):
            return None
        if self.kind in (int, float) and self.problem(value) is not None:
            return None
        if self.kind is str and (value not in self.allowed() or not self._matches(value)):
            return None
        return value

    def problem(self, value: object) -> str | None:
        """For a number: None when ``value`` is within bounds, else a message naming the
        bound (an int setting refuses fractions)."""
        name = self.label or self.key
        if isinstance(value, bool) or not isinstance(value, Real):
            return f"{name} must be a number, got {value!r}."
        if not math.isfinite(value) or (self.kind is int and value != int(value)):
            kind = "a whole number" if self.kind is int else "a finite number"
            return f"{name} must be {kind}, got {value!r}."
        low = -math.inf if self.low is None else self.low
        high = math.inf if self.high is None else self.high
        if not low <= value <= high:
            return f"{name} must be between {self.low} and {self.high}, got {value!r}."
        return None

    @property
    def bounds(self) -> tuple:
        """(low, high) as a widget takes them (ints for an int setting)."""
        return self.kind(self.low), self.kind(self.high)

    def allowed(self):
        """The values it may take; anything when the page decides (sample names, layouts)."""
        return self.choices if self.choices is not None else _Anything()

    def _matches(self, text: str) -> bool:
        return self.pattern is None or re.fullmatch(self.pattern, text) is not None

    def known(self, value, names: list[str]) -> bool:
        """Whether ``value`` (parsed) names models among ``names`` (always, when not models)."""
        if not self.models:
            return True
        values = value if isinstance(value, list) else [value]
        return all(v in names or v in self.besides for v in values)


class _Anything:
    def __contains__(self, item) -> bool:
        return True


def pixel(key: str, default: int | None = None) -> Setting:
    """A row, a column, a layer or a head: 0..255 here, the page clamps to its model."""
    return Setting(key, int, default, 0, 255)


def model_setting(key: str, besides: tuple = ()) -> Setting:
    """A model's name, checked against model_names() when read (``besides``: other values)."""
    return Setting(key, str, models=True, besides=besides)


def channel_setting(key: str) -> Setting:
    """A colour model's channel ("all" or one): channel_picker's key."""
    return Setting(key, str, choices=("all", *CHANNEL_NAMES))


def image_settings(prefix: str) -> tuple[Setting, ...]:
    """The image picker's settings (pickers.pick_image with ``prefix``)."""
    return (
        Setting(f"{prefix}_source", str, choices=("test image", "upload")),
        Setting(f"{prefix}_sample", str),
        Setting(f"{prefix}_fit", str, choices=("crop", "letterbox")),
        Setting(f"{prefix}_invert", bool),
    )


# every setting a page has declared in this server, for keep_settings and share_settings
DECLARED: dict[str, Setting] = {}


class PageSettings(dict):
    """A page's settings by key (declare_settings' answer), and ``problems``: the messages for
    the values it reset to their defaults."""

    problems: list[str]


def declare_settings(*settings: Setting) -> PageSettings:
    """A page's settings, at the top of its script: registered for the session and the URL;
    the URL's values for them (kept aside by keep_settings) taken when they are ones they may
    take; each default set once a session; a number out of its bounds reset to its default
    (its message in ``problems``) and an int widget's float made an int."""
    page = PageSettings((s.key, s) for s in settings)
    page.problems = []
    DECLARED.update(page)
    pending = st.session_state.get(PENDING) or {}
    names = None  # the models, looked up once and only when a setting names one
    for key, setting in page.items():
        texts = pending.pop(key, None)
        value = None if texts is None else setting.parse(texts)
        if value is not None and setting.models:
            names = model_names() if names is None else names
            value = value if setting.known(value, names) else None
        if value is not None:
            st.session_state[key] = value
        if setting.kind in (int, float) and key in st.session_state:
            value = st.session_state[key]
            problem = setting.problem(value)
            if problem is not None:
                page.problems.append(problem)
                del st.session_state[key]
            elif setting.kind is int and not isinstance(value, int):
                st.session_state[key] = int(value)  # an int widget refuses 3.0
            elif setting.kind is float and isinstance(value, int):
                st.session_state[key] = float(value)  # a float slider refuses an int
        if setting.default is not None:
            st.session_state.setdefault(key, setting.default)
    return page


# links made before the Ablation page had its own address (/predictions?...&abl_heads=...):
# the heads were removed from one of the Predictions page's models (else its first), on its
# image and channel
_OLD_ABLATION_LINK = {f"abl_{k}": f"prd_{k}" for k in ("source", "sample", "fit", "invert")}


def _old_links(params: dict[str, list[str]]) -> dict[str, list[str]]:
    """``params`` with what a link of an earlier version of the app meant, in today's keys."""
    if any(k.startswith("abl_") for k in params) and "prd_models" in params:
        for new, old in {**_OLD_ABLATION_LINK, "abl_channel": "prd_channel"}.items():
            if old in params:
                params[new] = params[old]
        if params.get("abl_model", [None])[0] not in params["prd_models"]:
            params["abl_model"] = params["prd_models"][:1]
    return params


def keep_settings() -> None:
    """Keep every setting this session has made, on every page: called at the top of each run
    (app.py), before any page draws its widgets. The first run of a session keeps the URL's
    values aside for the pages to take (declare_settings), and so does a run the browser's
    Back or Forward started: the entry's URL records the view."""
    if PENDING not in st.session_state or history_navigation():
        params = {k: st.query_params.get_all(k) for k in st.query_params}
        st.session_state[PENDING] = _old_links(params)
    for key in DECLARED:
        if key in st.session_state:
            st.session_state[key] = st.session_state[key]


def _url_text(value) -> str | list[str]:
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, (list, tuple)):
        return [str(v) for v in value]
    return str(value)


def history_navigation() -> bool:
    """Whether this run was started by the browser's Back or Forward."""
    ctx = get_script_run_ctx()
    return bool(getattr(ctx, "is_history_navigation", False))


# Streamlit's frontend pushes a history entry whenever the URL's query changes (every setting
# change), then another when the page changes: Back showed the page's latest state and took three
# or four presses to leave a page. In this browser tab, a new URL on the same page (same path)
# replaces the entry instead: one entry per page visited, recording its latest view; Back goes
# to the previous page in one press and keep_settings restores the settings it records.
REPLACE_SAME_PAGE_ENTRIES = """<script>
(() => {
  const h = window.history;
  if (h.__sameAddressReplaces) return;
  const push = h.pushState.bind(h);
  h.pushState = (state, title, url) => {
    const next = url == null ? null : new URL(url, window.location.href);
    if (next === null || next.pathname === window.location.pathname) {
      return h.replaceState(state, title, url);
    }
    return push(state, title, url);
  };
  h.__sameAddressReplaces = true;
})();
</script>"""


def view_fragment(prefix: str, key: str | None = None, writes_url: bool = True):
    """``st.fragment`` for a part of the page with settings ``prefix``_... that a click reruns
    alone (rebuilt, sent and drawn without the rest). Such a rerun runs no app.py, so the part
    writes the page's settings to the URL itself once drawn. ``key``: the part's name, for a
    widget's callback to rerun several parts at once (``st.rerun([key, ...])``).
    ``writes_url`` False: a part whose settings another part, rerun with it, writes. It writes
    none early in the page's run either: a URL written before the browser has moved to a new
    page's address would overwrite the previous page's history entry."""

    def wrap(draw):
        @functools.wraps(draw)
        def drawn(*args, **kwargs) -> None:
            draw(*args, **kwargs)  # a rerun of the part alone: the arguments of its last call
            if writes_url:
                share_settings(prefix, script=False)

        return st.fragment(drawn, key=key)

    return wrap


def share_settings(prefix: str | tuple[str, ...] | None, script: bool = True) -> None:
    """Write the settings of the page with keys ``prefix``_... (one prefix or several) to the
    URL (only they: a link names one page's view); other pages' settings stay in the session.
    A change replaces the tab's history entry for this page (REPLACE_SAME_PAGE_ENTRIES, drawn
    unless ``script`` is False: a fragment's rerun, whose page has it already)."""
    if script:
        st.html(REPLACE_SAME_PAGE_ENTRIES, unsafe_allow_javascript=True)
    prefixes = (prefix,) if isinstance(prefix, str) else tuple(prefix or ())
    wanted = {
        key: _url_text(st.session_state[key])
        for key in DECLARED
        if any(key.startswith(f"{p}_") for p in prefixes if p)
        and st.session_state.get(key) not in (None, [])  # nothing to write (no models yet)
    }
    current = {k: st.query_params.get_all(k) for k in st.query_params}
    normal = {k: v if isinstance(v, list) else [v] for k, v in wanted.items()}
    if current != normal:
        st.query_params.from_dict(wanted)


def clamp_setting(key: str, low: int, high: int) -> None:
    """Bring a number setting into low..high before its widget is drawn (a shared link or
    another model may carry a value this page's widget refuses)."""
    if key in st.session_state:
        st.session_state[key] = min(max(st.session_state[key], low), high)
