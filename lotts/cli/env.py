"""``lotts env``: versions, the device and which kernel implementations can run."""
from __future__ import annotations

import argparse

HELP = "versions, device and kernels"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """No options of its own."""


def run(args: argparse.Namespace) -> int:
    from lotts.runs.outputs import package_versions
    from lotts_kernels.env import report

    kernels = report()
    print(kernels)
    # The kernel report already lists torch, diffusers and transformers: add only the others.
    listed = {line.split()[0] for line in kernels.splitlines() if line.strip()}
    others = {name: v for name, v in package_versions().items() if name not in listed}
    if others:
        print("")
        for name, version in others.items():
            print(f"{name:<20} {version}")
    return 0
