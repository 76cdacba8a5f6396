"""Saving and loading models: safetensors weights + a JSON config, never pickle.

A model directory holds ``config.json`` ({"format": ..., "config": ModelConfig fields}) and
``model.safetensors``. Every way a directory can be wrong (missing, unreadable, not JSON, an
unknown or invalid config, a corrupt, tampered or pickled weights file, missing / unexpected /
mis-shaped tensors) raises CheckpointError with a message that says which file and what is wrong.
Both files are checked for kind and size before they are opened (models/files.py: a FIFO or a
symlink to /dev/zero is refused, never waited on or read without end), and a config's size is
bounded before anything is allocated: every parameter counted, the MLP included
(``parameter_count``, at most MAX_PARAMETERS), and an MLP of zero units refused
(``check_model_size``).

``save_model`` records a SHA-256 of every tensor (name, dtype, shape, bytes) in the safetensors
metadata, and ``load_model`` checks it when present: safetensors itself has no checksum, so a
flipped bit in the data would otherwise load as a silently different model. (Files written before
the digest existed load without that check.)

The config is bound to the weights: ``save_model`` also stores the config itself and its SHA-256
(``config_sha256``) in the safetensors metadata, and ``load_model`` refuses a ``config.json``
that differs from it, naming each field that changed (n_head or the layout change no tensor's
shape, so nothing else would notice). Both files are written atomically (a temporary file,
fsync, a rename), so a crash leaves the old file or the new one, never half of one.

Weights may be stored as bfloat16 (``save_model(..., dtype=torch.bfloat16)``: half the bytes, what
the shipped GPU-trained models use); the checksums are of the stored bf16 tensors, so a flipped
byte is caught as in a float32 file, and ``load_model`` upcasts them to float32 (exactly: every
bf16 value is a float32 value) after every check, so the model runs in float32 on the CPU as any
other.
Training checkpoints stay float32, so a resumed run continues exactly.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load, save

from models.files import read_file
from models.model import ModelConfig, SparseTransformer

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
FORMAT = "sparse-transformer-explorer/1"
DIGEST_KEY = "tensors_sha256"
CONFIG_KEY = "config"  # the ModelConfig the weights were saved with, as JSON
CONFIG_DIGEST_KEY = "config_sha256"
LAYOUTS_KEY = "layouts"
STORED_DTYPE_KEY = "stored_dtype"  # "bfloat16" when save_model stored the weights as bf16
# what weights may be stored as; float32 is the model's own, bf16 is upcast to it on load
STORAGE_DTYPES = (torch.float32, torch.bfloat16)
MAX_CONFIG_BYTES = 2**20  # a config is ~300 bytes; anything near this is not one
# Tokens per image: 1M is 590x590 RGB, far beyond the paper's 64x64x3. The model allocates
# position buffers of this length before any weight is read, so a config may not ask for more.
MAX_TOKENS = 2**20
# The paper's deepest model has 128 layers; ModelConfig parses one layout per layer, so a config
# claiming millions of layers would spend minutes before any other check could refuse it.
MAX_LAYERS = 1024
# Parameters, counted from the config before anything is allocated (MLP included): 2^30 is 4 GiB
# of float32 weights, seven times the paper's largest model (152M); the shipped ones have ~1M.
MAX_PARAMETERS = 2**30
# A weights file holds at most that many float32 values, plus its JSON header.
MAX_WEIGHTS_BYTES = 4 * MAX_PARAMETERS + 2**26
# Files that hold pickles: refused by name, and never opened.
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")


class CheckpointError(ValueError):
    """A model directory that cannot be loaded; the message says why."""


def tensors_digest(state: dict[str, torch.Tensor]) -> str:
    """SHA-256 over every tensor's name, dtype, shape and bytes, in name order."""
    h = hashlib.sha256()
    for name in sorted(state):
        t = state[name].detach().cpu().contiguous()
        h.update(f"{name}\0{t.dtype}\0{tuple(t.shape)}\0".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())  # [numel] -> its raw bytes
    return h.hexdigest()


def write_atomic(path: str | Path, data: bytes) -> None:
    """Write ``path`` whole or not at all: ``NAME.tmp`` beside it, fsync, rename, fsync the
    folder. A crash at any point leaves the old file (or none) and at worst a stray .tmp
    (tests/faults.py crashes a process half-way through the data, before and after the
    rename, at every write of a checkpoint)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:  # named by the path asked for, not the temporary file
        tmp.unlink(missing_ok=True)
        raise OSError(e.errno, f"cannot write it ({e.strerror or e})", str(path)) from None
    except Exception:  # not on a simulated crash (a BaseException): a crash cleans nothing
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def fsync_dir(directory: Path) -> None:
    """Make the renames in ``directory`` durable (where the OS allows opening a folder)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def config_json(config: ModelConfig) -> str:
    """The canonical JSON of a config: what the weights' metadata binds them to."""
    return json.dumps(config.to_dict(), sort_keys=True, separators=(",", ":"))


