"""Input checks shared by the public ops: every error is a ValueError naming the argument."""
from __future__ import annotations

from collections.abc import Sequence
from typing import Optional

import torch

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def check_tensor(name: str, value: object) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    return value


def check_float(name: str, tensor: torch.Tensor) -> None:
    check_tensor(name, tensor)
    if tensor.dtype not in FLOAT_DTYPES:
        raise ValueError(
            f"{name} must be float32, float16 or bfloat16, got {tensor.dtype}"
        )


def check_rank(name: str, tensor: torch.Tensor, ranks: Sequence[int], layout: str) -> None:
    if tensor.dim() not in ranks:
        raise ValueError(
            f"{name} must have shape {layout} ({' or '.join(map(str, ranks))}-D), "
            f"got {tuple(tensor.shape)}"
        )


def check_dim(name: str, tensor: torch.Tensor, dim: int, expected: int, what: str) -> None:
    if tensor.shape[dim] != expected:
        raise ValueError(
            f"{name} has {what} {tensor.shape[dim]} at dim {dim}, expected {expected} "
            f"(shape {tuple(tensor.shape)})"
        )


def check_same_device(**tensors: Optional[torch.Tensor]) -> None:
    present = {name: t for name, t in tensors.items() if t is not None}
    devices = {t.device for t in present.values()}
    if len(devices) > 1:
        listing = ", ".join(f"{name} on {t.device}" for name, t in present.items())
        raise ValueError(f"all tensors must be on one device, got {listing}")


def check_float_or_batch(name: str, value: object, batch: int) -> None:
    """alpha/sigma: a Python number or a (B,) floating tensor."""
    if isinstance(value, torch.Tensor):
        check_float(name, value)
        if value.dim() != 1 or value.shape[0] != batch:
            raise ValueError(
                f"{name} must be a float or a ({batch},) tensor, got shape {tuple(value.shape)}"
            )
    elif isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name} must be a float or a (B,) tensor, got {type(value).__name__}")


def check_scale(scale: Optional[float]) -> None:
    if scale is not None and (isinstance(scale, bool) or not isinstance(scale, (int, float))):
        raise ValueError(f"scale must be a float or None, got {type(scale).__name__}")
