"""Attention as it forms during training: small snapshots at log-spaced steps, beside the run.

At about POINTS log-spaced steps (and step 0, the initialisation) a run records, on a fixed set
of probe test images (spread over the test split, the same at every snapshot):

    rows        the attention of one probe pixel in every layer and head   [P, L, H, N]
    pooled      every head's map in row x row tiles, mean over the probes  [L, H, n, n]
    metrics     the per-head metrics of analysis/metrics.py (coverage of strided and fixed,
                entropy, k90, distance, same_row, same_col), mean over the probes   [L, H]
    types       each head's type from those metrics                       [L, H]
    bits/dim    of the probe images, and the training batch's at that step

Kilobytes, not weights: rows are stored as uint8 scaled to each row's maximum (the views scale
every map to its own maximum anyway) with the maxima in float32, pooled maps as float16, and
the file is compressed. They are written after every snapshot (atomically) as ``timeline.npz``
with ``timeline.json`` (what was recorded, and how) in the run folder; a resumed run keeps the
snapshots up to its checkpoint and records the rest.

The heads are measured with analysis.metrics (head_metrics) and typed with
analysis.learned.head_types, the rules every page uses.

The dependency runs one way: models/training.py calls a recorder (``begin``, ``after_step``);
this module knows nothing of a training run beyond what each call hands it (the folder, the
model, the test tokens, the step), so the Playground's race (analysis/race.py) records through
the same calls.
"""

from __future__ import annotations

import io
import json
import math
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from analysis.learned import head_types
from analysis.metrics import head_metrics
from kernels.layouts import image_layout_spec, parse_layout
from models.checkpoint import write_atomic
from models.files import read_file
from models.model import SparseTransformer, evaluating

TIMELINE_NPZ = "timeline.npz"
TIMELINE_JSON = "timeline.json"
FORMAT = "sparse-transformer-explorer/timeline/1"
POINTS = 16  # log-spaced snapshots in 1..steps (plus step 0)
QUERY_STRIDE = 7  # the metrics read every 7th query from the second row on (7 and 28 coprime)
METRICS = ("entropy", "k90", "distance", "same_row", "same_col")
COVERAGE = ("strided", "fixed")  # coverage of these image layouts, as coverage_<name>
# the most bytes the files are read with (models/files.py: a regular file of at most this size;
# a FIFO or a device is refused before it is opened); a shipped timeline has ~100 kB
MAX_TIMELINE_JSON = 4 * 2**20
MAX_TIMELINE_NPZ = 256 * 2**20
MAX_TIMELINE_ARRAYS = 2**30  # bytes of its arrays once decompressed


class TimelineError(ValueError):
    """A timeline file that cannot be read: named, with the problem."""


def timeline_steps(total: int, points: int = POINTS) -> list[int]:
    """Step 0 and about ``points`` log-spaced steps in 1..total (total always among them)."""
    if total < 1:
        return [0]
    spaced = np.unique(np.round(np.geomspace(1, total, max(points, 2))).astype(np.int64))
    return [0, *(int(s) for s in spaced)]


def probe_indices(n_test: int, count: int) -> np.ndarray:
    """``count`` test images spread evenly over a split of ``n_test``: int64 [count]."""
    if count < 1 or n_test < 1:
        raise ValueError(f"need at least one probe and one test image, got {count}, {n_test}")
    return np.unique(np.linspace(0, n_test - 1, min(count, n_test)).astype(np.int64))


