"""Counter-based standard-normal noise, defined once for every implementation.

Element i of a tensor drawn from `seed` uses Philox4x32-10 (Salmon et al., "Parallel random
numbers: as easy as 1, 2, 3", the generator of cuRAND and Triton) with key
(seed mod 2^32, seed >> 32 mod 2^32) and counter (i mod 2^32, i >> 32, 0, 0). Its first two
output words become uniforms in (0, 1) through their top 24 bits, u = (w >> 8 + 0.5) / 2^24, and
a Box-Muller transform gives eps_i = sqrt(-2 ln u1) * cos(2 pi u2).

The reference here runs on any device with int64 arithmetic; the Triton helper
:func:`philox_normal_triton` below reads the very constants of this module (as constexprs), and
csrc/lotts_common.cuh repeats them in C++ (a test checks they agree), so every implementation
draws the same integers and the same noise up to float rounding of log, sqrt and cos. The noise
depends only on the seed and the element index, never on launch grids.
"""
from __future__ import annotations

import math

import torch

from lotts_kernels.triton_utils import jit, libdevice, tl

MULTIPLIER_0 = 0xD2511F53
MULTIPLIER_1 = 0xCD9E8D57
WEYL_0 = 0x9E3779B9
WEYL_1 = 0xBB67AE85
ROUNDS = 10
MASK32 = 0xFFFFFFFF
TWO_PI = 2.0 * math.pi
UNIFORM_SCALE = 1.0 / (1 << 24)


def _mul_hi_lo(constant: int, word: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """High and low 32 bits of constant * word, from 16-bit halves so int64 never overflows."""
    c_lo, c_hi = constant & 0xFFFF, constant >> 16
    w_lo, w_hi = word & 0xFFFF, word >> 16
    lo_lo, hi_lo, lo_hi, hi_hi = c_lo * w_lo, c_hi * w_lo, c_lo * w_hi, c_hi * w_hi
    middle = (lo_lo >> 16) + (hi_lo & 0xFFFF) + (lo_hi & 0xFFFF)
    high = hi_hi + (hi_lo >> 16) + (lo_hi >> 16) + (middle >> 16)
    low = ((middle & 0xFFFF) << 16) | (lo_lo & 0xFFFF)
    return high, low


def philox4x32(counter_lo: torch.Tensor, counter_hi: torch.Tensor, seed):
    """The four 32-bit output words (as int64 tensors) for counters (lo, hi, 0, 0).

    `seed` is an int or an int64 tensor broadcastable against the counters (one key each)."""
    c0, c1 = counter_lo, counter_hi
    c2 = torch.zeros_like(c0)
    c3 = torch.zeros_like(c0)
    k0, k1 = seed & MASK32, (seed >> 32) & MASK32
    for _ in range(ROUNDS):
        hi0, lo0 = _mul_hi_lo(MULTIPLIER_0, c0)
        hi1, lo1 = _mul_hi_lo(MULTIPLIER_1, c2)
        c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
        k0, k1 = (k0 + WEYL_0) & MASK32, (k1 + WEYL_1) & MASK32
    return c0, c1, c2, c3


def uniform_from_word(word: torch.Tensor) -> torch.Tensor:
    """Map a 32-bit word to a float32 uniform in (0, 1), exactly representable."""
    return ((word >> 8).float() + 0.5) * UNIFORM_SCALE


def _box_muller(index: torch.Tensor, seed) -> torch.Tensor:
    w0, w1, _, _ = philox4x32(index & MASK32, index >> 32, seed)
    u1, u2 = uniform_from_word(w0), uniform_from_word(w1)
    return torch.sqrt(-2.0 * torch.log(u1)) * torch.cos(TWO_PI * u2)


def normal(seed: int, shape, device: torch.device | str = "cpu") -> torch.Tensor:
    """Standard-normal float32 tensor of `shape`, element i drawn from (seed, i)."""
    if not 0 <= seed < 2**63:
        raise ValueError(f"seed must be an integer in [0, 2**63), got {seed}")
    index = torch.arange(math.prod(shape), dtype=torch.int64, device=device)
    return _box_muller(index, int(seed)).reshape(shape)


def normal_rows(seeds: torch.Tensor, shape, device: torch.device | str | None = None
                ) -> torch.Tensor:
    """Float32 tensor of `shape` = (B, ...) whose row b is ``normal(seeds[b], shape[1:])``:
    one independent stream per batch row, each counted from 0 (seeds: int64 (B,))."""
    device = seeds.device if device is None else device
    index = torch.arange(math.prod(shape[1:]), dtype=torch.int64, device=device)
    keys = seeds.to(device=device, dtype=torch.int64)[:, None]
    return _box_muller(index[None, :], keys).reshape(shape)


@jit(constants=("MULTIPLIER_0", "MULTIPLIER_1", "WEYL_0", "WEYL_1", "ROUNDS", "UNIFORM_SCALE",
                "TWO_PI"))
def philox_normal_triton(index, seed_lo, seed_hi, INT64: tl.constexpr, PRECISE: tl.constexpr):
    """Triton: eps for element indices `index` (int32, or int64 when INT64) and a seed given as
    its two 32-bit words; the same integers as :func:`normal`. PRECISE uses libdevice's log/cos
    and IEEE sqrt (GPUs); the interpreter uses numpy's."""
    c0 = index.to(tl.uint32)  # truncation: low 32 bits of the index
    if INT64:
        c1 = (index >> 32).to(tl.uint32)
    else:
        c1 = tl.zeros_like(c0)
    c2 = tl.zeros_like(c0)
    c3 = tl.zeros_like(c0)
    k0 = seed_lo.to(tl.uint32)
    k1 = seed_hi.to(tl.uint32)
    for _ in tl.static_range(ROUNDS):
        prev0 = c0
        prev2 = c2
        c0 = tl.umulhi(prev2, MULTIPLIER_1) ^ c1 ^ k0
        c2 = tl.umulhi(prev0, MULTIPLIER_0) ^ c3 ^ k1
        c1 = prev2 * MULTIPLIER_1
        c3 = prev0 * MULTIPLIER_0
        k0 = k0 + WEYL_0
        k1 = k1 + WEYL_1
    u1 = ((c0 >> 8).to(tl.float32) + 0.5) * UNIFORM_SCALE
    u2 = ((c1 >> 8).to(tl.float32) + 0.5) * UNIFORM_SCALE
    theta = TWO_PI * u2  # float32(2*pi) * u2, as the reference rounds it
    if PRECISE:
        eps = libdevice.sqrt_rn(-2.0 * libdevice.log(u1)) * libdevice.cos(theta)
    else:
        eps = tl.sqrt(-2.0 * tl.log(u1)) * tl.cos(theta)
    return eps
