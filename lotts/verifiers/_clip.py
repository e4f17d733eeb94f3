"""CLIP dual encoders: the common core of CLIPScore, PickScore, HPSv2 and the aesthetic score.

All four are a transformers `CLIPModel` (HPSv2 after key conversion) with a tokenizer and an
image transform; they differ in the official preprocessing and tokenization in front of the
model (see `lotts.verifiers._transforms`) and in how the cosine similarity is scaled.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from PIL import Image

from lotts.verifiers._base import BatchedVerifier
from lotts.verifiers._layers import check_vocab, load_tokenizer, tokenize
from lotts.verifiers._transforms import ImageTransform, clip_processor_transform

# (tokenizer, prompts, max_length, device) -> {"input_ids", "attention_mask"}
TokenizeFn = Callable[[Any, Sequence[str], int, torch.device], dict]

_TOKENIZER_FILES = ("tokenizer.json", "vocab.json", "tokenizer_config.json")


def has_tokenizer(folder: Path) -> bool:
    return any((folder / name).is_file() for name in _TOKENIZER_FILES)


class ClipEncoder:
    """A CLIPModel plus its tokenizer and image transform, giving L2-normalised embeddings."""

    def __init__(self, model: Any, transform: ImageTransform, tokenizer: Any = None,
                 device: torch.device | None = None, dtype: torch.dtype = torch.float32,
                 tokenize_fn: TokenizeFn = tokenize) -> None:
        device = device or torch.device("cpu")
        self.model = model.to(device=device, dtype=dtype).eval()
        self.transform, self.tokenizer, self.tokenize_fn = transform, tokenizer, tokenize_fn
        self.device, self.dtype = device, dtype
        self.max_length = model.config.text_config.max_position_embeddings
        if tokenizer is not None:
            check_vocab(tokenizer, model.config.text_config.vocab_size, "CLIP text tower")

    def image_embeds(self, images: Sequence[Image.Image]) -> torch.Tensor:
        pixels = self.transform(images).to(self.device, self.dtype)  # built on the CPU
        pooled = self.model.vision_model(pixel_values=pixels).pooler_output
        return F.normalize(self.model.visual_projection(pooled).float(), dim=-1)

    def text_embeds(self, prompts: Sequence[str]) -> torch.Tensor:
        tokens = self.tokenize_fn(self.tokenizer, prompts, self.max_length, self.device)
        pooled = self.model.text_model(**tokens).pooler_output
        return F.normalize(self.model.text_projection(pooled).float(), dim=-1)

    def cosine(self, images: Sequence[Image.Image], prompts: Sequence[str]) -> torch.Tensor:
        return (self.image_embeds(images) * self.text_embeds(prompts)).sum(-1)


def load_clip_encoder(folder: Path, device: torch.device, dtype: torch.dtype,
                      processor_folder: Path | None = None, with_tokenizer: bool = True,
                      make_transform: Callable[[int], ImageTransform] | None = None,
                      backend: str = "torchvision", tokenize_fn: TokenizeFn = tokenize
                      ) -> ClipEncoder:
    """Load a `save_pretrained` CLIPModel folder; tokenizer and preprocessor_config.json come
    from `processor_folder` when given (PickScore keeps them in the LAION repo), else `folder`.
    Images go through `make_transform(vision image size)` when given, else through the
    `CLIPImageProcessor` that preprocessor_config.json describes (on `backend`)."""
    from transformers import CLIPModel, CLIPTokenizer
    model = CLIPModel.from_pretrained(str(folder), local_files_only=True)
    source = processor_folder or folder
    tokenizer = load_tokenizer(source, fallback=CLIPTokenizer) if with_tokenizer else None
    vision_config: Any = model.config.vision_config
    image_size = int(vision_config.image_size)
    transform = (make_transform(image_size) if make_transform is not None
                 else clip_processor_transform(source, image_size, backend))
    return ClipEncoder(model, transform, tokenizer, device, dtype, tokenize_fn)


class ClipSimilarityVerifier(BatchedVerifier):
    """score = scale * cos(image, prompt), optionally clamped at 0 (CLIPScore's convention)."""

    def __init__(self, name: str, encoder: ClipEncoder, scale: float, clamp_at_zero: bool,
                 batch_size: int) -> None:
        super().__init__(encoder.device, encoder.dtype, batch_size)
        self.name, self.encoder = name, encoder
        self.scale, self.clamp_at_zero = scale, clamp_at_zero

    def score_batch(self, images: list[Image.Image], prompts: list[str]) -> torch.Tensor:
        scores = self.scale * self.encoder.cosine(images, prompts)
        return scores.clamp(min=0.0) if self.clamp_at_zero else scores
