"""Backbone adapters: what LoTTS needs from SD 1.x/2.x, SDXL and FLUX pipelines.

Base generation runs the pipeline's own ``__call__``; refinements and the localization forward
drive the pipeline's own components the way its ``__call__`` does (``encode_prompt``,
``retrieve_timesteps``, ``scale_model_input``, its guidance convention, ``scheduler.step``).
One denoising loop (:meth:`Run.denoise`) serves every backbone; each adapter supplies the
per-family pieces: prompt encoding, one denoiser forward, guidance, VAE decode/encode and the
grid on which masks live.
"""
from __future__ import annotations

import copy
import inspect
import math
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Optional, Sequence

import numpy as np
import torch
from PIL import Image

SUPPORTED_PIPELINES = ("StableDiffusionPipeline (SD 1.x, SD 2.x)", "StableDiffusionXLPipeline",
                       "FluxPipeline")
# Schedulers without ``set_begin_index`` whose step depends only on the timestep it is given.
_STATELESS_SCHEDULERS = ("DDIMScheduler", "DDPMScheduler", "DDIMParallelScheduler",
                         "DDPMParallelScheduler")
_COMMON_KWARGS = frozenset({"num_inference_steps", "guidance_scale", "height", "width",
                            "negative_prompt", "callback_on_step_end",
                            "callback_on_step_end_tensor_inputs"})


# ----- settings and conditioning -------------------------------------------------------------
@dataclass
class Settings:
    """Call arguments of one run, resolved with the pipeline's own defaults."""

    height: int
    width: int
    num_inference_steps: int
    guidance_scale: float
    do_cfg: bool
    device: torch.device
    dtype: torch.dtype
    passthrough: dict[str, Any] = field(default_factory=dict)  # to __call__ as given
    options: dict[str, Any] = field(default_factory=dict)  # what the adapter's forward reads
    callback: Optional[Callable] = None
    callback_inputs: tuple[str, ...] = ()


class Conditioning:
    """Encoded prompts, batch 1 per entry, expanded to a batch once per size (memoized).

    positive/negative: row tensors (negative None without guidance). shared: tensors that are
    not batched (FLUX ``txt_ids``).
    """

    def __init__(self, positive: dict[str, torch.Tensor],
                 negative: Optional[dict[str, torch.Tensor]] = None,
                 shared: Optional[dict[str, Any]] = None) -> None:
        self.positive, self.negative, self.shared = positive, negative, shared or {}
        self._memo: dict[tuple[str, int], dict[str, Any]] = {}

    def rows(self, n: int, which: str = "positive") -> dict[str, Any]:
        """`which` in {"positive", "negative", "cfg"} (cfg: negative rows then positive rows)."""
        key = (which, n)
        if key not in self._memo:
            if which == "cfg":
                neg, pos = self.rows(n, "negative"), self.rows(n, "positive")
                rows = {name: torch.cat([neg[name], pos[name]]) for name in self.positive}
            else:
                source = self.positive if which == "positive" else self.negative
                rows = {name: _repeat_rows(x, n) for name, x in source.items()}
            self._memo[key] = {**rows, **self.shared}
        return self._memo[key]


def _repeat_rows(x: torch.Tensor, n: int) -> torch.Tensor:
    """Tile a (R, ...) block n times: rows [block, block, ...]."""
    return x.repeat(n, *([1] * (x.dim() - 1)))


