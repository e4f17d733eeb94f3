"""LoTTS: generate candidates, localize defects, resample locally, keep the best-scored.

``LoTTS(pipe, verifier, config)(prompt, seed=0, **pipe_kwargs)`` runs, per prompt, the steps
that :meth:`LoTTS._run` numbers:

1. generate originals: the pipeline's own ``__call__`` (``output_type="latent"``) with noise
   from ``seed + j``, caching each trajectory from t0 on through ``callback_on_step_end``;
2. localize the parents of this level (:mod:`lotts.localization`);
3. refine them (:mod:`lotts.resampling`): "siblings" is one level making k refinements of each
   original; "chain" is k levels, each refining the seed's best-scored candidate so far;
4. select the best-scored candidate, originals included (ties go to the lower index);
5. report: held-out verifiers score the selected image (not part of the method's cost).

Every candidate is scored once, when it is made. The pipeline is left as found: base
generation steps a copy of its scheduler, the NFE hook and the attention processors are
removed/restored in ``finally`` blocks.
"""
from __future__ import annotations

import copy
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Optional, Union

import torch
from PIL import Image

from lotts.backbones import Backbone, Run, Settings, detect_backbone
from lotts.backbones.callbacks import guidance_after_callback
from lotts.config import LoTTSConfig, ResolvedConfig, stream_seed
from lotts.cost import CostMeter
from lotts.localization import Localization, localization_inputs
from lotts.mask_sources import MaskInputs, localize_with_source
from lotts.resampling import (
    CachedTrajectory,
    NoisedTrajectory,
    RefineJob,
    RefineOutcome,
    Trajectory,
    refine_batch,
    soften,
)
from lotts.result import Candidate, LoTTSResult
from lotts.verifiers import check_scores, load_verifier

Prompt = Union[str, Sequence[str]]
VerifierSpec = Union[str, Callable[..., Any]]
Verifier = Callable[..., Any]


# ----- verifiers -----------------------------------------------------------------------------
def verifier_label(verifier: Any) -> str:
    """The name a loaded verifier's scores go under in ``LoTTSResult.scores``."""
    return (getattr(verifier, "name", None) or getattr(verifier, "__name__", None)
            or type(verifier).__name__)


def _report_verifiers(report_with: Any, options: dict[str, Any]) -> dict[str, Verifier]:
    if report_with is None:
        return {}
    if isinstance(report_with, dict):
        return {name: load_verifier(spec, **options) for name, spec in report_with.items()}
    specs = [report_with] if isinstance(report_with, str) or callable(report_with) else report_with
    loaded = [load_verifier(spec, **options) for spec in specs]
    return {verifier_label(v): v for v in loaded}


def score_images(verifier: Verifier, images: Sequence[Image.Image], prompt: str) -> list[float]:
    """One validated score per image."""
    raw = verifier(list(images), [prompt] * len(images))
    return [float(s) for s in check_scores(raw, len(images), verifier_label(verifier)).tolist()]


# ----- inputs --------------------------------------------------------------------------------
def _as_rgb_of_size(image: Image.Image, size: tuple[int, int]) -> Image.Image:
    """`image` as RGB at `size` (width, height): what the pipeline's VAE encodes."""
    if image.mode != "RGB":
        image = image.convert("RGB")
    return image if image.size == size else image.resize(size, Image.Resampling.BICUBIC)


def _prompts(prompt: Prompt) -> tuple[list[str], bool]:
    """(prompts, single) with every prompt a non-empty string."""
    single = isinstance(prompt, str)
    prompts: list[Any] = [prompt] if single else list(prompt) if prompt is not None else []
    if not prompts:
        raise ValueError("prompt must be a non-empty string or a non-empty list of strings")
    for p in prompts:
        if not isinstance(p, str) or not p.strip():
            raise ValueError(f"every prompt must be a non-empty string, got {p!r}")
    return prompts, single


