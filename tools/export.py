"""Export every figure and the data behind it: PNG, SVG, PDF, HTML and NPZ, no browser needed.

    python -m tools.export --model assets/models/dense \
        --image assets/samples/test00003_trouser.png \
        --layers all --heads all --views grid,head,pixel,layout --formats png,svg,pdf --out figures/

Every figure the app draws for a model and an image, in every format asked for, plus an index.md
linking them all. The attention comes from analysis.attention.capture_image, the figures and
files from viz/export.py (what each format holds and its metadata).
"""

from __future__ import annotations

import sys
from pathlib import Path

from tools.cli import Parser, check_output_dir, int_range, run_main
from viz.export import FORMATS, VIEWS, model_items, write_all

MAX_DPI = 1200  # print quality; a 20,000 dpi figure needs gigabytes


def _select(text: str, n: int, what: str) -> list[int] | None:
    if text == "all":
        return None
    try:
        picked = [int(x) for x in text.split(",")]
    except ValueError:
        raise ValueError(f"--{what} must be 'all' or numbers like 0,2") from None
    if any(not 0 <= x < n for x in picked):
        raise ValueError(f"--{what} must be in 0..{n - 1}, got {text}")
    return picked


def main(argv: list[str] | None = None) -> int:
    """The command line: bad input is one ``error:`` line and exit status 2 (tools/cli.py)."""
    return run_main(run, argv)


def run(argv: list[str] | None = None) -> int:
    p = Parser(prog="python -m tools.export", description=__doc__.split("\n")[0])
    p.add_argument("--model", type=Path, required=True)
    p.add_argument("--image", type=Path, required=True)
    p.add_argument("--layers", default="all")
    p.add_argument("--heads", default="all")
    p.add_argument("--views", default=",".join(VIEWS))
    p.add_argument("--formats", default="png,svg,pdf,html,npz")
    p.add_argument("--query", type=int, nargs=2, default=[14, 14], metavar=("ROW", "COL"))
    p.add_argument("--dpi", type=int_range(10, MAX_DPI), default=150)
    p.add_argument("--out", type=Path, default=Path("figures"))
    args = p.parse_args(argv)
    check_output_dir(args.out)
    from analysis.attention import capture_image
    from models.checkpoint import CheckpointError, load_config, load_model
    from models.uploads import ImageInputError, prepare_image

    try:
        formats = args.formats.split(",")
        bad = [f for f in formats if f not in FORMATS]
        if bad:
            raise ValueError(f"unknown formats {bad}; choose from {', '.join(FORMATS)}")
        views = args.views.split(",")
        if any(v not in VIEWS for v in views):
            raise ValueError(f"--views takes {', '.join(VIEWS)}")
        config = load_config(args.model)
        if not (0 <= args.query[0] < config.height and 0 <= args.query[1] < config.width):
            raise ValueError(f"--query must be a pixel of the {config.height}x{config.width} image")
        if not args.image.is_file():
            raise ImageInputError(f"{args.image} does not exist")
        layers = _select(args.layers, config.n_layer, "layers")
        heads = _select(args.heads, config.n_head, "heads")
        model = load_model(args.model)
        image = prepare_image(args.image.read_bytes(), model.config.geometry)
        attention = capture_image(
            model, image, query=tuple(args.query), layers=layers, heads=heads, maps="head" in views
        )
        items = model_items(
            attention, model_name=str(args.model), image_name=args.image.name, views=views
        )
    except (CheckpointError, ImageInputError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    written = write_all(items, args.out, formats, dpi=args.dpi)
    print(f"wrote {len(written)} files and {args.out / 'index.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
