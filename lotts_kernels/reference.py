"""Pure-PyTorch references of the four LoTTS ops.

These functions are the specification: the Triton and CUDA kernels are tested against them, and
they are the CPU path. They take inputs already checked by :mod:`lotts_kernels._checks` and
compute in float32. Attention references process queries in chunks so that CPU memory for the
scores stays bounded (a few MiB) even at 4096 x 4096 tokens.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F

from lotts_kernels import philox

# Upper bound on the float32 score block a reference attention holds at once.
SCORE_BUDGET_BYTES = 4 * 1024 * 1024


def query_chunk_size(batch_heads: int, num_keys: int, budget: int = SCORE_BUDGET_BYTES) -> int:
    """Queries per chunk so that a (batch_heads, chunk, num_keys) float32 block fits `budget`."""
    return max(1, budget // (4 * max(1, batch_heads) * max(1, num_keys)))


def _softmax_chunks(q: torch.Tensor, k: torch.Tensor, scale: float):
    """Yield (start, probabilities) over query chunks; probabilities are (B, H, chunk, Lk) fp32."""
    batch, heads, num_queries, _ = q.shape
    chunk = query_chunk_size(batch * heads, k.shape[2])
    k32 = k.float()
    for start in range(0, num_queries, chunk):
        scores = torch.matmul(q[:, :, start:start + chunk].float(), k32.transpose(-1, -2))
        yield start, torch.softmax(scores * scale, dim=-1)


def attention_with_token_maps(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, token_index: torch.Tensor, scale: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """SDPA output plus the head-mean softmax probabilities at the key columns `token_index`.

    token_index is int64 (B, T); maps are float32 (B, Lq, T), from the softmax over all keys.
    """
    out = F.scaled_dot_product_attention(q, k, v, scale=scale)
    batch, heads, num_queries, _ = q.shape
    num_tokens = token_index.shape[1]
    maps = torch.empty(batch, num_queries, num_tokens, dtype=torch.float32, device=q.device)
    for start, probs in _softmax_chunks(q, k, scale):
        index = token_index[:, None, None, :].expand(batch, heads, probs.shape[2], num_tokens)
        maps[:, start:start + probs.shape[2]] = probs.gather(-1, index).mean(dim=1)
    return out, maps


def attention_propagate(
    q: torch.Tensor, k: torch.Tensor, maps: torch.Tensor, scale: float
) -> torch.Tensor:
    """mean_h softmax(q_h k_h^T * scale) @ maps, float32 (B, Lq, C), never holding Lq x Lk."""
    batch, _, num_queries, _ = q.shape
    maps32 = maps.float()[:, None]  # (B, 1, Lk, C), shared by every head
    out = torch.empty(batch, num_queries, maps.shape[-1], dtype=torch.float32, device=q.device)
    for start, probs in _softmax_chunks(q, k, scale):
        out[:, start:start + probs.shape[2]] = torch.matmul(probs, maps32).mean(dim=1)
    return out


def min_max_normalize(x: torch.Tensor) -> torch.Tensor:
    """Per-row (x - min) / (max - min) in float32; a constant row maps to zeros."""
    x = x.float()
    low = x.amin(dim=1, keepdim=True)
    span = x.amax(dim=1, keepdim=True) - low
    safe_span = torch.where(span > 0, span, torch.ones_like(span))
    return torch.where(span > 0, (x - low) / safe_span, torch.zeros_like(x))


def num_selected(ratio: float, n: int) -> int:
    """How many positions a mask of `ratio` marks among `n`: Python's round(ratio * n)."""
    return int(round(ratio * n))


def quality_heat(diff: torch.Tensor, orig: torch.Tensor, lam: float) -> torch.Tensor:
    """Equation (3) of the method: mm(diff) + lam * mm(orig), float32."""
    return min_max_normalize(diff) + lam * min_max_normalize(orig)


def top_positions_mask(heat: torch.Tensor, count: int) -> torch.Tensor:
    """Bool mask of the `count` largest values per row, ties going to the lower index."""
    mask = torch.zeros(heat.shape, dtype=torch.bool, device=heat.device)
    if count > 0:
        # A stable descending sort keeps equal values in index order: ties go to lower indices.
        order = torch.sort(heat, dim=1, descending=True, stable=True).indices[:, :count]
        mask.scatter_(1, order, True)
    return mask


def quality_mask(
    diff: torch.Tensor, orig: torch.Tensor, lam: float, ratio: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Equations (3) and (4): heat (B, N) float32 and its top-`ratio` bool mask."""
    heat = quality_heat(diff, orig, lam)
    return heat, top_positions_mask(heat, num_selected(ratio, heat.shape[1]))


def expand_mask(mask: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """Broadcast `mask` to `shape`, upsampling a (B,1,h,w) mask nearest by integer factors."""
    if mask.dim() == 4 and len(shape) == 4 and tuple(mask.shape[2:]) != tuple(shape[2:]):
        mask = mask.repeat_interleave(shape[2] // mask.shape[2], dim=2)
        mask = mask.repeat_interleave(shape[3] // mask.shape[3], dim=3)
    return mask.expand(shape)


def _per_batch(value: Optional[torch.Tensor], scalar: float, ndim: int) -> torch.Tensor | float:
    """A (B,) coefficient reshaped to broadcast over (B, ...), or the scalar."""
    if value is None:
        return scalar
    return value.float().reshape(-1, *([1] * (ndim - 1)))


def masked_noise_blend(
    x0: torch.Tensor,
    other: torch.Tensor,
    mask: torch.Tensor,
    alpha: Optional[torch.Tensor],
    alpha_value: float,
    sigma: Optional[torch.Tensor],
    sigma_value: float,
    noise: Optional[torch.Tensor],
    seed: Optional[int],
    invert: bool,
) -> torch.Tensor:
    """x = m * (alpha * x0 + sigma * eps) + (1 - m) * other, in float32, cast to x0's dtype.

    alpha/sigma are (B,) tensors or, when None, the scalars `alpha_value`/`sigma_value`. eps is
    `noise`, else :func:`lotts_kernels.philox.normal` of `seed` over x0's elements in
    row-major order, else zero (only allowed when sigma is zero).
    """
    m = expand_mask(mask, x0.shape).float()
    if invert:
        m = 1.0 - m
    inside = _per_batch(alpha, alpha_value, x0.dim()) * x0.float()
    if noise is not None or seed is not None:
        eps = noise.float() if noise is not None else philox.normal(seed, x0.shape, x0.device)
        inside = inside + _per_batch(sigma, sigma_value, x0.dim()) * eps
    return (m * inside + (1.0 - m) * other.float()).to(x0.dtype)


def naive_attention_probs(q: torch.Tensor, k: torch.Tensor, scale: float) -> torch.Tensor:
    """Full (B, H, Lq, Lk) softmax in float64: for tests and the materializing baseline only."""
    scores = torch.matmul(q.double(), k.double().transpose(-1, -2)) * scale
    return torch.softmax(scores, dim=-1)


def default_scale(head_dim: int) -> float:
    """SDPA's default softmax scale."""
    return 1.0 / math.sqrt(head_dim)
