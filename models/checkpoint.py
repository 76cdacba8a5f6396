"""Saving and loading models: safetensors weights + a JSON config, never pickle.

A model directory holds ``config.json`` ({"format": ..., "config": ModelConfig fields}) and
``model.safetensors``. Every way a directory can be wrong (missing, unreadable, not JSON, an
unknown or invalid config, a corrupt weights file, missing / unexpected / mis-shaped tensors)
raises CheckpointError with a message that says which file and what is wrong.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from models.model import ModelConfig, SparseTransformer

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
FORMAT = "sparse-transformer-explorer/1"


class CheckpointError(ValueError):
    """A model directory that cannot be loaded; the message says why."""


def save_model(model: SparseTransformer, directory: str | Path) -> Path:
    """Write ``model`` into ``directory`` (created if needed) and return the directory."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    meta = {"format": FORMAT, "layouts": json.dumps([repr(x) for x in model.layouts])}
    save_file(state, directory / WEIGHTS_FILE, metadata=meta)
    config = {"format": FORMAT, "config": model.config.to_dict()}
    (directory / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
    return directory


def load_config(directory: str | Path) -> ModelConfig:
    """Read and validate the config of a model directory."""
    directory = Path(directory)
    if not directory.is_dir():
        raise CheckpointError(f"model directory {directory} does not exist")
    path = directory / CONFIG_FILE
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{path} is missing: not a model directory") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path} is not readable JSON ({e})") from None
    if not isinstance(raw, dict) or raw.get("format") != FORMAT or "config" not in raw:
        raise CheckpointError(f"{path} is not a {FORMAT} config (no matching 'format' field)")
    try:
        return ModelConfig.from_dict(raw["config"])
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{path} holds an invalid model config: {e}") from None


def load_model(directory: str | Path, device: str | torch.device = "cpu") -> SparseTransformer:
    """Build the model a directory describes and load its weights; in eval mode."""
    directory = Path(directory)
    config = load_config(directory)
    path = directory / WEIGHTS_FILE
    if not path.is_file():
        raise CheckpointError(f"{path} is missing: the weights of this model were not saved")
    try:
        state = load_file(path, device="cpu")
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"{path} is not a valid safetensors file ({e})") from None
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
        if k in state and (state[k].shape != v.shape or state[k].dtype != v.dtype)
    ]
    if wrong:
        problems.append(f"mismatched tensors: {_some(wrong)}")
    if problems:
        raise CheckpointError(
            f"{path} does not match {directory / CONFIG_FILE}: " + "; ".join(problems)
        )
    if any(not torch.isfinite(t).all() for t in state.values() if t.is_floating_point()):
        raise CheckpointError(f"{path} holds NaN or infinite weights")
    model.load_state_dict(state)
    return model.to(device).eval()


def _some(items: list[str], limit: int = 5) -> str:
    more = f" (and {len(items) - limit} more)" if len(items) > limit else ""
    return ", ".join(items[:limit]) + more
