"""Token selection, quality-word spans, soft masks and the localization forward."""
from __future__ import annotations

import pytest
import torch

from lotts.backbones import Run, detect_backbone
from lotts.config import LoTTSConfig
from lotts.localization import (
    localization_prompts,
    localize,
    quality_spans,
    token_positions,
)
from lotts.offline_tokenizers import clip_tokenizer, t5_tokenizer
from lotts.resampling import soften
from tests.test_sampler_support import (
    PROMPT,
    _one_thread,  # noqa: F401 (autouse fixture)
    call_kwargs,
    shared_pipeline,
)

TEMPLATES = LoTTSConfig().quality_prompts


def test_localization_prompts_are_the_templates() -> None:
    assert localization_prompts("a cat", TEMPLATES) == [
        "a cat", "A high-quality image of a cat.", "A low-quality image of a cat."]


def test_quality_spans_locate_the_differing_words() -> None:
    texts = localization_prompts("a cat", TEMPLATES)
    spans = quality_spans("a cat", TEMPLATES)
    assert spans[0] is None
    assert [texts[1][s:e] for s, e in spans[1]] == ["high-quality"]
    assert [texts[2][s:e] for s, e in spans[2]] == ["low-quality"]
    after = ("An image of {} in high quality.", "An image of {} in low quality.")
    spans = quality_spans("a dog", after)
    assert [after[0].format("a dog")[s:e] for s, e in spans[1]] == ["high"]


@pytest.mark.parametrize("pad", ["!", "<|endoftext|>"])  # SD 2.x pads with "!", SD 1.x with EOS
def test_clip_token_selection(pad: str) -> None:
    tokenizer = clip_tokenizer(pad_token=pad)
    texts = localization_prompts("a cat!", TEMPLATES)
    content, w_content = token_positions(tokenizer, 77, texts, "content")
    # "a cat!" -> <start> a cat ! <end>: content 1..3 (a real "!" stays even when "!" pads)
    assert content[0, : int(w_content[0].sum())].tolist() == [1, 2, 3]
    # the templated prompt: every token between <start> and <end>
    length = sum(tokenizer(texts[1]).attention_mask)
    assert content[1, : int(w_content[1].sum())].tolist() == list(range(1, length - 1))
    everything, w_all = token_positions(tokenizer, 77, texts, "all")
    assert everything[0, : int(w_all[0].sum())].tolist() == [0, 1, 2, 3, 4]
    quality, w_quality = token_positions(tokenizer, 77, texts, "quality",
                                         quality_spans("a cat!", TEMPLATES))
    assert quality[1, : int(w_quality[1].sum())].tolist() == [2, 3, 4]  # high - quality
    assert quality[2, : int(w_quality[2].sum())].tolist() == [2, 3, 4]  # low - quality
    assert quality[0, : int(w_quality[0].sum())].tolist() == [1, 2, 3]  # original: content
    assert quality.dtype == torch.int64 and w_quality.shape == quality.shape


def test_t5_token_selection() -> None:
    tokenizer = t5_tokenizer()
    texts = localization_prompts("a cat", TEMPLATES)
    index, weight = token_positions(tokenizer, 64, texts, "quality", quality_spans("a cat", TEMPLATES))
    ids = tokenizer(texts[2], padding="max_length", max_length=64).input_ids
    chosen = index[2, : int(weight[2].sum())].tolist()
    assert "".join(tokenizer.convert_ids_to_tokens([ids[i] for i in chosen])).strip("▁") == "low-quality"
    content, w = token_positions(tokenizer, 64, texts, "content")
    assert tokenizer.eos_token_id not in [ids[i] for i in content[2, : int(w[2].sum())].tolist()]