def _check_seed(seed: Any, count: int) -> int:
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**63 - count:
        raise ValueError(f"seed must be an int in [0, 2**63 - {count}), got {seed!r}")
    return seed


@contextmanager
def _scheduler_copy(pipe: Any) -> Iterator[None]:
    """Let ``__call__`` step a copy, so the user's scheduler keeps its state."""
    original = pipe.scheduler
    pipe.scheduler = copy.deepcopy(original)
    try:
        yield
    finally:
        pipe.scheduler = original


# ----- the candidates of one prompt ----------------------------------------------------------
@dataclass
class Pool:
    """Candidates in the order they were made, each with its root original and, where it can
    be refined further, its trajectory."""

    candidates: list[Candidate] = field(default_factory=list)
    roots: list[int] = field(default_factory=list)
    trajectories: dict[int, Trajectory] = field(default_factory=dict)

    def add(self, candidate: Candidate, trajectory: Optional[Trajectory] = None) -> int:
        index = len(self.candidates)
        self.candidates.append(candidate)
        parent = candidate.parent
        self.roots.append(index if parent is None else self.roots[parent])
        if trajectory is not None:
            self.trajectories[index] = trajectory
        return index

    def originals(self) -> list[int]:
        return [i for i, c in enumerate(self.candidates) if c.parent is None]

    def best(self, members: Optional[Sequence[int]] = None) -> int:
        """The best-scored of `members` (default: all); ties go to the lower index."""
        indices = range(len(self.candidates)) if members is None else members
        return max(indices, key=lambda i: (self.candidates[i].score, -i))

    def best_of_root(self, root: int) -> int:
        return self.best([i for i, r in enumerate(self.roots) if r == root])


