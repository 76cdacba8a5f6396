"""Fuzz the upload path: random and mutated files through models.uploads.prepare_upload.

Every upload the app accepts goes through ``prepare_upload``; it must return a uint8 image of the
model's shape or raise ImageInputError with a message. Anything else (another exception, a wrong
shape) is a crash. This module generates files of many kinds (random bytes, bit-flipped,
truncated and spliced PNG/JPEG/GIF/WebP/BMP/TIFF/PPM in random modes and sizes, animated and
EXIF-rotated files, headers claiming gigapixels, SVG/HTML text), runs them all and prints a table::

    python -m tools.fuzz_uploads --cases 10000 --seed 0

The exit code is 1 if any case crashed (``--save-crashes DIR`` keeps those inputs), else 0.
The test suite runs a few hundred cases of the same generator (tests/test_uploads.py).
"""

from __future__ import annotations

import argparse
import io
import re
import struct
import sys
import time
import traceback
import warnings
import zlib
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np
from PIL import Image

from models.tokens import Geometry
from models.uploads import ImageInputError, prepare_upload
from tools.cli import Parser, check_output_dir, int_range, run_main
from tools.memory import current_rss, peak_rss, reset_peak_rss

FORMATS = ("PNG", "JPEG", "GIF", "WEBP", "BMP", "TIFF", "PPM")
MODES = ("1", "L", "LA", "P", "PA", "RGB", "RGBA", "CMYK", "I;16", "I", "F", "YCbCr")

# -----------------------------------------------------------------------------
# valid files of random kinds