def model_files(model: SparseTransformer, dtype: torch.dtype | None = None) -> dict[str, bytes]:
    """The bytes of a model directory's two files, by name: the weights, with their tensors'
    digest, config and layouts in the metadata, and config.json. ``dtype`` torch.bfloat16
    stores every floating-point tensor as bf16 (rounded to nearest), the digest being that of
    the stored tensors; None or torch.float32 stores them as they are."""
    if dtype is not None and dtype not in STORAGE_DTYPES:
        names = ", ".join(str(d).removeprefix("torch.") for d in STORAGE_DTYPES)
        raise ValueError(f"weights can be stored as {names}, not {dtype}")
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    if dtype is not None:
        state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}
    bound = config_json(model.config)
    meta = {
        "format": FORMAT,
        LAYOUTS_KEY: json.dumps([repr(x) for x in model.layouts]),
        DIGEST_KEY: tensors_digest(state),
        CONFIG_KEY: bound,
        CONFIG_DIGEST_KEY: hashlib.sha256(bound.encode()).hexdigest(),
    }
    if dtype == torch.bfloat16:
        meta[STORED_DTYPE_KEY] = "bfloat16"
    config = {"format": FORMAT, "config": model.config.to_dict()}
    return {
        WEIGHTS_FILE: save(state, metadata=meta),
        CONFIG_FILE: (json.dumps(config, indent=2) + "\n").encode(),
    }


def save_model(
    model: SparseTransformer, directory: str | Path, *, dtype: torch.dtype | None = None
) -> Path:
    """Write ``model`` into ``directory`` (created if needed) and return the directory.

    ``dtype=torch.bfloat16`` stores the weights as bf16 (half the bytes; load_model upcasts
    them to float32). Each file is replaced atomically; the weights come first, and a
    config.json left from another model beside them is refused on load (the weights name their
    config)."""
    if dtype is not None and dtype not in STORAGE_DTYPES:  # before anything is written
        raise ValueError(f"weights can be stored as float32 or bfloat16, not {dtype}")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    for name, data in model_files(model, dtype).items():
        write_atomic(directory / name, data)
    return directory


def _field_problem(name: str, value: object, default: object) -> str | None:
    """Why a JSON value cannot be the ModelConfig field ``name`` (judged by its default's type).

    ModelConfig checks ranges; this catches what JSON can say that Python would accept
    silently ("bias": "no" is truthy) or fail on obscurely (an infinite mlp_ratio).
    """
    if isinstance(default, bool):
        ok = isinstance(value, bool)
    elif isinstance(default, int):
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif isinstance(default, float):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        if ok and not math.isfinite(value):
            return f"{name} must be finite, got {value!r}"
    elif name == "layout":
        ok = isinstance(value, str) or (
            isinstance(value, list) and all(isinstance(v, str) for v in value)
        )
    else:
        ok = isinstance(value, type(default))
    if not ok:
        want = "a layout spec or a list of them" if name == "layout" else type(default).__name__
        return f"{name} must be {want}, got {value!r}"
    return None


def load_config(directory: str | Path) -> ModelConfig:
    """Read and validate the config of a model directory."""
    directory = Path(directory)
    if not directory.is_dir():
        raise CheckpointError(f"model directory {directory} does not exist")
    path = directory / CONFIG_FILE
    if not path.exists() and not path.is_symlink():
        raise CheckpointError(f"{path} is missing: not a model directory")
    # kind and size before it is opened: a FIFO would block, /dev/zero would never end
    data = read_file(path, MAX_CONFIG_BYTES, what="model config", error=CheckpointError)
    try:
        raw = json.loads(data.decode())
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        reason = "nested too deeply" if isinstance(e, RecursionError) else e
        raise CheckpointError(f"{path} is not readable JSON ({reason})") from None
    if not isinstance(raw, dict) or raw.get("format") != FORMAT or "config" not in raw:
        raise CheckpointError(f"{path} is not a {FORMAT} config (no matching 'format' field)")
    fields = raw["config"]
    if not isinstance(fields, dict):
        raise CheckpointError(f"{path}: 'config' must be an object of ModelConfig fields")
    defaults = {f.name: f.default for f in dataclasses.fields(ModelConfig)}
    wrong = [
        p
        for k, v in fields.items()
        if k in defaults and (p := _field_problem(k, v, defaults[k])) is not None
    ]
    if isinstance(fields.get("n_layer"), int) and fields["n_layer"] > MAX_LAYERS:
        wrong.append(f"n_layer is {fields['n_layer']}; this loader accepts at most {MAX_LAYERS}")
    if wrong:
        raise CheckpointError(f"{path} holds an invalid model config: {'; '.join(wrong)}")
    try:
        config = ModelConfig.from_dict(fields)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{path} holds an invalid model config: {e}") from None
    if config.block_size > MAX_TOKENS:
        raise CheckpointError(
            f"{path} describes {config.geometry} images ({config.block_size} tokens); "
            f"this loader accepts at most {MAX_TOKENS}"
        )
    check_model_size(config, f"{path} holds an invalid model config")
    return config


