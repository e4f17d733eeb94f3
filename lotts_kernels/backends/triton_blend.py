"""Triton masked_noise_blend: x = m*(alpha*x0 + sigma*eps) + (1-m)*other in one pass.

Three layers: the private kernel `_blend_kernel`, the launcher :func:`masked_noise_blend`
(same signature as :func:`lotts_kernels.reference.masked_noise_blend`; inputs already checked
by :mod:`lotts_kernels.ops`) and its capability check :func:`masked_noise_blend_limits`.

Design:
* Flat, contiguous walk over x0/other/out (and noise) in blocks of BLOCK elements, so loads and
  stores are 16-byte vectors (when numel and the pointers are 16-divisible, which Triton's
  argument specialization sees; other sizes take masked scalar accesses); the mask is gathered through the coalesced 4-D view of
  :mod:`lotts_kernels.backends.blend_layout` (broadcast dims have stride 0, a (B,1,h,w) mask
  over (B,C,H,W) latents is read at (h_i // f, w_i // f)); only the dims that exist are
  decomposed (NDIM is a compile-time constant), so a same-shape mask costs no division.
* Arithmetic in float32 in exactly the reference's order, each op rounded separately
  (`enable_fp_fusion=False` forbids mul+add -> fma contraction), so with the same eps the
  result is bit-identical to eager PyTorch on the same device; where m == 0 it is `other`.
* eps from `seed`: Philox4x32-10 on (seed lo/hi, flat index lo/hi, 0, 0) with tl.umulhi and
  uint32 arithmetic, integers identical to :mod:`lotts_kernels.philox`; Box-Muller with
  libdevice's precise log/cos and IEEE sqrt on GPUs. With sigma == 0 and no noise, NOISE == 0
  compiles the noise path out entirely.
"""
from __future__ import annotations

from typing import Callable, Optional

import torch
import triton
import triton.language as tl

from lotts_kernels.backends import blend_layout

try:  # precise device math for Box-Muller on GPUs; the interpreter uses numpy instead
    from triton.language.extra import libdevice
except ImportError:  # pragma: no cover - very old Triton
    libdevice = None

# 8 elements per thread (two 16-byte fp32 vectors per tensor, ~32 registers: full occupancy);
# Philox needs more registers per element, so 4 per thread there (~48 registers). Checked by
# compiling for sm_90 without a GPU (triton.compile + cuobjdump): ld/st.global.v4 throughout,
# no fma in our arithmetic, no spills.
BLOCK = 2048
PHILOX_BLOCK = 1024
NUM_WARPS = 8
NOISE_NONE, NOISE_TENSOR, NOISE_PHILOX = 0, 1, 2


# ----- lazily decorated kernels ---------------------------------------------------------------

def interpreting() -> bool:
    """Whether @triton.jit now yields interpreter kernels (TRITON_INTERPRET=1).

    Triton 3.x reads TRITON_INTERPRET when a function is *decorated* (triton.knobs), not when
    it is launched, so a module decorating at import freezes the mode of that moment. Our
    kernels are decorated on first use through :class:`LazyKernel`, once per mode, so the
    variable may be set or cleared at any time before a call.
    """
    knobs = getattr(triton, "knobs", None)
    if knobs is not None:
        return bool(knobs.runtime.interpret)
    import os

    return os.environ.get("TRITON_INTERPRET", "0") == "1"


class LazyKernel:
    """`triton.jit(fn)` made on first use, separately for compiled and interpreted mode."""

    def __init__(self, fn: Callable, **jit_options) -> None:
        self.fn = fn
        self.jit_options = jit_options
        self._kernels: dict[bool, object] = {}

    def get(self):
        mode = interpreting()
        kernel = self._kernels.get(mode)
        if kernel is None:
            kernel = self._kernels[mode] = triton.jit(self.fn, **self.jit_options)
        return kernel

    def __getitem__(self, grid):
        return self.get()[grid]


