"""ImageReward (Xu et al., 2023), the LoTTS paper's selector, on transformers' BLIP classes.

BLIP ViT-L/16 encodes the image; a BERT-base text encoder with cross-attention to the image
tokens reads the prompt; an MLP head on the [CLS] output gives the reward, normalised as
(raw - 0.16717...) / 1.03334... like `ImageReward.score`. The checkpoint `ImageReward.pt` is
converted key by key: the timm-style ViT (`blip.visual_encoder.*`) into `BlipVisionModel`, the
"med" BERT (`blip.text_encoder.*`) into `BlipTextModel` (same names), `mlp.layers.*` into the
shared MLP head.

As `ImageReward.score` / `inference_rank`: images go through its `_transform(224)`
(`PilResizeCropTransform`: PIL bicubic resize and centre crop in the image's own mode, RGB
last); the prompt is tokenized by BLIP's `init_tokenizer` (bert-base-uncased plus the special
tokens [DEC] as bos and [ENC], so those literals in a prompt are single tokens), starts with
[CLS] (BLIP's [ENC] substitution is not applied) and is truncated/padded to 35 tokens.
"""
from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from PIL import Image

from lotts.verifiers._base import BatchedVerifier
from lotts.verifiers._layers import MLPHead, check_vocab, load_tokenizer, tokenize
from lotts.verifiers._transforms import CLIP_MEAN, CLIP_STD, PilResizeCropTransform
from lotts.verifiers._weights import (
    PathLike,
    WeightSource,
    build_from_state_dict,
    load_state_dict,
)

REWARD_MEAN = 0.16717362830052426
REWARD_STD = 1.0333394966054072
MAX_PROMPT_TOKENS = 35

SOURCE = WeightSource(
    verifier="image-reward", what="the ImageReward checkpoint", argument="path",
    env_var="LOTTS_IMAGEREWARD_PATH", kind="file", repo_ids=("THUDM/ImageReward",),
    filenames=("ImageReward.pt",), help_url="https://github.com/THUDM/ImageReward")
TOKENIZER_SOURCE = WeightSource(
    verifier="image-reward", what="the bert-base-uncased tokenizer folder",
    argument="tokenizer_path", env_var="LOTTS_IMAGEREWARD_TOKENIZER_PATH", kind="dir",
    repo_ids=("google-bert/bert-base-uncased", "bert-base-uncased"), required=(),
    any_of=("vocab.txt", "tokenizer.json"), allow_patterns=("*.json", "vocab.txt"))

_VISUAL = "blip.visual_encoder."
_TEXT = "blip.text_encoder."
_HEAD = "mlp."
# Unused by the reward: BLIP's contrastive projections, and a buffer transformers rebuilds.
IGNORED_KEYS = ("blip.vision_proj.weight", "blip.vision_proj.bias", "blip.text_proj.weight",
                "blip.text_proj.bias", "blip.text_encoder.embeddings.position_ids")
_VISUAL_TOP = {"cls_token": "embeddings.class_embedding",
               "pos_embed": "embeddings.position_embedding",
               "patch_embed.proj.weight": "embeddings.patch_embedding.weight",
               "patch_embed.proj.bias": "embeddings.patch_embedding.bias",
               "norm.weight": "post_layernorm.weight", "norm.bias": "post_layernorm.bias"}
_VISUAL_BLOCK = {"norm1": "layer_norm1", "norm2": "layer_norm2", "attn.qkv": "self_attn.qkv",
                 "attn.proj": "self_attn.projection", "mlp.fc1": "mlp.fc1", "mlp.fc2": "mlp.fc2"}
_BLOCK_KEY = re.compile(r"^blocks\.(\d+)\.(.+)\.(weight|bias)$")


@dataclass
class ImageRewardWeights:
    """`ImageReward.pt` split per module, in transformers' key names."""

    vision: dict[str, torch.Tensor] = field(default_factory=dict)
    text: dict[str, torch.Tensor] = field(default_factory=dict)
    head: dict[str, torch.Tensor] = field(default_factory=dict)
    ignored: list[str] = field(default_factory=list)


def convert_image_reward_state_dict(state_dict: Mapping[str, torch.Tensor]) -> ImageRewardWeights:
    """Map every checkpoint key to BlipVisionModel / BlipTextModel / MLPHead keys; an unknown
    key raises, so a changed layout cannot be half-loaded."""
    out = ImageRewardWeights()
    for key, value in state_dict.items():
        if key in IGNORED_KEYS:
            out.ignored.append(key)
        elif key.startswith(_VISUAL):
            out.vision[_visual_key(key[len(_VISUAL):])] = value
        elif key.startswith(_TEXT):
            out.text[key[len(_TEXT):]] = value
        elif key.startswith(_HEAD):
            out.head[key[len(_HEAD):]] = value
        else:
            raise ValueError(f"image-reward: unknown checkpoint key {key!r}")
    return out


def _visual_key(key: str) -> str:
    if key in _VISUAL_TOP:
        return _VISUAL_TOP[key]
    match = _BLOCK_KEY.match(key)
    if match is None or match.group(2) not in _VISUAL_BLOCK:
        raise ValueError(f"image-reward: unknown visual encoder key {_VISUAL + key!r}")
    return f"encoder.layers.{match.group(1)}.{_VISUAL_BLOCK[match.group(2)]}.{match.group(3)}"


