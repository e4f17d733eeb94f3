"""Shared helpers of the sampler tests (tiny pipelines loaded from disk, plain verifiers), and
checks of the helpers themselves."""
from __future__ import annotations

import atexit
import shutil
import tempfile
from functools import cache
from typing import Any

import numpy as np
import pytest
import torch

from lotts.tiny_pipelines import pipeline_class, save_tiny_pipeline, tiny_call_kwargs

PROMPT = "a kitten playing with yarn"
STEPS = 4
_ROOT = tempfile.mkdtemp(prefix="lotts-sampler-tests-")
atexit.register(shutil.rmtree, _ROOT, ignore_errors=True)


@cache
def saved_pipeline(kind: str, scheduler: str | None = None) -> str:
    """A tiny pipeline saved once per session; load it with :func:`load_pipeline`."""
    return save_tiny_pipeline(kind, f"{_ROOT}/{kind}-{scheduler}", scheduler=scheduler)


def load_pipeline(kind: str, scheduler: str | None = None):
    """A fresh pipeline through the real loading path (``from_pretrained``, offline)."""
    pipe = pipeline_class(kind).from_pretrained(saved_pipeline(kind, scheduler), local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@cache
def shared_pipeline(kind: str, scheduler: str | None = None):
    """One loaded pipeline per kind, shared by tests that leave it as found."""
    return load_pipeline(kind, scheduler)


def call_kwargs(kind: str, steps: int = STEPS) -> dict[str, Any]:
    kwargs = tiny_call_kwargs(kind)
    kwargs["num_inference_steps"] = steps
    return kwargs


def brightness(images, prompts) -> torch.Tensor:
    """A plain verifier: mean pixel value (higher is better)."""
    return torch.tensor([float(np.asarray(im, dtype=np.float32).mean()) for im in images])


def red_minus_blue(images, prompts) -> torch.Tensor:
    """A second plain verifier, a fixed linear function of pixels (for report_with)."""
    values = [np.asarray(im, dtype=np.float32) for im in images]
    return torch.tensor([float(v[..., 0].mean() - v[..., 2].mean()) for v in values])


def denoiser(pipe) -> torch.nn.Module:
    return pipe.transformer if hasattr(pipe, "transformer") and pipe.transformer is not None else pipe.unet


class RowCounter:
    """Independent NFE count: rows entering the denoiser, from a hook this test owns."""

    def __init__(self, module: torch.nn.Module) -> None:
        self.rows = 0
        self.handle = module.register_forward_pre_hook(self._count, with_kwargs=True)

    def _count(self, module, args, kwargs) -> None:
        sample = args[0] if args else kwargs.get("hidden_states", kwargs.get("sample"))
        self.rows += sample.shape[0]

    def close(self) -> None:
        self.handle.remove()


def snapshot(pipe) -> dict[str, Any]:
    """What LoTTS must leave as found."""
    model = denoiser(pipe)
    return {
        "processors": dict(model.attn_processors),
        "scheduler": pipe.scheduler,
        "scheduler_config": dict(pipe.scheduler.config),
        "scheduler_state": {k: v for k, v in vars(pipe.scheduler).items()
                            if isinstance(v, (int, float, str, type(None)))},
        "pre_hooks": len(model._forward_pre_hooks),
        "hooks": len(model._forward_hooks),
        "dtype": model.dtype,
        "device": model.device,
    }


def assert_unchanged(pipe, before: dict[str, Any]) -> None:
    after = snapshot(pipe)
    assert after["processors"].keys() == before["processors"].keys()
    for name, proc in before["processors"].items():
        assert after["processors"][name] is proc, f"processor of {name} was not restored"
    for key in ("scheduler", "pre_hooks", "hooks", "dtype", "device"):
        assert after[key] == before[key] if key != "scheduler" else after[key] is before[key], key
    assert after["scheduler_config"] == before["scheduler_config"]
    assert after["scheduler_state"] == before["scheduler_state"]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models: threads cost more than they give on the shared 2-core CI machine."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def test_loaded_pipeline_is_offline_and_real_class() -> None:
    from diffusers import StableDiffusionPipeline

    pipe = shared_pipeline("sd")
    assert isinstance(pipe, StableDiffusionPipeline)
    assert pipe.tokenizer("high-quality").input_ids[1:4] == [1400, 268, 3027]  # real CLIP ids


def test_row_counter_counts_guided_rows() -> None:
    pipe = shared_pipeline("sd")
    counter = RowCounter(pipe.unet)
    try:
        pipe(PROMPT, output_type="latent", **call_kwargs("sd", steps=2))
    finally:
        counter.close()
    assert counter.rows == 2 * 2  # two steps, guided: 2 rows each