def mlp_width(config: ModelConfig) -> int:
    """The hidden width of each layer's MLP, as the model computes it."""
    return int(config.mlp_ratio * config.n_embd)


def parameter_count(config: ModelConfig) -> int:
    """The number of parameters ``SparseTransformer(config)`` has, counted without building it:
    token, start and position embeddings; per layer two LayerNorms, qkv, the attention's output
    projection and the MLP; the final LayerNorm and the output head."""
    d, v, b = config.n_embd, config.vocab_size, int(config.bias)
    hidden = mlp_width(config)
    norm = d + b * d
    layer = (
        2 * norm
        + 3 * d * d + b * 3 * d  # qkv
        + d * d + b * d  # attention output projection
        + hidden * d + b * hidden  # MLP in
        + d * hidden + b * d  # MLP out
    )  # fmt: skip
    embeddings = v * d + d + (config.height + config.width + config.channels) * d
    return embeddings + config.n_layer * layer + norm + d * v


def check_model_size(config: ModelConfig, where: str = "model config") -> None:
    """Refuse (CheckpointError) a config whose MLP would have no units, or whose parameters,
    MLP included, exceed MAX_PARAMETERS: counted before anything is allocated."""
    width = config.mlp_ratio * config.n_embd  # a float: 1e308 x 128 is inf, int() would raise
    if not math.isfinite(width) or width > MAX_PARAMETERS:
        raise CheckpointError(
            f"{where}: mlp_ratio {config.mlp_ratio:g} x n_embd {config.n_embd} asks for an MLP "
            f"of {width:g} units per layer; this loader accepts at most {MAX_PARAMETERS:,} "
            "parameters in all"
        )
    hidden = mlp_width(config)
    if hidden < 1:
        raise CheckpointError(
            f"{where}: mlp_ratio {config.mlp_ratio:g} x n_embd {config.n_embd} gives an MLP of "
            f"{hidden} units; it needs at least 1 (mlp_ratio >= {1 / config.n_embd:.3g})"
        )
    count = parameter_count(config)
    if count > MAX_PARAMETERS:
        raise CheckpointError(
            f"{where}: it describes a model of {count:,} parameters (MLP of {hidden:,} units "
            f"per layer, {4 * count / 2**30:,.1f} GiB of float32 weights); this loader accepts "
            f"at most {MAX_PARAMETERS:,}"
        )


def _min_weight_bytes(config: ModelConfig) -> int:
    """The float32 bytes of the weights ``config`` needs, every parameter counted (the MLP's
    included: leaving it out let an mlp_ratio of 1e5 allocate gigabytes before any check)."""
    return 4 * parameter_count(config)


def _pickle_problem(head: bytes) -> str | None:
    if head.startswith(b"PK\x03\x04"):
        return "is a zip archive (a torch.save checkpoint?), not safetensors"
    if head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        return "is a Python pickle, not safetensors"
    return None


def _read_weights(path: Path, config: ModelConfig) -> tuple[dict[str, torch.Tensor], dict]:
    """The tensors of a weights file, refused unless it is an intact safetensors file that can
    match ``config``. The size check comes before the model is built, so a config claiming a huge
    model allocates nothing."""
    if not path.exists() and not path.is_symlink():
        pickles = sorted(p.name for p in path.parent.iterdir() if p.suffix in PICKLE_SUFFIXES)
        if pickles:
            raise CheckpointError(
                f"{path} is missing; found {', '.join(pickles)}, but pickled weights are never "
                "loaded (unpickling can run code): convert them to safetensors"
            )
        raise CheckpointError(f"{path} is missing: the weights of this model were not saved")
    # kind and size before it is opened (a FIFO, /dev/zero, a folder are refused unread)
    data = read_file(path, MAX_WEIGHTS_BYTES, what="weights file", error=CheckpointError)
    problem = _pickle_problem(data[:8])
    if problem:
        raise CheckpointError(
            f"{path} {problem}; pickled weights are never loaded (unpickling can run code)"
        )
    try:
        state = load(data)
        header_len = int.from_bytes(data[:8], "little")
        meta = json.loads(data[8 : 8 + header_len]).get("__metadata__") or {}
    except (SafetensorError, OSError, ValueError, RuntimeError, TypeError, AttributeError) as e:
        raise CheckpointError(f"{path} is not a valid safetensors file ({e})") from None
    if meta.get("format", FORMAT) != FORMAT:
        raise CheckpointError(f"{path} is not a {FORMAT} weights file (format {meta['format']!r})")
    # Building the model allocates what the config asks for; when that is far more than the file
    # holds, say so instead (small differences get the per-tensor message of load_model).
    # as float32: bf16 weights are half the bytes of the model they describe
    have = sum(t.numel() * max(4, t.element_size()) for t in state.values())
    need = _min_weight_bytes(config)
    if need > 2 * have + 2**26:
        raise CheckpointError(
            f"{path} holds {have} bytes of weights, but {path.parent / CONFIG_FILE} describes a "
            f"model with at least {need} bytes of float32 weights: they do not match"
        )
    digest = meta.get(DIGEST_KEY)
    if digest is not None and digest != tensors_digest(state):
        raise CheckpointError(
            f"{path} has been altered or corrupted: its tensors do not match the SHA-256 "
            "recorded when it was saved"
        )
    return state, meta


