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
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from kernels.layouts import image_layout_spec
from models.checkpoint import CheckpointError, load_model, save_model
from models.datasets import load_images
from models.evaluation import evaluate_bpd
from models.model import ModelConfig, SparseTransformer

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


def batch_indices(step: int, batch_size: int, n: int, seed: int) -> torch.Tensor:
    """The dataset rows of global batch ``step``: consecutive slices of one shuffle per epoch."""
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


def save_state(out: Path, model, optimizer, step: int, cfg: TrainConfig) -> None:
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
                tensors[f"step.{names[id(p)]}"] = torch.as_tensor(st["step"]).reshape(1).float()
    meta = {"step": str(step), "train_config": json.dumps(asdict(cfg))}
    tmp = out / (STATE_FILE + ".tmp")
    save_file(tensors, tmp, metadata=meta)
    tmp.replace(out / STATE_FILE)


def load_state(out: Path, model, optimizer) -> int:
    """Restore what save_state wrote; returns the step to continue from."""
    from safetensors import safe_open

    path = out / STATE_FILE
    try:
        with safe_open(path, framework="pt") as f:
            step = int(f.metadata()["step"])
        tensors = load_file(path)
    except Exception as e:  # any unreadable state file is reported the same way
        raise CheckpointError(f"cannot resume from {path}: {e}") from None
    device = next(model.parameters()).device
    for name, p in model.named_parameters():
        if f"exp_avg.{name}" not in tensors:
            continue
        optimizer.state[p] = {
            "step": tensors[f"step.{name}"][0].clone(),
            "exp_avg": tensors[f"exp_avg.{name}"].to(device),
            "exp_avg_sq": tensors[f"exp_avg_sq.{name}"].to(device),
        }
    torch.set_rng_state(tensors["rng.cpu"])
    return step


