"""A run's call arguments, resolved once, and its encoded prompts.

Three sets of pipeline keyword arguments, side by side:

- :data:`COMMON_KWARGS`: what every backbone reads itself (size, steps, guidance, the negative
  prompt, the user's step callback). They become typed :class:`Settings` fields.
- ``Backbone.extra_kwargs``: the family's other accepted arguments (SD: ``eta``,
  ``guidance_rescale``, ``clip_skip``, ``cross_attention_kwargs``; SDXL adds the second prompts
  and size conditioning; FLUX: ``true_cfg_scale``, ``max_sequence_length``, ...). Resolved with
  the pipeline's own defaults into :attr:`Settings.options`, which the adapter's encode and
  forward read. Anything outside ``COMMON_KWARGS | extra_kwargs`` is refused by name.
- ``Backbone.passthrough_kwargs``: the subset of ``extra_kwargs`` handed unchanged to the
  pipeline's ``__call__`` for the originals (:attr:`Settings.passthrough`), because that call
  makes its own use of them. The encoded prompts are passed as ``prompt_embeds`` instead of the
  prompt-text arguments, so text arguments are never passed through.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Optional

import torch

COMMON_KWARGS = frozenset({"num_inference_steps", "guidance_scale", "height", "width",
                           "negative_prompt", "callback_on_step_end",
                           "callback_on_step_end_tensor_inputs"})


@dataclass
class Settings:
    """Call arguments of one run, resolved with the pipeline's own defaults.

    device: the pipeline's execution device, read once here (``pipe._execution_device`` walks
    every module, 74 ms on a real pipeline) and used by every later step.
    """

    height: int
    width: int
    num_inference_steps: int
    guidance_scale: float
    do_cfg: bool
    device: torch.device
    dtype: torch.dtype
    passthrough: dict[str, Any] = field(default_factory=dict)  # to __call__ as given
    options: dict[str, Any] = field(default_factory=dict)  # what the adapter's forward reads
    callback: Optional[Callable[..., Any]] = None
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
                if source is None:
                    raise ValueError("this run has no negative conditioning (no guidance)")
                rows = {name: repeat_rows(x, n) for name, x in source.items()}
            self._memo[key] = {**rows, **self.shared}
        return self._memo[key]


def repeat_rows(x: torch.Tensor, n: int) -> torch.Tensor:
    """Tile a (R, ...) block n times: rows [block, block, ...]."""
    return x.repeat(n, *([1] * (x.dim() - 1)))