# ----- the shared run context ----------------------------------------------------------------
class Run:
    """One prompt's fixed state: settings, encoded prompts and the schedule.

    The pipeline's own scheduler is never stepped: ``template`` is a deep copy on which
    ``set_timesteps`` ran as in ``__call__``; every loop starts from a fresh copy of it.
    """

    def __init__(self, backbone: Backbone, settings: Settings, prompt: str,
                 cond: Conditioning, noise_shape: tuple[int, ...]) -> None:
        self.backbone, self.settings, self.prompt, self.cond = backbone, settings, prompt, cond
        self.template = copy.deepcopy(backbone.pipe.scheduler)
        self.timesteps = backbone.set_timesteps(self.template, settings, noise_shape)
        self.num_steps = len(self.timesteps)
        self._coefficients: dict[int, tuple[float, float]] = {}

    def scheduler_at(self, step: int):
        """A fresh scheduler positioned at `step` (multistep solvers start with no history)."""
        scheduler = copy.deepcopy(self.template)
        if hasattr(scheduler, "set_begin_index"):
            scheduler.set_begin_index(step)
        return scheduler

    def coefficients(self, step: int) -> tuple[float, float]:
        """(alpha, sigma) with latents_step = alpha * x0 + sigma * eps, probed from the scheduler.

        The scheduler's own forward noising is linear in (x0, eps), so two probes give it in the
        space its latents live in (Euler: alpha = 1, sigma = sigma_t; DDPM-style: sqrt(abar),
        sqrt(1 - abar); flow matching: 1 - s, s).
        """
        if step not in self._coefficients:
            scheduler = self.scheduler_at(step)
            noising = getattr(scheduler, "scale_noise", None)
            device = self.timesteps.device
            one, zero = torch.ones(1, 1, 1, 1, device=device), torch.zeros(1, 1, 1, 1, device=device)
            t = self.timesteps[step: step + 1]
            if noising is not None:
                alpha, sigma = noising(one, t, zero), noising(zero, t, one)
            else:
                alpha, sigma = scheduler.add_noise(one, zero, t), scheduler.add_noise(zero, one, t)
            self._coefficients[step] = (float(alpha.flatten()[0]), float(sigma.flatten()[0]))
        return self._coefficients[step]

    def step_kwargs(self, scheduler, seeds: Sequence[int]) -> dict[str, Any]:
        """``eta``/``generator`` for ``scheduler.step`` where it takes them (one generator per row)."""
        accepted = set(inspect.signature(scheduler.step).parameters)
        kwargs: dict[str, Any] = {}
        if "eta" in accepted:
            kwargs["eta"] = self.settings.options.get("eta", 0.0)
        if "generator" in accepted:
            kwargs["generator"] = [torch.Generator("cpu").manual_seed(int(s)) for s in seeds]
        return kwargs

    def denoise(self, latents: torch.Tensor, start: int, stop: int, seeds: Sequence[int],
                after_step: Optional[Callable[[int, torch.Tensor], torch.Tensor]] = None
                ) -> torch.Tensor:
        """Steps [start, stop) from `latents` (entering `start`), as the pipeline's loop does.

        after_step(i, latents) sees the latents entering step i + 1 (after the user's
        callback) and returns the latents to continue with.
        """
        scheduler = self.scheduler_at(start)
        step_kwargs = self.step_kwargs(scheduler, seeds)
        callback = self.settings.callback
        for i in range(start, stop):
            t = self.timesteps[i]
            noise = self.backbone.guided(scheduler, latents, t, self.cond, self.settings)
            latents = scheduler.step(noise, t, latents, **step_kwargs, return_dict=False)[0]
            if callback is not None:
                latents = callback(self.backbone.pipe, i, t, {"latents": latents}).get("latents", latents)
            if after_step is not None:
                latents = after_step(i, latents)
        return latents


