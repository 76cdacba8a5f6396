"""Sparse attention: layouts, the exact reference, and the backend dispatch the model calls."""

from importlib import import_module

from kernels.layouts import (
    LAYOUT_NAMES,
    Layout,
    column,
    dense,
    fixed,
    interleaved,
    local,
    multihead,
    parse_layout,
    strided,
)

# what needs torch is imported on first use: `from kernels import layouts` (the app's first page)
# then costs no torch import
_LAZY = {
    "BACKENDS": "kernels.attention",
    "attention": "kernels.attention",
    "resolve_backend": "kernels.attention",
    "use_backend": "kernels.attention",
    "AttentionResult": "kernels.reference",
    "reference_attention": "kernels.reference",
    "sparse_attention": "kernels.sparse",
}


def __getattr__(name: str):
    if name in _LAZY:
        module = import_module(_LAZY[name])
        # bind every name from that module now; this also puts the function `attention` back
        # over the submodule `kernels.attention` that the import just set as an attribute
        for key, source in _LAZY.items():
            if source == module.__name__:
                globals()[key] = getattr(module, key)
        return globals()[name]
    raise AttributeError(f"module 'kernels' has no attribute {name!r}")


__all__ = [
    "BACKENDS",
    "LAYOUT_NAMES",
    "AttentionResult",
    "Layout",
    "attention",
    "column",
    "dense",
    "fixed",
    "interleaved",
    "local",
    "multihead",
    "parse_layout",
    "reference_attention",
    "resolve_backend",
    "sparse_attention",
    "strided",
    "use_backend",
]
