"""The offline tiny pipelines (``lotts.tiny_pipelines``) and tokenizers
(``lotts.offline_tokenizers``) that other tests build on."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from lotts.offline_tokenizers import clip_tokenizer, t5_tokenizer
from lotts.tiny_pipelines import KINDS, build_tiny_pipeline, pipeline_class, tiny_call_kwargs
from tools.train_t5_vocab import train_t5_unigram_vocab

PROMPT = "A high-quality image of a cat."
LATENT_SHAPES = {"sd": (1, 4, 8, 8), "sdxl": (1, 4, 8, 8), "flux": (1, 16, 64)}


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models: threading overhead dominates, and CI's 2 cores are shared (~2x faster)."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def _run(pipe, kind: str, seed: int = 1, output_type: str = "latent") -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    out = pipe(PROMPT, generator=gen, output_type=output_type, **tiny_call_kwargs(kind))
    return out.images


# ----- tokenizers ---------------------------------------------------------------------------


def test_clip_tokenizer_matches_real_clip_ids() -> None:
    tok = clip_tokenizer()
    assert len(tok) == 49408
    assert tok("a photo of a cat").input_ids == [
        49406,
        320,
        1125,
        539,
        320,
        2368,
        49407,
    ]
    ids = tok(PROMPT).input_ids
    assert ids == [49406, 320, 1400, 268, 3027, 2867, 539, 320, 2368, 269, 49407]
    assert tok.convert_ids_to_tokens(ids[2:5]) == ["high</w>", "-</w>", "quality</w>"]
    assert tok("a low-quality photo").input_ids[2] == 1042  # "low</w>"


@pytest.mark.parametrize("pad, pad_id", [("<|endoftext|>", 49407), ("!", 0)])
def test_clip_tokenizer_padding(pad: str, pad_id: int) -> None:
    tok = clip_tokenizer(max_length=77, pad_token=pad)
    ids = tok("a cat", padding="max_length", max_length=tok.model_max_length).input_ids
    assert tok.model_max_length == 77 and len(ids) == 77
    assert ids[:4] == [49406, 320, 2368, 49407] and set(ids[4:]) == {pad_id}


def test_t5_tokenizer_special_ids_and_padding() -> None:
    tok = t5_tokenizer()
    assert (tok.pad_token_id, tok.eos_token_id, tok.unk_token_id) == (0, 1, 2)
    ids = tok(PROMPT, padding="max_length", max_length=64).input_ids
    assert len(ids) == 64
    n = ids.index(1)
    assert n > 3 and set(ids[n + 1 :]) == {0} and 2 not in ids[:n]
    assert tok.decode(ids, skip_special_tokens=True) == PROMPT


def test_t5_vocab_asset_matches_training() -> None:
    # Unigram training is not bit-reproducible (ties, float noise): compare piece sets loosely.
    trained = {p for p, _ in train_t5_unigram_vocab()}
    shipped = set(t5_tokenizer().get_vocab())
    assert len(trained & shipped) >= 0.9 * len(shipped)


# ----- pipelines ----------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_build_runs_eval_float32_cpu(kind: str) -> None:
    pipe = build_tiny_pipeline(kind)
    assert isinstance(pipe, pipeline_class(kind))
    for name, module in pipe.components.items():
        if isinstance(module, torch.nn.Module):
            assert not any(m.training for m in module.modules()), name
            assert {p.dtype for p in module.parameters()} == {torch.float32}, name
            assert {p.device.type for p in module.parameters()} == {"cpu"}, name
    seen: list[torch.Size] = []

    def record(pipe, step, timestep, callback_kwargs):
        seen.append(callback_kwargs["latents"].shape)
        return callback_kwargs

    images = pipe(
        PROMPT,
        generator=torch.Generator().manual_seed(1),
        output_type="np",
        callback_on_step_end=record,
        **tiny_call_kwargs(kind),
    ).images
    assert images.shape == (1, 64, 64, 3) and np.isfinite(images).all()
    assert [tuple(s) for s in seen] == [LATENT_SHAPES[kind]] * 2


@pytest.mark.parametrize("kind", KINDS)
def test_save_reload_round_trip(kind: str, tiny_pipelines, load_tiny_pipeline) -> None:
    built = build_tiny_pipeline(kind)
    path = tiny_pipelines[kind]
    loaded = pipeline_class(kind).from_pretrained(path, local_files_only=True)
    loaded.set_progress_bar_config(disable=True)
    assert type(loaded.scheduler) is type(built.scheduler)
    for name, module in loaded.components.items():
        if isinstance(module, torch.nn.Module):
            assert not any(m.training for m in module.modules()), name
            ref = built.components[name].state_dict()
            assert all(torch.equal(t, ref[k]) for k, t in module.state_dict().items()), name
    for name in ("tokenizer", "tokenizer_2"):
        if hasattr(built, name):
            a, b = getattr(built, name), getattr(loaded, name)
            assert a(PROMPT).input_ids == b(PROMPT).input_ids and a.pad_token == b.pad_token
    # Weights are equal; mmap-loaded tensors may sit at other alignments, so BLAS can round
    # differently in the last bits (seen for SDXL's pooled projection): allow float noise.
    torch.testing.assert_close(_run(loaded, kind), _run(built, kind), atol=1e-5, rtol=1e-4)
    # Two loads of one directory are bitwise identical.
    assert torch.equal(_run(load_tiny_pipeline(kind), kind), _run(loaded, kind))


@pytest.mark.parametrize("kind", KINDS)
def test_deterministic_and_rng_untouched(kind: str) -> None:
    torch.manual_seed(1234)
    random.seed(5)
    np.random.seed(5)
    states = (torch.get_rng_state(), random.getstate(), np.random.get_state()[1].copy())
    a, b = build_tiny_pipeline(kind, seed=0), build_tiny_pipeline(kind, seed=0)
    c = build_tiny_pipeline(kind, seed=1)
    assert torch.equal(torch.get_rng_state(), states[0])
    assert random.getstate() == states[1] and (np.random.get_state()[1] == states[2]).all()
    denoiser = "transformer" if kind == "flux" else "unet"
    sa, sb, sc = (getattr(p, denoiser).state_dict() for p in (a, b, c))
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)
    assert torch.equal(_run(a, kind), _run(b, kind))
    assert not torch.equal(_run(a, kind), _run(a, kind, seed=2))


@pytest.mark.parametrize("name", ["ddim", "euler", "dpm++", "pndm"])
def test_scheduler_swap_sd(name: str) -> None:
    pipe = build_tiny_pipeline("sd", scheduler=name)
    assert pipe.scheduler.config.prediction_type == "v_prediction"
    latents = _run(pipe, "sd")
    assert tuple(latents.shape) == LATENT_SHAPES["sd"] and torch.isfinite(latents).all()


def test_invalid_arguments() -> None:
    with pytest.raises(ValueError, match="kind"):
        build_tiny_pipeline("sd3")
    with pytest.raises(ValueError, match="does not fit"):
        build_tiny_pipeline("flux", scheduler="ddim")
    with pytest.raises(ValueError, match="does not fit"):
        build_tiny_pipeline("sdxl", scheduler="flow-euler")
    with pytest.raises(ValueError, match="scheduler must be"):
        build_tiny_pipeline("sd", scheduler="lms")
