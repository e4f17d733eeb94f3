"""Public LoTTS ops: argument checks, then a ``lotts::`` torch custom op that dispatches.

Each op is registered with :func:`torch.library.custom_op` and a fake (meta) implementation, so
``torch.compile(fullgraph=True)`` traces through it. The custom op's body picks an
implementation per call (see :mod:`lotts_kernels._dispatch`).
"""
from __future__ import annotations

from typing import Optional, Union

import torch

from lotts_kernels import _checks, _dispatch, reference
from lotts_kernels._dispatch import Implementation

Number = Union[int, float]


def _register_implementations() -> None:
    ref = "lotts_kernels.reference"
    backends = {
        "attention_with_token_maps": "lotts_kernels.backends.triton_attention",
        "attention_propagate": "lotts_kernels.backends.triton_attention",
        "quality_mask": "lotts_kernels.backends.triton_quality_mask",
        "masked_noise_blend": "lotts_kernels.backends.triton_blend",
    }
    for op, triton_module in backends.items():
        _dispatch.register(op, Implementation("ref", ref, op))
        _dispatch.register(op, Implementation("triton", triton_module, op, limits=f"{op}_limits"))
    for op in ("quality_mask", "masked_noise_blend"):
        _dispatch.register(op, Implementation(
            "cuda", "lotts_kernels.backends.cuda_extension", op, limits=f"{op}_limits"))


_register_implementations()


# ----- 1. attention with token maps -----------------------------------------------------------

@torch.library.custom_op("lotts::attention_with_token_maps", mutates_args=())
def _attention_with_token_maps(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, token_index: torch.Tensor, scale: float
) -> tuple[torch.Tensor, torch.Tensor]:
    return _dispatch.run("attention_with_token_maps", q, k, v, token_index, scale)


@_attention_with_token_maps.register_fake
def _(q, k, v, token_index, scale):
    batch, heads, num_queries, _ = q.shape
    out = q.new_empty(batch, heads, num_queries, v.shape[-1])
    maps = q.new_empty(batch, num_queries, token_index.shape[1], dtype=torch.float32)
    return out, maps


def _check_qk(q: torch.Tensor, k: torch.Tensor) -> None:
    _checks.check_float("q", q)
    _checks.check_float("k", k)
    _checks.check_rank("q", q, (4,), "(B, H, Lq, D)")
    _checks.check_rank("k", k, (4,), "(B, H, Lk, D)")
    for dim, what in ((0, "batch size"), (1, "head count"), (3, "head dim")):
        _checks.check_dim("k", k, dim, q.shape[dim], what)
    if k.dtype != q.dtype:
        raise ValueError(f"k has dtype {k.dtype} but q has {q.dtype}; they must match")
    if q.shape[2] == 0 or k.shape[2] == 0:
        raise ValueError(f"q and k need at least one token, got Lq={q.shape[2]}, Lk={k.shape[2]}")


def _token_index_rows(token_index: torch.Tensor, batch: int, num_keys: int) -> torch.Tensor:
    """Validate token_index and return it as int64 (B, T)."""
    _checks.check_tensor("token_index", token_index)
    if token_index.dtype != torch.int64:
        raise ValueError(f"token_index must be int64, got {token_index.dtype}")
    _checks.check_rank("token_index", token_index, (1, 2), "(T,) or (B, T)")
    if token_index.dim() == 2:
        _checks.check_dim("token_index", token_index, 0, batch, "batch size")
    if token_index.shape[-1] == 0:
        raise ValueError("token_index must select at least one key position")
    rows = token_index.expand(batch, token_index.shape[-1]) if token_index.dim() == 1 else token_index
    if not torch.compiler.is_compiling() and token_index.device.type == "cpu":
        bad = (rows < 0) | (rows >= num_keys)
        if bool(bad.any()):
            raise ValueError(f"token_index values must lie in [0, {num_keys}), got "
                             f"{rows[bad][0].item()}")
    return rows.contiguous()


