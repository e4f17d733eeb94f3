"""The shared capture processor: faithful outputs, the right maps, constant memory, restored."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from lotts.attention_capture import AttentionCapture
from lotts.backbones import Run, detect_backbone
from lotts.localization import localization_prompts, token_positions
from tests.test_sampler_support import (
    PROMPT,
    _one_thread,  # noqa: F401 (autouse fixture)
    call_kwargs,
    shared_pipeline,
)

TEMPLATES = ("A high-quality image of {}.", "A low-quality image of {}.")


def _forward_inputs(kind: str, images: int = 2):
    """Backbone, run and everything one localization forward takes (3 prompts per image)."""
    pipe = shared_pipeline(kind)
    backbone = detect_backbone(pipe)
    settings = backbone.settings(call_kwargs(kind))
    run = Run(backbone, settings, PROMPT, backbone.encode(PROMPT, settings),
              backbone.noise_shape(settings))
    texts = localization_prompts(PROMPT, TEMPLATES)
    tokenizer, length = backbone.token_source(settings)
    index, weight = token_positions(tokenizer, length, texts, "content")
    latents = torch.randn(backbone.noise_shape(settings, images),
                          generator=torch.Generator().manual_seed(0)).repeat_interleave(3, dim=0)
    capture = AttentionCapture(index.repeat(images, 1), weight.repeat(images, 1),
                               torch.arange(0, 3 * images, 3), backbone.mask_grid(settings),
                               backbone.capture_mode)
    cond = backbone.encode_rows(texts, settings).rows(images)
    step = run.num_steps // 2

    def forward():
        with torch.no_grad():
            return backbone.forward(run.scheduler_at(step), latents, run.timesteps[step], cond,
                                    settings)

    return backbone, capture, forward, (index, weight)


@pytest.mark.parametrize("kind", ["sd", "sdxl", "flux"])
def test_capture_keeps_the_denoiser_output(kind: str) -> None:
    backbone, capture, forward, _ = _forward_inputs(kind)
    plain = forward()
    with capture.installed(backbone.denoiser):
        captured = forward()
    torch.testing.assert_close(captured, plain, rtol=1e-5, atol=1e-5)
    assert capture.map_layers > 0 and capture.kept


@pytest.mark.parametrize("kind", ["sd", "flux"])
def test_one_shared_processor_then_restored(kind: str) -> None:
    backbone, capture, _, _ = _forward_inputs(kind)
    model = backbone.denoiser
    saved = dict(model.attn_processors)
    with capture.installed(model):
        assert all(p is capture for p in model.attn_processors.values())
    assert all(model.attn_processors[n] is p for n, p in saved.items())


def test_restored_when_the_model_raises() -> None:
    backbone, capture, forward, _ = _forward_inputs("sd")
    model = backbone.denoiser
    saved = dict(model.attn_processors)

    def explode(module, args, kwargs):
        raise RuntimeError("boom")

    handle = model.mid_block.register_forward_pre_hook(explode, with_kwargs=True)
    try:
        with pytest.raises(RuntimeError, match="boom"):
            with capture.installed(model):
                forward()
    finally:
        handle.remove()
    assert all(model.attn_processors[n] is p for n, p in saved.items())


def test_constant_memory_and_finest_self_attention_only() -> None:
    backbone, capture, forward, _ = _forward_inputs("sdxl", images=2)
    with capture.installed(backbone.denoiser):
        forward()
    cross = [n for n in capture.layers_seen if n.endswith("attn2")]
    assert capture.map_layers == len(cross) == 5
    assert capture.map_sum.shape == (6, 1, 8, 8)  # one running sum: 3 prompts x 2 images
    # SDXL-like: attention at 8x8 (down/up) and 4x4 (mid); only the 8x8 attn1 layers are kept
    finest = [n for n in capture.layers_seen if n.endswith("attn1") and "mid_block" not in n]
    assert [k.name for k in capture.kept] == finest
    assert len(finest) == 3 and all(k.query.shape[0] == 2 and k.query.shape[2] == 64 for k in capture.kept)


def test_flux_keeps_image_queries_against_all_keys() -> None:
    backbone, capture, forward, _ = _forward_inputs("flux", images=1)
    with capture.installed(backbone.denoiser):
        forward()
    assert [k.name for k in capture.kept] == ["transformer_blocks.0.attn"]  # double stream only
    kept = capture.kept[0]
    assert kept.text_len == 64 and kept.query.shape[2] == 16 and kept.key.shape[2] == 64 + 16
    assert capture.cross_maps().shape == (3, 4, 4)


def _naive_probabilities(model, forward):
    """Full softmax probabilities of every attention layer, from the layers' own inputs."""
    inputs = {}

    def grab(name):
        def hook(module, args, kwargs):
            hidden = args[0] if args else kwargs["hidden_states"]
            inputs[name] = (module, hidden, kwargs.get("encoder_hidden_states"))
        return hook

    handles = [model.get_submodule(n[: -len(".processor")]).register_forward_pre_hook(
        grab(n[: -len(".processor")]), with_kwargs=True) for n in model.attn_processors]
    try:
        forward()
    finally:
        for h in handles:
            h.remove()
    probs = {}
    for name, (attn, hidden, context) in inputs.items():
        with torch.no_grad():
            q = attn.to_q(hidden).double()
            k = attn.to_k(hidden if context is None else context).double()
        heads = attn.heads
        q = q.view(q.shape[0], q.shape[1], heads, -1).transpose(1, 2)
        k = k.view(k.shape[0], k.shape[1], heads, -1).transpose(1, 2)
        probs[name] = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]), dim=-1)
    return probs


def test_maps_and_propagation_match_full_attention() -> None:
    backbone, capture, forward, (index, weight) = _forward_inputs("sd", images=2)
    probs = _naive_probabilities(backbone.denoiser, forward)
    with capture.installed(backbone.denoiser):
        forward()
    w = (weight / weight.sum(1, keepdim=True)).double().repeat(2, 1)
    idx = index.repeat(2, 1)
    expected = []
    for name, p in probs.items():
        if name.endswith("attn2"):
            mean = p.mean(1)  # (R, Lq, 77)
            tokens = torch.gather(mean, 2, idx[:, None].expand(-1, mean.shape[1], -1))
            side = int(math.isqrt(mean.shape[1]))
            per_row = (tokens * w[:, None]).sum(-1).view(-1, 1, side, side)
            expected.append(F.interpolate(per_row, size=(8, 8), mode="bilinear", align_corners=False))
    expected = torch.stack(expected).mean(0)[:, 0]
    torch.testing.assert_close(capture.cross_maps().double(), expected, rtol=1e-4, atol=1e-6)

    columns = torch.randn(2, 64, 2, generator=torch.Generator().manual_seed(1))
    finest = [p[0::3].mean(1) for n, p in probs.items() if n.endswith("attn1") and p.shape[-1] == 64]
    assert len(finest) == 3  # down_blocks.0 (1) and up_blocks.1 (2) at 8x8
    want = torch.stack([a @ columns.double() for a in finest]).mean(0)
    torch.testing.assert_close(capture.propagate(columns).double(), want, rtol=1e-4, atol=1e-6)
