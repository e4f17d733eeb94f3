"""End-to-end LoTTS and Best-of-N on tiny SD2.1-, SDXL- and FLUX-like pipelines (offline)."""
from __future__ import annotations

import pytest
import torch

from lotts import LoTTS, LoTTSConfig, LoTTSResult, best_of_n
from lotts.backbones import detect_backbone
from tests.test_sampler_support import (
    PROMPT,
    RowCounter,
    _one_thread,  # noqa: F401 (autouse fixture)
    assert_unchanged,
    brightness,
    call_kwargs,
    denoiser,
    shared_pipeline,
    snapshot,
)

KINDS = ("sd", "sdxl", "flux")
CONFIG = LoTTSConfig(num_seeds=2, num_refinements=2, global_steps=0)


@pytest.fixture(scope="module", params=KINDS)
def runs(request):
    """One LoTTS run per backbone (with an independent NFE count), a repeat and a Best-of-N."""
    kind = request.param
    pipe = shared_pipeline(kind)
    before = snapshot(pipe)
    counter = RowCounter(denoiser(pipe))
    try:
        result = LoTTS(pipe, brightness, CONFIG)(PROMPT, seed=7, **call_kwargs(kind))
    finally:
        counter.close()
    after_run = snapshot(pipe)
    repeat = LoTTS(pipe, brightness, CONFIG)(PROMPT, seed=7, **call_kwargs(kind))
    bon = best_of_n(pipe, PROMPT, 3, brightness, seed=7, **call_kwargs(kind))
    return dict(kind=kind, pipe=pipe, result=result, rows=counter.rows, before=before,
                after=after_run, repeat=repeat, bon=bon)


def test_candidates_and_their_records(runs) -> None:
    result: LoTTSResult = runs["result"]
    n, k = CONFIG.num_seeds, CONFIG.num_refinements
    assert isinstance(result, LoTTSResult) and result.method == "lotts"
    assert len(result.candidates) == n * (1 + k)
    backbone = detect_backbone(runs["pipe"])
    grid = backbone.mask_grid(backbone.settings(call_kwargs(runs["kind"])))
    for i, cand in enumerate(result.candidates):
        assert cand.image.size == (64, 64)
        assert cand.nfe > 0
        if i < n:
            assert cand.parent is None and cand.mask is None and cand.heatmap is None
            assert cand.seed == 7 + i
        else:
            assert cand.parent == (i - n) // k
            assert tuple(cand.mask.shape) == grid and tuple(cand.heatmap.shape) == grid
            assert cand.latents.shape == result.candidates[cand.parent].latents.shape
    assert len({c.seed for c in result.candidates}) == len(result.candidates)


def test_selected_is_the_best_scored(runs) -> None:
    result = runs["result"]
    scores = brightness([c.image for c in result.candidates], [PROMPT] * len(result.candidates))
    assert torch.allclose(scores, torch.tensor(result.candidate_scores))
    assert result.selected == int(torch.argmax(scores))
    assert result.image is result.candidates[result.selected].image
    assert result.scores["brightness"] == result.candidates[result.selected].score


def test_masks_mark_round_r_n_positions(runs) -> None:
    for cand in runs["result"].candidates[CONFIG.num_seeds:]:
        assert cand.mask.dtype == torch.bool
        assert int(cand.mask.sum()) == round(CONFIG.mask_ratio * cand.mask.numel())
        threshold = cand.heatmap[cand.mask].min()
        assert bool((cand.heatmap[~cand.mask] <= threshold).all())  # the top-r of P


def test_outside_the_mask_equals_the_parent_exactly(runs) -> None:
    result = runs["result"]
    backbone = detect_backbone(runs["pipe"])
    for cand in result.candidates[CONFIG.num_seeds:]:
        parent = result.candidates[cand.parent].latents
        outside = ~backbone.blend_mask(cand.mask[None]).expand_as(parent)
        assert torch.equal(cand.latents[outside], parent[outside])
        assert not torch.equal(cand.latents[~outside], parent[~outside])


def test_nfe_is_the_real_denoiser_count(runs) -> None:
    result, kind = runs["result"], runs["kind"]
    assert result.cost.nfe == runs["rows"]
    assert result.cost.nfe == CONFIG.lotts_nfe(call_kwargs(kind)["num_inference_steps"], kind)
    assert result.cost.nfe_by_phase["localize"] == 3 * CONFIG.num_seeds
    assert result.cost.verifier_calls == len(result.candidates)
    assert set(result.cost.seconds) >= {"generate", "localize", "refine", "verify"}


def test_same_seed_same_result(runs) -> None:
    first, second = runs["result"], runs["repeat"]
    assert first.selected == second.selected
    for a, b in zip(first.candidates, second.candidates):
        assert torch.equal(a.latents, b.latents) and a.score == b.score and a.seed == b.seed


def test_pipeline_left_as_found(runs) -> None:
    assert_unchanged(runs["pipe"], runs["before"])
    assert runs["after"]["processors"].keys() == runs["before"]["processors"].keys()


def test_best_of_n_shares_the_unit_and_the_originals(runs) -> None:
    bon, result = runs["bon"], runs["result"]
    assert isinstance(bon, LoTTSResult) and bon.method == "best_of_n"
    assert len(bon.candidates) == 3 and all(c.parent is None for c in bon.candidates)
    assert bon.selected == max(range(3), key=lambda i: (bon.candidates[i].score, -i))
    steps = call_kwargs(runs["kind"])["num_inference_steps"]
    factor = 1 if runs["kind"] == "flux" else 2
    assert bon.cost.nfe == 3 * steps * factor and bon.cost.verifier_calls == 3
    for a, b in zip(bon.candidates, result.candidates[: CONFIG.num_seeds]):
        assert torch.equal(a.latents, b.latents)  # same seeds, same originals


def test_originals_are_the_pipelines_own_images(runs) -> None:
    pipe, kind = runs["pipe"], runs["kind"]
    generator = torch.Generator().manual_seed(7)
    own = pipe(PROMPT, generator=generator, output_type="latent", **call_kwargs(kind)).images
    # batch 1 (own) vs batch 2 (LoTTS)
    torch.testing.assert_close(own, runs["result"].candidates[0].latents, rtol=1e-4, atol=1e-4)
