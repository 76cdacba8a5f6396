"""The Sparse Transformer over image pixels (Child et al. 2019), in one file.

An image is a sequence of 8-bit tokens in raster order with the channels interleaved per pixel
(models/tokens.py). The network is a decoder-only, pre-LayerNorm transformer: the input at
position i is the token i-1 (a learned start vector at position 0) plus factorized row + column +
channel position embeddings, so ``logits[:, i]`` is the distribution of token i given tokens < i.
Every layer has its own attention layout (kernels/layouts.py); all attention goes through
``kernels.attention`` (kernels/dispatch.py), which picks the backend. docs/DESIGN.md,
"The model" and "Token order" state what this file relies on.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields, replace

import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor

from kernels import BACKENDS, Layout, attention, parse_layout
from kernels.capture import FORMS, CaptureForm, capture, to_device
from kernels.decode import decode_attention
from kernels.selection import Attention, Selection, parse_attention, selection_attention
from models.tokens import Geometry, token_coords

VOCAB_SIZE = 256  # 8-bit pixel values

# torch.compile (tools.train --compile) leaves the attention call out of its graph: the Triton
# kernels, the layouts' cached masks and the dispatch's checks run as they are, and the rest of
# each block (LayerNorms, projections, MLP) is compiled around them. Marking the call so imports
# torch._dynamo (0.9 s, half of the app's first model page), which only compiling needs: the one
# who compiles calls keep_attention_out_of_graphs() first. Eager calls pay nothing either way.
_attention_call = attention  # [B, H, T, D] -> [B, H, T, D]


def keep_attention_out_of_graphs() -> None:
    """Make every model's attention call opaque to torch.compile (call before compiling)."""
    global _attention_call
    _attention_call = torch.compiler.disable(attention)


