"""The CUDA C++ extension (csrc/): lazy build with torch.utils.cpp_extension.load."""
from __future__ import annotations

from typing import Optional


def unavailable_reason(build: bool = False) -> Optional[str]:
    """Why the CUDA extension cannot be used now, or None when it is loaded."""
    return "the CUDA extension is not built yet"
