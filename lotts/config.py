"""LoTTS settings: one validated dataclass, resolved per backbone and schedule length.

Defaults follow the README's *Method* section. Fractions (``t0``, ``localization_level``) scale with
``num_inference_steps`` so one config serves 4-step tests and 50-step runs alike.

Seeds: a run with user seed ``s`` draws original ``j`` from ``torch.Generator().manual_seed(s + j)``
(the same noise the pipeline itself draws for that generator, so Best-of-N and LoTTS originals
coincide). Every other random stream (localization noise, each refinement's injected noise,
the stand-in trajectory of a user image) comes from :func:`stream_seed` of the owning seed and
the candidate index, never from batch composition.
"""
from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field, fields, replace
from typing import Any, Optional, Union

# t0 defaults per backbone, as (step, of steps) in the paper's schedules.
DEFAULT_T0 = {"sd": (25, 50), "sdxl": (15, 50), "flux": (1, 28)}
GUIDANCE_FACTOR = {"sd": 2, "sdxl": 2, "flux": 1}
TOKEN_SELECTIONS = ("content", "quality", "all")
SEARCHES = ("siblings", "chain")
LOCALIZATION_PROMPTS = 3  # original, positive, negative in one batched forward
MAX_STEPS = 10_000  # longest schedule searched for the shortest that fits
# Mask sources (lotts.mask_sources) and which of them run the attention localization forward
# or ask the verifier for saliency.
MASK_SOURCES = ("attention", "verifier", "attention+verifier", "random", "full")
ATTENTION_SOURCES = ("attention", "attention+verifier")
VERIFIER_SOURCES = ("verifier", "attention+verifier")
SALIENCY_METHODS = ("auto", "gradient", "occlusion")
MASK_COMBINES = ("sum", "product")


def localization_nfe(mask_source: str) -> int:
    """Denoiser rows one image's localization costs under `mask_source` (attention: 3 prompts)."""
    return LOCALIZATION_PROMPTS if mask_source in ATTENTION_SOURCES else 0


def stream_seed(*parts: object) -> int:
    """The seed of one random stream inside a run, from its owner's seed and what it is for
    (e.g. ``(seed, "refine", index)``): 63 bits of blake2b, stable across runs and machines.
    (A prompt's own seed in a batch run is :func:`lotts.runs.prompts.prompt_seed`.)"""
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & (2**63 - 1)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


@dataclass(frozen=True)
class ResolvedConfig:
    """Step indices for one backbone and one schedule of ``num_steps`` denoising steps.

    Steps are entries of the scheduler's timestep list; step ``i`` maps the latents entering it
    to the latents entering ``i + 1``; ``num_steps`` is the clean result.
    """

    num_steps: int
    t0: int
    global_steps: int
    localization_step: int

    @property
    def masked_stop(self) -> int:
        """First step that runs without the mask."""
        return self.num_steps - self.global_steps


def _setting(default: Any, help: str, choices: Optional[tuple[str, ...]] = None) -> Any:
    """A LoTTSConfig field whose help text (and allowed values, where a few strings are) serves
    the docstring and the CLI's --help alike."""
    metadata: dict[str, Any] = {"help": help}
    if choices is not None:
        metadata["choices"] = choices
    return field(default=default, metadata=metadata)


