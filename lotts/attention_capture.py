"""Attention capture for the single localization forward, through diffusers' official seam.

One shared :class:`AttentionCapture` object is installed on every attention layer with
``set_attn_processor`` (one instance, the layer name as data: no per-layer objects to recompile
under ``torch.compile``) and the saved processors come back in a ``finally``. Layers that are
not read (coarser self-attention, FLUX single-stream blocks, anything with an
attention mask) run their saved processor. The layers that are read run a replica of
diffusers' AttnProcessor2_0 / FluxAttnProcessor, so custom processors on those layers (e.g.
IP-Adapter) do not take part in the localization forward.

What is kept, in constant memory however many layers run:
- cross-attention maps (UNet ``attn2``; FLUX double-stream image-query x text-key): one running
  sum of the token-averaged maps, resized bilinearly to the finest attention grid, via
  :func:`lotts_kernels.attention_with_token_maps` (no (B, H, Lq, Lk) tensor);
- q and k of the self-attention layers at the finest resolution (UNet ``attn1``; FLUX double
  stream, where SA is the image-query part of the same softmax over all keys), original-prompt
  rows only, later fed to :func:`lotts_kernels.attention_propagate`.
"""
from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F

from lotts_kernels import attention_propagate, attention_with_token_maps


@dataclass
class _KeptLayer:
    name: str
    query: torch.Tensor  # (B, H, Lq, D) image queries of the original-prompt rows
    key: torch.Tensor  # (B, H, Lk, D)
    text_len: int  # leading key positions that are text (FLUX); 0 for UNet self-attention


def _grid_for(num_queries: int, latent_hw: tuple[int, int]) -> tuple[int, int]:
    """The (h, w) grid of a UNet attention layer with `num_queries` tokens (ceil halvings)."""
    h, w = latent_hw
    while h * w > num_queries:
        h, w = math.ceil(h / 2), math.ceil(w / 2)
    if h * w != num_queries:
        raise ValueError(f"cannot place {num_queries} attention queries on a grid derived from "
                         f"latents of {latent_hw}")
    return h, w


