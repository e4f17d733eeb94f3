"""The methods ``lotts generate`` runs, and their sizes under one NFE budget.

Each method is a ``(prompt, seed, on_phase) -> LoTTSResult`` sampler over the same pipeline,
selection verifier and cost meter: "lotts", "best-of-n", "resampling" (one sample per prompt,
the paper's Resampling row) and "particles" (:func:`lotts.particle_sampling`). With a budget
(``--budget-nfe N``) :func:`lotts.budget.plan` sizes each one to at most N NFE per prompt.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Optional

from lotts.budget import plan

ALL_METHODS = ("lotts", "best-of-n", "resampling", "particles")
_BUDGET_NAMES = {"lotts": "lotts", "best-of-n": "best_of_n", "resampling": "resampling",
                 "particles": "particles"}
Sampler = Callable[[str, int, Callable[[str], None]], Any]


@dataclass
class Sizes:
    """How big each method runs: LoTTS's config, Best-of-N's n, the particle count, and the
    NFE per prompt each will spend when a budget sized them (else None)."""

    config: Any
    best_of_n: int
    particles: int
    budget_nfe: Optional[int] = None
    planned_nfe: dict[str, int] = field(default_factory=dict)
    particle_options: dict[str, Any] = field(default_factory=dict)

    def spec_config(self, method: str) -> dict[str, Any]:
        """What decides the method's images, for its run spec (and the output's hash)."""
        import dataclasses
        if method == "lotts":
            return dataclasses.asdict(self.config)
        if method == "resampling":
            return {"n": 1}
        if method == "particles":
            return {"num_particles": self.particles, **self.particle_options}
        return {"n": self.best_of_n}


def budget_sizes(budget_nfe: int, config: Any, num_steps: int, backbone: str, guided: bool,
                 particle_options: Optional[dict] = None) -> Sizes:
    """Every method sized to at most `budget_nfe` NFE per prompt (:func:`lotts.budget.plan`)."""
    plans = plan(budget_nfe, num_steps, backbone, guided, config)
    return Sizes(plans["lotts"].config, plans["best_of_n"].size, plans["particles"].size,
                 budget_nfe, {m: plans[_BUDGET_NAMES[m]].nfe for m in ALL_METHODS},
                 dict(particle_options or {}))


def make_method_sampler(method: str, pipe: Any, verifier: Any, sizes: Sizes,
                        pipe_kwargs: dict[str, Any]) -> Sampler:
    """The ``(prompt, seed, on_phase) -> result`` of one method."""
    from lotts import LoTTS, best_of_n, particle_sampling
    if method not in ALL_METHODS:
        raise ValueError(f"unknown method {method!r}; choose from {ALL_METHODS}")

    def sample(prompt: str, seed: int, on_phase: Callable[[str], None]) -> Any:
        if method == "lotts":
            runner = LoTTS(pipe, verifier=verifier, config=sizes.config, on_phase=on_phase)
            return runner(prompt, seed=seed, **pipe_kwargs)
        if method == "particles":
            return particle_sampling(pipe, prompt, verifier, sizes.particles, seed=seed,
                                     on_phase=on_phase, **sizes.particle_options, **pipe_kwargs)
        n = 1 if method == "resampling" else sizes.best_of_n
        result = best_of_n(pipe, prompt, n, verifier, seed=seed, on_phase=on_phase, **pipe_kwargs)
        assert not isinstance(result, list)  # one prompt, one result
        if method == "resampling":
            result.method = "resampling"
        return result
    return sample
