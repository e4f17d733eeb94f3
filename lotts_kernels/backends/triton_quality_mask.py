"""Triton quality_mask: per-row heat = mm(diff) + lam*mm(orig) and its exact top-k mask.

Three layers: the private kernel `_quality_mask_kernel`, the launcher :func:`quality_mask`
(same signature as :func:`lotts_kernels.reference.quality_mask`) and
:func:`quality_mask_limits`.

Design (one program per row, no sort):
1. min/max of diff and orig in one pass; heat with the reference's float32 operations in its
   order, each rounded separately (IEEE division `div_rn`, no fma contraction:
   `enable_fp_fusion=False`), so heat is bit-identical to the reference on the same inputs.
   A constant row gives zeros.
2. Selection of exactly k = round(ratio*N): heat's float bits mapped to order-preserving
   uint32 keys (negative floats, possible when lam < 0, flip all bits; others flip the sign
   bit). A 32-step binary search over key bits finds v, the k-th largest key: the largest v with
   count(key >= v) >= k. Then mask = key > v, plus the first k - count(key > v) positions with
   key == v in index order (an inclusive prefix count, tl.cumsum): ties go to the lower index,
   exactly as the reference's stable sort. k = 0 ends with v = 0xFFFFFFFF and selects nothing;
   k = N selects everything.
3. A row of up to SINGLE_BLOCK_MAX elements lives in registers for the whole kernel (one read of
   the inputs, one write of each output). Longer rows loop over BLOCK-sized chunks: min/max,
   then heat written to the output, then the search and the mask re-read heat (from L2).
"""
from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl

from lotts_kernels import reference
from lotts_kernels.backends.triton_blend import LazyKernel

# Rows up to this many positions stay in registers; longer ones are processed in chunks.
SINGLE_BLOCK_MAX = 16384
CHUNK_BLOCK = 4096
# Largest row this kernel accepts (the int32 arithmetic and per-row loops are sized for it).
MAX_N = 2**24


