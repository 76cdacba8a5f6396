"""Training: AdamW with warm-up and cosine decay, gradient clipping, periodic evaluation,
checkpoints that resume exactly, and DDP over several GPUs.

A run folder is a loadable model folder (config.json, model.safetensors, run.json) plus
``checkpoints/step-NNNNNNNN/``: one folder per checkpoint holding the model's two files,
``train_state.safetensors`` (optimizer moments, RNG state), ``run.json`` and, written last,
``manifest.json`` naming every file with its SHA-256. A checkpoint is complete when its manifest
is there and every file matches it; ``--resume`` takes the newest complete one (saying which
incomplete ones it passed over), so a crash at any write loses at most the checkpoint being
written. Only then are the model files beside ``checkpoints/`` replaced (each atomically) and the
older checkpoints removed. A resumed run's record is an uninterrupted run's (its history, and the
last-100 window of its final numbers reaching back before the checkpoint); ``--resume`` on a
finished run leaves it alone (no second evaluation, its record untouched). Every file of a run
is read through models/files.py, each with its bound (FILE_LIMITS): a FIFO or a device there is
refused, never read.

The command line is tools/train.py (`python -m tools.train`).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import platform
import shlex
import shutil
import sys
import time
from contextlib import AbstractContextManager, nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from safetensors import SafetensorError
from safetensors.torch import load, save, save_file
from tqdm import tqdm

from kernels.layouts import image_layout_spec
from models.checkpoint import (
    CONFIG_FILE,
    MAX_CONFIG_BYTES,
    MAX_WEIGHTS_BYTES,
    WEIGHTS_FILE,
    CheckpointError,
    fsync_dir,
    load_model,
    model_files,
    write_atomic,
)
from models.datasets import describe_source, load_images
from models.evaluation import device_name, evaluate_bpd
from models.files import read_file
from models.model import ModelConfig, SparseTransformer, keep_attention_out_of_graphs
from models.timeline import TimelineRecorder
from models.tokens import images_to_tokens

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
# TrainConfig fields a resumed run may change: they touch neither the weights nor the schedule
RESUMABLE_CHANGES = ("threads",)


class TrainingDiverged(RuntimeError):
    """The loss or the gradients turned NaN or infinite: the run stops, its last good
    checkpoint stays as it was."""


@dataclass
class TrainConfig:
    preset: str = "fmnist-small"
    layout: str = "dense"  # dense | strided | fixed | any layout spec, e.g. "fixed(l=28, c=2)"
    data: str = "fashion-mnist"  # see models.datasets.load_images
    steps: int = 5000
    batch_size: int = 16  # global: split over DDP ranks
    lr: float = 1e-3
    min_lr_ratio: float = 0.1  # cosine decays to lr * min_lr_ratio
    warmup: int = 200
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    dropout: float | None = None  # None: the preset's
    # the image side (square), None: the preset's. Fashion-MNIST at a side that divides 28 is
    # downsampled by block means (models.datasets.downsample): 14 makes a 196-token image, about
    # 8x cheaper a step than 28 on a CPU (the Playground page's default)
    size: int | None = None
    eval_every: int = 500
    eval_images: int = 1000  # test images for periodic evaluation; the final one uses all
    seed: int = 0
    threads: int | None = None  # CPU threads for torch (None: torch's default)
    # a time budget instead of --steps: steps = minutes / (time of one step, measured on steps
    # CALIBRATION), fixed before the warm-up ends so the schedule is that of a plain --steps run
    # (run.json records the steps: --steps N repeats the run exactly)
    minutes: float | None = None
    # the recipe: "bf16" autocast (matrix products and attention in bfloat16; weights, optimizer
    # and loss in float32), "fp32", or "auto" (bf16 on CUDA, fp32 on the CPU: what runs did before
    # the setting existed). bf16 works on a CPU but is slower there than fp32.
    dtype: str = "auto"
    # torch.compile the model (the attention call stays outside the graph, models/model.py);
    # pays off on a GPU, costs tens of seconds of compilation on a CPU
    compile: bool = False


CALIBRATION = (10, 60)  # steps [a, b) timed to turn --minutes into --steps
DTYPES = ("auto", "bf16", "fp32")  # TrainConfig.dtype


def check_train_config(cfg: TrainConfig) -> None:
    """ValueError unless every setting is usable: counts positive, rates finite and in range.
    Checked before any data is read, so a NaN --grad-clip never trains a NaN model."""
    problems = []
    for name in ("steps", "batch_size", "eval_every", "eval_images"):
        v = getattr(cfg, name)
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            problems.append(f"{name} must be a whole number >= 1, got {v!r}")
    for name in ("warmup", "seed"):
        v = getattr(cfg, name)
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            problems.append(f"{name} must be a whole number >= 0, got {v!r}")
    ranges = {  # name: (low, high, low excluded)
        "lr": (0.0, 10.0, True),
        "min_lr_ratio": (0.0, 1.0, False),
        "weight_decay": (0.0, 10.0, False),
        "grad_clip": (0.0, math.inf, True),
        "dropout": (0.0, 0.99, False),
        "minutes": (0.0, math.inf, True),
    }
    for name, (lo, hi, open_lo) in ranges.items():
        v = getattr(cfg, name)
        if v is None and name in ("dropout", "minutes"):
            continue
        ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
        if not ok or not (v > lo if open_lo else v >= lo) or v > hi:
            where = f"{'(' if open_lo else '['}{lo:g}, {hi:g}]"
            problems.append(f"{name} must be a finite number in {where}, got {v!r}")
    if cfg.dtype not in DTYPES:
        problems.append(f"dtype must be one of {', '.join(DTYPES)}, got {cfg.dtype!r}")
    if not isinstance(cfg.compile, bool):
        problems.append(f"compile must be true or false, got {cfg.compile!r}")
    if cfg.size is not None and (
        isinstance(cfg.size, bool) or not isinstance(cfg.size, int) or not 1 <= cfg.size <= 256
    ):
        problems.append(f"size must be a whole number in 1..256 or unset, got {cfg.size!r}")
    if cfg.threads is not None and not (isinstance(cfg.threads, int) and cfg.threads >= 1):
        problems.append(f"threads must be >= 1, got {cfg.threads!r}")
    if cfg.minutes is not None and isinstance(cfg.warmup, int) and cfg.warmup < CALIBRATION[1]:
        problems.append(f"--minutes needs --warmup >= {CALIBRATION[1]} (the timed steps)")
    if problems:
        raise ValueError("; ".join(problems))


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warm-up to cfg.lr, then cosine decay to cfg.lr * cfg.min_lr_ratio."""
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    progress = min(1.0, (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup))
    floor = cfg.lr * cfg.min_lr_ratio
    return floor + 0.5 * (cfg.lr - floor) * (1 + math.cos(math.pi * progress))


