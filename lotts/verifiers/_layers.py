"""Pieces several verifiers share: image preprocessing, the MLP reward head, tokenizer loading.

Preprocessing is done with PIL and torch only (torchvision is unavailable next to CPU torch),
reproducing `Resize(shortest side, bicubic) -> CenterCrop -> ToTensor -> Normalize`.
"""
from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn

# OpenAI CLIP's normalisation, also used by BLIP/ImageReward, open_clip and the aesthetic head.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass(frozen=True)
class ImageTransform:
    """Resize the shortest side to `size` (bicubic), center-crop `crop` x `crop`, normalise.

    `round_crop_offset` picks torchvision's crop offset (round) over transformers' (floor);
    they differ by one pixel only for odd margins.
    """

    size: int
    crop: int
    mean: tuple[float, ...] = CLIP_MEAN
    std: tuple[float, ...] = CLIP_STD
    round_crop_offset: bool = True

    def __call__(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """Return a float32 (B, 3, crop, crop) batch."""
        arrays = [np.asarray(self._resize_crop(image.convert("RGB"))) for image in images]
        pixels = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float().div_(255.0)
        mean = torch.tensor(self.mean).view(1, 3, 1, 1)
        std = torch.tensor(self.std).view(1, 3, 1, 1)
        return (pixels - mean) / std

    def _resize_crop(self, image: Image.Image) -> Image.Image:
        width, height = image.size
        short, long = sorted((width, height))
        new_short, new_long = self.size, int(self.size * long / short)
        new_size = (new_short, new_long) if width <= height else (new_long, new_short)
        if new_size != image.size:
            image = image.resize(new_size, Image.BICUBIC)
        return image.crop(self._crop_box(*image.size))

    def _crop_box(self, width: int, height: int) -> tuple[int, int, int, int]:
        if self.round_crop_offset:
            left, top = round((width - self.crop) / 2.0), round((height - self.crop) / 2.0)
        else:
            left, top = (width - self.crop) // 2, (height - self.crop) // 2
        return left, top, left + self.crop, top + self.crop


def transform_from_preprocessor_config(folder: Path | None, image_size: int) -> ImageTransform:
    """Build the transform a transformers `preprocessor_config.json` describes (CLIP layout),
    falling back to CLIP's defaults at the vision tower's `image_size`."""
    config: Mapping[str, Any] = {}
    if folder is not None and (folder / "preprocessor_config.json").is_file():
        config = json.loads((folder / "preprocessor_config.json").read_text())
    size = _edge(config.get("size"), image_size)
    crop = _edge(config.get("crop_size"), size)
    return ImageTransform(size=size, crop=crop,
                          mean=tuple(config.get("image_mean", CLIP_MEAN)),
                          std=tuple(config.get("image_std", CLIP_STD)),
                          round_crop_offset=False)


def _edge(value: Any, default: int) -> int:
    if isinstance(value, Mapping):
        value = value.get("shortest_edge", value.get("height"))
    return int(value) if value is not None else int(default)


class MLPHead(nn.Module):
    """The reward head of the LAION aesthetic predictor and of ImageReward.

    Layout `layers.{0,2,4,6,7}` = Linear(d,1024), Dropout, Linear(1024,128), Dropout,
    Linear(128,64), Dropout, Linear(64,16), Linear(16,1), with no activations (both originals
    comment them out). Dropout slots are identities at inference. Widths come from the state
    dict, so tiny test heads load the same way as the real ones.
    """

    def __init__(self, shapes: Mapping[int, tuple[int, int]]) -> None:
        super().__init__()
        last = max(shapes)
        self.layers = nn.Sequential(*[
            nn.Linear(shapes[i][1], shapes[i][0]) if i in shapes else nn.Identity()
            for i in range(last + 1)])

    @classmethod
    def from_state_dict(cls, state_dict: Mapping[str, torch.Tensor], prefix: str = "layers."
                        ) -> MLPHead:
        """Build from weights keyed `{prefix}{i}.weight/bias`; extra keys are an error."""
        shapes = {}
        for key, value in state_dict.items():
            index, _, param = key[len(prefix):].partition(".")
            if not key.startswith(prefix) or not index.isdigit() or param not in ("weight", "bias"):
                raise ValueError(f"unexpected key {key!r} in an MLP head state dict")
            if param == "weight":
                shapes[int(index)] = tuple(value.shape)
        if not shapes:
            raise ValueError("no MLP head weights found (expected keys like 'layers.0.weight')")
        head = cls(shapes)
        local = {key[len(prefix):]: value for key, value in state_dict.items()}
        head.layers.load_state_dict(local, strict=True)
        return head.eval()

    @property
    def in_features(self) -> int:
        return self.layers[0].in_features

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """(B, d) -> (B,) in float32, as both originals run the head on `.float()` features."""
        return self.layers(features.float())[:, 0]


def load_tokenizer(folder: Path, fallback: type | None = None) -> Any:
    """A tokenizer from a local folder: AutoTokenizer, else `fallback.from_pretrained` (for a
    bare vocab folder without tokenizer_config.json)."""
    from transformers import AutoTokenizer
    try:
        return AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    except (OSError, ValueError, KeyError):
        if fallback is None:
            raise
        return fallback.from_pretrained(str(folder), local_files_only=True)


def tokenize(tokenizer: Any, prompts: Sequence[str], max_length: int, device: torch.device
             ) -> dict[str, torch.Tensor]:
    """Pad every prompt to `max_length` so a prompt's tokens never depend on its batch."""
    encoded = tokenizer(list(prompts), padding="max_length", truncation=True,
                        max_length=max_length, return_tensors="pt")
    return {key: encoded[key].to(device) for key in ("input_ids", "attention_mask")}


def check_vocab(tokenizer: Any, embedding_rows: int, what: str) -> None:
    """Fail early when the tokenizer belongs to another model (ids past the embedding)."""
    if len(tokenizer) > embedding_rows:
        raise ValueError(f"{what}: the tokenizer has {len(tokenizer)} tokens but the model's "
                         f"embedding has {embedding_rows} rows; it is the wrong tokenizer")
