"""LoTTS: generate candidates, localize defects, resample locally, keep the best-scored.

``LoTTS(pipe, verifier, config)(prompt, seed=0, **pipe_kwargs)`` runs, per prompt:
1. originals: the pipeline's own ``__call__`` (``output_type="latent"``) with noise from
   ``seed + j``, caching each trajectory from t0 on through ``callback_on_step_end``;
2. localization of each original (:mod:`lotts.localization`);
3. refinements (:mod:`lotts.resampling`): "siblings" makes k of each original; "chain" makes
   k levels, each refining the seed's best-scored candidate so far, re-localized;
4. selection by the verifier over all candidates, originals included.

The pipeline is left as found: base generation steps a copy of its scheduler, the NFE hook
and the attention processors are removed/restored in ``finally`` blocks.
"""
from __future__ import annotations

import copy
from contextlib import contextmanager
from typing import Any, Callable, Iterator, Optional, Sequence, Union

import torch
from PIL import Image

from lotts.backbones import Backbone, Run, detect_backbone
from lotts.config import LoTTSConfig, ResolvedConfig, derive_seed
from lotts.cost import CostMeter
from lotts.localization import localization_inputs
from lotts.mask_sources import MaskInputs, localize_with_source
from lotts.resampling import (
    CachedTrajectory,
    NoisedTrajectory,
    RefineJob,
    refine_batch,
    soften,
)
from lotts.result import Candidate, LoTTSResult
from lotts.verifiers import check_scores, load_verifier

Prompt = Union[str, Sequence[str]]
VerifierSpec = Union[str, Callable[..., Any]]


# ----- verifiers -----------------------------------------------------------------------------
def verifier_name(verifier: Any) -> str:
    return (getattr(verifier, "name", None) or getattr(verifier, "__name__", None)
            or type(verifier).__name__)


def _report_verifiers(report_with: Any, options: dict) -> dict[str, Callable[..., Any]]:
    if report_with is None:
        return {}
    if isinstance(report_with, dict):
        return {name: load_verifier(spec, **options) for name, spec in report_with.items()}
    specs = [report_with] if isinstance(report_with, str) or callable(report_with) else report_with
    loaded = [load_verifier(spec, **options) for spec in specs]
    return {verifier_name(v): v for v in loaded}


# ----- inputs --------------------------------------------------------------------------------
def _prompts(prompt: Prompt) -> tuple[list[str], bool]:
    """(prompts, single) with every prompt a non-empty string."""
    single = isinstance(prompt, str)
    prompts = [prompt] if single else list(prompt) if prompt is not None else []
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
                 report_with: Any = None, verifier_options: Optional[dict] = None,
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
        self.verifier = load_verifier(spec, **options)
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
        settings = self.backbone.settings(pipe_kwargs)
        self.config.resolved(self.backbone.name, settings.num_inference_steps)  # validate early
        results = [self._run(p, seed, settings, None) for p in prompts]
        return results[0] if single else results

    def refine(self, image: Union[Image.Image, torch.Tensor], prompt: str, seed: int = 0,
               **pipe_kwargs: Any) -> LoTTSResult:
        """Localize and refine an image the user already has (a PIL image or clean latents in
        the pipeline's latent layout). The image competes as candidate 0 beside its k
        refinements (or its k-level chain). Its trajectory is stood in for by the scheduler's
        own noising of its latents with one fixed noise."""
        prompts, single = _prompts(prompt)
        if not single:
            raise ValueError("refine takes one prompt (a string)")
        seed = _check_seed(seed, 1)
        if not isinstance(image, (Image.Image, torch.Tensor)):
            raise TypeError(f"image must be a PIL image or a latents tensor, got {type(image).__name__}")
        self.backbone.check_scheduler()
        pipe_kwargs = self._size_from(image, pipe_kwargs)
        settings = self.backbone.settings(pipe_kwargs)
        self.config.resolved(self.backbone.name, settings.num_inference_steps)
        return self._run(prompts[0], seed, settings, image)

    # ----- one prompt -------------------------------------------------------------------------
    def _size_from(self, image: Any, pipe_kwargs: dict) -> dict:
        if pipe_kwargs.get("height") is not None and pipe_kwargs.get("width") is not None:
            return pipe_kwargs
        if isinstance(image, Image.Image):
            width, height = image.size
        else:
            height, width = self.backbone.size_from_latents(image)
        return {"height": height, "width": width, **{k: v for k, v in pipe_kwargs.items()
                                                     if v is not None}}

    def _run(self, prompt: str, seed: int, settings: Any, given: Any) -> LoTTSResult:
        meter = CostMeter(synchronize=settings.device.type == "cuda", on_phase=self.on_phase)
        with torch.no_grad(), meter.counting(self.backbone.denoiser):
            with meter.phase("generate"):
                cond = self.backbone.encode(prompt, settings)
                run = Run(self.backbone, settings, prompt, cond, self.backbone.noise_shape(settings))
                steps = self.config.resolved(self.backbone.name, run.num_steps)
            session = _Session(self, run, steps, meter, seed)
            if given is None:
                session.generate_originals(self.config.num_seeds)
            else:
                session.add_given(given)
            session.search()
            return session.result("lotts" if given is None else "refine")


