"""Backbone adapters: what LoTTS needs from SD 1.x/2.x, SDXL and FLUX pipelines.

Layout (each module imports only those above it):

- :mod:`~lotts.backbones.settings`: :class:`Settings` (a run's resolved call arguments; the
  three keyword sets are documented there side by side) and :class:`Conditioning`;
- :mod:`~lotts.backbones.base`: :class:`Backbone`, the abstract adapter contract;
- :mod:`~lotts.backbones.run`: :class:`Run`, one prompt's schedule and the shared loop;
- :mod:`~lotts.backbones.sd`, :mod:`~lotts.backbones.sdxl`, :mod:`~lotts.backbones.flux`: one
  file per family;
- :mod:`~lotts.backbones.registry`: :func:`detect_backbone` and the list of adapters.

Adding a backbone, e.g. SD3, is one new file plus one registry line::

    # lotts/backbones/sd3.py
    class StableDiffusion3Backbone(Backbone):
        name = "sd3"                                  # also a key of config.DEFAULT_T0
        pipeline_class = "StableDiffusion3Pipeline"   # diffusers class it serves
        supported = "StableDiffusion3Pipeline"
        denoiser_name = "transformer"
        ...                                           # the abstract methods of Backbone

    # lotts/backbones/registry.py
    ADAPTERS = (..., StableDiffusion3Backbone)
"""
from lotts.backbones.base import Backbone
from lotts.backbones.flux import FluxBackbone
from lotts.backbones.registry import ADAPTERS, SUPPORTED_PIPELINES, detect_backbone
from lotts.backbones.run import Run
from lotts.backbones.sd import StableDiffusionBackbone, UNetBackbone
from lotts.backbones.sdxl import StableDiffusionXLBackbone
from lotts.backbones.settings import COMMON_KWARGS, Conditioning, Settings

__all__ = ["ADAPTERS", "COMMON_KWARGS", "SUPPORTED_PIPELINES", "Backbone", "Conditioning",
           "FluxBackbone", "Run", "Settings", "StableDiffusionBackbone",
           "StableDiffusionXLBackbone", "UNetBackbone", "detect_backbone"]
