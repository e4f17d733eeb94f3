"""The README's kernel section: its snippet runs as written, and its capability table states
the limits the implementations actually declare."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from lotts_kernels.ops import attention, quality_mask

ROOT = Path(__file__).resolve().parent.parent
SECTION = (ROOT / "README.md").read_text().split("## The kernel API")[1].split("\n## ")[0]


def test_kernel_snippet_runs_as_written():
    snippet = SECTION.split("```python\n")[1].split("```")[0]
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-c", snippet], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "masked_noise_blend: requested auto, uses" in done.stdout


def test_capability_table_states_the_declared_limits():
    for stated in (f"<= {attention.MAX_HEAD_DIM}", f"B*H <= {attention.MAX_BATCH_HEADS}",
                   f"C <= {attention.MAX_MAP_CHANNELS}", "N <= 2^24", "N <= 2^31-1024",
                   "<= 4 index dims"):
        assert stated in SECTION, stated
    # The table writes the row limits as powers of two; these are the values it stands for.
    assert quality_mask.MAX_N == 2**24 and quality_mask.MAX_CUDA_N == 2**31 - 1024
