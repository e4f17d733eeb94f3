"""One prompt's schedule and the denoising loop every backbone shares."""
from __future__ import annotations

import copy
import inspect
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Optional

import torch

from lotts.backbones.callbacks import RefinementCallback
from lotts.backbones.settings import Conditioning, Settings

if TYPE_CHECKING:
    from lotts.backbones.base import Backbone

AfterStep = Callable[[int, torch.Tensor], torch.Tensor]


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
        # The settings refinement steps run with: `settings`, unless a callback cut guidance
        # before t0 in the pipeline's own call (see lotts.backbones.callbacks).
        self.step_settings = settings

    def scheduler_at(self, step: int) -> Any:
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

    def step_kwargs(self, scheduler: Any, seeds: Sequence[int]) -> dict[str, Any]:
        """``eta``/``generator`` for ``scheduler.step`` where it takes them (one generator per row)."""
        accepted = set(inspect.signature(scheduler.step).parameters)
        kwargs: dict[str, Any] = {}
        if "eta" in accepted:
            kwargs["eta"] = self.settings.options.get("eta", 0.0)
        if "generator" in accepted:
            kwargs["generator"] = [torch.Generator("cpu").manual_seed(int(s)) for s in seeds]
        return kwargs

    def denoise(self, latents: torch.Tensor, start: int, stop: int, seeds: Sequence[int],
                after_step: Optional[AfterStep] = None
                ) -> torch.Tensor:
        """Steps [start, stop) from `latents` (entering `start`), as the pipeline's loop does.

        after_step(i, latents) sees the latents entering step i + 1 (after the user's
        callback) and returns the latents to continue with.
        """
        scheduler = self.scheduler_at(start)
        step_kwargs = self.step_kwargs(scheduler, seeds)
        callback = None
        if self.settings.callback is not None:
            callback = RefinementCallback(self, self.settings.callback, latents.shape[0])
        for i in range(start, stop):
            t = self.timesteps[i]
            settings = self.step_settings if callback is None else callback.settings
            noise = self.backbone.guided(scheduler, latents, t, self.cond, settings)
            latents = scheduler.step(noise, t, latents, **step_kwargs, return_dict=False)[0]
            if callback is not None:
                latents = callback(i, t, latents)
            if after_step is not None:
                latents = after_step(i, latents)
        return latents