# ----- adapters ------------------------------------------------------------------------------
class Backbone:
    """Common interface; subclasses fill in the per-family pieces."""

    name = ""
    denoiser_name = "unet"
    capture_mode = "unet"
    # Conditioning key that __call__ takes as pooled_prompt_embeds (None: the pipeline has none).
    pooled_key: Optional[str] = None
    extra_kwargs: frozenset = frozenset()

    def __init__(self, pipe: Any) -> None:
        self.pipe = pipe

    # --- inspection --------------------------------------------------------------------------
    @property
    def denoiser(self) -> torch.nn.Module:
        return getattr(self.pipe, self.denoiser_name)

    @property
    def device(self) -> torch.device:
        return self.pipe._execution_device

    def check_scheduler(self) -> None:
        """Refinements restart mid-schedule: the scheduler must allow that."""
        scheduler = self.pipe.scheduler
        name = type(scheduler).__name__
        restartable = hasattr(scheduler, "set_begin_index") or name in _STATELESS_SCHEDULERS
        if not restartable or getattr(scheduler, "order", 1) != 1:
            raise NotImplementedError(
                f"LoTTS restarts denoising at step t0, which {name} does not support (it keeps "
                "a step counter or is a second-order solver). Use a first-order scheduler, e.g. "
                "pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config) (or Euler, "
                "DPMSolverMultistep, UniPC; FlowMatchEuler for FLUX).")

    # --- settings ----------------------------------------------------------------------------
    def settings(self, pipe_kwargs: dict[str, Any]) -> Settings:
        allowed = _COMMON_KWARGS | self.extra_kwargs
        unknown = sorted(set(pipe_kwargs) - allowed)
        if unknown:
            raise ValueError(f"LoTTS does not support the pipeline arguments {unknown} for "
                             f"{type(self.pipe).__name__}; supported: {sorted(allowed)}")
        defaults = {name: p.default for name, p in
                    inspect.signature(type(self.pipe).__call__).parameters.items()}
        get = lambda key: pipe_kwargs[key] if pipe_kwargs.get(key) is not None else defaults.get(key)
        height = get("height") or self.default_size()
        width = get("width") or self.default_size()
        steps = get("num_inference_steps")
        if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
            raise ValueError(f"num_inference_steps must be an int >= 1, got {steps!r}")
        callback = pipe_kwargs.get("callback_on_step_end")
        inputs = tuple(getattr(callback, "tensor_inputs", None)
                       or pipe_kwargs.get("callback_on_step_end_tensor_inputs") or ("latents",))
        settings = Settings(
            height=int(height), width=int(width), num_inference_steps=steps,
            guidance_scale=float(get("guidance_scale")), do_cfg=False,
            device=self.device, dtype=self.text_dtype(), callback=callback,
            callback_inputs=tuple(dict.fromkeys(("latents",) + inputs)))
        settings.options = {key: get(key) for key in allowed - _COMMON_KWARGS}
        settings.options["negative_prompt"] = pipe_kwargs.get("negative_prompt")
        settings.passthrough = {key: pipe_kwargs[key] for key in self.passthrough_kwargs
                                if pipe_kwargs.get(key) is not None}
        settings.do_cfg = self.uses_cfg(settings)
        return settings

    passthrough_kwargs: tuple[str, ...] = ()

    def default_size(self) -> int:
        return self.pipe.default_sample_size * self.pipe.vae_scale_factor

    def text_dtype(self) -> torch.dtype:
        encoder = getattr(self.pipe, "text_encoder", None) or self.denoiser
        return encoder.dtype

    # --- per-family hooks ---------------------------------------------------------------------
    def uses_cfg(self, settings: Settings) -> bool:
        raise NotImplementedError

    def encode(self, prompt: str, settings: Settings) -> Conditioning:
        """Generation conditioning for `prompt` (with the negative when guided)."""
        raise NotImplementedError

    def encode_rows(self, prompts: list[str], settings: Settings) -> Conditioning:
        """Unguided conditioning, one row per prompt (the localization batch)."""
        raise NotImplementedError

    def initial_noise(self, settings: Settings, generators: list[torch.Generator]) -> torch.Tensor:
        """What to pass as ``latents=`` so the pipeline draws exactly its own noise."""
        raise NotImplementedError

    def entering_latents(self, noise: torch.Tensor, run: Run) -> torch.Tensor:
        """The latents entering step 0 that ``__call__`` makes from `noise`."""
        return noise * run.template.init_noise_sigma

    def noise_shape(self, settings: Settings, batch: int = 1) -> tuple[int, ...]:
        raise NotImplementedError

    def set_timesteps(self, scheduler, settings: Settings, noise_shape: tuple[int, ...]) -> torch.Tensor:
        from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion import (
            retrieve_timesteps,
        )

        timesteps, _ = retrieve_timesteps(scheduler, settings.num_inference_steps, settings.device)
        return timesteps

    def call_kwargs(self, run: Run) -> dict[str, Any]:
        """Encoded-prompt arguments of ``__call__`` for this run (batch 1; the pipeline repeats)."""
        kwargs = self._embeds_kwargs(run.cond.positive, "")
        if run.cond.negative is not None:
            kwargs.update(self._embeds_kwargs(run.cond.negative, "negative_"))
        return kwargs

    def _embeds_kwargs(self, rows: dict[str, Any], prefix: str) -> dict[str, Any]:
        kwargs = {f"{prefix}prompt_embeds": rows["encoder_hidden_states"]}
        if self.pooled_key is not None:
            kwargs[f"{prefix}pooled_prompt_embeds"] = rows[self.pooled_key]
        return kwargs

    def forward(self, scheduler, latents: torch.Tensor, t: torch.Tensor, rows: dict[str, Any],
                settings: Settings) -> torch.Tensor:
        """One denoiser forward on row-aligned latents and conditioning."""
        raise NotImplementedError

    def guided(self, scheduler, latents: torch.Tensor, t: torch.Tensor, cond: Conditioning,
               settings: Settings) -> torch.Tensor:
        raise NotImplementedError

    def decode(self, latents: torch.Tensor, settings: Settings) -> list[Image.Image]:
        raise NotImplementedError

    def encode_image(self, image: Image.Image, settings: Settings) -> torch.Tensor:
        raise NotImplementedError

    def mask_grid(self, settings: Settings) -> tuple[int, int]:
        return settings.height // self.pipe.vae_scale_factor, settings.width // self.pipe.vae_scale_factor

    def blend_mask(self, mask: torch.Tensor) -> torch.Tensor:
        """(B, h, w) grid mask -> the layout ``masked_noise_blend`` takes for these latents."""
        return mask[:, None]

    def size_from_latents(self, latents: torch.Tensor) -> tuple[int, int]:
        scale = self.pipe.vae_scale_factor
        return latents.shape[-2] * scale, latents.shape[-1] * scale

    def check_latents(self, latents: torch.Tensor, settings: Settings) -> torch.Tensor:
        expected = self.noise_shape(settings)
        if latents.dim() == len(expected) - 1:
            latents = latents[None]
        if tuple(latents.shape) != expected:
            raise ValueError(f"latents of shape {tuple(latents.shape)} do not fit this pipeline at "
                             f"{settings.height}x{settings.width}: expected {expected}")
        return latents.to(settings.device, settings.dtype)

    def token_source(self, settings: Settings) -> tuple[Any, int]:
        """Tokenizer whose positions are the cross-attention keys, and its padded length."""
        tokenizer = self.pipe.tokenizer or self.pipe.tokenizer_2
        return tokenizer, tokenizer.model_max_length


