"""The Sparse Transformer model, its checkpoints and its data."""

from kernels.lazy import lazy_exports

# imported on first use, so that `from models.tokens import Geometry` does not import torch
_LAZY = {
    "CheckpointError": "models.checkpoint",
    "load_config": "models.checkpoint",
    "load_model": "models.checkpoint",
    "save_model": "models.checkpoint",
    "PRESETS": "models.model",
    "ModelConfig": "models.model",
    "SparseTransformer": "models.model",
}


__getattr__ = lazy_exports(globals(), _LAZY)


__all__ = sorted(_LAZY)
