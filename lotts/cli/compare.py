"""``lotts compare``: a side-by-side markdown table of two run directories."""
from __future__ import annotations

import argparse
from pathlib import Path

from lotts.cli.console import status
from lotts.cli.jobs import reported_as

HELP = "side-by-side table of two runs"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dir_a", type=Path)
    parser.add_argument("dir_b", type=Path)
    parser.add_argument("--out", type=Path, default=None,
                        help="also write the markdown table to this file (default: print only)")


def run(args: argparse.Namespace) -> int:
    from lotts.report import compare_runs

    with reported_as("cannot compare runs"):
        text = compare_runs(args.dir_a, args.dir_b)
    print(text, end="")
    if args.out is not None:
        with reported_as(f"cannot write --out {str(args.out)!r}"):
            args.out.write_text(text, encoding="utf-8")
        status(f"wrote {args.out}", args.quiet)
    return 0