class AttentionCapture:
    """Shared attention processor that records LoTTS' maps during one forward.

    token_index (R, T) int64 and token_weight (R, T) float: per batch row, the key positions of
    that row's selected prompt tokens and 1/0 weights (0 pads rows with fewer tokens).
    keep_rows: rows whose q/k feed the self-attention propagation. grid: the latent grid
    (UNet) or the token grid (FLUX). mode: "unet" or "flux". self_attention_blocks (FLUX):
    (first, last) double-stream block indices whose q/k are kept for eq. (2), e.g. (15, 18) as
    ConceptAttention; None keeps every double-stream block. Kept q/k are what grows with the
    layers (about 53 MB per image per FLUX block at 1024 px in bf16): ``peak_kept_bytes``.
    """

    def __init__(self, token_index: torch.Tensor, token_weight: torch.Tensor,
                 keep_rows: torch.Tensor, grid: tuple[int, int], mode: str,
                 self_attention_blocks: Optional[tuple[int, int]] = None) -> None:
        if mode not in ("unet", "flux"):
            raise ValueError(f"mode must be 'unet' or 'flux', got {mode!r}")
        if self_attention_blocks is not None and mode != "flux":
            raise ValueError("self_attention_blocks selects FLUX double-stream blocks; UNets use "
                             "their finest self-attention layers")
        self.self_attention_blocks = self_attention_blocks
        self.token_index = token_index
        self.token_weight = token_weight.float() / token_weight.float().sum(1, keepdim=True)
        self.keep_rows = keep_rows
        self.grid = grid
        self.mode = mode
        self._names: dict[int, str] = {}
        self._originals: dict[str, Callable] = {}
        self._reset()

    # ----- installation -----------------------------------------------------------------------
    @contextmanager
    def installed(self, model: torch.nn.Module) -> Iterator[AttentionCapture]:
        """Install on every attention layer of `model`; restore the saved processors after."""
        saved = dict(model.attn_processors)
        self._originals = {name[: -len(".processor")]: proc for name, proc in saved.items()}
        self._names = {id(model.get_submodule(name)): name for name in self._originals}
        try:
            model.set_attn_processor(self)
            yield self
        finally:
            model.set_attn_processor(dict(saved))  # set_attn_processor pops from the dict
            self._names, self._originals = {}, {}

    def _reset(self) -> None:
        self.map_sum: Optional[torch.Tensor] = None  # (R, h, w) float32 running sum
        self.map_grid: Optional[tuple[int, int]] = None
        self.map_layers = 0
        self.kept: list[_KeptLayer] = []
        self.kept_queries = 0
        self.peak_kept_bytes = 0
        self.layers_seen: list[str] = []

    # ----- the processor ----------------------------------------------------------------------
    def __call__(self, attn: torch.nn.Module, hidden_states: torch.Tensor,
                 encoder_hidden_states: Optional[torch.Tensor] = None,
                 attention_mask: Optional[torch.Tensor] = None,
                 image_rotary_emb: Optional[torch.Tensor] = None, temb: Optional[torch.Tensor] = None):
        name = self._names.get(id(attn))
        if name is None:
            raise RuntimeError("AttentionCapture called on a layer it was not installed on")
        self.layers_seen.append(name)
        if self.mode == "flux":
            if encoder_hidden_states is not None and getattr(attn, "added_kv_proj_dim", None):
                return self._flux_joint(name, attn, hidden_states, encoder_hidden_states,
                                        attention_mask, image_rotary_emb)
        elif attention_mask is None and getattr(attn, "is_cross_attention", False):
            return self._unet(name, attn, hidden_states, encoder_hidden_states, temb, self._cross)
        elif (attention_mask is None and encoder_hidden_states is None
              and _num_tokens(hidden_states) >= self.kept_queries):
            return self._unet(name, attn, hidden_states, None, temb, self._self)
        return self._original(name, attn, hidden_states, encoder_hidden_states, attention_mask,
                              temb, image_rotary_emb)

    def _original(self, name, attn, hidden_states, encoder_hidden_states, attention_mask, temb,
                  image_rotary_emb):
        extra = {}
        if temb is not None:
            extra["temb"] = temb
        if image_rotary_emb is not None:
            extra["image_rotary_emb"] = image_rotary_emb
        return self._originals[name](attn, hidden_states, encoder_hidden_states=encoder_hidden_states,
                                     attention_mask=attention_mask, **extra)

    # ----- UNet: mirrors diffusers' AttnProcessor2_0 ------------------------------------------
    # Adapted from diffusers diffusers.models.attention_processor.AttnProcessor2_0, 0.42.1
    # (its __call__, with the attention itself handed to `attend`).
    def _unet(self, name, attn, hidden_states, encoder_hidden_states, temb, attend):
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            batch, channel, height, width = hidden_states.shape
            hidden_states = hidden_states.view(batch, channel, height * width).transpose(1, 2)
        batch = hidden_states.shape[0]
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
        query = attn.to_q(hidden_states)
        if encoder_hidden_states is None:
            encoder_hidden_states = hidden_states
        elif attn.norm_cross:
            encoder_hidden_states = attn.norm_encoder_hidden_states(encoder_hidden_states)
        key, value = attn.to_k(encoder_hidden_states), attn.to_v(encoder_hidden_states)
        head_dim = key.shape[-1] // attn.heads
        query, key, value = (x.view(batch, -1, attn.heads, head_dim).transpose(1, 2)
                             for x in (query, key, value))
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)
        out = attend(name, query, key, value)
        out = out.transpose(1, 2).reshape(batch, -1, attn.heads * head_dim).to(query.dtype)
        out = attn.to_out[1](attn.to_out[0](out))
        if input_ndim == 4:
            out = out.transpose(-1, -2).reshape(batch, channel, height, width)
        if attn.residual_connection:
            out = out + residual
        return out / attn.rescale_output_factor

    def _cross(self, name, query, key, value):
        out, maps = attention_with_token_maps(query, key, value, self._rows_index(query))
        self._add_maps(maps, _grid_for(query.shape[2], self.grid))
        return out

    def _self(self, name, query, key, value):
        self._keep(name, query, key, text_len=0)
        return F.scaled_dot_product_attention(query, key, value)

    # ----- FLUX: mirrors diffusers' FluxAttnProcessor (double-stream blocks) ------------------
    # Adapted from diffusers diffusers.models.transformers.transformer_flux.FluxAttnProcessor, 0.42.1
    # (its __call__ for blocks with added_kv_proj_dim, without an attention mask).
    def _flux_joint(self, name, attn, hidden_states, encoder_hidden_states, attention_mask,
                    image_rotary_emb):
        if attention_mask is not None:
            return self._original(name, attn, hidden_states, encoder_hidden_states,
                                  attention_mask, None, image_rotary_emb)
        from diffusers.models.embeddings import apply_rotary_emb

        query, key, value = _flux_projections(attn, hidden_states, encoder_hidden_states)
        if image_rotary_emb is not None:
            query = apply_rotary_emb(query, image_rotary_emb, sequence_dim=1)
            key = apply_rotary_emb(key, image_rotary_emb, sequence_dim=1)
        text_len = encoder_hidden_states.shape[1]
        # (B, H, L, D) made contiguous: the ops are fast on that layout, and a transposed view
        # made the reference multiply small query chunks against a strided key (8x slower).
        q, k, v = (x.transpose(1, 2).contiguous() for x in (query, key, value))
        out, maps = attention_with_token_maps(q, k, v, self._rows_index(q))
        self._add_maps(maps[:, text_len:], self.grid)
        if self._feeds_self_attention(name):
            self._keep(name, q[:, :, text_len:], k, text_len)
        out = out.transpose(1, 2).flatten(2, 3).to(query.dtype)
        encoder_out, out = out.split_with_sizes([text_len, out.shape[1] - text_len], dim=1)
        out = attn.to_out[1](attn.to_out[0](out.contiguous()))
        return out, attn.to_add_out(encoder_out.contiguous())

    # ----- accumulation -----------------------------------------------------------------------
    def _rows_index(self, query: torch.Tensor) -> torch.Tensor:
        if query.shape[0] != self.token_index.shape[0]:
            raise ValueError(f"attention batch has {query.shape[0]} rows but the capture was set "
                             f"up for {self.token_index.shape[0]}")
        return self.token_index.to(query.device)

    def _add_maps(self, maps: torch.Tensor, grid: tuple[int, int]) -> None:
        """Token-average (R, Lq, T) maps, resize to the finest grid so far, add to the sum."""
        weight = self.token_weight.to(maps.device)
        averaged = torch.einsum("rqt,rt->rq", maps, weight).view(-1, 1, *grid)
        if self.map_grid is None or grid[0] * grid[1] > self.map_grid[0] * self.map_grid[1]:
            if self.map_sum is not None:  # a finer layer arrived: move the sum to its grid
                self.map_sum = _resize(self.map_sum, grid)
            self.map_grid = grid
        averaged = _resize(averaged, self.map_grid)
        self.map_sum = averaged if self.map_sum is None else self.map_sum + averaged
        self.map_layers += 1

    def _keep(self, name: str, query: torch.Tensor, key: torch.Tensor, text_len: int) -> None:
        """Keep q/k of the original-prompt rows for the finest self-attention layers only."""
        num_queries = query.shape[2]
        if num_queries < self.kept_queries:
            return
        if num_queries > self.kept_queries:
            self.kept, self.kept_queries = [], num_queries
        rows = self.keep_rows.to(query.device)
        # index_select copies only the original-prompt rows, in the compute dtype of the layer.
        self.kept.append(_KeptLayer(name, query.index_select(0, rows), key.index_select(0, rows),
                                    text_len))
        kept = sum(layer.query.nbytes + layer.key.nbytes for layer in self.kept)
        self.peak_kept_bytes = max(self.peak_kept_bytes, kept)

    def _feeds_self_attention(self, name: str) -> bool:
        """FLUX: whether double-stream block `name` ("transformer_blocks.<i>.attn") is one of
        ``self_attention_blocks``."""
        if self.self_attention_blocks is None:
            return True
        match = re.match(r"transformer_blocks\.(\d+)\.", name)
        first, last = self.self_attention_blocks
        return match is not None and first <= int(match.group(1)) <= last

    # ----- results ----------------------------------------------------------------------------
    def cross_maps(self) -> torch.Tensor:
        """Mean cross-attention map per row, (R, h, w) float32 on the finest grid."""
        if self.map_sum is None:
            raise RuntimeError("no cross-attention layer ran during the capture")
        return self.map_sum[:, 0] / self.map_layers

    def propagate(self, columns: torch.Tensor) -> torch.Tensor:
        """Eq. (2): mean over kept layers of SA @ columns; columns (B, h*w, C) on the SA grid."""
        if not self.kept:
            blocks = self.self_attention_blocks
            raise RuntimeError("no self-attention layer ran during the capture"
                               + (f" (self_attention_blocks {blocks})" if blocks else ""))
        total = None
        for layer in self.kept:
            maps = columns
            if layer.text_len:  # FLUX: zero at the text keys of the joint softmax
                maps = F.pad(maps, (0, 0, layer.text_len, 0))
            out = attention_propagate(layer.query, layer.key, maps)
            total = out if total is None else total + out
        return total / len(self.kept)

    @property
    def self_attention_grid(self) -> tuple[int, int]:
        if self.mode == "flux":
            return self.grid
        return _grid_for(self.kept_queries, self.grid)


