"""HPSv2 / HPSv2.1 (Wu et al., 2023): an OpenCLIP ViT-H/14 fine-tuned on human preferences.

The checkpoint (`HPS_v2_compressed.pt`, `HPS_v2.1_compressed.pt`) is an OpenCLIP state dict,
converted here to a transformers `CLIPModel`; the dims come from the tensors. score =
100 * cos(image, text); `hpsv2.score` returns the bare cosine (0.27 here is 27), and the HPSv2
benchmark tables report the x100 value.

As `hpsv2.score`: images go through its evaluation transform (`ResizeLongestPadTransform`:
longest side to 224 on a float tensor, black padding, no crop; RGBA, on which the official
transform crashes, is converted to RGB), prompts are cleaned like open_clip's tokenizer
(`open_clip_clean`) and tokenized with the OpenCLIP/LAION CLIP BPE, truncated to 77 tokens
with the end token kept. The official scorer runs under CUDA autocast on a GPU; pass
`dtype="float16"` for that, float32 is its CPU behaviour.
"""
from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from lotts.verifiers._clip import ClipEncoder, ClipSimilarityVerifier
from lotts.verifiers._layers import load_tokenizer, open_clip_clean, tokenize
from lotts.verifiers._transforms import CLIP_MEAN, CLIP_STD, ResizeLongestPadTransform
from lotts.verifiers._weights import (
    PathLike,
    WeightSource,
    build_from_state_dict,
    load_state_dict,
)

CHECKPOINTS = {"v2.0": "HPS_v2_compressed.pt", "v2.1": "HPS_v2.1_compressed.pt"}
TOKENIZER_SOURCE = WeightSource(
    verifier="hpsv2", what="the CLIP ViT-H/14 tokenizer folder", argument="tokenizer_path",
    env_var="LOTTS_HPSV2_TOKENIZER_PATH", kind="dir",
    repo_ids=("laion/CLIP-ViT-H-14-laion2B-s32B-b79K",), required=(),
    any_of=("tokenizer.json", "vocab.json"), allow_patterns=("*.json", "*.txt"))

# Buffers some OpenCLIP versions save; rebuilt by the transformers model.
IGNORED_KEYS = ("attn_mask", "visual.attn_mask")
# OpenCLIP tower widths whose head width is not 64 (ViT-H/14: 80, ViT-g: 88, ViT-bigG: 104).
_VISION_HEADS = {1280: 16, 1408: 16, 1664: 16}

_TOP_LEVEL = {
    "logit_scale": "logit_scale",
    "token_embedding.weight": "text_model.embeddings.token_embedding.weight",
    "positional_embedding": "text_model.embeddings.position_embedding.weight",
    "ln_final.weight": "text_model.final_layer_norm.weight",
    "ln_final.bias": "text_model.final_layer_norm.bias",
    "visual.class_embedding": "vision_model.embeddings.class_embedding",
    "visual.positional_embedding": "vision_model.embeddings.position_embedding.weight",
    "visual.conv1.weight": "vision_model.embeddings.patch_embedding.weight",
    "visual.ln_pre.weight": "vision_model.pre_layrnorm.weight",
    "visual.ln_pre.bias": "vision_model.pre_layrnorm.bias",
    "visual.ln_post.weight": "vision_model.post_layernorm.weight",
    "visual.ln_post.bias": "vision_model.post_layernorm.bias",
}
_TRANSPOSED = {"text_projection": "text_projection.weight",
               "visual.proj": "visual_projection.weight"}
_BLOCK = {"ln_1": "layer_norm1", "ln_2": "layer_norm2", "attn.out_proj": "self_attn.out_proj",
          "mlp.c_fc": "mlp.fc1", "mlp.c_proj": "mlp.fc2"}
_RESBLOCK = re.compile(r"^(visual\.)?transformer\.resblocks\.(\d+)\.(.+)\.(weight|bias)$")


def convert_openclip_state_dict(state_dict: Mapping[str, torch.Tensor]
                                ) -> tuple[dict[str, torch.Tensor], list[str]]:
    """OpenCLIP keys -> transformers CLIPModel keys; returns (converted, ignored keys).

    Fused attention `in_proj` splits into q/k/v, the `x @ proj` projections transpose into
    Linear weights; any key it does not know raises, so nothing is silently dropped.
    """
    converted: dict[str, torch.Tensor] = {}
    ignored: list[str] = []
    for key, value in state_dict.items():
        if key in IGNORED_KEYS:
            ignored.append(key)
        elif key in _TOP_LEVEL:
            converted[_TOP_LEVEL[key]] = value
        elif key in _TRANSPOSED:
            converted[_TRANSPOSED[key]] = value.t().contiguous()
        else:
            converted.update(_convert_block_key(key, value))
    return converted, ignored


def _convert_block_key(key: str, value: torch.Tensor) -> dict[str, torch.Tensor]:
    match = _RESBLOCK.match(key) or _RESBLOCK.match(key.replace("in_proj_", "in_proj."))
    if match is None:
        raise ValueError(f"hpsv2: unknown OpenCLIP checkpoint key {key!r}")
    tower = "vision_model" if match.group(1) else "text_model"
    prefix = f"{tower}.encoder.layers.{match.group(2)}."
    module, param = match.group(3), match.group(4)
    if module == "attn.in_proj":
        q, k, v = value.chunk(3, dim=0)
        return {f"{prefix}self_attn.{n}_proj.{param}": t for n, t in zip("qkv", (q, k, v))}
    if module not in _BLOCK:
        raise ValueError(f"hpsv2: unknown OpenCLIP checkpoint key {key!r}")
    return {f"{prefix}{_BLOCK[module]}.{param}": value}


