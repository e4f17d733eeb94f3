"""quality_mask: per-row heat = mm(diff) + lam*mm(orig) and its exact top-k mask.

Everything about the op is here, in this order: the public function and its argument checks,
the ``lotts::quality_mask`` custom op and its fake, the PyTorch reference, the Triton kernel and
its launcher, the CUDA extension's launcher (kernel in ``csrc/quality_mask.cu``), and the
registration of the three implementations with :mod:`lotts_kernels.dispatch`.

Triton Design (one program per row, no sort):
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

from lotts_kernels import _checks, cuda_build, dispatch
from lotts_kernels.triton_utils import TRITON, Launch, jit, next_power_of_2, tl

# Rows up to this many positions stay in registers; longer ones are processed in chunks.
SINGLE_BLOCK_MAX = 16384
CHUNK_BLOCK = 4096
# Largest row this kernel accepts (the int32 arithmetic and per-row loops are sized for it).
MAX_N = 2**24
# Largest row the CUDA kernel accepts: LOTTS_QUALITY_MASK_MAX_N in csrc/lotts_kernels.h (its int
# loop counters step by up to 1024 threads and must not pass INT32_MAX).
MAX_CUDA_N = 2**31 - 1024


# ----- 1. public function and argument checks -------------------------------------------------

def _prepare(diff: torch.Tensor, orig: torch.Tensor, lam: float = 1.0, ratio: float = 0.5, *,
             impl: Optional[str] = None) -> tuple[tuple, Optional[str]]:
    """Check the public arguments; return the custom op's arguments and the requested impl."""
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
    return (diff, orig, float(lam), float(ratio)), impl


