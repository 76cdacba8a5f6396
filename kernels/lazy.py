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
    and binds every name that module provides into ``namespace`` (the package's globals()).

    Binding them all at once also restores a function that shares its module's name
    (``kernels.dispatch``): importing the submodule sets the package attribute to the module.
    """

    def __getattr__(name: str) -> Any:
        if name not in sources:
            raise AttributeError(f"module {namespace['__name__']!r} has no attribute {name!r}")
        module = import_module(sources[name])
        for key, source in sources.items():
            if source == module.__name__:
                namespace[key] = getattr(module, key)
        return namespace[name]

    return __getattr__
