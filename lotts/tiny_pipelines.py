"""Tiny, offline diffusers pipelines: the real SD2.1-, SDXL- and FLUX-like classes with tiny
random weights, built in well under a second.

Machines without a model hub still need real pipeline classes (attention processors,
schedulers, tokenizers): ``lotts bench --scale tiny`` and the tests build on these; the
real-size benchmark borrows their tokenizers and schedulers.
"""
from __future__ import annotations

import os
from typing import Any

import torch

from lotts.offline_tokenizers import CLIP_EOS, clip_tokenizer, t5_tokenizer

__all__ = [
    "KINDS",
    "SCHEDULERS",
    "build_tiny_pipeline",
    "pipeline_class",
    "save_tiny_pipeline",
    "tiny_call_kwargs",
]

KINDS = ("sd", "sdxl", "flux")
SCHEDULERS = ("ddim", "euler", "dpm++", "pndm", "flow-euler")


# --------------------------------------------------------------------------------------------
# Pipelines
# --------------------------------------------------------------------------------------------
def pipeline_class(kind: str) -> type:
    """The diffusers pipeline class for ``kind`` (for ``from_pretrained`` in tests)."""
    from diffusers import (
        FluxPipeline,
        StableDiffusionPipeline,
        StableDiffusionXLPipeline,
    )

    classes = {
        "sd": StableDiffusionPipeline,
        "sdxl": StableDiffusionXLPipeline,
        "flux": FluxPipeline,
    }
    if kind not in classes:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    return classes[kind]


def tiny_call_kwargs(kind: str) -> dict[str, Any]:
    """Call arguments that make a tiny pipeline run fast (64x64, 2 steps)."""
    kw: dict[str, Any] = {"height": 64, "width": 64, "num_inference_steps": 2}
    if kind == "flux":
        kw.update(max_sequence_length=64, guidance_scale=3.5)
    elif kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    return kw


def _vae(kind: str):
    from diffusers import AutoencoderKL

    common: dict[str, Any] = {
        "in_channels": 3,
        "out_channels": 3,
        "down_block_types": ("DownEncoderBlock2D",) * 4,
        "up_block_types": ("UpDecoderBlock2D",) * 4,
        "block_out_channels": (8, 16, 32, 32),
        "layers_per_block": 1,
        "norm_num_groups": 8,
        "sample_size": 64,
    }
    if kind == "flux":
        common.update(
            latent_channels=16,
            scaling_factor=0.3611,
            shift_factor=0.1159,
            use_quant_conv=False,
            use_post_quant_conv=False,
        )
    else:
        common.update(latent_channels=4, scaling_factor=0.18215 if kind == "sd" else 0.13025)
    return AutoencoderKL(**common)


def _clip_text_model(with_projection: bool, pad_token_id: int, hidden_act: str):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    config = CLIPTextConfig(
        vocab_size=49408,
        hidden_size=32,
        intermediate_size=37,
        projection_dim=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=77,
        hidden_act=hidden_act,
        layer_norm_eps=1e-5,
        bos_token_id=49406,
        eos_token_id=49407,  # pooled output = hidden state at the first <|endoftext|>
        pad_token_id=pad_token_id,
    )
    cls = CLIPTextModelWithProjection if with_projection else CLIPTextModel
    return cls(config)


def _t5_encoder(vocab_size: int):
    from transformers import T5Config, T5EncoderModel

    config = T5Config(
        vocab_size=vocab_size,
        d_model=32,
        d_kv=8,
        d_ff=37,
        num_layers=2,
        num_heads=4,
        relative_attention_num_buckets=8,
        relative_attention_max_distance=32,
        dropout_rate=0.0,
        feed_forward_proj="gated-gelu",  # T5 v1.1 / T5-XXL as used by FLUX
        is_encoder_decoder=False,
        pad_token_id=0,
        eos_token_id=1,
        decoder_start_token_id=0,
    )
    return T5EncoderModel(config)


def _unet(kind: str):
    from diffusers import UNet2DConditionModel

    config: dict[str, Any] = {
        "sample_size": 8,
        "in_channels": 4,
        "out_channels": 4,
        "block_out_channels": (32, 64),
        "down_block_types": ("CrossAttnDownBlock2D", "DownBlock2D"),
        "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D"),
        "layers_per_block": 1,
        "norm_num_groups": 8,
        "cross_attention_dim": 32,
        "attention_head_dim": (2, 4),
        "use_linear_projection": True,
    }
    if kind == "sdxl":
        config.update(
            cross_attention_dim=64,
            addition_embed_type="text_time",
            addition_time_embed_dim=8,
            projection_class_embeddings_input_dim=80,  # 6 time ids * 8 + pooled text 32
            transformer_layers_per_block=(1, 2),
        )
    return UNet2DConditionModel(**config)


def _default_scheduler(kind: str):
    from diffusers import (
        DDIMScheduler,
        EulerDiscreteScheduler,
        FlowMatchEulerDiscreteScheduler,
    )

    if kind == "sd":  # stabilityai/stable-diffusion-2-1 scheduler_config.json
        return DDIMScheduler(
            num_train_timesteps=1000,
            beta_start=0.00085,
            beta_end=0.012,
            beta_schedule="scaled_linear",
            clip_sample=False,
            set_alpha_to_one=False,
            steps_offset=1,
            prediction_type="v_prediction",
        )
    if kind == "sdxl":  # stabilityai/stable-diffusion-xl-base-1.0 scheduler_config.json
        return EulerDiscreteScheduler(
            num_train_timesteps=1000,
            beta_start=0.00085,
            beta_end=0.012,
            beta_schedule="scaled_linear",
            interpolation_type="linear",
            prediction_type="epsilon",
            steps_offset=1,
            timestep_spacing="leading",
            use_karras_sigmas=False,
        )
    # black-forest-labs/FLUX.1-dev scheduler_config.json
    return FlowMatchEulerDiscreteScheduler(
        num_train_timesteps=1000,
        shift=3.0,
        use_dynamic_shifting=True,
        base_shift=0.5,
        max_shift=1.15,
        base_image_seq_len=256,
        max_image_seq_len=4096,
    )


