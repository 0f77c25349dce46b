"""Command line: ``schyena-tools <command>``, for pipelines that pass h5ad files."""

from __future__ import annotations

import argparse
import sys


def _demo(args: argparse.Namespace) -> None:
    from schyena_tools._demo import run_demo

    run_demo(
        out_dir=args.out,
        max_epochs=args.max_epochs,
        d_model=args.d_model,
        n_layers=args.n_layers,
        batch_size=args.batch_size,
        n_cells=args.n_cells,
        seed=args.seed,
        progress=not args.quiet,
    )


def build_parser() -> argparse.ArgumentParser:
    from schyena_tools._demo import DEMO_SETTINGS

    parser = argparse.ArgumentParser(
        prog="schyena-tools",
        description="scHyena: full-length single-cell foundation model (every gene is a token).",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser(
        "demo",
        help="pre-train on bundled full-length brain data, embed and plot a UMAP",
        description="Pre-train a small scHyena on the bundled Zeisel 2015 data (550 cells x 19,972 genes), "
        "embed the cells and write umap.png, an h5ad with obsm['X_schyena'] and the model.",
        epilog="example: schyena-tools demo --out schyena_demo_output",
    )
    demo.add_argument("--out", default="schyena_demo_output", help="output folder (default: %(default)s)")
    demo.add_argument("--max-epochs", type=int, default=DEMO_SETTINGS["max_epochs"])
    demo.add_argument("--d-model", type=int, default=DEMO_SETTINGS["d_model"])
    demo.add_argument("--n-layers", type=int, default=DEMO_SETTINGS["n_layers"])
    demo.add_argument("--batch-size", type=int, default=DEMO_SETTINGS["batch_size"])
    demo.add_argument("--n-cells", type=int, default=None, help="use a random subset of cells (quick check)")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--quiet", action="store_true", help="no progress bar")
    demo.set_defaults(handler=_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``schyena-tools`` command."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        args.handler(args)
    except (ValueError, KeyError, FileNotFoundError) as error:
        print(f"schyena-tools {args.command}: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
