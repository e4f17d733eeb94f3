"""Diagnostics: ``python -m lotts_kernels.env`` prints versions, the device and, per op, which
implementations can run on it (and why not)."""
from __future__ import annotations

import importlib
import platform
from typing import Optional

import torch

from lotts_kernels import _dispatch
from lotts_kernels._version import __version__


def _version(module: str) -> str:
    try:
        return getattr(importlib.import_module(module), "__version__", "installed")
    except Exception as error:  # an optional package missing or broken: say so, don't fail
        return f"not available ({type(error).__name__})"


def _probe_tensors(device: torch.device) -> list[torch.Tensor]:
    return [torch.empty(1, device=device)]


def availability(device: Optional[torch.device] = None) -> dict[str, dict[str, Optional[str]]]:
    """For each op and implementation: None if it can run on `device`, else the reason."""
    device = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
    tensors = _probe_tensors(device)
    table: dict[str, dict[str, Optional[str]]] = {}
    for op in _dispatch.ops():
        table[op] = {}
        for name in _dispatch.IMPLEMENTATIONS:
            if name not in _dispatch.registered(op):
                table[op][name] = "not implemented for this op"
            else:
                table[op][name] = _dispatch.backend_reason(name, tensors)
    return table


def versions() -> dict[str, str]:
    cuda = torch.version.cuda or "none (CPU build)"
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "CPU"
    return {
        "lotts_kernels": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch CUDA": cuda,
        "triton": _version("triton"),
        "diffusers": _version("diffusers"),
        "transformers": _version("transformers"),
        "device": device,
        "LOTTS_KERNELS_IMPL": _dispatch.requested(),
        "TRITON_INTERPRET": "1" if _dispatch.triton_interpreting() else "0",
    }


def report() -> str:
    """The diagnostics as plain text."""
    lines = [f"{key:<20} {value}" for key, value in versions().items()]
    lines.append("")
    lines.append(f"{'op':<28} {'impl':<7} status")
    for op, implementations in availability().items():
        for name, reason in implementations.items():
            lines.append(f"{op:<28} {name:<7} {'available' if reason is None else reason}")
    return "\n".join(lines)


if __name__ == "__main__":
    print(report())
