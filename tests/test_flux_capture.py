"""FLUX capture: contiguous inputs to the ops, bounded q/k (the blocks that feed eq. (2)), the
capture's peak memory in the cost, and the execution device read once per run."""
from __future__ import annotations

import pytest
import torch

import lotts.attention_capture as capture_module
from lotts import LoTTS, LoTTSConfig
from lotts.attention_capture import AttentionCapture
from tests.test_sampler_support import (
    PROMPT,
    _one_thread,  # noqa: F401 (autouse fixture)
    brightness,
    call_kwargs,
    shared_pipeline,
)

CONFIG = LoTTSConfig(num_seeds=2, num_refinements=1)


def test_flux_capture_hands_the_ops_contiguous_bhld_tensors(monkeypatch):
    seen = []
    original = capture_module.attention_with_token_maps

    def checking(q, k, v, index):
        seen.append(all(x.is_contiguous() for x in (q, k, v)))
        return original(q, k, v, index)

    monkeypatch.setattr(capture_module, "attention_with_token_maps", checking)
    LoTTS(shared_pipeline("flux"), brightness, CONFIG)(PROMPT, **call_kwargs("flux"))
    assert seen and all(seen)  # was: transposed (B, H, L, D) views of (B, L, H, D) projections


def test_capture_peak_memory_is_the_kept_query_and_key_bytes():
    pipe = shared_pipeline("flux")
    result = LoTTS(pipe, brightness, CONFIG)(PROMPT, **call_kwargs("flux"))
    config = pipe.transformer.config
    kwargs = call_kwargs("flux")
    image_tokens = (kwargs["height"] // 16) * (kwargs["width"] // 16)
    text_tokens = kwargs["max_sequence_length"]
    heads, dim = config.num_attention_heads, config.attention_head_dim
    per_block = CONFIG.num_seeds * heads * dim * (image_tokens + text_tokens + image_tokens) * 4
    assert result.cost.capture_peak_bytes == config.num_layers * per_block  # float32 q, k


def test_self_attention_blocks_select_the_double_stream_blocks_kept():
    capture = AttentionCapture(torch.zeros(1, 1, dtype=torch.int64), torch.ones(1, 1),
                               torch.zeros(1, dtype=torch.int64), (2, 2), "flux", (15, 18))
    assert [capture._feeds_self_attention(f"transformer_blocks.{i}.attn") for i in (14, 15, 18, 19)] \
        == [False, True, True, False]
    assert not capture._feeds_self_attention("single_transformer_blocks.16.attn")
    pipe = shared_pipeline("flux")  # one double-stream block: index 0
    every = LoTTS(pipe, brightness, CONFIG)(PROMPT, **call_kwargs("flux"))
    first = LoTTS(pipe, brightness, CONFIG.with_overrides(self_attention_blocks=(0, 0)))(
        PROMPT, **call_kwargs("flux"))
    assert all(torch.equal(a.latents, b.latents) for a, b in zip(every.candidates, first.candidates))
    with pytest.raises(RuntimeError, match=r"self_attention_blocks \(3, 5\)"):
        LoTTS(pipe, brightness, CONFIG.with_overrides(self_attention_blocks=(3, 5)))(
            PROMPT, **call_kwargs("flux"))


def test_self_attention_blocks_are_refused_on_a_unet_and_validated():
    with pytest.raises(ValueError, match="FLUX double-stream"):
        LoTTS(shared_pipeline("sd"), brightness, CONFIG.with_overrides(
            self_attention_blocks=(0, 1)))(PROMPT, **call_kwargs("sd"))
    with pytest.raises(ValueError, match="first <= last"):
        LoTTSConfig(self_attention_blocks=(4, 2))


@pytest.mark.parametrize("kind", ["sd", "flux"])
def test_the_execution_device_is_resolved_once_per_run(kind, monkeypatch):
    """``pipe._execution_device`` walks every module (74 ms on a real pipeline): LoTTS' own code
    reads it once per call, however many steps and refinements follow."""
    pipe = shared_pipeline(kind)
    prop = type(pipe)._execution_device
    reads = []

    def counted(self):
        import sys

        caller = sys._getframe(1).f_globals.get("__name__", "")
        reads.append(caller)
        return prop.fget(self)

    monkeypatch.setattr(type(pipe), "_execution_device", property(counted))
    LoTTS(pipe, brightness, LoTTSConfig(num_seeds=2, num_refinements=2))(
        PROMPT, **call_kwargs(kind))
    ours = [name for name in reads if name.startswith("lotts")]
    assert len(ours) == 1, ours
