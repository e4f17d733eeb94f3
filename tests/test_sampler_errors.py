"""Bad input gives a clear error and leaves the pipeline as it was."""
from __future__ import annotations

import pytest
import torch

from lotts import LoTTS, LoTTSConfig, best_of_n
from tests.test_sampler_support import (
    PROMPT,
    RowCounter,
    _one_thread,  # noqa: F401 (autouse fixture)
    assert_unchanged,
    brightness,
    call_kwargs,
    shared_pipeline,
    snapshot,
)

SMALL = LoTTSConfig(num_seeds=2, num_refinements=2)


@pytest.fixture()
def sd_pipe():
    pipe = shared_pipeline("sd")
    before = snapshot(pipe)
    yield pipe
    assert_unchanged(pipe, before)


def test_unsupported_pipeline_names_the_supported_ones() -> None:
    from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel

    pipe = DDPMPipeline(UNet2DModel(sample_size=8, block_out_channels=(8, 8), norm_num_groups=4,
                                    down_block_types=("DownBlock2D",) * 2,
                                    up_block_types=("UpBlock2D",) * 2), DDPMScheduler())
    for bad in (pipe, object()):
        with pytest.raises(NotImplementedError) as info:
            LoTTS(bad, brightness)
        message = str(info.value)
        assert all(name in message for name in ("StableDiffusionPipeline",
                                                "StableDiffusionXLPipeline", "FluxPipeline"))


@pytest.mark.parametrize("prompt", ["", "   ", [], [PROMPT, ""], None])
def test_empty_prompt(sd_pipe, prompt) -> None:
    with pytest.raises(ValueError, match="prompt"):
        LoTTS(sd_pipe, brightness, SMALL)(prompt, **call_kwargs("sd"))


def test_t0_beyond_the_schedule_touches_nothing(sd_pipe) -> None:
    counter = RowCounter(sd_pipe.unet)
    try:
        with pytest.raises(ValueError, match="t0"):
            LoTTS(sd_pipe, brightness, LoTTSConfig(t0=4))(PROMPT, **call_kwargs("sd"))
        with pytest.raises(ValueError, match="global_steps"):
            LoTTS(sd_pipe, brightness, LoTTSConfig(t0=2, global_steps=3))(PROMPT, **call_kwargs("sd"))
    finally:
        counter.close()
    assert counter.rows == 0


@pytest.mark.parametrize("kwargs,match", [
    ({"output_type": "pil"}, "output_type"), ({"latents": torch.zeros(1)}, "latents"),
    ({"num_inference_steps": 0}, "num_inference_steps")])
def test_unsupported_or_bad_pipeline_arguments(sd_pipe, kwargs, match) -> None:
    with pytest.raises(ValueError, match=match):
        LoTTS(sd_pipe, brightness, SMALL)(PROMPT, **{**call_kwargs("sd"), **kwargs})


def test_bad_runner_arguments(sd_pipe) -> None:
    with pytest.raises(ValueError, match="verifier"):
        LoTTS(sd_pipe)
    with pytest.raises(TypeError, match="LoTTSConfig"):
        LoTTS(sd_pipe, brightness, config={"num_seeds": 3})
    with pytest.raises(ValueError, match="seed"):
        LoTTS(sd_pipe, brightness, SMALL)(PROMPT, seed=-1, **call_kwargs("sd"))
    with pytest.raises(ValueError, match="n must"):
        best_of_n(sd_pipe, PROMPT, 0, brightness)
    with pytest.raises(ValueError, match="latents"):
        LoTTS(sd_pipe, brightness, SMALL).refine(torch.zeros(1, 4, 8, 9), PROMPT,
                                                 **call_kwargs("sd"))


@pytest.mark.parametrize("scores,match", [
    (lambda n: torch.zeros(n + 1), "shape|scores"),
    (lambda n: torch.full((n,), float("nan")), "finite"),
    (lambda n: torch.zeros(n, 2), "shape|scores")])
def test_bad_verifier_output(sd_pipe, scores, match) -> None:
    def verifier(images, prompts):
        return scores(len(images))

    with pytest.raises(ValueError, match=match):
        LoTTS(sd_pipe, verifier, SMALL)(PROMPT, **call_kwargs("sd"))


def test_verifier_that_raises(sd_pipe) -> None:
    calls = []

    def flaky(images, prompts):
        calls.append(len(images))
        if len(calls) == 2:  # after the originals, while scoring refinements
            raise RuntimeError("verifier crashed")
        return torch.zeros(len(images))

    with pytest.raises(RuntimeError, match="verifier crashed"):
        LoTTS(sd_pipe, flaky, SMALL)(PROMPT, **call_kwargs("sd"))


def test_denoiser_that_raises_mid_localization(sd_pipe) -> None:
    def explode(module, args, kwargs):
        if args[0].shape[0] == 3 * SMALL.num_seeds:  # the localization batch
            installed = {id(p) for p in sd_pipe.unet.attn_processors.values()}
            assert len(installed) == 1  # the capture is in place when it fails
            raise RuntimeError("denoiser crashed")

    handle = sd_pipe.unet.mid_block.register_forward_pre_hook(explode, with_kwargs=True)
    try:
        with pytest.raises(RuntimeError, match="denoiser crashed"):
            LoTTS(sd_pipe, brightness, SMALL)(PROMPT, **call_kwargs("sd"))
    finally:
        handle.remove()


def test_refine_needs_one_prompt_and_an_image(sd_pipe) -> None:
    runner = LoTTS(sd_pipe, brightness, SMALL)
    with pytest.raises(ValueError, match="one prompt"):
        runner.refine(torch.zeros(1, 4, 8, 8), [PROMPT, PROMPT])
    with pytest.raises(TypeError, match="PIL image"):
        runner.refine("image.png", PROMPT)