class _Session:
    """The candidates of one prompt and the work that makes them."""

    def __init__(self, owner: LoTTS, run: Run, steps: ResolvedConfig, meter: CostMeter,
                 seed: int) -> None:
        self.owner, self.run, self.steps, self.meter, self.seed = owner, run, steps, meter, seed
        self.config = owner.config
        self.backbone = run.backbone
        self.candidates: list[Candidate] = []
        self.trajectories: dict[int, Any] = {}
        self.roots: list[int] = []
        self._loc: Optional[tuple[Any, tuple[torch.Tensor, torch.Tensor]]] = None

    # ----- originals --------------------------------------------------------------------------
    def generate_originals(self, count: int) -> None:
        chunk = self.config.generate_batch_size or count
        cache_from = self.steps.t0 if self.config.num_refinements > 0 else None
        for start in range(0, count, chunk):
            seeds = [self.seed + j for j in range(start, min(count, start + chunk))]
            with self.meter.phase("generate"):
                before = self.meter.rows_in_phase("generate")
                latents, cached = self._pipeline_latents(seeds, cache_from)
                images = self.backbone.decode(latents, self.run.settings)
                nfe = (self.meter.rows_in_phase("generate") - before) // len(seeds)
            for row, (s, image) in enumerate(zip(seeds, images)):
                index = self._add(Candidate(s, None, image, latents[row: row + 1], nfe=nfe))
                if cached is not None:
                    self.trajectories[index] = CachedTrajectory(cache_from, cached, row)
            self._score(range(len(self.candidates) - len(seeds), len(self.candidates)))

    def _pipeline_latents(self, seeds: list[int], cache_from: Optional[int]):
        """The pipeline's own loop, trajectories cached from `cache_from` on."""
        settings, backbone = self.run.settings, self.backbone
        generators = [torch.Generator("cpu").manual_seed(s) for s in seeds]
        noise = backbone.initial_noise(settings, generators)
        cached: Optional[list[torch.Tensor]] = None
        if cache_from is not None:
            cached = [backbone.entering_latents(noise, self.run)] if cache_from == 0 else []
        user_callback = settings.callback

        def on_step_end(pipe: Any, i: int, t: Any, tensors: dict) -> dict:
            out = (user_callback(pipe, i, t, tensors) if user_callback is not None else None) or {}
            if cached is not None and i + 1 >= cache_from:
                cached.append(out.get("latents", tensors["latents"]))
            return out

        kwargs = {**settings.passthrough, **backbone.call_kwargs(self.run)}
        kwargs.update(height=settings.height, width=settings.width,
                      num_inference_steps=settings.num_inference_steps,
                      guidance_scale=settings.guidance_scale, num_images_per_prompt=len(seeds),
                      latents=noise, generator=generators, output_type="latent", return_dict=False,
                      callback_on_step_end=on_step_end,
                      callback_on_step_end_tensor_inputs=list(settings.callback_inputs))
        with _scheduler_copy(backbone.pipe):
            latents = backbone.pipe(**kwargs)[0]
        if cached is not None and len(cached) != self.run.num_steps - cache_from + 1:
            raise RuntimeError(f"cached {len(cached)} trajectory steps, expected "
                               f"{self.run.num_steps - cache_from + 1}: the pipeline's loop and "
                               "LoTTS' schedule disagree")
        return latents, cached

    def add_given(self, given: Any) -> None:
        settings = self.run.settings
        with self.meter.phase("generate"):
            if isinstance(given, Image.Image):
                latents, image = self.backbone.encode_image(given, settings), given
            else:
                latents = self.backbone.check_latents(given, settings)
                image = self.backbone.decode(latents, settings)[0]
        index = self._add(Candidate(self.seed, None, image, latents))
        self.trajectories[index] = NoisedTrajectory(self.run, latents,
                                                    derive_seed(self.seed, "trajectory"))
        self._score([index])

    # ----- search -----------------------------------------------------------------------------
    def search(self) -> None:
        k = self.config.num_refinements
        if k == 0:
            return
        originals = [i for i, c in enumerate(self.candidates) if c.parent is None]
        if self.config.search == "siblings":
            self._refine(originals, k, record=False)
            return
        for level in range(k):
            best = [self._best_of_root(root) for root in originals]
            self._refine(best, 1, record=level < k - 1)

    def _best_of_root(self, root: int) -> int:
        members = [i for i, r in enumerate(self.roots) if r == root]
        return max(members, key=lambda i: (self.candidates[i].score, -i))

    def _refine(self, parents: list[int], per_parent: int, record: bool) -> None:
        with self.meter.phase("localize"):
            found = self._localize(parents)
        jobs = []
        for p, parent in enumerate(parents):
            mask = soften(found.mask[p: p + 1], self.config.soft_mask_sigma)
            for _ in range(per_parent):
                index = len(self.candidates) + len(jobs)
                jobs.append((index, found.heatmap[p], RefineJob(
                    parent, self.candidates[parent].latents, self.trajectories[parent], mask,
                    derive_seed(self.seed, "refine", index))))
        size = self.config.refine_batch_size or self.config.num_refinements
        for start in range(0, len(jobs), size):
            self._run_jobs(jobs[start: start + size], record)
        self._score(range(len(self.candidates) - len(jobs), len(self.candidates)))

    def _run_jobs(self, batch: list, record: bool) -> None:
        with self.meter.phase("refine"):
            before = self.meter.rows_in_phase("refine")
            outcomes = refine_batch(self.run, [job for _, _, job in batch], self.steps, record)
            latents = torch.cat([o.latents for o in outcomes])
            images = self.backbone.decode(latents, self.run.settings)
            nfe = (self.meter.rows_in_phase("refine") - before) // len(batch)
        for (index, heat, job), outcome, image in zip(batch, outcomes, images):
            added = self._add(Candidate(job.seed, job.parent, image, outcome.latents,
                                        mask=job.mask[0], heatmap=heat, nfe=nfe))
            assert added == index
            if outcome.trajectory is not None:
                self.trajectories[added] = outcome.trajectory

    def _localize(self, parents: list[int]):
        """The mask of each parent from ``config.mask_source`` (:mod:`lotts.mask_sources`)."""
        inputs = MaskInputs(self.run, torch.cat([self.candidates[p].latents for p in parents]),
                            [self.candidates[p].image for p in parents],
                            [derive_seed(self.candidates[p].seed, "localize", p) for p in parents],
                            self._localization_inputs)
        found, calls = localize_with_source(self.config, self.owner.verifier, inputs,
                                            self.steps.localization_step)
        self.meter.count_verifier(calls)
        return found

    def _localization_inputs(self):
        if self._loc is None:
            self._loc = localization_inputs(self.backbone, self.run.settings, self.run.prompt,
                                            self.config)
        return self._loc

    # ----- bookkeeping ------------------------------------------------------------------------
    def _add(self, candidate: Candidate) -> int:
        self.candidates.append(candidate)
        parent = candidate.parent
        self.roots.append(len(self.candidates) - 1 if parent is None else self.roots[parent])
        return len(self.candidates) - 1

    def _score(self, indices: Sequence[int]) -> None:
        indices = list(indices)
        if not indices:
            return
        verifier = self.owner.verifier
        with self.meter.phase("verify"):
            images = [self.candidates[i].image for i in indices]
            raw = verifier(images, [self.run.prompt] * len(images))
            scores = check_scores(raw, len(images), verifier_name(verifier))
            self.meter.count_verifier(len(images))
        for i, score in zip(indices, scores.tolist()):
            self.candidates[i].score = float(score)

    def result(self, method: str) -> LoTTSResult:
        selected = max(range(len(self.candidates)),
                       key=lambda i: (self.candidates[i].score, -i))
        scores = {verifier_name(self.owner.verifier): self.candidates[selected].score}
        with self.meter.phase("report"):
            for name, verifier in self.owner.report_verifiers.items():
                raw = verifier([self.candidates[selected].image], [self.run.prompt])
                scores[name] = float(check_scores(raw, 1, name)[0])
        if not self.owner.report_verifiers:
            self.meter.cost.seconds.pop("report", None)
        return LoTTSResult(self.run.prompt, self.candidates, selected, self.meter.cost, scores,
                           method)
