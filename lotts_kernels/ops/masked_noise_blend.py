"""masked_noise_blend: x = m*(alpha*x0 + sigma*eps) + (1-m)*other in one pass.

Everything about the op is here, in this order: the public function and its argument checks,
the ``lotts::masked_noise_blend`` custom op and its fake, the PyTorch reference, the Triton
kernel and its launcher, the CUDA extension's launcher (kernel in
``csrc/masked_noise_blend.cu``), and the registration of the three implementations with
:mod:`lotts_kernels.dispatch`. The index layout both kernels share is
:mod:`lotts_kernels.ops.masked_noise_blend_layout`; the noise is :mod:`lotts_kernels.philox`.

Triton Design:
* Flat, contiguous walk over x0/other/out (and noise) in blocks of BLOCK elements, so loads and
  stores are 16-byte vectors (when numel and the pointers are 16-divisible, which Triton's
  argument specialization sees; other sizes take masked scalar accesses); the mask is gathered
  through the coalesced 4-D view of :mod:`lotts_kernels.ops.masked_noise_blend_layout`
  (broadcast dims have stride 0, a (B,1,h,w) mask over (B,C,H,W) latents is read at
  (h_i // f, w_i // f)); only the dims that exist are decomposed (NDIM is a compile-time
  constant), so a same-shape mask costs no division.
* Arithmetic in float32 in exactly the reference's order, each op rounded separately
  (`enable_fp_fusion=False` forbids mul+add -> fma contraction), so with the same eps the
  result is bit-identical to eager PyTorch on the same device; where m == 0 it is `other`.
* eps from `seed`: Philox4x32-10 on (seed lo/hi, flat index lo/hi, 0, 0) with tl.umulhi and
  uint32 arithmetic, integers identical to :mod:`lotts_kernels.philox`; Box-Muller with
  libdevice's precise log/cos and IEEE sqrt on GPUs. With sigma == 0 and no noise, NOISE == 0
  compiles the noise path out entirely.
"""
from __future__ import annotations

from typing import Optional, Union

import torch

from lotts_kernels import _checks, cuda_build, dispatch, philox
from lotts_kernels.ops import masked_noise_blend_layout as blend_layout
from lotts_kernels.philox import philox_normal_triton
from lotts_kernels.triton_utils import TRITON, Launch, cdiv, interpreting, jit, libdevice, tl

Number = Union[int, float]

# 8 elements per thread (two 16-byte fp32 vectors per tensor, ~32 registers: full occupancy);
# Philox needs more registers per element, so 4 per thread there (~48 registers). Checked by
# compiling for sm_90 without a GPU (triton.compile + cuobjdump): ld/st.global.v4 throughout,
# no fma in our arithmetic, no spills.
BLOCK = 2048
PHILOX_BLOCK = 1024
NUM_WARPS = 8
# eps source (the kernels' NOISE): none, a tensor, Philox of one seed, Philox of per-row seeds
NOISE_NONE, NOISE_TENSOR, NOISE_PHILOX, NOISE_PHILOX_ROWS = 0, 1, 2, 3

# ----- 1. public function and argument checks -------------------------------------------------

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


def _prepare(
    x0: torch.Tensor,
    other: torch.Tensor,
    mask: torch.Tensor,
    alpha: Union[Number, torch.Tensor],
    sigma: Union[Number, torch.Tensor],
    noise: Optional[torch.Tensor] = None,
    seed: Union[int, torch.Tensor, None] = None,
    invert: bool = False,
    *,
    impl: Optional[str] = None,
) -> tuple[tuple, Optional[str]]:
    """Check the public arguments; return the custom op's arguments and the requested impl."""
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
    seed, seeds = _check_seed(noise, seed, sigma, x0)
    _checks.check_same_device(x0=x0, other=other, mask=mask, noise=noise,
                              alpha=alpha if isinstance(alpha, torch.Tensor) else None,
                              sigma=sigma if isinstance(sigma, torch.Tensor) else None)
    alpha_tensor, alpha_value = _coefficient(alpha)
    sigma_tensor, sigma_value = _coefficient(sigma)
    args = (x0, other, mask, alpha_tensor, alpha_value, sigma_tensor, sigma_value, noise, seed,
            seeds, bool(invert))
    return args, impl


