"""Triton kernels for the two attention ops: SDPA with token maps, and map propagation.

Both ops are one flash-attention forward kernel (:func:`_attention_kernel`): a program owns
BLOCK_M queries of one (batch, head) and streams the keys in BLOCK_N blocks with an online
softmax in the exp2 domain, so no (Lq, Lk) score tensor ever exists.

* ``attention_with_token_maps``: v is the usual (B,H,Lk,Dv) values. After the key loop the
  program knows each query's final (max, normalizer); it recomputes the scores of the T
  selected keys only and writes their probabilities to a per-head (B,H,Lq,T) float32 buffer,
  whose head mean (a fixed-order torch reduction: deterministic) is the maps output.
* ``attention_propagate``: the "values" are the maps (B,Lk,C) themselves, read with head
  stride 0 and C padded to a power of two >= 16 for ``tl.dot``; the per-head (B,H,Lq,C)
  float32 results are averaged over heads the same way.

Memory beyond inputs and outputs: the per-head buffer, O(B*H*Lq*(T or C)) floats.
"""
from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl

# Largest head dim / value dim the kernel keeps in registers; larger spills too much.
MAX_HEAD_DIM = 256
MAX_MAP_CHANNELS = 64
# Grid axis 1 (batch * heads) is limited by CUDA to 65535 programs.
MAX_BATCH_HEADS = 65535
# tl.dot needs every dimension >= 16.
MIN_DOT_DIM = 16
# Selected key rows are processed in chunks of at most this many tokens.
MAX_TOKEN_CHUNK = 64
LOG2E = 1.4426950408889634

# Read when the @triton.jit decorators below run: the same moment triton decides to interpret.
_INTERPRETING = bool(triton.knobs.runtime.interpret)


# ----- kernels ---------------------------------------------------------------------------------

@triton.jit
def _load_rows(base, rows, stride_row, row_mask, COLS: tl.constexpr, COLS_PAD: tl.constexpr):
    """Load a (len(rows), COLS_PAD) tile of row-major rows; padding rows and columns read 0."""
    cols = tl.arange(0, COLS_PAD)
    ptrs = base + rows[:, None] * stride_row + cols[None, :]
    if COLS == COLS_PAD:
        mask = row_mask[:, None]
    else:
        mask = row_mask[:, None] & (cols < COLS)[None, :]
    return tl.load(ptrs, mask=mask, other=0.0)


@triton.jit
def _online_softmax_step(acc, m_i, l_i, q, k_base, v_base, start_n, num_keys, stride_kn,
                         stride_vn, qk_scale, HEAD_DIM: tl.constexpr, D_PAD: tl.constexpr,
                         VALUE_DIM: tl.constexpr, DV_PAD: tl.constexpr, BLOCK_N: tl.constexpr,
                         MASK_KEYS: tl.constexpr, DOT_PRECISION: tl.constexpr):
    """Fold one block of keys into (acc, m_i, l_i); scores are log2-domain (qk_scale has log2e).

    Normalization is deferred: acc and l_i hold exp2(s - m_i)-weighted sums, divided once at the
    end. Only the tail block masks its padded keys (to -inf, before the max).
    """
    offs_n = start_n + tl.arange(0, BLOCK_N)
    key_ok = offs_n < num_keys
    k = _load_rows(k_base, offs_n, stride_kn, key_ok, HEAD_DIM, D_PAD)
    s = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * qk_scale
    if MASK_KEYS:
        s = tl.where(key_ok[None, :], s, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(s, 1))
    # A row whose keys so far are all masked keeps m = -inf; subtract 0 there to avoid NaN.
    m_sub = tl.where(m_new == float("-inf"), 0.0, m_new)
    p = tl.math.exp2(s - m_sub[:, None])
    alpha = tl.math.exp2(m_i - m_sub)
    l_i = l_i * alpha + tl.sum(p, 1)
    v = _load_rows(v_base, offs_n, stride_vn, key_ok, VALUE_DIM, DV_PAD)
    acc = tl.dot(p.to(q.dtype), v.to(q.dtype), acc * alpha[:, None],
                 input_precision=DOT_PRECISION)
    return acc, m_new, l_i


