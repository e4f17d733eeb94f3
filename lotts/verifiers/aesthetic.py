"""LAION aesthetic predictor v2 ("improved aesthetic predictor", Schuhmann 2022).

score = MLP(normalize(CLIP ViT-L/14 image embedding)), on the original's 1-10 rating scale;
the prompt is ignored. Two pieces on disk: the head (`sac+logos+ava1-l14-linearMSE.pth`, a
state dict keyed `layers.{i}.*`, or a `.safetensors` of it) and the CLIP ViT-L/14 `CLIPModel`
folder whose image embeddings it was trained on.

As `simple_inference.py`: images go through OpenAI CLIP's `clip.load` preprocess (PIL bicubic
resize and centre crop in the image's own mode, torchvision's rounded crop offset, RGB last;
see `PilResizeCropTransform`), not the CLIP folder's transformers processor. The head is built
by its own structure: the linearMSE files have no activations, `ava+logos-l14-reluMSE.pth`
(Linear slots 0, 3, 6, 9, 11) has a ReLU after each hidden Linear, as the inference script it
was released with; `head_activation="none"|"relu"` overrides the detection.
"""
from __future__ import annotations

import torch
from PIL import Image

from lotts.verifiers._base import BatchedVerifier
from lotts.verifiers._clip import ClipEncoder, load_clip_encoder
from lotts.verifiers._layers import MLPHead
from lotts.verifiers._transforms import CLIP_MEAN, CLIP_STD, PilResizeCropTransform
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


def openai_clip_transform(size: int) -> PilResizeCropTransform:
    """`clip.load`'s preprocess: `_transform(model.visual.input_resolution)`."""
    return PilResizeCropTransform(size=size, crop=size, mean=CLIP_MEAN, std=CLIP_STD)


class AestheticVerifier(BatchedVerifier):
    """Prompt-independent aesthetic rating of each image."""

    name = "aesthetic"

    def __init__(self, encoder: ClipEncoder, head: MLPHead, batch_size: int) -> None:
        super().__init__(encoder.device, encoder.dtype, batch_size)
        self.encoder, self.head = encoder, head.to(encoder.device)

    def score_batch(self, images: list[Image.Image], prompts: list[str]) -> torch.Tensor:
        return self.head(self.encoder.image_embeds(images))


def load(*, path: PathLike | None, device: torch.device, dtype: torch.dtype,
         allow_download: bool, batch_size: int, clip_path: PathLike | None = None,
         head_activation: str = "auto") -> AestheticVerifier:
    head = MLPHead.from_state_dict(load_state_dict(SOURCE.resolve(path, allow_download)),
                                   activation=head_activation)
    encoder = load_clip_encoder(CLIP_SOURCE.resolve(clip_path, allow_download), device, dtype,
                                with_tokenizer=False, make_transform=openai_clip_transform)
    width = encoder.model.config.projection_dim
    if head.in_features != width:
        raise ValueError(f"aesthetic: the head expects {head.in_features}-d embeddings but the "
                         f"CLIP model gives {width}-d ones; use CLIP ViT-L/14 (768-d)")
    return AestheticVerifier(encoder, head, batch_size)
