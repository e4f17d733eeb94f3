"""PickScore (Kirstain et al., 2023): a CLIP-H fine-tuned on Pick-a-Pic human preferences.

score = logit_scale.exp() * cos(image, text), exactly the original inference code. The model
repo `yuvalkirstain/PickScore_v1` is a plain `CLIPModel`; its tokenizer and preprocessor come
from `laion/CLIP-ViT-H-14-laion2B-s32B-b79K` unless the model folder has them. Prompts are
truncated to 77 tokens with the end token kept, as that code's processor call.

Images go through `CLIPImageProcessor` as `AutoProcessor` gives it, which depends on the
transformers version (`ClipProcessorTransform`): by default transformers 5 with torchvision
(transparency composited onto white, uint8 antialiased bicubic resize, floored crop);
`processor_backend="transformers4"` reproduces the released code, which runs on transformers
4.x only (slow processor: alpha dropped, PIL resize); `"pil"` is transformers 5 without
torchvision.
"""
from __future__ import annotations

from pathlib import Path

import torch

from lotts.verifiers._clip import (
    ClipSimilarityVerifier,
    has_tokenizer,
    load_clip_encoder,
)
from lotts.verifiers._weights import PathLike, WeightSource

SOURCE = WeightSource(
    verifier="pickscore", what="the PickScore_v1 model folder", argument="path",
    env_var="LOTTS_PICKSCORE_PATH", kind="dir", repo_ids=("yuvalkirstain/PickScore_v1",),
    required=("config.json",), needs_weights=True)
PROCESSOR_SOURCE = WeightSource(
    verifier="pickscore", what="the CLIP-ViT-H-14 tokenizer/processor folder",
    argument="processor_path", env_var="LOTTS_PICKSCORE_PROCESSOR_PATH", kind="dir",
    repo_ids=("laion/CLIP-ViT-H-14-laion2B-s32B-b79K",), required=("tokenizer_config.json",),
    allow_patterns=("*.json", "*.txt"))


def load(*, path: PathLike | None, device: torch.device, dtype: torch.dtype,
         allow_download: bool, batch_size: int, processor_path: PathLike | None = None,
         processor_backend: str = "torchvision") -> ClipSimilarityVerifier:
    folder = SOURCE.resolve(path, allow_download)
    processor: Path | None = None
    if processor_path is not None or not has_tokenizer(folder):
        processor = PROCESSOR_SOURCE.resolve(processor_path, allow_download)
    encoder = load_clip_encoder(folder, device, dtype, processor_folder=processor,
                                backend=processor_backend)
    scale = float(encoder.model.logit_scale.detach().float().exp())
    return ClipSimilarityVerifier("pickscore", encoder, scale=scale, clamp_at_zero=False,
                                  batch_size=batch_size)