@contextmanager
def evaluating(model: nn.Module) -> Iterator[nn.Module]:
    """``model`` in eval mode (no dropout) for the block, its mode restored however the block
    ends: the one way the project runs a model that may be training."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


@dataclass
class ModelConfig:
    height: int = 28
    width: int = 28
    channels: int = 1
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128
    mlp_ratio: float = 4.0  # the paper's CIFAR model uses half-size feed-forward: 2.0
    dropout: float = 0.0  # on the embeddings and each residual branch
    bias: bool = True
    # one layout spec for every layer, or a list with one spec per layer (interleaved)
    layout: str | list[str] = "dense"
    attention_backend: str = "auto"  # see kernels/dispatch.py
    vocab_size: int = VOCAB_SIZE

    def __post_init__(self) -> None:
        for name in ("height", "width", "channels", "n_layer", "n_head", "n_embd"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"ModelConfig.{name} must be a positive integer, got {value!r}")
        if self.channels not in (1, 3):
            raise ValueError(
                f"ModelConfig.channels must be 1 (gray) or 3 (RGB), got {self.channels}"
            )
        if self.n_embd % self.n_head:
            raise ValueError(
                f"ModelConfig.n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})"
            )
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"ModelConfig.dropout must be in [0, 1), got {self.dropout}")
        if not self.mlp_ratio > 0:
            raise ValueError(f"ModelConfig.mlp_ratio must be > 0, got {self.mlp_ratio}")
        if self.vocab_size != VOCAB_SIZE:
            raise ValueError(f"ModelConfig.vocab_size must be {VOCAB_SIZE} (8-bit pixels)")
        if self.attention_backend not in BACKENDS:
            raise ValueError(
                f"ModelConfig.attention_backend must be one of {', '.join(BACKENDS)}, "
                f"got {self.attention_backend!r}"
            )
        if isinstance(self.layout, (list, tuple)):
            self.layout = [str(s) for s in self.layout]
            if len(self.layout) != self.n_layer:
                raise ValueError(
                    f"ModelConfig.layout lists {len(self.layout)} layouts for {self.n_layer} "
                    "layers; give one spec for all layers or exactly one per layer"
                )
        for layout in self.layouts:  # parses every spec, so a bad one fails here, not mid-run
            layout.check_heads(self.n_head)

    @property
    def layouts(self) -> tuple[Layout, ...]:
        """One parsed layout per layer."""
        specs = self.layout if isinstance(self.layout, list) else [self.layout] * self.n_layer
        return tuple(parse_layout(s) for s in specs)

    @property
    def geometry(self) -> Geometry:
        return Geometry(self.height, self.width, self.channels)

    @property
    def block_size(self) -> int:
        """Tokens per image: the sequence length."""
        return self.geometry.n_tokens

    @property
    def row_stride(self) -> int:
        """Tokens per image row, the natural l of strided / fixed layouts."""
        return self.geometry.row_stride

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> ModelConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown ModelConfig fields: {', '.join(unknown)}")
        return cls(**d)

    @classmethod
    def from_name(cls, name: str, **overrides: object) -> ModelConfig:
        """A named preset (see PRESETS), with any field overridden, e.g. layout="strided(l=28)"."""
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
        return replace(PRESETS[name], **overrides)


PRESETS: dict[str, ModelConfig] = {
    # for tests and smoke runs: trains a step in milliseconds
    "fmnist-tiny": ModelConfig(n_layer=2, n_head=2, n_embd=32),
    # 0.23M parameters, 16 heads: the Playground's default, at 14 x 14 (tools.train --size 14)
    # a step of batch 16 in ~0.1 s on one CPU core, so three layouts race in minutes
    "fmnist-mini": ModelConfig(n_layer=4, n_head=4, n_embd=64),
    # 0.8M parameters: what a 2-core CPU can train in hours
    "fmnist-small": ModelConfig(n_layer=4, n_head=4, n_embd=128),
    # 1.6M parameters (6.6 MB in float32, so three fit the 25 MB of shipped weights): the
    # shipped models, trained on one GPU for minutes; 2x fmnist-small's CPU cost per token
    "fmnist-medium": ModelConfig(n_layer=8, n_head=4, n_embd=128),
    # 6.3M parameters: a GPU-sized Fashion-MNIST model
    "fmnist-base": ModelConfig(n_layer=8, n_head=8, n_embd=256),
    # deeper and narrower, for GPU runs with the bf16 / compile recipe (tools.train --dtype bf16
    # --compile): 7,227,648 parameters (14.5 MB as bf16: three fit in 60 MB with room to spare)
    "fmnist-deep": ModelConfig(n_layer=16, n_head=6, n_embd=192),
    # the same depth at the shipped width: 3,245,568 parameters (6.5 MB as bf16)
    "fmnist-deep-narrow": ModelConfig(n_layer=16, n_head=4, n_embd=128),
    # for tests: 32x32 RGB (3,072 tokens) at a tiny width, a colour step on a CPU in seconds
    "cifar-tiny": ModelConfig(height=32, width=32, channels=3, n_layer=2, n_head=2, n_embd=32),
    # the colour model: strided(l=96) (one row of 32 pixels x 3 channels, OpenAI's CIFAR-10
    # layout), 16 layers, half-size MLP as in the paper: 2,194,176 parameters (4.4 MB as bf16)
    "cifar-strided-96": ModelConfig(
        height=32,
        width=32,
        channels=3,
        n_layer=16,
        n_head=4,
        n_embd=128,
        mlp_ratio=2.0,
        layout="strided(l=96)",
    ),
    # 32x32 RGB (3,072 tokens), the CIFAR-10 shape; l = 96 is one row
    "cifar-small": ModelConfig(height=32, width=32, channels=3, n_layer=8, n_head=4, n_embd=256),
    # the paper's CIFAR-10 network: 128 layers, 2 heads, d=256, half-size MLP, dropout 0.25
    "cifar-paper": ModelConfig(
        height=32,
        width=32,
        channels=3,
        n_layer=128,
        n_head=2,
        n_embd=256,
        mlp_ratio=2.0,
        dropout=0.25,
        layout="strided(l=96)",
    ),
}


# (heads' outputs y [B, T, C], head h in channels [h*D, (h+1)*D); the position of y's first row)
# -> the edited y that the layer's output projection then reads
HeadEdit = Callable[[Tensor, int], Tensor]


@dataclass(frozen=True)
class Intervention:
    """What one call changes in a model, passed to that call as an argument (``model(tokens,
    intervention=...)``, ``capture``, ``loss``, and on through models.sampling and the analysis):
    never stored on the model, so a cached model shared by several app sessions and worker
    threads runs each call with its own intervention and nothing leaks from one to another.

    ``attention``: layer -> the attention that layer runs with instead of its own layout, a
    static layout (per head where it is ``multihead(...)``) or a content-based selection
    (kernels/selection.py); the weights are the model's, so this is the trained model restricted
    to (or widened to) another pattern, renormalised over the keys it keeps.
    ``head_outputs``: layer -> a HeadEdit of the heads' outputs before the layer's output
    projection (head ablation: analysis/ablation.py).
    """

    attention: Mapping[int, Attention] = field(default_factory=dict)
    head_outputs: Mapping[int, HeadEdit] = field(default_factory=dict)

    @classmethod
    def everywhere(cls, attention: Attention | str, n_layer: int) -> Intervention:
        """Every one of ``n_layer`` layers runs with ``attention`` (a spec or an object)."""
        chosen = parse_attention(attention)
        return cls(attention={i: chosen for i in range(n_layer)})

    def check(self, config: ModelConfig) -> None:
        """ValueError naming a layer outside the model or an attention its heads cannot run."""
        for what, layers in (("attention", self.attention), ("head_outputs", self.head_outputs)):
            for i in layers:
                if not (isinstance(i, int) and 0 <= i < config.n_layer):
                    raise ValueError(
                        f"intervention {what}: layer {i!r} is outside 0..{config.n_layer - 1}"
                    )
        for chosen in self.attention.values():
            if not isinstance(chosen, (Layout, Selection)):
                raise ValueError(
                    f"intervention attention must be a layout or a selection, got {chosen!r}"
                )
            chosen.check_heads(config.n_head)

    def layer(self, i: int) -> tuple[Attention | None, HeadEdit | None]:
        return self.attention.get(i), self.head_outputs.get(i)


NO_INTERVENTION = Intervention()


@dataclass
class KVCache:
    """Keys and values of every position computed so far, for one layer: [B, H, N, D] each."""

    k: Tensor
    v: Tensor


class CausalSelfAttention(nn.Module):
    def __init__(self, config: ModelConfig, layout: Layout) -> None:
        super().__init__()
        self.n_head = config.n_head
        self.layout = layout
        self.backend = config.attention_backend
        self.qkv = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)
        self.proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def heads_qkv(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Queries, keys and values per head: x [B, T, C] -> 3 x [B, H, T, C/H]."""
        q, k, v = self.qkv(x).chunk(3, dim=-1)  # 3 x [B, T, C]
        # split the channels into heads: [B, T, C] -> [B, H, T, C/H]
        return tuple(rearrange(t, "b n (h d) -> b h n d", h=self.n_head) for t in (q, k, v))

    def forward(
        self,
        x: Tensor,
        cache: KVCache | None = None,
        start: int = 0,
        attend: Attention | None = None,
        edit: HeadEdit | None = None,
    ) -> Tensor:
        """x [B, T, C] at positions [start, start + T). With a cache, k and v are stored in it,
        and a single position (T = 1) attends to the cached keys its layout allows. ``attend``
        replaces the layer's layout for this call, ``edit`` edits the heads' outputs
        (Intervention)."""
        q, k, v = self.heads_qkv(x)  # 3 x [B, H, T, C/H]
        T = x.shape[1]
        attend = self.layout if attend is None else attend
        if cache is not None:
            cache.k[:, :, start : start + T] = k
            cache.v[:, :, start : start + T] = v
        if cache is not None and T == 1 and isinstance(attend, Selection):
            # the one new query against every cached key so far: its choice needs their scores
            keys, values = cache.k[:, :, : start + 1], cache.v[:, :, : start + 1]
            y = selection_attention(q, keys, values, attend, positions=torch.tensor([start]))
        elif cache is not None and T == 1:
            y, _, _ = decode_attention(q, cache.k, cache.v, attend, start)  # [B, H, 1, C/H]
        elif start == 0:
            y = _attention_call(q, k, v, attend, backend=self.backend)
        else:
            raise ValueError("several positions at once must start at position 0 (prefill)")
        y = rearrange(y, "b h n d -> b n (h d)")  # heads side by side again: [B, T, C]
        if edit is not None:
            y = edit(y, start)
        return self.dropout(self.proj(y))


