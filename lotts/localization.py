"""Defect localization, equations (1)-(4) of the method.

x0 is re-noised to the localization level with noise fixed by the candidate's seed, and ONE
denoiser forward runs the original, positive and negative prompts batched (no unconditional
branch: 3 NFE per image). :class:`~lotts.attention_capture.AttentionCapture` collects the
token-averaged cross-attention maps and the finest self-attention q/k; then

    CA_diff = CA_neg - CA_pos                     (1)
    CA'     = mean_layers SA @ [CA_diff, CA_orig]  (2)  (attention_propagate)
    P, M    = quality_mask(CA'_diff, CA'_orig)     (3), (4)

at the mask grid (UNet latents; FLUX's packed token grid).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional, Sequence

import torch
import torch.nn.functional as F

from lotts.attention_capture import AttentionCapture
from lotts_kernels import masked_noise_blend, quality_mask


@dataclass
class Localization:
    """heatmap: P (B, h, w) float32; mask: M (B, h, w) bool with round(r * h * w) positions."""

    heatmap: torch.Tensor
    mask: torch.Tensor


# ----- prompts and tokens --------------------------------------------------------------------
def localization_prompts(prompt: str, templates: Sequence[str]) -> list[str]:
    """[original, positive, negative] strings, exactly as they are encoded."""
    return [prompt, templates[0].format(prompt), templates[1].format(prompt)]


def quality_spans(prompt: str, templates: Sequence[str]) -> list[Optional[list[tuple[int, int]]]]:
    """Character spans of the quality words in each localization prompt (None: the original).

    Quality words are the template words that differ between the positive and the negative
    template ("high-quality" / "low-quality"), located in the formatted string.
    """
    words = [t.replace("{}", "\x00").split() for t in templates]
    spans: list[Optional[list[tuple[int, int]]]] = [None]
    for template, own, other in ((templates[0], words[0], words[1]), (templates[1], words[1], words[0])):
        differing = [w for w in own if w not in other and "\x00" not in w]
        spans.append(_word_spans(template, differing, prompt))
    return spans


def _word_spans(template: str, words: list[str], prompt: str) -> list[tuple[int, int]]:
    slot = template.index("{}")
    spans, cursor = [], 0
    for word in words:
        start = template.index(word, cursor)
        cursor = start + len(word)
        shift = 0 if start < slot else len(prompt) - 2
        spans.append((start + shift, cursor + shift))
    return spans


def token_positions(tokenizer: Any, max_length: int, texts: list[str], selection: str,
                    spans: Optional[list[Optional[list[tuple[int, int]]]]] = None
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """Key positions of each text's selected tokens, padded: (index int64 (R, T), weight (R, T)).

    Tokenized as the pipeline encodes them (padding to `max_length`, truncation). "content":
    non-special, non-padding tokens; "all": every non-padding token; "quality": tokens
    overlapping the quality-word `spans` (a row without spans, or with no hit, uses content).
    """
    encoded = tokenizer(texts, padding="max_length", max_length=max_length, truncation=True,
                        return_offsets_mapping=selection == "quality")
    special = {getattr(tokenizer, f"{kind}_token_id", None) for kind in ("bos", "eos", "cls", "sep")}
    rows = []
    for r, (ids, attention) in enumerate(zip(encoded["input_ids"], encoded["attention_mask"])):
        valid = [i for i, a in enumerate(attention) if a]
        content = [i for i in valid if ids[i] not in special]
        chosen = valid if selection == "all" else content
        if selection == "quality" and spans is not None and spans[r]:
            offsets = encoded["offset_mapping"][r]
            hits = [i for i in content if any(s < offsets[i][1] and offsets[i][0] < e
                                              for s, e in spans[r])]
            chosen = hits or content
        if not chosen:
            raise ValueError(f"prompt {texts[r]!r} has no tokens to localize with")
        rows.append(chosen)
    width = max(len(r) for r in rows)
    index = torch.zeros(len(rows), width, dtype=torch.int64)
    weight = torch.zeros(len(rows), width)
    for r, chosen in enumerate(rows):
        index[r, : len(chosen)] = torch.tensor(chosen)
        weight[r, : len(chosen)] = 1.0
    return index, weight


# ----- the localization forward --------------------------------------------------------------
def renoise(x0: torch.Tensor, alpha: float, sigma: float, seeds: Sequence[int],
            blend_mask: torch.Tensor) -> torch.Tensor:
    """alpha * x0 + sigma * eps per row, eps drawn from that row's own seed (one launch)."""
    row_seeds = torch.tensor([int(s) for s in seeds], dtype=torch.int64)
    return masked_noise_blend(x0, x0, blend_mask, alpha, sigma, seed=row_seeds)


