"""LAION aesthetic predictor v2 ("improved aesthetic predictor", Schuhmann 2022).

score = MLP(normalize(CLIP ViT-L/14 image embedding)), on the original's 1-10 rating scale;
the prompt is ignored. Two pieces on disk: the head (`sac+logos+ava1-l14-linearMSE.pth`, a
state dict keyed `layers.{0,2,4,6,7}.*`, or a `.safetensors` of it) and the CLIP ViT-L/14
`CLIPModel` folder whose image embeddings it was trained on.
"""
from __future__ import annotations

import torch
from PIL import Image

from lotts.verifiers._base import BatchedVerifier
from lotts.verifiers._clip import ClipEncoder, load_clip_encoder
from lotts.verifiers._layers import MLPHead
from lotts.verifiers._weights import PathLike, WeightSource, load_state_dict

HEAD_FILES = ("sac+logos+ava1-l14-linearMSE.pth", "ava+logos-l14-linearMSE.pth",
              "ava+logos-l14-reluMSE.pth", "aesthetic_head.safetensors")
SOURCE = WeightSource(
    verifier="aesthetic", what="the aesthetic predictor head", argument="path",
    env_var="LOTTS_AESTHETIC_PATH", kind="file", filenames=HEAD_FILES,
    help_url="https://github.com/christophschuhmann/improved-aesthetic-predictor")
CLIP_SOURCE = WeightSource(
    verifier="aesthetic", what="the CLIP ViT-L/14 model folder", argument="clip_path",
    env_var="LOTTS_AESTHETIC_CLIP_PATH", kind="dir", repo_ids=("openai/clip-vit-large-patch14",),
    required=("config.json",), needs_weights=True)


class AestheticVerifier(BatchedVerifier):
    """Prompt-independent aesthetic rating of each image."""

    name = "aesthetic"

    def __init__(self, encoder: ClipEncoder, head: MLPHead, batch_size: int) -> None:
        super().__init__(encoder.device, encoder.dtype, batch_size)
        self.encoder, self.head = encoder, head.to(encoder.device)

    def score_batch(self, images: list[Image.Image], prompts: list[str]) -> torch.Tensor:
        return self.head(self.encoder.image_embeds(images))


def load(*, path: PathLike | None, device: torch.device, dtype: torch.dtype,
         allow_download: bool, batch_size: int, clip_path: PathLike | None = None
         ) -> AestheticVerifier:
    head = MLPHead.from_state_dict(load_state_dict(SOURCE.resolve(path, allow_download)))
    encoder = load_clip_encoder(CLIP_SOURCE.resolve(clip_path, allow_download), device, dtype,
                                with_tokenizer=False)
    width = encoder.model.config.projection_dim
    if head.in_features != width:
        raise ValueError(f"aesthetic: the head expects {head.in_features}-d embeddings but the "
                         f"CLIP model gives {width}-d ones; use CLIP ViT-L/14 (768-d)")
    return AestheticVerifier(encoder, head, batch_size)