def attention_with_token_maps(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    token_index: torch.Tensor,
    scale: Optional[float] = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Scaled dot-product attention that also returns attention maps of chosen key tokens.

    q (B,H,Lq,D), k (B,H,Lk,D), v (B,H,Lk,Dv); token_index int64 (T,) or (B,T) key positions.
    Returns `out` equal to ``F.scaled_dot_product_attention(q, k, v, scale=scale)`` (q's dtype)
    and `maps`, float32 (B,Lq,T): the head-mean softmax(q k^T * scale) over all Lk keys, read at
    `token_index`. GPU kernels do both in one pass without a (B,H,Lq,Lk) tensor.
    """
    _check_qk(q, k)
    _checks.check_float("v", v)
    _checks.check_rank("v", v, (4,), "(B, H, Lk, Dv)")
    for dim, what in ((0, "batch size"), (1, "head count"), (2, "key count")):
        _checks.check_dim("v", v, dim, k.shape[dim], what)
    if v.dtype != q.dtype:
        raise ValueError(f"v has dtype {v.dtype} but q has {q.dtype}; they must match")
    _checks.check_same_device(q=q, k=k, v=v, token_index=token_index)
    _checks.check_scale(scale)
    rows = _token_index_rows(token_index, q.shape[0], k.shape[2])
    scale = reference.default_scale(q.shape[-1]) if scale is None else float(scale)
    return _attention_with_token_maps(q, k, v, rows, scale)


# ----- 2. attention propagation ---------------------------------------------------------------

@torch.library.custom_op("lotts::attention_propagate", mutates_args=())
def _attention_propagate(
    q: torch.Tensor, k: torch.Tensor, maps: torch.Tensor, scale: float
) -> torch.Tensor:
    return _dispatch.run("attention_propagate", q, k, maps, scale)


@_attention_propagate.register_fake
def _(q, k, maps, scale):
    return q.new_empty(q.shape[0], q.shape[2], maps.shape[-1], dtype=torch.float32)


def attention_propagate(
    q: torch.Tensor, k: torch.Tensor, maps: torch.Tensor, scale: Optional[float] = None
) -> torch.Tensor:
    """Propagate per-key maps through self-attention: mean_h softmax(q_h k_h^T s) @ maps.

    q (B,H,Lq,D), k (B,H,Lk,D), maps (B,Lk,C) with small C. Returns float32 (B,Lq,C), computed
    flash-style on a GPU so the Lq x Lk attention is never materialized.
    """
    _check_qk(q, k)
    _checks.check_float("maps", maps)
    _checks.check_rank("maps", maps, (3,), "(B, Lk, C)")
    _checks.check_dim("maps", maps, 0, q.shape[0], "batch size")
    _checks.check_dim("maps", maps, 1, k.shape[2], "key count")
    if maps.shape[2] == 0:
        raise ValueError("maps must have at least one channel C")
    _checks.check_same_device(q=q, k=k, maps=maps)
    _checks.check_scale(scale)
    scale = reference.default_scale(q.shape[-1]) if scale is None else float(scale)
    return _attention_propagate(q, k, maps, scale)


# ----- 3. quality mask ------------------------------------------------------------------------

@torch.library.custom_op("lotts::quality_mask", mutates_args=())
def _quality_mask(
    diff: torch.Tensor, orig: torch.Tensor, lam: float, ratio: float
) -> tuple[torch.Tensor, torch.Tensor]:
    return _dispatch.run("quality_mask", diff, orig, lam, ratio)


@_quality_mask.register_fake
def _(diff, orig, lam, ratio):
    return diff.new_empty(diff.shape, dtype=torch.float32), diff.new_empty(diff.shape, dtype=torch.bool)


def quality_mask(
    diff: torch.Tensor, orig: torch.Tensor, lam: float = 1.0, ratio: float = 0.5
) -> tuple[torch.Tensor, torch.Tensor]:
    """Equations (3)-(4): heat = mm(diff) + lam * mm(orig) per row and its top-`ratio` mask.

    diff, orig (B,N). mm is per-row min-max normalization (a constant row maps to zeros). The
    bool mask marks exactly round(ratio * N) positions per row with the largest heat, ties going
    to the lower index. Returns (heat float32 (B,N), mask bool (B,N)).
    """
    for name, x in (("diff", diff), ("orig", orig)):
        _checks.check_float(name, x)
        _checks.check_rank(name, x, (2,), "(B, N)")
    if orig.shape != diff.shape:
        raise ValueError(f"orig has shape {tuple(orig.shape)} but diff has {tuple(diff.shape)}")
    if diff.shape[1] == 0:
        raise ValueError("diff and orig need at least one position (N >= 1)")
    _checks.check_same_device(diff=diff, orig=orig)
    if isinstance(lam, bool) or not isinstance(lam, (int, float)):
        raise ValueError(f"lam must be a float, got {type(lam).__name__}")
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0.0 <= ratio <= 1.0:
        raise ValueError(f"ratio must be a float in [0, 1], got {ratio!r}")
    return _quality_mask(diff, orig, float(lam), float(ratio))


# ----- 4. masked noise blend ------------------------------------------------------------------

@torch.library.custom_op("lotts::masked_noise_blend", mutates_args=())
def _masked_noise_blend(
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
    return _dispatch.run("masked_noise_blend", x0, other, mask, alpha, alpha_value, sigma,
                         sigma_value, noise, seed, invert)


@_masked_noise_blend.register_fake
def _(x0, other, mask, alpha, alpha_value, sigma, sigma_value, noise, seed, invert):
    return torch.empty_like(x0, memory_format=torch.contiguous_format)


def _check_blend_mask(mask: torch.Tensor, x0: torch.Tensor) -> None:
    """A mask broadcastable to x0, or (B,1,h,w) for (B,C,H,W) x0 with H, W multiples of h, w."""
    _checks.check_tensor("mask", mask)
    if mask.dtype != torch.bool and mask.dtype not in _checks.FLOAT_DTYPES:
        raise ValueError(f"mask must be bool or floating, got {mask.dtype}")
    if mask.dim() > x0.dim():
        raise ValueError(f"mask has {mask.dim()} dims but x0 only {x0.dim()}")
    upsampled = (
        x0.dim() == 4 and mask.dim() == 4 and mask.shape[1] == 1
        and mask.shape[0] in (1, x0.shape[0])
        and all(m > 0 and s % m == 0 for m, s in zip(mask.shape[2:], x0.shape[2:]))
    )
    if upsampled:
        return
    try:
        torch.broadcast_shapes(mask.shape, x0.shape)
    except RuntimeError:
        raise ValueError(
            f"mask of shape {tuple(mask.shape)} neither broadcasts to x0 {tuple(x0.shape)} nor "
            "is a (B,1,h,w) mask whose h, w divide x0's H, W"
        ) from None
    if torch.broadcast_shapes(mask.shape, x0.shape) != x0.shape:
        raise ValueError(f"mask of shape {tuple(mask.shape)} would grow x0 {tuple(x0.shape)}")


def _coefficient(value: Union[Number, torch.Tensor]) -> tuple[Optional[torch.Tensor], float]:
    if isinstance(value, torch.Tensor):
        return value.float().contiguous(), 0.0
    return None, float(value)


def masked_noise_blend(
    x0: torch.Tensor,
    other: torch.Tensor,
    mask: torch.Tensor,
    alpha: Union[Number, torch.Tensor],
    sigma: Union[Number, torch.Tensor],
    noise: Optional[torch.Tensor] = None,
    seed: Optional[int] = None,
    invert: bool = False,
) -> torch.Tensor:
    """x = m * (alpha * x0 + sigma * eps) + (1 - m) * other, m = mask (or 1 - mask if invert).

    x0 and other share one shape (B, ...); alpha and sigma are floats or (B,) tensors; mask is
    bool or float in [0,1], broadcastable to x0, or (B,1,h,w) for (B,C,H,W) latents (upsampled
    nearest). eps is `noise`, or drawn from `seed` by :mod:`lotts_kernels.philox` (same seed and
    shape: same eps on a device). With sigma == 0 no noise is needed: the per-step blend.
    Returns a tensor of x0's dtype.
    """
    _checks.check_float("x0", x0)
    _checks.check_float("other", other)
    if x0.dim() < 1:
        raise ValueError("x0 must have a batch dimension (B, ...)")
    if other.shape != x0.shape:
        raise ValueError(f"other has shape {tuple(other.shape)} but x0 has {tuple(x0.shape)}")
    _check_blend_mask(mask, x0)
    _checks.check_float_or_batch("alpha", alpha, x0.shape[0])
    _checks.check_float_or_batch("sigma", sigma, x0.shape[0])
    if noise is not None:
        _checks.check_float("noise", noise)
        if noise.shape != x0.shape:
            raise ValueError(f"noise has shape {tuple(noise.shape)} but x0 has {tuple(x0.shape)}")
    _check_seed(noise, seed, sigma)
    _checks.check_same_device(x0=x0, other=other, mask=mask, noise=noise,
                              alpha=alpha if isinstance(alpha, torch.Tensor) else None,
                              sigma=sigma if isinstance(sigma, torch.Tensor) else None)
    alpha_tensor, alpha_value = _coefficient(alpha)
    sigma_tensor, sigma_value = _coefficient(sigma)
    return _masked_noise_blend(x0, other, mask, alpha_tensor, alpha_value, sigma_tensor,
                               sigma_value, noise, seed, bool(invert))


def _check_seed(noise: Optional[torch.Tensor], seed: Optional[int], sigma) -> None:
    if noise is not None and seed is not None:
        raise ValueError("give noise or seed, not both")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)
                             or not 0 <= seed < 2**63):
        raise ValueError(f"seed must be an int in [0, 2**63), got {seed!r}")
    sigma_is_zero = not isinstance(sigma, torch.Tensor) and sigma == 0
    if noise is None and seed is None and not sigma_is_zero:
        raise ValueError("sigma is not zero, so noise or seed must be given")
