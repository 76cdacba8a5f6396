"""The Sparse Transformer model, its checkpoints and its data."""

from importlib import import_module

# imported on first use, so that `from models.data import Geometry` does not import torch
_LAZY = {
    "CheckpointError": "models.checkpoint",
    "load_config": "models.checkpoint",
    "load_model": "models.checkpoint",
    "save_model": "models.checkpoint",
    "PRESETS": "models.model",
    "ModelConfig": "models.model",
    "SparseTransformer": "models.model",
    "bits_per_dim": "models.model",
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
    raise AttributeError(f"module 'models' has no attribute {name!r}")


__all__ = [
    "PRESETS",
    "CheckpointError",
    "ModelConfig",
    "SparseTransformer",
    "bits_per_dim",
    "load_config",
    "load_model",
    "save_model",
]