def setup_distributed() -> tuple[int, int, torch.device]:
    """(rank, world_size, device); initialises the process group under torchrun."""
    if "WORLD_SIZE" not in os.environ or int(os.environ["WORLD_SIZE"]) == 1:
        return 0, 1, torch.device("cuda" if torch.cuda.is_available() else "cpu")
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    dist.init_process_group(backend=backend)
    rank, world = dist.get_rank(), dist.get_world_size()
    if torch.cuda.is_available():
        local = int(os.environ.get("LOCAL_RANK", 0))
        torch.cuda.set_device(local)
        return rank, world, torch.device("cuda", local)
    return rank, world, torch.device("cpu")


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
    rank, world, device = setup_distributed()
    is_main = rank == 0
    # every rank may write here (--save-all-ranks), before rank 0's first checkpoint makes it
    out.mkdir(parents=True, exist_ok=True)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    if cfg.batch_size % world:
        raise ValueError(f"batch size {cfg.batch_size} must be divisible by {world} ranks")

    overrides = {} if cfg.dropout is None else {"dropout": cfg.dropout}
    base = ModelConfig.from_name(cfg.preset, **overrides)
    mconfig = ModelConfig.from_name(
        cfg.preset,
        layout=image_layout_spec(cfg.layout, base.row_stride, base.block_size),
        **overrides,
    )
    train_images = load_images(cfg.data, "train", mconfig.geometry)
    test_images = load_images(cfg.data, "test", mconfig.geometry)
    train_tokens = torch.from_numpy(train_images.reshape(len(train_images), -1))  # uint8 [N, T]
    test_tokens = torch.from_numpy(test_images.reshape(len(test_images), -1))

    torch.manual_seed(cfg.seed)
    run_path = out / RUN_FILE
    if resume and (out / STATE_FILE).exists():
        model = load_model(out, device=device).train()
        if model.config != mconfig:
            raise CheckpointError(f"{out} holds a different model than --preset/--layout ask for")
        optimizer = make_optimizer(model, cfg)
        start = load_state(out, model, optimizer)
        record = json.loads(run_path.read_text())
    else:
        model = SparseTransformer(mconfig).to(device).train()
        optimizer = make_optimizer(model, cfg)
        start = 0
        record = {"history": [], "wall_time_s": 0.0, "commands": []}
    record["commands"].append(shlex.join([Path(sys.argv[0]).name, *sys.argv[1:]]))
    ddp_model = model
    if world > 1:
        ids = [device.index] if device.type == "cuda" else None
        ddp_model = torch.nn.parallel.DistributedDataParallel(model, device_ids=ids)
    autocast = (
        torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext()
    )
    ln2 = math.log(2)
    t0 = time.time()
    recent: list[float] = []
    end = cfg.steps if stop_at is None else min(cfg.steps, stop_at)
    calibrating = cfg.minutes is not None and start == 0
    if calibrating and cfg.warmup < CALIBRATION[1]:
        raise ValueError(f"--minutes needs --warmup >= {CALIBRATION[1]} (the timed steps)")
    bar = tqdm(initial=start, total=cfg.steps, disable=not is_main)
    step = start
    while step < end:
        if calibrating and step == CALIBRATION[0]:
            t_calibration = time.time()
        idx = batch_indices(step, cfg.batch_size, len(train_tokens), cfg.seed)[rank::world]
        x = train_tokens[idx].to(device=device, dtype=torch.long)  # [B / world, T]
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, cfg)
        with autocast:
            logits = ddp_model(x)  # [B / world, T, 256]
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1).float(), x.flatten())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        optimizer.step()

        bpd = loss.item() / ln2  # .item() waits for the step: the calibration timing is fair
        if calibrating and step + 1 == CALIBRATION[1]:
            per_step = (time.time() - t_calibration) / (CALIBRATION[1] - CALIBRATION[0])
            if world > 1:  # every rank must pick the same number of steps: the slowest's
                slowest = torch.tensor([per_step], device=device)
                dist.all_reduce(slowest, op=dist.ReduceOp.MAX)
                per_step = slowest.item()
            cfg.steps = max(CALIBRATION[1], int(cfg.minutes * 60 / per_step))
            end = cfg.steps if stop_at is None else min(cfg.steps, stop_at)
            bar.total = cfg.steps
            calibrating = False
            if is_main:
                tqdm.write(f"{per_step * 1e3:.1f} ms/step: {cfg.steps} steps in {cfg.minutes} min")
        recent = (recent + [bpd])[-100:]
        bar.set_postfix(loss=f"{loss.item():.4f}", bpd=f"{bpd:.3f}", lr=f"{lr_at(step, cfg):.2e}")
        entry = {"step": step + 1, "train_bpd": round(bpd, 5)}
        done = step + 1 == end
        if (step + 1) % cfg.eval_every == 0 or done:
            model.eval()
            entry["test_bpd"] = evaluate_bpd(
                model, test_tokens[: cfg.eval_images], device=device, progress=False
            )
            model.train()
            if is_main:
                tqdm.write(
                    f"step {step + 1}: train {np.mean(recent):.4f} test "
                    f"{entry['test_bpd']:.4f} bits/dim ({cfg.eval_images} images)"
                )
        record["history"].append(entry)
        if is_main and ((step + 1) % cfg.eval_every == 0 or done):
            record["wall_time_s"] += time.time() - t0
            t0 = time.time()
            _checkpoint(
                out,
                model,
                optimizer,
                step + 1,
                cfg,
                record,
                mconfig,
                device,
                world,
                len(train_tokens),
                len(test_tokens),
            )
        step += 1
        bar.update(1)
    bar.close()
    if save_all_ranks:
        save_file(
            {k: v.cpu().contiguous() for k, v in model.state_dict().items()},
            out / f"rank{rank}.safetensors",
        )

    if is_main and end == cfg.steps:
        model.eval()
        full = evaluate_bpd(model, test_tokens, device=device, progress=True)
        record["final"] = {
            "step": cfg.steps,
            "train_bpd_last100": round(float(np.mean(recent)), 4) if recent else None,
            "test_bpd": round(full, 4),
            "test_images": len(test_tokens),
        }
        record["wall_time_s"] += time.time() - t0
        _write_record(out, record)
    if world > 1:
        dist.barrier()
        dist.destroy_process_group()
    return record


def _checkpoint(out, model, optimizer, step, cfg, record, mconfig, device, world, n_train, n_test):
    out.mkdir(parents=True, exist_ok=True)
    save_model(model, out)
    save_state(out, model, optimizer, step, cfg)
    record.update(
        {
            "train_config": asdict(cfg),
            "model_config": mconfig.to_dict(),
            "params": sum(p.numel() for p in model.parameters()),
            "data": {"source": cfg.data, "train_images": n_train, "test_images": n_test},
            "steps": step,
            "images_seen": step * cfg.batch_size,
            "device": _device_name(device),
            "world_size": world,
            "torch": torch.__version__,
            "python": platform.python_version(),
        }
    )
    _write_record(out, record)


def _write_record(out: Path, record: dict) -> None:
    tmp = out / (RUN_FILE + ".tmp")
    tmp.write_text(json.dumps(record, indent=1) + "\n")
    tmp.replace(out / RUN_FILE)


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"
