"""Choosing an implementation per call, by declared capability, with every refusal explained.

Vocabulary (after xformers' ``fmha`` dispatch):

* A :class:`Backend` ("ref", "triton", "cuda") says whether it can run at all here and on which
  device types (``reasons(device, explicit)``): Triton needs CUDA tensors or the interpreter, the
  CUDA extension a built library, the reference nothing.
* An :class:`Implementation` is one backend's function for one op. It declares the devices and
  dtypes it takes and, through ``limits(*args)``, the size limits of these particular inputs.
  ``not_supported_reasons`` returns *all* reasons it refuses a call, never just the first.
* An :class:`Op` holds its implementations, its argument preparation (the public function's
  checks) and its torch custom op.

The automatic choice takes the first implementation in :data:`PREFERENCE` order that accepts
the call and falls back quietly; when none does, :class:`KernelUnavailableError` lists every
implementation's reasons. An implementation requested with ``impl=`` on the call, with
:func:`use_impl` (a context variable: per thread and per asyncio task) or with the environment
variable ``LOTTS_KERNELS_IMPL`` (in that order of precedence) raises with its reasons when it
cannot run. :func:`explain` says which implementation a call would use and why each other was
skipped.

The size-independent part of the choice (backend availability, device type, dtypes) is cached
per (op, device, dtypes, requested implementation, interpreter mode), so the sampler's per-step
calls pay one dict lookup plus the size checks of the chosen candidate. :func:`clear_cache`
forgets it (the CUDA extension calls it when it is built or reset).
"""
from __future__ import annotations

import contextlib
import contextvars
import os
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Optional, Sequence

import torch

ENV_VAR = "LOTTS_KERNELS_IMPL"
PREFERENCE = ("cuda", "triton", "ref")
IMPLEMENTATIONS = PREFERENCE
AUTO = "auto"
CONTEXT = ""  # the custom ops' `impl` argument when the call gave none: use_impl / env / auto

_requested: contextvars.ContextVar[Optional[str]] = contextvars.ContextVar(
    "lotts_kernels_impl", default=None)


class KernelUnavailableError(RuntimeError):
    """No implementation can run these inputs, or an explicitly requested one cannot."""


# ----- backends and implementations -----------------------------------------------------------

@dataclass(frozen=True)
class Backend:
    """A family of implementations with a shared availability check.

    `availability(device, dtypes, explicit)` returns the reasons this backend cannot run on
    `device` with these floating dtypes (empty when it can); `explicit` is True when the caller
    asked for this backend by name. It must not depend on sizes: its answer is cached.
    """

    name: str
    devices: tuple[str, ...]
    availability: Callable[[torch.device, tuple, bool], list[str]] = (
        lambda device, dtypes, explicit: [])

    def reasons(self, device: torch.device, dtypes: tuple[torch.dtype, ...],
                explicit: bool) -> list[str]:
        found = []
        if device.type not in self.devices:
            takes = " or ".join(d.upper() for d in self.devices)
            found.append(f"{self.name} takes {takes} tensors, got {device.type.upper()} ones")
        return found + list(self.availability(device, dtypes, explicit))


REF = Backend("ref", devices=("cpu", "cuda", "mps", "xpu", "meta"))


