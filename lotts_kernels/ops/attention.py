"""attention_with_token_maps and attention_propagate: one flash-attention kernel serves both.

Everything about the two attention ops is here, in this order: the public functions and their
argument checks, the ``lotts::`` custom ops with their fakes, the PyTorch references (the
specification, the test oracle and the CPU path), the Triton kernel, its launchers, and the
registration of both implementations with :mod:`lotts_kernels.dispatch`.

The Triton kernel (:func:`_attention_kernel`): a program owns BLOCK_M queries of one
(batch, head) and streams the keys in BLOCK_N blocks with an online softmax in the exp2 domain,
so no (Lq, Lk) score tensor ever exists.

* ``attention_with_token_maps``: v is the usual (B,H,Lk,Dv) values. After the key loop the
  program knows each query's final (max, normalizer); it recomputes the scores of the T
  selected keys only and writes their probabilities to a per-head (B,H,Lq,T) float32 buffer,
  whose head mean (a fixed-order torch reduction: deterministic) is the maps output.
* ``attention_propagate``: the "values" are the maps (B,Lk,C) themselves, read with head
  stride 0 and C padded to a power of two >= 16 for ``tl.dot``; the per-head (B,H,Lq,C)
  float32 results are averaged over heads the same way.

Memory beyond inputs and outputs: the per-head buffer, O(B*H*Lq*(T or C)) floats. The
references process queries in chunks so that CPU memory for the scores stays bounded (a few
MiB) even at 4096 x 4096 tokens.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Optional, Union

import torch
import torch.nn.functional as F

from lotts_kernels import _checks, dispatch
from lotts_kernels.triton_utils import TRITON, Launch, cdiv, jit, next_power_of_2, tl

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



# ----- 1. public functions and argument checks ------------------------------------------------

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


def _token_index_rows(token_index, batch: int, num_keys: int,
                      device: torch.device) -> torch.Tensor:
    """Validate token_index and return it as int64 (B, T) on `device`.

    Values are range-checked on the host, never on a GPU (that would need a device sync): a
    list, tuple or CPU tensor is checked and then copied to `device`; a tensor already on the
    GPU is taken as is, and the kernels flag its out-of-range entries instead (see
    :func:`attention_with_token_maps`).
    """
    if isinstance(token_index, (list, tuple)):
        try:
            token_index = torch.tensor(token_index, dtype=torch.int64)
        except (TypeError, ValueError, RuntimeError) as error:
            raise ValueError(f"token_index as a list must be (T,) or (B, T) ints: {error}"
                             ) from None
    _checks.check_tensor("token_index", token_index)
    if token_index.dtype != torch.int64:
        raise ValueError(f"token_index must be int64, got {token_index.dtype}")
    _checks.check_rank("token_index", token_index, (1, 2), "(T,) or (B, T)")
    if token_index.dim() == 2:
        _checks.check_dim("token_index", token_index, 0, batch, "batch size")
    if token_index.shape[-1] == 0:
        raise ValueError("token_index must select at least one key position")
    rows = token_index.expand(batch, token_index.shape[-1])
    if token_index.device.type == "cpu":
        if not torch.compiler.is_compiling():
            bad = (rows < 0) | (rows >= num_keys)
            if bool(bad.any()):
                raise ValueError(f"token_index values must lie in [0, {num_keys}), got "
                                 f"{rows[bad][0].item()}")
        rows = rows.to(device, non_blocking=True)
    elif token_index.device != device:
        raise ValueError(f"token_index is on {token_index.device} but q on {device}; pass it "
                         "on q's device or on the CPU")
    return rows.contiguous()


def _prepare_token_maps(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                        token_index: Union[torch.Tensor, Sequence[int], Sequence[Sequence[int]]],
                        scale: Optional[float] = None, *,
                        impl: Optional[str] = None) -> tuple[tuple, Optional[str]]:
    """Check the public arguments; return the custom op's arguments and the requested impl."""
    _check_qk(q, k)
    _checks.check_float("v", v)
    _checks.check_rank("v", v, (4,), "(B, H, Lk, Dv)")
    for dim, what in ((0, "batch size"), (1, "head count"), (2, "key count")):
        _checks.check_dim("v", v, dim, k.shape[dim], what)
    if v.dtype != q.dtype:
        raise ValueError(f"v has dtype {v.dtype} but q has {q.dtype}; they must match")
    _checks.check_same_device(q=q, k=k, v=v)
    _checks.check_scale(scale)
    rows = _token_index_rows(token_index, q.shape[0], k.shape[2], q.device)
    scale = default_scale(q.shape[-1]) if scale is None else float(scale)
    return (q, k, v, rows, scale), impl