class LoTTS:
    """Localized test-time scaling around a diffusers pipeline.

    verifier (alias select_with): a callable ``(images, prompts) -> scores`` (higher is
    better), or a built-in name/path for :func:`lotts.verifiers.load_verifier`. report_with:
    verifiers (a list, or a dict by name) that score the selected image for held-out
    reporting only. verifier_options go to ``load_verifier`` (device, dtype, path, ...).
    on_phase(name) is called as each phase ("generate", "localize", "refine", "verify",
    "report") starts, e.g. for a progress display.
    """

    def __init__(self, pipe: Any, verifier: Optional[VerifierSpec] = None,
                 config: Optional[LoTTSConfig] = None, *, select_with: Optional[VerifierSpec] = None,
                 report_with: Any = None, verifier_options: Optional[dict[str, Any]] = None,
                 on_phase: Optional[Callable[[str], None]] = None) -> None:
        self.backbone: Backbone = detect_backbone(pipe)
        self.pipe = pipe
        if config is not None and not isinstance(config, LoTTSConfig):
            raise TypeError(f"config must be a LoTTSConfig, got {type(config).__name__}")
        self.config = config or LoTTSConfig()
        spec = select_with if select_with is not None else verifier
        if spec is None:
            raise ValueError("LoTTS needs a verifier (verifier= or select_with=)")
        options = verifier_options or {}
        self.verifier: Verifier = load_verifier(spec, **options)
        self.report_verifiers = _report_verifiers(report_with, options)
        self.on_phase = on_phase

    # ----- public API -------------------------------------------------------------------------
    def __call__(self, prompt: Prompt, seed: int = 0, **pipe_kwargs: Any
                 ) -> Union[LoTTSResult, list[LoTTSResult]]:
        """Run LoTTS on one prompt (returns a result) or a list (returns a list, in order)."""
        prompts, single = _prompts(prompt)
        seed = _check_seed(seed, self.config.num_seeds)
        if self.config.num_refinements > 0:
            self.backbone.check_scheduler()
        settings = self._settings(pipe_kwargs)
        results = [self._run(p, seed, settings) for p in prompts]
        return results[0] if single else results

    def refine(self, image: Union[Image.Image, torch.Tensor], prompt: str, seed: int = 0,
               **pipe_kwargs: Any) -> LoTTSResult:
        """Localize and refine an image the user already has (a PIL image or clean latents in
        the pipeline's latent layout). The image competes as candidate 0 beside its k
        refinements (or its k-level chain). Its trajectory is stood in for by the scheduler's
        own noising of its latents with one fixed noise.

        A PIL image of any mode is converted to RGB (grayscale spread to three channels,
        alpha dropped, palettes expanded). It is refined at its own size unless ``height``
        and ``width`` are given: then it is first resized to them (bicubic), so candidate 0
        and every refinement have the size asked for. Either way the size must suit the
        pipeline (e.g. multiples of 8 for SD), or a ValueError says which it needs."""
        prompts, single = _prompts(prompt)
        if not single:
            raise ValueError("refine takes one prompt (a string)")
        seed = _check_seed(seed, 1)
        if not isinstance(image, (Image.Image, torch.Tensor)):
            raise TypeError(f"image must be a PIL image or a latents tensor, got {type(image).__name__}")
        self.backbone.check_scheduler()
        settings = self._settings(self._size_from(image, pipe_kwargs))
        if isinstance(image, Image.Image):
            image = _as_rgb_of_size(image, (settings.width, settings.height))
        return self._run(prompts[0], seed, settings, given=image)

    # ----- one prompt, as the method reads -----------------------------------------------------
    def _run(self, prompt: str, seed: int, settings: Settings,
             given: Union[Image.Image, torch.Tensor, None] = None) -> LoTTSResult:
        config = self.config
        meter = CostMeter(synchronize=settings.device.type == "cuda", on_phase=self.on_phase)
        pool = Pool()
        with torch.no_grad(), meter.counting(self.backbone.denoiser):
            with meter.phase("generate"):
                cond = self.backbone.encode(prompt, settings)
                run = Run(self.backbone, settings, prompt, cond, self.backbone.noise_shape(settings))
                plan = config.resolved(self.backbone.name, run.num_steps)

            # 1. Generate the originals (or take the user's image as the one original).
            if given is None:
                self._generate_originals(run, plan, seed, pool, meter)
            else:
                self._add_given(run, given, seed, pool, meter)

            # 2.-3. Localize and refine, level by level: siblings is one level of k children
            # per original, chain is k levels of one child of each seed's best so far.
            k = config.num_refinements
            levels, per_parent = (0, 0) if k == 0 else (1, k) if config.search == "siblings" else (k, 1)
            encoded: list[Any] = []  # the three localization prompts, encoded once if needed

            def localization_batch() -> Any:
                if not encoded:
                    encoded.append(localization_inputs(self.backbone, settings, prompt, config))
                return encoded[0]
            for level in range(levels):
                parents = [pool.best_of_root(root) for root in pool.originals()]
                with meter.phase("localize"):
                    found = self._localize(run, plan, pool, parents, meter, localization_batch)
                meter.cost.capture_peak_bytes = max(meter.cost.capture_peak_bytes,
                                                    found.capture_bytes)
                self._refine(run, plan, pool, parents, found, per_parent, seed, meter,
                             record=level < levels - 1)

            # 4. Select.
            selected = pool.best()

            # 5. Report: held-out scores of the selected image, timed apart from the method.
            scores = {verifier_label(self.verifier): pool.candidates[selected].score}
            if self.report_verifiers:
                with meter.phase("report"):
                    scores.update(self._held_out_scores(pool.candidates[selected].image, prompt))
        method = "lotts" if given is None else "refine"
        return LoTTSResult(prompt, pool.candidates, selected, meter.cost, scores, method)

    # ----- 1. originals -----------------------------------------------------------------------
    def _generate_originals(self, run: Run, plan: ResolvedConfig, seed: int, pool: Pool,
                            meter: CostMeter) -> None:
        count = self.config.num_seeds
        chunk = self.config.generate_batch_size or count
        cache_from = plan.t0 if self.config.num_refinements > 0 else None
        for start in range(0, count, chunk):
            seeds = [seed + j for j in range(start, min(count, start + chunk))]
            with meter.phase("generate"):
                before = meter.rows_in_phase("generate")
                latents, cached = self._pipeline_latents(run, seeds, cache_from)
                images = self.backbone.decode(latents, run.settings)
                nfe = (meter.rows_in_phase("generate") - before) // len(seeds)
            scores = self._score(images, run.prompt, meter)
            for row, (s, image, score) in enumerate(zip(seeds, images, scores)):
                trajectory = None if cached is None else CachedTrajectory(plan.t0, cached, row)
                pool.add(Candidate(s, None, image, latents[row: row + 1], score=score, nfe=nfe),
                         trajectory)

    def _pipeline_latents(self, run: Run, seeds: list[int], cache_from: Optional[int]
                          ) -> tuple[torch.Tensor, Optional[list[torch.Tensor]]]:
        """The pipeline's own loop, trajectories cached from `cache_from` on."""
        settings, backbone = run.settings, self.backbone
        generators = [torch.Generator("cpu").manual_seed(s) for s in seeds]
        noise = backbone.initial_noise(settings, generators)
        cached: Optional[list[torch.Tensor]] = None
        if cache_from is not None:
            cached = [backbone.entering_latents(noise, run)] if cache_from == 0 else []
        user_callback = settings.callback

        def on_step_end(pipe: Any, i: int, t: Any, tensors: dict[str, Any]) -> dict[str, Any]:
            out = (user_callback(pipe, i, t, tensors) if user_callback is not None else None) or {}
            if user_callback is not None and cache_from is not None and i + 1 == cache_from:
                run.step_settings = guidance_after_callback(run, run.settings)  # entering t0
            if cached is not None and cache_from is not None and i + 1 >= cache_from:
                cached.append(out.get("latents", tensors["latents"]))
            return out

        kwargs = {**settings.passthrough, **backbone.call_kwargs(run)}
        kwargs.update(height=settings.height, width=settings.width,
                      num_inference_steps=settings.num_inference_steps,
                      guidance_scale=settings.guidance_scale, num_images_per_prompt=len(seeds),
                      latents=noise, generator=generators, output_type="latent", return_dict=False,
                      callback_on_step_end=on_step_end,
                      callback_on_step_end_tensor_inputs=list(settings.callback_inputs))
        with _scheduler_copy(backbone.pipe):
            latents = backbone.pipe(**kwargs)[0]
        if cached is not None and cache_from is not None and len(cached) != run.num_steps - cache_from + 1:
            raise RuntimeError(f"cached {len(cached)} trajectory steps, expected "
                               f"{run.num_steps - cache_from + 1}: the pipeline's loop and "
                               "LoTTS' schedule disagree")
        return latents, cached

    def _add_given(self, run: Run, given: Union[Image.Image, torch.Tensor], seed: int, pool: Pool,
                   meter: CostMeter) -> None:
        settings = run.settings
        with meter.phase("generate"):
            if isinstance(given, Image.Image):
                latents, image = self.backbone.encode_image(given, settings), given
            else:
                latents = self.backbone.check_latents(given, settings)
                image = self.backbone.decode(latents, settings)[0]
        (score,) = self._score([image], run.prompt, meter)
        pool.add(Candidate(seed, None, image, latents, score=score),
                 NoisedTrajectory(run, latents, stream_seed(seed, "trajectory")))

    # ----- 2. localize ------------------------------------------------------------------------
    def _localize(self, run: Run, plan: ResolvedConfig, pool: Pool, parents: list[int],
                  meter: CostMeter, localization_batch: Callable[[], Any]) -> Localization:
        """Each parent's mask from ``config.mask_source`` (:mod:`lotts.mask_sources`); the
        saliency's verifier calls count as the method's cost, its denoiser rows are metered."""
        inputs = MaskInputs(run, torch.cat([pool.candidates[p].latents for p in parents]),
                            [pool.candidates[p].image for p in parents],
                            [stream_seed(pool.candidates[p].seed, "localize", p) for p in parents],
                            localization_batch)
        found, calls = localize_with_source(self.config, self.verifier, inputs,
                                            plan.localization_step)
        meter.count_verifier(calls)
        return found

    # ----- 3. refine --------------------------------------------------------------------------
    def _refine(self, run: Run, plan: ResolvedConfig, pool: Pool, parents: list[int],
                found: Localization, per_parent: int, seed: int, meter: CostMeter,
                record: bool) -> None:
        """`per_parent` refinements of each parent, in batches of ``refine_batch_size``;
        `record` keeps their trajectories (a chain refines them further)."""
        jobs: list[tuple[RefineJob, torch.Tensor]] = []
        for p, parent in enumerate(parents):
            mask = soften(found.mask[p: p + 1], self.config.soft_mask_sigma)
            for _ in range(per_parent):
                index = len(pool.candidates) + len(jobs)
                job = RefineJob(parent, pool.candidates[parent].latents, pool.trajectories[parent],
                                mask, stream_seed(seed, "refine", index))
                jobs.append((job, found.heatmap[p]))
        size = self.config.refine_batch_size or self.config.num_refinements
        made: list[tuple[RefineJob, torch.Tensor, RefineOutcome, Image.Image, int]] = []
        for start in range(0, len(jobs), size):
            batch = jobs[start: start + size]
            with meter.phase("refine"):
                before = meter.rows_in_phase("refine")
                outcomes = refine_batch(run, [job for job, _ in batch], plan, record)
                images = self.backbone.decode(torch.cat([o.latents for o in outcomes]), run.settings)
                nfe = (meter.rows_in_phase("refine") - before) // len(batch)
            made += [(job, heat, outcome, image, nfe)
                     for (job, heat), outcome, image in zip(batch, outcomes, images)]
        # One verifier call for the whole level, as for the originals of one pipeline call.
        scores = self._score([image for _, _, _, image, _ in made], run.prompt, meter)
        for (job, heat, outcome, image, nfe), score in zip(made, scores):
            pool.add(Candidate(job.seed, job.parent, image, outcome.latents, mask=job.mask[0],
                               heatmap=heat, score=score, nfe=nfe), outcome.trajectory)

    # ----- scoring ----------------------------------------------------------------------------
    def _score(self, images: Sequence[Image.Image], prompt: str, meter: CostMeter) -> list[float]:
        """The selection verifier's scores, timed and counted as the method's cost."""
        with meter.phase("verify"):
            scores = score_images(self.verifier, images, prompt)
            meter.count_verifier(len(images))
        return scores

    def _held_out_scores(self, image: Image.Image, prompt: str) -> dict[str, float]:
        return {name: score_images(verifier, [image], prompt)[0]
                for name, verifier in self.report_verifiers.items()}

    # ----- settings ---------------------------------------------------------------------------
    def _settings(self, pipe_kwargs: dict[str, Any]) -> Settings:
        """The call's settings, with the LoTTS config checked against its schedule up front."""
        settings = self.backbone.settings(pipe_kwargs)
        self.config.resolved(self.backbone.name, settings.num_inference_steps)
        if self.config.num_refinements > 0:
            self.backbone.check_callback_inputs(settings)
        if self.config.self_attention_blocks is not None and self.backbone.capture_mode != "flux":
            raise ValueError("self_attention_blocks selects FLUX double-stream blocks; "
                             f"{type(self.pipe).__name__} uses its finest self-attention layers")
        return settings

    def _size_from(self, image: Union[Image.Image, torch.Tensor],
                   pipe_kwargs: dict[str, Any]) -> dict[str, Any]:
        if pipe_kwargs.get("height") is not None and pipe_kwargs.get("width") is not None:
            return pipe_kwargs
        if isinstance(image, Image.Image):
            width, height = image.size
        else:
            height, width = self.backbone.size_from_latents(image)
        return {"height": height, "width": width, **{k: v for k, v in pipe_kwargs.items()
                                                     if v is not None}}