def masked_noise_blend(
    x0: torch.Tensor,
    other: torch.Tensor,
    mask: torch.Tensor,
    alpha: Union[Number, torch.Tensor],
    sigma: Union[Number, torch.Tensor],
    noise: Optional[torch.Tensor] = None,
    seed: Union[int, torch.Tensor, None] = None,
    invert: bool = False,
    *,
    impl: Optional[str] = None,
) -> torch.Tensor:
    """x = m * (alpha * x0 + sigma * eps) + (1 - m) * other, m = mask (or 1 - mask if invert).

    x0 and other share one shape (B, ...); alpha and sigma are floats or (B,) tensors; mask is
    bool or float in [0,1], broadcastable to x0, or (B,1,h,w) for (B,C,H,W) latents (upsampled
    nearest). eps is `noise`, or drawn from `seed` by :mod:`lotts_kernels.philox` (same seed and
    shape: same eps on a device). `seed` may also be a (B,) int64 tensor, one seed per batch
    row: row b then gets exactly the noise of a call on ``x0[b:b+1]`` with ``seed=seeds[b]``, in
    one launch (a CPU tensor is range-checked and copied to x0's device; a tensor already on
    x0's GPU is used as is, unchecked, to avoid a device sync). With sigma == 0 no noise is
    needed: the per-step blend.
    Returns a tensor of x0's dtype. `impl` forces one implementation ("ref", "triton", "cuda",
    "auto") for this call.
    """
    args, impl = _prepare(x0, other, mask, alpha, sigma, noise, seed, invert, impl=impl)
    return _masked_noise_blend(*args, impl or dispatch.CONTEXT)


def _check_seed(noise: Optional[torch.Tensor], seed, sigma, x0: torch.Tensor
                ) -> tuple[Optional[int], Optional[torch.Tensor]]:
    """Validate `seed` (an int or a (B,) int64 tensor); return (int seed, per-row seeds)."""
    if noise is not None and seed is not None:
        raise ValueError("give noise or seed, not both")
    seeds = None
    if isinstance(seed, torch.Tensor):
        seeds, seed = _seed_rows(seed, x0), None
    elif seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)
                               or not 0 <= seed < 2**63):
        raise ValueError(f"seed must be an int in [0, 2**63) or a (B,) int64 tensor, got "
                         f"{seed!r}")
    sigma_is_zero = not isinstance(sigma, torch.Tensor) and sigma == 0
    if noise is None and seed is None and seeds is None and not sigma_is_zero:
        raise ValueError("sigma is not zero, so noise or seed must be given")
    return seed, seeds


def _seed_rows(seeds: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
    """A (B,) int64 seed tensor on x0's device; values checked when they are on the CPU."""
    if seeds.dtype != torch.int64 or seeds.dim() != 1 or seeds.shape[0] != x0.shape[0]:
        raise ValueError(f"seed as a tensor must be int64 of shape ({x0.shape[0]},) (one per "
                         f"batch row), got {seeds.dtype} {tuple(seeds.shape)}")
    if seeds.device.type == "cpu":
        if not torch.compiler.is_compiling() and bool((seeds < 0).any()):
            raise ValueError(f"seed values must lie in [0, 2**63), got {seeds.tolist()}")
        return seeds.to(x0.device, non_blocking=True).contiguous()
    if seeds.device != x0.device:
        raise ValueError(f"seed is on {seeds.device} but x0 on {x0.device}")
    return seeds.contiguous()


# ----- 2. custom op and fake ------------------------------------------------------------------

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
    seeds: Optional[torch.Tensor],
    invert: bool,
    impl: str,
) -> torch.Tensor:
    return dispatch.run("masked_noise_blend", impl, x0, other, mask, alpha, alpha_value, sigma,
                        sigma_value, noise, seed, seeds, invert)


@_masked_noise_blend.register_fake
def _(x0, other, mask, alpha, alpha_value, sigma, sigma_value, noise, seed, seeds, invert, impl):
    return torch.empty_like(x0, memory_format=torch.contiguous_format)


# ----- 3. reference ---------------------------------------------------------------------------

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