def batch_indices(step: int, *, batch_size: int, n: int, seed: int) -> torch.Tensor:
    """The rows of global batch ``step`` in a dataset of ``n``: consecutive slices of one
    shuffle per epoch, a pure function of (seed, step)."""
    start = step * batch_size
    out = []
    while len(out) < batch_size:
        epoch, offset = divmod(start + len(out), n)
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100_003 + epoch))
        out.extend(perm[offset : offset + batch_size - len(out)].tolist())
    return torch.tensor(out)


def make_optimizer(model: SparseTransformer, cfg: TrainConfig) -> torch.optim.AdamW:
    # decay matrices and embeddings; never biases, LayerNorm gains or the start vector
    decay = [p for p in model.parameters() if p.dim() >= 2]
    rest = [p for p in model.parameters() if p.dim() < 2]
    groups = [
        {"params": decay, "weight_decay": cfg.weight_decay},
        {"params": rest, "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.95))


@dataclass(frozen=True)
class Ranks:
    """Where this process trains: its DDP rank, the number of ranks, and its device."""

    rank: int
    world: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        """Rank 0 alone prints, evaluates on the whole test split and writes checkpoints."""
        return self.rank == 0


def setup_distributed() -> Ranks:
    """This process's ranks; initialises the process group under torchrun."""
    if "WORLD_SIZE" not in os.environ or int(os.environ["WORLD_SIZE"]) == 1:
        return Ranks(0, 1, torch.device("cuda" if torch.cuda.is_available() else "cpu"))
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    dist.init_process_group(backend=backend)
    rank, world = dist.get_rank(), dist.get_world_size()
    if torch.cuda.is_available():
        local = int(os.environ.get("LOCAL_RANK", 0))
        torch.cuda.set_device(local)
        return Ranks(rank, world, torch.device("cuda", local))
    return Ranks(rank, world, torch.device("cpu"))


@dataclass
class Run:
    """A training run in progress: what every step changes, and what a checkpoint saves."""

    cfg: TrainConfig
    out: Path  # the run directory, a loadable model directory
    ranks: Ranks
    model: SparseTransformer
    optimizer: torch.optim.AdamW
    train_tokens: torch.Tensor  # uint8 [N, T]: one byte per token until a batch is cast
    test_tokens: torch.Tensor  # uint8 [M, T]
    record: dict  # what run.json holds: history, commands, wall time, data, device...
    step: int = 0  # optimizer steps taken
    saved_step: int | None = None  # the step of the newest complete checkpoint
    clock: float = field(default_factory=time.time)  # when record["wall_time_s"] was last added to

    def lap(self) -> float:
        """Seconds since the last lap (or the start), for the record's wall time."""
        now = time.time()
        seconds, self.clock = now - self.clock, now
        return seconds


def model_config(cfg: TrainConfig) -> ModelConfig:
    """The preset with cfg's dropout and image size, and cfg's layout read against one image
    row (so "strided" is strided(l=14) at --size 14)."""
    overrides: dict = {} if cfg.dropout is None else {"dropout": cfg.dropout}
    if cfg.size is not None:
        overrides |= {"height": cfg.size, "width": cfg.size}
    geometry = ModelConfig.from_name(cfg.preset, **overrides).geometry
    layout = image_layout_spec(cfg.layout, geometry.row_stride, geometry.n_tokens)
    return ModelConfig.from_name(cfg.preset, layout=layout, **overrides)


def start_run(
    cfg: TrainConfig,
    out: Path,
    ranks: Ranks,
    *,
    resume: bool,
    tokens: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> Run:
    """A fresh run, or with ``resume`` the one saved in ``out``'s newest complete checkpoint.
    ``tokens`` (train, test: uint8 [N, T]) are cfg.data's, already loaded: runs that race side
    by side (models/race.py) share one copy.

    Refuses (CheckpointError) to train over a model that is not a resumable run's, and to resume
    with settings other than the run's."""
    mconfig = model_config(cfg)
    checkpoint = find_checkpoint(out, resume=resume, say=_say if ranks.is_main else None)
    if checkpoint is not None:
        record = read_record(checkpoint / RUN_FILE)
        check_same_settings(cfg, record["train_config"], out)
    geometry = mconfig.geometry
    if tokens is None:
        train_images = load_images(cfg.data, "train", geometry)
        tokens = (
            images_to_tokens(train_images, dtype=np.uint8),
            images_to_tokens(load_images(cfg.data, "test", geometry), dtype=np.uint8),
        )
    train_tokens, test_tokens = tokens
    torch.manual_seed(cfg.seed)
    if checkpoint is not None:
        model = load_model(checkpoint, device=ranks.device).train()
        if model.config != mconfig:
            raise CheckpointError(
                f"{checkpoint / CONFIG_FILE} holds a different model than --preset/--layout ask for"
            )
    else:
        model = SparseTransformer(mconfig).to(ranks.device).train()
    run = Run(
        cfg=cfg,
        out=out,
        ranks=ranks,
        model=model,
        optimizer=make_optimizer(model, cfg),
        train_tokens=train_tokens,
        test_tokens=test_tokens,
        record={"history": [], "wall_time_s": 0.0, "commands": []},
    )
    if checkpoint is not None:
        load_state(run, checkpoint / STATE_FILE, step=checkpoint_step(checkpoint))
        run.record = record
        run.saved_step = run.step
        if ranks.is_main:  # the model beside checkpoints/ may lag the checkpoint by a crash
            publish(out, {name: read_run_file(checkpoint / name) for name in PUBLISHED})
            prune_checkpoints(out, keep=checkpoint)
    return run


def training_memory(config: ModelConfig, batch_size: int) -> int:
    """Bytes one model's training is estimated to need on a CPU in float32: weights, gradients
    and AdamW's two moments (16 bytes a parameter), and the activations one step keeps for its
    backward pass: per token and layer about 24 d floats (the MLP's 4 d hidden values and their
    GELU, q, k, v, the LayerNorms) and a third of a row of attention (H N / 3), and the
    logits with their gradient. Fitted to measured peaks (fmnist presets at 14 x 14 and
    28 x 28, batch 8 to 32): within 10 % of them at 14 x 14, up to 1.4x above them at 28 x 28."""
    params = sum(p.numel() for p in SparseTransformer(config).parameters())  # ms, a few MB
    n, d, h = config.block_size, config.n_embd, config.n_head
    activations = 4 * batch_size * n * (config.n_layer * (24 * d + h * n // 3) + 4 * 256)
    return 16 * params + activations


def precision(cfg: TrainConfig, device: torch.device) -> str:
    """What cfg.dtype means on ``device``: "bf16" or "fp32" ("auto": bf16 on CUDA only)."""
    if cfg.dtype == "auto":
        return "bf16" if device.type == "cuda" else "fp32"
    return cfg.dtype


def autocast_for(cfg: TrainConfig, device: torch.device) -> AbstractContextManager:
    """bf16 autocast on ``device`` for --dtype bf16 (and auto on CUDA), else nothing."""
    if precision(cfg, device) == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return nullcontext()


def train_step(run: Run, ddp_model: torch.nn.Module, autocast: AbstractContextManager) -> float:
    """One optimizer step on this rank's share of global batch ``run.step``; its mean loss in
    nats. ``.item()`` waits for the step to finish, so timing a step around this is fair."""
    cfg, ranks = run.cfg, run.ranks
    n = len(run.train_tokens)
    idx = batch_indices(run.step, batch_size=cfg.batch_size, n=n, seed=cfg.seed)
    x = run.train_tokens[idx[ranks.rank :: ranks.world]]  # uint8 [B / world, T]
    x = x.to(device=ranks.device, dtype=torch.long)
    for group in run.optimizer.param_groups:
        group["lr"] = lr_at(run.step, cfg)
    with autocast:
        logits = ddp_model(x)  # [B / world, T, 256]
    # [B / world * T, 256] against [B / world * T]; float: bf16 logits would round the loss
    loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1).float(), x.flatten())
    run.optimizer.zero_grad(set_to_none=True)
    loss.backward()  # under DDP, the gradients are averaged over the ranks here
    norm = torch.nn.utils.clip_grad_norm_(run.model.parameters(), cfg.grad_clip)
    value = loss.item()
    # the same on every rank (the gradients are averaged), so every rank stops here; the update
    # is never applied, and the last checkpoint stays the last good one
    if not (math.isfinite(value) and math.isfinite(norm.item())):
        raise TrainingDiverged(
            f"the loss is {value} and the gradient norm {norm.item()} at step {run.step + 1}: "
            f"training stopped; {_kept(run)}"
        )
    run.optimizer.step()
    run.step += 1
    return value


def steps_for_minutes(run: Run, seconds_per_step: float) -> int:
    """--minutes as a number of steps, at the slowest rank's pace (all ranks must agree)."""
    if run.ranks.world > 1:
        slowest = torch.tensor([seconds_per_step], device=run.ranks.device)
        dist.all_reduce(slowest, op=dist.ReduceOp.MAX)
        seconds_per_step = slowest.item()
    steps = max(CALIBRATION[1], int(run.cfg.minutes * 60 / seconds_per_step))
    if run.ranks.is_main:
        tqdm.write(f"{seconds_per_step * 1e3:.1f} ms/step: {steps} steps in {run.cfg.minutes} min")
    return steps


def held_out_bpd(run: Run, images: int | None = None) -> float:
    """Bits/dim of the first ``images`` test images (all of them when None)."""
    run.model.eval()
    bpd = evaluate_bpd(
        run.model,
        run.test_tokens[:images],
        device=run.ranks.device,
        progress=images is None,
    )
    run.model.train()
    return bpd


def state_bytes(run: Run) -> bytes:
    """Optimizer moments (by parameter name) and RNG state, as safetensors: no pickle."""
    names = {id(p): n for n, p in run.model.named_parameters()}
    tensors = {"rng.cpu": torch.get_rng_state()}
    for group in run.optimizer.param_groups:
        for p in group["params"]:
            st = run.optimizer.state.get(p, {})
            for key in ("exp_avg", "exp_avg_sq"):
                if key in st:
                    tensors[f"{key}.{names[id(p)]}"] = st[key].detach().cpu().contiguous()
            if "step" in st:
                step = torch.as_tensor(st["step"]).reshape(1).float()  # scalar -> [1]: safetensors
                tensors[f"step.{names[id(p)]}"] = step
    meta = {"step": str(run.step), "train_config": json.dumps(asdict(run.cfg))}
    return save(tensors, metadata=meta)


def load_state(run: Run, path: Path, *, step: int) -> None:
    """Restore what state_bytes wrote into ``run``: optimizer moments, RNG state and step.
    CheckpointError naming ``path`` when anything is missing, misshapen or not for ``step``."""

    def bad(problem: str) -> CheckpointError:
        return CheckpointError(f"cannot resume from {path}: {problem}")

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
    device = run.ranks.device
    state, used = {}, {"rng.cpu"}
    for name, p in run.model.named_parameters():
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
    run.optimizer.state.update(state)
    torch.set_rng_state(tensors["rng.cpu"])
    run.step = step


# --- checkpoints: a folder per checkpoint, complete once its manifest is written --------------

PUBLISHED = (WEIGHTS_FILE, CONFIG_FILE, RUN_FILE)  # copied beside checkpoints/: a model folder
CHECKPOINT_FILES = (*PUBLISHED, STATE_FILE)
FILE_LIMITS = {  # bytes each file of a checkpoint is read with, at most
    WEIGHTS_FILE: MAX_WEIGHTS_BYTES,
    CONFIG_FILE: MAX_CONFIG_BYTES,
    RUN_FILE: MAX_RECORD_BYTES,
    STATE_FILE: MAX_STATE_BYTES,
    MANIFEST_FILE: MAX_MANIFEST_BYTES,
}


def read_run_file(path: Path, what: str = "checkpoint file") -> bytes:
    """The bytes of one file of a run (a checkpoint's, the manifest, run.json) through
    models/files.py, bounded by FILE_LIMITS; CheckpointError naming the path otherwise."""
    return read_file(path, FILE_LIMITS[path.name], what=what, error=CheckpointError)


_MODEL_FILES = (*PUBLISHED, STATE_FILE, CHECKPOINTS_DIR)  # any of these: a folder holds a model


def _say(message: str) -> None:
    tqdm.write(message, file=sys.stderr)


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


def find_checkpoint(out: Path, *, resume: bool, say=None) -> Path | None:
    """The checkpoint a run in ``out`` starts from: the newest complete one with ``resume``,
    None for a fresh start. Refuses to start over a model, and to resume one that was not
    written by a resumable run (a shipped model folder has no checkpoints/)."""
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
            if passed and say is not None:
                say(
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
    if passed and say is not None:
        say(f"no complete checkpoint in {out} ({'; '.join(passed)}): starting from step 0")
    return None


def read_record(path: Path) -> dict:
    """A checkpoint's run.json, checked for what resuming relies on; CheckpointError if not."""
    data = read_run_file(path, "run record")
    try:
        record = json.loads(data)
    except (ValueError, RecursionError) as e:  # UnicodeDecodeError is a ValueError
        raise CheckpointError(f"{path} is not readable JSON ({e})") from None
    want = {
        "history": list,
        "commands": list,
        "wall_time_s": (int, float),
        "train_config": dict,
        "steps": int,
    }
    if not isinstance(record, dict):
        raise CheckpointError(f"{path} must hold a JSON object, got {type(record).__name__}")
    wrong = [
        f"{k} must be {t.__name__ if isinstance(t, type) else 'a number'}, got {record.get(k)!r}"
        for k, t in want.items()
        if not isinstance(record.get(k), t) or isinstance(record.get(k), bool)
    ]
    if not wrong and not all(
        isinstance(h, dict) and isinstance(h.get("step"), int) for h in record["history"]
    ):
        wrong.append("history must be a list of {step: ...} entries")
    if not wrong and not all(isinstance(c, str) for c in record["commands"]):
        wrong.append("commands must be a list of strings")
    if not wrong and not math.isfinite(record["wall_time_s"]):
        wrong.append("wall_time_s must be finite")
    if wrong:
        raise CheckpointError(f"{path} is not a run record: {'; '.join(wrong)}")
    return record


_DEFAULTS = asdict(TrainConfig())


def check_same_settings(cfg: TrainConfig, saved: dict, out: Path) -> None:
    """CheckpointError unless ``cfg`` asks for the run saved in ``out`` (only
    RESUMABLE_CHANGES may differ); with --minutes the saved --steps are the run's."""
    if cfg.minutes is not None and saved.get("minutes") == cfg.minutes:
        cfg.steps = saved.get("steps", cfg.steps)  # what the time budget was turned into
    now = asdict(cfg)
    changed = [
        f"--{k.replace('_', '-')} {now[k]} (the run has {saved.get(k)})"
        for k in now
        # a run saved before a setting existed trained with its default
        if k not in RESUMABLE_CHANGES and now[k] != saved.get(k, _DEFAULTS[k])
    ]
    if changed:
        raise CheckpointError(
            f"--resume: the run in {out} was trained with other settings; this command changes "
            f"{', '.join(changed)}. Resume with the run's settings, or start a new run"
        )


def publish(out: Path, files: dict[str, bytes]) -> None:
    """Replace the model files beside checkpoints/, each atomically: weights, config, record."""
    for name in PUBLISHED:
        write_atomic(out / name, files[name])


def save_checkpoint(run: Run) -> None:
    """Weights, optimizer state and run.json as one checkpoint folder, its manifest last; then
    the model beside it, then older checkpoints go. Everything --resume needs to continue
    exactly."""
    if any(not torch.isfinite(p).all() for p in run.model.parameters()):
        raise TrainingDiverged(
            f"the weights hold NaN or infinite values at step {run.step}: training stopped "
            f"without saving them; {_kept(run)}"
        )
    run.record["wall_time_s"] += run.lap()
    cfg = run.cfg
    run.record.update(
        {
            "train_config": asdict(cfg),
            "model_config": run.model.config.to_dict(),
            "params": sum(p.numel() for p in run.model.parameters()),
            "data": {
                "source": cfg.data,
                "train_images": len(run.train_tokens),
                "test_images": len(run.test_tokens),
            },
            "steps": run.step,
            "images_seen": run.step * cfg.batch_size,
            "device": device_name(run.ranks.device),
            "world_size": run.ranks.world,
            "torch": torch.__version__,
            "python": platform.python_version(),
        }
    )
    files = model_files(run.model)
    files[STATE_FILE] = state_bytes(run)
    files[RUN_FILE] = _record_bytes(run.record)
    folder = run.out / CHECKPOINTS_DIR / f"step-{run.step:08d}"
    if folder.exists():  # an interrupted attempt at this step (complete ones are resumed from)
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    for name in CHECKPOINT_FILES:
        write_atomic(folder / name, files[name])
    manifest = {
        "format": CHECKPOINT_FORMAT,
        "step": run.step,
        "files": {name: hashlib.sha256(files[name]).hexdigest() for name in CHECKPOINT_FILES},
    }
    write_atomic(folder / MANIFEST_FILE, (json.dumps(manifest, indent=1) + "\n").encode())
    fsync_dir(folder.parent)
    run.saved_step = run.step
    publish(run.out, files)
    prune_checkpoints(run.out, keep=folder)


def prune_checkpoints(out: Path, *, keep: Path) -> None:
    """Remove every checkpoint folder but ``keep`` (older ones, and newer incomplete ones)."""
    for old in checkpoint_folders(out):
        if old != keep:
            shutil.rmtree(old, ignore_errors=True)


def _kept(run: Run) -> str:
    if run.saved_step is None:
        return "no checkpoint had been saved yet"
    return f"{run.out} keeps its last good checkpoint (step {run.saved_step})"


def train(
    cfg: TrainConfig,
    out: Path,
    *,
    resume: bool = False,
    stop_at: int | None = None,
    save_all_ranks: bool = False,
    timeline: TimelineRecorder | None = None,
) -> dict:
    """Run (or continue) a training run into ``out``; returns the run record.

    ``stop_at`` ends this process at that step with a checkpoint (the schedule still spans
    cfg.steps), so a long run can be done in pieces with ``resume``. ``timeline`` records
    attention snapshots at log-spaced steps beside the run (models/timeline.py; rank 0).
    """
    check_train_config(cfg)
    if stop_at is not None and (
        isinstance(stop_at, bool) or not isinstance(stop_at, int) or stop_at < 1
    ):
        raise ValueError(f"stop_at must be a step >= 1, got {stop_at!r}")
    if resume:
        done = finished_run(cfg, out)
        if done is not None and stop_at is not None and done["steps"] >= stop_at:
            raise ValueError(
                f"--stop-at {stop_at}: the run in {out} is already at step {done['steps']}"
            )
        if done is not None:  # nothing to train: the record and the model stay as they are
            _say(
                f"--resume: the run in {out} is finished (step {done['final']['step']}, test "
                f"{done['final'].get('test_bpd')} bits/dim): left alone"
            )
            return done
    ranks = setup_distributed()
    # every rank may write here (--save-all-ranks), before rank 0's first checkpoint makes it
    out.mkdir(parents=True, exist_ok=True)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    if cfg.batch_size % ranks.world:
        raise ValueError(f"batch size {cfg.batch_size} must be divisible by {ranks.world} ranks")
    run = start_run(cfg, out, ranks, resume=resume)
    facts = describe_source(cfg.data)  # the photos source: which photos each split holds
    if facts is not None:
        run.record["data_source"] = facts
    if stop_at is not None and run.step >= stop_at:
        raise ValueError(f"--stop-at {stop_at}: the run in {out} is already at step {run.step}")
    if timeline is not None and ranks.is_main:
        timeline.begin(out, run.model, run.test_tokens, run.step)
    run.record["commands"].append(shlex.join([Path(sys.argv[0]).name, *sys.argv[1:]]))
    ddp_model = run.model
    if ranks.world > 1:
        ids = [ranks.device.index] if ranks.device.type == "cuda" else None
        ddp_model = torch.nn.parallel.DistributedDataParallel(run.model, device_ids=ids)
    on_cuda = ranks.device.type == "cuda"
    autocast = autocast_for(cfg, ranks.device)
    run.record["precision"] = precision(cfg, ranks.device)
    if ranks.is_main and run.record["precision"] == "bf16" and not on_cuda:
        _say("--dtype bf16 on the CPU: bf16 autocast works there, but is slower than fp32")
    if cfg.compile:  # compiled on the first step; the weights stay run.model's
        keep_attention_out_of_graphs()
        ddp_model = torch.compile(ddp_model)
    # --minutes: time steps CALIBRATION of a fresh run, then fix cfg.steps before the warm-up
    # ends, so the schedule is that of a plain --steps run
    calibrating = cfg.minutes is not None and run.step == 0

    def last_step() -> int:
        return cfg.steps if stop_at is None else min(cfg.steps, stop_at)

    # train bits/dim of the last 100 steps, as the history holds them: a resumed run's window
    # reaches back before its checkpoint, the same numbers an uninterrupted run averages
    recent = [h["train_bpd"] for h in run.record["history"] if "train_bpd" in h][-100:]
    # closed however the loop ends, so an error is the last thing printed
    with tqdm(initial=run.step, total=cfg.steps, disable=not ranks.is_main) as bar:
        run.clock = time.time()
        while run.step < last_step():
            if calibrating and run.step == CALIBRATION[0]:
                t_calibration = time.time()
            loss = train_step(run, ddp_model, autocast)
            bpd = loss / math.log(2)
            if calibrating and run.step == CALIBRATION[1]:
                seconds = (time.time() - t_calibration) / (CALIBRATION[1] - CALIBRATION[0])
                cfg.steps = bar.total = steps_for_minutes(run, seconds)
                calibrating = False
            recent = (recent + [round(bpd, 5)])[-100:]
            lr = lr_at(run.step - 1, cfg)
            bar.set_postfix(loss=f"{loss:.4f}", bpd=f"{bpd:.3f}", lr=f"{lr:.2e}")
            entry = {"step": run.step, "train_bpd": round(bpd, 5)}
            due = run.step % cfg.eval_every == 0 or run.step == last_step()
            if due:
                entry["test_bpd"] = held_out_bpd(run, cfg.eval_images)
            run.record["history"].append(entry)
            if due and ranks.is_main:
                tqdm.write(
                    f"step {run.step}: train {np.mean(recent):.4f} test "
                    f"{entry['test_bpd']:.4f} bits/dim ({cfg.eval_images} images)"
                )
                save_checkpoint(run)
            if timeline is not None and ranks.is_main:
                timeline.after_step(run.model, run.step, cfg.steps, bpd)
            bar.update(1)
    if save_all_ranks:
        save_file(
            {k: v.cpu().contiguous() for k, v in run.model.state_dict().items()},
            out / f"rank{ranks.rank}.safetensors",
        )

    if ranks.is_main and last_step() == cfg.steps:
        run.record["final"] = {
            "step": cfg.steps,
            "train_bpd_last100": round(float(np.mean(recent)), 4) if recent else None,
            "test_bpd": round(held_out_bpd(run), 4),
            "test_images": len(run.test_tokens),
        }
        run.record["wall_time_s"] += run.lap()
        write_atomic(out / RUN_FILE, _record_bytes(run.record))
    if ranks.world > 1:
        dist.barrier()
        dist.destroy_process_group()
    return run.record


def finished_run(cfg: TrainConfig, out: Path) -> dict | None:
    """The record of the finished resumable run in ``out``: its run.json holds the final
    evaluation, at the step of its newest complete checkpoint (a model folder without one is
    refused as find_checkpoint refuses it), checked against ``cfg`` (CheckpointError when the
    settings differ); None when there is none, or it is not finished."""
    path = out / RUN_FILE
    if not path.exists() and not path.is_symlink():
        return None
    checkpoint = find_checkpoint(out, resume=True)
    if checkpoint is None:
        return None
    record = read_record(path)
    final = record.get("final")
    if (
        not isinstance(final, dict)
        or final.get("step") != record["steps"]
        or record["steps"] != checkpoint_step(checkpoint)
    ):
        return None
    check_same_settings(cfg, record["train_config"], out)
    return record


def _record_bytes(record: dict) -> bytes:
    return (json.dumps(record, indent=1) + "\n").encode()
