"""The Sparse Transformer model, its checkpoints and its data."""

from models.checkpoint import CheckpointError, load_config, load_model, save_model
from models.model import PRESETS, ModelConfig, SparseTransformer, bits_per_dim

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
