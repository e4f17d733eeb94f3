"""Token grounding for the world's diffusion training: words attend where their things are.

Large text-to-image models learn from billions of captions that a word's cross-attention falls
on what it names; LoTTS's localization rests on that (the quality words of its contrast prompts
attend to defective regions, the content words to the objects). A model trained from scratch on
a CPU for an hour does not learn it unaided (the first world model's CA_neg - CA_pos was at
chance), so the world's training adds a grounding loss in the style of TokenCompose (Wang et al.,
CVPR 2024): for each grounded word group, the share of its cross-attention mass that falls
inside the group's region is pushed towards 1.

Groups per example (regions at latent resolution, pooled further for coarser layers):
- each shape's colour and kind words -> that shape's coverage;
- the words of "low-quality" in a low-quality caption -> the planted defect's region, only at
  noise levels where the defect is still visible in the input (t <= QUALITY_MAX_T): earlier,
  nothing in the noisy latent says where the defect is.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from lotts.world import scenes

MAX_GROUPS = 4  # the quality words + up to three shapes
QUALITY_MAX_T = 600
LATENT = scenes.SIZE // 4


def pool_to_latent(mask: np.ndarray) -> np.ndarray:
    """(SIZE, SIZE) coverage in [0, 1] -> (LATENT, LATENT) area average."""
    f = scenes.SIZE // LATENT
    return mask.reshape(LATENT, f, LATENT, f).mean(axis=(1, 3)).astype(np.float16)


def example_regions(scene: scenes.Scene, defect: scenes.Defect | None):
    """Latent-resolution regions of one example: (MAX_GROUPS, LATENT, LATENT) float16, slot 0 the
    defect (zeros when clean), slots 1.. the shapes in caption order."""
    regions = np.zeros((MAX_GROUPS, LATENT, LATENT), np.float16)
    if defect is not None:
        regions[0] = pool_to_latent(defect.region.astype(np.float32))
    for i, shape in enumerate(scene.shapes):
        regions[1 + i] = pool_to_latent(scenes._shape_coverage(shape))
    return regions


class GroupTokens:
    """Finds each group's key positions in a prompt, tokenized as the pipeline encodes it.

    The quality group is what LoTTS itself selects with ``token_selection="quality"``
    (:func:`lotts.localization.token_positions`): the words that differ between the world's two
    templates, here those of "low-quality", grounded only in low-quality prompts."""

    def __init__(self, tokenizer, max_length: int = 77):
        def single(word: str) -> int:
            ids = tokenizer(word, add_special_tokens=False).input_ids
            if len(ids) != 1:
                raise ValueError(f"grounding expects {word!r} to be one CLIP token, got {ids}")
            return ids[0]
        self.tokenizer, self.max_length = tokenizer, max_length
        self.colour_ids = {c: single(c) for c in scenes.COLOURS}
        self.kind_ids = {k: single(k) for k in scenes.SHAPES}

    def positions(self, prompt: str, scene: scenes.Scene) -> torch.Tensor:
        """(MAX_GROUPS, max_length) 0/1 key weights of each group in `prompt`."""
        from lotts.localization import quality_spans, token_positions
        ids = self.tokenizer(prompt, padding="max_length", max_length=self.max_length,
                             truncation=True).input_ids
        out = torch.zeros(MAX_GROUPS, len(ids))
        if prompt == scenes.LOW_QUALITY.format(scene.caption):
            templates = (scenes.HIGH_QUALITY, scenes.LOW_QUALITY)
            spans = quality_spans(scene.caption, templates)[2]  # [original, positive, negative]
            index, weight = token_positions(self.tokenizer, self.max_length, [prompt], "quality",
                                            [spans])
            out[0, index[0][weight[0] > 0]] = 1
        for i, shape in enumerate(scene.shapes):
            colour = self.colour_ids[shape.colour]
            if colour in ids:  # colours are distinct within a scene; the kind word follows
                p = ids.index(colour)
                out[1 + i, p] = 1
                if p + 1 < len(ids) and ids[p + 1] == self.kind_ids[shape.kind]:
                    out[1 + i, p + 1] = 1
        return out

    def table(self, prompts: list[tuple[str, str]], scene_list: list[scenes.Scene]) -> torch.Tensor:
        """(n, 3, MAX_GROUPS, max_length) bool for the training columns [plain caption,
        quality-templated caption, empty prompt] of n examples (the empty prompt grounds nothing)."""
        empty = torch.zeros(MAX_GROUPS, self.max_length)
        return torch.stack([torch.stack([self.positions(plain, scene),
                                         self.positions(templated, scene), empty])
                            for (plain, templated), scene in zip(prompts, scene_list)]).bool()


class CrossAttentionRecorder:
    """Attention processor for UNet cross-attention layers (``attn2``) that computes the softmax
    explicitly and keeps the head-mean probabilities, so a loss can reach them."""

    def __init__(self) -> None:
        self.maps: list[torch.Tensor] = []  # (B, Lq, Lk) per layer call

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None,
                 temb=None, **kwargs):
        if hidden_states.ndim != 3 or encoder_hidden_states is None or attention_mask is not None \
                or attn.group_norm is not None or attn.norm_cross or attn.spatial_norm is not None \
                or getattr(attn, "norm_q", None) is not None or getattr(attn, "norm_k", None) is not None:
            raise ValueError("CrossAttentionRecorder handles plain SD transformer cross-attention")
        batch = hidden_states.shape[0]
        query = attn.head_to_batch_dim(attn.to_q(hidden_states))
        key = attn.head_to_batch_dim(attn.to_k(encoder_hidden_states))
        value = attn.head_to_batch_dim(attn.to_v(encoder_hidden_states))
        probs = attn.get_attention_scores(query, key, None)
        self.maps.append(probs.view(batch, attn.heads, *probs.shape[1:]).mean(1))
        out = attn.batch_to_head_dim(torch.bmm(probs, value))
        out = attn.to_out[1](attn.to_out[0](out))
        if attn.residual_connection:
            out = out + hidden_states
        return out / attn.rescale_output_factor


def install_recorder(unet) -> CrossAttentionRecorder:
    """Record every attn2 layer; the other layers keep diffusers' default processor."""
    from diffusers.models.attention_processor import AttnProcessor2_0
    recorder = CrossAttentionRecorder()
    unet.set_attn_processor({name: recorder if ".attn2." in name else AttnProcessor2_0()
                             for name in unet.attn_processors})
    return recorder


def grounding_loss(maps: list[torch.Tensor], token_weights: torch.Tensor,
                   regions: torch.Tensor, group_valid: torch.Tensor) -> torch.Tensor:
    """Mean over layers and valid groups of 1 - (attention mass inside the region / all mass).

    token_weights (B, G, L) 0/1; regions (B, G, LATENT, LATENT); group_valid (B, G) 0/1."""
    if not maps or group_valid.sum() == 0:
        return token_weights.new_zeros(())
    losses = []
    for probs in maps:
        side = round(probs.shape[1] ** 0.5)
        target = F.adaptive_avg_pool2d(regions, side).flatten(2)  # (B, G, HW)
        mass = torch.einsum("bql,bgl->bgq", probs, token_weights)
        inside = (mass * target).sum(-1) / (mass.sum(-1) + 1e-6)
        losses.append(((1 - inside) * group_valid).sum() / group_valid.sum())
    return torch.stack(losses).mean()
