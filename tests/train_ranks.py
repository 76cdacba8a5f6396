"""Run ``python -m tools.train`` under torchrun and save each rank's final weights as
``<out>/rank<R>.safetensors``, for tests/test_training.py's DDP test (the library has no
option for it): start_run is wrapped to keep the run, whose model is saved after training.

    torchrun --nproc_per_node=2 tests/train_ranks.py --preset ... --out DIR
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from safetensors.torch import save_file  # noqa: E402

import models.training as training  # noqa: E402
import tools.train  # noqa: E402

runs = []
start_run = training.start_run


def keep(*args, **kwargs):
    runs.append(start_run(*args, **kwargs))
    return runs[-1]


training.start_run = keep
code = tools.train.main(sys.argv[1:])
for run in runs:
    state = {k: v.cpu().contiguous() for k, v in run.model.state_dict().items()}
    save_file(state, run.out / f"rank{run.ranks.rank}.safetensors")
sys.exit(code)
