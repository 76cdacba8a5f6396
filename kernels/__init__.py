"""Sparse attention: layouts, the exact reference, and the backend dispatch the model calls."""

from kernels.attention import BACKENDS, attention, resolve_backend, use_backend
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
from kernels.reference import AttentionResult, reference_attention
from kernels.sparse import sparse_attention

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
