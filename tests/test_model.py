"""The model: config, causality for every layout, two-layer reach, checkpoints."""

from __future__ import annotations

import json

import pytest
import torch

import kernels
from kernels import layouts as L
from models import (
    PRESETS,
    CheckpointError,
    ModelConfig,
    SparseTransformer,
    load_config,
    load_model,
    save_model,
)

# a small image: 6 rows x 7 columns, gray -> 42 tokens, one row = 7 tokens
GEOM = {"height": 6, "width": 7, "channels": 1}
ROW = 7
LAYOUT_SPECS = [
    "dense()",
    f"local(l={ROW})",
    f"column(l={ROW})",
    f"strided(l={ROW})",
    f"fixed(l={ROW}, c=2)",
    f"fixed(l={ROW}, c=2, num_verts=2)",
    f"multihead(local(l={ROW}), column(l={ROW}))",
    [f"strided(l={ROW})", f"local(l={ROW})"],  # interleaved per layer
]


def tiny(layout, n_layer=2, **kw) -> SparseTransformer:
    torch.manual_seed(0)
    config = ModelConfig(**GEOM, n_layer=n_layer, n_head=2, n_embd=16, layout=layout, **kw)
    return SparseTransformer(config).eval()


def tokens(batch=2, n=42, seed=1):
    return torch.randint(0, 256, (batch, n), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("layout", LAYOUT_SPECS, ids=str)
@pytest.mark.parametrize("backend", ["reference", "sdpa"])
def test_changing_a_token_leaves_earlier_logits_unchanged(layout, backend):
    model = tiny(layout, attention_backend=backend)
    x = tokens()
    base = model(x)
    assert base.shape == (2, 42, 256)
    for t in [0, 5, 20, 41]:
        y = x.clone()
        y[:, t] = (y[:, t] + 101) % 256
        out = model(y)
        # logits at i predict token i from tokens < i: positions <= t cannot see token t
        torch.testing.assert_close(out[:, : t + 1], base[:, : t + 1], rtol=0, atol=0)
        if t < 41:
            assert not torch.allclose(out[:, t + 1 :], base[:, t + 1 :]), "later logits must change"


def reach(model: SparseTransformer, n: int = 42) -> torch.Tensor:
    """reach[i, j]: does the output at position i depend on the transformer input at j?"""
    x = model.embed(tokens(batch=1, n=n)).detach().requires_grad_()
    logits = model.transform(x)[0]  # [n, 256]
    probe = torch.randn(256, generator=torch.Generator().manual_seed(3))
    rows = []
    for i in range(n):
        (g,) = torch.autograd.grad(logits[i] @ probe, x, retain_graph=True)
        rows.append(g[0].abs().sum(-1) > 0)
    return torch.stack(rows)


@pytest.mark.parametrize("layout", [f"strided(l={ROW})", f"fixed(l={ROW}, c=1)"])
def test_two_sparse_layers_reach_every_earlier_position(layout):
    r = reach(tiny(layout, n_layer=2))
    assert torch.equal(r, torch.ones(42, 42, dtype=torch.bool).tril())


@pytest.mark.parametrize("layout", [f"strided(l={ROW})", f"fixed(l={ROW}, c=1)", "local(l=7)"])
def test_one_sparse_layer_does_not_reach_everything(layout):
    # the control for the test above: the claim needs two layers
    r = reach(tiny(layout, n_layer=1))
    assert not r.tril().all()
    assert not r.triu(1).any()


def test_backends_give_the_same_logits():
    model = tiny(f"strided(l={ROW})")
    x = tokens()
    with kernels.use_backend("reference"):
        ref = model(x)
    torch.testing.assert_close(model(x), ref, rtol=1e-5, atol=1e-5)


def test_loss_is_near_uniform_at_init_and_prefixes_work():
    model = tiny("dense()")
    x = tokens()
    loss = model.loss(x)
    assert abs(loss.item() / torch.log(torch.tensor(2.0)).item() - 8.0) < 0.2  # ~8 bits/dim
    torch.testing.assert_close(model(x[:, :10]), model(x)[:, :10], rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="43 tokens"):
        model(tokens(n=43))


def test_presets_are_valid_and_overridable():
    for name, config in PRESETS.items():
        assert ModelConfig.from_name(name) == config
        assert len(config.layouts) == config.n_layer
    c = ModelConfig.from_name("fmnist-small", layout="strided(l=28)")
    assert c.layouts == (L.strided(28),) * c.n_layer
    assert c.block_size == 784 and c.row_stride == 28
    cifar = ModelConfig.from_name("cifar-small")
    assert cifar.block_size == 3072 and cifar.row_stride == 96
    with pytest.raises(ValueError, match="unknown preset"):
        ModelConfig.from_name("nope")


def test_gpt2_init_and_position_embeddings():
    model = SparseTransformer(ModelConfig.from_name("fmnist-small"))
    std = model.blocks[0].attn.qkv.weight.std().item()
    assert 0.018 < std < 0.022
    proj = model.blocks[0].mlp.proj.weight.std().item()
    assert proj < 0.6 * std  # residual projections are scaled down by sqrt(2 * n_layer)
    # factorized positions: tokens of one row share the row embedding
    assert torch.equal(model.rows[:28], torch.zeros(28, dtype=torch.long))
    assert torch.equal(model.cols[:28], torch.arange(28))
    rgb = SparseTransformer(
        ModelConfig(height=2, width=2, channels=3, n_layer=1, n_head=1, n_embd=8)
    )
    assert rgb.chans.tolist() == [0, 1, 2] * 4
    assert rgb.cols.tolist() == [0, 0, 0, 1, 1, 1] * 2


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"n_embd": 30, "n_head": 4}, "divisible by n_head"),
        ({"channels": 2}, "1 \\(gray\\) or 3"),
        ({"n_layer": 0}, "positive integer"),
        ({"layout": "strided(l=0)"}, "l must be >= 1"),
        ({"layout": "diagonal(3)"}, "unknown layout"),
        ({"layout": ["dense()"] * 3, "n_layer": 2}, "one per layer"),
        ({"layout": "fixed(l=8, c=2, num_verts=3)", "n_head": 4}, "multiple of 3"),
        ({"attention_backend": "cuda"}, "attention_backend"),
        ({"dropout": 1.5}, "dropout"),
    ],
)
def test_bad_configs_are_explained(kw, message):
    with pytest.raises(ValueError, match=message):
        ModelConfig(**kw)


