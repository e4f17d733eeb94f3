"""The user's ``callback_on_step_end`` inside LoTTS' own refinement loop, run the way the
pipeline's own loop runs it.

A callback gets the tensors it declares (``callback_on_step_end_tensor_inputs``, or a
``PipelineCallback``'s ``tensor_inputs``) with the names and layout ``__call__`` gives them, and
what it returns continues: the latents, and a guidance cutoff. The UNet pipelines read
``pipe._guidance_scale`` at every step, so diffusers' ``SDCFGCutoffCallback`` /
``SDXLCFGCutoffCallback`` turn guidance off by setting it to 0 and keeping the positive half of
the embeddings; refinement follows that at the same step, and from t0 on when the cutoff came
earlier, in the pipeline's own call. Any other change of a conditioning tensor is refused by
name: refinement cannot re-encode mid-loop.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Optional

import torch

from lotts.backbones.settings import Settings

if TYPE_CHECKING:
    from lotts.backbones.run import Run


def guidance_after_callback(run: Run, settings: Settings) -> Settings:
    """`settings` with the guidance the pipeline now holds (``pipe._guidance_scale``, which a
    cutoff callback may have lowered), for backbones whose loop reads it every step."""
    scale = getattr(run.backbone.pipe, "_guidance_scale", None)
    if not run.backbone.follows_pipeline_guidance or scale is None:
        return settings
    if float(scale) == settings.guidance_scale:
        return settings
    changed = dataclasses.replace(settings, guidance_scale=float(scale))
    return dataclasses.replace(changed, do_cfg=settings.do_cfg and run.backbone.uses_cfg(changed))


class RefinementCallback:
    """``callback_on_step_end`` for one refinement batch of `rows` latents."""

    def __init__(self, run: Run, callback: Callable[..., Any], rows: int) -> None:
        self.run, self.callback, self.rows = run, callback, rows
        self.settings = run.step_settings
        self.given = self._inputs()

    def _inputs(self) -> dict[str, Optional[torch.Tensor]]:
        available = self.run.backbone.callback_tensors(self.run.cond, self.rows, self.settings)
        return {name: available[name] for name in self.run.settings.callback_inputs
                if name != "latents"}

    def __call__(self, i: int, t: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
        pipe = self.run.backbone.pipe
        previous = getattr(pipe, "_guidance_scale", None)
        pipe._guidance_scale = self.settings.guidance_scale  # what the callback reads and edits
        try:
            out = self.callback(pipe, i, t, {"latents": latents, **self.given}) or {}
            after = guidance_after_callback(self.run, self.settings)
        finally:
            pipe._guidance_scale = previous
        changed = sorted(name for name, tensor in self.given.items()
                         if name in out and out[name] is not tensor)
        cut = self.settings.do_cfg and not after.do_cfg
        if changed and not cut:
            raise RuntimeError(
                f"callback_on_step_end changed {changed} at step {i}, during a LoTTS refinement "
                "(steps t0 on); refinement keeps the run's conditioning (only a guidance cutoff, "
                "pipe._guidance_scale <= 1, is followed). Make the change before t0.")
        if after is not self.settings:
            self.settings = after
            self.given = self._inputs()  # unguided from here: the positive rows only
        return out.get("latents", latents)