def localization_inputs(backbone: Any, settings: Any, prompt: str, config: Any
                        ) -> tuple[Any, tuple[torch.Tensor, torch.Tensor]]:
    """The 3-row conditioning of (original, positive, negative) prompts and their selected
    tokens (index, weight), as :func:`localize` takes them."""
    texts = localization_prompts(prompt, config.quality_prompts)
    tokenizer, length = backbone.token_source(settings)
    tokens = token_positions(tokenizer, length, texts, config.token_selection,
                             quality_spans(prompt, config.quality_prompts))
    return backbone.encode_rows(texts, settings), tokens


def localize(run: Any, x0: torch.Tensor, seeds: Sequence[int], step: int, lam: float,
             ratio: float, cond: Any, tokens: tuple[torch.Tensor, torch.Tensor]) -> Localization:
    """Masks for the images whose clean latents are `x0` (B, ...).

    run: a :class:`~lotts.backbones.Run`; step: the localization step; cond: the 3-row
    conditioning of (original, positive, negative); tokens: their (index, weight).
    """
    capture = localization_capture(run, x0, seeds, step, cond, tokens)
    return mask_from_capture(capture, x0.shape[0], run.backbone.mask_grid(run.settings), lam,
                             ratio)


def localization_capture(run: Any, x0: torch.Tensor, seeds: Sequence[int], step: int, cond: Any,
                         tokens: tuple[torch.Tensor, torch.Tensor]) -> AttentionCapture:
    """The one localization forward: x0 re-noised to `step`, the three prompts batched, and the
    attention it recorded (see :func:`localize` for the arguments)."""
    backbone, settings = run.backbone, run.settings
    batch, grid = x0.shape[0], backbone.mask_grid(settings)
    alpha, sigma = run.coefficients(step)
    everywhere = backbone.blend_mask(torch.ones(1, *grid, dtype=torch.bool, device=x0.device))
    noisy = renoise(x0, alpha, sigma, seeds, everywhere).repeat_interleave(3, dim=0)
    index, weight = tokens
    capture = AttentionCapture(index.repeat(batch, 1), weight.repeat(batch, 1),
                               torch.arange(0, 3 * batch, 3), grid, backbone.capture_mode)
    with capture.installed(backbone.denoiser):
        backbone.forward(run.scheduler_at(step), noisy, run.timesteps[step], cond.rows(batch),
                         settings)
    return capture


def contrast_maps(capture: AttentionCapture, batch: int) -> torch.Tensor:
    """(B, 2, h, w): CA_diff = CA_neg - CA_pos (eq. 1) and CA_orig, on the cross-map grid."""
    maps = capture.cross_maps()  # (3B, h, w): original, positive, negative per image
    maps = maps.view(batch, 3, *maps.shape[-2:])
    return torch.stack([maps[:, 2] - maps[:, 1], maps[:, 0]], dim=1)


def propagate_maps(capture: AttentionCapture, maps: torch.Tensor) -> torch.Tensor:
    """(B, 2, N_sa): eq. (2), `maps` (B, 2, h, w) resized to the self-attention grid, times SA."""
    columns = resize_maps(maps, capture.self_attention_grid).flatten(2).transpose(1, 2)
    return capture.propagate(columns).transpose(1, 2)


def mask_from_capture(capture: AttentionCapture, batch: int, grid: tuple[int, int], lam: float,
                      ratio: float) -> Localization:
    """Eqs. (1)-(4) on a recorded localization forward."""
    propagated = propagate_maps(capture, contrast_maps(capture, batch))
    sa_grid = capture.self_attention_grid
    heat, mask = quality_mask(propagated[:, 0], propagated[:, 1], lam=lam, ratio=ratio)
    if tuple(sa_grid) != tuple(grid):
        # The method: min-max and (3) on the propagated maps, THEN P upsampled bilinearly to
        # the mask grid and (4) taken there (normalizing after upsampling reweights the terms).
        heat = resize_maps(heat.view(batch, 1, *sa_grid), grid).flatten(1)
        # Selection only: with lam = 0 and a constant second input, quality_mask ranks P itself.
        _, mask = quality_mask(heat, torch.zeros_like(heat), lam=0.0, ratio=ratio)
    return Localization(heat.view(batch, *grid), mask.view(batch, *grid))


def resize_maps(x: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """(..., h, w) maps resized bilinearly to `grid` (unchanged when already there)."""
    if tuple(x.shape[-2:]) == tuple(grid):
        return x
    return F.interpolate(x, size=grid, mode="bilinear", align_corners=False)