def _num_tokens(hidden_states: torch.Tensor) -> int:
    """Query count of a UNet attention input, (B, L, C) or (B, C, H, W)."""
    if hidden_states.dim() == 4:
        return hidden_states.shape[2] * hidden_states.shape[3]
    return hidden_states.shape[1]


def _resize(maps: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    if tuple(maps.shape[-2:]) == tuple(grid):
        return maps
    return F.interpolate(maps, size=grid, mode="bilinear", align_corners=False)


# Adapted from diffusers diffusers.models.transformers.transformer_flux._get_qkv_projections, 0.42.1
# (with FluxAttnProcessor's normalization and text-first concatenation).
def _flux_projections(attn, hidden_states, encoder_hidden_states):
    """Joint (text first) q, k, v of a FLUX double-stream block, (B, L, H, D), normalized."""
    if getattr(attn, "fused_projections", False):
        query, key, value = attn.to_qkv(hidden_states).chunk(3, dim=-1)
        e_query, e_key, e_value = attn.to_added_qkv(encoder_hidden_states).chunk(3, dim=-1)
    else:
        query, key, value = attn.to_q(hidden_states), attn.to_k(hidden_states), attn.to_v(hidden_states)
        e_query = attn.add_q_proj(encoder_hidden_states)
        e_key = attn.add_k_proj(encoder_hidden_states)
        e_value = attn.add_v_proj(encoder_hidden_states)
    heads = lambda x: x.unflatten(-1, (-1, attn.head_dim))
    query, key, value = attn.norm_q(heads(query)), attn.norm_k(heads(key)), heads(value)
    e_query, e_key = attn.norm_added_q(heads(e_query)), attn.norm_added_k(heads(e_key))
    return (torch.cat([e_query, query], dim=1), torch.cat([e_key, key], dim=1),
            torch.cat([heads(e_value), value], dim=1))