def quality_mask(
    diff: torch.Tensor, orig: torch.Tensor, lam: float = 1.0, ratio: float = 0.5, *,
    impl: Optional[str] = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Equations (3)-(4): heat = mm(diff) + lam * mm(orig) per row and its top-`ratio` mask.

    diff, orig (B,N). mm is per-row min-max normalization (a constant row maps to zeros). The
    bool mask marks exactly round(ratio * N) positions per row with the largest heat, ties going
    to the lower index. Returns (heat float32 (B,N), mask bool (B,N)). `impl` forces one
    implementation ("ref", "triton", "cuda", "auto") for this call.
    """
    args, impl = _prepare(diff, orig, lam, ratio, impl=impl)
    return _quality_mask(*args, impl or dispatch.CONTEXT)


# ----- 2. custom op and fake ------------------------------------------------------------------

@torch.library.custom_op("lotts::quality_mask", mutates_args=())
def _quality_mask(
    diff: torch.Tensor, orig: torch.Tensor, lam: float, ratio: float, impl: str
) -> tuple[torch.Tensor, torch.Tensor]:
    return dispatch.run("quality_mask", impl, diff, orig, lam, ratio)


@_quality_mask.register_fake
def _(diff, orig, lam, ratio, impl):
    return (diff.new_empty(diff.shape, dtype=torch.float32),
            diff.new_empty(diff.shape, dtype=torch.bool))


# ----- 3. reference ---------------------------------------------------------------------------

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


def quality_mask_ref(
    diff: torch.Tensor, orig: torch.Tensor, lam: float, ratio: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Equations (3) and (4): heat (B, N) float32 and its top-`ratio` bool mask."""
    heat = quality_heat(diff, orig, lam)
    return heat, top_positions_mask(heat, num_selected(ratio, heat.shape[1]))


# ----- 4. Triton kernel and launcher ----------------------------------------------------------

@jit
def _order_key(heat):
    """Order-preserving uint32 key of float32 `heat`: negative floats (possible when lam < 0)
    flip all bits, others the sign bit, so unsigned key order is float order."""
    bits = heat.to(tl.uint32, bitcast=True)
    return tl.where((bits >> 31) == 1, ~bits, bits | 0x80000000)


@jit
def _min_max_scale(x, low, span):
    """(x - low) / span with IEEE division (as the reference's), 0 for a constant row."""
    return tl.where(span > 0, tl.math.div_rn(x - low, tl.where(span > 0, span, 1.0)), 0.0)


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
        heat = _min_max_scale(d, d_low, d_span) + lam * _min_max_scale(o, o_low, o_span)
        tl.store(h_row + cols, heat, mask=valid)
        key = _order_key(heat)

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
            heat = _min_max_scale(d, d_low, d_span) + lam * _min_max_scale(o, o_low, o_span)
            tl.store(h_row + idx, heat, mask=valid)
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
                key = _order_key(tl.load(h_row + idx, mask=valid, other=0.0))
                counts += (valid & (key >= candidate)).to(tl.int32)
            prefix = tl.where(tl.sum(counts, axis=0) >= k, candidate, prefix)
            bit = bit >> 1
        # pass 4: count strictly greater, then the mask with ties by index
        counts = tl.zeros([BLOCK], tl.int32)
        for start in range(0, N, BLOCK):
            idx = start + cols
            valid = idx < N
            key = _order_key(tl.load(h_row + idx, mask=valid, other=0.0))
            counts += (valid & (key > prefix)).to(tl.int32)
        need = k - tl.sum(counts, axis=0)
        taken = tl.full([], 0, tl.int32)  # ties selected in earlier chunks
        for start in range(0, N, BLOCK):
            idx = start + cols
            valid = idx < N
            key = _order_key(tl.load(h_row + idx, mask=valid, other=0.0))
            equal = valid & (key == prefix)
            rank = tl.cumsum(equal.to(tl.int32), axis=0) + taken
            selected = (valid & (key > prefix)) | (equal & (rank <= need))
            tl.store(m_row + idx, selected.to(tl.uint8), mask=valid)
            taken += tl.sum(equal.to(tl.int32), axis=0)


_QUALITY_MASK = jit(_quality_mask_kernel, do_not_specialize=["k"])


def quality_mask_triton_limits(diff, orig, lam, ratio) -> list[str]:
    """Every reason the Triton kernel cannot take these inputs (empty: it can)."""
    if diff.shape[1] > MAX_N:
        return [f"rows longer than {MAX_N} positions (got N={diff.shape[1]})"]
    return []


def _config(n: int, single_block_max: int) -> tuple[bool, int, int]:
    """(single, BLOCK, num_warps) for rows of n positions."""
    if n <= single_block_max:
        block = next_power_of_2(n)
        # ~16 elements of each row array per thread: 32 warps for a 16384-wide row
        return True, block, max(1, min(32, block // 512))
    return False, min(CHUNK_BLOCK, next_power_of_2(single_block_max)), 8


def quality_mask_launch(diff: torch.Tensor, orig: torch.Tensor, lam: float, ratio: float
                        ) -> tuple[Launch, torch.Tensor, torch.Tensor]:
    """(launch, heat, mask) of :func:`quality_mask_triton` for B >= 1 rows (also what the AOT
    compile checks build, on ``meta`` tensors)."""
    batch, n = diff.shape
    heat = torch.empty(batch, n, dtype=torch.float32, device=diff.device)
    mask = torch.empty(batch, n, dtype=torch.bool, device=diff.device)
    if diff.stride(1) != 1:
        diff = diff.contiguous()
    if orig.stride(1) != 1:
        orig = orig.contiguous()
    single, block, num_warps = _config(n, SINGLE_BLOCK_MAX)
    args = (diff, orig, heat, mask.view(torch.uint8), n, diff.stride(0), orig.stride(0),
            float(lam), num_selected(ratio, n))
    kwargs = dict(SINGLE=single, BLOCK=block, num_warps=num_warps, enable_fp_fusion=False)
    return Launch(_QUALITY_MASK, (batch,), args, kwargs), heat, mask


def quality_mask_triton(
    diff: torch.Tensor, orig: torch.Tensor, lam: float, ratio: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Same contract as :func:`quality_mask_ref`."""
    if diff.shape[0] == 0:
        return (torch.empty(diff.shape, dtype=torch.float32, device=diff.device),
                torch.empty(diff.shape, dtype=torch.bool, device=diff.device))
    launch, heat, mask = quality_mask_launch(diff, orig, lam, ratio)
    launch.run()
    return heat, mask


# ----- 5. CUDA launcher -----------------------------------------------------------------------

def quality_mask_cuda_limits(diff, orig, lam, ratio) -> list[str]:
    """Every reason the CUDA kernel cannot take these inputs (empty: it can)."""
    reasons = []
    if diff.shape[1] > MAX_CUDA_N:
        reasons.append(f"rows longer than {MAX_CUDA_N} positions (got N={diff.shape[1]})")
    if diff.shape[0] > 2**31 - 1:
        reasons.append(f"more than 2^31-1 rows (got B={diff.shape[0]})")
    return reasons


def quality_mask_cuda(diff: torch.Tensor, orig: torch.Tensor, lam: float, ratio: float):
    """Same contract as :func:`quality_mask_ref`."""
    if diff.dtype != orig.dtype:  # exact: the reference computes in float32 anyway
        diff, orig = diff.float(), orig.float()
    if diff.stride(1) != 1:
        diff = diff.contiguous()
    if orig.stride(1) != 1:
        orig = orig.contiguous()
    k = num_selected(ratio, diff.shape[1])
    return tuple(cuda_build.extension().quality_mask(diff, orig, float(lam), k,
                                                     cuda_build.stream(diff.device)))


# ----- 6. registration ------------------------------------------------------------------------

OP = dispatch.register_op(dispatch.Op("quality_mask", _prepare))
OP.register(dispatch.Implementation(dispatch.REF, quality_mask_ref))
OP.register(dispatch.Implementation(TRITON, quality_mask_triton,
                                    limits=quality_mask_triton_limits))
OP.register(dispatch.Implementation(cuda_build.CUDA, quality_mask_cuda,
                                    limits=quality_mask_cuda_limits))
