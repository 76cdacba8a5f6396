"""Hostile checkpoints: truncated, tampered, mismatched, pickled, impossible configs.

Each must raise CheckpointError naming the file and the problem (or, for a harmless byte flip,
load exactly the saved model); no other exception escapes and nothing is unpickled. The basic
cases (garbage file, missing files, unknown fields, wrong shapes) are in tests/test_model.py.
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from models import CheckpointError, ModelConfig, SparseTransformer, load_model, save_model
from models.checkpoint import DIGEST_KEY, FORMAT, MAX_TOKENS, tensors_digest

CONFIG = {"height": 6, "width": 7, "channels": 1, "n_layer": 2, "n_head": 2, "n_embd": 16}


@pytest.fixture(scope="module")
def model() -> SparseTransformer:
    torch.manual_seed(0)
    return SparseTransformer(ModelConfig(**CONFIG, layout="strided(l=7)")).eval()


@pytest.fixture
def saved(tmp_path, model) -> Path:
    return save_model(model, tmp_path / "m")


def weights(d: Path) -> Path:
    return d / "model.safetensors"


def header_end(raw: bytes) -> int:
    return 8 + int.from_bytes(raw[:8], "little")


def refused(d: Path, *patterns: str, file: str = "model.safetensors") -> str:
    """The CheckpointError message for ``d``; it must name ``file`` and match each pattern."""
    with pytest.raises(CheckpointError) as e:
        load_model(d)
    msg = str(e.value)
    assert str(d / file) in msg, msg
    for p in patterns:
        assert p in msg, msg
    return msg


def same_model(a: SparseTransformer, b: SparseTransformer) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


# -----------------------------------------------------------------------------
# truncated and tampered weights


def test_saved_weights_carry_a_digest_that_loads(saved, model):
    from safetensors import safe_open

    with safe_open(weights(saved), "pt") as f:
        meta = f.metadata()
    assert meta["format"] == FORMAT
    assert meta[DIGEST_KEY] == tensors_digest(model.state_dict())
    assert same_model(load_model(saved), model)


@pytest.mark.parametrize("cut", ["0", "7", "8", "header-1", "header", "data/2", "end-1"])
def test_truncated_weights(saved, cut):
    raw = weights(saved).read_bytes()
    end = header_end(raw)
    n = {"header-1": end - 1, "header": end, "data/2": (end + len(raw)) // 2, "end-1": -1}
    weights(saved).write_bytes(raw[: n.get(cut, int(cut) if cut.isdigit() else 0)])
    refused(saved, "not a valid safetensors file")


def test_every_header_byte_flip_is_refused_or_harmless(saved, model):
    raw = weights(saved).read_bytes()
    outcomes = {"refused": 0, "same model": 0}
    for i in range(header_end(raw)):
        bad = bytearray(raw)
        bad[i] ^= 0x55
        weights(saved).write_bytes(bytes(bad))
        try:
            loaded = load_model(saved)
        except CheckpointError as e:
            assert str(weights(saved)) in str(e)
            outcomes["refused"] += 1
        else:
            # e.g. a flip inside the unused "layouts" metadata or the header's padding
            assert same_model(loaded, model), f"byte {i} flipped: a different model loaded"
            outcomes["same model"] += 1
    assert outcomes["refused"] > 0.8 * header_end(raw), outcomes


@pytest.mark.parametrize("where", [0.0, 0.37, 0.5, 1.0])
def test_flipped_data_bytes_are_detected_by_the_digest(saved, where):
    raw = bytearray(weights(saved).read_bytes())
    end = header_end(raw)
    i = min(end + int(where * (len(raw) - end)), len(raw) - 1)
    raw[i] ^= 0x01  # one bit: still finite floats, the shapes all fine
    weights(saved).write_bytes(bytes(raw))
    refused(saved, "altered or corrupted", "SHA-256")


def test_renamed_tensor_in_header_is_detected(saved):
    raw = weights(saved).read_bytes()
    end = header_end(raw)
    header = raw[8:end].replace(b"head.weight", b"head.weighT")
    weights(saved).write_bytes(raw[:8] + header + raw[end:])
    refused(saved, "altered or corrupted")


def test_dtype_swapped_in_header_is_detected(saved):
    raw = weights(saved).read_bytes()
    end = header_end(raw)
    header = raw[8:end].replace(b'"F32"', b'"I32"', 1)  # same size: offsets stay valid
    weights(saved).write_bytes(raw[:8] + header + raw[end:])
    refused(saved, "altered or corrupted")


def test_files_without_a_digest_still_load_and_are_checked(saved, model):
    # files saved before the digest existed (like the first shipped models)
    state = load_file(weights(saved))
    save_file(state, weights(saved), metadata={"format": FORMAT})
    assert same_model(load_model(saved), model)
    state["ln_f.weight"] = state["ln_f.weight"].to(torch.float16)
    save_file(state, weights(saved), metadata={"format": FORMAT})
    refused(saved, "ln_f.weight is (16,) torch.float16, expected (16,) torch.float32")


def test_wrong_format_in_weights_metadata(saved):
    state = load_file(weights(saved))
    save_file(state, weights(saved), metadata={"format": "someone-else/2"})
    refused(saved, "not a sparse-transformer-explorer/1 weights file")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda s: s.pop("head.weight"), "missing tensors: head.weight"),
        (lambda s: s.update(extra=torch.zeros(2)), "unexpected tensors: extra"),
        (lambda s: s.update({"start": torch.zeros(17)}), "start is (17,)"),
        (
            lambda s: s.update({"head.weight": s["head.weight"].double()}),
            "head.weight is (256, 16) torch.float64, expected (256, 16) torch.float32",
        ),
        (
            lambda s: s.update({"ln_f.bias": s["ln_f.bias"].to(torch.int32)}),
            "ln_f.bias is (16,) torch.int32",
        ),
        (lambda s: s["ln_f.bias"].__setitem__(0, float("nan")), "NaN or infinite"),
        (lambda s: s["ln_f.bias"].__setitem__(0, float("inf")), "NaN or infinite"),
    ],
)
def test_mismatched_weights(saved, change, message):
    state = load_file(weights(saved))
    change(state)
    save_file(state, weights(saved), metadata={"format": FORMAT})  # no digest: the checks below
    refused(saved, message)


def test_a_valid_safetensors_file_of_another_model(saved, tmp_path):
    other = SparseTransformer(ModelConfig(**{**CONFIG, "n_embd": 32}))
    save_model(other, tmp_path / "other")
    weights(saved).write_bytes(weights(tmp_path / "other").read_bytes())
    refused(saved, "does not match", "tok_emb.weight is (256, 32)")


# -----------------------------------------------------------------------------
# pickles are never loaded


class Tripwire:
    """Unpickling this creates a file: proof that a pickle was loaded."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_a_torch_save_file_named_model_safetensors(saved, tmp_path):
    torch.save({"head.weight": torch.zeros(2), "x": Tripwire(tmp_path / "ran")}, weights(saved))
    refused(saved, "zip archive", "never loaded")
    assert not (tmp_path / "ran").exists()


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_a_raw_pickle_named_model_safetensors(saved, tmp_path, protocol):
    weights(saved).write_bytes(pickle.dumps(Tripwire(tmp_path / "ran"), protocol=protocol))
    refused(saved, "Python pickle", "never loaded")
    assert not (tmp_path / "ran").exists()


