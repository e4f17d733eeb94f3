"""FluxPipeline: packed 2x2 latent tokens, embedded guidance, flow matching."""
from __future__ import annotations

import math
from contextlib import nullcontext
from typing import TYPE_CHECKING, Any, Optional

import numpy as np
import torch
from PIL import Image

from lotts.backbones.base import Backbone
from lotts.backbones.settings import Conditioning, Settings

if TYPE_CHECKING:
    from lotts.backbones.run import Run


class FluxBackbone(Backbone):
    """FluxPipeline: packed 2x2 latent tokens, embedded guidance, flow matching."""

    name = "flux"
    pipeline_class = "FluxPipeline"
    supported = "FluxPipeline"
    denoiser_name = "transformer"
    capture_mode = "flux"
    pooled_key = "pooled_projections"
    extra_kwargs = frozenset({"prompt_2", "negative_prompt_2", "true_cfg_scale",
                              "max_sequence_length", "joint_attention_kwargs"})
    passthrough_kwargs = ("true_cfg_scale", "max_sequence_length", "joint_attention_kwargs")

    def uses_cfg(self, settings: Settings) -> bool:
        scale = settings.options.get("true_cfg_scale") or 1.0
        return scale > 1 and settings.options.get("negative_prompt") is not None

    def text_dtype(self) -> torch.dtype:
        encoder: Any = self.pipe.text_encoder or self.pipe.text_encoder_2 or self.denoiser
        return encoder.dtype

    def _encode(self, prompt: Any, settings: Settings, prompt_2: Any = None
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        lora = (settings.options.get("joint_attention_kwargs") or {}).get("scale")
        return self.pipe.encode_prompt(
            prompt=prompt, prompt_2=prompt_2, device=settings.device, num_images_per_prompt=1,
            max_sequence_length=settings.options["max_sequence_length"], lora_scale=lora)

    def encode(self, prompt: str, settings: Settings) -> Conditioning:
        embeds, pooled, text_ids = self._encode(prompt, settings, settings.options.get("prompt_2"))
        negative = None
        if settings.do_cfg:
            neg, neg_pooled, _ = self._encode(settings.options["negative_prompt"], settings,
                                              settings.options.get("negative_prompt_2"))
            negative = {"encoder_hidden_states": neg, "pooled_projections": neg_pooled}
        return Conditioning({"encoder_hidden_states": embeds, "pooled_projections": pooled},
                            negative, {"txt_ids": text_ids})

    def encode_rows(self, prompts: list[str], settings: Settings) -> Conditioning:
        embeds, pooled, text_ids = self._encode(prompts, settings)
        return Conditioning({"encoder_hidden_states": embeds, "pooled_projections": pooled},
                            shared={"txt_ids": text_ids})

    def _latent_hw(self, settings: Settings) -> tuple[int, int]:
        scale = self.pipe.vae_scale_factor * 2
        return 2 * (settings.height // scale), 2 * (settings.width // scale)

    def mask_grid(self, settings: Settings) -> tuple[int, int]:
        h, w = self._latent_hw(settings)
        return h // 2, w // 2

    def noise_shape(self, settings: Settings, batch: int = 1) -> tuple[int, ...]:
        h, w = self.mask_grid(settings)
        return (batch, h * w, self.pipe.transformer.config.in_channels)

    def initial_noise(self, settings: Settings, generators: list[torch.Generator]) -> torch.Tensor:
        channels = self.pipe.transformer.config.in_channels // 4
        noise, _ = self.pipe.prepare_latents(len(generators), channels, settings.height,
                                             settings.width, settings.dtype, settings.device,
                                             generators)
        return noise

    def entering_latents(self, noise: torch.Tensor, run: Run) -> torch.Tensor:
        return noise

    # Adapted from diffusers diffusers.pipelines.flux.pipeline_flux.FluxPipeline.__call__, 0.42.1
    # (its "5. Prepare timesteps": linear sigmas, resolution-dependent shift mu).
    def set_timesteps(self, scheduler: Any, settings: Settings,
                      noise_shape: tuple[int, ...]) -> torch.Tensor:
        from diffusers.pipelines.flux.pipeline_flux import (
            calculate_shift,
            retrieve_timesteps,
        )

        steps = settings.num_inference_steps
        sigmas: Optional[np.ndarray] = np.linspace(1.0, 1 / steps, steps)
        if getattr(scheduler.config, "use_flow_sigmas", False):
            sigmas = None
        config = scheduler.config
        mu = calculate_shift(noise_shape[1], config.get("base_image_seq_len", 256),
                             config.get("max_image_seq_len", 4096), config.get("base_shift", 0.5),
                             config.get("max_shift", 1.15))
        timesteps, _ = retrieve_timesteps(scheduler, steps, settings.device,
                                          sigmas=sigmas, mu=mu)  # type: ignore[arg-type]
        return timesteps

    def size_multiple(self) -> int:
        """FluxPipeline packs 2x2 latent cells: it would resize anything else with a warning."""
        return int(self.pipe.vae_scale_factor) * 2

    def settings(self, pipe_kwargs: dict[str, Any]) -> Settings:
        settings = super().settings(pipe_kwargs)
        channels = self.pipe.transformer.config.in_channels // 4
        _, image_ids = self.pipe.prepare_latents(
            1, channels, settings.height, settings.width, settings.dtype, settings.device, None,
            latents=torch.zeros(0))
        settings.options["img_ids"] = image_ids
        return settings

    # Adapted from diffusers diffusers.pipelines.flux.pipeline_flux.FluxPipeline.__call__, 0.42.1
    # (one transformer call of its denoising loop; true CFG as in guided()).
    def forward(self, scheduler: Any, latents: torch.Tensor, t: torch.Tensor,
                rows: dict[str, Any], settings: Settings) -> torch.Tensor:
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

    def guided(self, scheduler: Any, latents: torch.Tensor, t: torch.Tensor, cond: Conditioning,
               settings: Settings) -> torch.Tensor:
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

    # Adapted from diffusers diffusers.pipelines.flux.pipeline_flux.FluxPipeline._unpack_latents, 0.42.1
    def unpack(self, latents: torch.Tensor, settings: Settings) -> torch.Tensor:
        """(B, L, 4C) tokens -> (B, C, h, w) latents, as the pipeline unpacks them."""
        h, w = self._latent_hw(settings)
        batch, _, channels = latents.shape
        latents = latents.view(batch, h // 2, w // 2, channels // 4, 2, 2).permute(0, 3, 1, 4, 2, 5)
        return latents.reshape(batch, channels // 4, h, w)

    # Adapted from diffusers diffusers.pipelines.flux.pipeline_flux.FluxPipeline._pack_latents, 0.42.1
    def pack(self, latents: torch.Tensor) -> torch.Tensor:
        """(B, C, h, w) -> (B, L, 4C), the pipeline's token layout."""
        batch, channels, h, w = latents.shape
        latents = latents.view(batch, channels, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5)
        return latents.reshape(batch, (h // 2) * (w // 2), channels * 4)

    def blend_mask(self, mask: torch.Tensor) -> torch.Tensor:
        return mask.reshape(mask.shape[0], -1, 1)

    def _is_packed(self, latents: torch.Tensor) -> bool:
        channels = self.pipe.vae.config.latent_channels
        return not (latents.dim() == 4 or (latents.dim() == 3 and latents.shape[0] == channels))

    def size_from_latents(self, latents: torch.Tensor) -> tuple[int, int]:
        scale = self.pipe.vae_scale_factor
        if not self._is_packed(latents):
            return latents.shape[-2] * scale, latents.shape[-1] * scale
        side = math.isqrt(latents.shape[-2])
        if side * side != latents.shape[-2]:
            raise ValueError(f"packed FLUX latents with {latents.shape[-2]} tokens are not square: "
                             "pass height= and width= with them")
        return side * 2 * scale, side * 2 * scale

    def check_latents(self, latents: torch.Tensor, settings: Settings) -> torch.Tensor:
        if not self._is_packed(latents):
            latents = self.pack(latents if latents.dim() == 4 else latents[None])
        return super().check_latents(latents, settings)

    def decode(self, latents: torch.Tensor, settings: Settings) -> list[Image.Image]:
        vae = self.pipe.vae
        latents = self.unpack(latents, settings)
        latents = latents / vae.config.scaling_factor + vae.config.shift_factor
        image = vae.decode(latents.to(vae.dtype), return_dict=False)[0]
        return self.pipe.image_processor.postprocess(image, output_type="pil")

    def encode_image(self, image: Image.Image, settings: Settings) -> torch.Tensor:
        vae = self.pipe.vae
        pixels = self.pipe.image_processor.preprocess(image, height=settings.height, width=settings.width)
        latents = vae.encode(pixels.to(settings.device, vae.dtype)).latent_dist.mode()
        latents = (latents - vae.config.shift_factor) * vae.config.scaling_factor
        return self.pack(latents).to(settings.dtype)

    _CALLBACK_BUILDERS = frozenset({"prompt_embeds"})

    def callback_tensors(self, cond: Conditioning, n: int, settings: Settings
                         ) -> dict[str, Optional[torch.Tensor]]:
        return {"prompt_embeds": cond.rows(n)["encoder_hidden_states"]}

    def token_source(self, settings: Settings) -> tuple[Any, int]:
        return self.pipe.tokenizer_2, settings.options["max_sequence_length"]