@dataclass
class LoTTSConfig:
    """Settings of a LoTTS run (see the README's *Method* section).

    Fields (each field's ``metadata["help"]``, also the CLI's option help):"""

    num_seeds: int = _setting(3, "originals per prompt.")
    num_refinements: int = _setting(
        2, "k: refinements per original (siblings) or chain depth per seed (chain).")
    mask_ratio: float = _setting(0.5, "r: share of latent positions re-noised.")
    t0: Optional[Union[int, float]] = _setting(
        None, "step where refinement starts: int step index, float fraction of the schedule in "
        "[0, 1), or None for the backbone default (SD 25/50, SDXL 15/50, FLUX 1/28).")
    lam: float = _setting(1.0, "weight of the original-prompt map in eq. (3).")
    global_steps: Optional[int] = _setting(
        None, "unmasked steps at the end (None: global_fraction of the schedule, at least 1).")
    localization_level: float = _setting(
        0.5, "fraction of the schedule where x0 is re-noised for the localization forward.")
    quality_prompts: tuple[str, str] = _setting(
        ("A high-quality image of {}.", "A low-quality image of {}."),
        "positive and negative templates.")
    token_selection: str = _setting(
        "content", '"content" (non-special tokens), "quality" (only the words that differ '
        "between the two templates; the original prompt uses its content tokens) or \"all\" "
        "(every non-padding token).", choices=TOKEN_SELECTIONS)
    search: str = _setting(
        "siblings", '"siblings" (k refinements of each original) or "chain" (k levels, each '
        "refining the seed's best-scored candidate so far, re-localized).", choices=SEARCHES)
    soft_mask_sigma: float = _setting(
        0.0, "Gaussian feathering of the mask in latent positions (0: hard mask).")
    refine_batch_size: Optional[int] = _setting(
        None, "refinement latents per denoiser batch (None: k).")
    generate_batch_size: Optional[int] = _setting(
        None, "originals per pipeline call (None: all of a prompt's originals at once).")
    global_fraction: float = _setting(
        0.1, "share of the schedule run unmasked when global_steps is None.")
    self_attention_blocks: Optional[tuple[int, int]] = _setting(
        None, "FLUX only: (first, last) double-stream block indices whose self-attention feeds "
        "eq. (2), e.g. (15, 18) as ConceptAttention; None: every double-stream block. Each "
        "block kept holds q and k, about 53 MB per image at 1024 px in bf16.")
    mask_source: str = _setting(
        "attention", 'where to re-noise (lotts.mask_sources): "attention" (eqs. 1-4, the paper), '
        '"verifier" (the selection verifier\'s saliency), "attention+verifier", "random" or '
        '"full" (the whole image).')
    saliency: str = _setting(
        "auto", '"auto" (input gradient where the verifier is differentiable, else occlusion), '
        '"gradient" or "occlusion".')
    mask_combine: str = _setting(
        "sum", '"sum" (mean) or "product" of the min-max normalized maps of "attention+verifier".')
    occlusion_patch: int = _setting(2, "occlusion window side in mask-grid cells.")

    def __post_init__(self) -> None:
        self._check_counts()
        self._check_fractions()
        self._check_strings()

    # ----- validation -------------------------------------------------------------------------
    def _check_counts(self) -> None:
        if not _is_int(self.num_seeds) or self.num_seeds < 1:
            raise ValueError(f"num_seeds must be an int >= 1, got {self.num_seeds!r}")
        if not _is_int(self.num_refinements) or self.num_refinements < 0:
            raise ValueError(f"num_refinements must be an int >= 0, got {self.num_refinements!r}")
        if self.global_steps is not None and (not _is_int(self.global_steps) or self.global_steps < 0):
            raise ValueError(f"global_steps must be None or an int >= 0, got {self.global_steps!r}")
        blocks = self.self_attention_blocks
        if blocks is not None:
            if (not isinstance(blocks, (tuple, list)) or len(blocks) != 2
                    or not all(_is_int(b) and b >= 0 for b in blocks) or blocks[0] > blocks[1]):
                raise ValueError("self_attention_blocks must be None or (first, last) block "
                                 f"indices with 0 <= first <= last, got {blocks!r}")
            self.self_attention_blocks = (blocks[0], blocks[1])
        for name in ("refine_batch_size", "generate_batch_size"):
            value = getattr(self, name)
            if value is not None and (not _is_int(value) or value < 1):
                raise ValueError(f"{name} must be None or an int >= 1, got {value!r}")
        if not _is_int(self.occlusion_patch) or self.occlusion_patch < 1:
            raise ValueError(f"occlusion_patch must be an int >= 1, got {self.occlusion_patch!r}")

    def _check_fractions(self) -> None:
        if not _is_number(self.mask_ratio) or not 0.0 < self.mask_ratio <= 1.0:
            raise ValueError(f"mask_ratio must be a float in (0, 1], got {self.mask_ratio!r}")
        if self.t0 is not None:
            if _is_int(self.t0):
                if self.t0 < 0:
                    raise ValueError(f"t0 as a step index must be >= 0, got {self.t0}")
            elif not _is_number(self.t0) or not 0.0 <= self.t0 < 1.0:
                raise ValueError(f"t0 must be None, an int step index or a float fraction in "
                                 f"[0, 1), got {self.t0!r}")
        if not _is_number(self.lam):
            raise ValueError(f"lam must be a finite float, got {self.lam!r}")
        if not _is_number(self.localization_level) or not 0.0 <= self.localization_level < 1.0:
            raise ValueError(f"localization_level must be a fraction in [0, 1), got "
                             f"{self.localization_level!r}")
        if not _is_number(self.soft_mask_sigma) or self.soft_mask_sigma < 0:
            raise ValueError(f"soft_mask_sigma must be a float >= 0, got {self.soft_mask_sigma!r}")
        if not _is_number(self.global_fraction) or not 0.0 <= self.global_fraction < 1.0:
            raise ValueError(f"global_fraction must be in [0, 1), got {self.global_fraction!r}")

    def _check_strings(self) -> None:
        prompts = self.quality_prompts
        if (not isinstance(prompts, (tuple, list)) or len(prompts) != 2
                or not all(isinstance(p, str) and p.count("{}") == 1 for p in prompts)):
            raise ValueError("quality_prompts must be two templates, each with one '{}', got "
                             f"{prompts!r}")
        self.quality_prompts = (prompts[0], prompts[1])
        if self.token_selection not in TOKEN_SELECTIONS:
            raise ValueError(f"token_selection must be one of {TOKEN_SELECTIONS}, got "
                             f"{self.token_selection!r}")
        if self.search not in SEARCHES:
            raise ValueError(f"search must be one of {SEARCHES}, got {self.search!r}")
        for name, allowed in (("mask_source", MASK_SOURCES), ("saliency", SALIENCY_METHODS),
                              ("mask_combine", MASK_COMBINES)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {getattr(self, name)!r}")

    # ----- resolution -------------------------------------------------------------------------
    def with_overrides(self, **changes: Any) -> LoTTSConfig:
        """A validated copy with some fields changed."""
        return replace(self, **changes)

    def t0_fraction(self, backbone: str) -> float:
        """t0 as a fraction of the schedule when it is not a step index."""
        if self.t0 is not None and not _is_int(self.t0):
            return float(self.t0)
        step, of = DEFAULT_T0[_backbone_name(backbone)]
        return step / of

    def resolved(self, backbone: str, num_steps: int) -> ResolvedConfig:
        """Step indices for `backbone` ("sd", "sdxl", "flux") and a schedule of `num_steps`.

        With refinements the schedule must hold t0 steps, at least one masked step (where the
        outside follows the parent's trajectory: what makes a refinement local) and the
        global steps; a shorter one is refused with the shortest that fits."""
        if not _is_int(num_steps) or num_steps < 1:
            raise ValueError(f"num_inference_steps must be an int >= 1, got {num_steps!r}")
        steps, problem = self._layout(backbone, num_steps)
        if steps is not None and self.num_refinements > 0 and steps.masked_stop <= steps.t0:
            problem = (f"num_inference_steps = {num_steps} is too short for t0 = {steps.t0} and "
                       f"global_steps = {steps.global_steps}: a refinement needs at least one "
                       f"masked step between them")
        if problem or steps is None:
            raise ValueError(f"{problem}; {self._shortest_schedule_hint(backbone)}")
        return steps

    def _layout(self, backbone: str, num_steps: int) -> tuple[Optional[ResolvedConfig], str]:
        """t0, global steps and localization step of a schedule, or why they do not fit."""
        # A fraction in [0, 1) always names a step of the schedule, however short it is.
        t0 = self.t0 if isinstance(self.t0, int) else \
            min(num_steps - 1, int(round(self.t0_fraction(backbone) * num_steps)))
        if t0 >= num_steps:
            return None, (f"t0 = {t0} lies beyond the schedule: it must be < "
                          f"num_inference_steps = {num_steps}")
        remaining = num_steps - t0
        if self.global_steps is None:
            global_steps = min(remaining, max(1, int(round(self.global_fraction * num_steps))))
        elif self.global_steps > remaining:
            return None, (f"global_steps = {self.global_steps} exceeds the {remaining} steps "
                          f"from t0 = {t0} to the end of the schedule")
        else:
            global_steps = self.global_steps
        level = min(num_steps - 1, int(round(self.localization_level * num_steps)))
        return ResolvedConfig(num_steps, t0, global_steps, level), ""

    def min_steps(self, backbone: str) -> Optional[int]:
        """The shortest schedule these settings fit (None if none up to MAX_STEPS does)."""
        for num_steps in range(1, MAX_STEPS + 1):
            steps, _ = self._layout(backbone, num_steps)
            if steps is not None and (self.num_refinements == 0 or steps.masked_stop > steps.t0):
                return num_steps
        return None

    def _shortest_schedule_hint(self, backbone: str) -> str:
        shortest = self.min_steps(backbone)
        if shortest is None:
            return (f"no schedule of up to {MAX_STEPS} steps fits: lower t0, global_steps or "
                    f"global_fraction")
        return f"use at least {shortest} steps (or a smaller t0 / global_steps)"

    # ----- cost -------------------------------------------------------------------------------
    def lotts_nfe(self, num_inference_steps: int, backbone: str = "sd",
                  guidance_factor: Optional[int] = None) -> int:
        """Denoiser evaluations of one LoTTS prompt, counted as in the README's *Method* section
        (guidance_factor: rows per guided step; None: the backbone's, 2 for SD/SDXL)."""
        backbone = _backbone_name(backbone)
        plan = self.resolved(backbone, num_inference_steps)
        g = GUIDANCE_FACTOR[backbone] if guidance_factor is None else guidance_factor
        n, k = self.num_seeds, self.num_refinements
        localizations = 0 if k == 0 else (n if self.search == "siblings" else n * k)
        return (n * plan.num_steps * g + localizations * localization_nfe(self.mask_source)
                + n * k * (plan.num_steps - plan.t0) * g)

    def matched_best_of_n(self, num_inference_steps: int, backbone: str = "sd") -> int:
        """The Best-of-N sample count whose NFE is closest to this LoTTS run's (at least 1)."""
        backbone = _backbone_name(backbone)
        per_sample = num_inference_steps * GUIDANCE_FACTOR[backbone]
        return max(1, int(round(self.lotts_nfe(num_inference_steps, backbone) / per_sample)))


def _backbone_name(backbone: object) -> str:
    name = getattr(backbone, "name", backbone)
    if name not in DEFAULT_T0:
        raise ValueError(f"backbone must be one of {sorted(DEFAULT_T0)}, got {backbone!r}")
    return name


LoTTSConfig.__doc__ = (LoTTSConfig.__doc__ or "") + "".join(
    f"\n    {item.name}: {item.metadata['help']}" for item in fields(LoTTSConfig))
