"""The tree reads bottom-up along the data flow (docs/DESIGN.md, "Layering"): no module imports
from a layer above its own, and only the app imports streamlit.

Every import statement of every module is read from its source (a walk of the syntax tree, so
imports inside functions and under TYPE_CHECKING count too), then checked against the rules.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("kernels", "models", "analysis", "viz", "app_pages", "tools")

# layer -> imports it must not make (a name forbids the module and everything under it)
FORBIDDEN: dict[str, tuple[str, ...]] = {
    "kernels": ("models", "analysis", "viz", "app_pages", "app", "tools", "streamlit"),
    "models": ("analysis", "viz", "app_pages", "app", "tools", "streamlit"),
    "analysis": ("viz", "app_pages", "app", "tools", "streamlit"),
    "viz": ("app_pages", "app", "tools", "streamlit", "torch"),
    "app_pages": ("tools",),
    "app": ("tools",),
    "tools": ("app_pages", "app", "streamlit"),
}
# the app benchmark (tools/bench_app.py) drives the app the way the tests do: through
# streamlit's test harness, which starts the app's scripts in-process; no library touches it
HARNESS = "streamlit.testing"
# viz draws arrays: of the layers below it, only these modules (pure data, no model)
VIZ_MAY_IMPORT = ("kernels.layouts", "models.tokens", "analysis.metrics")
# the tests sit above everything: no module of the project imports them (nor their helpers,
# importable by their bare names when tests/ is on sys.path, e.g. browser_util)
TEST_MODULES = ("tests", *sorted(p.stem for p in (ROOT / "tests").glob("*.py")))


def _under(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def imports_of(source: str, module: str) -> list[tuple[int, str]]:
    """(line, imported module) for every import in ``source``, relative ones made absolute."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # from . import x / from ..pkg import y
                parent = module.split(".")[: -node.level]
                base = ".".join([*parent, base] if base else parent)
            # `from pkg import sub` may import the submodule pkg.sub: count both
            found.append((node.lineno, base))
            found += [(node.lineno, f"{base}.{alias.name}") for alias in node.names]
    return found


def violations(source: str, module: str) -> list[str]:
    """The forbidden imports of ``module`` (a dotted name such as "viz.maps")."""
    layer = module.split(".")[0]
    out = []
    for line, name in imports_of(source, module):
        bad = [p for p in FORBIDDEN.get(layer, ()) if _under(name, p)]
        if layer == "tools" and _under(name, HARNESS):
            bad = []
        if any(_under(name, t) for t in TEST_MODULES):
            bad.append("tests")
        if layer == "viz" and any(_under(name, p) for p in ("kernels", "models", "analysis")):
            # `from models import tokens` reads as models + models.tokens: judge the longest
            if not any(_under(name, ok) or _under(ok, name) for ok in VIZ_MAY_IMPORT):
                bad.append("a model-running layer")
        if bad:
            out.append(f"{module}:{line} imports {name} ({layer} must not import {bad[0]})")
    return out


def project_modules() -> list[tuple[str, Path]]:
    mods = [("app", ROOT / "app.py")]
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            mods.append((name, path))
    return mods


def test_every_package_is_checked():
    names = {name.split(".")[0] for name, _ in project_modules()}
    assert names == {"app", *PACKAGES}
    # every top-level folder of Python code is a known layer (a new one must get its rules)
    folders = {
        p.parent.relative_to(ROOT).parts[0]
        for p in ROOT.glob("*/**/*.py")
        if p.relative_to(ROOT).parts[0] not in (".venv", "tests", "scripts")
        and not p.relative_to(ROOT).parts[0].startswith(".")
    }
    assert folders <= set(PACKAGES), folders - set(PACKAGES)


def test_no_module_imports_from_a_layer_above():
    found = []
    for name, path in project_modules():
        found += violations(path.read_text(), name)
    assert not found, "\n".join(found)


