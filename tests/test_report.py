"""Reports: heatmap colours, mask overlays, candidate grids, report.html and compare, all from
synthetic results (no pipeline needed)."""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from lotts import report
from lotts.result import Candidate, Cost, LoTTSResult
from lotts.runs.manifest import RunSpec
from lotts.runs.prompts import PromptItem
from lotts.runs.runner import run_batch
from lotts.verifiers.statistics import StatisticVerifier


@pytest.fixture(autouse=True, scope="module")
def single_thread():
    """One intra-op thread for the tiny models of these tests: they gain nothing from two, and
    on a shared 2-core machine two spinning OpenMP threads make every op ~10x slower."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def fake_result(seed: int, prompt: str = "a cat", num_seeds: int = 2, k: int = 2,
                size: int = 32, latent: int = 4) -> LoTTSResult:
    """A LoTTS-shaped result with deterministic pictures, masks and heatmaps (k=0: Best-of-N)."""
    rng = np.random.default_rng(seed)
    candidates = []
    for j in range(num_seeds):
        pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
        candidates.append(Candidate(seed + j, None, Image.fromarray(pixels),
                                    torch.zeros(1, 4, latent, latent)))
    for parent in range(num_seeds):
        for _ in range(k):
            pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
            heat = torch.from_numpy(rng.random((latent, latent)))
            mask = (heat > heat.median()).float()
            candidates.append(Candidate(seed * 7 + len(candidates), parent, Image.fromarray(pixels),
                                        torch.zeros(1, 4, latent, latent), mask=mask, heatmap=heat))
    scores = rng.random(len(candidates))
    for candidate, score in zip(candidates, scores):
        candidate.score = float(score)
    selected = int(np.argmax(scores))
    cost = Cost(nfe=10 * len(candidates), verifier_calls=len(candidates),
                seconds={"generate": 0.5, "localize": 0.1, "refine": 0.3, "verify": 0.05})
    return LoTTSResult(prompt, candidates, selected, cost, method="lotts" if k else "best_of_n")


def fake_sampler(k: int = 2):
    return lambda prompt, seed, on_phase: fake_result(seed, prompt, k=k)


def test_colormap_is_a_monotone_ramp_in_brightness():
    rgb = report.colormap(np.linspace(-3.0, 5.0, 50)).astype(float)
    brightness = rgb @ [0.299, 0.587, 0.114]
    assert rgb.dtype == np.float64 and rgb.shape == (50, 3)
    assert np.all(np.diff(brightness) > -1.0), "brightness must not drop along the ramp"
    assert brightness[0] < 10 and brightness[-1] > 200
    assert np.all(report.colormap(np.full((3, 3), 2.0)) == report.colormap(np.zeros(1))[0])


def test_overlay_dims_outside_and_outlines_the_mask():
    parent = Image.new("RGB", (64, 64), (200, 200, 200))
    mask = torch.zeros(1, 1, 8, 8)
    mask[..., 2:6, 2:6] = 1
    out = np.asarray(report.overlay(parent, heatmap=None, mask=mask))
    assert tuple(out[0, 0]) == (110, 110, 110)              # outside: dimmed
    assert tuple(out[32, 32]) == (200, 200, 200)            # inside: untouched
    assert tuple(out[16, 32]) == report.OUTLINE_RGB          # border of the 4x4-cell square
    heat = report.overlay(parent, heatmap=torch.rand(8, 8), mask=None)
    assert heat.size == (64, 64) and np.asarray(heat).std() > 0


def test_grid_puts_each_refinement_beside_its_parent_overlay():
    result = fake_result(3, k=2)
    layout = report._layout(result.candidates)
    assert layout == [[("image", 0), ("overlay", 2), ("image", 2), ("overlay", 3), ("image", 3)],
                      [("image", 1), ("overlay", 4), ("image", 4), ("overlay", 5), ("image", 5)]]
    grid = report.candidate_grid(result, title="a cat")
    assert grid.size[0] == 5 * report.TILE + 6 * 4
    assert np.asarray(grid).std() > 10


def test_grid_of_best_of_n_is_near_square():
    result = fake_result(1, num_seeds=9, k=0)
    assert [len(row) for row in report._layout(result.candidates)] == [3, 3, 3]
    assert report.candidate_grid(result).size[0] == 3 * report.TILE + 4 * 4


def _two_runs(tmp_path: Path) -> tuple[Path, Path]:
    items = [PromptItem(i, p) for i, p in enumerate(["a cat", "a dog <b>&", "a | pipe"])]
    dirs = []
    for method, k in (("lotts", 2), ("best-of-n", 0)):
        spec = RunSpec(method, "fake", {"k": k}, {}, "fake-verifier", ("stat-contrast",))
        run_batch(fake_sampler(k), items, tmp_path / method, spec, quiet=True, save_candidates=True,
                  held_out={"stat-contrast": StatisticVerifier("stat-contrast")})
        dirs.append(tmp_path / method)
    return dirs[0], dirs[1]


def test_report_html_is_static_and_references_existing_images(tmp_path):
    lotts_dir, bon_dir = _two_runs(tmp_path)
    out = report.write_report([lotts_dir, bon_dir], tmp_path / "report.html", notes=["stand-in <note>"])
    text = out.read_text()
    assert "<table id='summary'>" in text and "best-of-n / lotts" in text
    assert "stand-in &lt;note&gt;" in text and "a dog &lt;b&gt;&amp;" in text
    assert not re.search(r"(src|href)=['\"](https?:)?//", text), "no network resources"
    sources = re.findall(r"<img [^>]*src='([^']+)'", text)
    assert len(sources) == 3 * 2 * 2  # per prompt and run: selected image and grid
    assert all((tmp_path / s).is_file() for s in sources)
    assert "held-out" in text and "selection" in text


def test_compare_reports_mean_scores_and_cost_ratios(tmp_path):
    lotts_dir, bon_dir = _two_runs(tmp_path)
    text = report.compare_runs(lotts_dir, bon_dir)
    lines = text.splitlines()
    assert "3 prompts in common." in lines
    nfe = next(line for line in lines if line.startswith("| total NFE"))
    assert nfe.split("|")[2].strip() == "180" and nfe.split("|")[3].strip() == "60"
    assert nfe.split("|")[4].strip() == "0.33x"
    records = [json.loads(line) for line in (lotts_dir / "manifest.jsonl").read_text().splitlines()]
    mean = np.mean([r["scores"]["stat-contrast"][r["selected"]] for r in records])
    contrast = next(line for line in lines if line.startswith("| mean stat-contrast"))
    assert contrast.split("|")[2].strip() == f"{mean:.3f}"
    assert r"a \| pipe" in text


def test_compare_refuses_runs_without_common_prompts(tmp_path):
    lotts_dir, _ = _two_runs(tmp_path)
    other = tmp_path / "other"
    spec = RunSpec("lotts", "fake", {}, {}, "fake-verifier")
    run_batch(fake_sampler(), [PromptItem("x", "a bird")], other, spec, quiet=True)
    with pytest.raises(ValueError, match="share no finished prompt"):
        report.compare_runs(lotts_dir, other)