def test_soften_feathers_within_three_sigma() -> None:
    hard = torch.zeros(1, 16, 16, dtype=torch.bool)
    hard[0, 6:10, 6:10] = True
    assert soften(hard, 0.0) is hard
    soft = soften(hard, 1.0)
    assert soft.dtype == torch.float32 and soft.min() >= 0 and soft.max() <= 1
    assert 0 < soft[0, 5, 8] < 1 and soft[0, 8, 8] > 0.5
    assert soft[0, 0, 0] == 0 and soft[0, 15, 15] == 0  # beyond the 3-sigma cut: exactly 0


def _run(kind: str) -> Run:
    backbone = detect_backbone(shared_pipeline(kind))
    settings = backbone.settings(call_kwargs(kind))
    return Run(backbone, settings, PROMPT, backbone.encode(PROMPT, settings),
               backbone.noise_shape(settings))


@pytest.mark.parametrize("kind,ratio", [("sd", 0.5), ("flux", 0.3)])
def test_localize_marks_round_r_n_of_the_grid(kind: str, ratio: float) -> None:
    run = _run(kind)
    backbone, settings = run.backbone, run.settings
    texts = localization_prompts(PROMPT, TEMPLATES)
    cond = backbone.encode_rows(texts, settings)
    tokenizer, length = backbone.token_source(settings)
    tokens = token_positions(tokenizer, length, texts, "content")
    x0 = torch.randn(backbone.noise_shape(settings, 2), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        first = localize(run, x0, [1, 2], 2, 1.0, ratio, cond, tokens)
        again = localize(run, x0, [1, 2], 2, 1.0, ratio, cond, tokens)
        alone = localize(run, x0[1:], [2], 2, 1.0, ratio, cond, tokens)
    grid = backbone.mask_grid(settings)
    assert first.mask.shape == first.heatmap.shape == (2, *grid)
    assert (first.mask.flatten(1).sum(1) == round(ratio * grid[0] * grid[1])).all()
    assert torch.equal(first.mask, again.mask) and torch.equal(first.heatmap, again.heatmap)
    torch.testing.assert_close(alone.heatmap[0], first.heatmap[1], rtol=1e-4, atol=1e-5)
    assert not torch.equal(first.heatmap[0], first.heatmap[1])


class _FakeCapture:
    """Cross maps on a 3x3 attention grid, propagation the identity (SA = I)."""

    peak_kept_bytes = 0

    def __init__(self, maps: torch.Tensor) -> None:
        self.maps, self.self_attention_grid = maps, tuple(maps.shape[-2:])

    def cross_maps(self) -> torch.Tensor:
        return self.maps

    def propagate(self, columns: torch.Tensor) -> torch.Tensor:
        return columns


def test_heat_is_normalized_before_upsampling_to_the_mask_grid() -> None:
    """Method: min-max each propagated map, form P (3) at the attention grid, upsample P
    bilinearly to the latent grid, keep its top r (4) there (SDXL: 64x64 maps, 128x128 latents)."""
    import torch.nn.functional as F

    from lotts.localization import mask_from_capture

    def mm(x):
        return (x - x.amin(1, keepdim=True)) / (x.amax(1, keepdim=True) - x.amin(1, keepdim=True))

    maps = torch.rand(3, 3, 3, generator=torch.Generator().manual_seed(1))  # orig, pos, neg
    lam, ratio = 1.0, 0.5
    found = mask_from_capture(_FakeCapture(maps), 1, (6, 6), lam, ratio)
    flat = maps.flatten(1)
    heat = (mm(flat[2:3] - flat[1:2]) + lam * mm(flat[0:1])).view(1, 1, 3, 3)
    heat = F.interpolate(heat, size=(6, 6), mode="bilinear", align_corners=False).flatten(1)
    top = torch.sort(heat, dim=1, descending=True, stable=True).indices[0, :18]
    expected = torch.zeros(36, dtype=torch.bool)
    expected[top] = True
    torch.testing.assert_close(found.heatmap.flatten(), heat[0])
    assert torch.equal(found.mask.flatten(), expected)
