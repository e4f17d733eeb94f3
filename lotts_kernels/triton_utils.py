"""What every Triton kernel here shares: lazy jitting, "are we interpreting?", the device guard
and the Triton backend's declared capabilities.

Why lazy: Triton 3.x reads ``TRITON_INTERPRET`` when a function is *decorated* with
``@triton.jit`` (``triton.knobs.runtime.interpret``), not when it is launched, so a module
decorating at import freezes the mode of that moment. Our kernels and their ``@jit`` helpers are
plain functions wrapped in :class:`LazyJit`; each is decorated on first use, once per mode, in a
per-module, per-mode namespace in which every other :class:`LazyJit` global is replaced by its
decorated twin of the same mode. So ``TRITON_INTERPRET`` may be set or cleared at any time before
a call, no module ever needs reloading, and interpreted and compiled kernels never mix.

Kernels may read module-level ints listed in ``constants=`` (Triton only lets kernels read
globals that are ``tl.constexpr``): they are injected as constexprs in compiled mode and as
plain ints in the interpreter, so constants such as Philox's are defined once, in Python.

Triton stays optional: without it this module imports, ``tl`` is None, and the backend refuses
with the import error as its reason.
"""
from __future__ import annotations

import contextlib
import os
import sys
import threading
import types
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager as ContextManager
from dataclasses import dataclass
from typing import Any, Optional

import torch

from lotts_kernels.dispatch import Backend

try:
    import triton
    import triton.language as tl
except ImportError as error:  # pragma: no cover - exercised where triton is not installed
    triton = None
    tl = None
    _IMPORT_ERROR: Optional[str] = (f"triton cannot be imported ({type(error).__name__}: "
                                    f"{error})")
else:
    _IMPORT_ERROR = None

try:  # precise device math (libdevice) on GPUs; the interpreter uses numpy instead
    from triton.language.extra import libdevice
except ImportError:  # no triton, or a Triton without the extra.libdevice path
    libdevice = None


def missing_reason() -> Optional[str]:
    """Why Triton cannot be used at all in this process, or None."""
    return _IMPORT_ERROR


def interpreting() -> bool:
    """Whether ``@triton.jit`` now yields interpreter kernels (``TRITON_INTERPRET=1``).

    The one place this is asked. Triton >= 3.3 exposes it as ``triton.knobs`` (read from the
    environment on every access); older Triton only has the environment variable.
    """
    knobs = getattr(triton, "knobs", None)
    if knobs is not None:
        return bool(knobs.runtime.interpret)
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


# ----- lazy jitting ---------------------------------------------------------------------------

_lock = threading.RLock()
_namespaces: dict[tuple[str, bool], dict[str, Any]] = {}


class LazyJit:
    """``triton.jit(fn, **jit_options)`` (optionally autotuned) made on first use, per mode.

    `autotune` is a function ``interpreting -> dict`` of ``triton.autotune`` keyword arguments
    (the interpreter does not autotune, so it usually returns one config there). `constants`
    names module globals the kernel reads (see the module docstring).
    """

    def __init__(self, fn: Callable, autotune: Optional[Callable[[bool], dict]] = None,
                 constants: Iterable[str] = (), **jit_options: Any) -> None:
        self.fn = fn
        self.autotune = autotune
        self.constants = tuple(constants)
        self.jit_options = jit_options
        self._kernels: dict[bool, Any] = {}
        self.__name__ = fn.__name__
        self.__doc__ = fn.__doc__

    def get(self, mode: Optional[bool] = None) -> Any:
        """The decorated kernel for `mode` (default: the current one)."""
        if triton is None:
            raise RuntimeError(_IMPORT_ERROR)
        mode = interpreting() if mode is None else mode
        kernel = self._kernels.get(mode)
        if kernel is None:
            with _lock:
                kernel = self._kernels.get(mode)
                if kernel is None:
                    kernel = self._kernels[mode] = self._decorate(mode)
        return kernel

    def _decorate(self, mode: bool) -> Any:
        namespace = _namespace(self.fn.__module__, mode)
        for name in self.constants:
            value = getattr(sys.modules[self.fn.__module__], name)
            namespace[name] = value if mode else tl.constexpr(value)
        fn = types.FunctionType(self.fn.__code__, namespace, self.fn.__name__,
                                self.fn.__defaults__, self.fn.__closure__)
        fn.__doc__, fn.__module__ = self.fn.__doc__, self.fn.__module__
        # FunctionType drops annotations, and Triton finds constexpr parameters by them: without
        # this every `X: tl.constexpr` would compile as a runtime argument (the AOT test fails).
        fn.__annotations__ = dict(self.fn.__annotations__)
        fn.__kwdefaults__ = self.fn.__kwdefaults__
        fn.__qualname__ = self.fn.__qualname__
        jitted = triton.jit(fn, **self.jit_options)
        if self.autotune is not None:
            jitted = triton.autotune(**self.autotune(mode))(jitted)
        return jitted

    def __getitem__(self, grid: Any) -> Any:
        return self.get()[grid]


