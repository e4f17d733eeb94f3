"""Result types shared by LoTTS and Best-of-N, so both are compared in one unit."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import torch
from PIL import Image

PHASES = ("generate", "localize", "refine", "verify")
PROMPT_REPR_CHARS = 40


def _shape(value: object) -> str:
    """An image or tensor as its size, for reprs that must not print pixels."""
    if value is None:
        return "None"
    if isinstance(value, Image.Image):
        return f"{value.width}x{value.height} {value.mode}"
    return "x".join(str(n) for n in getattr(value, "shape", ())) or type(value).__name__


@dataclass(repr=False)
class Candidate:
    """One scored image.

    seed: the seed of its noise (originals: the generator seed; refinements: the seed of the
    injected noise). parent: None for an original, else the index of the candidate it refines.
    latents: final clean latents in the pipeline's ``output_type="latent"`` layout (FLUX: packed).
    mask / heatmap: where it was re-noised, on the mask grid (UNets: latent H x W; FLUX: the
    2x2-packed token grid), None for originals. nfe: denoiser evaluations that produced it
    (localization is reported in ``Cost.nfe_by_phase``, not per candidate).
    """

    seed: int
    parent: Optional[int]
    image: Image.Image
    latents: torch.Tensor
    mask: Optional[torch.Tensor] = None
    heatmap: Optional[torch.Tensor] = None
    score: float = float("nan")
    nfe: int = 0

    def __repr__(self) -> str:
        return (f"Candidate(seed={self.seed}, parent={self.parent}, score={self.score:.3f}, "
                f"nfe={self.nfe}, image={_shape(self.image)}, latents={_shape(self.latents)}, "
                f"mask={_shape(self.mask)})")


@dataclass
class Cost:
    """What a run spent: denoiser evaluations, verifier calls and seconds per phase.

    nfe counts latents that actually went through the denoiser (a guided step counts 2).
    verifier_calls counts images scored by the selection verifier (held-out report scores are
    not part of the method's cost and are timed under ``seconds["report"]``).
    """

    nfe: int = 0
    verifier_calls: int = 0
    seconds: dict[str, float] = field(default_factory=lambda: {p: 0.0 for p in PHASES})
    nfe_by_phase: dict[str, int] = field(default_factory=lambda: {p: 0 for p in PHASES})
    capture_peak_bytes: int = 0  # largest q/k set one localization forward kept (eq. 2)

    @property
    def total_seconds(self) -> float:
        return float(sum(self.seconds.values()))


@dataclass(repr=False)
class LoTTSResult:
    """Candidates of one prompt, the selected one and the cost.

    selected: index of the best-scored candidate (ties go to the lower index). scores: the
    selected candidate's score under the selection verifier and every ``report_with`` verifier,
    by verifier name. method: "lotts", "refine" or "best_of_n".
    """

    prompt: str
    candidates: list[Candidate]
    selected: int
    cost: Cost
    scores: dict[str, float] = field(default_factory=dict)
    method: str = "lotts"

    @property
    def image(self) -> Image.Image:
        """The selected PIL image."""
        return self.candidates[self.selected].image

    @property
    def best(self) -> Candidate:
        return self.candidates[self.selected]

    @property
    def candidate_scores(self) -> list[float]:
        return [c.score for c in self.candidates]

    def __repr__(self) -> str:
        """One line: what ran, how many candidates, which won with what score, at what cost
        (the images, latents and masks are in ``candidates``)."""
        prompt = self.prompt if len(self.prompt) <= PROMPT_REPR_CHARS else \
            self.prompt[:PROMPT_REPR_CHARS - 3] + "..."
        scores = ", ".join(f"{name}={value:.3f}" for name, value in self.scores.items())
        return (f"LoTTSResult(method={self.method!r}, prompt={prompt!r}, "
                f"{len(self.candidates)} candidates, selected={self.selected}, "
                f"score={self.best.score:.3f}, nfe={self.cost.nfe}, "
                f"seconds={self.cost.total_seconds:.1f}" + (f", scores: {scores}" if scores else "")
                + ")")