def _check_bound_config(path: Path, meta: dict, config: ModelConfig) -> None:
    """Refuse a config.json other than the one the weights were saved with.

    Weights saved before the binding existed (the shipped assets/models/*/model.safetensors,
    which are not rewritten: every commit of a binary stays in git) have no config in their
    metadata: they load with the per-tensor checksums and the layouts check only."""
    config_path = path.parent / CONFIG_FILE
    stored = meta.get(CONFIG_KEY)
    if stored is not None:
        if hashlib.sha256(str(stored).encode()).hexdigest() != meta.get(CONFIG_DIGEST_KEY):
            raise CheckpointError(f"{path}: the config in its metadata does not match its hash")
        try:
            saved = json.loads(stored)
        except (ValueError, RecursionError):
            raise CheckpointError(f"{path}: the config in its metadata is not JSON") from None
        if not isinstance(saved, dict):
            raise CheckpointError(f"{path}: the config in its metadata is not an object")
        now = json.loads(config_json(config))
        if saved == now:
            return
        changed = [
            f"{k}: {now.get(k)!r} in {CONFIG_FILE}, {saved.get(k)!r} in the weights"
            for k in sorted(set(saved) | set(now))
            if saved.get(k) != now.get(k)
        ]
        raise CheckpointError(
            f"{config_path} is not the config {path} was saved with: {'; '.join(changed)}"
        )
    layouts = meta.get(LAYOUTS_KEY)
    if layouts is not None:
        want = json.dumps([repr(x) for x in config.layouts])
        if layouts != want:
            raise CheckpointError(
                f"{config_path} is not the config {path} was saved with: its layouts are "
                f"{want}, the weights were trained with {layouts}"
            )


def load_model(directory: str | Path, device: str | torch.device = "cpu") -> SparseTransformer:
    """Build the model a directory describes and load its weights; in eval mode."""
    directory = Path(directory)
    config = load_config(directory)
    path = directory / WEIGHTS_FILE
    state, meta = _read_weights(path, config)
    model = SparseTransformer(config)
    expected = model.state_dict()
    problems = []
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing:
        problems.append(f"missing tensors: {_some(missing)}")
    if unexpected:
        problems.append(f"unexpected tensors: {_some(unexpected)}")
    wrong = [
        f"{k} is {tuple(state[k].shape)} {state[k].dtype}, expected {tuple(v.shape)} {v.dtype}"
        for k, v in expected.items()
        if k in state and (state[k].shape != v.shape or not _storable(state[k].dtype, v.dtype))
    ]
    if wrong:
        problems.append(f"mismatched tensors: {_some(wrong)}")
    if problems:
        raise CheckpointError(
            f"{path} does not match {directory / CONFIG_FILE}: " + "; ".join(problems)
        )
    _check_bound_config(path, meta, config)
    if any(not torch.isfinite(t).all() for t in state.values() if t.is_floating_point()):
        raise CheckpointError(f"{path} holds NaN or infinite weights")
    # bf16 storage -> the model's float32 (exact), after the checksums were checked on the bytes
    state = {k: t.to(expected[k].dtype) for k, t in state.items()}
    model.load_state_dict(state)
    return model.to(device).eval()


def _storable(stored: torch.dtype, want: torch.dtype) -> bool:
    """True when a tensor stored as ``stored`` loads into one of ``want``: the same dtype, or
    bf16 weights of a float32 model."""
    return stored == want or (stored == torch.bfloat16 and want == torch.float32)


def _some(items: list[str], limit: int = 5) -> str:
    more = f" (and {len(items) - limit} more)" if len(items) > limit else ""
    return ", ".join(items[:limit]) + more