class _UNetBackbone(Backbone):
    """Shared by SD and SDXL: classifier-free guidance on a UNet."""

    extra_kwargs = frozenset({"guidance_rescale", "eta", "clip_skip", "cross_attention_kwargs"})
    passthrough_kwargs = ("guidance_rescale", "eta", "cross_attention_kwargs")

    def uses_cfg(self, settings: Settings) -> bool:
        return settings.guidance_scale > 1 and self.pipe.unet.config.time_cond_proj_dim is None

    def initial_noise(self, settings, generators):
        from diffusers.utils.torch_utils import randn_tensor

        shape = self.noise_shape(settings, len(generators))
        return randn_tensor(shape, generator=generators, device=settings.device, dtype=settings.dtype)

    def noise_shape(self, settings, batch=1):
        h, w = self.mask_grid(settings)
        return (batch, self.pipe.unet.config.in_channels, h, w)

    def lora_scale(self, settings: Settings) -> Optional[float]:
        return (settings.options.get("cross_attention_kwargs") or {}).get("scale")

    def timestep_cond(self, settings: Settings) -> dict[str, torch.Tensor]:
        dim = self.pipe.unet.config.time_cond_proj_dim
        if dim is None:
            return {}
        w = torch.tensor(settings.guidance_scale - 1).repeat(1)
        emb = self.pipe.get_guidance_scale_embedding(w, embedding_dim=dim)
        return {"timestep_cond": emb.to(settings.device, settings.dtype)}

    def forward(self, scheduler, latents, t, rows, settings):
        model_input = scheduler.scale_model_input(latents, t)
        added = {k: rows[k] for k in ("text_embeds", "time_ids") if k in rows}
        return self.pipe.unet(
            model_input, t, encoder_hidden_states=rows["encoder_hidden_states"],
            timestep_cond=rows.get("timestep_cond"),
            cross_attention_kwargs=settings.options.get("cross_attention_kwargs"),
            added_cond_kwargs=added or None, return_dict=False)[0]

    def guided(self, scheduler, latents, t, cond, settings):
        n = latents.shape[0]
        if not settings.do_cfg:
            return self.forward(scheduler, latents, t, cond.rows(n), settings)
        out = self.forward(scheduler, torch.cat([latents, latents]), t, cond.rows(n, "cfg"), settings)
        uncond, text = out.chunk(2)
        noise = uncond + settings.guidance_scale * (text - uncond)
        rescale = settings.options.get("guidance_rescale") or 0.0
        if rescale > 0.0:
            from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion import (
                rescale_noise_cfg,
            )

            noise = rescale_noise_cfg(noise, text, guidance_rescale=rescale)
        return noise

    def _postprocess(self, image: torch.Tensor, denormalize=None) -> list[Image.Image]:
        return self.pipe.image_processor.postprocess(image, output_type="pil",
                                                     do_denormalize=denormalize)

    def _vae_latents(self, image: Image.Image, settings: Settings) -> torch.Tensor:
        vae = self.pipe.vae
        pixels = self.pipe.image_processor.preprocess(image, height=settings.height, width=settings.width)
        pixels = pixels.to(settings.device, vae.dtype)
        return vae.encode(pixels).latent_dist.mode()


