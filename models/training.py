"""Training: AdamW with warm-up and cosine decay, gradient clipping, periodic evaluation,
checkpoints that resume exactly, and DDP over several GPUs. ``train`` reads top to bottom as
the loop it runs: set up the ranks, start (or resume) the run, wrap the model, then step,
log, evaluate and checkpoint until the schedule (or ``stop_at``) is reached.

What a run leaves on disk, and how it is resumed, is models/run_folder.py: the model folder,
run.json (``RunRecord``), the checkpoints and their manifests. A resumed run's record is an
uninterrupted run's (its history, and the last-100 window of its final numbers reaching back
before the checkpoint); ``--resume`` on a finished run leaves it alone (no second evaluation, its
record untouched).

The command line is tools/train.py (`python -m tools.train`).
"""

from __future__ import annotations

import math
import os
import platform
import shlex
import sys
import time
from contextlib import AbstractContextManager, nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
import torch.distributed as dist
from tqdm import tqdm

from kernels.layouts import image_layout_spec
from models.checkpoint import (
    CONFIG_FILE,
    CheckpointError,
    load_model,
    model_files,
    write_atomic,
)
from models.datasets import describe_source, load_images
from models.evaluation import device_name, evaluate_bpd
from models.model import ModelConfig, SparseTransformer, keep_attention_out_of_graphs
from models.run_folder import (
    RUN_FILE,
    STATE_FILE,
    RunRecord,
    checkpoint_step,
    find_checkpoint,
    finished_record,
    load_state,
    read_record,
    recover,
    say,
    state_bytes,
    write_checkpoint,
)
from models.tokens import images_to_tokens

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
    # and loss in float32), "fp32", or "auto" (bf16 on CUDA, fp32 on the CPU: also what a run
    # recorded without the setting trained with). bf16 works on a CPU but is slower there.
    dtype: str = "auto"
    # torch.compile the model (the attention call stays outside the graph, models/model.py);
    # pays off on a GPU, costs tens of seconds of compilation on a CPU
    compile: bool = False


CALIBRATION = (10, 60)  # steps [a, b) timed to turn a time budget (--minutes) into steps
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
    record: RunRecord  # what run.json holds: history, commands, wall time, data, device...
    step: int = 0  # optimizer steps taken
    saved_step: int | None = None  # the step of the newest complete checkpoint
    clock: float = field(default_factory=time.time)  # when record.wall_time_s was last added to

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


def load_tokens(data: str, geometry) -> tuple[torch.Tensor, torch.Tensor]:
    """The train and test images of ``data`` as tokens, uint8 [N, T] (one byte a token)."""
    return tuple(
        images_to_tokens(load_images(data, split, geometry), dtype=np.uint8)
        for split in ("train", "test")
    )


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
    by side (analysis/race.py) share one copy.

    Refuses (CheckpointError) to train over a model that is not a resumable run's, and to resume
    with settings other than the run's."""
    mconfig = model_config(cfg)
    checkpoint = find_checkpoint(out, resume=resume, tell=say if ranks.is_main else None)
    if checkpoint is not None:
        record = read_record(checkpoint / RUN_FILE)
        check_same_settings(cfg, record.train_config, out)
    train_tokens, test_tokens = tokens or load_tokens(cfg.data, mconfig.geometry)
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
        record=RunRecord(),
    )
    if checkpoint is not None:
        step = checkpoint_step(checkpoint)
        load_state(checkpoint / STATE_FILE, model, run.optimizer, step=step, device=ranks.device)
        run.step = run.saved_step = step
        run.record = record
        if ranks.is_main:  # the model beside checkpoints/ may lag the checkpoint by a crash
            recover(out, checkpoint)
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


@dataclass
class StepTimer:
    """Times a run's steps CALIBRATION[0] .. CALIBRATION[1] to turn a time budget into steps
    (--minutes here, a race's minutes in analysis/race.py). Call ``at(done, now)`` whenever
    ``done`` steps have been taken: the timing starts at the last call with CALIBRATION[0]
    done, and ends at CALIBRATION[1] done, or sooner with a ``deadline`` once it has taken a
    fifth of the time that was left when it began; that call returns the seconds a step took
    (every other call None)."""

    deadline: float | None = None
    start: float | None = None
    finished: bool = False

    def at(self, done: int, now: float) -> float | None:
        if self.finished:
            return None
        if done == CALIBRATION[0]:
            self.start = now
            return None
        if self.start is None or done < CALIBRATION[0]:
            return None
        soon = self.deadline is not None and now - self.start > (self.deadline - self.start) / 5
        if done != CALIBRATION[1] and not soon:
            return None
        self.finished = True
        return (now - self.start) / (done - CALIBRATION[0])


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
    return evaluate_bpd(
        run.model,
        run.test_tokens[:images],
        device=run.ranks.device,
        progress=images is None,
    )


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


