"""Package attributes imported on first use (PEP 562), for names whose modules import torch.

`from kernels import layouts` and `from models.tokens import Geometry` are all the app's first page
needs; importing torch for them would cost it a second (docs/BENCHMARKS.md).
"""

from __future__ import annotations

from collections.abc import Callable
from importlib import import_module
from typing import Any


def lazy_exports(namespace: dict[str, Any], sources: dict[str, str]) -> Callable[[str], Any]:
    """A module ``__getattr__`` that imports ``sources[name]`` (a module path) on first access
    of ``name`` and binds that module's ``name`` into ``namespace`` (the package's globals()),
    so that later accesses skip the hook.

    No exported name is also the name of a submodule (a submodule import would rebind the
    package attribute to the module); tests/test_layouts.py checks that for ``attention``.
    """

    def __getattr__(name: str) -> Any:
        if name not in sources:
            raise AttributeError(f"module {namespace['__name__']!r} has no attribute {name!r}")
        namespace[name] = getattr(import_module(sources[name]), name)
        return namespace[name]

    return __getattr__
