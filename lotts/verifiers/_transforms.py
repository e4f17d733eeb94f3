"""Image preprocessing of each official scorer, step for step, with PIL and torch only.

torchvision cannot be imported next to the CPU torch used here, so its steps are written out:
a torchvision resize of a float tensor is `F.interpolate(mode="bicubic", antialias=True,
align_corners=False)`; of a uint8 tensor on the CPU, the same call on the uint8 tensor (torch's
native uint8 kernel, which torchvision uses there); of a PIL image, PIL's own `resize`. Each
step's comment names the official function it reproduces.

Three pipelines cover the five verifiers:

- `PilResizeCropTransform`: OpenAI CLIP's `_transform` (the aesthetic predictor) and
  ImageReward's `_transform`: resize and crop the PIL image in its own mode, convert to RGB last.
- `ResizeLongestPadTransform`: HPSv2's evaluation transform (`image_transform(...,
  resize_longest_max=True)`): longest side to the size on a float tensor, black padding.
- `ClipProcessorTransform`: transformers' `CLIPImageProcessor` (PickScore, CLIPScore), by
  default as transformers 5 runs it.
"""
from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

# OpenAI CLIP's normalisation, also used by BLIP/ImageReward, open_clip and the aesthetic head.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


class ImageTransform(Protocol):
    """PIL images -> a float32 (B, 3, H, W) batch on the CPU, ready for the vision tower."""

    def __call__(self, images: Sequence[Image.Image]) -> torch.Tensor: ...


def _normalize(pixels: torch.Tensor, mean: Sequence[float], std: Sequence[float]
               ) -> torch.Tensor:
    """torchvision `Normalize` on (B, 3, H, W) values in [0, 1]."""
    return (pixels - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)


def _to_float_chw(image: Image.Image) -> torch.Tensor:
    """torchvision `ToTensor` of an RGB PIL image: (3, H, W) float32 in [0, 1]."""
    array = np.asarray(image.convert("RGB"), dtype=np.uint8)
    return torch.from_numpy(array.copy()).permute(2, 0, 1).float().div_(255.0)


def shortest_side_size(width: int, height: int, size: int) -> tuple[int, int]:
    """(width, height) after torchvision `Resize(size)` / transformers `shortest_edge` resizing:
    the short side becomes `size`, the long side `int(size * long / short)` (truncated)."""
    if width <= height:
        return size, int(size * height / width)
    return int(size * width / height), size


# ----- OpenAI CLIP `_transform` / ImageReward `_transform` ------------------------------------


@dataclass(frozen=True)
class PilResizeCropTransform:
    """`Compose([Resize(size, BICUBIC), CenterCrop(crop), convert("RGB"), ToTensor(),
    Normalize])` on a PIL image, as OpenAI CLIP's and ImageReward's `_transform`.

    The resize and crop act on the image in its own mode, so PIL does what it does there:
    RGBA/LA are premultiplied by alpha while resizing, P and 1 are resized nearest-neighbour.
    The crop offset rounds like torchvision's `center_crop` (Python `round`, half to even).
    """

    size: int
    crop: int
    mean: tuple[float, ...] = CLIP_MEAN
    std: tuple[float, ...] = CLIP_STD

    def __call__(self, images: Sequence[Image.Image]) -> torch.Tensor:
        pixels = torch.stack([_to_float_chw(self.resize_crop(image)) for image in images])
        return _normalize(pixels, self.mean, self.std)

    def resize_crop(self, image: Image.Image) -> Image.Image:
        """The PIL image after Resize and CenterCrop, still in its own mode."""
        # torchvision F.resize on PIL: PIL's resize, skipped when the size is unchanged
        new_size = shortest_side_size(*image.size, self.size)
        if new_size != image.size:
            image = image.resize(new_size, Image.Resampling.BICUBIC)
        # torchvision F.center_crop: offsets int(round(margin / 2)), Python's round (half to
        # even: margins 1, 3, 5, 7 give 0, 2, 2, 4); the crop fits after Resize
        # unless crop > size, which the official configurations never use
        width, height = image.size
        if self.crop > min(width, height):
            raise ValueError(f"crop {self.crop} is larger than the resized image {image.size}")
        left, top = round((width - self.crop) / 2.0), round((height - self.crop) / 2.0)
        return image.crop((left, top, left + self.crop, top + self.crop))


