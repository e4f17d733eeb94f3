"""report.html in a real browser: headless Chromium renders the summary table and the images
(Debian's ``chromium`` package; CI installs it, see .ci/run)."""
from __future__ import annotations

import re
import shutil
import subprocess

import numpy as np
import pytest
from PIL import Image

from lotts import report
from tests.test_report import _two_runs, single_thread  # noqa: F401 (autouse fixture)

CHROMIUM = shutil.which("chromium")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="headless Chromium is not installed "
                                "(Debian: apt-get install -y chromium)")
# From docs/environment.md: without the background-networking flags it keeps trying the network.
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--hide-scrollbars", "--virtual-time-budget=10000"]


def chromium(tmp_path, *args: str) -> subprocess.CompletedProcess:
    profile = tmp_path / f"profile-{len(list(tmp_path.glob('profile-*')))}"
    return subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={profile}", *args],
                          capture_output=True, text=True, timeout=120)


def test_report_renders_table_and_images(tmp_path):
    lotts_dir, bon_dir = _two_runs(tmp_path)
    page = report.write_report([lotts_dir, bon_dir], tmp_path / "report.html", title="browser test")

    dom = chromium(tmp_path, "--dump-dom", page.as_uri())
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert re.search(r'<table id="summary">', dom.stdout)
    rows = re.findall(r"<tr>", dom.stdout.split('<table id="summary">')[1].split("</table>")[0])
    assert len(rows) == 1 + 3  # header, lotts, best-of-n, the ratio row
    assert len(re.findall(r"<img ", dom.stdout)) == 12

    shot = tmp_path / "report.png"
    done = chromium(tmp_path, f"--screenshot={shot}", "--window-size=1280,1600", page.as_uri())
    assert done.returncode == 0 and shot.is_file(), done.stderr[-2000:]
    pixels = np.asarray(Image.open(shot).convert("RGB"))
    assert pixels.shape[:2] == (1600, 1280)
    colours = len(np.unique(pixels.reshape(-1, 3), axis=0))
    assert colours > 1000, f"only {colours} colours: the images did not render"
    print(f"screenshot: {shot}")
