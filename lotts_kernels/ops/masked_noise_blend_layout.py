"""Index layout of masked_noise_blend shared by the Triton and CUDA launchers.

The kernels walk x0 (contiguous) in flat row-major order and read the mask through a 4-D view:
for flat index i with coordinates (i0, i1, i2, i3) in dims (D0, D1, D2, D3),

    mask offset = i0*s0 + i1*s1 + (i2 // f2)*s2 + (i3 // f3)*s3

where s are the mask's element strides (0 on broadcast dims) and f2, f3 the integer nearest
upsampling factors of a (B,1,h,w) mask over (B,C,H,W) latents. Before that, dims of size 1 are
dropped and neighbouring dims merged wherever the mask is laid out compatibly (like
TensorIterator's coalescing), so the common cases need few or no integer divisions: a mask of
x0's shape becomes one contiguous dim, FLUX's (B,L,1) mask over (B,L,C) becomes (B*L, C) with
strides (1, 0), a (1,...) mask becomes (B, rest) with strides (0, 1). The result is right
aligned into 4 dims; `ndim` says how many are real (the kernels skip the rest at compile time).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

MAX_DIMS = 4


@dataclass(frozen=True)
class BlendLayout:
    dims: tuple[int, int, int, int]          # (D0, D1, D2, D3) of x0's coalesced view
    mask_strides: tuple[int, int, int, int]  # element strides of the mask in that view
    factors: tuple[int, int]                 # upsampling factors of dims 2 and 3
    ndim: int                                # real dims (1..4); leading ones have size 1
    numel: int
    per_batch: int                           # elements of x0 per batch entry (numel // B)

    @property
    def upsample(self) -> bool:
        return self.factors != (1, 1)


def _coalesced(shape: tuple[int, ...], mshape: tuple[int, ...], mstrides: tuple[int, ...],
               factors: tuple[int, ...]):
    """Drop size-1 dims of x0 and merge neighbours whose mask offsets compose linearly."""
    dims = [(s, (st if ms != 1 else 0), f)
            for s, ms, st, f in zip(shape, mshape, mstrides, factors) if s != 1]
    merged: list[tuple[int, int, int]] = []
    for size, stride, factor in dims:
        if merged:
            prev_size, prev_stride, prev_factor = merged[-1]
            if prev_factor == 1 and factor == 1 and prev_stride == stride * size:
                merged[-1] = (prev_size * size, stride, 1)
                continue
        merged.append((size, stride, factor))
    if not merged:
        merged = [(1, 0, 1)]
    return merged


def layout(x0_shape: torch.Size | tuple[int, ...], mask: torch.Tensor) -> Optional[BlendLayout]:
    """The coalesced 4-D view of (x0, mask), or None when it needs more than 4 dims.

    `mask` is the tensor the kernel will read (its real strides are used, so expanded or
    strided masks need no copy); it must broadcast to x0, or be (B|1,1,h,w) over (B,C,H,W).
    """
    shape = tuple(int(s) for s in x0_shape)
    rank = len(shape)
    pad = rank - mask.dim()
    mshape = (1,) * pad + tuple(mask.shape)
    mstrides = (0,) * pad + tuple(mask.stride())
    factors = [1] * rank
    if rank == 4 and mask.dim() == 4:
        # Same rule as reference.expand_mask: differing spatial dims repeat nearest.
        for d in (2, 3):
            if mshape[d] not in (1, shape[d]):
                factors[d] = shape[d] // mshape[d]
    merged = _coalesced(shape, mshape, mstrides, tuple(factors))
    if len(merged) > MAX_DIMS:
        return None
    # Factors > 1 only ever sit on x0's last two dims (H, W), which are never merged, so after
    # right-alignment they land on view dims 2 and 3.
    assert all(f == 1 for _, _, f in merged[:-2])
    merged = [(1, 0, 1)] * (MAX_DIMS - len(merged)) + merged
    numel = 1
    for s in shape:
        numel *= s
    batch = shape[0] if rank else 1
    return BlendLayout(
        dims=tuple(m[0] for m in merged),
        mask_strides=tuple(m[1] for m in merged),
        factors=(merged[2][2], merged[3][2]),
        ndim=_real_dims(merged),
        numel=numel,
        per_batch=numel // batch if batch else 0,
    )


def _real_dims(merged: list[tuple[int, int, int]]) -> int:
    """Number of trailing dims the kernel must decompose (leading size-1 dims are free)."""
    for i, (size, _, _) in enumerate(merged):
        if size != 1:
            return MAX_DIMS - i
    return 1


def limits_reason(x0: torch.Tensor, mask: torch.Tensor) -> Optional[str]:
    """Why the blend kernels cannot index this (x0, mask) pair, or None."""
    if layout(x0.shape, mask) is None:
        return (f"x0 of shape {tuple(x0.shape)} with mask {tuple(mask.shape)} needs more than "
                f"{MAX_DIMS} index dims after merging compatible dims")
    return None


def kernel_mask(mask: torch.Tensor, allow_float_dtypes: tuple[torch.dtype, ...]) -> torch.Tensor:
    """The mask as the kernels read it: bool viewed as uint8 (0/1), floats kept if allowed,
    else converted to float32 (exactly) with strides preserved where possible."""
    if mask.dtype == torch.bool:
        return mask.view(torch.uint8)
    if mask.dtype in allow_float_dtypes:
        return mask
    return mask.to(torch.float32)
