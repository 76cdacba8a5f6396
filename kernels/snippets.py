"""A static layout as FlexAttention source code: ``mask_mod_source(layout)`` writes a
self-contained Python snippet defining ``def mask_mod(b, h, q_idx, kv_idx):`` with the layout's
parameters as literals, equal pair by pair to ``layout.mask_mod`` (tests/test_snippets.py runs it
through ``create_block_mask`` and ``torch.vmap``).

The snippet is what a user pastes next to ``flex_attention``: it needs nothing of this project,
so BigBird's random-block rule (``bigbird_random_block`` and its hash) is written out in it.

Each family is written as named terms (the names of ``layout.parts()``) OR-ed together, so the
snippet reads like the layout's table row in docs/DESIGN.md.
"""

from __future__ import annotations

from kernels.layouts import (
    HASH_PRIME,
    Axial,
    BigBird,
    BlockSparse,
    Column,
    Dense,
    Dilated,
    Fixed,
    Layout,
    Local,
    MultiHead,
    Neighborhood,
    Sinks,
    Strided,
    fixed_summary_offsets,
)

CAUSAL = "(q_idx >= kv_idx)"

_HEADER = """\
import torch
from torch.nn.attention.flex_attention import create_block_mask, flex_attention
"""

_USAGE = """\
# usage: block_mask = create_block_mask(mask_mod, B=None, H={heads}, Q_LEN=n, KV_LEN=n)
#        out = flex_attention(q, k, v, block_mask=block_mask)
"""

# BigBird's draw (kernels/layouts.py, _hash3 and bigbird_random_block), written out
_BIGBIRD_HELPERS = """\
def _hash3(seed, u, t):
    # integer hash modulo a prime below 2**31: products stay below 2**62 (int64-safe)
    x = (seed % {prime} * 1_000_003 + u * 7_919 + t * 104_729 + 12_345) % {prime}
    x = (x * x + 2_654_435) % {prime}
    return (x * x + 40_503) % {prime}


def random_block(seed, u, t, random, window, globals_):
    # the t-th random key block of query block u: one drawn from each of `random` equal strata
    # of the candidates globals_ .. u - window (so the draws are distinct); with fewer
    # candidates than `random`, slot t takes candidate t, and a slot past them names block -1,
    # which no key is in
    m = u - window + 1 - globals_
    m_pos = m * (m > 0)
    lo = t * m_pos // random
    hi = (t + 1) * m_pos // random
    width = hi - lo + (hi == lo)  # no % 0 where a stratum is empty
    drawn = lo + _hash3(seed, u, t) % width
    few = m_pos < random
    pick = drawn + few * (t - drawn)
    valid = pick < m_pos
    return (globals_ + pick + 1) * valid - 1
"""


def _any(alternatives: list[str]) -> str:
    """The OR of boolean expressions, one a line inside parentheses when there are several."""
    if len(alternatives) == 1:
        return alternatives[0]
    return "(\n        " + "\n        | ".join(alternatives) + "\n    )"


