"""Where to re-noise: the mask sources of ``LoTTSConfig.mask_source``.

Every source gives a heatmap on the mask grid (higher = refine here) and the same exact top-r
mask (round(r * h * w) positions, ties to the lower index), as a :class:`Localization`:

- ``attention``: the paper's eqs. (1)-(4) (:mod:`lotts.localization`), 3 NFE per image.
- ``verifier``: the selection verifier's own spatial evidence on the candidate. For a
  differentiable verifier (one with ``score_pixels``, see :func:`pixel_scorer`) the input-gradient
  saliency |d score / d pixels| (L2 over channels); for any other callable, occlusion on the
  mask grid (each window replaced by a blurred copy of the image; evidence = how much the score
  RISES when the window is hidden). Both are average-pooled to the mask grid. Cost: one verifier
  call per image for the gradient (a forward and a backward), one per window per image for
  occlusion; no denoiser call.
- ``attention+verifier``: both maps min-max normalized per image, then their mean
  (``mask_combine="sum"``) or their product (``"product"``, high only where both are).
- ``random``: uniform noise from the candidate's own seed (an ablation: same area, no signal).
- ``full``: the whole image (heatmap 1 everywhere, mask all True whatever r is): re-noising the
  whole image from t0, the "whole-image refinement" baseline.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageFilter

from lotts.config import (
    ATTENTION_SOURCES,
    MASK_COMBINES,
    MASK_SOURCES,
    SALIENCY_METHODS,
    VERIFIER_SOURCES,
    localization_nfe,
)
from lotts.localization import Localization, localize
from lotts.verifiers import check_scores
from lotts_kernels import quality_mask
from lotts_kernels.ops.quality_mask import min_max_normalize

__all__ = ["MASK_COMBINES", "MASK_SOURCES", "SALIENCY_METHODS", "MaskInputs", "combine",
           "gradient_saliency", "localization_nfe", "localize_with_source", "occlusion_saliency",
           "pixel_scorer", "random_heat", "saliency_calls", "source_heatmap", "top_r_mask",
           "verifier_saliency"]


# ----- masks from heatmaps -------------------------------------------------------------------
def top_r_mask(heat: torch.Tensor, ratio: float) -> torch.Tensor:
    """(B, h, w) bool: the round(ratio * h * w) largest positions of each map (ties to the lower
    index), selected by the same kernel as eq. (4)."""
    batch, grid = heat.shape[0], tuple(heat.shape[-2:])
    flat = heat.reshape(batch, -1).float()
    _, mask = quality_mask(flat, torch.zeros_like(flat), lam=0.0, ratio=ratio)
    return mask.view(batch, *grid)


def normalized(heat: torch.Tensor) -> torch.Tensor:
    """Per-image min-max to [0, 1] (a constant map becomes 0): eq. (3)'s normalization."""
    return min_max_normalize(heat.reshape(heat.shape[0], -1)).view_as(heat)


def combine(attention: torch.Tensor, evidence: torch.Tensor, how: str = "sum") -> torch.Tensor:
    """attention+verifier: mean ("sum") or product ("product") of the normalized maps."""
    a, v = normalized(attention), normalized(evidence)
    if how == "sum":
        return (a + v) / 2
    if how == "product":
        return a * v
    raise ValueError(f"mask_combine must be one of {MASK_COMBINES}, got {how!r}")


def random_heat(grid: tuple[int, int], seeds: Sequence[int]) -> torch.Tensor:
    """(B, h, w) uniform noise, row b from its own seed."""
    return torch.stack([torch.rand(grid, generator=torch.Generator().manual_seed(int(s)))
                        for s in seeds])


# ----- verifier saliency ---------------------------------------------------------------------
PixelScorer = Callable[[torch.Tensor, list[str]], torch.Tensor]


def pixel_scorer(verifier: Any) -> Optional[PixelScorer]:
    """The verifier's differentiable score of a float (B, 3, H, W) batch in [0, 1], or None.

    A verifier opts in by a ``score_pixels(pixels, prompts)`` method that gives the same scores
    as calling it on the images (the world's CNNs do). Wrappers are looked through via ``fn``.
    """
    for candidate in (verifier, getattr(verifier, "fn", None)):
        scorer = getattr(candidate, "score_pixels", None)
        if callable(scorer):
            return scorer
    return None


def images_to_pixels(images: Sequence[Image.Image]) -> torch.Tensor:
    """PIL images (one size) -> float (B, 3, H, W) in [0, 1]."""
    arrays = [np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0 for im in images]
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()


