"""Test utilities: one tolerance policy and assertions that explain their failures.

The policy: a float32 result is compared with its float32/float64 reference by the (atol, rtol)
of TOLERANCES. A low-precision result (float16/bfloat16 inputs, interpreter runs included) is
held to flash-attention's rule (:func:`assert_within_torch_error`): its error against the exact
(float64) value is at most twice that of plain PyTorch computing the same thing in the same low
precision, plus a floor from rounding the exact value to the result's dtype. Unlike fixed
numbers, that bound grows with the key length and the magnitudes exactly as PyTorch's own error
does.
"""
from __future__ import annotations

from typing import Optional

import torch

# (atol, rtol) of a float32 (or float64) result against a float32/64 reference.
TOLERANCES = {
    torch.float64: (1e-10, 1e-8),
    torch.float32: (1e-5, 1e-4),
}
LOW_PRECISION = (torch.float16, torch.bfloat16)


def tolerance(dtype: torch.dtype) -> tuple[float, float]:
    if dtype in LOW_PRECISION:
        raise ValueError(f"{dtype} results follow flash-attention's rule: use "
                         "assert_within_torch_error, not a fixed tolerance")
    return TOLERANCES[dtype]


def assert_close(actual: torch.Tensor, expected: torch.Tensor, atol: float, rtol: float,
                 what: str = "output") -> None:
    """torch.testing-style closeness with a report of the worst element and the failing share."""
    assert actual.shape == expected.shape, f"{what}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    a, e = actual.detach().double().cpu(), expected.detach().double().cpu()
    nan_mismatch = (a.isnan() != e.isnan()) | (a.isinf() != e.isinf())
    error = (a - e).abs().nan_to_num(0.0, posinf=0.0, neginf=0.0)
    allowed = atol + rtol * e.abs().nan_to_num(0.0, posinf=0.0, neginf=0.0)
    failing = (error > allowed) | nan_mismatch
    if failing.any():
        worst = int((error - allowed).argmax())
        index = tuple(int(i) for i in torch.unravel_index(torch.tensor(worst), a.shape))
        raise AssertionError(
            f"{what}: {int(failing.sum())}/{a.numel()} elements "
            f"({100.0 * float(failing.float().mean()):.3f}%) exceed atol={atol}, rtol={rtol}; "
            f"worst at {index}: got {a[index].item():.8g}, expected {e[index].item():.8g} "
            f"(|diff| {error[index].item():.3g}); NaN/Inf mismatches: {int(nan_mismatch.sum())}"
        )


def rounding_floor(exact: torch.Tensor, dtype: torch.dtype) -> float:
    """flash-attention's floor: twice the rounding error of `exact` (in `dtype`) at ~0.3."""
    rounded = exact.detach().to(dtype)
    return 2.0 * float(((rounded + 0.3 - 0.3) - rounded).abs().max())


def assert_within_torch_error(actual: torch.Tensor, exact: torch.Tensor,
                              torch_low: torch.Tensor, what: str = "output", factor: float = 2.0,
                              floor: Optional[float] = None) -> None:
    """flash-attention's rule (tests/test_flash_attn.py): max|actual - exact| must not exceed
    `factor` x max|torch_low - exact| + `floor`, where `torch_low` is plain PyTorch computing
    the same result in the same low precision and the floor defaults to the rounding of
    `exact` to the dtype of `actual` (see :func:`rounding_floor`)."""
    assert actual.shape == exact.shape == torch_low.shape, (
        f"{what}: shapes {tuple(actual.shape)}, {tuple(exact.shape)}, {tuple(torch_low.shape)}")
    a, e, t = (x.detach().double().cpu() for x in (actual, exact, torch_low))
    nan_mismatch = int(((a.isnan() != e.isnan()) | (a.isinf() != e.isinf())).sum())
    error = (a - e).abs().nan_to_num(0.0, posinf=0.0, neginf=0.0)
    torch_error = float((t - e).abs().nan_to_num(0.0, posinf=0.0, neginf=0.0).max())
    floor = rounding_floor(exact, actual.dtype) if floor is None else floor
    bound = factor * torch_error + floor
    if float(error.max()) > bound or nan_mismatch:
        worst = int(error.argmax())
        index = tuple(int(i) for i in torch.unravel_index(torch.tensor(worst), a.shape))
        failing = error > bound
        raise AssertionError(
            f"{what}: max error {float(error.max()):.3g} exceeds {factor:g} x PyTorch's own "
            f"low-precision error {torch_error:.3g} + floor {floor:.3g} = {bound:.3g}; "
            f"{int(failing.sum())}/{a.numel()} elements "
            f"({100.0 * float(failing.double().mean()):.3f}%) over; worst at {index}: got "
            f"{a[index].item():.8g}, exact {e[index].item():.8g}; NaN/Inf mismatches: "
            f"{nan_mismatch}")