@pytest.mark.parametrize("name", ["pytorch_model.bin", "model.pt", "model.ckpt"])
def test_pickled_weights_beside_no_safetensors(saved, tmp_path, name):
    weights(saved).unlink()
    torch.save({"x": Tripwire(tmp_path / "ran")}, saved / name)
    refused(saved, f"found {name}", "never loaded", "convert them to safetensors")
    assert not (tmp_path / "ran").exists()


# -----------------------------------------------------------------------------
# bad configs


def write_config(d: Path, config: object, fmt: str = FORMAT) -> None:
    (d / "config.json").write_text(json.dumps({"format": fmt, "config": config}))


def with_config(**changes: object) -> dict:
    base = {**CONFIG, "layout": "strided(l=7)"}
    base.update(changes)
    return base


@pytest.mark.parametrize(
    ("config", "message"),
    [
        (with_config(n_layer=-2), "n_layer must be a positive integer, got -2"),
        (with_config(n_layer=0), "n_layer must be a positive integer"),
        (with_config(n_layer=2.0), "n_layer must be int, got 2.0"),
        (with_config(n_layer="2"), "n_layer must be int, got '2'"),
        (with_config(n_head=True), "n_head must be int, got True"),
        (with_config(bias="no"), "bias must be bool, got 'no'"),
        (with_config(dropout=-0.1), "dropout must be in [0, 1)"),
        (with_config(mlp_ratio=float("inf")), "mlp_ratio must be finite, got inf"),
        (with_config(mlp_ratio=float("nan")), "mlp_ratio must be finite, got nan"),
        (with_config(mlp_ratio=-1), "mlp_ratio must be > 0"),
        (with_config(channels=2), "1 (gray) or 3"),
        (with_config(vocab_size=65536), "vocab_size must be 256"),
        (with_config(attention_backend=["sdpa"]), "attention_backend must be str"),
        (with_config(layout="strided(l=-3)"), "l must be >= 1"),
        (with_config(layout="strided(l="), "cannot parse layout spec"),
        (with_config(layout="diagonal(3)"), "unknown layout"),
        (with_config(layout="strided(l=1e999)"), "must be integers"),
        (with_config(layout="fixed(l=7, c=99)"), "c * num_verts <= l"),
        (with_config(layout=None), "layout must be a layout spec or a list of them"),
        (with_config(layout=[1, 2]), "layout must be a layout spec or a list of them"),
        (with_config(layout=["dense()"] * 3), "one per layer"),
        (with_config(n_embd=15), "divisible by n_head"),
        (with_config(height=10**9), f"at most {MAX_TOKENS}"),
        (with_config(n_embd=2**20, n_head=1), "parameters"),
        (with_config(n_embd=4096, n_head=1), "they do not match"),
        (with_config(mlp_ratio=1e12), "parameters"),
        (with_config(mlp_ratio=1e5), "they do not match"),
        (with_config(mlp_ratio=1e300), "units per layer"),
        (with_config(mlp_ratio=1e-9), "MLP of 0 units"),
        (with_config(n_layer=10**9), "at most 1024"),
        (with_config(n_layer=1024, n_embd=1024, n_head=1), "parameters"),
        (with_config(n_layer=16, n_embd=1024, n_head=1), "they do not match"),
        ([1, 2], "'config' must be an object"),
        (None, "'config' must be an object"),
        ("dense", "'config' must be an object"),
    ],
    ids=str,
)
def test_bad_configs_are_refused_naming_the_config(saved, config, message):
    write_config(saved, config)
    msg = refused(
        saved, message, file="model.safetensors" if "not match" in message else "config.json"
    )
    assert "config.json" in msg


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "not readable JSON"),
        ("{", "not readable JSON"),
        ("[" * 100_000 + "]" * 100_000, "nested too deeply"),
        ("\udcff", "not readable JSON"),
        ("null", "no matching 'format'"),
        ('{"format": "sparse-transformer-explorer/2", "config": {}}', "no matching 'format'"),
        ('{"config": {}}', "no matching 'format'"),
    ],
    ids=["empty", "brace", "deep", "not utf-8", "null", "future format", "no format"],
)
def test_unreadable_configs(saved, text, message):
    path = saved / "config.json"
    if text == "\udcff":
        path.write_bytes(b"\xff\xfe\x00garbage")
    else:
        path.write_text(text)
    refused(saved, message, file="config.json")