def masked_noise_blend_ref(
    x0: torch.Tensor,
    other: torch.Tensor,
    mask: torch.Tensor,
    alpha: Optional[torch.Tensor],
    alpha_value: float,
    sigma: Optional[torch.Tensor],
    sigma_value: float,
    noise: Optional[torch.Tensor],
    seed: Optional[int],
    seeds: Optional[torch.Tensor],
    invert: bool,
) -> torch.Tensor:
    """x = m * (alpha * x0 + sigma * eps) + (1 - m) * other, in float32, cast to x0's dtype.

    alpha/sigma are (B,) tensors or, when None, the scalars `alpha_value`/`sigma_value`. eps is
    `noise`, else :func:`lotts_kernels.philox.normal` of `seed` over x0's elements in
    row-major order, else :func:`lotts_kernels.philox.normal_rows` of the per-row `seeds`,
    else zero (only allowed when sigma is zero).
    """
    m = expand_mask(mask, x0.shape).float()
    if invert:
        m = 1.0 - m
    inside = _per_batch(alpha, alpha_value, x0.dim()) * x0.float()
    eps = None
    if noise is not None:
        eps = noise.float()
    elif seeds is not None:
        eps = philox.normal_rows(seeds, x0.shape, x0.device)
    elif seed is not None:
        eps = philox.normal(seed, x0.shape, x0.device)
    if eps is not None:
        inside = inside + _per_batch(sigma, sigma_value, x0.dim()) * eps
    return (m * inside + (1.0 - m) * other.float()).to(x0.dtype)


# ----- 4. Triton kernel -----------------------------------------------------------------------

