"""Complete an image from the command line: keep part of it, let a model sample the rest.

    python -m tools.complete photo.jpg --model assets/models/strided --keep-rows 14 \\
        --samples 8 --seed 0 --out grid.png

The photo is fitted to the model (``--fit crop`` or ``letterbox``, ``--background`` behind
transparency). Fashion-MNIST garments are light on black, so photos of dark things on white
want ``--invert``. Keep the top rows (``--keep-rows``, default half) or a rectangle
``--rect X0 Y0 X1 Y1`` in pixel coordinates (end exclusive). The grid written to ``--out`` shows
the input and what was kept, then the samples; the time per token step is printed. The work is
done by models/completion.py.

``--samples`` is bounded by an estimate of the memory sampling holds
(``models.sampling.max_samples``: at most 4 GiB and 1,024 samples; 411 for the shipped models,
54 for a 32x32x3 model of cifar-small's size); the app allows 1-16. Every argument and ``--out``
(its suffix, and that its folder can be written) are checked before the model is loaded.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from tools.cli import (
    Parser,
    UsageError,
    check_output_file,
    finite_float,
    int_range,
    non_negative_int,
    positive_int,
    run_main,
)

# what the grid can be written as (Pillow picks the writer by the suffix)
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")
MAX_TEMPERATURE = 100.0  # the app stops at 2; beyond ~10 every sample is noise


def parser() -> Parser:
    p = Parser(prog="python -m tools.complete", description=__doc__.split("\n")[0])
    p.add_argument("image", type=Path, help="any image file Pillow opens")
    p.add_argument("--model", type=Path, default=Path("assets/models/strided"))
    p.add_argument(
        "--keep-rows", type=non_negative_int, default=None, help="keep the top rows (default half)"
    )
    p.add_argument(
        "--rect", type=non_negative_int, nargs=4, metavar=("X0", "Y0", "X1", "Y1"), default=None
    )
    p.add_argument(
        "--samples",
        type=positive_int,
        default=4,
        help="at most what fits models.sampling.SAMPLING_MEMORY_BUDGET (4 GiB; 411 for the "
        "shipped models) and never more than 1,024",
    )
    p.add_argument("--temperature", type=finite_float(0.0, MAX_TEMPERATURE), default=1.0)
    p.add_argument("--top-k", type=int_range(1, 256), default=None)
    p.add_argument("--top-p", type=finite_float(0.0, 1.0, lo_open=True), default=None)
    p.add_argument("--seed", type=int_range(0, 2**63 - 1), default=0)
    p.add_argument("--fit", choices=("crop", "letterbox"), default="crop")
    p.add_argument("--invert", action="store_true", help="invert (dark-on-light photos)")
    p.add_argument(
        "--background",
        choices=("black", "white"),
        default="black",
        help="colour behind transparent pixels and letterbox bars",
    )
    p.add_argument("--out", type=Path, default=Path("completion.png"), help="a .png, .jpg, ...")
    return p


def main(argv: list[str] | None = None) -> int:
    """The command line: bad input is one ``error:`` line and exit status 2 (tools/cli.py)."""
    return run_main(run, argv)


def run(argv: list[str] | None = None) -> int:
    from models.checkpoint import load_config, load_model
    from models.completion import complete, hidden_view, keep_mask
    from models.sampling import SAMPLING_MEMORY_BUDGET, bytes_per_sample, max_samples
    from models.uploads import prepare_image, read_image_file
    from viz.grid import image_grid

    args = parser().parse_args(argv)
    # everything that can be checked is, before the model is loaded or a token sampled
    check_output_file(args.out, IMAGE_SUFFIXES)
    config = load_config(args.model)
    most = max_samples(config)
    if args.samples > most:
        raise UsageError(
            f"--samples {args.samples} is too many for this model: at most {most} "
            f"(about {bytes_per_sample(config) / 2**20:.1f} MiB each while sampling, within "
            f"{SAMPLING_MEMORY_BUDGET / 2**30:.0f} GiB)"
        )
    geometry = config.geometry
    keep = keep_mask(
        geometry, keep_rows=args.keep_rows, rect=tuple(args.rect) if args.rect else None
    )
    # a regular file of at most 20 MiB, checked before it is opened (a FIFO, /dev/zero refused)
    data = read_image_file(args.image)
    bg = (0, 0, 0) if args.background == "black" else (255, 255, 255)
    image = prepare_image(data, geometry, fit=args.fit, background=bg)
    if args.invert:
        image = 255 - image
    model = load_model(args.model)
    t = time.perf_counter()
    samples = complete(
        model,
        image,
        keep,
        n_samples=args.samples,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        seed=args.seed,
    )
    seconds = time.perf_counter() - t
    grid = image_grid(
        [("input / kept", [image, hidden_view(image, keep)]), ("samples", list(samples))]
    )
    save_image(grid, args.out)
    sampled = int((~keep).sum())
    print(
        f"{args.samples} samples of {sampled} tokens in {seconds:.2f} s "
        f"({1000 * seconds / max(sampled, 1):.2f} ms per token step) -> {args.out}"
    )
    return 0


def save_image(image, out: Path) -> None:
    """Write a PIL image whole or not at all (encoded in memory, then an atomic rename)."""
    import io

    from tools.cli import write_atomic

    buffer = io.BytesIO()
    fmt = {".jpg": "JPEG", ".jpeg": "JPEG", ".tif": "TIFF", ".tiff": "TIFF"}.get(
        out.suffix.lower(), out.suffix.lower().lstrip(".").upper()
    )
    image.save(buffer, format=fmt)
    write_atomic(out, buffer.getvalue())


if __name__ == "__main__":
    sys.exit(main())
