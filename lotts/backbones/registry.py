"""Which adapter serves which pipeline: one line per backbone family."""
from __future__ import annotations

from typing import Any

from lotts.backbones.base import Backbone
from lotts.backbones.flux import FluxBackbone
from lotts.backbones.sd import StableDiffusionBackbone
from lotts.backbones.sdxl import StableDiffusionXLBackbone

# Checked in order with isinstance against ``diffusers.<adapter.pipeline_class>``, so a family
# whose pipeline subclasses another's comes first.
ADAPTERS: tuple[type[Backbone], ...] = (
    StableDiffusionXLBackbone,
    FluxBackbone,
    StableDiffusionBackbone,
)
SUPPORTED_PIPELINES = tuple(adapter.supported for adapter in ADAPTERS)


def detect_backbone(pipe: Any) -> Backbone:
    """The adapter for `pipe`, by pipeline class; anything else raises NotImplementedError."""
    import diffusers

    for adapter in ADAPTERS:
        if isinstance(pipe, getattr(diffusers, adapter.pipeline_class)):
            return adapter(pipe)
    raise NotImplementedError(f"LoTTS does not support {type(pipe).__name__}; supported "
                              f"pipelines: {', '.join(SUPPORTED_PIPELINES)}")
