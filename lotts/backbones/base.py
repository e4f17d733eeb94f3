"""The adapter contract: what LoTTS needs from one family of diffusers pipelines.

Base generation runs the pipeline's own ``__call__``; refinements and the localization forward
drive the pipeline's own components the way its ``__call__`` does (``encode_prompt``,
``retrieve_timesteps``, ``scale_model_input``, its guidance convention, ``scheduler.step``).
An adapter supplies the per-family pieces (the abstract methods below); the shared denoising
loop is :meth:`lotts.backbones.run.Run.denoise`.
"""
from __future__ import annotations

import inspect
import math
from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Any, Optional

import torch
from PIL import Image

from lotts.backbones.settings import COMMON_KWARGS, Conditioning, Settings

if TYPE_CHECKING:
    from lotts.backbones.run import Run

# Schedulers without ``set_begin_index`` whose step depends only on the timestep it is given.
STATELESS_SCHEDULERS = ("DDIMScheduler", "DDPMScheduler", "DDIMParallelScheduler",
                        "DDPMParallelScheduler")


class Backbone(ABC):
    """Adapter around one pipeline; subclasses fill in the per-family pieces.

    Class attributes: ``name`` (the config key: "sd", "sdxl", "flux"), ``pipeline_class`` (the
    diffusers class it serves, subclasses included), ``denoiser_name`` (the pipeline component
    whose forwards are counted and captured), ``capture_mode`` (how
    :class:`~lotts.attention_capture.AttentionCapture` reads its attention), ``pooled_key``
    (the conditioning key ``__call__`` takes as ``pooled_prompt_embeds``), and the keyword sets
    ``extra_kwargs`` / ``passthrough_kwargs`` described in :mod:`lotts.backbones.settings`.
    """

    name: str = ""
    pipeline_class: str = ""
    supported: str = ""  # the pipelines it serves, as listed in errors and the README
    denoiser_name = "unet"
    capture_mode = "unet"
    pooled_key: Optional[str] = None
    extra_kwargs: frozenset[str] = frozenset()
    passthrough_kwargs: tuple[str, ...] = ()
    # Whether __call__ reads pipe._guidance_scale at every step (UNets: a callback can cut CFG).
    follows_pipeline_guidance = False

    def __init__(self, pipe: Any) -> None:
        self.pipe = pipe

    # --- inspection --------------------------------------------------------------------------
    @property
    def denoiser(self) -> torch.nn.Module:
        return getattr(self.pipe, self.denoiser_name)

    def check_scheduler(self) -> None:
        """Refinements restart mid-schedule: the scheduler must allow that."""
        scheduler = self.pipe.scheduler
        name = type(scheduler).__name__
        restartable = hasattr(scheduler, "set_begin_index") or name in STATELESS_SCHEDULERS
        if not restartable or getattr(scheduler, "order", 1) != 1:
            raise NotImplementedError(
                f"LoTTS restarts denoising at step t0, which {name} does not support (it keeps "
                "a step counter or is a second-order solver). Use a first-order scheduler, e.g. "
                "pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config) (or Euler, "
                "DPMSolverMultistep, UniPC; FlowMatchEuler for FLUX).")

    # --- settings ----------------------------------------------------------------------------
    def settings(self, pipe_kwargs: dict[str, Any]) -> Settings:
        """Resolve the call arguments once per run (the device included)."""
        allowed = COMMON_KWARGS | self.extra_kwargs
        unknown = sorted(set(pipe_kwargs) - allowed)
        if unknown:
            raise ValueError(f"LoTTS does not support the pipeline arguments {unknown} for "
                             f"{type(self.pipe).__name__}; supported: {sorted(allowed)}")
        defaults = {name: p.default for name, p in
                    inspect.signature(type(self.pipe).__call__).parameters.items()}

        def get(key: str) -> Any:
            value = pipe_kwargs.get(key)
            return value if value is not None else defaults.get(key)

        height = get("height") or self.default_size()
        width = get("width") or self.default_size()
        multiple = self.size_multiple()
        if height % multiple or width % multiple:
            raise ValueError(f"height and width must be multiples of {multiple} for "
                             f"{type(self.pipe).__name__} (vae_scale_factor "
                             f"{self.pipe.vae_scale_factor}), got height={height}, width={width}")
        steps = get("num_inference_steps")
        if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
            raise ValueError(f"num_inference_steps must be an int >= 1, got {steps!r}")
        callback = pipe_kwargs.get("callback_on_step_end")
        inputs = tuple(getattr(callback, "tensor_inputs", None)
                       or pipe_kwargs.get("callback_on_step_end_tensor_inputs") or ("latents",))
        settings = Settings(
            height=int(height), width=int(width), num_inference_steps=steps,
            guidance_scale=float(get("guidance_scale")), do_cfg=False,
            device=self.pipe._execution_device, dtype=self.text_dtype(), callback=callback,
            callback_inputs=tuple(dict.fromkeys(("latents", *inputs))))
        settings.options = {key: get(key) for key in allowed - COMMON_KWARGS}
        settings.options["negative_prompt"] = pipe_kwargs.get("negative_prompt")
        settings.passthrough = {key: pipe_kwargs[key] for key in self.passthrough_kwargs
                                if pipe_kwargs.get(key) is not None}
        settings.do_cfg = self.uses_cfg(settings)
        return settings

    def default_size(self) -> int:
        return int(self.pipe.default_sample_size * self.pipe.vae_scale_factor)

    def size_multiple(self) -> int:
        """What height and width must be multiples of: whole latent cells and the pipeline's
        own rule (SD's and SDXL's ``check_inputs`` refuse anything but multiples of 8)."""
        return math.lcm(8, int(self.pipe.vae_scale_factor))

    def text_dtype(self) -> torch.dtype:
        encoder: Any = getattr(self.pipe, "text_encoder", None) or self.denoiser
        return encoder.dtype

    # --- per-family pieces -------------------------------------------------------------------
    @abstractmethod
    def uses_cfg(self, settings: Settings) -> bool:
        """Whether generation runs classifier-free guidance (a negative branch)."""

    @abstractmethod
    def encode(self, prompt: str, settings: Settings) -> Conditioning:
        """Generation conditioning for `prompt` (with the negative when guided)."""

    @abstractmethod
    def encode_rows(self, prompts: list[str], settings: Settings) -> Conditioning:
        """Unguided conditioning, one row per prompt (the localization batch)."""

    @abstractmethod
    def initial_noise(self, settings: Settings, generators: list[torch.Generator]) -> torch.Tensor:
        """What to pass as ``latents=`` so the pipeline draws exactly its own noise."""

    @abstractmethod
    def noise_shape(self, settings: Settings, batch: int = 1) -> tuple[int, ...]:
        """Shape of `batch` latents in the pipeline's ``output_type="latent"`` layout."""

    @abstractmethod
    def forward(self, scheduler: Any, latents: torch.Tensor, t: torch.Tensor,
                rows: dict[str, Any], settings: Settings) -> torch.Tensor:
        """One denoiser forward on row-aligned latents and conditioning."""

    @abstractmethod
    def guided(self, scheduler: Any, latents: torch.Tensor, t: torch.Tensor, cond: Conditioning,
               settings: Settings) -> torch.Tensor:
        """The guided noise prediction of one step, as ``__call__`` combines it."""

    @abstractmethod
    def decode(self, latents: torch.Tensor, settings: Settings) -> list[Image.Image]:
        """Clean latents -> PIL images, with the pipeline's own post-processing."""

    @abstractmethod
    def encode_image(self, image: Image.Image, settings: Settings) -> torch.Tensor:
        """A PIL image -> clean latents in the pipeline's layout (the inverse of decode)."""

    # --- shared defaults ---------------------------------------------------------------------
    def entering_latents(self, noise: torch.Tensor, run: Run) -> torch.Tensor:
        """The latents entering step 0 that ``__call__`` makes from `noise`."""
        return noise * run.template.init_noise_sigma

    def set_timesteps(self, scheduler: Any, settings: Settings,
                      noise_shape: tuple[int, ...]) -> torch.Tensor:
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

    def mask_grid(self, settings: Settings) -> tuple[int, int]:
        scale = self.pipe.vae_scale_factor
        return settings.height // scale, settings.width // scale

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

    def callback_tensors(self, cond: Conditioning, n: int, settings: Settings
                         ) -> dict[str, Optional[torch.Tensor]]:
        """The conditioning tensors ``__call__`` hands ``callback_on_step_end`` by these names
        (its ``_callback_tensor_inputs`` other than ``latents``), built for a batch of `n`
        latents, so refinement steps can give a callback what it declares."""
        return {}

    def check_callback_inputs(self, settings: Settings) -> None:
        """Refuse, before any work, callback tensors that refinement cannot provide."""
        if settings.callback is None:
            return
        known = {"latents", *self.callback_tensor_names()}
        missing = [name for name in settings.callback_inputs if name not in known]
        if missing:
            raise ValueError(f"callback_on_step_end asks for {missing}, which LoTTS refinement "
                             f"cannot provide for {type(self.pipe).__name__}; it provides "
                             f"{sorted(known)}")

    def callback_tensor_names(self) -> tuple[str, ...]:
        return tuple(name for name in getattr(self.pipe, "_callback_tensor_inputs", ("latents",))
                     if name != "latents" and name in self._CALLBACK_BUILDERS)

    # Names of ``_callback_tensor_inputs`` that :meth:`callback_tensors` builds.
    _CALLBACK_BUILDERS: frozenset[str] = frozenset()

    def token_source(self, settings: Settings) -> tuple[Any, int]:
        """Tokenizer whose positions are the cross-attention keys, and its padded length."""
        tokenizer = self.pipe.tokenizer or self.pipe.tokenizer_2
        return tokenizer, tokenizer.model_max_length
