"""Diagnostics: ``python -m lotts_kernels.env`` prints versions, the device and, per op, which
implementations can run on it (and why not)."""
from __future__ import annotations

import importlib
import platform
from typing import Optional

import torch

from lotts_kernels import dispatch, triton_utils
from lotts_kernels._version import __version__


def _version(module: str) -> str:
    try:
        return getattr(importlib.import_module(module), "__version__", "installed")
    except Exception as error:  # an optional package missing or broken: say so, don't fail
        return f"not available ({type(error).__name__})"


def availability(device: Optional[torch.device] = None) -> dict[str, dict[str, Optional[str]]]:
    """For each op and implementation: None if it can run float32 inputs on `device` (size
    limits aside), else its reasons."""
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    table: dict[str, dict[str, Optional[str]]] = {}
    for op in dispatch.ops():
        table[op] = {}
        implementations = dispatch.registered(op)
        for name in dispatch.PREFERENCE:
            if name not in implementations:
                table[op][name] = "not implemented for this op"
                continue
            # explicit only when requested: an explicit "cuda" would build the extension
            explicit = dispatch.requested() == name
            reasons = implementations[name].static_reasons(device, (torch.float32,), explicit)
            table[op][name] = "; ".join(reasons) if reasons else None
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
        "LOTTS_KERNELS_IMPL": dispatch.requested(),
        "TRITON_INTERPRET": "1" if triton_utils.interpreting() else "0",
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
