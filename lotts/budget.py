"""Budget matching: size every method to the same denoiser budget (NFE per prompt).

The NFE of each method is known before it runs (the cost meter then counts it exactly):
- Best-of-N and Particle Sampling: n x steps x g (g: 2 with classifier-free guidance, else 1);
- Resampling (one sample per prompt, the paper's "Resampling" row): steps x g;
- LoTTS: :meth:`LoTTSConfig.lotts_nfe` (originals, localization of the mask source,
  refinements from t0).
``plan(budget_nfe, ...)`` picks the largest size of each that fits the budget: the sample /
particle count, and for LoTTS the number of seeds at the config's k (k lowered only when even
one seed does not fit).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from lotts.config import GUIDANCE_FACTOR, LoTTSConfig

METHODS = ("lotts", "best_of_n", "resampling", "particles")


@dataclass(frozen=True)
class Plan:
    """One method sized to a budget: its size (samples, particles or LoTTS seeds), the config
    for LoTTS, and the NFE it will spend."""

    method: str
    size: int
    nfe: int
    config: Optional[LoTTSConfig] = None


def guidance_factor(backbone: str, guided: Optional[bool]) -> int:
    """Denoiser rows per step: the backbone's CFG factor, or 1 when guidance is off."""
    return GUIDANCE_FACTOR[backbone] if guided is None or guided else 1


def sample_nfe(num_steps: int, backbone: str = "sd", guided: Optional[bool] = None) -> int:
    """NFE of one full generation."""
    return num_steps * guidance_factor(backbone, guided)


def fit_lotts(budget_nfe: int, config: LoTTSConfig, num_steps: int, backbone: str = "sd",
              guided: Optional[bool] = None) -> Optional[LoTTSConfig]:
    """The config with the most seeds (then the most refinements) whose NFE fits the budget."""
    g = guidance_factor(backbone, guided)
    for k in range(config.num_refinements, -1, -1):
        best = None
        seeds = 1
        while True:
            trial = config.with_overrides(num_seeds=seeds, num_refinements=k)
            if trial.lotts_nfe(num_steps, backbone, g) > budget_nfe:
                break
            best, seeds = trial, seeds + 1
        if best is not None:
            return best
    return None


def plan(budget_nfe: int, num_steps: int, backbone: str = "sd", guided: Optional[bool] = None,
         config: Optional[LoTTSConfig] = None, methods: tuple[str, ...] = METHODS
         ) -> dict[str, Plan]:
    """Every method in `methods` sized to at most `budget_nfe` per prompt.

    Raises ValueError when the budget does not pay for one full generation.
    """
    if isinstance(budget_nfe, bool) or not isinstance(budget_nfe, int) or budget_nfe < 1:
        raise ValueError(f"budget_nfe must be an int >= 1, got {budget_nfe!r}")
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ValueError(f"unknown methods {unknown}; choose from {METHODS}")
    per = sample_nfe(num_steps, backbone, guided)
    if budget_nfe < per:
        raise ValueError(f"a budget of {budget_nfe} NFE does not pay for one generation "
                         f"({per} NFE at {num_steps} steps)")
    n = budget_nfe // per
    plans: dict[str, Plan] = {}
    for method in methods:
        if method == "lotts":
            fitted = fit_lotts(budget_nfe, config or LoTTSConfig(), num_steps, backbone, guided)
            assert fitted is not None  # k = 0 with one seed costs one generation
            plans[method] = Plan(method, fitted.num_seeds,
                                 fitted.lotts_nfe(num_steps, backbone,
                                                  guidance_factor(backbone, guided)), fitted)
        elif method == "resampling":
            plans[method] = Plan(method, 1, per)
        else:
            plans[method] = Plan(method, n, n * per)
    return plans