def test_an_enormous_config_file_is_not_read(saved):
    (saved / "config.json").write_bytes(b" " * (2**20 + 1))
    refused(saved, "too large", file="config.json")


def test_config_json_that_is_a_directory(saved):
    (saved / "config.json").unlink()
    (saved / "config.json").mkdir()
    refused(saved, "is a folder, not a regular file", file="config.json")


# -----------------------------------------------------------------------------
# the config is bound to the weights


def edit_config(d: Path, **fields) -> None:
    raw = json.loads((d / "config.json").read_text())
    raw["config"].update(fields)
    (d / "config.json").write_text(json.dumps(raw))


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"n_head": 4}, "n_head: 4 in config.json, 2 in the weights"),
        ({"layout": "dense()"}, "layout: 'dense()' in config.json, 'strided(l=7)' in the weights"),
        ({"dropout": 0.5}, "dropout: 0.5 in config.json, 0.0 in the weights"),
    ],
)
def test_an_edited_config_json_is_refused_naming_what_differs(saved, fields, message):
    """Neither n_head nor the layout changes a tensor's shape: only the binding notices."""
    edit_config(saved, **fields)
    msg = refused(saved, "is not the config", message)
    assert str(saved / "config.json") in msg


def test_the_binding_itself_is_checked(saved):
    raw = (saved / "model.safetensors").read_bytes()
    end = header_end(raw)
    header = json.loads(raw[8:end])
    header["__metadata__"]["config"] = header["__metadata__"]["config"].replace(
        '"n_head":2', '"n_head":4'
    )
    body = json.dumps(header).encode()
    (saved / "model.safetensors").write_bytes(len(body).to_bytes(8, "little") + body + raw[end:])
    refused(saved, "does not match its hash")


