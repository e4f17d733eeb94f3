"""Test utilities: one tolerance policy and an assertion that explains its failures."""
from __future__ import annotations

import torch

# (atol, rtol) when comparing an output of this input dtype against a float32/64 reference.
TOLERANCES = {
    torch.float64: (1e-10, 1e-8),
    torch.float32: (1e-5, 1e-4),
    torch.float16: (2e-3, 2e-3),
    torch.bfloat16: (1.6e-2, 1.6e-2),
}


def tolerance(dtype: torch.dtype) -> tuple[float, float]:
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


def assert_error_within(actual: torch.Tensor, low_precision_ref: torch.Tensor,
                        exact: torch.Tensor, factor: float = 2.0, floor: float = 1e-6,
                        what: str = "output") -> None:
    """flash-attention's rule: error vs `exact` at most `factor` x that of plain PyTorch in the
    same low precision (`low_precision_ref`), plus a small floor."""
    kernel_error = (actual.double() - exact.double()).abs().max().item()
    torch_error = (low_precision_ref.double() - exact.double()).abs().max().item()
    assert kernel_error <= factor * torch_error + floor, (
        f"{what}: max error {kernel_error:.3g} exceeds {factor} x PyTorch's {torch_error:.3g} "
        f"+ {floor:g}"
    )


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def randn(*shape: int, dtype: torch.dtype = torch.float32, seed: int = 0,
          device: str = "cpu") -> torch.Tensor:
    """Fresh deterministic random input (never zeros), made on CPU then moved."""
    return torch.randn(*shape, generator=seeded(seed)).to(device=device, dtype=dtype)
