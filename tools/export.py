"""Export every figure and the data behind it: PNG, SVG, PDF, HTML and NPZ, no browser needed.

    python -m tools.export --model assets/models/dense \
        --image assets/samples/test00003_trouser.png \
        --layers all --heads all --views grid,head,pixel,layout --formats png,svg,pdf --out figures/

Every figure the app draws for a model and an image, in every format asked for, plus an index.md
linking them all. The attention comes from analysis.attention.capture_image, the figures and
files from viz/export.py (what each format holds and its metadata). ``--query`` defaults to the
centre pixel of the model given (row H // 2, column W // 2). Every file is written atomically
(tools/cli.py write_atomic): a full disk or Ctrl-C leaves each file whole or absent, and the
error names the file.
"""

from __future__ import annotations

import sys
from pathlib import Path

from tools.cli import Parser, check_output_dir, int_range, run_main, write_atomic
from viz.export import FORMATS, VIEWS, export_files, index_markdown, model_items

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


def write_all(items: list, out: Path, formats: list[str], *, dpi: int = 150) -> list[Path]:
    """Every format of every item into ``out``, plus index.md: each file atomically, as it is
    made (viz.export.write_all writes them in place, so a full disk left half a file there)."""
    from tqdm import tqdm

    out.mkdir(parents=True, exist_ok=True)
    with tqdm(total=len(items) * len(formats), desc="export") as bar:
        files = export_files(items, formats, dpi=dpi, on_file=lambda _: bar.update())
    written = []
    for name, data in files.items():
        write_atomic(out / name, data)
        written.append(out / name)
    write_atomic(out / "index.md", index_markdown(items, formats))
    return written


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
    p.add_argument(
        "--query",
        type=int,
        nargs=2,
        default=None,
        metavar=("ROW", "COL"),
        help="the query pixel (default: the centre of the model's image)",
    )
    p.add_argument("--dpi", type=int_range(10, MAX_DPI), default=150)
    p.add_argument("--out", type=Path, default=Path("figures"))
    args = p.parse_args(argv)
    check_output_dir(args.out)
    from analysis.attention import capture_image
    from models.checkpoint import CheckpointError, load_config, load_model
    from models.uploads import ImageInputError, prepare_image, read_image_file

    try:
        formats = args.formats.split(",")
        bad = [f for f in formats if f not in FORMATS]
        if bad:
            raise ValueError(f"unknown formats {bad}; choose from {', '.join(FORMATS)}")
        views = args.views.split(",")
        if any(v not in VIEWS for v in views):
            raise ValueError(f"--views takes {', '.join(VIEWS)}")
        config = load_config(args.model)
        if args.query is None:
            args.query = [config.height // 2, config.width // 2]
        if not (0 <= args.query[0] < config.height and 0 <= args.query[1] < config.width):
            raise ValueError(
                f"--query must be a pixel of the {config.height}x{config.width} image "
                f"(row 0..{config.height - 1}, column 0..{config.width - 1}), got "
                f"{args.query[0]} {args.query[1]}"
            )
        # a regular file of at most 20 MiB, checked before it is opened (a FIFO is refused)
        data = read_image_file(args.image)
        layers = _select(args.layers, config.n_layer, "layers")
        heads = _select(args.heads, config.n_head, "heads")
        model = load_model(args.model)
        image = prepare_image(data, model.config.geometry)
        attention = capture_image(
            model, image, query=tuple(args.query), layers=layers, heads=heads, maps="head" in views
        )
        items = model_items(
            attention, model_name=str(args.model), image_name=args.image.name, views=views
        )
    except (CheckpointError, ImageInputError, ValueError) as e:
        print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    written = write_all(items, args.out, formats, dpi=args.dpi)
    print(f"wrote {len(written)} files and {args.out / 'index.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
