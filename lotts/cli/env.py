"""``lotts env``: versions, the device and which kernel implementations can run."""
from __future__ import annotations

import argparse

HELP = "versions, device and kernels"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """No options of its own."""


def run(args: argparse.Namespace) -> int:
    from lotts.runs.outputs import package_versions
    from lotts_kernels.env import report

    print(report())
    print("")
    for name, version in package_versions().items():
        print(f"{name:<20} {version}")
    return 0
