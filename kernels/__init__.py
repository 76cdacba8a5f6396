"""Sparse attention: layouts, the exact reference, and the one attention entry point (with its
backends) that the model calls."""

from kernels.layouts import (
    Layout,
    column,
    dense,
    fixed,
    local,
    multihead,
    parse_layout,
    strided,
)
from kernels.lazy import lazy_exports

# what needs torch is imported on first use: `from kernels import layouts` (the app's first page)
# then costs no torch import
_LAZY = {
    "BACKENDS": "kernels.dispatch",
    "attention": "kernels.dispatch",
    "resolve_backend": "kernels.dispatch",
    "use_backend": "kernels.dispatch",
    "AttentionResult": "kernels.reference",
    "reference_attention": "kernels.reference",
}


__getattr__ = lazy_exports(globals(), _LAZY)


__all__ = [
    "BACKENDS",
    "AttentionResult",
    "Layout",
    "attention",
    "column",
    "dense",
    "fixed",
    "local",
    "multihead",
    "parse_layout",
    "reference_attention",
    "resolve_backend",
    "strided",
    "use_backend",
]