def describe(run: Run, **data) -> None:
    """The record's account of the run at its step: settings, model, data (``data``'s keys
    between the source and the image counts) and machine; training and the race write it."""
    r, cfg = run.record, run.cfg
    r.train_config = asdict(cfg)
    r.model_config = run.model.config.to_dict()
    r.params = sum(p.numel() for p in run.model.parameters())
    r.data = {
        "source": cfg.data,
        **data,
        "train_images": len(run.train_tokens),
        "test_images": len(run.test_tokens),
    }
    r.steps = run.step
    r.images_seen = run.step * cfg.batch_size
    r.device = device_name(run.ranks.device)
    r.torch = torch.__version__
    r.python = platform.python_version()


def save_checkpoint(run: Run) -> None:
    """Weights, optimizer state and run.json as one checkpoint (models/run_folder.py):
    everything --resume needs to continue exactly."""
    if any(not torch.isfinite(p).all() for p in run.model.parameters()):
        raise TrainingDiverged(
            f"the weights hold NaN or infinite values at step {run.step}: training stopped "
            f"without saving them; {_kept(run)}"
        )
    run.record.wall_time_s += run.lap()
    describe(run)
    run.record.world_size = run.ranks.world
    files = model_files(run.model)
    files[STATE_FILE] = state_bytes(run.model, run.optimizer, run.step, asdict(run.cfg))
    files[RUN_FILE] = run.record.to_bytes()
    write_checkpoint(run.out, run.step, files)
    run.saved_step = run.step


def _kept(run: Run) -> str:
    if run.saved_step is None:
        return "no checkpoint had been saved yet"
    return f"{run.out} keeps its last good checkpoint (step {run.saved_step})"


class StepRecorder(Protocol):
    """What ``train`` tells of the run as it goes (analysis.timeline.TimelineRecorder)."""

    def begin(self, folder: Path, model: SparseTransformer, test: torch.Tensor, step: int) -> None:
        """Once the run is set up, at its first step (0, or the checkpoint's)."""

    def after_step(self, model: SparseTransformer, step: int, total: int, bpd: float) -> None:
        """After every optimizer step, with the step's training bits/dim."""


def train(
    cfg: TrainConfig,
    out: Path,
    *,
    resume: bool = False,
    stop_at: int | None = None,
    timeline: StepRecorder | None = None,
) -> RunRecord:
    """Run (or continue) a training run into ``out``; returns the run record.

    ``stop_at`` ends this process at that step with a checkpoint (the schedule still spans
    cfg.steps), so a long run can be done in pieces with ``resume``. ``timeline`` records
    attention snapshots at log-spaced steps beside the run (analysis/timeline.py; rank 0).
    """
    check_train_config(cfg)
    if stop_at is not None and (
        isinstance(stop_at, bool) or not isinstance(stop_at, int) or stop_at < 1
    ):
        raise ValueError(f"stop_at must be a step >= 1, got {stop_at!r}")
    if resume and (done := finished_run(cfg, out, stop_at)) is not None:
        return done  # nothing to train: the record and the model stay as they are
    ranks = setup_distributed()
    run = begin(cfg, out, ranks, resume=resume, stop_at=stop_at)
    if timeline is not None and ranks.is_main:
        timeline.begin(out, run.model, run.test_tokens, run.step)
    model, autocast = wrap_model(run)
    # --minutes: time the first steps of a fresh run, then fix cfg.steps before the warm-up
    # ends, so the schedule is that of a plain --steps run
    timer = StepTimer() if cfg.minutes is not None and run.step == 0 else None
    # closed however the loop ends, so an error is the last thing printed
    with tqdm(initial=run.step, total=cfg.steps, disable=not ranks.is_main) as bar:
        run.clock = time.time()
        while run.step < last_step(cfg, stop_at):
            loss = timed_step(run, model, autocast, timer, bar)
            log_step(run, loss, bar, last_step(cfg, stop_at))
            if timeline is not None and ranks.is_main:
                timeline.after_step(run.model, run.step, cfg.steps, loss / math.log(2))
            bar.update(1)
    if ranks.is_main and last_step(cfg, stop_at) == cfg.steps:
        finish(run)
    if ranks.world > 1:
        dist.barrier()
        dist.destroy_process_group()
    return run.record


def last_step(cfg: TrainConfig, stop_at: int | None) -> int:
    """The step this process trains to: the schedule's end, or ``stop_at`` before it."""
    return cfg.steps if stop_at is None else min(cfg.steps, stop_at)


