"""Choosing an implementation per call: CUDA extension, Triton, or the PyTorch reference.

Each implementation declares what it can take; `unsupported_reason` says why it cannot take a
given call. The automatic choice takes the first that can (cuda, then triton, then ref) and falls
back quietly; an implementation requested through ``LOTTS_KERNELS_IMPL`` or :func:`use_impl`
that cannot run raises :class:`KernelUnavailableError` with the reason.
"""
from __future__ import annotations

import contextlib
import importlib
import os
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Optional

import torch

ENV_VAR = "LOTTS_KERNELS_IMPL"
IMPLEMENTATIONS = ("cuda", "triton", "ref")
_override: list[str] = []


class KernelUnavailableError(RuntimeError):
    """An explicitly requested implementation cannot run these inputs."""


@dataclass(frozen=True)
class Implementation:
    """One implementation of one op, loaded lazily from `module`.

    `module.<function>` runs the op; `module.<limits>` (optional) returns a reason string when
    these particular inputs are out of its range (sizes, dtypes), else None.
    """

    name: str
    module: str
    function: str
    limits: Optional[str] = None

    def load(self) -> Callable[..., Any]:
        return getattr(importlib.import_module(self.module), self.function)

    def unsupported_reason(self, tensors: list[torch.Tensor], args: tuple,
                           explicit: bool = False) -> Optional[str]:
        reason = backend_reason(self.name, tensors, explicit)
        if reason is None and self.limits is not None:
            reason = getattr(importlib.import_module(self.module), self.limits)(*args)
        return reason


_REGISTRY: dict[str, dict[str, Implementation]] = {}


def register(op: str, implementation: Implementation) -> None:
    _REGISTRY.setdefault(op, {})[implementation.name] = implementation


def requested() -> str:
    """The implementation asked for: innermost :func:`use_impl`, else the env var, else auto."""
    if _override:
        return _override[-1]
    choice = os.environ.get(ENV_VAR, "auto").strip().lower() or "auto"
    if choice not in IMPLEMENTATIONS + ("auto",):
        raise KernelUnavailableError(
            f"{ENV_VAR}={choice!r} is not one of auto, {', '.join(IMPLEMENTATIONS)}"
        )
    return choice


@contextlib.contextmanager
def use_impl(name: str) -> Iterator[None]:
    """Force one implementation ("ref", "triton", "cuda" or "auto") inside the block."""
    if name not in IMPLEMENTATIONS + ("auto",):
        raise ValueError(f"unknown implementation {name!r}; expected one of {IMPLEMENTATIONS}")
    _override.append(name)
    try:
        yield
    finally:
        _override.pop()


def select(op: str, tensors: list[torch.Tensor], args: tuple) -> Implementation:
    """The implementation that runs `op` on these inputs (see module docstring)."""
    choices = _REGISTRY[op]
    wanted = requested()
    if wanted != "auto":
        implementation = choices.get(wanted)
        if implementation is None:
            raise KernelUnavailableError(f"{op} has no {wanted!r} implementation; it has "
                                         f"{', '.join(choices)}")
        reason = implementation.unsupported_reason(tensors, args, explicit=True)
        if reason is not None:
            raise KernelUnavailableError(f"{op}: implementation {wanted!r} cannot run: {reason}")
        return implementation
    for name in IMPLEMENTATIONS:
        implementation = choices.get(name)
        if implementation is not None and implementation.unsupported_reason(tensors, args) is None:
            return implementation
    raise KernelUnavailableError(f"no implementation of {op} can run these inputs")


def run(op: str, *args: Any) -> Any:
    tensors = [a for a in args if isinstance(a, torch.Tensor)]
    return select(op, tensors, args).load()(*args)


def registered(op: str) -> dict[str, Implementation]:
    return dict(_REGISTRY[op])


def ops() -> list[str]:
    return list(_REGISTRY)


# ----- backend-level capabilities -------------------------------------------------------------

def triton_interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def triton_missing_reason() -> Optional[str]:
    try:
        import triton  # noqa: F401
    except ImportError as error:
        return f"triton is not installed ({error})"
    return None


def _triton_reason(tensors: list[torch.Tensor], explicit: bool) -> Optional[str]:
    reason = triton_missing_reason()
    if reason is not None:
        return reason
    on_cpu = any(t.device.type == "cpu" for t in tensors)
    if any(t.device.type not in ("cpu", "cuda") for t in tensors):
        return "Triton kernels here run on CUDA tensors (or CPU tensors with TRITON_INTERPRET=1)"
    if on_cpu and not triton_interpreting():
        return "inputs are on the CPU; Triton needs CUDA tensors or TRITON_INTERPRET=1"
    if on_cpu and not explicit:
        # The interpreter is for testing kernels; automatic choice keeps the fast reference.
        return "automatic choice runs Triton on GPUs only; request it to use the interpreter"
    if on_cpu and any(t.dtype == torch.bfloat16 for t in tensors):
        return "the Triton interpreter (TRITON_INTERPRET=1) has no bfloat16 arithmetic"
    return None


def _cuda_reason(tensors: list[torch.Tensor]) -> Optional[str]:
    if not all(t.device.type == "cuda" for t in tensors):
        return "the CUDA extension takes CUDA tensors only"
    from lotts_kernels.backends import cuda_extension

    return cuda_extension.unavailable_reason(build=requested() == "cuda")


def backend_reason(name: str, tensors: list[torch.Tensor], explicit: bool = True) -> Optional[str]:
    """Why backend `name` cannot run on these tensors' devices/dtypes, or None if it can.

    `explicit` is True when the user asked for this backend (rather than automatic choice).
    """
    if name == "ref":
        return None
    if name == "triton":
        return _triton_reason(tensors, explicit)
    return _cuda_reason(tensors)