def _terms(layout: Layout) -> list[tuple[str, str]]:
    """(part name, boolean expression over b, h, q_idx, kv_idx) for each part of ``layout``, in
    the order of ``layout.parts()``. Raises ValueError for a layout with no static mask."""
    if isinstance(layout, Dense):
        return [("causal", CAUSAL)]
    if isinstance(layout, Local):
        return [("local", f"{CAUSAL} & (q_idx - kv_idx < {layout.l})")]
    if isinstance(layout, Column):
        return [("column", f"{CAUSAL} & ((q_idx - kv_idx) % {layout.l} == 0)")]
    if isinstance(layout, Strided):
        return [
            ("local", f"{CAUSAL} & (q_idx - kv_idx < {layout.l})"),
            ("column", f"{CAUSAL} & ((q_idx - kv_idx) % {layout.l} == 0)"),
        ]
    if isinstance(layout, Fixed):
        l, c, k = layout.l, layout.c, layout.num_verts
        if k == 1:
            first, _ = fixed_summary_offsets(0, l, c, 1)
            summary = f"{CAUSAL} & (kv_idx % {l} >= {first})"
        else:
            # head h takes summary set v = h mod k: offsets l-(v+1)c .. l-vc-1 of each block
            summary = (
                f"(\n        {CAUSAL}\n        & (kv_idx % {l} >= {l} - (h % {k} + 1) * {c})"
                f"\n        & (kv_idx % {l} <= {l - 1} - (h % {k}) * {c})\n    )"
            )
        return [("block", f"{CAUSAL} & (q_idx // {l} == kv_idx // {l})"), ("summary", summary)]
    if isinstance(layout, Dilated):
        w, r = layout.w, layout.r
        return [
            ("dilated", f"{CAUSAL} & ((q_idx - kv_idx) % {r} == 0) & (q_idx - kv_idx < {r * w})")
        ]
    if isinstance(layout, Sinks):
        return [
            ("sink", f"{CAUSAL} & (kv_idx < {layout.s})"),
            ("window", f"{CAUSAL} & (q_idx - kv_idx < {layout.w})"),
        ]
    if isinstance(layout, Axial):
        width = layout.width
        return [
            ("row", f"{CAUSAL} & (q_idx // {width} == kv_idx // {width})"),
            ("column", f"{CAUSAL} & ((q_idx - kv_idx) % {width} == 0)"),
        ]
    if isinstance(layout, Neighborhood):
        width, half = layout.width, layout.kw // 2
        return [
            (
                "neighborhood",
                f"{CAUSAL} & (q_idx // {width} - kv_idx // {width} < {layout.kh})"
                f" & (q_idx % {width} - kv_idx % {width} <= {half})"
                f" & (kv_idx % {width} - q_idx % {width} <= {half})",
            )
        ]
    if isinstance(layout, BlockSparse):
        size = layout.block
        return [
            ("local", f"{CAUSAL} & (q_idx // {size} - kv_idx // {size} < {layout.local_blocks})"),
            ("vertical", f"{CAUSAL} & ((kv_idx // {size} + 1) % {layout.vert_stride} == 0)"),
        ]
    if isinstance(layout, BigBird):
        return _bigbird_terms(layout)
    if isinstance(layout, MultiHead):
        p = len(layout.patterns)
        by_name: dict[str, list[str]] = {}
        for idx, pattern in enumerate(layout.patterns):
            for name, expr in _terms(pattern):
                by_name.setdefault(name, []).append(f"((h % {p} == {idx}) & ({expr}))")
        return [(name, _any(exprs)) for name, exprs in by_name.items()]
    raise ValueError(
        f"{layout!r} has no static mask_mod to write out (only the layouts of kernels/layouts.py "
        "do; top-k and MoBA select keys from the scores)"
    )


def _bigbird_terms(layout: BigBird) -> list[tuple[str, str]]:
    """_terms of BigBird: its window, global and random blocks."""
    size = layout.block
    terms = [("window", f"{CAUSAL} & (q_idx // {size} - kv_idx // {size} < {layout.window})")]
    if layout.globals:
        terms.append(("global", f"{CAUSAL} & (kv_idx // {size} < {layout.globals})"))
    if layout.random:
        # a drawn block lies before the window, so it is causal without a check
        draws = [
            f"(kv_idx // {size} == random_block("
            f"{layout.seed}, q_idx // {size}, {t}, {layout.random}, {layout.window}, "
            f"{layout.globals}))"
            for t in range(layout.random)
        ]
        terms.append(("random", _any(draws)))
    return terms


def _has_bigbird(layout: Layout) -> bool:
    """Whether the snippet needs BigBird's random-block helpers (a multihead may hold one)."""
    if isinstance(layout, MultiHead):
        return any(_has_bigbird(p) for p in layout.patterns)
    return isinstance(layout, BigBird) and layout.random > 0


def _variable(name: str) -> str:
    """A part's name as a Python variable (``global`` is a keyword)."""
    return {"global": "global_", "random": "random_"}.get(name, name)


def mask_mod_source(layout: Layout) -> str:
    """Self-contained Python source defining ``mask_mod(b, h, q_idx, kv_idx)`` for ``layout``,
    its parameters as literals; each part of ``layout.parts()`` is one named term."""
    terms = _terms(layout)
    lines = [_HEADER, _USAGE.format(heads=layout.period)]
    if _has_bigbird(layout):
        lines += [_BIGBIRD_HELPERS.replace("{prime}", f"{HASH_PRIME:_}"), ""]
    lines.append("def mask_mod(b, h, q_idx, kv_idx):")
    lines.append(f'    """{layout!r}: {" | ".join(name for name, _ in terms)}."""')
    for name, expr in terms:
        lines.append(f"    {_variable(name)} = {expr}")
    lines.append("    return " + " | ".join(_variable(name) for name, _ in terms))
    return "\n".join(lines) + "\n"