def _count(state_dict: Mapping[str, torch.Tensor], pattern: str) -> int:
    regex = re.compile(pattern)
    return 1 + max(int(m.group(1)) for key in state_dict if (m := regex.match(key)))


def vision_config_from(weights: Mapping[str, torch.Tensor], heads: int | None = None):
    """BLIP ViT config read off the tensors (ViT-L/16 at 224 px for the real file); timm's
    ViT uses exact GELU and LayerNorm eps 1e-6. Heads default to width / 64 (16 for ViT-L)."""
    from transformers import BlipVisionConfig
    width, patch = weights["embeddings.class_embedding"].shape[-1], \
        weights["embeddings.patch_embedding.weight"].shape[-1]
    grid = math.isqrt(weights["embeddings.position_embedding"].shape[1] - 1)
    return BlipVisionConfig(
        hidden_size=width, patch_size=patch, image_size=grid * patch, hidden_act="gelu",
        intermediate_size=weights["encoder.layers.0.mlp.fc1.weight"].shape[0],
        num_hidden_layers=_count(weights, r"^encoder\.layers\.(\d+)\."),
        num_attention_heads=heads or max(1, width // 64), layer_norm_eps=1e-6)


def text_config_from(weights: Mapping[str, torch.Tensor], heads: int | None = None):
    """BERT-with-cross-attention config read off the tensors (bert-base, 30524 tokens with
    BLIP's [DEC]/[ENC], cross-attention width = the ViT's). Heads default to width / 64."""
    from transformers import BlipTextConfig
    vocab, width = weights["embeddings.word_embeddings.weight"].shape
    return BlipTextConfig(
        vocab_size=vocab, hidden_size=width, hidden_act="gelu", layer_norm_eps=1e-12,
        encoder_hidden_size=weights["encoder.layer.0.crossattention.self.key.weight"].shape[1],
        intermediate_size=weights["encoder.layer.0.intermediate.dense.weight"].shape[0],
        num_hidden_layers=_count(weights, r"^encoder\.layer\.(\d+)\."),
        max_position_embeddings=weights["embeddings.position_embeddings.weight"].shape[0],
        num_attention_heads=heads or max(1, width // 64), is_decoder=True, use_cache=False,
        pad_token_id=0)


class ImageRewardVerifier(BatchedVerifier):
    """Normalised ImageReward score of each (image, prompt) pair."""

    name = "image-reward"

    def __init__(self, vision: Any, text: Any, head: MLPHead, tokenizer: Any,
                 device: torch.device, dtype: torch.dtype, batch_size: int) -> None:
        super().__init__(device, dtype, batch_size)
        self.vision = vision.to(device=device, dtype=dtype).eval()
        self.text = text.to(device=device, dtype=dtype).eval()
        self.head, self.tokenizer = head.to(device).eval(), tokenizer
        size = vision.config.image_size
        # ImageReward._transform(n_px): Resize, CenterCrop, convert RGB, ToTensor, Normalize
        self.transform = PilResizeCropTransform(size=size, crop=size, mean=CLIP_MEAN,
                                                std=CLIP_STD)
        check_vocab(tokenizer, text.config.vocab_size, "image-reward text encoder")

    def score_batch(self, images: list[Image.Image], prompts: list[str]) -> torch.Tensor:
        pixels = self.transform(images).to(self.device, self.dtype)
        image_tokens = self.vision(pixel_values=pixels).last_hidden_state
        tokens = tokenize(self.tokenizer, prompts, MAX_PROMPT_TOKENS, self.device)
        hidden = self.text(**tokens, encoder_hidden_states=image_tokens).last_hidden_state
        return (self.head(hidden[:, 0]) - REWARD_MEAN) / REWARD_STD


def add_blip_special_tokens(tokenizer: Any) -> Any:
    """BLIP's `init_tokenizer`: [DEC] becomes the bos token and [ENC] an additional special
    token (ids 30522 and 30523 on bert-base-uncased; no-ops when the folder has them)."""
    tokenizer.add_special_tokens({"bos_token": "[DEC]"})
    tokenizer.add_special_tokens({"additional_special_tokens": ["[ENC]"]})
    return tokenizer


def load(*, path: PathLike | None, device: torch.device, dtype: torch.dtype,
         allow_download: bool, batch_size: int, tokenizer_path: PathLike | None = None,
         vision_heads: int | None = None, text_heads: int | None = None
         ) -> ImageRewardVerifier:
    checkpoint = SOURCE.resolve(path, allow_download)
    tokenizer_dir = TOKENIZER_SOURCE.resolve(tokenizer_path, allow_download)
    from transformers import (  # a slow first import
        BertTokenizer,
        BlipTextModel,
        BlipVisionModel,
    )
    tokenizer = add_blip_special_tokens(load_tokenizer(tokenizer_dir, fallback=BertTokenizer))
    weights = convert_image_reward_state_dict(load_state_dict(checkpoint))
    vision_config = vision_config_from(weights.vision, vision_heads)
    text_config = text_config_from(weights.text, text_heads)
    vision = build_from_state_dict(lambda: BlipVisionModel(vision_config), weights.vision,
                                   "image-reward visual encoder")
    text = build_from_state_dict(lambda: BlipTextModel(text_config, add_pooling_layer=False),
                                 weights.text, "image-reward text encoder")
    head = MLPHead.from_state_dict(weights.head)
    return ImageRewardVerifier(vision, text, head, tokenizer, device, dtype, batch_size)