# ----- kernel ---------------------------------------------------------------------------------

def _blend_kernel(
    x0_ptr, other_ptr, out_ptr, mask_ptr, noise_ptr, alpha_ptr, sigma_ptr,
    alpha_value, sigma_value, seed_lo, seed_hi,
    numel, per_batch, D1, D2, D3, ms0, ms1, ms2, ms3, f2, f3,
    NDIM: tl.constexpr, UPSAMPLE: tl.constexpr, INVERT: tl.constexpr,
    ALPHA_TENSOR: tl.constexpr, SIGMA_TENSOR: tl.constexpr, NOISE: tl.constexpr,
    INT64: tl.constexpr, PRECISE: tl.constexpr, BLOCK: tl.constexpr,
):
    pid = tl.program_id(0)
    if INT64:
        offs = pid.to(tl.int64) * BLOCK + tl.arange(0, BLOCK).to(tl.int64)
    else:
        offs = pid * BLOCK + tl.arange(0, BLOCK)
    inb = offs < numel

    # mask offset in the coalesced 4-D view (only the NDIM trailing dims exist)
    if NDIM == 1:
        i3 = offs
        if UPSAMPLE:
            i3 = i3 // f3
        moffs = i3 * ms3
    else:
        i3 = offs % D3
        rest = offs // D3
        if UPSAMPLE:
            i3 = i3 // f3
        if NDIM == 2:
            i2 = rest
            if UPSAMPLE:
                i2 = i2 // f2
            moffs = i2 * ms2 + i3 * ms3
        else:
            i2 = rest % D2
            rest = rest // D2
            if UPSAMPLE:
                i2 = i2 // f2
            if NDIM == 3:
                moffs = rest * ms1 + i2 * ms2 + i3 * ms3
            else:
                i1 = rest % D1
                i0 = rest // D1
                moffs = i0 * ms0 + i1 * ms1 + i2 * ms2 + i3 * ms3
    m = tl.load(mask_ptr + moffs, mask=inb, other=0).to(tl.float32)
    if INVERT:
        m = 1.0 - m

    x = tl.load(x0_ptr + offs, mask=inb, other=0.0).to(tl.float32)
    o = tl.load(other_ptr + offs, mask=inb, other=0.0).to(tl.float32)

    if ALPHA_TENSOR or SIGMA_TENSOR:
        b = offs // per_batch
    if ALPHA_TENSOR:
        a = tl.load(alpha_ptr + b, mask=inb, other=0.0)
    else:
        a = alpha_value
    inside = a * x

    if NOISE != 0:
        if NOISE == 1:
            eps = tl.load(noise_ptr + offs, mask=inb, other=0.0).to(tl.float32)
        else:
            # Philox4x32-10, counter (i lo, i hi, 0, 0), key (seed lo, seed hi)
            c0 = offs.to(tl.uint32)  # truncation: low 32 bits of the index
            if INT64:
                c1 = (offs >> 32).to(tl.uint32)
            else:
                c1 = tl.zeros_like(c0)
            c2 = tl.zeros_like(c0)
            c3 = tl.zeros_like(c0)
            k0 = seed_lo.to(tl.uint32)
            k1 = seed_hi.to(tl.uint32)
            for _ in tl.static_range(10):
                prev0 = c0
                prev2 = c2
                c0 = tl.umulhi(prev2, 0xCD9E8D57) ^ c1 ^ k0
                c2 = tl.umulhi(prev0, 0xD2511F53) ^ c3 ^ k1
                c1 = prev2 * 0xCD9E8D57
                c3 = prev0 * 0xD2511F53
                k0 = k0 + 0x9E3779B9
                k1 = k1 + 0xBB67AE85
            u1 = ((c0 >> 8).to(tl.float32) + 0.5) * 5.960464477539063e-08  # 2^-24
            u2 = ((c1 >> 8).to(tl.float32) + 0.5) * 5.960464477539063e-08
            theta = 6.2831854820251465 * u2  # float32(2*pi) * u2, as the reference rounds it
            if PRECISE:
                eps = libdevice.sqrt_rn(-2.0 * libdevice.log(u1)) * libdevice.cos(theta)
            else:
                eps = tl.sqrt(-2.0 * tl.log(u1)) * tl.cos(theta)
        if SIGMA_TENSOR:
            s = tl.load(sigma_ptr + b, mask=inb, other=0.0)
        else:
            s = sigma_value
        inside = inside + s * eps

    out = m * inside + (1.0 - m) * o
    tl.store(out_ptr + offs, out.to(out_ptr.dtype.element_ty), mask=inb)