class StableDiffusionBackbone(_UNetBackbone):
    """StableDiffusionPipeline (SD 1.x and 2.x, and subclasses)."""

    name = "sd"

    def default_size(self) -> int:
        return self.pipe.unet.config.sample_size * self.pipe.vae_scale_factor

    def encode(self, prompt, settings):
        pos, neg = self.pipe.encode_prompt(
            prompt, settings.device, 1, settings.do_cfg, settings.options.get("negative_prompt"),
            lora_scale=self.lora_scale(settings), clip_skip=settings.options.get("clip_skip"))
        extra = self.timestep_cond(settings)
        return Conditioning({"encoder_hidden_states": pos, **extra},
                            {"encoder_hidden_states": neg, **extra} if settings.do_cfg else None)

    def encode_rows(self, prompts, settings):
        rows, _ = self.pipe.encode_prompt(prompts, settings.device, 1, False,
                                          lora_scale=self.lora_scale(settings),
                                          clip_skip=settings.options.get("clip_skip"))
        return Conditioning({"encoder_hidden_states": rows, **self._rows_timestep_cond(settings, len(prompts))})

    def _rows_timestep_cond(self, settings, n):
        return {k: _repeat_rows(v, n) for k, v in self.timestep_cond(settings).items()}

    def decode(self, latents, settings):
        vae = self.pipe.vae
        image = vae.decode(latents.to(vae.dtype) / vae.config.scaling_factor, return_dict=False)[0]
        image, nsfw = self.pipe.run_safety_checker(image, settings.device, settings.dtype)
        denormalize = None if nsfw is None else [not flagged for flagged in nsfw]
        return self._postprocess(image, denormalize)

    def encode_image(self, image, settings):
        latents = self._vae_latents(image, settings) * self.pipe.vae.config.scaling_factor
        return latents.to(settings.dtype)


