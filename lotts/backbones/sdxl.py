"""StableDiffusionXLPipeline: two text encoders, pooled text and size conditioning."""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Optional

import torch
from PIL import Image

from lotts.backbones.sd import UNetBackbone
from lotts.backbones.settings import Conditioning, Settings, repeat_rows


class StableDiffusionXLBackbone(UNetBackbone):
    """StableDiffusionXLPipeline: two text encoders, pooled text and size conditioning."""

    name = "sdxl"
    pipeline_class = "StableDiffusionXLPipeline"
    supported = "StableDiffusionXLPipeline"
    pooled_key = "text_embeds"
    extra_kwargs = UNetBackbone.extra_kwargs | {"prompt_2", "negative_prompt_2", "original_size",
                                                 "crops_coords_top_left", "target_size"}

    def text_dtype(self) -> torch.dtype:
        encoder: Any = self.pipe.text_encoder_2 or self.pipe.text_encoder or self.denoiser
        return encoder.dtype

    def _encode(self, prompt: Any, settings: Settings, do_cfg: bool, prompt_2: Any = None,
                negative: Any = None, negative_2: Any = None) -> tuple[torch.Tensor, ...]:
        return self.pipe.encode_prompt(
            prompt=prompt, prompt_2=prompt_2, device=settings.device, num_images_per_prompt=1,
            do_classifier_free_guidance=do_cfg, negative_prompt=negative,
            negative_prompt_2=negative_2, lora_scale=self.lora_scale(settings),
            clip_skip=settings.options.get("clip_skip"))

    # Adapted from diffusers
    # diffusers.pipelines.stable_diffusion_xl.pipeline_stable_diffusion_xl.StableDiffusionXLPipeline._get_add_time_ids, 0.42.1  # noqa: E501
    # (negative size conditioning defaults to the positive one, as __call__ passes it).
    def _time_ids(self, settings: Settings) -> torch.Tensor:
        size = (settings.height, settings.width)
        original = tuple(settings.options.get("original_size") or size)
        crops = tuple(settings.options.get("crops_coords_top_left") or (0, 0))
        target = tuple(settings.options.get("target_size") or size)
        return torch.tensor([list(original + crops + target)], dtype=settings.dtype,
                            device=settings.device)

    def encode(self, prompt: str, settings: Settings) -> Conditioning:
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

    def encode_rows(self, prompts: list[str], settings: Settings) -> Conditioning:
        rows, _, pooled, _ = self._encode(prompts, settings, False)
        n = len(prompts)
        extra = {k: repeat_rows(v, n) for k, v in self.timestep_cond(settings).items()}
        return Conditioning({"encoder_hidden_states": rows, "text_embeds": pooled,
                             "time_ids": repeat_rows(self._time_ids(settings), n), **extra})

    def settings(self, pipe_kwargs: dict[str, Any]) -> Settings:
        settings = super().settings(pipe_kwargs)
        settings.passthrough.update({k: pipe_kwargs[k] for k in
                                     ("original_size", "crops_coords_top_left", "target_size")
                                     if pipe_kwargs.get(k) is not None})
        return settings

    _CALLBACK_BUILDERS = frozenset({"prompt_embeds", "negative_prompt_embeds", "add_text_embeds",
                                    "add_time_ids", "negative_pooled_prompt_embeds",
                                    "negative_add_time_ids"})

    def callback_tensors(self, cond: Conditioning, n: int, settings: Settings
                         ) -> dict[str, Optional[torch.Tensor]]:
        # As __call__ holds them: every tensor [negative rows, positive rows] under guidance.
        rows = cond.rows(n, "cfg" if settings.do_cfg else "positive")
        negative = cond.rows(n, "negative") if settings.do_cfg else {}
        return {"prompt_embeds": rows["encoder_hidden_states"],
                "add_text_embeds": rows["text_embeds"], "add_time_ids": rows["time_ids"],
                "negative_prompt_embeds": negative.get("encoder_hidden_states"),
                "negative_pooled_prompt_embeds": negative.get("text_embeds"),
                "negative_add_time_ids": negative.get("time_ids")}

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

    def _scaling(self, device: torch.device, dtype: torch.dtype
                 ) -> tuple[Optional[torch.Tensor], Optional[torch.Tensor]]:
        config = self.pipe.vae.config
        mean, std = getattr(config, "latents_mean", None), getattr(config, "latents_std", None)
        if mean is None or std is None:
            return None, None
        view = lambda v: torch.tensor(v).view(1, -1, 1, 1).to(device, dtype)
        return view(mean), view(std)

    # Adapted from diffusers
    # diffusers.pipelines.stable_diffusion_xl.pipeline_stable_diffusion_xl.StableDiffusionXLPipeline.__call__, 0.42.1  # noqa: E501
    # (its decode: fp16 VAE upcast, latents_mean/std, watermark).
    def decode(self, latents: torch.Tensor, settings: Settings) -> list[Image.Image]:
        config = self.pipe.vae.config
        with self._vae_precision() as dtype:
            latents = latents.to(dtype)
            mean, std = self._scaling(latents.device, dtype)
            if mean is not None and std is not None:
                latents = latents * std / config.scaling_factor + mean
            else:
                latents = latents / config.scaling_factor
            image = self.pipe.vae.decode(latents, return_dict=False)[0]
        if self.pipe.watermark is not None:
            image = self.pipe.watermark.apply_watermark(image)
        return self._postprocess(image)

    def encode_image(self, image: Image.Image, settings: Settings) -> torch.Tensor:
        config = self.pipe.vae.config
        with self._vae_precision():
            latents = self._vae_latents(image, settings).float()
        mean, std = self._scaling(latents.device, latents.dtype)
        if mean is not None and std is not None:
            latents = (latents - mean) * config.scaling_factor / std
        else:
            latents = latents * config.scaling_factor
        return latents.to(settings.dtype)