def _check_scheduler(kind: str, name: str) -> None:
    if name not in SCHEDULERS:
        raise ValueError(f"scheduler must be one of {SCHEDULERS}, got {name!r}")
    if (kind == "flux") != (name == "flow-euler"):
        # FLUX needs flow matching (sigmas + dynamic shift); the UNets need DDPM-style ones.
        raise ValueError(f"scheduler {name!r} does not fit a {kind!r} pipeline")


def _swap_scheduler(kind: str, default, name: str):
    from diffusers import (
        DDIMScheduler,
        DPMSolverMultistepScheduler,
        EulerDiscreteScheduler,
        FlowMatchEulerDiscreteScheduler,
        PNDMScheduler,
    )

    _check_scheduler(kind, name)
    cls, extra = {
        "ddim": (DDIMScheduler, {}),
        "euler": (EulerDiscreteScheduler, {}),
        "dpm++": (
            DPMSolverMultistepScheduler,
            {"algorithm_type": "dpmsolver++", "solver_order": 2},
        ),
        "pndm": (PNDMScheduler, {"skip_prk_steps": True}),
        "flow-euler": (FlowMatchEulerDiscreteScheduler, {}),
    }[name]
    return cls.from_config(default.config, **extra)


def build_tiny_pipeline(kind: str, seed: int = 0, scheduler: str | None = None):
    """A random-weight SD2.1-, SDXL- or FLUX-like pipeline (float32, CPU, eval mode).

    Uses the real pipeline, model and scheduler classes, so LoTTS' hooks see the same module
    names and call paths as with real checkpoints, but runs offline in well under a second at
    64x64. ``kind`` is "sd", "sdxl" or "flux"; ``seed`` fixes the weights without touching the
    caller's RNG state; ``scheduler`` swaps the default ("ddim" for sd, "euler" for sdxl,
    "flow-euler" for flux) for another of ``SCHEDULERS`` that fits the model.
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    if scheduler is not None:
        _check_scheduler(kind, scheduler)
    # Tokenizers use no RNG; only the weights are built under the forked, seeded RNG.
    tokenizers = {
        "sd": lambda: {"tokenizer": clip_tokenizer(pad_token="!")},
        "sdxl": lambda: {
            "tokenizer": clip_tokenizer(pad_token=CLIP_EOS),
            "tokenizer_2": clip_tokenizer(pad_token="!"),
        },
        "flux": lambda: {
            "tokenizer": clip_tokenizer(pad_token=CLIP_EOS),
            "tokenizer_2": t5_tokenizer(),
        },
    }[kind]()

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        vae = _vae(kind)
        if kind == "sd":
            # SD 2.x text encoder (OpenCLIP ViT-H) uses gelu; pad "!" = id 0.
            components = {
                "vae": vae,
                "text_encoder": _clip_text_model(False, pad_token_id=0, hidden_act="gelu"),
                "unet": _unet(kind),
                "safety_checker": None,
                "feature_extractor": None,
                "requires_safety_checker": False,
            }
        elif kind == "sdxl":
            components = {
                "vae": vae,
                "text_encoder": _clip_text_model(
                    False, pad_token_id=49407, hidden_act="quick_gelu"
                ),
                "text_encoder_2": _clip_text_model(True, pad_token_id=0, hidden_act="gelu"),
                "unet": _unet(kind),
                "add_watermarker": False,
            }
        else:
            from diffusers import FluxTransformer2DModel

            components = {
                "vae": vae,
                "text_encoder": _clip_text_model(
                    False, pad_token_id=49407, hidden_act="quick_gelu"
                ),
                "text_encoder_2": _t5_encoder(len(tokenizers["tokenizer_2"])),
                "transformer": FluxTransformer2DModel(
                    patch_size=1,
                    in_channels=64,
                    num_layers=1,
                    num_single_layers=2,
                    attention_head_dim=16,
                    num_attention_heads=2,
                    joint_attention_dim=32,
                    pooled_projection_dim=32,
                    guidance_embeds=True,
                    axes_dims_rope=(4, 6, 6),
                ),
            }

    sched = _default_scheduler(kind)
    if scheduler is not None:
        sched = _swap_scheduler(kind, sched, scheduler)
    pipe = pipeline_class(kind)(scheduler=sched, **tokenizers, **components)
    for module in pipe.components.values():
        if isinstance(module, torch.nn.Module):
            module.eval()  # fresh modules start in training mode (T5 dropout)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def save_tiny_pipeline(kind: str, path: str | os.PathLike, **kw: Any) -> str:
    """Build a tiny pipeline and ``save_pretrained`` it to ``path``; returns ``path`` as str.

    Tests then exercise the real loading path:
    ``pipeline_class(kind).from_pretrained(path, local_files_only=True)``.
    ``kw`` goes to :func:`build_tiny_pipeline` (``seed``, ``scheduler``).
    """
    path = os.fspath(path)
    build_tiny_pipeline(kind, **kw).save_pretrained(path, safe_serialization=True)
    return path
