"""Cost accounting: denoiser rows counted by a forward pre-hook, seconds per phase.

The count is the real number of latents that entered the denoiser (read from the input's
batch dimension, host-side metadata: no device sync), not a formula.
"""
from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Optional

import torch

from lotts.result import Cost


def _batch_rows(args: tuple, kwargs: dict) -> int:
    sample = args[0] if args else kwargs.get("sample", kwargs.get("hidden_states"))
    return int(sample.shape[0]) if isinstance(sample, torch.Tensor) else 0


class CostMeter:
    """Counts denoiser rows and times phases into a :class:`Cost`.

    Use ``with meter.counting(denoiser):`` around a run (the hook is removed in a finally) and
    ``with meter.phase("refine"):`` around each phase; rows go to the current phase.
    """

    def __init__(self, synchronize: bool = False,
                 on_phase: Optional[Callable[[str], None]] = None) -> None:
        self.cost = Cost()
        self.current = "generate"
        self.synchronize = synchronize
        self.on_phase = on_phase
        self._announced: Optional[str] = None

    def _on_forward(self, module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        rows = _batch_rows(args, kwargs)
        self.cost.nfe += rows
        self.cost.nfe_by_phase[self.current] = self.cost.nfe_by_phase.get(self.current, 0) + rows

    @contextmanager
    def counting(self, denoiser: torch.nn.Module) -> Iterator[CostMeter]:
        handle = denoiser.register_forward_pre_hook(self._on_forward, with_kwargs=True)
        try:
            yield self
        finally:
            handle.remove()

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Time a phase; on CUDA, synchronize at its edges (a few syncs per run, not per step)."""
        previous, self.current = self.current, name
        if self.on_phase is not None and name != self._announced:
            self._announced = name
            self.on_phase(name)
        self._sync()
        start = time.perf_counter()
        try:
            yield
        finally:
            self._sync()
            self.cost.seconds[name] = self.cost.seconds.get(name, 0.0) + time.perf_counter() - start
            self.current = previous

    def count_verifier(self, images: int) -> None:
        self.cost.verifier_calls += images

    def rows_in_phase(self, name: str) -> int:
        return self.cost.nfe_by_phase.get(name, 0)

    def _sync(self) -> None:
        if self.synchronize and torch.cuda.is_available():
            torch.cuda.synchronize()