# The seed words must stay runtime values (1 would otherwise become a constant).
_BLEND = LazyKernel(_blend_kernel, do_not_specialize=["seed_lo", "seed_hi"])


# ----- launcher -------------------------------------------------------------------------------

def masked_noise_blend_limits(x0, other, mask, alpha, alpha_value, sigma, sigma_value, noise,
                              seed, invert) -> Optional[str]:
    """Why this Triton kernel cannot take these inputs, or None."""
    return blend_layout.limits_reason(x0, mask)


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
    """Same contract as :func:`lotts_kernels.reference.masked_noise_blend`."""
    out = torch.empty(x0.shape, dtype=x0.dtype, device=x0.device)
    if out.numel() == 0:
        return out
    kmask = blend_layout.kernel_mask(mask, (torch.float32, torch.float16, torch.bfloat16))
    lay = blend_layout.layout(x0.shape, kmask)
    if lay is None:
        raise ValueError(blend_layout.limits_reason(x0, mask))
    x0c, otherc = x0.contiguous(), other.contiguous()
    mode = NOISE_NONE
    if noise is not None:
        mode = NOISE_TENSOR
        noise = noise.contiguous()
    elif seed is not None:
        mode = NOISE_PHILOX
    seed = int(seed or 0)
    # 64-bit indices when any offset (flat or into the mask) can pass int32.
    block = PHILOX_BLOCK if mode == NOISE_PHILOX else BLOCK
    mask_span = sum((d - 1) * s for d, s in zip(lay.dims, lay.mask_strides)) + 1
    int64 = lay.numel + block >= 2**31 or mask_span >= 2**31
    _, D1, D2, D3 = lay.dims
    s0, s1, s2, s3 = lay.mask_strides
    grid = (triton.cdiv(lay.numel, block),)
    _BLEND[grid](
        x0c, otherc, out, kmask,
        noise if noise is not None else x0c,
        alpha if alpha is not None else x0c,
        sigma if sigma is not None else x0c,
        float(alpha_value), float(sigma_value), seed & 0xFFFFFFFF, (seed >> 32) & 0xFFFFFFFF,
        lay.numel, lay.per_batch, D1, D2, D3, s0, s1, s2, s3, lay.factors[0], lay.factors[1],
        NDIM=lay.ndim, UPSAMPLE=lay.upsample, INVERT=bool(invert),
        ALPHA_TENSOR=alpha is not None, SIGMA_TENSOR=sigma is not None, NOISE=mode,
        INT64=int64, PRECISE=(libdevice is not None and not interpreting()), BLOCK=block,
        num_warps=NUM_WARPS, enable_fp_fusion=False,
    )
    return out


def philox_normal(seed: int, numel: int, device) -> torch.Tensor:
    """Debug helper: the kernel's eps for `seed` (float32, flat), via a blend with m=1,
    alpha=0, sigma=1 and other=0. Used by tests to compare against philox.normal."""
    x0 = torch.zeros(numel, dtype=torch.float32, device=device)
    mask = torch.ones((), dtype=torch.bool, device=device)
    return masked_noise_blend(x0, x0, mask, None, 0.0, None, 1.0, None, seed, False)


__all__ = ["LazyKernel", "interpreting", "masked_noise_blend", "masked_noise_blend_limits",
           "philox_normal"]
