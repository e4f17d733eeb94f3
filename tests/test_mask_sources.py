"""Mask sources (attention, verifier saliency, their combination, random, full), particle
sampling and budget matching: exact mask counts, cost counted, saliency peaks where a verifier
looks, particle NFE exact and deterministic per seed."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from lotts import LoTTS, LoTTSConfig, best_of_n
from lotts.budget import plan
from lotts.mask_sources import (
    MASK_SOURCES,
    combine,
    occlusion_saliency,
    occlusion_windows,
    saliency_calls,
    top_r_mask,
    verifier_saliency,
)
from lotts.particle_sampling import Potential, particle_sampling, resample_steps
from tests.test_sampler_support import (
    PROMPT,
    RowCounter,
    _one_thread,  # noqa: F401 (autouse fixture)
    brightness,
    call_kwargs,
    shared_pipeline,
)

GRID = (8, 8)


# ----- verifiers with a known spatial preference ---------------------------------------------
class WeightedBrightness:
    """Differentiable: score = sum of brightness weighted by a bump centred on one grid cell,
    so |d score / d pixel| is the bump and its pooled maximum is that cell."""

    name = "weighted-brightness"

    def __init__(self, size: int, cell: tuple[int, int], grid: tuple[int, int] = GRID) -> None:
        ys, xs = torch.meshgrid(torch.arange(size, dtype=torch.float32),
                                torch.arange(size, dtype=torch.float32), indexing="ij")
        cy, cx = [(c + 0.5) * size / g for c, g in zip(cell, grid)]
        self.weight = torch.exp(-((ys - cy) ** 2 + (xs - cx) ** 2) / (2 * (size / 16) ** 2))

    def score_pixels(self, pixels: torch.Tensor, prompts) -> torch.Tensor:
        return (pixels.mean(dim=1) * self.weight).flatten(1).sum(dim=1)

    def __call__(self, images, prompts) -> torch.Tensor:
        from lotts.mask_sources import images_to_pixels
        return self.score_pixels(images_to_pixels(images), prompts)


def max_brightness_penalty(images, prompts) -> torch.Tensor:
    """A plain callable that dislikes the brightest spot: score = -max pixel value."""
    return torch.tensor([-float(np.asarray(im, np.float32).max()) for im in images])


def spot_image(size: int, cell: tuple[int, int], grid: tuple[int, int] = GRID) -> Image.Image:
    """Dark noisy image with one bright spot filling grid cell `cell`."""
    rng = np.random.default_rng(0)
    x = (rng.random((size, size, 3)) * 60).astype(np.uint8)
    fy, fx = size // grid[0], size // grid[1]
    x[cell[0] * fy: (cell[0] + 1) * fy, cell[1] * fx: (cell[1] + 1) * fx] = 255
    return Image.fromarray(x)


def argmax_cell(heat: torch.Tensor) -> tuple[int, int]:
    flat = int(heat.flatten().argmax())
    return divmod(flat, heat.shape[-1])


# ----- heatmaps and masks ---------------------------------------------------------------------
@pytest.mark.parametrize("ratio", [0.05, 0.2, 0.5, 0.8, 1.0])
def test_top_r_mask_counts_exact_with_ties(ratio: float) -> None:
    heat = torch.rand(3, 7, 9, generator=torch.Generator().manual_seed(1))
    heat[1] = 0.5  # all tied: the lowest indices win
    mask = top_r_mask(heat, ratio)
    count = int(round(ratio * 63))
    assert mask.shape == (3, 7, 9) and mask.dtype == torch.bool
    assert mask.flatten(1).sum(1).tolist() == [count] * 3
    assert mask[1].flatten()[:count].all() and not mask[1].flatten()[count:].any()
    order = torch.argsort(heat[0].flatten(), descending=True, stable=True)
    assert set(mask[0].flatten().nonzero().flatten().tolist()) == set(order[:count].tolist())


def test_combine_is_mean_or_product_of_normalized_maps() -> None:
    a = torch.tensor([[[0.0, 1.0], [2.0, 4.0]]])
    v = torch.tensor([[[10.0, 0.0], [5.0, 10.0]]])
    na, nv = a / 4, v / 10
    assert torch.allclose(combine(a, v, "sum"), (na + nv) / 2)
    assert torch.allclose(combine(a, v, "product"), na * nv)
    with pytest.raises(ValueError, match="mask_combine"):
        combine(a, v, "max")


@pytest.mark.parametrize("cell", [(1, 6), (5, 2)])
def test_gradient_saliency_peaks_where_the_verifier_looks(cell) -> None:
    verifier = WeightedBrightness(32, cell)
    image = Image.fromarray((np.random.default_rng(3).random((32, 32, 3)) * 255).astype(np.uint8))
    heat, calls = verifier_saliency(verifier, [image], [PROMPT], GRID)
    assert calls == 1 and heat.shape == (1, *GRID)
    assert argmax_cell(heat[0]) == cell


@pytest.mark.parametrize("cell", [(0, 0), (3, 5), (7, 6)])
def test_occlusion_saliency_of_a_plain_callable_finds_the_defect(cell) -> None:
    image = spot_image(32, cell)
    heat, calls = verifier_saliency(max_brightness_penalty, [image, image], [PROMPT] * 2, GRID,
                                    patch=1)
    assert calls == 2 * (1 + 64)  # base score + one per window, per image
    for b in range(2):
        assert argmax_cell(heat[b]) == cell
        assert heat[b][cell] > 0 and (heat[b] > 0).sum() == 1  # only hiding the spot helps
    coarse, coarse_calls = occlusion_saliency(max_brightness_penalty, [image], [PROMPT], GRID, 3)
    assert coarse_calls == 1 + len(occlusion_windows(GRID, 3)) == 1 + 9
    assert coarse[0][cell] > 0


def test_gradient_requested_for_a_plain_callable_is_refused() -> None:
    with pytest.raises(ValueError, match="differentiable"):
        verifier_saliency(brightness, [spot_image(16, (0, 0))], [PROMPT], GRID, method="gradient")


def test_config_rejects_unknown_sources() -> None:
    for field, bad in (("mask_source", "attn"), ("saliency", "lime"), ("mask_combine", "or"),
                       ("occlusion_patch", 0)):
        with pytest.raises(ValueError, match=field):
            LoTTSConfig(**{field: bad})


# ----- the sampler with each source ----------------------------------------------------------
@pytest.mark.parametrize("source", MASK_SOURCES)
def test_every_source_masks_exactly_and_is_counted(source: str) -> None:
    pipe = shared_pipeline("sd")
    kwargs = call_kwargs("sd")
    config = LoTTSConfig(num_seeds=2, num_refinements=2, mask_ratio=0.3, mask_source=source,
                         occlusion_patch=4)
    counter = RowCounter(pipe.unet)
    try:
        result = LoTTS(pipe, brightness, config)(PROMPT, seed=4, **kwargs)
    finally:
        counter.close()
    grid = result.candidates[0].latents.shape[-2:]
    cells = grid[0] * grid[1]
    expected = cells if source == "full" else int(round(0.3 * cells))
    refinements = [c for c in result.candidates if c.parent is not None]
    assert len(refinements) == 4
    for c in refinements:
        assert c.mask.dtype == torch.bool and int(c.mask.sum()) == expected
        assert c.heatmap.shape == c.mask.shape
    assert result.cost.nfe == counter.rows == config.lotts_nfe(kwargs["num_inference_steps"], "sd")
    per_parent = saliency_calls(source, "auto", False, tuple(grid), 4)
    assert result.cost.verifier_calls == len(result.candidates) + 2 * per_parent
    assert result.cost.nfe_by_phase["localize"] == (6 if "attention" in source else 0)


def test_verifier_source_uses_the_gradient_of_a_differentiable_verifier() -> None:
    pipe = shared_pipeline("sd")
    kwargs = call_kwargs("sd")
    size = kwargs["height"]
    grid = (size // pipe.vae_scale_factor, size // pipe.vae_scale_factor)
    cell = (grid[0] - 1, 0)
    verifier = WeightedBrightness(size, cell, grid)
    config = LoTTSConfig(num_seeds=1, num_refinements=1, mask_ratio=0.1, mask_source="verifier")
    result = LoTTS(pipe, verifier, config)(PROMPT, seed=2, **kwargs)
    refined = result.candidates[1]
    assert result.cost.verifier_calls == 2 + 1  # two candidates, one gradient
    assert argmax_cell(refined.heatmap) == cell and bool(refined.mask[cell])


def test_random_source_is_seeded() -> None:
    pipe = shared_pipeline("sd")
    config = LoTTSConfig(num_seeds=2, num_refinements=1, mask_source="random")
    first = LoTTS(pipe, brightness, config)(PROMPT, seed=7, **call_kwargs("sd"))
    again = LoTTS(pipe, brightness, config)(PROMPT, seed=7, **call_kwargs("sd"))
    masks = [c.mask for c in first.candidates if c.mask is not None]
    assert all(torch.equal(a.mask, b.mask) for a, b in zip(first.candidates[2:], again.candidates[2:]))
    assert not torch.equal(masks[0], masks[1])  # each parent draws its own map


# ----- particle sampling ------------------------------------------------------------------------
def test_particles_without_resampling_equal_best_of_n() -> None:
    pipe = shared_pipeline("sd")
    kwargs = call_kwargs("sd")
    bon = best_of_n(pipe, PROMPT, 3, brightness, seed=11, **kwargs)
    ps = particle_sampling(pipe, PROMPT, brightness, 3, seed=11, resample_every=100, eta=None,
                           **kwargs)
    assert ps.method == "particles" and ps.cost.nfe == bon.cost.nfe
    for a, b in zip(bon.candidates, ps.candidates):
        assert torch.equal(a.latents, b.latents) and a.score == b.score


@pytest.mark.parametrize("potential", ["max", "sum", "difference", "immediate"])
def test_particle_cost_is_exact_and_runs_are_deterministic(potential: str) -> None:
    pipe = shared_pipeline("sd")
    kwargs = call_kwargs("sd", steps=6)
    n, every = 4, 2
    counter = RowCounter(pipe.unet)
    try:
        first = particle_sampling(pipe, PROMPT, brightness, n, seed=5, potential=potential,
                                  lam=5.0, resample_every=every, **kwargs)
    finally:
        counter.close()
    points = resample_steps(6, every)
    assert points == [1, 3]
    assert first.cost.nfe == counter.rows == n * 6 * 2  # particles x steps x CFG rows
    assert first.cost.nfe_by_phase["generate"] == first.cost.nfe
    assert first.cost.verifier_calls == n * len(points) + n
    again = particle_sampling(pipe, PROMPT, brightness, n, seed=5, potential=potential, lam=5.0,
                              resample_every=every, **kwargs)
    assert [c.seed for c in first.candidates] == [c.seed for c in again.candidates]
    assert all(torch.equal(a.latents, b.latents) for a, b in zip(first.candidates, again.candidates))
    other = particle_sampling(pipe, PROMPT, brightness, n, seed=6, potential=potential, lam=5.0,
                              resample_every=every, **kwargs)
    assert not torch.equal(first.best.latents, other.best.latents)


def test_potentials_follow_their_definitions() -> None:
    r1, r2 = torch.tensor([1.0, 3.0]), torch.tensor([2.0, 0.0])
    expected = {"max": [2.0, 3.0], "sum": [3.0, 3.0], "difference": [1.0, -3.0],
                "immediate": [2.0, 0.0]}
    for kind, want in expected.items():
        pot = Potential(kind, 2.0, 2)
        pot.log_weights(r1)
        assert pot.log_weights(r2).tolist() == [2.0 * w for w in want]
    pot = Potential("max", 1.0, 2)
    pot.log_weights(r1)
    pot.reindex(torch.tensor([1, 1]))  # both descend from particle 1: its history goes with it
    assert pot.log_weights(torch.zeros(2)).tolist() == [3.0, 3.0]


def test_strong_weights_resample_to_the_best_particle() -> None:
    pipe = shared_pipeline("sd")
    kwargs = call_kwargs("sd", steps=4)
    result = particle_sampling(pipe, PROMPT, brightness, 4, seed=3, potential="immediate",
                               lam=1e4, resample_every=1, **kwargs)
    assert len({c.seed for c in result.candidates}) == 1  # one ancestor survives


def test_particle_arguments_are_checked() -> None:
    pipe = shared_pipeline("sd")
    for bad in ({"num_particles": 0}, {"potential": "best"}, {"resample_every": 0}, {"eta": -1.0}):
        args = {"num_particles": 2, **bad}
        with pytest.raises(ValueError, match=next(iter(bad))):
            particle_sampling(pipe, PROMPT, brightness, **args, **call_kwargs("sd"))


# ----- budget matching --------------------------------------------------------------------------
@pytest.mark.parametrize("budget", [20, 60, 123, 250, 1000])
def test_plan_fits_every_method_to_the_budget(budget: int) -> None:
    plans = plan(budget, 10, "sd")
    per = 20
    assert plans["best_of_n"].size == plans["particles"].size == budget // per
    assert plans["resampling"].nfe == per
    lotts = plans["lotts"]
    assert lotts.nfe <= budget and lotts.nfe == lotts.config.lotts_nfe(10, "sd")
    bigger = lotts.config.with_overrides(num_seeds=lotts.size + 1)
    assert bigger.lotts_nfe(10, "sd") > budget


def test_plan_refuses_a_budget_below_one_sample() -> None:
    with pytest.raises(ValueError, match="does not pay"):
        plan(19, 10, "sd")


def test_planned_lotts_spends_what_the_plan_says() -> None:
    pipe = shared_pipeline("sd")
    kwargs = call_kwargs("sd")
    steps = kwargs["num_inference_steps"]
    p = plan(5 * steps * 2, steps, "sd", config=LoTTSConfig(mask_source="verifier"))["lotts"]
    result = LoTTS(pipe, brightness, p.config.with_overrides(occlusion_patch=4))(PROMPT, **kwargs)
    assert result.cost.nfe == p.nfe <= 5 * steps * 2