@dataclass
class Timeline:
    """The snapshots of one run, as arrays (S snapshots, P probes, L layers, H heads)."""

    steps: np.ndarray  # int64 [S]
    train_bpd: np.ndarray  # float64 [S]: the training batch's at that step (NaN at step 0)
    probe_bpd: np.ndarray  # float64 [S]: the probe images'
    rows_u8: np.ndarray  # uint8 [S, P, L, H, N]: probe pixel's rows, scaled to rows_max
    rows_max: np.ndarray  # float32 [S, P, L, H]
    pooled: np.ndarray  # float16 [S, L, H, n, n]
    metrics: dict[str, np.ndarray]  # each float32 [S, L, H]
    types: np.ndarray  # int8 [S, L, H]: indices into meta["head_types"]
    probes: np.ndarray  # uint8 [P, N]: the probe images' tokens
    meta: dict = field(default_factory=dict)

    @property
    def rows(self) -> np.ndarray:
        """The probe pixel's attention rows, float32 [S, P, L, H, N] (to 1/255 of each max)."""
        return self.rows_u8.astype(np.float32) / 255.0 * self.rows_max[..., None]

    def keep_until(self, step: int) -> Timeline:
        """The snapshots at steps <= ``step`` (what a resumed run starts from)."""
        k = self.steps <= step
        return Timeline(
            self.steps[k],
            self.train_bpd[k],
            self.probe_bpd[k],
            self.rows_u8[k],
            self.rows_max[k],
            self.pooled[k],
            {n: v[k] for n, v in self.metrics.items()},
            self.types[k],
            self.probes,
            dict(self.meta),
        )

    def arrays(self) -> dict[str, np.ndarray]:
        out = {
            "steps": self.steps,
            "train_bpd": self.train_bpd,
            "probe_bpd": self.probe_bpd,
            "rows_u8": self.rows_u8,
            "rows_max": self.rows_max,
            "pooled": self.pooled,
            "types": self.types,
            "probes": self.probes,
        }
        return out | {f"metric_{n}": v for n, v in self.metrics.items()}


def load_npz(
    data: bytes, path: Path, max_arrays: int, error: type[ValueError], what: str = ".npz"
) -> dict[str, np.ndarray]:
    """The arrays of an .npz file's ``data`` (no pickles), refused (``error``) when they would
    decompress to more than ``max_arrays`` bytes: the sizes in the zip directory are checked
    before anything is inflated, and each member is read at most its stated size."""
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            total = sum(info.file_size for info in zf.infolist())
            if total > max_arrays:
                raise error(
                    f"{path} holds {total:,} bytes of arrays, more than the {max_arrays:,} "
                    "this reader accepts"
                )
            with np.load(io.BytesIO(data), allow_pickle=False) as z:
                return {k: z[k] for k in z.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, KeyError) as e:
        if isinstance(e, error):
            raise
        raise error(f"{path} is not a readable {what} ({type(e).__name__}: {e})") from None


def load_timeline(folder: str | Path) -> Timeline | None:
    """The timeline recorded in run folder ``folder``, or None when it has none;
    TimelineError when its files are there but unreadable, not regular files (a FIFO, a
    device), too large or inconsistent. Both are read through models/files.py, bounded."""
    folder = Path(folder)
    npz, meta_path = folder / TIMELINE_NPZ, folder / TIMELINE_JSON
    if not npz.exists() and not npz.is_symlink():
        return None
    data = load_npz(
        read_file(npz, MAX_TIMELINE_NPZ, what="timeline", error=TimelineError),
        npz,
        MAX_TIMELINE_ARRAYS,
        TimelineError,
        "timeline",
    )
    meta = {}
    if meta_path.exists() or meta_path.is_symlink():
        raw = read_file(meta_path, MAX_TIMELINE_JSON, what="timeline", error=TimelineError)
        try:
            meta = json.loads(raw)
        except (ValueError, RecursionError) as e:
            raise TimelineError(f"{meta_path} is not readable JSON ({e})") from None
    need = ("steps", "train_bpd", "probe_bpd", "rows_u8", "rows_max", "pooled", "types", "probes")
    missing = [k for k in need if k not in data]
    if missing:
        raise TimelineError(f"{npz} lacks {', '.join(missing)}: not a timeline")
    s = len(data["steps"])
    if any(len(data[k]) != s for k in need if k != "probes") or data["rows_u8"].ndim != 5:
        raise TimelineError(f"{npz}: its arrays disagree on the number of snapshots")
    metrics = {k.removeprefix("metric_"): v for k, v in data.items() if k.startswith("metric_")}
    return Timeline(
        steps=data["steps"].astype(np.int64),
        train_bpd=data["train_bpd"].astype(np.float64),
        probe_bpd=data["probe_bpd"].astype(np.float64),
        rows_u8=data["rows_u8"],
        rows_max=data["rows_max"],
        pooled=data["pooled"],
        metrics=metrics,
        types=data["types"],
        probes=data["probes"],
        meta=meta if isinstance(meta, dict) else {},
    )


