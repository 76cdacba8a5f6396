"""The run folder: what a training run (models/training.py) and a race's lane (analysis/race.py)
leave on disk, and every reader of it.

A run folder is a loadable model folder (config.json, model.safetensors) with ``run.json``, the
run's record (``RunRecord``: its history, commands, settings, data, machine and final numbers),
plus, for a resumable run, ``checkpoints/step-NNNNNNNN/``: one folder per checkpoint holding the
model's two files, ``train_state.safetensors`` (optimizer moments, RNG state), ``run.json`` and,
written last, ``manifest.json`` naming every file with its SHA-256. A checkpoint is complete when
its manifest is there and every file matches it; ``find_checkpoint`` takes the newest complete
one (saying which incomplete ones it passed over), so a crash at any write loses at most the
checkpoint being written. Only then are the model files beside ``checkpoints/`` replaced (each
atomically, ``publish``) and the older checkpoints removed. Every file of a run is read through
models/files.py, each with its bound (FILE_LIMITS): a FIFO or a device there is refused, never
read.
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
import sys
from dataclasses import dataclass, field, fields
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load, save
from tqdm import tqdm

from models.checkpoint import (
    CONFIG_FILE,
    MAX_CONFIG_BYTES,
    MAX_WEIGHTS_BYTES,
    WEIGHTS_FILE,
    CheckpointError,
    fsync_dir,
    write_atomic,
)
from models.files import read_file

STATE_FILE = "train_state.safetensors"
RUN_FILE = "run.json"
CHECKPOINTS_DIR = "checkpoints"
MANIFEST_FILE = "manifest.json"
CHECKPOINT_FORMAT = "sparse-transformer-explorer/checkpoint/1"
# the most bytes each file of a run is read with (models/files.py: a regular file, this size at
# most; a FIFO, a device or a huge file is refused before it is opened)
MAX_MANIFEST_BYTES = 2**20  # a few hundred bytes written
MAX_RECORD_BYTES = 256 * 2**20  # run.json: ~40 bytes a step of history
MAX_STATE_BYTES = 2 * MAX_WEIGHTS_BYTES + 2**26  # two moments a parameter, and the RNG state
PUBLISHED = (WEIGHTS_FILE, CONFIG_FILE, RUN_FILE)  # beside checkpoints/: a model folder
CHECKPOINT_FILES = (*PUBLISHED, STATE_FILE)
FILE_LIMITS = {  # bytes each file of a run is read with, at most
    WEIGHTS_FILE: MAX_WEIGHTS_BYTES,
    CONFIG_FILE: MAX_CONFIG_BYTES,
    RUN_FILE: MAX_RECORD_BYTES,
    STATE_FILE: MAX_STATE_BYTES,
    MANIFEST_FILE: MAX_MANIFEST_BYTES,
}
_MODEL_FILES = (*PUBLISHED, STATE_FILE, CHECKPOINTS_DIR)  # any of these: a folder holds a model


def json_bytes(value: object) -> bytes:
    """A record as the run folder writes it: indented JSON and a newline."""
    return (json.dumps(value, indent=1) + "\n").encode()


def say(message: str) -> None:
    """One line to stderr, past any progress bar."""
    tqdm.write(message, file=sys.stderr)


@dataclass
class RunRecord:
    """run.json: what training and the race record of a run, the one type every reader uses.
    Fields are written in this order, those that are None left out; keys this version does not
    know are kept as read (``extra``) and written back after them."""

    history: list[dict] = field(default_factory=list)  # {step, train_bpd, test_bpd, seconds}
    wall_time_s: float = 0.0
    commands: list[str] = field(default_factory=list)
    data_source: dict | None = None  # the photos source: which photos each split holds
    precision: str | None = None  # "bf16" or "fp32" (training)
    train_config: dict | None = None  # models.training.TrainConfig's fields
    model_config: dict | None = None
    params: int | None = None
    data: dict | None = None  # source, (the race's image size,) train and test images
    steps: int | None = None
    images_seen: int | None = None
    device: str | None = None
    world_size: int | None = None  # DDP ranks (training)
    torch: str | None = None
    python: str | None = None
    playground: dict | None = None  # the race's lane: race file, how it ended, nnz
    final: dict | None = None  # the final evaluation: a finished run
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        out = {
            f.name: getattr(self, f.name)
            for f in fields(self)
            if f.name != "extra" and getattr(self, f.name) is not None
        }
        return out | self.extra

    def to_bytes(self) -> bytes:
        return json_bytes(self.to_dict())

    @classmethod
    def from_dict(cls, raw: dict) -> RunRecord:
        """The record of a JSON object as read, unchecked (``problems`` says what is off)."""
        known = {f.name for f in fields(cls)} - {"extra"}
        record = cls(**{k: v for k, v in raw.items() if k in known})
        record.extra = {k: v for k, v in raw.items() if k not in known}
        return record

    def train_bpds(self) -> list[float]:
        """The training bits/dim of every step the history holds, in order."""
        return [h["train_bpd"] for h in self.history if "train_bpd" in h]

    def problems(self) -> list[str]:
        """What is wrong with the record for resuming a run from it (empty: nothing)."""
        want = {
            "history": list,
            "commands": list,
            "wall_time_s": (int, float),
            "train_config": dict,
            "steps": int,
        }
        wrong = [
            f"{k} must be {t.__name__ if isinstance(t, type) else 'a number'}, got "
            f"{getattr(self, k)!r}"
            for k, t in want.items()
            if not isinstance(getattr(self, k), t) or isinstance(getattr(self, k), bool)
        ]
        if not wrong and not all(
            isinstance(h, dict) and isinstance(h.get("step"), int) for h in self.history
        ):
            wrong.append("history must be a list of {step: ...} entries")
        if not wrong and not all(isinstance(c, str) for c in self.commands):
            wrong.append("commands must be a list of strings")
        if not wrong and not math.isfinite(self.wall_time_s):
            wrong.append("wall_time_s must be finite")
        return wrong


def read_run_file(path: Path, what: str = "checkpoint file") -> bytes:
    """The bytes of one file of a run (a checkpoint's, the manifest, run.json) through
    models/files.py, bounded by FILE_LIMITS; CheckpointError naming the path otherwise."""
    return read_file(path, FILE_LIMITS[path.name], what=what, error=CheckpointError)


def read_run_record(path: Path) -> RunRecord:
    """The run.json at ``path`` (a folder: its run.json), as read: CheckpointError when it is
    not a regular file within its bound, not JSON, or not a JSON object."""
    path = Path(path)
    if path.is_dir():
        path = path / RUN_FILE
    try:
        raw = json.loads(read_run_file(path, "run record"))
    except (ValueError, RecursionError) as e:  # UnicodeDecodeError is a ValueError
        raise CheckpointError(f"{path} is not readable JSON ({e})") from None
    if not isinstance(raw, dict):
        raise CheckpointError(f"{path} must hold a JSON object, got {type(raw).__name__}")
    return RunRecord.from_dict(raw)


def read_record(path: Path) -> RunRecord:
    """A checkpoint's run.json, checked for what resuming relies on; CheckpointError if not."""
    record = read_run_record(path)
    wrong = record.problems()
    if wrong:
        raise CheckpointError(f"{path} is not a run record: {'; '.join(wrong)}")
    return record


# --- the train state: optimizer moments and RNG, as safetensors (no pickle) -----------------


def state_bytes(
    model: torch.nn.Module, optimizer: torch.optim.Optimizer, step: int, train_config: dict
) -> bytes:
    """Optimizer moments (by parameter name) and RNG state, as safetensors: no pickle."""
    names = {id(p): n for n, p in model.named_parameters()}
    tensors = {"rng.cpu": torch.get_rng_state()}
    for group in optimizer.param_groups:
        for p in group["params"]:
            st = optimizer.state.get(p, {})
            for key in ("exp_avg", "exp_avg_sq"):
                if key in st:
                    tensors[f"{key}.{names[id(p)]}"] = st[key].detach().cpu().contiguous()
            if "step" in st:
                step_t = torch.as_tensor(st["step"]).reshape(1).float()  # scalar -> [1]
                tensors[f"step.{names[id(p)]}"] = step_t
    meta = {"step": str(step), "train_config": json.dumps(train_config)}
    return save(tensors, metadata=meta)


def _read_state(path: Path, step: int, bad) -> dict[str, torch.Tensor]:
    """The tensors of a train state file, checked to be of ``step``."""
    try:
        data = read_file(path, MAX_STATE_BYTES, what="train state", error=CheckpointError)
        tensors = load(data)
        header = json.loads(data[8 : 8 + int.from_bytes(data[:8], "little")])
        saved_step = int(header.get("__metadata__", {})["step"])
    except CheckpointError as e:
        raise bad(str(e)) from None
    except (OSError, SafetensorError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise bad(f"not a readable train state ({type(e).__name__}: {e})") from None
    if saved_step != step:
        raise bad(f"it is the state of step {saved_step}, its checkpoint is of step {step}")
    rng = tensors.get("rng.cpu")
    if rng is None or rng.dtype != torch.uint8 or rng.ndim != 1:
        raise bad("the RNG state (rng.cpu, uint8) is missing or misshapen")
    return tensors


def load_state(
    path: Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    *,
    step: int,
    device: torch.device,
) -> None:
    """Restore what state_bytes wrote: ``optimizer``'s moments and the RNG state. CheckpointError
    naming ``path`` when anything is missing, misshapen or not for ``step``."""

    def bad(problem: str) -> CheckpointError:
        return CheckpointError(f"cannot resume from {path}: {problem}")

    tensors = _read_state(path, step, bad)
    state, used = {}, {"rng.cpu"}
    for name, p in model.named_parameters():
        keys = {k: f"{k}.{name}" for k in ("step", "exp_avg", "exp_avg_sq")}
        present = [k for k, key in keys.items() if key in tensors]
        if not present:
            continue  # a parameter the optimizer never stepped
        if len(present) != len(keys):
            missing = ", ".join(key for key in keys.values() if key not in tensors)
            raise bad(f"the optimizer moments are incomplete: {missing} missing")
        for k in ("exp_avg", "exp_avg_sq"):
            t = tensors[keys[k]]
            if t.shape != p.shape or not t.is_floating_point():
                raise bad(f"{keys[k]} is {tuple(t.shape)} {t.dtype}, expected {tuple(p.shape)}")
        if tensors[keys["step"]].shape != (1,):
            raise bad(f"{keys['step']} must hold one number")
        used.update(keys.values())
        state[p] = {
            "step": tensors[keys["step"]][0].clone(),
            "exp_avg": tensors[keys["exp_avg"]].to(device),
            "exp_avg_sq": tensors[keys["exp_avg_sq"]].to(device),
        }
    unknown = sorted(set(tensors) - used)
    if unknown:
        raise bad(f"unexpected tensors {', '.join(unknown[:5])}: a state of another model?")
    if not state and step > 0:
        raise bad("it holds no optimizer moments")
    if any(not torch.isfinite(t).all() for st in state.values() for t in st.values()):
        raise bad("it holds NaN or infinite optimizer moments")
    optimizer.state.update(state)
    torch.set_rng_state(tensors["rng.cpu"])


# --- checkpoints: a folder per checkpoint, complete once its manifest is written --------------


def checkpoint_step(folder: Path) -> int:
    """The step of a checkpoint folder ``step-NNNNNNNN``."""
    return int(folder.name.removeprefix("step-"))


def checkpoint_folders(out: Path) -> list[Path]:
    """The checkpoint folders of run folder ``out``, newest first (complete or not)."""
    root = out / CHECKPOINTS_DIR
    if not root.is_dir():
        return []
    found = [
        p
        for p in root.iterdir()
        if p.is_dir() and p.name.startswith("step-") and p.name[5:].isdigit()
    ]
    return sorted(found, key=checkpoint_step, reverse=True)


def checkpoint_problem(folder: Path) -> str | None:
    """None when ``folder`` is a complete checkpoint (its manifest there, every file it names
    intact), else what is wrong: the manifest is written last, so a crash leaves none."""
    path = folder / MANIFEST_FILE
    if not path.exists() and not path.is_symlink():
        return f"no {MANIFEST_FILE}: its writing was interrupted"
    try:
        manifest = json.loads(read_run_file(path, "manifest"))
    except CheckpointError as e:
        return str(e)
    except (ValueError, RecursionError) as e:
        return f"{path} is unreadable ({e})"
    if (
        not isinstance(manifest, dict)
        or manifest.get("format") != CHECKPOINT_FORMAT
        or manifest.get("step") != checkpoint_step(folder)
        or not isinstance(manifest.get("files"), dict)
        or set(manifest["files"]) != set(CHECKPOINT_FILES)
    ):
        return f"{path} is not a manifest of this checkpoint"
    for name, digest in manifest["files"].items():
        try:
            actual = hashlib.sha256(read_run_file(folder / name)).hexdigest()
        except CheckpointError as e:
            return str(e)
        if actual != digest:
            return f"{folder / name} does not match the SHA-256 in {MANIFEST_FILE}"
    return None


def find_checkpoint(out: Path, *, resume: bool, tell=None) -> Path | None:
    """The checkpoint a run in ``out`` starts from: the newest complete one with ``resume``
    (``tell``, when given, hears which incomplete ones it passed over), None for a fresh
    start. Refuses to start over a model, and to resume one that was not written by a
    resumable run (a shipped model folder has no checkpoints/)."""
    holds = [name for name in _MODEL_FILES if (out / name).exists()]
    if not resume:
        if holds:
            raise CheckpointError(
                f"{out} already holds a model or a run ({', '.join(holds)}): pass --resume to "
                "continue its run, or choose another --out"
            )
        return None
    passed = []
    for folder in checkpoint_folders(out):
        problem = checkpoint_problem(folder)
        if problem is None:
            if passed and tell is not None:
                tell(
                    f"resuming from {folder} (step {checkpoint_step(folder)}); passed over "
                    + "; ".join(passed)
                )
            return folder
        passed.append(f"{folder.name}: {problem}")
    if any(name in holds for name in (*PUBLISHED, STATE_FILE)):
        why = f" ({'; '.join(passed)})" if passed else ""
        raise CheckpointError(
            f"--resume: {out} holds a model but no complete training checkpoint "
            f"({CHECKPOINTS_DIR}/step-*/{MANIFEST_FILE}){why}: it was not written by a resumable "
            "run, and training would overwrite it; copy it elsewhere or choose another --out"
        )
    if passed and tell is not None:
        tell(f"no complete checkpoint in {out} ({'; '.join(passed)}): starting from step 0")
    return None


def finished_record(out: Path) -> RunRecord | None:
    """The record of the finished resumable run in ``out``: its run.json holds the final
    evaluation, at the step of its newest complete checkpoint (a model folder without one is
    refused as find_checkpoint refuses it); None when there is none, or it is not finished."""
    path = out / RUN_FILE
    if not path.exists() and not path.is_symlink():
        return None
    checkpoint = find_checkpoint(out, resume=True)
    if checkpoint is None:
        return None
    record = read_record(path)
    final = record.final
    if (
        not isinstance(final, dict)
        or final.get("step") != record.steps
        or record.steps != checkpoint_step(checkpoint)
    ):
        return None
    return record


def publish(out: Path, files: dict[str, bytes]) -> None:
    """Write the model folder's files in ``out``, each atomically: weights, config, record."""
    for name in PUBLISHED:
        write_atomic(out / name, files[name])


def write_checkpoint(out: Path, step: int, files: dict[str, bytes]) -> None:
    """``files`` (CHECKPOINT_FILES by name) as checkpoint folder ``step`` of ``out``, its
    manifest last; then the model beside it, then the older checkpoints go."""
    folder = out / CHECKPOINTS_DIR / f"step-{step:08d}"
    if folder.exists():  # an interrupted attempt at this step (complete ones are resumed from)
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    for name in CHECKPOINT_FILES:
        write_atomic(folder / name, files[name])
    manifest = {
        "format": CHECKPOINT_FORMAT,
        "step": step,
        "files": {name: hashlib.sha256(files[name]).hexdigest() for name in CHECKPOINT_FILES},
    }
    write_atomic(folder / MANIFEST_FILE, json_bytes(manifest))
    fsync_dir(folder.parent)
    publish(out, files)
    prune_checkpoints(out, keep=folder)


def recover(out: Path, checkpoint: Path) -> None:
    """Bring the model beside checkpoints/ up to ``checkpoint`` (it may lag by a crash) and
    remove every other checkpoint folder."""
    publish(out, {name: read_run_file(checkpoint / name) for name in PUBLISHED})
    prune_checkpoints(out, keep=checkpoint)


def prune_checkpoints(out: Path, *, keep: Path) -> None:
    """Remove every checkpoint folder but ``keep`` (older ones, and newer incomplete ones)."""
    for old in checkpoint_folders(out):
        if old != keep:
            shutil.rmtree(old, ignore_errors=True)