def _count_blocks(state_dict: Mapping[str, torch.Tensor], prefix: str) -> int:
    pattern = re.compile(re.escape(prefix) + r"transformer\.resblocks\.(\d+)\.")
    return 1 + max(int(m.group(1)) for k in state_dict if (m := pattern.match(k)))


def clip_config_from_openclip(state_dict: Mapping[str, torch.Tensor], eos_token_id: int,
                              vision_heads: int | None = None,
                              text_heads: int | None = None):
    """A CLIPConfig whose shapes match the OpenCLIP state dict (exact GELU, eps 1e-5, as
    OpenCLIP's ViT-H/14). Head counts cannot be read off the tensors: ViT-H/14's defaults are
    derived from the widths; pass them for other layouts."""
    from transformers import CLIPConfig
    conv = state_dict["visual.conv1.weight"]
    v_width, patch = conv.shape[0], conv.shape[-1]
    grid = math.isqrt(state_dict["visual.positional_embedding"].shape[0] - 1)
    t_vocab, t_width = state_dict["token_embedding.weight"].shape
    vision = dict(
        hidden_size=v_width, patch_size=patch, image_size=grid * patch, hidden_act="gelu",
        intermediate_size=state_dict["visual.transformer.resblocks.0.mlp.c_fc.weight"].shape[0],
        num_hidden_layers=_count_blocks(state_dict, "visual."), layer_norm_eps=1e-5,
        num_attention_heads=vision_heads or _VISION_HEADS.get(v_width, max(1, v_width // 64)))
    text = dict(
        vocab_size=t_vocab, hidden_size=t_width, hidden_act="gelu", layer_norm_eps=1e-5,
        intermediate_size=state_dict["transformer.resblocks.0.mlp.c_fc.weight"].shape[0],
        num_hidden_layers=_count_blocks(state_dict, ""),
        max_position_embeddings=state_dict["positional_embedding"].shape[0],
        num_attention_heads=text_heads or max(1, t_width // 64),
        eos_token_id=eos_token_id)  # the pooled token: OpenCLIP's argmax(ids) is the EOT
    return CLIPConfig(text_config=text, vision_config=vision,
                      projection_dim=state_dict["visual.proj"].shape[1])


def tokenize_open_clip(tokenizer: Any, prompts: Sequence[str], max_length: int,
                       device: torch.device) -> dict[str, torch.Tensor]:
    """open_clip `tokenize`: the cleaned prompt, [sot] + tokens + [eot], cut to `max_length`
    with [eot] last (the HF tokenizer's truncation gives the same ids)."""
    return tokenize(tokenizer, [open_clip_clean(p) for p in prompts], max_length, device)


def _checkpoint_source(version: str) -> WeightSource:
    if version not in CHECKPOINTS:
        raise ValueError(f"hpsv2: unknown version {version!r}; choose from {sorted(CHECKPOINTS)}")
    others = tuple(name for v, name in CHECKPOINTS.items() if v != version)
    return WeightSource(
        verifier="hpsv2", what=f"the HPS{version} checkpoint", argument="path",
        env_var="LOTTS_HPSV2_PATH", kind="file", repo_ids=("xswu/HPSv2",),
        filenames=(CHECKPOINTS[version],) + others,
        help_url="https://github.com/tgxs002/HPSv2")


def load(*, path: PathLike | None, device: torch.device, dtype: torch.dtype,
         allow_download: bool, batch_size: int, tokenizer_path: PathLike | None = None,
         version: str = "v2.1", vision_heads: int | None = None,
         text_heads: int | None = None) -> ClipSimilarityVerifier:
    checkpoint = _checkpoint_source(version).resolve(path, allow_download)
    tokenizer_dir = TOKENIZER_SOURCE.resolve(tokenizer_path, allow_download)
    from transformers import (  # after the checks: a slow first import
        CLIPModel,
        CLIPTokenizer,
    )
    tokenizer = load_tokenizer(tokenizer_dir, fallback=CLIPTokenizer)
    state_dict = load_state_dict(checkpoint)
    config = clip_config_from_openclip(state_dict, tokenizer.eos_token_id, vision_heads,
                                       text_heads)
    converted, _ = convert_openclip_state_dict(state_dict)
    model = build_from_state_dict(lambda: CLIPModel(config), converted, f"hpsv2 ({checkpoint})")
    # create_model_and_transforms(..., light_augmentation=True): the validation transform
    transform = ResizeLongestPadTransform(size=config.vision_config.image_size, mean=CLIP_MEAN,
                                          std=CLIP_STD)
    encoder = ClipEncoder(model, transform, tokenizer, device, dtype, tokenize_open_clip)
    return ClipSimilarityVerifier("hpsv2", encoder, scale=100.0, clamp_at_zero=False,
                                  batch_size=batch_size)
