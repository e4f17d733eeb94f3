"""Localized resampling: re-noise inside the mask at t0, denoise with the outside held to the
parent's trajectory, then a few unmasked global steps.

At t0 the inside becomes alpha_t0 * x0 + sigma_t0 * eps (eps from the refinement's own seed)
and the outside the parent's latents entering t0; after every masked step the outside is reset
to the parent's latents at the same step (``masked_noise_blend`` with sigma = 0, which takes the
parent bit-exactly where the mask is 0). With ``global_steps = 0`` the final latents outside
the mask are the parent's, exactly.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Optional, Sequence

import torch
import torch.nn.functional as F

from lotts.config import ResolvedConfig, derive_seed
from lotts_kernels import masked_noise_blend


# ----- parent trajectories -------------------------------------------------------------------
class CachedTrajectory:
    """Latents entering steps start..num_steps (the last: clean), cached during denoising.

    tensors[i - start] is a batch; `row` picks this candidate's row.
    """

    def __init__(self, start: int, tensors: Sequence[torch.Tensor], row: int = 0) -> None:
        self.start, self.tensors, self.row = start, tensors, row

    def at(self, step: int) -> torch.Tensor:
        if step < self.start or step - self.start >= len(self.tensors):
            raise IndexError(f"trajectory holds steps {self.start}.."
                             f"{self.start + len(self.tensors) - 1}, not {step}")
        return self.tensors[step - self.start][self.row: self.row + 1]


class NoisedTrajectory:
    """Stand-in trajectory of an image that was not generated here: alpha_i * x0 + sigma_i * eps
    with one fixed eps (drawn from `seed`), and x0 itself once the schedule ends."""

    def __init__(self, run: Any, x0: torch.Tensor, seed: int) -> None:
        self.run, self.x0, self.seed = run, x0, seed
        self.everywhere = run.backbone.blend_mask(
            torch.ones(1, *run.backbone.mask_grid(run.settings), dtype=torch.bool, device=x0.device))

    def at(self, step: int) -> torch.Tensor:
        if step >= self.run.num_steps:
            return self.x0
        alpha, sigma = self.run.coefficients(step)
        return masked_noise_blend(self.x0, self.x0, self.everywhere, alpha, sigma, seed=self.seed)


# ----- masks ---------------------------------------------------------------------------------
def soften(mask: torch.Tensor, sigma: float) -> torch.Tensor:
    """Feathered mask: the hard (B, h, w) mask blurred by a Gaussian of `sigma` grid cells.

    The kernel is cut at 3 sigma, so cells farther than that from the mask stay exactly 0 and
    keep the parent's latents exactly. sigma = 0 returns the hard mask unchanged.
    """
    if sigma <= 0:
        return mask
    radius = max(1, math.ceil(3 * sigma))
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float32, device=mask.device)
    kernel = torch.exp(-0.5 * (offsets / sigma) ** 2)
    kernel = kernel / kernel.sum()
    x = mask.float()[:, None]
    x = F.conv2d(F.pad(x, (radius, radius, 0, 0), mode="replicate"), kernel.view(1, 1, 1, -1))
    x = F.conv2d(F.pad(x, (0, 0, radius, radius), mode="replicate"), kernel.view(1, 1, -1, 1))
    return x[:, 0].clamp(0.0, 1.0)


# ----- refinements ---------------------------------------------------------------------------
@dataclass
class RefineJob:
    """One refinement: parent's clean latents (1, ...), its trajectory, a grid mask (1, h, w)
    (bool, or float when soft) and the seed of the injected noise."""

    parent: int
    x0: torch.Tensor
    trajectory: Any
    mask: torch.Tensor
    seed: int


@dataclass
class RefineOutcome:
    latents: torch.Tensor  # (1, ...) final clean latents
    trajectory: Optional[CachedTrajectory]


def refine_batch(run: Any, jobs: Sequence[RefineJob], steps: ResolvedConfig,
                 record: bool = False) -> list[RefineOutcome]:
    """Run `jobs` as one batch from t0 to the end; `record` keeps their own trajectories."""
    backbone, t0 = run.backbone, steps.t0
    masks = backbone.blend_mask(torch.cat([job.mask for job in jobs]))
    x0 = torch.cat([job.x0 for job in jobs])
    outside = torch.cat([job.trajectory.at(t0) for job in jobs])
    alpha, sigma = run.coefficients(t0)
    seeds = torch.tensor([job.seed for job in jobs], dtype=torch.int64)  # one stream per row
    latents = masked_noise_blend(x0, outside, masks, alpha, sigma, seed=seeds)
    recorded = [latents] if record else None

    def hold_outside(i: int, latents: torch.Tensor) -> torch.Tensor:
        if i + 1 <= steps.masked_stop:
            parents = torch.cat([job.trajectory.at(i + 1) for job in jobs])
            latents = masked_noise_blend(latents, parents, masks, 1.0, 0.0)
        if recorded is not None:
            recorded.append(latents)
        return latents

    step_seeds = [derive_seed(job.seed, "scheduler-step") for job in jobs]
    final = run.denoise(latents, t0, run.num_steps, step_seeds, hold_outside)
    return [RefineOutcome(final[b: b + 1],
                          CachedTrajectory(t0, recorded, b) if recorded is not None else None)
            for b in range(len(jobs))]