@dataclass
class Implementation:
    """`fn(*args)` runs the op on prepared arguments (those of the custom op, minus `impl`)."""

    backend: Backend
    fn: Callable[..., Any]
    dtypes: tuple[torch.dtype, ...] = (torch.float32, torch.float16, torch.bfloat16)
    limits: Optional[Callable[..., list[str]]] = None

    @property
    def name(self) -> str:
        return self.backend.name

    def static_reasons(self, device: torch.device, dtypes: tuple[torch.dtype, ...],
                       explicit: bool) -> list[str]:
        """Reasons that depend only on the device and the floating dtypes: cached."""
        reasons = self.backend.reasons(device, dtypes, explicit)
        unsupported = sorted({str(d) for d in dtypes if d not in self.dtypes})
        if unsupported:
            reasons.append(f"dtype {', '.join(unsupported)} not supported (takes "
                           f"{', '.join(str(d) for d in self.dtypes)})")
        return reasons

    def size_reasons(self, args: Sequence[Any]) -> list[str]:
        return list(self.limits(*args)) if self.limits is not None else []

    def not_supported_reasons(self, args: Sequence[Any], explicit: bool = True) -> list[str]:
        """Every reason this implementation refuses these prepared arguments (empty: it runs)."""
        device, dtypes = call_signature(args)
        return self.static_reasons(device, dtypes, explicit) + self.size_reasons(args)


@dataclass
class Op:
    """One op: its implementations and how its public arguments become custom-op arguments.

    `prepare(*args, **kwargs)` runs the public function's checks and returns ``(args, impl)``:
    the custom op's arguments (without `impl`) and the requested implementation or None.
    """

    name: str
    prepare: Callable[..., tuple[tuple, Optional[str]]]
    implementations: dict[str, Implementation] = field(default_factory=dict)

    def register(self, implementation: Implementation) -> Implementation:
        self.implementations[implementation.name] = implementation
        clear_cache()
        return implementation


_OPS: dict[str, Op] = {}


def register_op(op: Op) -> Op:
    _OPS[op.name] = op
    return op


def get_op(name: str) -> Op:
    try:
        return _OPS[name]
    except KeyError:
        raise ValueError(f"unknown op {name!r}; ops are {', '.join(_OPS)}") from None


def ops() -> list[str]:
    return list(_OPS)


def registered(op: str) -> dict[str, Implementation]:
    return dict(get_op(op).implementations)


# ----- what was asked for ---------------------------------------------------------------------

def _check_name(name: str) -> str:
    if name not in IMPLEMENTATIONS + (AUTO,):
        raise ValueError(f"unknown implementation {name!r}; expected one of "
                         f"{', '.join(IMPLEMENTATIONS + (AUTO,))}")
    return name


def requested(impl: Optional[str] = None) -> str:
    """The implementation asked for: `impl`, else the innermost :func:`use_impl`, else
    ``LOTTS_KERNELS_IMPL``, else "auto"."""
    if impl:
        return _check_name(impl)
    context = _requested.get()
    if context is not None:
        return context
    choice = os.environ.get(ENV_VAR, AUTO).strip().lower() or AUTO
    if choice not in IMPLEMENTATIONS + (AUTO,):
        raise KernelUnavailableError(
            f"{ENV_VAR}={choice!r} is not one of {AUTO}, {', '.join(IMPLEMENTATIONS)}")
    return choice


@contextlib.contextmanager
def use_impl(name: str) -> Iterator[None]:
    """Force one implementation ("ref", "triton", "cuda" or "auto") inside the block.

    A context variable: other threads and asyncio tasks keep their own choice.
    """
    token = _requested.set(_check_name(name))
    try:
        yield
    finally:
        _requested.reset(token)


# ----- choosing -------------------------------------------------------------------------------

def call_signature(args: Sequence[Any]) -> tuple[torch.device, tuple[torch.dtype, ...]]:
    """(device, floating dtypes) of a call's tensors: what the cached choice depends on."""
    tensors = [a for a in args if isinstance(a, torch.Tensor)]
    device = tensors[0].device if tensors else torch.device("cpu")
    dtypes = tuple(dict.fromkeys(t.dtype for t in tensors if t.is_floating_point()))
    return device, dtypes


_cache: dict[tuple, list[Implementation]] = {}  # see _candidates


def clear_cache() -> None:
    """Forget cached choices (after a backend's availability changed)."""
    _cache.clear()


def _interpreting() -> bool:
    from lotts_kernels import triton_utils

    return triton_utils.interpreting()