def _blend_kernel(
    x0_ptr, other_ptr, out_ptr, mask_ptr, noise_ptr, alpha_ptr, sigma_ptr, seeds_ptr,
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

    if ALPHA_TENSOR or SIGMA_TENSOR or NOISE == 3:
        b = offs // per_batch
    if ALPHA_TENSOR:
        a = tl.load(alpha_ptr + b, mask=inb, other=0.0)
    else:
        a = alpha_value
    inside = a * x

    if NOISE != 0:
        if NOISE == 1:
            eps = tl.load(noise_ptr + offs, mask=inb, other=0.0).to(tl.float32)
        elif NOISE == 2:
            # Philox4x32-10, counter (i lo, i hi, 0, 0), key (seed lo, seed hi)
            eps = philox_normal_triton(offs, seed_lo, seed_hi, INT64, PRECISE)
        else:
            # one seed per batch row, the counter restarting at each row: row b draws what a
            # call on x0[b:b+1] with seed seeds[b] draws
            row_seed = tl.load(seeds_ptr + b, mask=inb, other=0)
            eps = philox_normal_triton(offs - b * per_batch, row_seed & 0xFFFFFFFF,
                                       row_seed >> 32, INT64, PRECISE)
        if SIGMA_TENSOR:
            s = tl.load(sigma_ptr + b, mask=inb, other=0.0)
        else:
            s = sigma_value
        inside = inside + s * eps

    out = m * inside + (1.0 - m) * o
    tl.store(out_ptr + offs, out.to(out_ptr.dtype.element_ty), mask=inb)


# The seed words must stay runtime values (1 would otherwise become a constant).
_BLEND = jit(_blend_kernel, do_not_specialize=["seed_lo", "seed_hi"])


# ----- 5. Triton launcher ---------------------------------------------------------------------

def masked_noise_blend_limits(x0, other, mask, alpha, alpha_value, sigma, sigma_value, noise,
                              seed, seeds, invert) -> list[str]:
    """Every reason the Triton and CUDA kernels cannot take these inputs (empty: they can)."""
    reason = blend_layout.limits_reason(x0, mask)
    return [] if reason is None else [reason]


def masked_noise_blend_triton(
    x0: torch.Tensor,
    other: torch.Tensor,
    mask: torch.Tensor,
    alpha: Optional[torch.Tensor],
    alpha_value: float,
    sigma: Optional[torch.Tensor],
    sigma_value: float,
    noise: Optional[torch.Tensor],
    seed: Optional[int],
    seeds: Optional[torch.Tensor],
    invert: bool,
) -> torch.Tensor:
    """Same contract as :func:`masked_noise_blend_ref`."""
    if x0.numel() == 0:
        return torch.empty(x0.shape, dtype=x0.dtype, device=x0.device)
    launch, out = masked_noise_blend_launch(x0, other, mask, alpha, alpha_value, sigma,
                                            sigma_value, noise, seed, seeds, invert)
    launch.run()
    return out


def masked_noise_blend_launch(x0, other, mask, alpha, alpha_value, sigma, sigma_value, noise,
                              seed, seeds, invert) -> tuple[Launch, torch.Tensor]:
    """(launch, out) of :func:`masked_noise_blend_triton` for a non-empty x0 (also what the AOT
    compile checks build, on ``meta`` tensors)."""
    out = torch.empty(x0.shape, dtype=x0.dtype, device=x0.device)
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
    elif seeds is not None:
        mode = NOISE_PHILOX_ROWS
    seed = int(seed or 0)
    # 64-bit indices when any offset (flat or into the mask) can pass int32.
    block = PHILOX_BLOCK if mode in (NOISE_PHILOX, NOISE_PHILOX_ROWS) else BLOCK
    mask_span = sum((d - 1) * s for d, s in zip(lay.dims, lay.mask_strides)) + 1
    int64 = lay.numel + block >= 2**31 or mask_span >= 2**31
    _, D1, D2, D3 = lay.dims
    s0, s1, s2, s3 = lay.mask_strides
    grid = (cdiv(lay.numel, block),)
    args = (x0c, otherc, out, kmask,
            noise if noise is not None else x0c,
            alpha if alpha is not None else x0c,
            sigma if sigma is not None else x0c,
            seeds if seeds is not None else x0c,
            float(alpha_value), float(sigma_value), seed & 0xFFFFFFFF, (seed >> 32) & 0xFFFFFFFF,
            lay.numel, lay.per_batch, D1, D2, D3, s0, s1, s2, s3, lay.factors[0],
            lay.factors[1])
    kwargs = dict(NDIM=lay.ndim, UPSAMPLE=lay.upsample, INVERT=bool(invert),
                  ALPHA_TENSOR=alpha is not None, SIGMA_TENSOR=sigma is not None, NOISE=mode,
                  INT64=int64, PRECISE=(libdevice is not None and not interpreting()),
                  BLOCK=block, num_warps=NUM_WARPS, enable_fp_fusion=False)
    return Launch(_BLEND, grid, args, kwargs), out


def philox_normal_triton_eps(seed: int, numel: int, device) -> torch.Tensor:
    """Debug helper: the Triton kernel's eps for `seed` (float32, flat), via a blend with m=1,
    alpha=0, sigma=1 and other=0. Used by tests to compare against philox.normal."""
    x0 = torch.zeros(numel, dtype=torch.float32, device=device)
    mask = torch.ones((), dtype=torch.bool, device=device)
    return masked_noise_blend_triton(x0, x0, mask, None, 0.0, None, 1.0, None, seed, None,
                                     False)




# ----- 6. CUDA launcher -----------------------------------------------------------------------

def masked_noise_blend_cuda(x0, other, mask, alpha, alpha_value, sigma, sigma_value, noise,
                            seed, seeds, invert) -> torch.Tensor:
    """Same contract as :func:`masked_noise_blend_ref`."""
    if x0.numel() == 0:
        return torch.empty(x0.shape, dtype=x0.dtype, device=x0.device)
    kmask = blend_layout.kernel_mask(mask, (torch.float32,))
    lay = blend_layout.layout(x0.shape, kmask)
    if lay is None:
        raise ValueError(blend_layout.limits_reason(x0, mask))
    x0c = x0.contiguous()
    # other / noise: x0's dtype, else float32 (an exact upcast; the kernel reads float32 then)
    wide = other.dtype != x0.dtype or (noise is not None and noise.dtype != x0.dtype)
    in_dtype = torch.float32 if wide else x0.dtype
    otherc = other.to(in_dtype).contiguous()
    noisec = noise.to(in_dtype).contiguous() if noise is not None else None
    if alpha is not None:
        alpha = alpha.float().contiguous()
    if sigma is not None:
        sigma = sigma.float().contiguous()
    return cuda_build.extension().masked_noise_blend(
        x0c, otherc, kmask, list(lay.dims), list(lay.mask_strides), list(lay.factors),
        lay.ndim, lay.per_batch, alpha, float(alpha_value), sigma, float(sigma_value), noisec,
        int(seed) if seed is not None else 0, seed is not None and noise is None, seeds,
        bool(invert), cuda_build.stream(x0.device),
    )


def philox_normal_cuda_eps(seed: int, numel: int, device) -> torch.Tensor:
    """The CUDA kernels' eps for `seed` (float32, flat), for comparison with philox.normal."""
    like = torch.empty(0, device=device)
    return cuda_build.extension().philox_normal(like, int(numel), int(seed),
                                                cuda_build.stream(like.device))


# ----- 7. registration ------------------------------------------------------------------------

OP = dispatch.register_op(dispatch.Op("masked_noise_blend", _prepare))
OP.register(dispatch.Implementation(dispatch.REF, masked_noise_blend_ref))
OP.register(dispatch.Implementation(TRITON, masked_noise_blend_triton,
                                    limits=masked_noise_blend_limits))
OP.register(dispatch.Implementation(cuda_build.CUDA, masked_noise_blend_cuda,
                                    limits=masked_noise_blend_limits))
