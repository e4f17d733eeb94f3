"""``lotts bench``: the cost benchmark of :mod:`lotts.bench`, LoTTS against Best-of-N."""
from __future__ import annotations

import argparse

HELP = "cost benchmark: LoTTS against Best-of-N, seconds and NFE"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from lotts import bench

    bench.add_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from lotts import bench

    return bench.run_from_args(args)