def old_style(d: Path, *, layouts: bool) -> None:
    """Weights as the shipped files are: no config in the metadata (layouts or not)."""
    state = load_file(weights(d))
    meta = {"format": FORMAT, DIGEST_KEY: tensors_digest(state)}
    if layouts:
        meta["layouts"] = json.dumps(["strided(l=7)", "strided(l=7)"])
    save_file(state, weights(d), metadata=meta)


def test_weights_saved_before_the_binding_load_with_their_layouts_checked(saved, model):
    old_style(saved, layouts=True)
    assert same_model(load_model(saved), model)
    edit_config(saved, layout="dense()")
    refused(saved, "is not the config", "trained with", '"strided(l=7)"')
    # without layouts either, only the per-tensor checksums remain: an edit loads (documented)
    old_style(saved, layouts=False)
    edit_config(saved, n_head=4)
    assert load_model(saved).config.n_head == 4


def test_the_shipped_models_load_and_their_layouts_are_checked(tmp_path):
    import shutil

    root = Path(__file__).resolve().parents[1] / "assets" / "models"
    copy = tmp_path / "strided"
    shutil.copytree(root / "strided", copy)
    load_model(copy)
    edit_config(copy, layout="dense()")
    refused(copy, "is not the config", "dense()")


def test_save_model_replaces_files_atomically(saved, model):
    """No temporary file stays behind, and each file is whole (written to .tmp, renamed)."""
    save_model(model, saved)
    assert sorted(p.name for p in saved.iterdir()) == ["config.json", "model.safetensors"]
    assert same_model(load_model(saved), model)


# -----------------------------------------------------------------------------
# bf16 storage: half the bytes, the same checks, float32 on load


@pytest.fixture
def saved_bf16(tmp_path, model) -> Path:
    return save_model(model, tmp_path / "bf16", dtype=torch.bfloat16)


def test_bf16_weights_round_trip_to_float32(saved_bf16, model):
    from safetensors import safe_open

    with safe_open(weights(saved_bf16), "pt") as f:
        meta = f.metadata()
        assert {f.get_tensor(k).dtype for k in f.keys()} == {torch.bfloat16}
    stored = load_file(weights(saved_bf16))
    assert meta[DIGEST_KEY] == tensors_digest(stored)  # the checksums are of what is stored
    assert meta["stored_dtype"] == "bfloat16"
    loaded = load_model(saved_bf16)
    assert loaded.config == model.config
    for k, v in loaded.state_dict().items():
        assert v.dtype == torch.float32 and v.device.type == "cpu", k
        # exactly the model's weights rounded to bf16 (the upcast itself is exact)
        assert torch.equal(v, model.state_dict()[k].to(torch.bfloat16).float()), k
    tokens = torch.randint(0, 256, (1, 42), generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(loaded(tokens), model(tokens), rtol=0.05, atol=0.05)


def test_bf16_weights_are_half_the_size(saved, saved_bf16):
    big, small = weights(saved).stat().st_size, weights(saved_bf16).stat().st_size
    data_big = big - header_end(weights(saved).read_bytes())
    data_small = small - header_end(weights(saved_bf16).read_bytes())
    assert data_small * 2 == data_big
    assert small < 0.55 * big


@pytest.mark.parametrize("where", [0.0, 0.5, 1.0])
def test_a_flipped_byte_in_bf16_weights_is_refused(saved_bf16, where):
    raw = bytearray(weights(saved_bf16).read_bytes())
    end = header_end(raw)
    i = min(end + int(where * (len(raw) - end)), len(raw) - 1)
    raw[i] ^= 0x01
    weights(saved_bf16).write_bytes(bytes(raw))
    refused(saved_bf16, "altered or corrupted", "SHA-256")


def test_bf16_weights_keep_the_config_binding(saved_bf16):
    path = saved_bf16 / "config.json"
    raw = json.loads(path.read_text())
    raw["config"]["n_head"] = 1
    path.write_text(json.dumps(raw))
    refused(saved_bf16, "n_head", file="config.json")


def test_only_float32_or_bf16_storage(model, tmp_path):
    with pytest.raises(ValueError, match="float32 or bfloat16"):
        save_model(model, tmp_path / "half", dtype=torch.float16)
    assert not (tmp_path / "half").exists()  # refused before anything was written