def _quality_mask_kernel(
    diff_ptr, orig_ptr, heat_ptr, mask_ptr, N, stride_d, stride_o, lam, k,
    SINGLE: tl.constexpr, BLOCK: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    d_row = diff_ptr + row * stride_d
    o_row = orig_ptr + row * stride_o
    h_row = heat_ptr + row * N
    m_row = mask_ptr + row * N
    cols = tl.arange(0, BLOCK)

    if SINGLE:
        valid = cols < N
        d = tl.load(d_row + cols, mask=valid, other=0.0).to(tl.float32)
        o = tl.load(o_row + cols, mask=valid, other=0.0).to(tl.float32)
        d_low = tl.min(tl.where(valid, d, float("inf")), axis=0)
        d_span = tl.max(tl.where(valid, d, float("-inf")), axis=0) - d_low
        o_low = tl.min(tl.where(valid, o, float("inf")), axis=0)
        o_span = tl.max(tl.where(valid, o, float("-inf")), axis=0) - o_low
        mm_d = tl.where(d_span > 0, tl.math.div_rn(d - d_low, tl.where(d_span > 0, d_span, 1.0)),
                        0.0)
        mm_o = tl.where(o_span > 0, tl.math.div_rn(o - o_low, tl.where(o_span > 0, o_span, 1.0)),
                        0.0)
        heat = mm_d + lam * mm_o
        tl.store(h_row + cols, heat, mask=valid)
        # order-preserving uint32 keys: negative floats flip all bits, others the sign bit
        bits = heat.to(tl.uint32, bitcast=True)
        key = tl.where((bits >> 31) == 1, ~bits, bits | 0x80000000)

        prefix = tl.full([], 0, tl.uint32)
        bit = tl.full([], 0x80000000, tl.uint32)
        for _ in range(32):
            candidate = prefix | bit
            count = tl.sum((valid & (key >= candidate)).to(tl.int32), axis=0)
            prefix = tl.where(count >= k, candidate, prefix)
            bit = bit >> 1
        greater = valid & (key > prefix)
        need = k - tl.sum(greater.to(tl.int32), axis=0)
        equal = valid & (key == prefix)
        rank = tl.cumsum(equal.to(tl.int32), axis=0)
        selected = greater | (equal & (rank <= need))
        tl.store(m_row + cols, selected.to(tl.uint8), mask=valid)
    else:
        # pass 1: min/max of both inputs (running elementwise, reduced once at the end)
        d_min = tl.full([BLOCK], float("inf"), tl.float32)
        d_max = tl.full([BLOCK], float("-inf"), tl.float32)
        o_min = tl.full([BLOCK], float("inf"), tl.float32)
        o_max = tl.full([BLOCK], float("-inf"), tl.float32)
        for start in range(0, N, BLOCK):
            idx = start + cols
            valid = idx < N
            d = tl.load(d_row + idx, mask=valid, other=0.0).to(tl.float32)
            o = tl.load(o_row + idx, mask=valid, other=0.0).to(tl.float32)
            d_min = tl.minimum(d_min, tl.where(valid, d, float("inf")))
            d_max = tl.maximum(d_max, tl.where(valid, d, float("-inf")))
            o_min = tl.minimum(o_min, tl.where(valid, o, float("inf")))
            o_max = tl.maximum(o_max, tl.where(valid, o, float("-inf")))
        d_low = tl.min(d_min, axis=0)
        d_span = tl.max(d_max, axis=0) - d_low
        o_low = tl.min(o_min, axis=0)
        o_span = tl.max(o_max, axis=0) - o_low
        # pass 2: heat to the output
        for start in range(0, N, BLOCK):
            idx = start + cols
            valid = idx < N
            d = tl.load(d_row + idx, mask=valid, other=0.0).to(tl.float32)
            o = tl.load(o_row + idx, mask=valid, other=0.0).to(tl.float32)
            mm_d = tl.where(d_span > 0,
                            tl.math.div_rn(d - d_low, tl.where(d_span > 0, d_span, 1.0)), 0.0)
            mm_o = tl.where(o_span > 0,
                            tl.math.div_rn(o - o_low, tl.where(o_span > 0, o_span, 1.0)), 0.0)
            tl.store(h_row + idx, mm_d + lam * mm_o, mask=valid)
        tl.debug_barrier()  # heat written by all threads of this program before re-reading
        # pass 3: binary search for the k-th largest key over the chunks
        prefix = tl.full([], 0, tl.uint32)
        bit = tl.full([], 0x80000000, tl.uint32)
        for _ in range(32):
            candidate = prefix | bit
            counts = tl.zeros([BLOCK], tl.int32)
            for start in range(0, N, BLOCK):
                idx = start + cols
                valid = idx < N
                bits = tl.load(h_row + idx, mask=valid, other=0.0).to(tl.uint32, bitcast=True)
                key = tl.where((bits >> 31) == 1, ~bits, bits | 0x80000000)
                counts += (valid & (key >= candidate)).to(tl.int32)
            prefix = tl.where(tl.sum(counts, axis=0) >= k, candidate, prefix)
            bit = bit >> 1
        # pass 4: count strictly greater, then the mask with ties by index
        counts = tl.zeros([BLOCK], tl.int32)
        for start in range(0, N, BLOCK):
            idx = start + cols
            valid = idx < N
            bits = tl.load(h_row + idx, mask=valid, other=0.0).to(tl.uint32, bitcast=True)
            key = tl.where((bits >> 31) == 1, ~bits, bits | 0x80000000)
            counts += (valid & (key > prefix)).to(tl.int32)
        need = k - tl.sum(counts, axis=0)
        taken = tl.full([], 0, tl.int32)  # ties selected in earlier chunks
        for start in range(0, N, BLOCK):
            idx = start + cols
            valid = idx < N
            bits = tl.load(h_row + idx, mask=valid, other=0.0).to(tl.uint32, bitcast=True)
            key = tl.where((bits >> 31) == 1, ~bits, bits | 0x80000000)
            equal = valid & (key == prefix)
            rank = tl.cumsum(equal.to(tl.int32), axis=0) + taken
            selected = (valid & (key > prefix)) | (equal & (rank <= need))
            tl.store(m_row + idx, selected.to(tl.uint8), mask=valid)
            taken += tl.sum(equal.to(tl.int32), axis=0)


_QUALITY_MASK = LazyKernel(_quality_mask_kernel, do_not_specialize=["k"])


def quality_mask_limits(diff, orig, lam, ratio) -> Optional[str]:
    """Why this Triton kernel cannot take these inputs, or None."""
    if diff.shape[1] > MAX_N:
        return f"rows longer than {MAX_N} positions (got N={diff.shape[1]})"
    return None


def _config(n: int, single_block_max: int) -> tuple[bool, int, int]:
    """(single, BLOCK, num_warps) for rows of n positions."""
    if n <= single_block_max:
        block = triton.next_power_of_2(n)
        # ~16 elements of each row array per thread: 32 warps for a 16384-wide row
        return True, block, max(1, min(32, block // 512))
    return False, min(CHUNK_BLOCK, triton.next_power_of_2(single_block_max)), 8


def quality_mask(
    diff: torch.Tensor, orig: torch.Tensor, lam: float, ratio: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Same contract as :func:`lotts_kernels.reference.quality_mask`."""
    batch, n = diff.shape
    heat = torch.empty(batch, n, dtype=torch.float32, device=diff.device)
    mask = torch.empty(batch, n, dtype=torch.bool, device=diff.device)
    if batch == 0:
        return heat, mask
    if diff.stride(1) != 1:
        diff = diff.contiguous()
    if orig.stride(1) != 1:
        orig = orig.contiguous()
    k = reference.num_selected(ratio, n)
    single, block, num_warps = _config(n, SINGLE_BLOCK_MAX)
    _QUALITY_MASK[(batch,)](
        diff, orig, heat, mask.view(torch.uint8), n, diff.stride(0), orig.stride(0),
        float(lam), k, SINGLE=single, BLOCK=block, num_warps=num_warps, enable_fp_fusion=False,
    )
    return heat, mask
