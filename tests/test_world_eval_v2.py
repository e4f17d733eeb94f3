"""World evaluation v2: the smoke mode on a couple of prompts, and its statistics."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def test_bootstrap_ci_resamples_whole_prompts() -> None:
    from lotts.world.evaluate_v2 import bootstrap_ci
    point, low, high = bootstrap_ci([[1.0, 1.0], [0.0], [1.0, 0.0, 0.0]], np.mean, 500, 0)
    assert point == pytest.approx(3 / 6)
    assert 0.0 <= low <= point <= high <= 1.0 and low < high
    assert bootstrap_ci([[0.25], [0.25]], np.mean, 100, 1) == (0.25, 0.25, 0.25)


def test_repair_summary_pairs_each_source_with_random_at_the_same_area() -> None:
    from lotts.world.evaluate_v2 import repair_summary
    rows = [{"prompt_index": p, "parent_defective": True,
             "verifier@0.5_repaired": True, "random@0.5_repaired": p == 0,
             "full@1.0_repaired": False} for p in range(4)]
    rows.append({"prompt_index": 4, "parent_defective": False})
    out = repair_summary(rows, ["verifier", "random", "full"], [0.5], 200, 0)
    assert out["defective_parents"] == 4 and out["prompts_with_defective"] == 4
    assert out["table"]["verifier@0.5"]["rate"][0] == 1.0
    assert out["table"]["verifier@0.5"]["minus_random@0.5"][0] == pytest.approx(0.75)
    assert out["table"]["full@1.0"]["minus_random@0.5"][0] == pytest.approx(-0.25)
    assert "minus_random@0.5" not in out["table"]["random@0.5"]


def test_world_eval_v2_smoke() -> None:
    from benchmarks.world_eval_v2 import SPEC, run, summarize, tables
    from lotts.particle_sampling import default_interval, resample_steps
    spec = json.loads(SPEC.read_text())
    result = run(spec, smoke=True, shard=(0, 1), parts={"planted", "repair", "scaling"})
    smoke = spec["smoke"]
    steps = smoke["pipe_kwargs"]["num_inference_steps"]
    assert len(result["planted"]) == smoke["planted_cases"]
    assert len(result["repair"]) == smoke["repair_prompts"] * smoke["seeds_per_prompt"]
    for row in result["repair"]:
        refined = [k for k in row if k.endswith("_repaired")]
        assert len(refined) == (13 if row["parent_defective"] else 0)  # 4 sources x 3 r + full
    (row,) = result["scaling"]
    # 1 seed x (S*2 generation + 3 localization + 2 refinements x (S - t0) * 2), t0 = S / 2
    assert row["lotts_attention_small_nfe"] == steps * 2 + 3 + 2 * (steps - steps // 2) * 2
    assert row["particles_small_nfe"] == 2 * steps * 2
    points = resample_steps(steps, default_interval(steps))
    assert row["particles_small_verifier_calls"] == 2 * len(points) + 2
    summary = summarize(result, spec)
    for name in smoke["methods"]:
        m = summary["scaling"]["methods"][name]
        assert np.isfinite(m["held"][0]) and 0.0 <= m["defect_rate"][0] <= 1.0
    for key, value in summary["planted"].items():
        if key.endswith("_auroc"):
            assert np.isnan(value) or 0.0 <= value <= 1.0
    text = tables(summary, result["meta"] if "meta" in result else {
        "platform": "-", "torch": "-", "diffusers": "-", "processes": 1, "commit": "-",
        "seconds": {}})
    assert "Scaling at matched NFE" in text and "Planted defects" in text


@pytest.mark.parametrize("name", ["world-clean-a", "world-clean-b"])
def test_world_verifier_pixel_hook_gives_its_own_scores_and_a_gradient(name: str) -> None:
    import torch
    from PIL import Image

    from lotts.mask_sources import images_to_pixels, pixel_scorer
    from lotts.verifiers import load_verifier
    verifier = load_verifier(name, device="cpu")
    rng = np.random.default_rng(5)
    images = [Image.fromarray((rng.random((64, 64, 3)) * 255).astype(np.uint8)) for _ in range(3)]
    scorer = pixel_scorer(verifier)
    assert scorer is not None
    pixels = images_to_pixels(images).requires_grad_(True)
    scores = scorer(pixels, ["p"] * 3)
    assert torch.allclose(scores.detach(), verifier(images, ["p"] * 3), atol=1e-5)
    (grad,) = torch.autograd.grad(scores.sum(), pixels)
    assert grad.abs().sum() > 0