def begin(cfg: TrainConfig, out: Path, ranks: Ranks, *, resume: bool, stop_at: int | None) -> Run:
    """The run this process trains (start_run), its command and data recorded."""
    out.mkdir(parents=True, exist_ok=True)  # every rank, before rank 0's first checkpoint
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    if cfg.batch_size % ranks.world:
        raise ValueError(f"batch size {cfg.batch_size} must be divisible by {ranks.world} ranks")
    run = start_run(cfg, out, ranks, resume=resume)
    facts = describe_source(cfg.data)  # the photos source: which photos each split holds
    if facts is not None:
        run.record.data_source = facts
    if stop_at is not None and run.step >= stop_at:
        raise ValueError(f"--stop-at {stop_at}: the run in {out} is already at step {run.step}")
    run.record.commands.append(shlex.join([Path(sys.argv[0]).name, *sys.argv[1:]]))
    return run


def wrap_model(run: Run) -> tuple[torch.nn.Module, AbstractContextManager]:
    """What the steps call, and the autocast they run under: run.model, under DDP over several
    ranks and compiled with --compile (the weights stay run.model's); --dtype's autocast."""
    cfg, ranks = run.cfg, run.ranks
    model = run.model
    if ranks.world > 1:
        ids = [ranks.device.index] if ranks.device.type == "cuda" else None
        model = torch.nn.parallel.DistributedDataParallel(run.model, device_ids=ids)
    run.record.precision = precision(cfg, ranks.device)
    if ranks.is_main and run.record.precision == "bf16" and ranks.device.type != "cuda":
        say("--dtype bf16 on the CPU: bf16 autocast works there, but is slower than fp32")
    if cfg.compile:  # compiled on the first step
        keep_attention_out_of_graphs()
        model = torch.compile(model)
    return model, autocast_for(cfg, ranks.device)


def timed_step(
    run: Run,
    model: torch.nn.Module,
    autocast: AbstractContextManager,
    timer: StepTimer | None,
    bar: tqdm,
) -> float:
    """One train_step (its loss in nats); with --minutes, its time counted, and cfg.steps set
    from the pace once the timing ends."""
    if timer is not None:
        timer.at(run.step, time.time())
    loss = train_step(run, model, autocast)
    if timer is not None and (seconds := timer.at(run.step, time.time())) is not None:
        run.cfg.steps = bar.total = steps_for_minutes(run, seconds)
    return loss


def log_step(run: Run, loss: float, bar: tqdm, last: int) -> None:
    """The step's history entry; a held-out evaluation and a checkpoint every eval_every
    steps and at the ``last``."""
    cfg = run.cfg
    bpd = loss / math.log(2)
    lr = lr_at(run.step - 1, cfg)
    bar.set_postfix(loss=f"{loss:.4f}", bpd=f"{bpd:.3f}", lr=f"{lr:.2e}")
    entry = {"step": run.step, "train_bpd": round(bpd, 5)}
    due = run.step % cfg.eval_every == 0 or run.step == last
    if due:
        entry["test_bpd"] = held_out_bpd(run, cfg.eval_images)
    run.record.history.append(entry)
    if due and run.ranks.is_main:
        # train bits/dim of the last 100 steps: a resumed run's window reaches back before its
        # checkpoint, the same numbers an uninterrupted run averages
        recent = run.record.train_bpds()[-100:]
        tqdm.write(
            f"step {run.step}: train {np.mean(recent):.4f} test "
            f"{entry['test_bpd']:.4f} bits/dim ({cfg.eval_images} images)"
        )
        save_checkpoint(run)


def finish(run: Run) -> None:
    """The final evaluation, on every test image, into the record and run.json."""
    recent = run.record.train_bpds()[-100:]
    run.record.final = {
        "step": run.cfg.steps,
        "train_bpd_last100": round(float(np.mean(recent)), 4) if recent else None,
        "test_bpd": round(held_out_bpd(run), 4),
        "test_images": len(run.test_tokens),
    }
    run.record.wall_time_s += run.lap()
    write_atomic(run.out / RUN_FILE, run.record.to_bytes())


def finished_run(cfg: TrainConfig, out: Path, stop_at: int | None = None) -> RunRecord | None:
    """The record of the finished run in ``out`` (models.run_folder.finished_record), checked
    against ``cfg`` (CheckpointError when the settings differ) and said to be left alone;
    None when there is none, or it is not finished."""
    done = finished_record(out)
    if done is None:
        return None
    check_same_settings(cfg, done.train_config, out)
    if stop_at is not None and done.steps >= stop_at:
        raise ValueError(f"--stop-at {stop_at}: the run in {out} is already at step {done.steps}")
    say(
        f"--resume: the run in {out} is finished (step {done.final['step']}, test "
        f"{done.final.get('test_bpd')} bits/dim): left alone"
    )
    return done