def save_timeline(folder: str | Path, timeline: Timeline) -> None:
    """timeline.npz (compressed), then timeline.json, each written atomically."""
    folder = Path(folder)
    buf = io.BytesIO()
    np.savez_compressed(buf, **timeline.arrays())
    write_atomic(folder / TIMELINE_NPZ, buf.getvalue())
    meta = timeline.meta | {"steps": [int(s) for s in timeline.steps]}
    write_atomic(folder / TIMELINE_JSON, (json.dumps(meta, indent=1) + "\n").encode())


@torch.no_grad()
def snapshot(
    model: SparseTransformer,
    probes: torch.Tensor,
    *,
    pixel_token: int,
    query_stride: int = QUERY_STRIDE,
) -> dict:
    """One snapshot of ``model`` on probe tokens [P, N]: a dict of arrays for one step
    (rows [P, L, H, N] float32, pooled [L, H, n, n], metrics {name: [L, H]}, types [L, H] str,
    probe_bpd). Runs in eval mode (no dropout, so no random numbers are drawn) and restores
    the model's mode."""
    config = model.config
    geometry = config.geometry
    n = geometry.n_tokens
    with evaluating(model):
        device = next(model.parameters()).device
        tokens = probes.to(device=device, dtype=torch.long)  # [P, N]
        queries = np.arange(geometry.row_stride, n, query_stride, dtype=np.int64)
        asked = np.unique(np.append(queries, pixel_token))
        rows = model.capture(tokens, form="rows", queries=torch.from_numpy(asked))
        pooled = model.capture(tokens, form="pooled", block=geometry.row_stride)
        logits = model(tokens)  # [P, N, 256]
        nll = torch.nn.functional.cross_entropy(logits.flatten(0, 1).float(), tokens.flatten())
    at = {int(q): k for k, q in enumerate(asked)}
    pick = [at[int(q)] for q in queries]
    heads = list(range(config.n_head))
    layouts = {
        name: parse_layout(image_layout_spec(name, geometry.row_stride, n)) for name in COVERAGE
    }
    out_rows, metrics, types = [], {}, []
    for layer in range(config.n_layer):
        probs = rows[layer].probs.float().cpu().numpy()  # [P, H, Q', N]
        out_rows.append(probs[:, :, at[pixel_token]])  # [P, H, N]
        q_probs = probs[:, :, pick]  # [P, H, Q, N]
        per = {}
        for k, (name, layout) in enumerate(layouts.items()):
            m = head_metrics(q_probs, queries, geometry, layout, heads)  # each [P, H]
            per[f"coverage_{name}"] = m["coverage"].mean(0)
            if k == 0:
                per.update({name_: m[name_].mean(0) for name_ in METRICS})
        for name, v in per.items():
            metrics.setdefault(name, []).append(v)
        types.append(head_types(per))
    return {
        "rows": np.stack(out_rows, axis=1),  # [P, L, H, N]
        "pooled": np.stack(
            [pooled[i].mean.float().mean(0).cpu().numpy() for i in range(config.n_layer)]
        ),  # [L, H, n, n]
        "metrics": {k: np.stack(v).astype(np.float32) for k, v in metrics.items()},
        "types": types,
        "probe_bpd": float(nll) / math.log(2),
    }