class StableDiffusionXLBackbone(_UNetBackbone):
    """StableDiffusionXLPipeline: two text encoders, pooled text and size conditioning."""

    name = "sdxl"
    pooled_key = "text_embeds"
    extra_kwargs = _UNetBackbone.extra_kwargs | {"prompt_2", "negative_prompt_2", "original_size",
                                                 "crops_coords_top_left", "target_size"}

    def text_dtype(self):
        encoder = self.pipe.text_encoder_2 or self.pipe.text_encoder or self.denoiser
        return encoder.dtype

    def _encode(self, prompt, settings, do_cfg, prompt_2=None, negative=None, negative_2=None):
        return self.pipe.encode_prompt(
            prompt=prompt, prompt_2=prompt_2, device=settings.device, num_images_per_prompt=1,
            do_classifier_free_guidance=do_cfg, negative_prompt=negative,
            negative_prompt_2=negative_2, lora_scale=self.lora_scale(settings),
            clip_skip=settings.options.get("clip_skip"))

    def _time_ids(self, settings: Settings) -> torch.Tensor:
        size = (settings.height, settings.width)
        original = tuple(settings.options.get("original_size") or size)
        crops = tuple(settings.options.get("crops_coords_top_left") or (0, 0))
        target = tuple(settings.options.get("target_size") or size)
        return torch.tensor([list(original + crops + target)], dtype=settings.dtype,
                            device=settings.device)

    def encode(self, prompt, settings):
        options = settings.options
        pos, neg, pooled, neg_pooled = self._encode(
            prompt, settings, settings.do_cfg, options.get("prompt_2"),
            options.get("negative_prompt"), options.get("negative_prompt_2"))
        time_ids, extra = self._time_ids(settings), self.timestep_cond(settings)
        positive = {"encoder_hidden_states": pos, "text_embeds": pooled, "time_ids": time_ids, **extra}
        negative = None
        if settings.do_cfg:
            negative = {"encoder_hidden_states": neg, "text_embeds": neg_pooled,
                        "time_ids": time_ids, **extra}
        return Conditioning(positive, negative)

    def encode_rows(self, prompts, settings):
        rows, _, pooled, _ = self._encode(prompts, settings, False)
        n = len(prompts)
        extra = {k: _repeat_rows(v, n) for k, v in self.timestep_cond(settings).items()}
        return Conditioning({"encoder_hidden_states": rows, "text_embeds": pooled,
                             "time_ids": _repeat_rows(self._time_ids(settings), n), **extra})

    def settings(self, pipe_kwargs):
        settings = super().settings(pipe_kwargs)
        settings.passthrough.update({k: pipe_kwargs[k] for k in
                                     ("original_size", "crops_coords_top_left", "target_size")
                                     if pipe_kwargs.get(k) is not None})
        return settings

    @contextmanager
    def _vae_precision(self) -> Iterator[torch.dtype]:
        """The VAE in float32 where SDXL's fp16 VAE overflows (force_upcast), as __call__ does."""
        vae = self.pipe.vae
        upcast = vae.dtype == torch.float16 and vae.config.force_upcast
        if upcast:
            vae.to(dtype=torch.float32)
        try:
            yield vae.dtype
        finally:
            if upcast:
                vae.to(dtype=torch.float16)

    def _scaling(self, device, dtype):
        config = self.pipe.vae.config
        mean, std = getattr(config, "latents_mean", None), getattr(config, "latents_std", None)
        if mean is None or std is None:
            return None, None
        view = lambda v: torch.tensor(v).view(1, -1, 1, 1).to(device, dtype)
        return view(mean), view(std)

    def decode(self, latents, settings):
        config = self.pipe.vae.config
        with self._vae_precision() as dtype:
            latents = latents.to(dtype)
            mean, std = self._scaling(latents.device, dtype)
            if mean is not None:
                latents = latents * std / config.scaling_factor + mean
            else:
                latents = latents / config.scaling_factor
            image = self.pipe.vae.decode(latents, return_dict=False)[0]
        if self.pipe.watermark is not None:
            image = self.pipe.watermark.apply_watermark(image)
        return self._postprocess(image)

    def encode_image(self, image, settings):
        config = self.pipe.vae.config
        with self._vae_precision():
            latents = self._vae_latents(image, settings).float()
        mean, std = self._scaling(latents.device, latents.dtype)
        if mean is not None:
            latents = (latents - mean) * config.scaling_factor / std
        else:
            latents = latents * config.scaling_factor
        return latents.to(settings.dtype)