def _candidates(op: Op, device: torch.device, dtypes: tuple[torch.dtype, ...],
                wanted: str) -> list[Implementation]:
    """Implementations passing the size-independent checks, in preference order (cached)."""
    key = (op.name, device, dtypes, wanted, _interpreting())
    accepted = _cache.get(key)
    if accepted is None:
        names = PREFERENCE if wanted == AUTO else (wanted,)
        accepted = _cache[key] = [
            op.implementations[name] for name in names if name in op.implementations
            and not op.implementations[name].static_reasons(device, dtypes, wanted != AUTO)]
    return accepted


def _format(reasons: dict[str, list[str]]) -> str:
    return "; ".join(f"{name}: {', '.join(found)}" for name, found in reasons.items())


def select(op_name: str, args: Sequence[Any], impl: Optional[str] = None) -> Implementation:
    """The implementation that runs `op_name` on these prepared arguments (module docstring)."""
    op = get_op(op_name)
    wanted = requested(impl)
    if wanted != AUTO and wanted not in op.implementations:
        raise KernelUnavailableError(f"{op.name} has no {wanted!r} implementation; it has "
                                     f"{', '.join(op.implementations)}")
    device, dtypes = call_signature(args)
    for implementation in _candidates(op, device, dtypes, wanted):
        if not implementation.size_reasons(args):
            return implementation
    # Nothing runs: report every reason of every candidate, size limits included (only here,
    # so the common path pays for the size checks of the chosen implementation alone).
    names = (wanted,) if wanted != AUTO else PREFERENCE
    reasons = {name: op.implementations[name].not_supported_reasons(args, wanted != AUTO)
               for name in names if name in op.implementations}
    if wanted != AUTO:
        raise KernelUnavailableError(
            f"{op.name}: implementation {wanted!r} cannot run: {', '.join(reasons[wanted])}")
    raise KernelUnavailableError(f"no implementation of {op.name} can run these inputs: "
                                 f"{_format(reasons)}")


def run(op_name: str, impl: str, *args: Any) -> Any:
    """Run `op_name` on prepared arguments: the body of every custom op."""
    return select(op_name, args, impl or None).fn(*args)


# ----- explaining -----------------------------------------------------------------------------

@dataclass(frozen=True)
class Explanation:
    """Which implementation a call would use (None: none can) and why each other was skipped."""

    op: str
    requested: str
    chosen: Optional[str]
    reasons: dict[str, list[str]]

    def __str__(self) -> str:
        lines = [f"{self.op}: requested {self.requested}, "
                 f"{'uses ' + self.chosen if self.chosen else 'no implementation can run'}"]
        for name, reasons in self.reasons.items():
            if name != self.chosen:
                lines.append(f"  {name}: skipped: {'; '.join(reasons) or 'a preferred one ran'}")
        return "\n".join(lines)


def explain(op_name: str, *args: Any, **kwargs: Any) -> Explanation:
    """Which implementation ``lotts_kernels.<op_name>(*args, **kwargs)`` would use, and why
    every other one was skipped. Runs the op's argument checks, not the op."""
    op = get_op(op_name)
    prepared, impl = op.prepare(*args, **kwargs)
    wanted = requested(impl)
    try:
        chosen: Optional[str] = select(op.name, prepared, impl).name
    except KernelUnavailableError:
        chosen = None
    reasons: dict[str, list[str]] = {}
    for name in PREFERENCE:
        implementation = op.implementations.get(name)
        if implementation is None:
            reasons[name] = [f"{op.name} has no {name} implementation"]
            continue
        found = implementation.not_supported_reasons(prepared, explicit=wanted == name)
        if not found and name != chosen:
            found = ([f"not requested ({wanted} was)"] if wanted != AUTO
                     else [f"{chosen} is preferred"] if chosen else [])
        reasons[name] = found
    return Explanation(op.name, wanted, chosen, reasons)
