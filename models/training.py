"""Training: AdamW with warm-up and cosine decay, gradient clipping, periodic evaluation,
checkpoints that resume exactly, and DDP over several GPUs.

The command line is tools/train.py (`python -m tools.train`).
"""

from __future__ import annotations

import json
import math
import os
import platform
import shlex
import sys
import time
from contextlib import AbstractContextManager, nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from kernels.layouts import image_layout_spec
from models.checkpoint import CheckpointError, load_model, save_model
from models.datasets import load_images
from models.evaluation import device_name, evaluate_bpd
from models.model import ModelConfig, SparseTransformer
from models.tokens import images_to_tokens

STATE_FILE = "train_state.safetensors"
RUN_FILE = "run.json"


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
    eval_every: int = 500
    eval_images: int = 1000  # test images for periodic evaluation; the final one uses all
    seed: int = 0
    threads: int | None = None  # CPU threads for torch (None: torch's default)
    # a time budget instead of --steps: steps = minutes / (time of one step, measured on steps
    # CALIBRATION), fixed before the warm-up ends so the schedule is that of a plain --steps run
    # (run.json records the steps: --steps N repeats the run exactly)
    minutes: float | None = None


CALIBRATION = (10, 60)  # steps [a, b) timed to turn --minutes into --steps


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
    clock: float = field(default_factory=time.time)  # when record["wall_time_s"] was last added to

    def lap(self) -> float:
        """Seconds since the last lap (or the start), for the record's wall time."""
        now = time.time()
        seconds, self.clock = now - self.clock, now
        return seconds


def model_config(cfg: TrainConfig) -> ModelConfig:
    """The preset with cfg's dropout, and cfg's layout read against one image row."""
    overrides = {} if cfg.dropout is None else {"dropout": cfg.dropout}
    geometry = ModelConfig.from_name(cfg.preset, **overrides).geometry
    layout = image_layout_spec(cfg.layout, geometry.row_stride, geometry.n_tokens)
    return ModelConfig.from_name(cfg.preset, layout=layout, **overrides)


def start_run(cfg: TrainConfig, out: Path, ranks: Ranks, *, resume: bool) -> Run:
    """A fresh run, or with ``resume`` the one saved in ``out`` when there is one."""
    mconfig = model_config(cfg)
    geometry = mconfig.geometry
    train_tokens = images_to_tokens(load_images(cfg.data, "train", geometry), dtype=np.uint8)
    test_tokens = images_to_tokens(load_images(cfg.data, "test", geometry), dtype=np.uint8)
    torch.manual_seed(cfg.seed)
    resuming = resume and (out / STATE_FILE).exists()
    if resuming:
        model = load_model(out, device=ranks.device).train()
        if model.config != mconfig:
            raise CheckpointError(f"{out} holds a different model than --preset/--layout ask for")
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
    if resuming:
        load_state(run)
        run.record = json.loads((out / RUN_FILE).read_text())
    return run


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
    torch.nn.utils.clip_grad_norm_(run.model.parameters(), cfg.grad_clip)
    run.optimizer.step()
    run.step += 1
    return loss.item()


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


def save_state(run: Run) -> None:
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
    tmp = run.out / (STATE_FILE + ".tmp")
    save_file(tensors, tmp, metadata=meta)
    tmp.replace(run.out / STATE_FILE)


def load_state(run: Run) -> None:
    """Restore what save_state wrote into ``run``: optimizer moments, RNG state and step."""
    from safetensors import safe_open

    path = run.out / STATE_FILE
    try:
        with safe_open(path, framework="pt") as f:
            step = int(f.metadata()["step"])
        tensors = load_file(path)
    except Exception as e:  # any unreadable state file is reported the same way
        raise CheckpointError(f"cannot resume from {path}: {e}") from None
    device = run.ranks.device
    for name, p in run.model.named_parameters():
        if f"exp_avg.{name}" not in tensors:
            continue
        run.optimizer.state[p] = {
            "step": tensors[f"step.{name}"][0].clone(),
            "exp_avg": tensors[f"exp_avg.{name}"].to(device),
            "exp_avg_sq": tensors[f"exp_avg_sq.{name}"].to(device),
        }
    torch.set_rng_state(tensors["rng.cpu"])
    run.step = step


def save_checkpoint(run: Run) -> None:
    """Weights, optimizer state and run.json: everything --resume needs to continue exactly."""
    run.record["wall_time_s"] += run.lap()
    save_model(run.model, run.out)
    save_state(run)
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
    _write_record(run.out, run.record)


def train(
    cfg: TrainConfig,
    out: Path,
    *,
    resume: bool = False,
    stop_at: int | None = None,
    save_all_ranks: bool = False,
) -> dict:
    """Run (or continue) a training run into ``out``; returns the run record.

    ``stop_at`` ends this process at that step with a checkpoint (the schedule still spans
    cfg.steps), so a long run can be done in pieces with ``resume``.
    """
    ranks = setup_distributed()
    # every rank may write here (--save-all-ranks), before rank 0's first checkpoint makes it
    out.mkdir(parents=True, exist_ok=True)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    if cfg.batch_size % ranks.world:
        raise ValueError(f"batch size {cfg.batch_size} must be divisible by {ranks.world} ranks")
    run = start_run(cfg, out, ranks, resume=resume)
    run.record["commands"].append(shlex.join([Path(sys.argv[0]).name, *sys.argv[1:]]))
    ddp_model = run.model
    if ranks.world > 1:
        ids = [ranks.device.index] if ranks.device.type == "cuda" else None
        ddp_model = torch.nn.parallel.DistributedDataParallel(run.model, device_ids=ids)
    on_cuda = ranks.device.type == "cuda"
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if on_cuda else nullcontext()
    # --minutes: time steps CALIBRATION of a fresh run, then fix cfg.steps before the warm-up
    # ends, so the schedule is that of a plain --steps run
    calibrating = cfg.minutes is not None and run.step == 0
    if calibrating and cfg.warmup < CALIBRATION[1]:
        raise ValueError(f"--minutes needs --warmup >= {CALIBRATION[1]} (the timed steps)")

    def last_step() -> int:
        return cfg.steps if stop_at is None else min(cfg.steps, stop_at)

    recent: list[float] = []  # train bits/dim of the last 100 steps
    bar = tqdm(initial=run.step, total=cfg.steps, disable=not ranks.is_main)
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
        recent = (recent + [bpd])[-100:]
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
        bar.update(1)
    bar.close()
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
        _write_record(out, run.record)
    if ranks.world > 1:
        dist.barrier()
        dist.destroy_process_group()
    return run.record


def _write_record(out: Path, record: dict) -> None:
    tmp = out / (RUN_FILE + ".tmp")
    tmp.write_text(json.dumps(record, indent=1) + "\n")
    tmp.replace(out / RUN_FILE)