# ----- HPSv2 `image_transform(..., resize_longest_max=True)` ----------------------------------


@dataclass(frozen=True)
class ResizeLongestPadTransform:
    """HPSv2's evaluation transform: RGB, `ToTensor`, `ResizeMaxSize(size)`, `Normalize`.

    `ResizeMaxSize` scales the float tensor so the longest side is `size` (each side
    `round(side * scale)`), antialiased bicubic, and pads with 0 (black before normalising):
    `pad // 2` on the left/top, the rest right/bottom.

    Deliberate differences, where the official transform crashes: an RGBA image is kept RGBA by
    HPSv2's `_convert_to_rgb_or_rgba` and then fails in the 3-channel patch embedding, so here
    it is converted to RGB (alpha dropped, colours as stored); a non-square image whose longest
    side is already `size` skips the official resize *and* padding and fails on the positional
    embedding, so here it is padded to a square like every other image.
    """

    size: int
    mean: tuple[float, ...] = CLIP_MEAN
    std: tuple[float, ...] = CLIP_STD

    def __call__(self, images: Sequence[Image.Image]) -> torch.Tensor:
        pixels = torch.stack([self.resize_pad(_to_float_chw(image)) for image in images])
        return _normalize(pixels, self.mean, self.std)

    def resize_pad(self, pixels: torch.Tensor) -> torch.Tensor:
        """(3, H, W) in [0, 1] -> (3, size, size), content resized, zero padding."""
        height, width = pixels.shape[-2:]
        scale = self.size / float(max(height, width))
        if scale != 1.0:  # ResizeMaxSize.forward: new side = round(side * scale)
            new_size = [round(height * scale), round(width * scale)]
            # torchvision F.resize(float tensor, BICUBIC, antialias=True): no clamping
            pixels = F.interpolate(pixels[None], size=new_size, mode="bicubic",
                                   align_corners=False, antialias=True)[0]
        pad_h, pad_w = self.size - pixels.shape[-2], self.size - pixels.shape[-1]
        # F.pad(img, [left, top, right, bottom], fill=0)
        return F.pad(pixels, (pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2))


# ----- transformers 5 CLIPImageProcessor ------------------------------------------------------


def composite_on_white(image: Image.Image) -> Image.Image:
    """transformers 5 `image_transforms.convert_to_rgb`: an image with an alpha band or a
    `transparency` entry is alpha-composited onto white, any other converted to RGB."""
    if "A" in image.getbands() or image.info.get("transparency") is not None:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def _plain_rgb(image: Image.Image) -> Image.Image:
    """transformers 4.x `convert_to_rgb`: PIL's `convert("RGB")` (alpha dropped)."""
    return image.convert("RGB")


_PROCESSOR_BACKENDS = ("torchvision", "pil", "transformers4")
_RESAMPLE_MODES = {2: "bilinear", 3: "bicubic"}  # PIL filter ids in preprocessor configs