def random_pixels(rng: np.random.Generator, mode: str, w: int, h: int) -> Image.Image:
    """An image of ``mode`` with smooth or noisy content (both matter to the encoders)."""
    if rng.random() < 0.5:
        base = rng.integers(0, 256, size=(h, w, 4), dtype=np.uint8)
    else:
        yy, xx = np.mgrid[0:h, 0:w]
        ramp = ((xx * 255 // max(w - 1, 1) + yy * 97) % 256).astype(np.uint8)
        base = np.stack([ramp, 255 - ramp, ramp // 2, np.full_like(ramp, 200)], axis=-1)
    if mode in ("I;16", "I", "F"):
        scale = {"I;16": 257, "I": int(rng.choice([1, 257, 70000])), "F": float(rng.random())}
        arr = base[:, :, 0].astype(np.float64) * scale[mode]
        dtype = {"I;16": np.uint16, "I": np.int32, "F": np.float32}[mode]
        return Image.fromarray(arr.astype(dtype))  # numpy dtype -> mode I;16, I or F
    rgba = Image.fromarray(base)  # [h, w, 4] uint8 -> RGBA
    if mode == "P":
        img = rgba.convert("RGB").convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
        if rng.random() < 0.5:
            img.info["transparency"] = int(rng.integers(0, 16))
        return img
    if mode == "PA":
        return rgba.convert("PA")
    return rgba.convert(mode)


def encode(img: Image.Image, fmt: str, **params: object) -> bytes:
    """Encode ``img`` as ``fmt``; when Pillow cannot (mode, options), retry in a mode the format
    stores and then without options. Only the generator's own failures are swallowed here."""
    mode = {"JPEG": "RGB", "GIF": "P", "WEBP": "RGBA", "PPM": "RGB"}.get(fmt, "RGB")
    plain = {k: v for k, v in params.items() if k in ("save_all", "append_images", "duration")}
    attempts = [(img, params), (img.convert(mode), params), (img.convert(mode), plain)]
    for image, kw in attempts:
        if "append_images" in kw and image.mode != img.mode:
            kw = {**kw, "append_images": [f.convert(mode) for f in kw["append_images"]]}
        buf = io.BytesIO()
        try:
            image.save(buf, fmt, **kw)
        except (OSError, ValueError, KeyError, TypeError, RuntimeError):
            continue
        return buf.getvalue()
    buf = io.BytesIO()
    img.convert("RGB").save(buf, "PNG")
    return buf.getvalue()


def exif_with_orientation(orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return exif.tobytes()


def random_valid_file(rng: np.random.Generator) -> tuple[str, bytes]:
    """A well-formed file: random format, mode, size; sometimes animated or EXIF-rotated."""
    fmt = str(rng.choice(FORMATS))
    mode = str(rng.choice(MODES))
    if rng.random() < 0.03:  # large enough for the JPEG draft and box-reduce paths
        w, h = (int(v) for v in rng.integers(200, 2500, size=2))
        mode = "RGB" if mode in ("I;16", "I", "F") else mode  # keep encoding quick
    elif rng.random() < 0.1:  # extreme aspect ratios and 1-pixel sides
        w, h = (
            (1, int(rng.integers(1, 3000)))
            if rng.random() < 0.5
            else (int(rng.integers(1, 3000)), 1)
        )
    else:
        w, h = (int(v) for v in rng.integers(1, 160, size=2))
    img = random_pixels(rng, mode, w, h)
    params: dict[str, object] = {}
    kind = f"valid {fmt} {mode}"
    if fmt in ("GIF", "WEBP", "PNG", "TIFF") and rng.random() < 0.2:
        frames = [random_pixels(rng, mode, w, h) for _ in range(int(rng.integers(1, 4)))]
        params = {"save_all": True, "append_images": frames}
        if fmt != "TIFF":
            params["duration"] = 50
        kind += " animated"
    if fmt in ("JPEG", "WEBP", "PNG", "TIFF") and rng.random() < 0.2:
        params["exif"] = exif_with_orientation(int(rng.integers(0, 10)))
        kind += " exif"
    if fmt == "JPEG" and rng.random() < 0.3:
        params["quality"] = int(rng.integers(1, 100))
        params["progressive"] = bool(rng.random() < 0.5)
    if fmt == "TIFF" and rng.random() < 0.3:
        params["compression"] = str(rng.choice(["tiff_lzw", "tiff_deflate", "packbits"]))
    return kind, encode(img, fmt, **params)


# -----------------------------------------------------------------------------
# hostile files


def png_chunk(tag: bytes, payload: bytes) -> bytes:
    return (
        struct.pack(">I", len(payload))
        + tag
        + payload
        + struct.pack(">I", zlib.crc32(tag + payload))
    )


def png_claiming(w: int, h: int, mode_byte: int = 0, depth: int = 8) -> bytes:
    """A small, valid-CRC PNG whose header claims w x h: the classic decompression bomb."""
    ihdr = struct.pack(">IIBBBBB", w, h, depth, mode_byte, 0, 0, 0)
    rows = zlib.compress(b"\x00" * 4096, 9)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", ihdr)
        + png_chunk(b"IDAT", rows)
        + png_chunk(b"IEND", b"")
    )


def gif_claiming(w: int, h: int) -> bytes:
    """A tiny GIF whose logical screen and first frame claim w x h."""
    img = Image.new("P", (4, 4))
    raw = bytearray(encode(img, "GIF"))
    struct.pack_into("<HH", raw, 6, w, h)  # logical screen
    pos = raw.index(b",")  # image descriptor: left, top, width, height
    struct.pack_into("<HH", raw, pos + 5, w, h)
    return bytes(raw)


def jpeg_claiming(w: int, h: int) -> bytes:
    """A small JPEG with its SOF0 frame size rewritten to w x h."""
    raw = bytearray(encode(Image.new("RGB", (16, 16), (90, 20, 200)), "JPEG"))
    pos = raw.index(b"\xff\xc0")
    struct.pack_into(">HH", raw, pos + 5, h, w)
    return bytes(raw)


def bmp_claiming(w: int, h: int) -> bytes:
    raw = bytearray(encode(Image.new("RGB", (4, 4)), "BMP"))
    struct.pack_into("<ii", raw, 18, w, h)
    return bytes(raw)


def bomb_file(rng: np.random.Generator) -> tuple[str, bytes]:
    """Headers claiming far more pixels than the file holds (or than memory could)."""
    side = int(rng.choice([6_000, 20_000, 65_535, 100_000, 1_000_000]))
    other = int(rng.choice([1, side, 2**31 - 1]))
    w, h = (side, other) if rng.random() < 0.5 else (other, side)
    kind = str(rng.choice(["PNG", "GIF", "JPEG", "BMP"]))
    if kind == "PNG":
        return "bomb PNG", png_claiming(w, h, int(rng.choice([0, 2, 6])), 8)
    if kind == "GIF":
        return "bomb GIF", gif_claiming(min(w, 65535), min(h, 65535))
    if kind == "JPEG":
        return "bomb JPEG", jpeg_claiming(min(w, 65535), min(h, 65535))
    return "bomb BMP", bmp_claiming(w, h)


# text files uploaded as images, by what they are
TEXTS = {
    "svg": b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg" width="10" height="10">'
    b'<rect width="10" height="10"/></svg>',
    "html": b"<!DOCTYPE html><html><body><img src=x onerror=alert(1)></body></html>",
    "svg with BOM and script": b"\xef\xbb\xbf  <svg><script>alert(1)</script></svg>",
    "eps": b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n",
    "gif signature and text": b"GIF89a" + b"A" * 10,
    "ppm as text": b"P3\n2 2\n255\n0 0 0 255 255 255 1 2 3 4 5 6\n",
    "ppm claiming 10 gigapixels": b"P6\n99999 99999\n255\n\x00\x00\x00",
}


def mutate(rng: np.random.Generator, raw: bytes) -> tuple[str, bytes]:
    """Damage a valid file: flip bits, truncate, splice, duplicate or zero a span."""
    data = bytearray(raw)
    how = str(rng.choice(["flip", "truncate", "splice", "duplicate", "zero", "header"]))
    if how == "flip" or (how == "header" and len(data) > 8):
        span = len(data) if how == "flip" else min(len(data), 64)
        for _ in range(int(rng.integers(1, 9))):
            i = int(rng.integers(0, span))
            data[i] ^= 1 << int(rng.integers(0, 8))
    elif how == "truncate":
        data = data[: int(rng.integers(0, max(len(data), 1)))]
    elif how == "splice" and len(data) > 2:
        i, j = sorted(int(v) for v in rng.integers(0, len(data), size=2))
        data[i:j] = rng.bytes(int(rng.integers(0, 64)))
    elif how == "duplicate" and len(data) > 2:
        i, j = sorted(int(v) for v in rng.integers(0, len(data), size=2))
        data[j:j] = data[i:j][:4096]
    elif how == "zero" and len(data) > 2:
        i = int(rng.integers(0, len(data)))
        data[i : i + int(rng.integers(1, 256))] = b"\x00" * len(data[i : i + 256][:255])
    return how, bytes(data)


MAGIC = (
    b"\x89PNG\r\n\x1a\n",
    b"\xff\xd8\xff",
    b"GIF89a",
    b"RIFF\x00\x01\x00\x00WEBPVP8 ",
    b"BM",
    b"II*\x00",
    b"MM\x00*",
    b"P5\n",
    b"",
)


def random_case(rng: np.random.Generator) -> tuple[str, bytes]:
    """One generated input and a short label of how it was made."""
    r = rng.random()
    if r < 0.10:
        return "random bytes", rng.bytes(int(rng.integers(0, 2048)))
    if r < 0.20:
        magic = MAGIC[int(rng.integers(0, len(MAGIC)))]
        return "magic + random", magic + rng.bytes(int(rng.integers(0, 2048)))
    if r < 0.25:
        return bomb_file(rng)
    if r < 0.28:
        return "text", list(TEXTS.values())[int(rng.integers(0, len(TEXTS)))]
    kind, raw = random_valid_file(rng)
    if r < 0.45:
        return kind, raw
    how, data = mutate(rng, raw)
    return f"{how} {kind.split()[1]}", data


# -----------------------------------------------------------------------------
# running


class Crash(NamedTuple):
    """An input that made prepare_upload fail other than by refusing it."""

    label: str  # how the input was made
    traceback: str
    data: bytes


@dataclass
class Report:
    """Counts and extremes of one fuzz run."""

    cases: int = 0
    converted: int = 0
    notes: Counter = field(default_factory=Counter)
    refused: Counter = field(default_factory=Counter)
    crashes: list[Crash] = field(default_factory=list)
    baseline_rss: int = 0
    peak_rss: int = 0
    max_case_growth: int = 0
    max_growth_label: str = ""
    slowest_s: float = 0.0
    slowest_label: str = ""
    wall_s: float = 0.0


def refusal_kind(message: str) -> str:
    """A refusal message without its specifics, so the table groups them."""
    return re.split(r" \(|: |; ", message, maxsplit=1)[0]


def check_upload(data: bytes, geometry: Geometry, fit: str = "crop") -> tuple[str, str]:
    """Run one input the way the app does: ("converted", notes), ("refused", message) or
    ("crash", traceback)."""
    try:
        out = prepare_upload(data, geometry, fit=fit, background=(0, 0, 0))
    except ImageInputError as e:
        return "refused", str(e)
    except Exception:  # noqa: BLE001 - anything else is exactly what the fuzzer looks for
        return "crash", traceback.format_exc()
    want = (geometry.height, geometry.width, geometry.channels)
    if out.image.dtype != np.uint8 or out.image.shape != want:
        return "crash", f"bad output {out.image.dtype} {out.image.shape}, expected uint8 {want}"
    return "converted", "; ".join(out.notes)


def run(
    cases: int,
    *,
    seed: int = 0,
    geometry: Geometry | None = None,
    progress: Callable[[int], None] | None = None,
) -> Report:
    """Generate and check ``cases`` inputs; deterministic for a given seed."""
    geometry = geometry or Geometry(28, 28, 1)
    rng = np.random.default_rng(seed)
    report = Report()
    check_upload(random_valid_file(rng)[1], geometry)  # warm up lazy imports before measuring
    can_reset = reset_peak_rss()
    report.baseline_rss = current_rss()
    start = time.perf_counter()
    for i in range(cases):
        label, data = random_case(rng)
        fit = "crop" if rng.random() < 0.7 else "letterbox"
        before = current_rss()
        if can_reset:
            reset_peak_rss()
        t0 = time.perf_counter()
        outcome, detail = check_upload(data, geometry, fit)
        dt = time.perf_counter() - t0
        peak = peak_rss()
        report.peak_rss = max(report.peak_rss, peak)
        if can_reset and peak - before > report.max_case_growth:
            report.max_case_growth, report.max_growth_label = peak - before, label
        if dt > report.slowest_s:
            report.slowest_s, report.slowest_label = dt, label
        report.cases += 1
        if outcome == "converted":
            report.converted += 1
            if detail:
                report.notes[refusal_kind(detail)] += 1
        elif outcome == "refused":
            report.refused[refusal_kind(detail)] += 1
        else:
            report.crashes.append(Crash(label, detail, data))
        if progress is not None:
            progress(i + 1)
    report.wall_s = time.perf_counter() - start
    return report


def format_report(report: Report) -> str:
    """The table printed by the CLI."""
    mb = 2**20
    rows = [
        ("cases", f"{report.cases}"),
        ("converted", f"{report.converted}"),
        ("refused", f"{sum(report.refused.values())}"),
    ]
    rows += [(f"  refused: {k}", f"{n}") for k, n in report.refused.most_common()]
    rows += [(f"  converted with note: {k}", f"{n}") for k, n in report.notes.most_common()]
    rows += [
        ("crashes", f"{len(report.crashes)}"),
        ("peak RSS while converting", f"{report.peak_rss / mb:.0f} MiB"),
        ("RSS at start", f"{report.baseline_rss / mb:.0f} MiB"),
        (
            "largest growth in one case",
            f"{report.max_case_growth / mb:.1f} MiB ({report.max_growth_label})",
        ),
        ("slowest case", f"{report.slowest_s * 1000:.0f} ms ({report.slowest_label})"),
        ("wall time", f"{report.wall_s:.1f} s"),
    ]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


MAX_SIDE = 1024  # the fitted image's side: far above any model here (28, 32)


def geometry_arg(text: str) -> Geometry:
    """An argparse type: HxWxC with sides 1..MAX_SIDE and C 1 or 3."""
    parts = text.lower().split("x")
    if len(parts) != 3 or not all(p.strip().isdigit() for p in parts):
        raise argparse.ArgumentTypeError(f"must look like 28x28x1, got {text!r}")
    h, w, c = (int(p) for p in parts)
    if not (1 <= h <= MAX_SIDE and 1 <= w <= MAX_SIDE) or c not in (1, 3):
        raise argparse.ArgumentTypeError(
            f"must be HxWx1 or HxWx3 with sides 1-{MAX_SIDE}, got {text}"
        )
    return Geometry(h, w, c)


def main(argv: list[str] | None = None) -> int:
    """The command line: bad input is one ``error:`` line and exit status 2 (tools/cli.py)."""
    return run_main(_main, argv)


def _main(argv: list[str] | None = None) -> int:
    parser = Parser(prog="python -m tools.fuzz_uploads", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--cases",
        type=int_range(1, 10_000_000),
        default=10_000,
        help="generated inputs, 1-10,000,000 (default 10000)",
    )
    parser.add_argument("--seed", type=int_range(0, 2**32 - 1), default=0)
    parser.add_argument(
        "--geometry",
        type=geometry_arg,
        default=Geometry(28, 28, 1),
        help="HxWxC the uploads are fitted to (default 28x28x1)",
    )
    parser.add_argument("--save-crashes", type=Path, help="write each crashing input here")
    args = parser.parse_args(argv)
    if args.save_crashes is not None:  # before the run: minutes of fuzzing are not lost to it
        check_output_dir(args.save_crashes, flag="--save-crashes")
    geometry = args.geometry
    # Pillow warns (e.g. "Corrupt EXIF data") on many damaged inputs; the table counts outcomes.
    warnings.simplefilter("ignore", UserWarning)

    def progress(i: int) -> None:
        if i % 1000 == 0:
            print(f"  {i} / {args.cases}", file=sys.stderr, flush=True)

    report = run(args.cases, seed=args.seed, geometry=geometry, progress=progress)
    print(format_report(report))
    for n, (label, tb, data) in enumerate(report.crashes):
        print(f"\ncrash {n} ({label}, {len(data)} bytes):\n{tb}", file=sys.stderr)
        if args.save_crashes:
            args.save_crashes.mkdir(parents=True, exist_ok=True)
            (args.save_crashes / f"crash{n:04d}.bin").write_bytes(data)
    return 1 if report.crashes else 0


if __name__ == "__main__":
    sys.exit(main())
