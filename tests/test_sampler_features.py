"""refine(), chain search, soft masks, prompt batches, schedulers and pass-through arguments."""
from __future__ import annotations

import pytest
import torch

from lotts import LoTTS, LoTTSConfig, best_of_n
from lotts.backbones import Run, detect_backbone
from tests.test_sampler_support import (
    PROMPT,
    RowCounter,
    _one_thread,  # noqa: F401 (autouse fixture)
    assert_unchanged,
    brightness,
    call_kwargs,
    load_pipeline,
    red_minus_blue,
    shared_pipeline,
    snapshot,
)

EXACT = LoTTSConfig(num_seeds=2, num_refinements=2, global_steps=0)


def _assert_outside_is_parents(result, backbone) -> None:
    for cand in result.candidates:
        if cand.parent is None:
            continue
        parent = result.candidates[cand.parent].latents
        outside = (backbone.blend_mask(cand.mask[None]) == 0).expand_as(parent)
        assert outside.any() and torch.equal(cand.latents[outside], parent[outside])


# ----- refine ---------------------------------------------------------------------------------
def test_refine_a_pil_image() -> None:
    pipe = shared_pipeline("sd")
    image = best_of_n(pipe, PROMPT, 1, brightness, seed=3, **call_kwargs("sd")).image
    before, counter = snapshot(pipe), RowCounter(pipe.unet)
    try:
        result = LoTTS(pipe, brightness, EXACT).refine(image, PROMPT, seed=5, **call_kwargs("sd"))
    finally:
        counter.close()
    assert_unchanged(pipe, before)
    assert result.method == "refine" and len(result.candidates) == 1 + EXACT.num_refinements
    assert result.candidates[0].image is image and result.candidates[0].parent is None
    assert [c.parent for c in result.candidates[1:]] == [0, 0]
    _assert_outside_is_parents(result, detect_backbone(pipe))
    steps = EXACT.resolved("sd", 4)
    assert result.cost.nfe == counter.rows == 3 + 2 * 2 * (4 - steps.t0)
    assert result.cost.verifier_calls == 3
    assert result.selected == max(range(3), key=lambda i: (result.candidates[i].score, -i))


def test_refine_flux_latents_and_chain() -> None:
    pipe = shared_pipeline("flux")
    config = EXACT.with_overrides(search="chain")
    first = LoTTS(pipe, brightness, config)(PROMPT, seed=1, **call_kwargs("flux"))
    latents = first.candidates[0].latents  # packed, as output_type="latent" gives them
    result = LoTTS(pipe, brightness, config).refine(latents, PROMPT, seed=2, **call_kwargs("flux"))
    assert torch.equal(result.candidates[0].latents, latents)
    assert [c.parent is None for c in result.candidates] == [True, False, False]
    _assert_outside_is_parents(result, detect_backbone(pipe))
    assert result.cost.nfe_by_phase["localize"] == 3 * 2  # re-localized at each chain level


# ----- search variants ------------------------------------------------------------------------
def test_chain_refines_the_best_so_far_of_each_seed() -> None:
    pipe = shared_pipeline("sd")
    config = LoTTSConfig(num_seeds=2, num_refinements=3, search="chain")
    counter = RowCounter(pipe.unet)
    try:
        result = LoTTS(pipe, brightness, config)(PROMPT, seed=0, **call_kwargs("sd"))
    finally:
        counter.close()
    cands = result.candidates
    assert len(cands) == 2 * (1 + 3)
    roots = list(range(2))
    for i, cand in enumerate(cands[2:], start=2):
        lineage = [j for j in range(i) if _root(cands, j) == _root(cands, cand.parent)]
        assert cand.parent == max(lineage, key=lambda j: (cands[j].score, -j))
    assert sorted(_root(cands, i) for i in range(2, len(cands))) == sorted(roots * 3)
    assert result.cost.nfe == counter.rows == config.lotts_nfe(4, "sd")
    assert result.cost.nfe_by_phase["localize"] == 3 * 2 * 3


def _root(cands, i: int) -> int:
    while cands[i].parent is not None:
        i = cands[i].parent
    return i


def test_soft_masks_feather_and_keep_far_outside_exact() -> None:
    pipe = shared_pipeline("sd")
    config = EXACT.with_overrides(soft_mask_sigma=0.3, mask_ratio=0.1)  # radius 1: 6 cells
    result = LoTTS(pipe, brightness, config)(PROMPT, seed=0, **call_kwargs("sd"))
    for cand in result.candidates[2:]:
        assert cand.mask.dtype == torch.float32
        assert ((cand.mask > 0) & (cand.mask < 1)).any() and cand.mask.max() <= 1
    _assert_outside_is_parents(result, detect_backbone(pipe))