class MLP(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        hidden = int(config.mlp_ratio * config.n_embd)
        self.fc = nn.Linear(config.n_embd, hidden, bias=config.bias)
        self.proj = nn.Linear(hidden, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.dropout(self.proj(F.gelu(self.fc(x))))


class Block(nn.Module):
    """Pre-LayerNorm residual block: x + attn(ln(x)), then x + mlp(ln(x))."""

    def __init__(self, config: ModelConfig, layout: Layout) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.attn = CausalSelfAttention(config, layout)
        self.ln_2 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.mlp = MLP(config)

    def forward(
        self,
        x: Tensor,
        cache: KVCache | None = None,
        start: int = 0,
        attend: Attention | None = None,
        edit: HeadEdit | None = None,
    ) -> Tensor:
        x = x + self.attn(self.ln_1(x), cache, start, attend, edit)
        return x + self.mlp(self.ln_2(x))


class SparseTransformer(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        d = config.n_embd
        self.tok_emb = nn.Embedding(config.vocab_size, d)
        # the input at position 0, where there is no previous token to show
        self.start = nn.Parameter(torch.zeros(d))
        # factorized position embeddings (paper §7.1): row + column + channel
        self.row_emb = nn.Embedding(config.height, d)
        self.col_emb = nn.Embedding(config.width, d)
        self.chan_emb = nn.Embedding(config.channels, d)
        rows, cols, chans = token_coords(torch.arange(config.block_size), config.geometry)
        self.register_buffer("rows", rows, persistent=False)
        self.register_buffer("cols", cols, persistent=False)
        self.register_buffer("chans", chans, persistent=False)
        self.drop = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(Block(config, layout) for layout in config.layouts)
        self.ln_f = nn.LayerNorm(d, bias=config.bias)
        self.head = nn.Linear(d, config.vocab_size, bias=False)

        # GPT-2 init: N(0, 0.02) everywhere, residual projections scaled by 1/sqrt(2 * layers)
        # so the residual stream's variance does not grow with depth
        self.apply(self._init_weights)
        for name, p in self.named_parameters():
            if name.endswith("proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))
        nn.init.normal_(self.start, mean=0.0, std=0.02)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    @property
    def layouts(self) -> tuple[Layout, ...]:
        return tuple(block.attn.layout for block in self.blocks)

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def embed(self, tokens: Tensor, start: int = 0, end: int | None = None) -> Tensor:
        """The transformer's input [B, end - start, C] at positions [start, end).

        Position i holds token i-1 (the start vector at i = 0) plus the position embedding of i,
        so that the output at i may predict token i without seeing it. ``tokens`` [B, n] needs
        the ids up to end - 2; ``end`` defaults to n.
        """
        B, n = tokens.shape
        end = n if end is None else end
        if end > self.config.block_size:
            raise ValueError(f"got {end} tokens; this model's images have {self.config.block_size}")
        x = self.tok_emb(tokens[:, max(start - 1, 0) : end - 1])  # [B, T or T-1, C]
        if start == 0:
            x = torch.cat([self.start.expand(B, 1, -1), x], dim=1)  # [B, T, C]
        r, c, ch = self.rows[start:end], self.cols[start:end], self.chans[start:end]
        pos = self.row_emb(r) + self.col_emb(c) + self.chan_emb(ch)  # [T, C]
        return self.drop(x + pos)

    def transform(
        self,
        x: Tensor,
        caches: list[KVCache] | None = None,
        start: int = 0,
        intervention: Intervention = NO_INTERVENTION,
    ) -> Tensor:
        """The stack on inputs [B, T, C] at positions [start, start + T) -> logits [B, T, 256].

        With ``caches`` (one per layer, see new_caches) keys and values are kept for decoding;
        ``intervention`` changes this call's attention or heads (Intervention).
        """
        intervention.check(self.config)
        for i, block in enumerate(self.blocks):
            x = block(x, None if caches is None else caches[i], start, *intervention.layer(i))
        return self.head(self.ln_f(x))

    def new_caches(self, batch: int) -> list[KVCache]:
        """Empty KV caches for ``batch`` sequences, one per layer, on the model's device."""
        c = self.config
        shape = (batch, c.n_head, c.block_size, c.n_embd // c.n_head)  # [B, H, N, D]
        w = self.head.weight  # the model's device and dtype
        return [KVCache(w.new_zeros(shape), w.new_zeros(shape)) for _ in range(c.n_layer)]

    @torch.no_grad()
    def capture(
        self,
        tokens: Tensor,
        *,
        layers: list[int] | None = None,
        heads: list[int] | None = None,
        form: str = "full",
        queries: list[int] | Tensor | None = None,
        block: int | None = None,
        support: Layout | str | None = None,
        intervention: Intervention = NO_INTERVENTION,
    ) -> dict[int, CaptureForm]:
        """The attention of tokens [B, n] at the chosen layers and heads, one form per layer
        (kernels/capture.py: "full", "rows" with queries, "pooled" with block, "sparse" with an
        optional support layout), each with tensors [B, len(heads), ...].

        Asked for, not hooked: the ordinary forward pays nothing for it. The run stops after
        the last layer asked for. Under an ``intervention`` a layer's attention is captured as
        it runs in that call (another layout or a selection), and its edited heads feed the
        layers above.
        """
        n_layer, n_head = self.config.n_layer, self.config.n_head
        layers = list(range(n_layer)) if layers is None else [int(i) for i in layers]
        heads = list(range(n_head)) if heads is None else [int(h) for h in heads]
        if not layers or any(not 0 <= i < n_layer for i in layers):
            raise ValueError(f"layers must be in 0..{n_layer - 1}, got {layers}")
        if not heads or any(not 0 <= h < n_head for h in heads):
            raise ValueError(f"heads must be in 0..{n_head - 1}, got {heads}")
        if form not in FORMS:
            raise ValueError(f"unknown capture form {form!r}; choose one of {', '.join(FORMS)}")
        support = parse_layout(support) if support is not None else None
        intervention.check(self.config)
        home = tokens.device  # results go back where the tokens came from (the app's CPU)
        x = self.embed(tokens.to(self.tok_emb.weight.device))
        out: dict[int, CaptureForm] = {}
        for i, block_ in enumerate(self.blocks[: max(layers) + 1]):
            attend, edit = intervention.layer(i)
            attend = block_.attn.layout if attend is None else attend
            if i in layers:
                q, k, _ = block_.attn.heads_qkv(block_.ln_1(x))  # [B, H, n, C/H] each
                # all heads, then the chosen ones: per-head layouts index patterns by head
                full = capture(q, k, attend, form, queries=queries, block=block, support=support)
                out[i] = to_device(full.select(heads), home)
            x = block_(x, None, 0, attend, edit)
        return out

    def forward(self, tokens: Tensor, intervention: Intervention = NO_INTERVENTION) -> Tensor:
        """Token ids [B, n] -> logits [B, n, 256]; logits[:, i] predicts token i from tokens < i."""
        return self.transform(self.embed(tokens), intervention=intervention)

    def loss(self, tokens: Tensor, intervention: Intervention = NO_INTERVENTION) -> Tensor:
        """Mean negative log-likelihood per token in nats; divide by ln 2 for bits/dim."""
        logits = self(tokens, intervention)  # [B, n, 256]
        return F.cross_entropy(logits.flatten(0, 1).float(), tokens.flatten())  # [B*n, 256], [B*n]
