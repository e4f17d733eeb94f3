"""`python -m lotts_kernels.demo` says what it compared (issue 12, item 7), through a subprocess.

On a CPU the automatic choice is the reference for every op, which the demo used to compare
with itself under a table that looked like a kernel check; it must say plainly that no kernel
ran. A forced Triton run under the interpreter takes minutes at realistic shapes and printed
nothing until the end; it must run tiny shapes and report progress per op.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent


def _demo(*args: str, interpret: bool) -> str:
    env = {**os.environ, "TRITON_INTERPRET": "1" if interpret else "0", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    env.pop("LOTTS_KERNELS_IMPL", None)
    done = subprocess.run([sys.executable, "-m", "lotts_kernels.demo", *args], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only message")
def test_cpu_demo_says_no_kernel_ran():
    out = _demo("--device", "cpu", "--budget", "0.01", interpret=False)
    table = [line.split() for line in out.splitlines() if line.startswith(("attention", "quality",
                                                                           "masked"))]
    assert len(table) == 4 and all(row[-5] == "ref" for row in table), out
    assert "No kernel ran" in out and "compared with itself" in out


def test_forced_triton_under_the_interpreter_shows_progress():
    pytest.importorskip("triton")
    out = _demo("--device", "cpu", "--impl", "triton", interpret=True)
    lines = out.splitlines()
    for number, op in enumerate(("attention_with_token_maps", "attention_propagate",
                                 "quality_mask", "masked_noise_blend"), 1):
        start = next(i for i, line in enumerate(lines) if line.startswith(f"[{number}/4] {op} "))
        assert lines[start].endswith("triton ...")
        assert any(line.startswith(f"[{number}/4] {op}: done in") for line in lines[start:])
    assert "interpreter" in lines[1] and "Kernels ran for" in out and "No kernel ran" not in out
