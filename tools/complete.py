"""Complete an image from the command line: keep part of it, let a model sample the rest.

    python -m tools.complete photo.jpg --model assets/models/strided --keep-rows 14 \\
        --samples 8 --seed 0 --out grid.png

The photo is fitted to the model (``--fit crop`` or ``letterbox``, ``--background`` behind
transparency). Fashion-MNIST garments are light on black, so photos of dark things on white
want ``--invert``. Keep the top rows (``--keep-rows``, default half) or a rectangle
``--rect X0 Y0 X1 Y1`` in pixel coordinates (end exclusive). The grid written to ``--out`` shows
the input and what was kept, then the samples; the time per token step is printed. The work is
done by models/completion.py.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from models.checkpoint import CheckpointError, load_model
from models.completion import complete, hidden_view, keep_mask
from models.uploads import ImageInputError, prepare_image
from viz.grid import image_grid


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tools.complete", description=__doc__.split("\n")[0])
    p.add_argument("image", type=Path, help="any image file Pillow opens")
    p.add_argument("--model", type=Path, default=Path("assets/models/strided"))
    p.add_argument("--keep-rows", type=int, default=None, help="keep the top rows (default half)")
    p.add_argument("--rect", type=int, nargs=4, metavar=("X0", "Y0", "X1", "Y1"), default=None)
    p.add_argument("--samples", type=int, default=4)
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--top-k", type=int, default=None)
    p.add_argument("--top-p", type=float, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--fit", choices=("crop", "letterbox"), default="crop")
    p.add_argument("--invert", action="store_true", help="invert (dark-on-light photos)")
    p.add_argument(
        "--background",
        choices=("black", "white"),
        default="black",
        help="colour behind transparent pixels and letterbox bars",
    )
    p.add_argument("--out", type=Path, default=Path("completion.png"))
    args = p.parse_args(argv)
    try:
        if args.samples < 1:
            raise ValueError("--samples must be >= 1")
        model = load_model(args.model)
        geometry = model.config.geometry
        keep = keep_mask(
            geometry, keep_rows=args.keep_rows, rect=tuple(args.rect) if args.rect else None
        )
        try:
            data = args.image.read_bytes()
        except OSError as e:
            raise ImageInputError(f"cannot read {args.image}: {e.strerror or e}") from None
        bg = (0, 0, 0) if args.background == "black" else (255, 255, 255)
        image = prepare_image(data, geometry, fit=args.fit, background=bg)
        if args.invert:
            image = 255 - image
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
    except (CheckpointError, ImageInputError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    grid = image_grid(
        [("input / kept", [image, hidden_view(image, keep)]), ("samples", list(samples))]
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    grid.save(args.out)
    sampled = int((~keep).sum())
    print(
        f"{args.samples} samples of {sampled} tokens in {seconds:.2f} s "
        f"({1000 * seconds / max(sampled, 1):.2f} ms per token step) -> {args.out}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
