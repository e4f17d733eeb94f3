"""StableDiffusionPipeline (SD 1.x, 2.x), and the UNet pieces SDXL shares."""
from __future__ import annotations

from abc import ABC
from typing import Any, Optional

import torch
from PIL import Image

from lotts.backbones.base import Backbone
from lotts.backbones.settings import Conditioning, Settings, repeat_rows


class UNetBackbone(Backbone, ABC):
    """Shared by SD and SDXL: classifier-free guidance on a UNet."""

    extra_kwargs = frozenset({"guidance_rescale", "eta", "clip_skip", "cross_attention_kwargs"})
    passthrough_kwargs = ("guidance_rescale", "eta", "cross_attention_kwargs")

    def uses_cfg(self, settings: Settings) -> bool:
        return settings.guidance_scale > 1 and self.pipe.unet.config.time_cond_proj_dim is None

    def initial_noise(self, settings: Settings, generators: list[torch.Generator]) -> torch.Tensor:
        from diffusers.utils.torch_utils import randn_tensor

        shape = self.noise_shape(settings, len(generators))
        return randn_tensor(shape, generator=generators, device=settings.device, dtype=settings.dtype)

    def noise_shape(self, settings: Settings, batch: int = 1) -> tuple[int, ...]:
        h, w = self.mask_grid(settings)
        return (batch, self.pipe.unet.config.in_channels, h, w)

    def lora_scale(self, settings: Settings) -> Optional[float]:
        return (settings.options.get("cross_attention_kwargs") or {}).get("scale")

    # Adapted from diffusers
    # diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion.StableDiffusionPipeline.__call__, 0.42.1
    # ("6.1 Optionally get Guidance Scale Embedding").
    def timestep_cond(self, settings: Settings) -> dict[str, torch.Tensor]:
        dim = self.pipe.unet.config.time_cond_proj_dim
        if dim is None:
            return {}
        w = torch.tensor(settings.guidance_scale - 1).repeat(1)
        emb = self.pipe.get_guidance_scale_embedding(w, embedding_dim=dim)
        return {"timestep_cond": emb.to(settings.device, settings.dtype)}

    def forward(self, scheduler: Any, latents: torch.Tensor, t: torch.Tensor,
                rows: dict[str, Any], settings: Settings) -> torch.Tensor:
        model_input = scheduler.scale_model_input(latents, t)
        added = {k: rows[k] for k in ("text_embeds", "time_ids") if k in rows}
        return self.pipe.unet(
            model_input, t, encoder_hidden_states=rows["encoder_hidden_states"],
            timestep_cond=rows.get("timestep_cond"),
            cross_attention_kwargs=settings.options.get("cross_attention_kwargs"),
            added_cond_kwargs=added or None, return_dict=False)[0]

    # Adapted from diffusers
    # diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion.StableDiffusionPipeline.__call__, 0.42.1
    # ("7. Denoising loop": CFG on a doubled batch, guidance_rescale).
    def guided(self, scheduler: Any, latents: torch.Tensor, t: torch.Tensor, cond: Conditioning,
               settings: Settings) -> torch.Tensor:
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

    _CALLBACK_BUILDERS = frozenset({"prompt_embeds", "negative_prompt_embeds"})
    follows_pipeline_guidance = True

    def callback_tensors(self, cond: Conditioning, n: int, settings: Settings
                         ) -> dict[str, Optional[torch.Tensor]]:
        # As __call__ holds them: prompt_embeds = [negative rows, positive rows] under guidance.
        rows = cond.rows(n, "cfg" if settings.do_cfg else "positive")
        negative = cond.rows(n, "negative")["encoder_hidden_states"] if settings.do_cfg else None
        return {"prompt_embeds": rows["encoder_hidden_states"], "negative_prompt_embeds": negative}

    def _postprocess(self, image: torch.Tensor,
                     denormalize: Optional[list[bool]] = None) -> list[Image.Image]:
        return self.pipe.image_processor.postprocess(image, output_type="pil",
                                                     do_denormalize=denormalize)

    def _vae_latents(self, image: Image.Image, settings: Settings) -> torch.Tensor:
        vae = self.pipe.vae
        pixels = self.pipe.image_processor.preprocess(image, height=settings.height, width=settings.width)
        pixels = pixels.to(settings.device, vae.dtype)
        return vae.encode(pixels).latent_dist.mode()


class StableDiffusionBackbone(UNetBackbone):
    """StableDiffusionPipeline (SD 1.x and 2.x, and subclasses)."""

    name = "sd"
    pipeline_class = "StableDiffusionPipeline"
    supported = "StableDiffusionPipeline (SD 1.x, SD 2.x)"

    def default_size(self) -> int:
        return self.pipe.unet.config.sample_size * self.pipe.vae_scale_factor

    def encode(self, prompt: str, settings: Settings) -> Conditioning:
        pos, neg = self.pipe.encode_prompt(
            prompt, settings.device, 1, settings.do_cfg, settings.options.get("negative_prompt"),
            lora_scale=self.lora_scale(settings), clip_skip=settings.options.get("clip_skip"))
        extra = self.timestep_cond(settings)
        return Conditioning({"encoder_hidden_states": pos, **extra},
                            {"encoder_hidden_states": neg, **extra} if settings.do_cfg else None)

    def encode_rows(self, prompts: list[str], settings: Settings) -> Conditioning:
        rows, _ = self.pipe.encode_prompt(prompts, settings.device, 1, False,
                                          lora_scale=self.lora_scale(settings),
                                          clip_skip=settings.options.get("clip_skip"))
        timestep_cond = self._rows_timestep_cond(settings, len(prompts))
        return Conditioning({"encoder_hidden_states": rows, **timestep_cond})

    def _rows_timestep_cond(self, settings: Settings, n: int) -> dict[str, torch.Tensor]:
        return {k: repeat_rows(v, n) for k, v in self.timestep_cond(settings).items()}

    def decode(self, latents: torch.Tensor, settings: Settings) -> list[Image.Image]:
        vae = self.pipe.vae
        image = vae.decode(latents.to(vae.dtype) / vae.config.scaling_factor, return_dict=False)[0]
        image, nsfw = self.pipe.run_safety_checker(image, settings.device, settings.dtype)
        denormalize = None if nsfw is None else [not flagged for flagged in nsfw]
        return self._postprocess(image, denormalize)

    def encode_image(self, image: Image.Image, settings: Settings) -> torch.Tensor:
        latents = self._vae_latents(image, settings) * self.pipe.vae.config.scaling_factor
        return latents.to(settings.dtype)