class TimelineRecorder:
    """Records a run's timeline: models.training.train calls ``begin(...)`` once the run is
    set up and ``after_step(...)`` after every optimizer step (rank 0 only); the Playground's
    race calls ``record`` at the steps it chooses."""

    def __init__(
        self,
        probes: int,
        *,
        points: int = POINTS,
        pixel: tuple[int, int] | None = None,
        query_stride: int = QUERY_STRIDE,
    ) -> None:
        if isinstance(probes, bool) or not isinstance(probes, int) or probes < 1:
            raise ValueError(f"timeline probes must be a whole number >= 1, got {probes!r}")
        if points < 1:
            raise ValueError(f"timeline points must be >= 1, got {points}")
        self.count = probes
        self.points = points
        self.pixel = pixel
        self.query_stride = query_stride
        self.timeline: Timeline | None = None
        self.folder: Path | None = None
        self.probes: torch.Tensor | None = None
        self.indices: np.ndarray | None = None

    def begin(
        self, folder: str | Path, model: SparseTransformer, test_tokens: torch.Tensor, step: int
    ) -> None:
        """Pick the probes among ``test_tokens`` [M, N], keep the snapshots of a run resumed
        at ``step`` in ``folder`` up to that step, and record step 0 of a fresh one."""
        self.folder = Path(folder)
        geometry = model.config.geometry
        if self.pixel is None:
            self.pixel = (geometry.height // 2, geometry.width // 2)
        self.indices = probe_indices(len(test_tokens), self.count)
        self.probes = test_tokens[torch.from_numpy(self.indices)]  # uint8 [P, N]
        try:
            old = load_timeline(self.folder)
        except TimelineError:
            old = None  # a broken file from an interrupted write: start over
        if old is not None and old.probes.shape == tuple(self.probes.shape):
            self.timeline = old.keep_until(step)
        if step == 0 and (self.timeline is None or 0 not in self.timeline.steps):
            self.record(model, 0, float("nan"))

    def due(self, step: int, total: int) -> bool:
        """Whether ``step`` of a run of ``total`` steps is one of the log-spaced snapshots."""
        return step in timeline_steps(total, self.points)

    def after_step(self, model: SparseTransformer, step: int, total: int, train_bpd: float) -> None:
        if self.due(step, total):
            self.record(model, step, train_bpd)

    def record(self, model: SparseTransformer, step: int, train_bpd: float) -> None:
        """Take one snapshot and write the timeline with it."""
        geometry = model.config.geometry
        row, col = self.pixel
        pixel_token = (row * geometry.width + col) * geometry.channels
        snap = snapshot(
            model,
            self.probes,
            pixel_token=pixel_token,
            query_stride=self.query_stride,
        )
        rows = snap["rows"]  # [P, L, H, N]
        peak = rows.max(-1).astype(np.float32)  # [P, L, H]
        scaled = rows / np.where(peak > 0, peak, 1.0)[..., None]
        rows_u8 = np.round(np.clip(scaled, 0, 1) * 255).astype(np.uint8)
        old = self.timeline
        names = list(old.meta.get("head_types", [])) if old is not None else []
        for t in (t for layer in snap["types"] for t in layer):
            if t not in names:
                names.append(t)
        codes = np.array([[names.index(t) for t in layer] for layer in snap["types"]], np.int8)
        new = {
            "steps": np.array([step], np.int64),
            "train_bpd": np.array([train_bpd], np.float64),
            "probe_bpd": np.array([snap["probe_bpd"]], np.float64),
            "rows_u8": rows_u8[None],
            "rows_max": peak[None],
            "pooled": snap["pooled"].astype(np.float16)[None],
            "types": codes[None],
        }
        metrics = {k: v[None] for k, v in snap["metrics"].items()}
        if old is not None:
            keep = old.steps != step
            old_arrays = {k: v for k, v in old.arrays().items() if k in new}
            new = {k: np.concatenate([old_arrays[k][keep], v]) for k, v in new.items()}
            metrics = {
                k: np.concatenate([old.metrics[k][keep], v]) if k in old.metrics else v
                for k, v in metrics.items()
            }
        order = np.argsort(new["steps"], kind="stable")
        new = {k: v[order] for k, v in new.items()}
        metrics = {k: v[order] for k, v in metrics.items()}
        config = model.config
        meta = {
            "format": FORMAT,
            "probe_pixel": [row, col],
            "probe_token": pixel_token,
            "probe_images": [int(i) for i in self.indices],
            "points": self.points,
            "query_stride": self.query_stride,
            "pool_block": geometry.row_stride,
            "coverage_of": {
                name: image_layout_spec(name, geometry.row_stride, geometry.n_tokens)
                for name in COVERAGE
            },
            "metrics": sorted(metrics),
            "head_types": names,
            "n_layer": config.n_layer,
            "n_head": config.n_head,
            "geometry": list(geometry),
            "layouts": [repr(layout) for layout in model.layouts],
        }
        self.timeline = Timeline(
            steps=new["steps"],
            train_bpd=new["train_bpd"],
            probe_bpd=new["probe_bpd"],
            rows_u8=new["rows_u8"],
            rows_max=new["rows_max"],
            pooled=new["pooled"],
            metrics=metrics,
            types=new["types"],
            probes=self.probes.numpy().astype(np.uint8),
            meta=meta,
        )
        save_timeline(self.folder, self.timeline)
