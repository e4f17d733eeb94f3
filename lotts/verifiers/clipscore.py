"""CLIPScore: prompt-image agreement of a CLIP model (Hessel et al., 2021).

score = max(100 * cos(image, text), 0), the reference implementation torchmetrics'
`clip_score` per image (the paper's w=2.5 only rescales). Weights: any transformers `CLIPModel`
folder with its tokenizer, by default the cached `openai/clip-vit-large-patch14` (torchmetrics'
default). As torchmetrics: images go through the folder's `CLIPProcessor` (by default as
transformers 5 runs it; `processor_backend="transformers4"` for the transformers 4.x that the
released torchmetrics 1.9.0 needs, `"pil"` for transformers 5 without torchvision; see
`ClipProcessorTransform`), and prompts are tokenized without truncation and then cut to 77
positions, so a longer prompt loses its end token (torchmetrics warns and cuts; the text tower
pools what is left).
"""
from __future__ import annotations

import torch

from lotts.verifiers._clip import ClipSimilarityVerifier, load_clip_encoder
from lotts.verifiers._layers import tokenize_cut
from lotts.verifiers._weights import PathLike, WeightSource

SOURCE = WeightSource(
    verifier="clipscore", what="the CLIP model folder", argument="path",
    env_var="LOTTS_CLIPSCORE_PATH", kind="dir", repo_ids=("openai/clip-vit-large-patch14",),
    required=("config.json",), needs_weights=True)


def load(*, path: PathLike | None, device: torch.device, dtype: torch.dtype,
         allow_download: bool, batch_size: int, processor_backend: str = "torchvision"
         ) -> ClipSimilarityVerifier:
    folder = SOURCE.resolve(path, allow_download)
    encoder = load_clip_encoder(folder, device, dtype, backend=processor_backend,
                                tokenize_fn=tokenize_cut)
    return ClipSimilarityVerifier("clipscore", encoder, scale=100.0, clamp_at_zero=True,
                                  batch_size=batch_size)