@dataclass(frozen=True)
class ClipProcessorTransform:
    """transformers `CLIPImageProcessor`: convert to RGB, resize the shortest edge to `size`,
    center-crop `crop` (offset floored), rescale, normalise.

    The official scorers call `AutoProcessor`, whose result depends on the transformers
    version, so `backend` picks one:

    - "torchvision" (default): transformers 5 with torchvision installed (torchmetrics'
      master; PickScore's code once its features are unwrapped). Transparency is composited
      onto white; the uint8 tensor is resized by torchvision's CPU kernel, torch's native
      uint8 antialiased bicubic.
    - "pil": transformers 5 without torchvision. White compositing, PIL resize of the RGB image.
    - "transformers4": transformers 4.x's default slow processor (4.57 still picks it), where
      the released torchmetrics 1.9.0 and PickScore code run: `convert("RGB")`, which drops
      alpha with the stored colours, then PIL resize.
    """

    size: int
    crop: int
    mean: tuple[float, ...] = CLIP_MEAN
    std: tuple[float, ...] = CLIP_STD
    resample: str = "bicubic"
    backend: str = "torchvision"

    def __post_init__(self) -> None:
        if self.backend not in _PROCESSOR_BACKENDS:
            raise ValueError(f"unknown image processor backend {self.backend!r}; choose from "
                             f"{list(_PROCESSOR_BACKENDS)}")
        if self.resample not in _RESAMPLE_MODES.values():
            raise ValueError(f"unsupported resample {self.resample!r}; the CLIP processors "
                             f"use one of {sorted(_RESAMPLE_MODES.values())}")

    def __call__(self, images: Sequence[Image.Image]) -> torch.Tensor:
        to_rgb = _plain_rgb if self.backend == "transformers4" else composite_on_white
        pixels = torch.stack([self.resize_crop(to_rgb(image)) for image in images])
        # TorchvisionBackend.rescale_and_normalize: fused, mean and std scaled by 1/rescale
        scale = 1.0 / (1 / 255)
        mean = torch.tensor(self.mean) * scale
        std = torch.tensor(self.std) * scale
        return (pixels.float() - mean.view(1, 3, 1, 1)) / std.view(1, 3, 1, 1)

    def resize_crop(self, image: Image.Image) -> torch.Tensor:
        """RGB PIL image -> (3, crop, crop) uint8 after the processor's resize and crop."""
        new_width, new_height = shortest_side_size(*image.size, self.size)
        if self.backend != "torchvision":  # PilBackend, 4.x: PIL resize of the RGB image
            if (new_width, new_height) != image.size:
                filters = {"bicubic": Image.Resampling.BICUBIC,
                           "bilinear": Image.Resampling.BILINEAR}
                image = image.resize((new_width, new_height), filters[self.resample])
            pixels = torch.from_numpy(np.asarray(image, dtype=np.uint8).copy()).permute(2, 0, 1)
        else:
            pixels = torch.from_numpy(np.asarray(image, dtype=np.uint8).copy())
            pixels = pixels.permute(2, 0, 1).contiguous()
            if (new_height, new_width) != tuple(pixels.shape[-2:]):
                # torchvision v2 resize_image on a CPU uint8 tensor: the native uint8 kernel
                pixels = F.interpolate(pixels[None], size=[new_height, new_width],
                                       mode=self.resample, align_corners=False,
                                       antialias=True)[0]
        return self._center_crop(pixels)

    def _center_crop(self, pixels: torch.Tensor) -> torch.Tensor:
        """TorchvisionBackend / PilBackend center_crop: zero-pad if smaller, offsets floored."""
        height, width = pixels.shape[-2:]
        if self.crop > width or self.crop > height:
            pad_w, pad_h = max(self.crop - width, 0), max(self.crop - height, 0)
            pixels = F.pad(pixels, (pad_w // 2, (pad_w + 1) // 2, pad_h // 2, (pad_h + 1) // 2))
            height, width = pixels.shape[-2:]
        top, left = int((height - self.crop) / 2.0), int((width - self.crop) / 2.0)
        return pixels[:, top:top + self.crop, left:left + self.crop]


def clip_processor_transform(folder: Path | None, image_size: int, backend: str = "torchvision"
                             ) -> ClipProcessorTransform:
    """The `ClipProcessorTransform` a transformers `preprocessor_config.json` describes,
    falling back to CLIP's defaults at the vision tower's `image_size`."""
    config: Mapping[str, Any] = {}
    if folder is not None and (folder / "preprocessor_config.json").is_file():
        config = json.loads((folder / "preprocessor_config.json").read_text())
    for flag in ("do_resize", "do_center_crop", "do_rescale", "do_normalize", "do_convert_rgb"):
        if config.get(flag, True) is False:
            raise ValueError(f"{folder}/preprocessor_config.json sets {flag}=false, which the "
                             f"CLIP verifiers do not support")
    size = _edge(config.get("size"), image_size)
    resample = config.get("resample", 3)
    if resample not in _RESAMPLE_MODES:
        raise ValueError(f"{folder}/preprocessor_config.json: unsupported resample {resample}; "
                         f"expected 3 (bicubic) or 2 (bilinear)")
    return ClipProcessorTransform(
        size=size, crop=_edge(config.get("crop_size"), size),
        mean=tuple(config.get("image_mean", CLIP_MEAN)),
        std=tuple(config.get("image_std", CLIP_STD)),
        resample=_RESAMPLE_MODES[resample], backend=backend)


def _edge(value: Any, default: int) -> int:
    if isinstance(value, Mapping):
        value = value.get("shortest_edge", value.get("height"))
    return int(value) if value is not None else int(default)