def test_save_load_gives_identical_logits(tmp_path):
    model = tiny([f"strided(l={ROW})", f"fixed(l={ROW}, c=2)"])
    save_model(model, tmp_path / "m")
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == [
        "config.json",
        "model.safetensors",
    ]
    loaded = load_model(tmp_path / "m")
    assert loaded.config == model.config
    x = tokens()
    assert torch.equal(loaded(x), model(x))


def test_weights_are_safetensors_not_pickle(tmp_path):
    save_model(tiny("dense()"), tmp_path)
    head = (tmp_path / "model.safetensors").read_bytes()[:8]
    header_len = int.from_bytes(head, "little")
    header = json.loads((tmp_path / "model.safetensors").read_bytes()[8 : 8 + header_len])
    assert "tok_emb.weight" in header


def _saved(tmp_path, layout="dense()"):
    d = tmp_path / "m"
    save_model(tiny(layout), d)
    return d


def test_missing_and_mismatched_tensors_are_explained(tmp_path):
    from safetensors.torch import load_file, save_file

    d = _saved(tmp_path)
    state = load_file(d / "model.safetensors")
    del state["head.weight"]
    state["extra.bias"] = torch.zeros(3)
    state["tok_emb.weight"] = torch.zeros(10, 16)
    save_file(state, d / "model.safetensors")
    with pytest.raises(CheckpointError) as e:
        load_model(d)
    msg = str(e.value)
    assert "missing tensors: head.weight" in msg
    assert "unexpected tensors: extra.bias" in msg
    assert "tok_emb.weight is (10, 16)" in msg and "expected (256, 16)" in msg


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (
            lambda d: (d / "model.safetensors").write_bytes(b"\x00garbage"),
            "not a valid safetensors",
        ),
        (
            lambda d: (d / "model.safetensors").write_bytes(
                (d / "model.safetensors").read_bytes()[:200]
            ),
            "not a valid safetensors",
        ),
        (lambda d: (d / "model.safetensors").unlink(), "weights of this model were not saved"),
        (lambda d: (d / "config.json").write_text("{not json"), "not readable JSON"),
        (lambda d: (d / "config.json").unlink(), "not a model directory"),
        (
            lambda d: (d / "config.json").write_text('{"format": "other", "config": {}}'),
            "no matching 'format'",
        ),
        (
            lambda d: (d / "config.json").write_text(
                json.dumps({"format": "sparse-transformer-explorer/1", "config": {"n_layers": 3}})
            ),
            "unknown ModelConfig fields: n_layers",
        ),
        (
            lambda d: (d / "config.json").write_text(
                json.dumps({"format": "sparse-transformer-explorer/1", "config": {"n_head": 3}})
            ),
            "invalid model config",
        ),
    ],
)
def test_corrupt_checkpoints_raise_checkpoint_error(tmp_path, damage, message):
    d = _saved(tmp_path)
    damage(d)
    with pytest.raises(CheckpointError, match=message):
        load_model(d)


def test_missing_directory_and_config_only(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_model(tmp_path / "nowhere")
    d = _saved(tmp_path, layout=f"fixed(l={ROW}, c=2)")
    assert load_config(d).layouts[0] == L.fixed(ROW, 2)


def test_importing_the_model_does_not_import_the_compiler():
    """torch._dynamo costs ~0.9 s to import; only compiling needs it (the app never does)."""
    import subprocess
    import sys
    from pathlib import Path

    code = "import sys, models.model, analysis.attention; print('torch._dynamo' in sys.modules)"
    root = Path(__file__).resolve().parents[1]
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=root, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "False"


def test_compiling_keeps_the_attention_call_out_of_the_graph(monkeypatch):
    import models.model as M

    monkeypatch.setattr(M, "_attention_call", M.attention)  # restored after the test
    M.keep_attention_out_of_graphs()
    assert M._attention_call is not M.attention
    assert getattr(M._attention_call, "_torchdynamo_disable", False)  # dynamo's own mark