class FluxBackbone(Backbone):
    """FluxPipeline: packed 2x2 latent tokens, embedded guidance, flow matching."""

    name = "flux"
    denoiser_name = "transformer"
    capture_mode = "flux"
    pooled_key = "pooled_projections"
    extra_kwargs = frozenset({"prompt_2", "negative_prompt_2", "true_cfg_scale",
                              "max_sequence_length", "joint_attention_kwargs"})
    passthrough_kwargs = ("true_cfg_scale", "max_sequence_length", "joint_attention_kwargs")

    def uses_cfg(self, settings):
        scale = settings.options.get("true_cfg_scale") or 1.0
        return scale > 1 and settings.options.get("negative_prompt") is not None

    def text_dtype(self):
        encoder = self.pipe.text_encoder or self.pipe.text_encoder_2 or self.denoiser
        return encoder.dtype

    def _encode(self, prompt, settings, prompt_2=None):
        lora = (settings.options.get("joint_attention_kwargs") or {}).get("scale")
        return self.pipe.encode_prompt(
            prompt=prompt, prompt_2=prompt_2, device=settings.device, num_images_per_prompt=1,
            max_sequence_length=settings.options["max_sequence_length"], lora_scale=lora)

    def encode(self, prompt, settings):
        embeds, pooled, text_ids = self._encode(prompt, settings, settings.options.get("prompt_2"))
        negative = None
        if settings.do_cfg:
            neg, neg_pooled, _ = self._encode(settings.options["negative_prompt"], settings,
                                              settings.options.get("negative_prompt_2"))
            negative = {"encoder_hidden_states": neg, "pooled_projections": neg_pooled}
        return Conditioning({"encoder_hidden_states": embeds, "pooled_projections": pooled},
                            negative, {"txt_ids": text_ids})

    def encode_rows(self, prompts, settings):
        embeds, pooled, text_ids = self._encode(prompts, settings)
        return Conditioning({"encoder_hidden_states": embeds, "pooled_projections": pooled},
                            shared={"txt_ids": text_ids})

    def _latent_hw(self, settings) -> tuple[int, int]:
        scale = self.pipe.vae_scale_factor * 2
        return 2 * (settings.height // scale), 2 * (settings.width // scale)

    def mask_grid(self, settings):
        h, w = self._latent_hw(settings)
        return h // 2, w // 2

    def noise_shape(self, settings, batch=1):
        h, w = self.mask_grid(settings)
        return (batch, h * w, self.pipe.transformer.config.in_channels)

    def initial_noise(self, settings, generators):
        channels = self.pipe.transformer.config.in_channels // 4
        noise, _ = self.pipe.prepare_latents(len(generators), channels, settings.height,
                                             settings.width, settings.dtype, settings.device,
                                             generators)
        return noise

    def entering_latents(self, noise, run):
        return noise

    def set_timesteps(self, scheduler, settings, noise_shape):
        from diffusers.pipelines.flux.pipeline_flux import (
            calculate_shift,
            retrieve_timesteps,
        )

        steps = settings.num_inference_steps
        sigmas = np.linspace(1.0, 1 / steps, steps)
        if getattr(scheduler.config, "use_flow_sigmas", False):
            sigmas = None
        config = scheduler.config
        mu = calculate_shift(noise_shape[1], config.get("base_image_seq_len", 256),
                             config.get("max_image_seq_len", 4096), config.get("base_shift", 0.5),
                             config.get("max_shift", 1.15))
        timesteps, _ = retrieve_timesteps(scheduler, steps, settings.device, sigmas=sigmas, mu=mu)
        return timesteps

    def settings(self, pipe_kwargs):
        settings = super().settings(pipe_kwargs)
        channels = self.pipe.transformer.config.in_channels // 4
        _, image_ids = self.pipe.prepare_latents(
            1, channels, settings.height, settings.width, settings.dtype, settings.device, None,
            latents=torch.zeros(0))
        settings.options["img_ids"] = image_ids
        return settings

    def forward(self, scheduler, latents, t, rows, settings):
        n = latents.shape[0]
        guidance = None
        if self.pipe.transformer.config.guidance_embeds:
            guidance = torch.full([1], settings.guidance_scale, device=latents.device,
                                  dtype=torch.float32).expand(n)
        timestep = t.expand(n).to(latents.dtype)
        return self.pipe.transformer(
            hidden_states=latents, timestep=timestep / 1000, guidance=guidance,
            pooled_projections=rows["pooled_projections"],
            encoder_hidden_states=rows["encoder_hidden_states"], txt_ids=rows["txt_ids"],
            img_ids=settings.options["img_ids"],
            joint_attention_kwargs=settings.options.get("joint_attention_kwargs") or {},
            return_dict=False)[0]

    def guided(self, scheduler, latents, t, cond, settings):
        n = latents.shape[0]
        transformer = self.pipe.transformer
        context = getattr(transformer, "cache_context", None)
        with context("cond") if context else nullcontext():
            noise = self.forward(scheduler, latents, t, cond.rows(n), settings)
        if settings.do_cfg:
            with context("uncond") if context else nullcontext():
                uncond = self.forward(scheduler, latents, t, cond.rows(n, "negative"), settings)
            noise = uncond + settings.options["true_cfg_scale"] * (noise - uncond)
        return noise

    def unpack(self, latents: torch.Tensor, settings: Settings) -> torch.Tensor:
        """(B, L, 4C) tokens -> (B, C, h, w) latents, as the pipeline unpacks them."""
        h, w = self._latent_hw(settings)
        batch, _, channels = latents.shape
        latents = latents.view(batch, h // 2, w // 2, channels // 4, 2, 2).permute(0, 3, 1, 4, 2, 5)
        return latents.reshape(batch, channels // 4, h, w)

    def pack(self, latents: torch.Tensor) -> torch.Tensor:
        """(B, C, h, w) -> (B, L, 4C), the pipeline's token layout."""
        batch, channels, h, w = latents.shape
        latents = latents.view(batch, channels, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5)
        return latents.reshape(batch, (h // 2) * (w // 2), channels * 4)

    def blend_mask(self, mask):
        return mask.reshape(mask.shape[0], -1, 1)

    def _is_packed(self, latents: torch.Tensor) -> bool:
        channels = self.pipe.vae.config.latent_channels
        return not (latents.dim() == 4 or (latents.dim() == 3 and latents.shape[0] == channels))

    def size_from_latents(self, latents):
        scale = self.pipe.vae_scale_factor
        if not self._is_packed(latents):
            return latents.shape[-2] * scale, latents.shape[-1] * scale
        side = math.isqrt(latents.shape[-2])
        if side * side != latents.shape[-2]:
            raise ValueError(f"packed FLUX latents with {latents.shape[-2]} tokens are not square: "
                             "pass height= and width= with them")
        return side * 2 * scale, side * 2 * scale

    def check_latents(self, latents, settings):
        if not self._is_packed(latents):
            latents = self.pack(latents if latents.dim() == 4 else latents[None])
        return super().check_latents(latents, settings)

    def decode(self, latents, settings):
        vae = self.pipe.vae
        latents = self.unpack(latents, settings)
        latents = latents / vae.config.scaling_factor + vae.config.shift_factor
        image = vae.decode(latents.to(vae.dtype), return_dict=False)[0]
        return self.pipe.image_processor.postprocess(image, output_type="pil")

    def encode_image(self, image, settings):
        vae = self.pipe.vae
        pixels = self.pipe.image_processor.preprocess(image, height=settings.height, width=settings.width)
        latents = vae.encode(pixels.to(settings.device, vae.dtype)).latent_dist.mode()
        latents = (latents - vae.config.shift_factor) * vae.config.scaling_factor
        return self.pack(latents).to(settings.dtype)

    def token_source(self, settings):
        return self.pipe.tokenizer_2, settings.options["max_sequence_length"]


def detect_backbone(pipe: Any) -> Backbone:
    """The adapter for `pipe`, by pipeline class; anything else raises NotImplementedError."""
    from diffusers import (
        FluxPipeline,
        StableDiffusionPipeline,
        StableDiffusionXLPipeline,
    )

    for cls, adapter in ((StableDiffusionXLPipeline, StableDiffusionXLBackbone),
                         (FluxPipeline, FluxBackbone),
                         (StableDiffusionPipeline, StableDiffusionBackbone)):
        if isinstance(pipe, cls):
            return adapter(pipe)
    raise NotImplementedError(f"LoTTS does not support {type(pipe).__name__}; supported "
                              f"pipelines: {', '.join(SUPPORTED_PIPELINES)}")