def assert_accurate(actual: torch.Tensor, exact: torch.Tensor, torch_low: torch.Tensor,
                    what: str = "output") -> None:
    """The policy in one call: flash-attention's rule when `torch_low` was computed in float16
    or bfloat16, else the float32 tolerance against `exact`."""
    if torch_low.dtype in LOW_PRECISION:
        assert_within_torch_error(actual, exact, torch_low, what=what)
    else:
        assert_close(actual, exact, *TOLERANCES[torch.float32], what=what)


def plain_attention_probs(q: torch.Tensor, k: torch.Tensor, scale: float) -> torch.Tensor:
    """softmax(q k^T * scale) as plain PyTorch computes it in q's dtype (the rule's baseline)."""
    return torch.softmax(torch.matmul(q, k.transpose(-1, -2)) * scale, dim=-1)


def exact_attention_probs(q: torch.Tensor, k: torch.Tensor, scale: float) -> torch.Tensor:
    """The same in float64 from the same (already rounded) inputs."""
    return torch.softmax(torch.matmul(q.double(), k.double().transpose(-1, -2)) * scale, dim=-1)


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def randn(*shape: int, dtype: torch.dtype = torch.float32, seed: int = 0,
          device: str = "cpu") -> torch.Tensor:
    """Fresh deterministic random input (never zeros), made on CPU then moved."""
    return torch.randn(*shape, generator=seeded(seed)).to(device=device, dtype=dtype)


def blend_exact_and_low(x0, other, mask, alpha, sigma, noise=None, seed=None, invert=False):
    """masked_noise_blend computed independently twice: exactly (float64, from the same inputs
    and the same float32 eps) and as plain PyTorch in x0's dtype (flash-attention's baseline).
    `seed` may be an int or a (B,) tensor of per-row seeds."""
    from lotts_kernels import philox
    from lotts_kernels.ops.masked_noise_blend import expand_mask

    m = expand_mask(mask, x0.shape).double()
    if invert:
        m = 1.0 - m
    if noise is not None:
        eps = noise.double()
    elif isinstance(seed, torch.Tensor):
        eps = philox.normal_rows(seed, x0.shape, x0.device).double()
    elif seed is not None:
        eps = philox.normal(seed, x0.shape, x0.device).double()
    else:
        eps = torch.zeros_like(x0, dtype=torch.float64)

    def per_row(c):
        return c.double().reshape(-1, *[1] * (x0.dim() - 1)) if isinstance(c, torch.Tensor) else c

    def blend(dtype):
        mm, e = m.to(dtype), eps.to(dtype)
        a, s = per_row(alpha), per_row(sigma)
        a = a.to(dtype) if isinstance(a, torch.Tensor) else a
        s = s.to(dtype) if isinstance(s, torch.Tensor) else s
        return mm * (a * x0.to(dtype) + s * e) + (1 - mm) * other.to(dtype)

    return blend(torch.float64), blend(x0.dtype)