def test_batch_of_prompts_and_batch_composition() -> None:
    pipe = shared_pipeline("sd")
    prompts = [PROMPT, "a red circle next to a blue square"]
    both = LoTTS(pipe, brightness, EXACT)(prompts, seed=4, **call_kwargs("sd"))
    assert isinstance(both, list) and [r.prompt for r in both] == prompts
    one_at_a_time = LoTTS(pipe, brightness, EXACT.with_overrides(refine_batch_size=1))(
        prompts[1], seed=4, **call_kwargs("sd"))
    for a, b in zip(both[1].candidates, one_at_a_time.candidates):
        assert a.seed == b.seed and a.parent == b.parent
        torch.testing.assert_close(a.latents, b.latents, rtol=1e-4, atol=1e-4)


def test_report_with_scores_the_selected_image() -> None:
    pipe = shared_pipeline("sd")
    phases = []
    runner = LoTTS(pipe, select_with=brightness, report_with=[red_minus_blue],
                   config=LoTTSConfig(num_seeds=2, num_refinements=1), on_phase=phases.append)
    result = runner(PROMPT, seed=0, **call_kwargs("sd"))
    assert set(result.scores) == {"brightness", "red_minus_blue"}
    expected = float(red_minus_blue([result.image], [PROMPT])[0])
    assert result.scores["red_minus_blue"] == pytest.approx(expected)
    assert result.cost.verifier_calls == len(result.candidates)  # report calls are not cost
    assert phases[:3] == ["generate", "verify", "localize"] and phases[-1] == "report"
    assert "report" in result.cost.seconds


# ----- pipeline conventions -------------------------------------------------------------------
def test_pass_through_arguments_and_callbacks() -> None:
    pipe = shared_pipeline("sd")
    steps_seen = []

    def on_step(pipeline, i, t, tensors):
        steps_seen.append(i)
        return {}

    kwargs = call_kwargs("sd")
    kwargs.update(guidance_scale=1.0, negative_prompt="blurry", callback_on_step_end=on_step)
    counter = RowCounter(pipe.unet)
    try:
        result = LoTTS(pipe, brightness, EXACT)(PROMPT, seed=0, **kwargs)
    finally:
        counter.close()
    t0 = EXACT.resolved("sd", 4).t0
    assert result.cost.nfe == counter.rows == 2 * 4 + 2 * 3 + 4 * (4 - t0)  # unguided: 1 per row
    assert steps_seen.count(0) == 1 and steps_seen.count(3) == 1 + 2  # base call + 2 batches


@pytest.mark.parametrize("kind,scheduler", [("sd", "dpm++"), ("sd", "euler"), ("flux", None)])
def test_other_schedulers(kind: str, scheduler) -> None:
    pipe = load_pipeline(kind, scheduler) if scheduler else shared_pipeline(kind)
    result = LoTTS(pipe, brightness, EXACT)(PROMPT, seed=0, **call_kwargs(kind))
    assert len(result.candidates) == 6
    _assert_outside_is_parents(result, detect_backbone(pipe))


def test_pndm_refuses_lotts_but_runs_best_of_n() -> None:
    pipe = load_pipeline("sd", "pndm")
    before = snapshot(pipe)
    with pytest.raises(NotImplementedError, match="PNDMScheduler"):
        LoTTS(pipe, brightness)(PROMPT, **call_kwargs("sd"))
    assert_unchanged(pipe, before)
    assert len(best_of_n(pipe, PROMPT, 2, brightness, **call_kwargs("sd", steps=2)).candidates) == 2


@pytest.mark.parametrize("kind", ["sd", "sdxl", "flux"])
def test_refinement_loop_mirrors_the_pipeline(kind: str) -> None:
    """Continuing the pipeline's own trajectory from t0 with LoTTS' loop lands where it did."""
    pipe = shared_pipeline(kind)
    trajectory = []

    def keep(pipeline, i, t, tensors):
        trajectory.append(tensors["latents"])
        return {}

    final = pipe(PROMPT, generator=torch.Generator().manual_seed(0), output_type="latent",
                 callback_on_step_end=keep, **call_kwargs(kind)).images
    backbone = detect_backbone(pipe)
    settings = backbone.settings(call_kwargs(kind))
    run = Run(backbone, settings, PROMPT, backbone.encode(PROMPT, settings),
              backbone.noise_shape(settings))
    with torch.no_grad():
        again = run.denoise(trajectory[1], 2, run.num_steps, [0])  # latents entering step 2
    torch.testing.assert_close(again, final, rtol=1e-4, atol=1e-4)
