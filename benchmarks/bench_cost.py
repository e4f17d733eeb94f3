"""GPU entry of the cost benchmark: LoTTS against Best-of-N at real size (``lotts bench``).

Run from the repository root, e.g. by ``benchmarks/gpu.sh``::

    python benchmarks/bench_cost.py --results "$OUT/bench_cost.md" --budget-s 240

Builds SD2.1-base, SDXL-base and FLUX.1-dev from their published configs with random weights
in bf16 and prints the table of ``lotts.bench``. The GPU machine has no diffusers and no
network: the caller installs a diffusers wheel it brought along, else this exits with code 2
and says so.
"""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

MISSING_DIFFUSERS = """bench_cost: diffusers is not installed, and this machine cannot download it.
Bring it along as a wheel (pure Python) and install it before running this script, e.g.:
    here:  python -m pip download --no-deps -d .whl diffusers==0.42.1
    there: python -m pip install --no-index --no-deps --target /tmp/site .whl/diffusers-*.whl
           export PYTHONPATH=/tmp/site:$PYTHONPATH"""


def main(argv: list[str]) -> int:
    if importlib.util.find_spec("diffusers") is None:
        print(MISSING_DIFFUSERS, file=sys.stderr)
        return 2
    sys.path.insert(0, str(ROOT))
    from lotts.cli import main as lotts_main

    return lotts_main(["bench", *argv])


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