def pool_to_grid(per_pixel: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """(B, H, W) -> (B, h, w) by area averaging (H, W need not be multiples of h, w)."""
    return F.adaptive_avg_pool2d(per_pixel[:, None].float(), grid)[:, 0]


def gradient_saliency(scorer: PixelScorer, images: Sequence[Image.Image], prompts: list[str],
                      grid: tuple[int, int]) -> torch.Tensor:
    """|d score / d pixel| (L2 over RGB) of each image, pooled to `grid`: (B, h, w)."""
    pixels = images_to_pixels(images)
    with torch.enable_grad():
        pixels.requires_grad_(True)
        scores = scorer(pixels, prompts)
        (grad,) = torch.autograd.grad(scores.float().sum(), pixels)
    return pool_to_grid(grad.norm(dim=1), grid)


def occlusion_windows(grid: tuple[int, int], patch: int) -> list[tuple[int, int, int, int]]:
    """(row0, row1, col0, col1) windows of `patch` x `patch` grid cells tiling the grid."""
    return [(r, min(r + patch, grid[0]), c, min(c + patch, grid[1]))
            for r in range(0, grid[0], patch) for c in range(0, grid[1], patch)]


def occlusion_saliency(verifier: Callable[..., Any], images: Sequence[Image.Image],
                       prompts: list[str], grid: tuple[int, int], patch: int = 2
                       ) -> tuple[torch.Tensor, int]:
    """Score rise when each window of `patch` grid cells is replaced by a blurred copy of the
    image: (B, h, w) evidence (a window's value on all its cells) and the verifier calls spent.

    Works for any verifier callable ``(images, prompts) -> scores``; the base scores are one
    more call per image.
    """
    windows = occlusion_windows(grid, patch)
    heat = torch.zeros(len(images), *grid)
    calls = 0
    for b, (image, prompt) in enumerate(zip(images, prompts)):
        image = image.convert("RGB")
        sx, sy = image.width / grid[1], image.height / grid[0]
        blurred = image.filter(ImageFilter.GaussianBlur(radius=max(1.0, patch * max(sx, sy) / 2)))
        variants = [image]
        for r0, r1, c0, c1 in windows:
            box = (int(round(c0 * sx)), int(round(r0 * sy)), int(round(c1 * sx)), int(round(r1 * sy)))
            occluded = image.copy()
            occluded.paste(blurred.crop(box), box[:2])
            variants.append(occluded)
        scores = check_scores(verifier(variants, [prompt] * len(variants)), len(variants))
        calls += len(variants)
        for (r0, r1, c0, c1), score in zip(windows, scores[1:].tolist()):
            heat[b, r0:r1, c0:c1] = score - float(scores[0])
    return heat, calls


def verifier_saliency(verifier: Callable[..., Any], images: Sequence[Image.Image],
                      prompts: list[str], grid: tuple[int, int], method: str = "auto",
                      patch: int = 2) -> tuple[torch.Tensor, int]:
    """(B, h, w) spatial evidence of `verifier` on `images` and the verifier calls it cost.

    method "auto": the gradient where the verifier is differentiable, else occlusion.
    """
    if method not in SALIENCY_METHODS:
        raise ValueError(f"saliency must be one of {SALIENCY_METHODS}, got {method!r}")
    scorer = pixel_scorer(verifier) if method != "occlusion" else None
    if scorer is not None:
        return gradient_saliency(scorer, images, prompts, grid), len(images)
    if method == "gradient":
        raise ValueError(f"saliency='gradient' needs a differentiable verifier (a score_pixels "
                         f"method); {type(verifier).__name__} has none: use 'occlusion' or 'auto'")
    return occlusion_saliency(verifier, images, prompts, grid, patch)


# ----- one entry point for the sampler -------------------------------------------------------
@dataclass
class MaskInputs:
    """What the sources may read for B parent images.

    run: the :class:`~lotts.backbones.Run`; x0: their clean latents; images: decoded PIL images;
    localize_seeds: the localization noise seeds (attention) and the random map's seeds;
    loc: the (conditioning, tokens) of :func:`lotts.localization.localization_inputs`, built
    lazily by ``loc_inputs()`` only when an attention source needs it.
    """

    run: Any
    x0: torch.Tensor
    images: Sequence[Image.Image]
    localize_seeds: Sequence[int]
    loc_inputs: Callable[[], tuple[Any, tuple[torch.Tensor, torch.Tensor]]]


def source_heatmap(source: str, config: Any, verifier: Any, inputs: MaskInputs,
                   step: int) -> tuple[torch.Tensor, int, int]:
    """(B, h, w) heatmap of `source`, the verifier calls it spent and the peak bytes of the
    attention capture (denoiser rows are counted by the run's cost meter as they happen)."""
    if source not in MASK_SOURCES:
        raise ValueError(f"mask_source must be one of {MASK_SOURCES}, got {source!r}")
    run = inputs.run
    grid = run.backbone.mask_grid(run.settings)
    batch = inputs.x0.shape[0]
    if source == "full":
        return torch.ones(batch, *grid), 0, 0
    if source == "random":
        return random_heat(grid, inputs.localize_seeds), 0, 0
    heat, calls, capture_bytes = None, 0, 0
    if source in ATTENTION_SOURCES:
        cond, tokens = inputs.loc_inputs()
        found = localize(run, inputs.x0, inputs.localize_seeds, step, config.lam,
                         config.mask_ratio, cond, tokens, config.self_attention_blocks)
        heat, capture_bytes = found.heatmap.float().cpu(), found.capture_bytes
    if source in VERIFIER_SOURCES:
        evidence, calls = verifier_saliency(verifier, inputs.images, [run.prompt] * batch, grid,
                                            config.saliency, config.occlusion_patch)
        heat = evidence if heat is None else combine(heat, evidence, config.mask_combine)
    assert heat is not None
    return heat, calls, capture_bytes


def localize_with_source(config: Any, verifier: Any, inputs: MaskInputs, step: int
                         ) -> tuple[Localization, int]:
    """The Localization of ``config.mask_source`` at ``config.mask_ratio``, and its verifier calls."""
    heat, calls, capture_bytes = source_heatmap(config.mask_source, config, verifier, inputs, step)
    mask = (torch.ones_like(heat, dtype=torch.bool) if config.mask_source == "full"
            else top_r_mask(heat, config.mask_ratio))
    return Localization(heat, mask, capture_bytes), calls


def saliency_calls(mask_source: str, saliency: str, differentiable: bool,
                   grid: tuple[int, int], patch: int) -> int:
    """Verifier calls one image's localization costs under `mask_source`."""
    if mask_source not in VERIFIER_SOURCES:
        return 0
    if saliency == "gradient" or (saliency == "auto" and differentiable):
        return 1
    return 1 + math.ceil(grid[0] / patch) * math.ceil(grid[1] / patch)