def _namespace(module: str, mode: bool) -> dict[str, Any]:
    """A copy of `module`'s globals with every LazyJit replaced by its `mode` twin.

    Registered before the replacement so that helpers of the same module see one namespace.
    Copied once per mode: kernels must not depend on module globals changed later.
    """
    key = (module, mode)
    with _lock:
        namespace = _namespaces.get(key)
        if namespace is None:
            namespace = _namespaces[key] = dict(vars(sys.modules[module]))
            for name, value in list(namespace.items()):
                if isinstance(value, LazyJit):
                    namespace[name] = value.get(mode)
        return namespace


def jit(fn: Optional[Callable] = None, **options: Any):
    """Decorator form of :class:`LazyJit`: ``@jit`` or ``@jit(do_not_specialize=[...])``."""
    if fn is None:
        return lambda inner: LazyJit(inner, **options)
    return LazyJit(fn, **options)


# ----- launching ------------------------------------------------------------------------------

def device_guard(tensor: torch.Tensor) -> ContextManager:
    """Make `tensor`'s GPU the current device (and so its current stream Triton's stream).

    Triton launches on the *current* device; without this, a process whose tensors live on
    ``cuda:1`` would run them on GPU 0. A no-op for CPU tensors (the interpreter).
    """
    if tensor.device.type == "cuda":
        return torch.cuda.device(tensor.device)
    return contextlib.nullcontext()


@dataclass
class Launch:
    """One kernel launch as a launcher makes it: ``kernel[grid](*args, **kwargs)``.

    Launchers build it with the tensors they would launch on and run it; the AOT checks
    (:mod:`lotts_kernels.aot`) build it with the same code on ``meta`` tensors and compile it.
    """

    kernel: Any              # a LazyJit / JITFunction / Autotuner
    grid: Any
    args: tuple
    kwargs: dict

    def run(self) -> None:
        """Launch on the first tensor argument's GPU (Triton launches on the current device)."""
        tensor = next(a for a in self.args if hasattr(a, "device"))
        with device_guard(tensor):
            self.kernel[self.grid](*self.args, **self.kwargs)

    def with_config(self, config: Any) -> Launch:
        """The launch an autotuner makes with `config` (its constexprs and num_warps/stages)."""
        return Launch(self.kernel, self.grid, self.args, {**self.kwargs, **config.all_kwargs()})


# ----- the Triton backend's capabilities ------------------------------------------------------

def _availability(device: torch.device, dtypes: tuple[torch.dtype, ...],
                  explicit: bool) -> list[str]:
    if _IMPORT_ERROR is not None:
        return [_IMPORT_ERROR]
    if device.type != "cpu":
        return []
    reasons = []
    if not interpreting():
        reasons.append("inputs are on the CPU; Triton needs CUDA tensors or TRITON_INTERPRET=1")
    elif not explicit:
        # The interpreter is for testing kernels; automatic choice keeps the fast reference.
        reasons.append("automatic choice runs Triton on GPUs only; request it to use the "
                       "interpreter")
    elif torch.bfloat16 in dtypes:
        reasons.append("the Triton interpreter (TRITON_INTERPRET=1) has no bfloat16 arithmetic")
    return reasons


TRITON = Backend("triton", devices=("cuda", "cpu"), availability=_availability)


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


def next_power_of_2(n: int) -> int:
    return 1 if n <= 1 else 1 << (int(n) - 1).bit_length()


__all__ = ["TRITON", "Launch", "LazyJit", "cdiv", "device_guard", "interpreting", "jit", "libdevice",
           "missing_reason", "next_power_of_2", "tl", "triton"]