def attention_with_token_maps(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    token_index: Union[torch.Tensor, Sequence[int], Sequence[Sequence[int]]],
    scale: Optional[float] = None,
    *,
    impl: Optional[str] = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Scaled dot-product attention that also returns attention maps of chosen key tokens.

    q (B,H,Lq,D), k (B,H,Lk,D), v (B,H,Lk,Dv); token_index int64 (T,) or (B,T) key positions in
    [0, Lk), as a tensor or a list/tuple. Returns `out` equal to
    ``F.scaled_dot_product_attention(q, k, v, scale=scale)`` (q's dtype) and `maps`, float32
    (B,Lq,T): the head-mean softmax(q k^T * scale) over all Lk keys, read at `token_index`. GPU
    kernels do both in one pass without a (B,H,Lq,Lk) tensor. `impl` forces one implementation
    ("ref", "triton", "auto") for this call.

    token_index contract: a list, tuple or CPU tensor is range-checked (ValueError) and copied
    to q's device, so pass the host copy when you have one; a tensor already on q's GPU is not
    checked (that would cost a device sync): an out-of-range entry never reads out of bounds,
    its maps column is NaN instead.
    """
    args, impl = _prepare_token_maps(q, k, v, token_index, scale, impl=impl)
    return _attention_with_token_maps(*args, impl or dispatch.CONTEXT)


def _prepare_propagate(q: torch.Tensor, k: torch.Tensor, maps: torch.Tensor,
                       scale: Optional[float] = None, *,
                       impl: Optional[str] = None) -> tuple[tuple, Optional[str]]:
    """Check the public arguments; return the custom op's arguments and the requested impl."""
    _check_qk(q, k)
    _checks.check_float("maps", maps)
    _checks.check_rank("maps", maps, (3,), "(B, Lk, C)")
    _checks.check_dim("maps", maps, 0, q.shape[0], "batch size")
    _checks.check_dim("maps", maps, 1, k.shape[2], "key count")
    if maps.shape[2] == 0:
        raise ValueError("maps must have at least one channel C")
    _checks.check_same_device(q=q, k=k, maps=maps)
    _checks.check_scale(scale)
    scale = default_scale(q.shape[-1]) if scale is None else float(scale)
    return (q, k, maps, scale), impl


def attention_propagate(
    q: torch.Tensor, k: torch.Tensor, maps: torch.Tensor, scale: Optional[float] = None, *,
    impl: Optional[str] = None,
) -> torch.Tensor:
    """Propagate per-key maps through self-attention: mean_h softmax(q_h k_h^T s) @ maps.

    q (B,H,Lq,D), k (B,H,Lk,D), maps (B,Lk,C) with small C. Returns float32 (B,Lq,C), computed
    flash-style on a GPU so the Lq x Lk attention is never materialized. `impl` as above.
    """
    args, impl = _prepare_propagate(q, k, maps, scale, impl=impl)
    return _attention_propagate(*args, impl or dispatch.CONTEXT)


# ----- 2. custom ops and fakes ----------------------------------------------------------------
# `impl` travels as an argument (not only as the context variable) so that a call traced by
# torch.compile still runs the implementation its caller asked for.

@torch.library.custom_op("lotts::attention_with_token_maps", mutates_args=())
def _attention_with_token_maps(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, token_index: torch.Tensor, scale: float,
    impl: str,
) -> tuple[torch.Tensor, torch.Tensor]:
    return dispatch.run("attention_with_token_maps", impl, q, k, v, token_index, scale)


@_attention_with_token_maps.register_fake
def _(q, k, v, token_index, scale, impl):
    batch, heads, num_queries, _ = q.shape
    out = q.new_empty(batch, heads, num_queries, v.shape[-1])
    maps = q.new_empty(batch, num_queries, token_index.shape[1], dtype=torch.float32)
    return out, maps


@torch.library.custom_op("lotts::attention_propagate", mutates_args=())
def _attention_propagate(
    q: torch.Tensor, k: torch.Tensor, maps: torch.Tensor, scale: float, impl: str
) -> torch.Tensor:
    return dispatch.run("attention_propagate", impl, q, k, maps, scale)


@_attention_propagate.register_fake
def _(q, k, maps, scale, impl):
    return q.new_empty(q.shape[0], q.shape[2], maps.shape[-1], dtype=torch.float32)


# ----- 3. references --------------------------------------------------------------------------

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


def attention_with_token_maps_ref(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, token_index: torch.Tensor, scale: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """SDPA output plus the head-mean softmax probabilities at the key columns `token_index`.

    token_index is int64 (B, T); maps are float32 (B, Lq, T), from the softmax over all keys.
    """
    out = F.scaled_dot_product_attention(q, k, v, scale=scale)
    batch, heads, num_queries, _ = q.shape
    num_tokens = token_index.shape[1]
    # Out-of-range entries (possible only for unchecked GPU indices) read NaN, as the kernel's.
    in_range = (token_index >= 0) & (token_index < k.shape[2])
    safe = token_index.clamp(0, k.shape[2] - 1)
    maps = torch.empty(batch, num_queries, num_tokens, dtype=torch.float32, device=q.device)
    for start, probs in _softmax_chunks(q, k, scale):
        index = safe[:, None, None, :].expand(batch, heads, probs.shape[2], num_tokens)
        maps[:, start:start + probs.shape[2]] = probs.gather(-1, index).mean(dim=1)
    return out, maps.masked_fill_(~in_range[:, None, :], float("nan"))


def attention_propagate_ref(
    q: torch.Tensor, k: torch.Tensor, maps: torch.Tensor, scale: float
) -> torch.Tensor:
    """mean_h softmax(q_h k_h^T * scale) @ maps, float32 (B, Lq, C), never holding Lq x Lk."""
    batch, _, num_queries, _ = q.shape
    maps32 = maps.float()[:, None]  # (B, 1, Lk, C), shared by every head
    out = torch.empty(batch, num_queries, maps.shape[-1], dtype=torch.float32, device=q.device)
    for start, probs in _softmax_chunks(q, k, scale):
        out[:, start:start + probs.shape[2]] = torch.matmul(probs, maps32).mean(dim=1)
    return out


def naive_attention_probs(q: torch.Tensor, k: torch.Tensor, scale: float) -> torch.Tensor:
    """Full (B, H, Lq, Lk) softmax in float64: for tests and the materializing baseline only."""
    scores = torch.matmul(q.double(), k.double().transpose(-1, -2)) * scale
    return torch.softmax(scores, dim=-1)


def default_scale(head_dim: int) -> float:
    """SDPA's default softmax scale."""
    return 1.0 / math.sqrt(head_dim)


# ----- 4. Triton kernel -----------------------------------------------------------------------

@jit
def _load_rows(base, rows, stride_row, row_mask, COLS: tl.constexpr, COLS_PAD: tl.constexpr):
    """Load a (len(rows), COLS_PAD) tile of row-major rows; padding rows and columns read 0."""
    cols = tl.arange(0, COLS_PAD)
    ptrs = base + rows[:, None] * stride_row + cols[None, :]
    if COLS == COLS_PAD:
        mask = row_mask[:, None]
    else:
        mask = row_mask[:, None] & (cols < COLS)[None, :]
    return tl.load(ptrs, mask=mask, other=0.0)


@jit
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


@jit
def _store_token_maps(q, m_i, inv_l, k_base, stride_kn, index_base, maps_base, stride_mm, offs_m,
                      num_queries, num_keys, num_tokens, qk_scale, HEAD_DIM: tl.constexpr,
                      D_PAD: tl.constexpr, BLOCK_T: tl.constexpr, DOT_PRECISION: tl.constexpr):
    """Probabilities of the selected keys: their scores recomputed, scaled by the final (m, 1/l).

    An index outside [0, num_keys) (GPU indices are not checked on the host) reads no key row
    and writes NaN: a flag the caller sees without a device sync."""
    query_ok = offs_m < num_queries
    for start_t in range(0, num_tokens, BLOCK_T):
        offs_t = start_t + tl.arange(0, BLOCK_T)
        token_ok = offs_t < num_tokens
        keys = tl.load(index_base + offs_t, mask=token_ok, other=0)
        key_ok = token_ok & (keys >= 0) & (keys < num_keys)
        k = _load_rows(k_base, keys, stride_kn, key_ok, HEAD_DIM, D_PAD)
        s = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * qk_scale
        p = tl.math.exp2(s - m_i[:, None]) * inv_l[:, None]
        p = tl.where(key_ok[None, :], p, float("nan"))
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
                          maps_ptr + b * stride_mb + h * stride_mh, stride_mm, offs_m, Lq, Lk,
                          num_tokens, qk_scale, HEAD_DIM, D_PAD, BLOCK_T, DOT_PRECISION)


# ----- 4b. autotune candidates, pruned by the AOT resource table -------------------------------
# The numbers below come from compiling every candidate ahead of time for sm_80 and sm_90
# (lotts_kernels.aot; benchmarks/aot_resources.py writes the table in benchmarks/RESULTS.md);
# tests/test_aot_compile.py fails if a config the pruning keeps spills or needs more shared
# memory than estimated.

# (BLOCK_M, BLOCK_N, warps, stages). BLOCK_N=32 wastes less on 77 CLIP keys; 64x32 w4 s3 is the
# one clean fp32 (TF32) config at head dim 128 on sm_90. Each config compiles once per
# (dtype, dims) on first use (seconds each), so the list stays short.
CONFIG_SHAPES = ((128, 64, 4, 3), (128, 64, 8, 3), (128, 128, 8, 3), (64, 64, 4, 3),
                 (128, 32, 4, 3), (64, 32, 4, 3))
# register_estimate up to which every candidate compiled without spills, per target; the
# smallest estimates that spilled were 192 on sm_80 and 280 on sm_90.
REGISTER_BUDGET = {80: 160, 90: 256}
IEEE_SPILLS = ("fp32 with IEEE dots (no tensor cores) spills registers in every config, "
               "even 32x32 tiles (AOT: 272 B to 69 KB of spill stores per thread on sm_80 and "
               "sm_90); allow TF32 (torch.backends.cuda.matmul.allow_tf32 = True) to use the "
               "Triton kernel")


def _configs(interpreted: bool) -> list:
    """The autotune candidates; one small fixed config in the interpreter (no autotuning)."""
    from lotts_kernels.triton_utils import triton

    if interpreted:
        return [triton.Config({"BLOCK_M": 32, "BLOCK_N": 32}, num_warps=4, num_stages=1)]
    return [triton.Config({"BLOCK_M": m, "BLOCK_N": n}, num_warps=w, num_stages=s)
            for m, n, w, s in CONFIG_SHAPES]


def _tile_bytes(args: dict) -> tuple[int, int]:
    """Bytes per element of the q/k tiles and of the v tile (propagate's maps are float32)."""
    return args["q_ptr"].element_size(), args["v_ptr"].element_size()


def shared_memory_estimate(config, args: dict, capability: int) -> int:
    """Shared memory (bytes) the kernel allocates with `config` for these kernel arguments.

    The Q tile, the K/V pipeline - num_stages buffers on sm_90 (wgmma reads shared memory),
    num_stages - 1 before - on sm_8x with 32-bit (TF32) operands the P tile and the row
    statistics, which Triton converts through shared memory, and for token maps one key tile of
    the maps pass. Never below Triton's allocation for a config the pruning keeps (AOT, sm_80
    and sm_90; at most one maps key tile, 2-8 KB, or 4% above it); 4-24 KB below it for some
    16-bit sm_80 tilings that spill and are pruned anyway (benchmarks/RESULTS.md).
    """
    block_m, block_n = config.kwargs["BLOCK_M"], config.kwargs["BLOCK_N"]
    qk_bytes, v_bytes = _tile_bytes(args)
    buffers = config.num_stages if capability >= 90 else config.num_stages - 1
    pipeline = buffers * block_n * (args["D_PAD"] * qk_bytes + args["DV_PAD"] * v_bytes)
    p_tile = block_m * (block_n + 2) * 4 if qk_bytes == 4 and capability < 90 else 0
    # token maps: one BLOCK_T x D key tile, which some tilings (64x32 w4 on sm_80) add on top
    maps_tile = args["BLOCK_T"] * args["D_PAD"] * qk_bytes if args["WITH_MAPS"] else 0
    return block_m * args["D_PAD"] * qk_bytes + pipeline + p_tile + maps_tile


def register_estimate(config, args: dict) -> int:
    """32-bit registers per thread for the live tiles: the fp32 accumulator and scores, and the
    Q, K and V operand tiles (16-bit elements pack two to a register)."""
    block_m, block_n = config.kwargs["BLOCK_M"], config.kwargs["BLOCK_N"]
    qk_bytes, v_bytes = _tile_bytes(args)
    d_pad, dv_pad = args["D_PAD"], args["DV_PAD"]
    words = (block_m * dv_pad + block_m * block_n
             + (block_m + block_n) * d_pad * qk_bytes // 4 + block_n * dv_pad * v_bytes // 4)
    return words // (32 * config.num_warps)


# Configs the register estimate keeps but the AOT compile found spilling (spill stores per
# thread): (target, bytes per q element, D_PAD, DV_PAD, WITH_MAPS, BLOCK_M, BLOCK_N, warps,
# stages). The estimate counts live tiles per thread; where Triton's MMA layouts replicate the K
# and V operands across warps it undercounts, and these measured entries prune the rest.
AOT_SPILLS = {
    (80, 2, 128, 128, True, 64, 32, 4, 3),   # 48 B (FLUX token maps, fp16/bf16)
    (90, 4, 64, 64, True, 128, 64, 4, 3),    # 60 B (SD2.1/SDXL token maps, TF32)
}


def _measured_spill(config, args: dict, capability: int) -> bool:
    key = (90 if capability >= 90 else 80, _tile_bytes(args)[0], args["D_PAD"], args["DV_PAD"],
           bool(args["WITH_MAPS"]), config.kwargs["BLOCK_M"], config.kwargs["BLOCK_N"],
           config.num_warps, config.num_stages)
    return key in AOT_SPILLS


def config_problems(config, args: dict, capability: int, shared_limit: int) -> list[str]:
    """Why `config` must not run with these kernel arguments on a GPU of `capability`
    (e.g. 90) allowing `shared_limit` bytes of shared memory per block; empty: it may."""
    problems = []
    if args["DOT_PRECISION"] == "ieee":
        problems.append(IEEE_SPILLS)
    budget = REGISTER_BUDGET[90 if capability >= 90 else 80]
    registers = register_estimate(config, args)
    if registers > budget:
        problems.append(f"~{registers} registers of live tiles per thread > {budget}: spills")
    elif _measured_spill(config, args, capability):
        problems.append("spills registers in the AOT compile (AOT_SPILLS)")
    shared = shared_memory_estimate(config, args, capability)
    if shared > shared_limit:
        problems.append(f"needs ~{shared} B of shared memory > {shared_limit} B per block")
    return problems


def config_name(config) -> str:
    return (f"{config.kwargs['BLOCK_M']}x{config.kwargs['BLOCK_N']} w{config.num_warps} "
            f"s{config.num_stages}")


def device_limits(device: torch.device) -> tuple[int, int]:
    """(capability as 10*major+minor, opt-in shared memory per block in bytes) of a GPU."""
    properties = torch.cuda.get_device_properties(device)
    return properties.major * 10 + properties.minor, properties.shared_memory_per_block_optin


def _config_reasons(args: dict) -> list[str]:
    """Why no candidate config can run these kernel arguments on their GPU (empty: one can)."""
    tensor = args["q_ptr"]
    if tensor.device.type != "cuda":
        return []  # the interpreter has neither registers nor shared memory to run out of
    capability, shared_limit = device_limits(tensor.device)
    report = {config_name(c): config_problems(c, args, capability, shared_limit)
              for c in _configs(False)}
    if any(not problems for problems in report.values()):
        return []
    if all(IEEE_SPILLS in problems for problems in report.values()):
        return [IEEE_SPILLS]
    details = "; ".join(f"{name}: {', '.join(problems)}" for name, problems in report.items())
    return [f"no autotune config fits sm_{capability} with head dim {args['HEAD_DIM']}, value "
            f"dim {args['VALUE_DIM']} in {tensor.dtype} ({details})"]


def _prune_configs(configs: list, named_args: dict, **kwargs) -> list:
    """The configs this GPU can run spill-free (the launchers refused the call if none)."""
    args = {**named_args, **kwargs}
    capability, shared_limit = device_limits(args["q_ptr"].device)
    kept = [c for c in configs if not config_problems(c, args, capability, shared_limit)]
    if not kept:
        raise ValueError("; ".join(_config_reasons(args)))
    return kept


def _autotune(interpreted: bool) -> dict:
    return dict(configs=_configs(interpreted),
                key=["Lq", "Lk", "HEAD_DIM", "VALUE_DIM", "WITH_MAPS"],
                prune_configs_by={"early_config_prune": _prune_configs})


_attention_kernel = jit(_attention_kernel_body, autotune=_autotune)


# ----- 5. Triton launchers --------------------------------------------------------------------

def _pow2_at_least(n: int, floor: int = MIN_DOT_DIM) -> int:
    """Power-of-two tile width >= max(n, floor): tl.arange and tl.dot need it."""
    return max(floor, next_power_of_2(n))


def _unit_last_stride(x: torch.Tensor) -> torch.Tensor:
    """Kernels take any row strides but read each row densely: copy only if the last dim is not."""
    return x if x.stride(-1) == 1 or x.shape[-1] == 1 else x.contiguous()


def _dot_precision(dtype: torch.dtype) -> str:
    """fp16/bf16 use tensor cores anyway. fp32 uses TF32 tensor cores only where the user allowed
    TF32 for fp32 matmuls (``torch.backends.cuda.matmul.allow_tf32``, which PyTorch's own fp32
    matmuls follow); else IEEE, which no config runs without spilling (see IEEE_SPILLS)."""
    if dtype != torch.float32:
        return "tf32"
    return "tf32" if torch.backends.cuda.matmul.allow_tf32 else "ieee"


def _head_dim_reasons(q: torch.Tensor) -> list[str]:
    batch, heads, _, head_dim = q.shape
    reasons = []
    if head_dim > MAX_HEAD_DIM:
        reasons.append(f"head dim {head_dim} exceeds the Triton kernel's maximum of "
                       f"{MAX_HEAD_DIM}")
    if batch * heads > MAX_BATCH_HEADS:
        reasons.append(f"batch * heads = {batch * heads} exceeds the grid limit of "
                       f"{MAX_BATCH_HEADS}")
    return reasons


def _raise_if(reasons: list[str]) -> None:
    if reasons:
        raise ValueError("; ".join(reasons))


def _constexprs(q: torch.Tensor, value_dim: int, num_tokens: Optional[int]) -> dict:
    """The kernel's constexprs for these inputs (num_tokens None: propagate, no token maps)."""
    head_dim = q.shape[-1]
    return dict(HEAD_DIM=head_dim, D_PAD=_pow2_at_least(head_dim), VALUE_DIM=value_dim,
                DV_PAD=_pow2_at_least(value_dim),
                BLOCK_T=min(MAX_TOKEN_CHUNK, _pow2_at_least(num_tokens or 0)),
                WITH_MAPS=num_tokens is not None, DOT_PRECISION=_dot_precision(q.dtype))


def _launch(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, v_strides: tuple[int, int, int],
            out: torch.Tensor, scale: float, token_index: Optional[torch.Tensor] = None,
            maps: Optional[torch.Tensor] = None) -> Launch:
    """The kernel launch; q, k, v rows dense; v_strides = (batch, head, key) strides of v."""
    batch, heads, num_queries, _ = q.shape
    with_maps = token_index is not None and maps is not None
    if token_index is not None and maps is not None:
        index, maps_buffer, num_tokens = token_index, maps, token_index.shape[1]
    else:  # unused placeholders when not WITH_MAPS
        index, maps_buffer, num_tokens = out, out, 0

    def grid(meta: dict) -> tuple[int, int]:
        return cdiv(num_queries, meta["BLOCK_M"]), batch * heads

    args = (q, k, v, out, index, maps_buffer,
            q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
            *v_strides, out.stride(0), out.stride(1), out.stride(2),
            index.stride(0), maps_buffer.stride(0), maps_buffer.stride(1), maps_buffer.stride(2),
            heads, num_queries, k.shape[2], num_tokens, scale * LOG2E)
    return Launch(_attention_kernel, grid, args,
                  _constexprs(q, out.shape[-1], num_tokens if with_maps else None))


def attention_with_token_maps_limits(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                                     token_index: torch.Tensor, scale: float) -> list[str]:
    """Every reason the Triton kernel cannot take these inputs (empty: it can)."""
    reasons = []
    if v.shape[-1] > MAX_HEAD_DIM:
        reasons.append(f"value dim {v.shape[-1]} exceeds the Triton kernel's maximum of "
                       f"{MAX_HEAD_DIM}")
    reasons += _head_dim_reasons(q)
    if reasons:
        return reasons
    return _config_reasons({"q_ptr": q, "v_ptr": v,
                            **_constexprs(q, v.shape[-1], token_index.shape[-1])})


def token_maps_launch(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                      token_index: torch.Tensor, scale: float
                      ) -> tuple[Launch, torch.Tensor, torch.Tensor]:
    """(launch, out, per-head maps) of :func:`attention_with_token_maps_triton` (inputs checked;
    also what the AOT compile checks build, on ``meta`` tensors)."""
    q, k, v = (_unit_last_stride(x) for x in (q, k, v))
    batch, heads, num_queries, _ = q.shape
    rows = token_index.expand(batch, token_index.shape[-1]).contiguous()
    out = torch.empty(batch, heads, num_queries, v.shape[-1], dtype=q.dtype, device=q.device)
    per_head = torch.empty(batch, heads, num_queries, rows.shape[1], dtype=torch.float32,
                           device=q.device)
    launch = _launch(q, k, v, (v.stride(0), v.stride(1), v.stride(2)), out, scale, rows,
                     per_head)
    return launch, out, per_head


def attention_with_token_maps_triton(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                                     token_index: torch.Tensor, scale: float
                                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """SDPA output (q's dtype, (B,H,Lq,Dv)) and head-mean probabilities of `token_index` keys
    (float32 (B,Lq,T)), in one flash pass; never allocates (B,H,Lq,Lk)."""
    _raise_if(attention_with_token_maps_limits(q, k, v, token_index, scale))
    launch, out, per_head = token_maps_launch(q, k, v, token_index, scale)
    launch.run()
    return out, per_head.mean(dim=1)


def attention_propagate_limits(q: torch.Tensor, k: torch.Tensor, maps: torch.Tensor,
                               scale: float) -> list[str]:
    """Every reason the Triton kernel cannot take these inputs (empty: it can)."""
    reasons = []
    if maps.shape[-1] > MAX_MAP_CHANNELS:
        reasons.append(f"maps have {maps.shape[-1]} channels; the Triton kernel takes at most "
                       f"{MAX_MAP_CHANNELS}")
    reasons += _head_dim_reasons(q)
    if reasons:
        return reasons
    return _config_reasons({"q_ptr": q, "v_ptr": maps,
                            **_constexprs(q, maps.shape[-1], None)})


def propagate_launch(q: torch.Tensor, k: torch.Tensor, maps: torch.Tensor,
                     scale: float) -> tuple[Launch, torch.Tensor]:
    """(launch, per-head output) of :func:`attention_propagate_triton` (inputs checked)."""
    q, k, maps = (_unit_last_stride(x) for x in (q, k, maps))
    batch, heads, num_queries, _ = q.shape
    per_head = torch.empty(batch, heads, num_queries, maps.shape[-1], dtype=torch.float32,
                           device=q.device)
    return _launch(q, k, maps, (maps.stride(0), 0, maps.stride(1)), per_head, scale), per_head


def attention_propagate_triton(q: torch.Tensor, k: torch.Tensor, maps: torch.Tensor,
                               scale: float) -> torch.Tensor:
    """mean_h softmax(q_h k_h^T * scale) @ maps as float32 (B,Lq,C), flash-style.

    maps (B,Lk,C) serve as values shared by all heads (head stride 0). For fp16/bf16 q they are
    rounded to q's dtype for the tensor-core product, like the probabilities (fp32 accumulate).
    """
    _raise_if(attention_propagate_limits(q, k, maps, scale))
    launch, per_head = propagate_launch(q, k, maps, scale)
    launch.run()
    return per_head.mean(dim=1)


# ----- 6. registration ------------------------------------------------------------------------

TOKEN_MAPS = dispatch.register_op(dispatch.Op("attention_with_token_maps", _prepare_token_maps))
TOKEN_MAPS.register(dispatch.Implementation(dispatch.REF, attention_with_token_maps_ref))
TOKEN_MAPS.register(dispatch.Implementation(TRITON, attention_with_token_maps_triton,
                                            limits=attention_with_token_maps_limits))

PROPAGATE = dispatch.register_op(dispatch.Op("attention_propagate", _prepare_propagate))
PROPAGATE.register(dispatch.Implementation(dispatch.REF, attention_propagate_ref))
PROPAGATE.register(dispatch.Implementation(TRITON, attention_propagate_triton,
                                           limits=attention_propagate_limits))