@triton.jit
def _store_token_maps(q, m_i, inv_l, k_base, stride_kn, index_base, maps_base, stride_mm, offs_m,
                      num_queries, num_tokens, qk_scale, HEAD_DIM: tl.constexpr,
                      D_PAD: tl.constexpr, BLOCK_T: tl.constexpr, DOT_PRECISION: tl.constexpr):
    """Probabilities of the selected keys: their scores recomputed, scaled by the final (m, 1/l)."""
    query_ok = offs_m < num_queries
    for start_t in range(0, num_tokens, BLOCK_T):
        offs_t = start_t + tl.arange(0, BLOCK_T)
        token_ok = offs_t < num_tokens
        keys = tl.load(index_base + offs_t, mask=token_ok, other=0)
        k = _load_rows(k_base, keys, stride_kn, token_ok, HEAD_DIM, D_PAD)
        s = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * qk_scale
        p = tl.math.exp2(s - m_i[:, None]) * inv_l[:, None]
        ptrs = maps_base + offs_m[:, None] * stride_mm + offs_t[None, :]
        tl.store(ptrs, p, mask=query_ok[:, None] & token_ok[None, :])


def _attention_kernel_body(
    q_ptr, k_ptr, v_ptr, out_ptr, index_ptr, maps_ptr,
    stride_qb, stride_qh, stride_qm, stride_kb, stride_kh, stride_kn,
    stride_vb, stride_vh, stride_vn, stride_ob, stride_oh, stride_om,
    stride_ib, stride_mb, stride_mh, stride_mm,
    num_heads, Lq, Lk, num_tokens, qk_scale,
    HEAD_DIM: tl.constexpr, D_PAD: tl.constexpr, VALUE_DIM: tl.constexpr, DV_PAD: tl.constexpr,
    BLOCK_T: tl.constexpr, WITH_MAPS: tl.constexpr, DOT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    """Flash-attention forward for BLOCK_M queries of one (batch, head); rows have unit stride."""
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    # int64 bases: B*H*L*D may exceed 2**31 elements.
    b = (pid_bh // num_heads).to(tl.int64)
    h = (pid_bh % num_heads).to(tl.int64)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    q = _load_rows(q_ptr + b * stride_qb + h * stride_qh, offs_m, stride_qm, offs_m < Lq,
                   HEAD_DIM, D_PAD)
    k_base = k_ptr + b * stride_kb + h * stride_kh
    v_base = v_ptr + b * stride_vb + h * stride_vh

    acc = tl.zeros([BLOCK_M, DV_PAD], dtype=tl.float32)
    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    full_end = (Lk // BLOCK_N) * BLOCK_N
    for start_n in range(0, full_end, BLOCK_N):
        acc, m_i, l_i = _online_softmax_step(
            acc, m_i, l_i, q, k_base, v_base, start_n, Lk, stride_kn, stride_vn, qk_scale,
            HEAD_DIM, D_PAD, VALUE_DIM, DV_PAD, BLOCK_N, False, DOT_PRECISION)
    if full_end < Lk:
        acc, m_i, l_i = _online_softmax_step(
            acc, m_i, l_i, q, k_base, v_base, full_end, Lk, stride_kn, stride_vn, qk_scale,
            HEAD_DIM, D_PAD, VALUE_DIM, DV_PAD, BLOCK_N, True, DOT_PRECISION)

    inv_l = 1.0 / l_i
    out_ptrs = (out_ptr + b * stride_ob + h * stride_oh
                + offs_m[:, None] * stride_om + tl.arange(0, DV_PAD)[None, :])
    out_mask = (offs_m < Lq)[:, None] & (tl.arange(0, DV_PAD) < VALUE_DIM)[None, :]
    tl.store(out_ptrs, (acc * inv_l[:, None]).to(out_ptr.dtype.element_ty), mask=out_mask)
    if WITH_MAPS:
        _store_token_maps(q, m_i, inv_l, k_base, stride_kn, index_ptr + b * stride_ib,
                          maps_ptr + b * stride_mb + h * stride_mh, stride_mm, offs_m, Lq,
                          num_tokens, qk_scale, HEAD_DIM, D_PAD, BLOCK_T, DOT_PRECISION)


def _configs() -> list[triton.Config]:
    """H100-oriented candidates; one small fixed config in the interpreter (no autotuning)."""
    if _INTERPRETING:
        return [triton.Config({"BLOCK_M": 32, "BLOCK_N": 32}, num_warps=4, num_stages=1)]
    # (BLOCK_M, BLOCK_N, warps, stages); BLOCK_N=32 wastes less on 77 CLIP keys. Each config
    # compiles once per (dtype, dims) on first use (seconds each), so the list stays short.
    shapes = ((128, 64, 4, 3), (128, 64, 8, 3), (128, 128, 8, 3), (64, 64, 4, 3), (128, 32, 4, 3))
    return [triton.Config({"BLOCK_M": m, "BLOCK_N": n}, num_warps=w, num_stages=s)
            for m, n, w, s in shapes]


def _prune_configs(configs: list[triton.Config], named_args: dict, **kwargs) -> list[triton.Config]:
    """Wide heads (padded dim 256) keep only tiles whose K/V pipeline fits shared memory."""
    args = {**named_args, **kwargs}
    widest = max(args["D_PAD"], args["DV_PAD"])
    if widest < 256:
        return configs
    small = [c for c in configs if c.kwargs["BLOCK_M"] * c.kwargs["BLOCK_N"] <= 64 * 64]
    return small or configs[-1:]


_attention_kernel = triton.autotune(
    configs=_configs(),
    key=["Lq", "Lk", "HEAD_DIM", "VALUE_DIM", "WITH_MAPS"],
    prune_configs_by={"early_config_prune": _prune_configs},
)(triton.jit(_attention_kernel_body))


# ----- launchers -------------------------------------------------------------------------------

def _pow2_at_least(n: int, floor: int = MIN_DOT_DIM) -> int:
    """Power-of-two tile width >= max(n, floor): tl.arange and tl.dot need it."""
    return max(floor, triton.next_power_of_2(n))


def _unit_last_stride(x: torch.Tensor) -> torch.Tensor:
    """Kernels take any row strides but read each row densely: copy only if the last dim is not."""
    return x if x.stride(-1) == 1 or x.shape[-1] == 1 else x.contiguous()


def _dot_precision(dtype: torch.dtype) -> str:
    """fp32 must ask for IEEE (NVIDIA uses TF32 otherwise); fp16/bf16 use tensor cores anyway."""
    return "ieee" if dtype == torch.float32 else "tf32"


def _head_dim_reason(q: torch.Tensor) -> Optional[str]:
    batch, heads, _, head_dim = q.shape
    if head_dim > MAX_HEAD_DIM:
        return f"head dim {head_dim} exceeds the Triton kernel's maximum of {MAX_HEAD_DIM}"
    if batch * heads > MAX_BATCH_HEADS:
        return f"batch * heads = {batch * heads} exceeds the grid limit of {MAX_BATCH_HEADS}"
    return None


def _raise_if(reason: Optional[str]) -> None:
    if reason is not None:
        raise ValueError(reason)


def _launch(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, v_strides: tuple[int, int, int],
            out: torch.Tensor, scale: float, token_index: Optional[torch.Tensor] = None,
            maps: Optional[torch.Tensor] = None) -> None:
    """Run the kernel; q, k, v rows dense; v_strides = (batch, head, key) strides of v."""
    batch, heads, num_queries, head_dim = q.shape
    value_dim = out.shape[-1]
    with_maps = token_index is not None
    num_tokens = token_index.shape[1] if with_maps else 0
    index = token_index if with_maps else out   # unused placeholders when not WITH_MAPS
    maps_buffer = maps if with_maps else out

    def grid(meta: dict) -> tuple[int, int]:
        return triton.cdiv(num_queries, meta["BLOCK_M"]), batch * heads

    _attention_kernel[grid](
        q, k, v, out, index, maps_buffer,
        q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
        *v_strides, out.stride(0), out.stride(1), out.stride(2),
        index.stride(0), maps_buffer.stride(0), maps_buffer.stride(1), maps_buffer.stride(2),
        heads, num_queries, k.shape[2], num_tokens, scale * LOG2E,
        HEAD_DIM=head_dim, D_PAD=_pow2_at_least(head_dim),
        VALUE_DIM=value_dim, DV_PAD=_pow2_at_least(value_dim),
        BLOCK_T=min(MAX_TOKEN_CHUNK, _pow2_at_least(num_tokens)), WITH_MAPS=with_maps,
        DOT_PRECISION=_dot_precision(q.dtype),
    )


# ----- functions the dispatcher calls ----------------------------------------------------------

def attention_with_token_maps_limits(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                                     token_index: torch.Tensor, scale: float) -> Optional[str]:
    """Why the Triton kernel cannot take these inputs, or None."""
    if v.shape[-1] > MAX_HEAD_DIM:
        return f"value dim {v.shape[-1]} exceeds the Triton kernel's maximum of {MAX_HEAD_DIM}"
    if token_index.dim() not in (1, 2) or token_index.dtype != torch.int64:
        return f"token_index must be int64 (T,) or (B, T), got {token_index.dtype} " \
               f"{tuple(token_index.shape)}"
    return _head_dim_reason(q)


def attention_with_token_maps(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                              token_index: torch.Tensor, scale: float
                              ) -> tuple[torch.Tensor, torch.Tensor]:
    """SDPA output (q's dtype, (B,H,Lq,Dv)) and head-mean probabilities of `token_index` keys
    (float32 (B,Lq,T)), in one flash pass; never allocates (B,H,Lq,Lk)."""
    _raise_if(attention_with_token_maps_limits(q, k, v, token_index, scale))
    q, k, v = (_unit_last_stride(x) for x in (q, k, v))
    batch, heads, num_queries, _ = q.shape
    rows = token_index.expand(batch, token_index.shape[-1]).contiguous()
    out = torch.empty(batch, heads, num_queries, v.shape[-1], dtype=q.dtype, device=q.device)
    per_head = torch.empty(batch, heads, num_queries, rows.shape[1], dtype=torch.float32,
                           device=q.device)
    _launch(q, k, v, (v.stride(0), v.stride(1), v.stride(2)), out, scale, rows, per_head)
    return out, per_head.mean(dim=1)


def attention_propagate_limits(q: torch.Tensor, k: torch.Tensor, maps: torch.Tensor,
                               scale: float) -> Optional[str]:
    """Why the Triton kernel cannot take these inputs, or None."""
    if maps.shape[-1] > MAX_MAP_CHANNELS:
        return f"maps have {maps.shape[-1]} channels; the Triton kernel takes at most " \
               f"{MAX_MAP_CHANNELS}"
    return _head_dim_reason(q)


def attention_propagate(q: torch.Tensor, k: torch.Tensor, maps: torch.Tensor,
                        scale: float) -> torch.Tensor:
    """mean_h softmax(q_h k_h^T * scale) @ maps as float32 (B,Lq,C), flash-style.

    maps (B,Lk,C) serve as values shared by all heads (head stride 0). For fp16/bf16 q they are
    rounded to q's dtype for the tensor-core product, like the probabilities (fp32 accumulate).
    """
    _raise_if(attention_propagate_limits(q, k, maps, scale))
    q, k, maps = (_unit_last_stride(x) for x in (q, k, maps))
    batch, heads, num_queries, _ = q.shape
    per_head = torch.empty(batch, heads, num_queries, maps.shape[-1], dtype=torch.float32,
                           device=q.device)
    _launch(q, k, maps, (maps.stride(0), 0, maps.stride(1)), per_head, scale)
    return per_head.mean(dim=1)
