"""Particle Sampling: Feynman-Kac steering / sequential Monte Carlo over denoising trajectories.

``particle_sampling(pipe, prompt, verifier, num_particles=4, seed=0, **pipe_kwargs)`` denoises
`num_particles` latents together (particle j starts from the noise of seed ``seed + j``, the same
noise as Best-of-N's sample j). Every ``resample_every`` steps the verifier scores each
particle's predicted clean image x0_hat (the scheduler's ``pred_original_sample``, decoded), the
particles get weights exp(lam * G) from a potential G of those rewards, and the population is
resampled multinomially (from a generator seeded by ``seed`` and the step, so a seed fixes the
run). At the end the verifier scores the final images and the best wins, as in Best-of-N.

Potentials (Singhal et al., "A General Framework for Inference-time Scaling and Steering of
Diffusion Models", 2025): "max" (G = the particle's best reward so far, their default),
"sum" (the sum of its rewards), "difference" (its reward minus its previous one), and
"immediate" (its current reward). A resampled particle inherits its ancestor's history, and the
scheduler's per-row state (multistep histories) is reindexed with it.

Cost, in the sampler's units (:class:`~lotts.result.Cost`): NFE = particles x steps x guidance
factor, counted by the same denoiser hook as LoTTS and Best-of-N; verifier calls = particles per
resampling point + particles at the end. It needs no attention capture and no restart at t0.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any, Optional, Union

import torch

from lotts.backbones import Run
from lotts.config import LoTTSConfig, stream_seed
from lotts.cost import CostMeter
from lotts.result import Candidate, LoTTSResult
from lotts.sampler import (
    LoTTS,
    Prompt,
    VerifierSpec,
    _check_seed,
    _prompts,
    score_images,
    verifier_label,
)

POTENTIALS = ("max", "sum", "difference", "immediate")


def resample_steps(num_steps: int, every: int) -> list[int]:
    """Steps after which the population is resampled: every `every` steps, never after the last."""
    return [i for i in range(num_steps - 1) if (i + 1) % every == 0]


def default_interval(num_steps: int) -> int:
    """Resample about four times per schedule (FK steering's 100-step runs resample every 20)."""
    return max(1, num_steps // 5)


class Potential:
    """Per-particle potential state; ``weights(rewards)`` updates it and returns log weights."""

    def __init__(self, kind: str, lam: float, n: int) -> None:
        if kind not in POTENTIALS:
            raise ValueError(f"potential must be one of {POTENTIALS}, got {kind!r}")
        self.kind, self.lam = kind, float(lam)
        self.state = torch.full((n,), float("-inf") if kind == "max" else 0.0, dtype=torch.float64)

    def log_weights(self, rewards: torch.Tensor) -> torch.Tensor:
        r = rewards.to(torch.float64)
        if self.kind == "max":
            self.state = torch.maximum(self.state, r)
            g = self.state
        elif self.kind == "sum":
            self.state = self.state + r
            g = self.state
        elif self.kind == "difference":
            g, self.state = r - self.state, r
        else:
            g = r
        return self.lam * g

    def reindex(self, index: torch.Tensor) -> None:
        self.state = self.state[index]


def multinomial_resample(log_weights: torch.Tensor, seed: int) -> torch.Tensor:
    """Ancestor indices drawn with probabilities softmax(log_weights), from a seeded generator."""
    probs = torch.softmax(log_weights.to(torch.float64), dim=0)
    generator = torch.Generator().manual_seed(int(seed))
    return torch.multinomial(probs, len(probs), replacement=True, generator=generator)


# Scheduler attributes that hold one row per sample between steps (multistep solvers).
ROW_STATE = ("model_outputs", "ets", "cur_sample", "last_sample", "sample", "prev_derivative")


def reindex_scheduler_state(scheduler: Any, index: torch.Tensor, batch: int) -> None:
    """Reorder the per-row tensors a scheduler keeps between steps (``ROW_STATE``)."""
    def pick(value: Any) -> Any:
        if isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape[0] == batch:
            return value[index.to(value.device)]
        if isinstance(value, list):
            return [pick(v) for v in value]
        return value
    for name in ROW_STATE:
        if hasattr(scheduler, name):
            setattr(scheduler, name, pick(getattr(scheduler, name)))


def predicted_x0(output: Any, latents: torch.Tensor, model_out: torch.Tensor, run: Run,
                 step: int) -> torch.Tensor:
    """x0_hat at `step`: the scheduler's own ``pred_original_sample`` where it gives one, else
    from latents = alpha x0 + sigma eps (epsilon / v prediction; flow matching's velocity)."""
    given = getattr(output, "pred_original_sample", None)
    if given is not None:
        return given
    alpha, sigma = run.coefficients(step)
    kind = getattr(run.template.config, "prediction_type", None)
    if "FlowMatch" in type(run.template).__name__:
        return latents - sigma * model_out
    if kind == "epsilon":
        return (latents - sigma * model_out) / alpha
    if kind == "v_prediction":
        return alpha * latents - sigma * model_out
    raise NotImplementedError(f"particle sampling cannot predict x0 with "
                              f"{type(run.template).__name__} (prediction_type={kind!r})")


class _Particles:
    """One prompt's population and the work that moves it."""

    def __init__(self, owner: LoTTS, meter: CostMeter, run: Run, seed: int, n: int,
                 eta: Optional[float]) -> None:
        self.owner, self.meter, self.run, self.seed, self.n = owner, meter, run, seed, n
        self.eta = eta
        self.backbone = run.backbone
        self.lineage = torch.arange(n)  # the original seed offset of each particle

    def score(self, latents: torch.Tensor) -> tuple[list, torch.Tensor]:
        with self.meter.phase("verify"):
            images = self.backbone.decode(latents, self.run.settings)
            scores = torch.tensor(score_images(self.owner.verifier, images, self.run.prompt))
            self.meter.count_verifier(len(images))
        return images, scores

    def run_steps(self, latents: torch.Tensor, potential: Potential, at: set[int]) -> torch.Tensor:
        run, settings = self.run, self.run.settings
        scheduler = run.scheduler_at(0)
        step_kwargs = run.step_kwargs(scheduler, [stream_seed(self.seed, "particle-step", j)
                                                  for j in range(self.n)])
        if "eta" in step_kwargs and self.eta is not None:
            step_kwargs["eta"] = self.eta
        if "eta" in step_kwargs and step_kwargs["eta"] > 0 and "generator" not in step_kwargs:
            step_kwargs["generator"] = [torch.Generator("cpu").manual_seed(
                stream_seed(self.seed, "particle-step", j)) for j in range(self.n)]
        for i in range(run.num_steps):
            t = run.timesteps[i]
            with self.meter.phase("generate"):
                model_out = self.backbone.guided(scheduler, latents, t, run.cond, settings)
                output = scheduler.step(model_out, t, latents, **step_kwargs, return_dict=True)
                x0_hat = predicted_x0(output, latents, model_out, run, i) if i in at else None
                latents = output.prev_sample
                if settings.callback is not None:
                    latents = settings.callback(self.backbone.pipe, i, t, {"latents": latents}
                                                ).get("latents", latents)
            if x0_hat is not None:
                _, rewards = self.score(x0_hat)
                index = multinomial_resample(potential.log_weights(rewards),
                                             stream_seed(self.seed, "particles-resample", i))
                latents = latents[index.to(latents.device)]
                potential.reindex(index)
                reindex_scheduler_state(scheduler, index, self.n)
                self.lineage = self.lineage[index]
        return latents


def _one_prompt(owner: LoTTS, prompt: str, seed: int, n: int, settings: Any, potential: str,
                lam: float, every: Optional[int], eta: Optional[float]) -> LoTTSResult:
    backbone = owner.backbone
    meter = CostMeter(synchronize=settings.device.type == "cuda", on_phase=owner.on_phase)
    with torch.no_grad(), meter.counting(backbone.denoiser):
        with meter.phase("generate"):
            cond = backbone.encode(prompt, settings)
            run = Run(backbone, settings, prompt, cond, backbone.noise_shape(settings))
            generators = [torch.Generator("cpu").manual_seed(seed + j) for j in range(n)]
            latents = backbone.entering_latents(backbone.initial_noise(settings, generators), run)
        interval = every or default_interval(run.num_steps)
        particles = _Particles(owner, meter, run, seed, n, eta)
        final = particles.run_steps(latents, Potential(potential, lam, n),
                                    set(resample_steps(run.num_steps, interval)))
        images, scores = particles.score(final)
    per_particle = meter.rows_in_phase("generate") // n
    candidates = [Candidate(seed + int(j), None, image, final[b: b + 1], score=float(s),
                            nfe=per_particle)
                  for b, (j, image, s) in enumerate(zip(particles.lineage, images, scores.tolist()))]
    selected = max(range(n), key=lambda i: (candidates[i].score, -i))
    result_scores = {verifier_label(owner.verifier): candidates[selected].score}
    if owner.report_verifiers:
        with meter.phase("report"):
            result_scores.update(owner._held_out_scores(candidates[selected].image, prompt))
    return LoTTSResult(prompt, candidates, selected, meter.cost, result_scores, "particles")


def particle_sampling(pipe: Any, prompt: Prompt, verifier: VerifierSpec, num_particles: int = 4,
                      seed: int = 0, *, potential: str = "max", lam: float = 1.0,
                      resample_every: Optional[int] = None, eta: Optional[float] = 1.0,
                      report_with: Any = None,
                      verifier_options: Optional[dict] = None,
                      on_phase: Optional[Callable[[str], None]] = None, **pipe_kwargs: Any
                      ) -> Union[LoTTSResult, list[LoTTSResult]]:
    """FK-steering particle sampling (module docstring); a result per prompt (a list for a list).

    num_particles: population size (each costs one full generation). potential: one of
    POTENTIALS. lam: inverse temperature of the weights exp(lam * G). resample_every: steps
    between resamplings (None: a fifth of the schedule). eta: the DDIM-style stochasticity of
    the particle steps where the scheduler takes one (resampled copies of a particle only
    diverge under a stochastic step; None: the pipeline's own, 0 for DDIM, which makes the run
    equal Best-of-N when nothing is resampled). Other arguments as in
    :func:`lotts.best_of_n`.
    """
    if isinstance(num_particles, bool) or not isinstance(num_particles, int) or num_particles < 1:
        raise ValueError(f"num_particles must be an int >= 1, got {num_particles!r}")
    if resample_every is not None and (isinstance(resample_every, bool)
                                       or not isinstance(resample_every, int) or resample_every < 1):
        raise ValueError(f"resample_every must be None or an int >= 1, got {resample_every!r}")
    if potential not in POTENTIALS:
        raise ValueError(f"potential must be one of {POTENTIALS}, got {potential!r}")
    if not isinstance(lam, (int, float)) or isinstance(lam, bool) or not lam == lam:
        raise ValueError(f"lam must be a finite float, got {lam!r}")
    prompts, single = _prompts(prompt)
    seed = _check_seed(seed, num_particles)
    owner = LoTTS(pipe, verifier, LoTTSConfig(num_seeds=num_particles, num_refinements=0),
                  report_with=report_with, verifier_options=verifier_options, on_phase=on_phase)
    settings = owner.backbone.settings(pipe_kwargs)
    if eta is not None and (not isinstance(eta, (int, float)) or isinstance(eta, bool) or eta < 0):
        raise ValueError(f"eta must be None or a float >= 0, got {eta!r}")
    results = [_one_prompt(owner, p, seed, num_particles, settings, potential, float(lam),
                           resample_every, eta) for p in prompts]
    return results[0] if single else results