def test_only_the_app_imports_streamlit():
    users = {
        name
        for name, path in project_modules()
        if any(
            _under(m, "streamlit") and not _under(m, HARNESS)
            for _, m in imports_of(path.read_text(), name)
        )
    }
    assert users and all(u == "app" or u.startswith("app_pages") for u in users), users


@pytest.mark.parametrize(
    "module, source, rule",
    [
        ("kernels.capture", "from models.model import SparseTransformer", "models"),
        ("kernels.dispatch", "def f():\n    import viz.maps\n", "viz"),
        ("models.training", "from typing import TYPE_CHECKING\nimport tools.train", "tools"),
        ("models.tokens", "import streamlit as st", "streamlit"),
        ("analysis.learned", "from viz.head_tables import coverage_figure", "viz"),
        ("viz.export", "from models.checkpoint import load_model", "model-running"),
        ("viz.maps", "from models import model", "model-running"),
        ("viz.grid", "import torch", "torch"),
        ("tools.train", "from app_pages import settings", "app_pages"),
        ("tools.bench_app", "import streamlit as st", "streamlit"),
        ("tools.bench_app", "from browser_util import choose", "tests"),
        ("tools.bench_load", "import tests.browser_util", "tests"),
        ("models.checkpoint", "from conftest import x", "tests"),
        ("app_pages.learned_vs_prescribed", "from tools.analyze import main", "tools"),
        ("kernels.triton.fixed", "from ..layouts import fixed\nfrom ...models import x", "models"),
    ],
)
def test_the_rules_catch_a_forbidden_import(module, source, rule):
    """The checker itself: each of these imports is refused, naming the rule."""
    found = violations(source, module)
    assert found and rule in found[-1], found


@pytest.mark.parametrize(
    "module, source",
    [
        (
            "viz.layout_view",
            "from kernels.layouts import Layout\nfrom models.tokens import Geometry",
        ),
        ("viz.maps", "from models import tokens\nimport numpy as np"),
        ("analysis.learned", "from models.checkpoint import load_model\nimport torch"),
        ("tools.export", "from viz.export import export_bytes\nfrom models import load_model"),
        ("app_pages.attention", "import streamlit as st\nfrom viz.maps import x"),
        ("tools.bench_app", "from streamlit.testing.v1 import AppTest"),
    ],
)
def test_the_rules_allow_imports_down_the_flow(module, source):
    assert violations(source, module) == []


def test_kernels_and_viz_import_without_the_layers_above():
    """At run time too: importing every kernels and viz module loads no model code and no
    streamlit (a lazy import inside a function would escape the static walk only if it ran)."""
    code = (
        "import sys, importlib, pkgutil\n"
        "import kernels, kernels.dispatch, kernels.capture, kernels.decode, kernels.reference\n"
        "import viz.charts, viz.export, viz.frontier_figure, viz.grid, viz.head_tables\n"
        "import viz.layout_view, viz.maps, viz.mosaics, viz.pixels, viz.race_figures\n"
        "import viz.speed_figure, viz.style\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in "
        "('streamlit', 'app_pages', 'tools') or m in ('models.model', 'models.checkpoint'))\n"
        "assert not bad, bad\n"
    )
    r = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert r.returncode == 0, r.stderr[-2000:]


def test_no_two_modules_import_each_other():
    """The dependency between two modules runs one way (analysis/race.py trains through
    models/training.py, which knows nothing of it, and records through analysis/timeline.py):
    no cycle of imports between the project's modules (a package's __init__, which re-exports,
    is left out)."""
    modules = {name: path for name, path in project_modules() if path.name != "__init__.py"}
    graph = {
        name: {m for _, m in imports_of(path.read_text(), name) if m in modules and m != name}
        for name, path in modules.items()
    }
    cycles, state = [], {}

    def visit(node: str, trail: list[str]) -> None:
        state[node] = "open"
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                cycles.append(" -> ".join([*trail[trail.index(nxt) :], nxt]))
            elif nxt not in state:
                visit(nxt, [*trail, nxt])
        state[node] = "done"

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    assert not cycles, "\n".join(cycles)
    assert "models.training" in graph["analysis.race"]  # one way: the race uses training
