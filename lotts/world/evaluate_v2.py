"""World evaluation v2: which mask finds the defects the model itself makes, and which way of
spending a denoiser budget wins (``benchmarks/world_eval_v2.py`` is the command; the fixed inputs
are ``benchmarks/world_eval_spec_v2.json``).

1. ``planted_eval``: heatmap AUROC of each mask source against a planted defect (as v1).
2. ``repair_eval``: for generated parents that the held-out verifier calls defective, ONE
   refinement per mask source and area r, every refinement of a parent from the same injected
   noise (paired), repaired = held-out logit >= threshold afterwards.
3. ``scaling_eval``: Best-of-N over N, LoTTS per mask source, Particle Sampling; selected by
   the selection verifier, judged by the held-out one.
Everything goes through the library (:mod:`lotts.mask_sources`, :func:`lotts.resampling.refine_batch`,
:class:`lotts.LoTTS`, :func:`lotts.best_of_n`, :func:`lotts.particle_sampling.particle_sampling`).
"""
from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from lotts.world import scenes
from lotts.world.evaluate import (
    Localizer,
    auroc,
    iou,
    planted_case,
    region_to_grid,
    top_mask,
)

AUROC_SOURCES = ("attention", "verifier_gradient", "verifier_occlusion", "attention+verifier",
                 "random")


# ----- prompts and cases ---------------------------------------------------------------------
def prompts_from(scene_seed: int, seed: int, count: int, seed_stride: int = 100) -> list[dict]:
    """Plain captions of scenes scene_seed.. and generation seeds seed, seed + stride, ..."""
    return [{"prompt": scenes.sample_scene(np.random.default_rng(scene_seed + i)).caption,
             "seed": seed + seed_stride * i} for i in range(count)]


# ----- statistics ----------------------------------------------------------------------------
def bootstrap_ci(groups: Sequence[np.ndarray], statistic, reps: int, seed: int
                 ) -> tuple[float, float, float]:
    """(point, low, high): `statistic` of the concatenated groups and its 95% percentile
    interval over `reps` resamplings of whole groups (prompts) with replacement."""
    groups = [np.asarray(g, np.float64) for g in groups if len(g)]
    if not groups:
        return float("nan"), float("nan"), float("nan")
    point = float(statistic(np.concatenate(groups)))
    rng = np.random.default_rng(seed)
    stats = []
    for _ in range(reps):
        pick = rng.integers(0, len(groups), len(groups))
        stats.append(statistic(np.concatenate([groups[i] for i in pick])))
    low, high = np.percentile(stats, [2.5, 97.5])
    return point, float(low), float(high)


# ----- 1. planted defects ---------------------------------------------------------------------
def planted_eval(pipe, cases: list[dict], pipe_kwargs: dict, select: Any, random_seed: int,
                 config: Any = None, patch: int = 2) -> dict:
    """AUROC / IoU (r = 0.5) of every source's heatmap against the planted region."""
    from lotts.mask_sources import combine, gradient_saliency, occlusion_saliency, pixel_scorer
    localizer = Localizer(pipe, config, **pipe_kwargs)
    scorer = pixel_scorer(select)
    rows = []
    for i, case in enumerate(cases):
        scene, image, defect = planted_case(pipe, case, pipe_kwargs)
        heat = localizer(image, scene.caption, case["generation_seed"], random_seed + i)
        grid = heat["full"].shape
        grad = gradient_saliency(scorer, [image], [scene.caption], grid)[0]
        occl, _ = occlusion_saliency(select, [image], [scene.caption], grid, patch)
        maps = {"attention": torch.as_tensor(heat["full"]), "verifier_gradient": grad,
                "verifier_occlusion": occl[0], "random": torch.as_tensor(heat["random"])}
        maps["attention+verifier"] = combine(maps["attention"][None], grad[None])[0]
        truth = region_to_grid(defect.region, grid)
        row = {"case": i, "kind": case["kind"], "cells": int(truth.sum())}
        for name, m in maps.items():
            m = m.numpy()
            row[f"{name}_auroc"] = auroc(m, truth)
            row[f"{name}_iou"] = iou(top_mask(m, int(round(0.5 * m.size))), truth)
        rows.append(row)
    summary = {"cases": len(rows)}
    for name in AUROC_SOURCES:
        for metric in ("auroc", "iou"):
            summary[f"{name}_{metric}"] = float(np.nanmean([r[f"{name}_{metric}"] for r in rows]))
    return {"summary": summary, "rows": rows}


# ----- 2. repair of generated defects ------------------------------------------------------------
class Repairer:
    """Generates parents with their trajectories and refines each once per (source, r)."""

    def __init__(self, pipe, pipe_kwargs: dict, select: Any, held: Any, config: Any,
                 threshold: float) -> None:
        from lotts.backbones import detect_backbone
        self.backbone = detect_backbone(pipe)
        self.settings = self.backbone.settings(dict(pipe_kwargs))
        self.select, self.held, self.config, self.threshold = select, held, config, threshold

    def parent(self, prompt: str, seed: int):
        """(run, steps, latents, trajectory, image): the sample of `seed`, trajectory from t0."""
        from lotts.backbones import Run
        from lotts.resampling import CachedTrajectory
        backbone, settings = self.backbone, self.settings
        run = Run(backbone, settings, prompt, backbone.encode(prompt, settings),
                  backbone.noise_shape(settings))
        steps = self.config.resolved(backbone.name, run.num_steps)
        noise = backbone.initial_noise(settings, [torch.Generator("cpu").manual_seed(seed)])
        latents = backbone.entering_latents(noise, run)
        cached = [latents] if steps.t0 == 0 else []

        def keep(i: int, x: torch.Tensor) -> torch.Tensor:
            if i + 1 >= steps.t0:
                cached.append(x)
            return x
        final = run.denoise(latents, 0, run.num_steps, [seed], keep)
        image = backbone.decode(final, settings)[0]
        return run, steps, final, CachedTrajectory(steps.t0, cached), image

    def held_scores(self, images: list, prompt: str) -> np.ndarray:
        return self.held(images, [prompt] * len(images)).numpy()

    @torch.no_grad()
    def __call__(self, prompt: str, seed: int, sources: Sequence[str], ratios: Sequence[float]
                 ) -> dict:
        from lotts.config import stream_seed
        from lotts.localization import localization_inputs
        from lotts.mask_sources import MaskInputs, source_heatmap, top_r_mask
        from lotts.resampling import RefineJob, refine_batch
        run, steps, x0, trajectory, image = self.parent(prompt, seed)
        parent_held = float(self.held_scores([image], prompt)[0])
        row = {"prompt": prompt, "seed": seed, "parent_held": parent_held,
               "parent_defective": parent_held < self.threshold}
        if not row["parent_defective"]:
            return row
        inputs = MaskInputs(run, x0, [image], [stream_seed(seed, "localize", 0)],
                            lambda: localization_inputs(self.backbone, self.settings, prompt,
                                                        self.config))
        noise_seed = stream_seed(seed, "repair-noise")  # one noise for every refinement: paired
        jobs, labels = [], []
        for source in sources:
            heat, _, _ = source_heatmap(source, self.config, self.select, inputs,
                                     steps.localization_step)
            for ratio in ([1.0] if source == "full" else ratios):
                mask = torch.ones_like(heat, dtype=torch.bool) if source == "full" else \
                    top_r_mask(heat, ratio)
                jobs.append(RefineJob(0, x0, trajectory, mask, noise_seed))
                labels.append(f"{source}@{ratio}")
        outcomes = refine_batch(run, jobs, steps)
        images = self.backbone.decode(torch.cat([o.latents for o in outcomes]), self.settings)
        for label, score in zip(labels, self.held_scores(images, prompt)):
            row[f"{label}_held"] = float(score)
            row[f"{label}_repaired"] = bool(score >= self.threshold)
        return row


def repair_eval(pipe, prompts: list[dict], seeds_per_prompt: int, pipe_kwargs: dict,
                select: Any, held: Any, sources: Sequence[str], ratios: Sequence[float],
                threshold: float, config: Any = None) -> list[dict]:
    from lotts import LoTTSConfig
    repairer = Repairer(pipe, pipe_kwargs, select, held, config or LoTTSConfig(), threshold)
    rows = []
    for p, item in enumerate(prompts):
        for j in range(seeds_per_prompt):
            row = repairer(item["prompt"], int(item["seed"]) + j, sources, ratios)
            row["prompt_index"] = p
            rows.append(row)
    return rows


def repair_summary(rows: list[dict], sources: Sequence[str], ratios: Sequence[float],
                   reps: int, seed: int, baseline: str = "random") -> dict:
    """Repair rate per (source, r) and its paired difference to `baseline` at the same r, with
    95% bootstrap intervals over prompts."""
    defective = [r for r in rows if r["parent_defective"]]
    by_prompt: dict[int, list[dict]] = {}
    for r in defective:
        by_prompt.setdefault(r["prompt_index"], []).append(r)
    groups = list(by_prompt.values())
    out = {"parents": len(rows), "defective_parents": len(defective),
           "prompts_with_defective": len(groups), "table": {}}
    for source in sources:
        for ratio in ([1.0] if source == "full" else ratios):
            key = f"{source}@{ratio}"
            rate = bootstrap_ci([[float(r[f"{key}_repaired"]) for r in g] for g in groups],
                                np.mean, reps, seed)
            entry = {"rate": rate}
            base = f"{baseline}@{ratio}" if source != "full" else None
            compare = [f"{baseline}@{q}" for q in ratios] if source == "full" else [base]
            for other in compare:
                if other == key or f"{other}_repaired" not in (defective[0] if defective else {}):
                    continue
                diff = bootstrap_ci([[float(r[f"{key}_repaired"]) - float(r[f"{other}_repaired"])
                                      for r in g] for g in groups], np.mean, reps, seed)
                entry[f"minus_{other}"] = diff
            out["table"][key] = entry
    return out


# ----- 3. scaling at matched NFE ---------------------------------------------------------------
def scaling_eval(pipe, prompts: list[dict], pipe_kwargs: dict, select: Any, held: Any,
                 spec: dict, threshold: float) -> list[dict]:
    """Per prompt: held-out score and defect flag of each method's selected image, its NFE."""
    from lotts import LoTTS, LoTTSConfig, best_of_n
    from lotts.particle_sampling import particle_sampling
    n_max = max(spec["best_of_n_ns"])
    rows = []
    for item in prompts:
        prompt, seed = item["prompt"], int(item["seed"])
        row: dict[str, Any] = {"prompt": prompt, "seed": seed}
        t = time.perf_counter()
        bon = best_of_n(pipe, prompt, n_max, select, seed=seed, **pipe_kwargs)
        row["bon_seconds"] = time.perf_counter() - t
        sel = np.array([c.score for c in bon.candidates])
        bon_held = held([c.image for c in bon.candidates], [prompt] * n_max).numpy()
        row["bon_candidate_nfe"] = int(bon.candidates[0].nfe)
        row["bon_held_all"] = bon_held.tolist()
        row["bon_select_all"] = sel.tolist()
        for n in spec["best_of_n_ns"]:
            pick = int(np.argmax(sel[:n]))
            row[f"bon{n}_held"] = float(bon_held[pick])
        for name, method in spec["methods"].items():
            t = time.perf_counter()
            if method["kind"] == "lotts":
                config = LoTTSConfig(**method["config"])
                res = LoTTS(pipe, select, config)(prompt, seed=seed, **pipe_kwargs)
                row[f"{name}_refinement_selected"] = res.best.parent is not None
            else:
                res = particle_sampling(pipe, prompt, select, seed=seed, **method["options"],
                                        **pipe_kwargs)
            row[f"{name}_seconds"] = time.perf_counter() - t
            row[f"{name}_held"] = float(held([res.image], [prompt])[0])
            row[f"{name}_nfe"] = int(res.cost.nfe)
            row[f"{name}_verifier_calls"] = int(res.cost.verifier_calls)
        rows.append(row)
    return rows


def scaling_summary(rows: list[dict], spec: dict, threshold: float, reps: int, seed: int) -> dict:
    """Mean held-out score and defect rate (95% bootstrap over prompts) per method and Best-of-N
    size, and the smallest N whose Best-of-N mean reaches each method's."""
    def stats(key: str) -> dict:
        values = [[r[key]] for r in rows]
        return {"held": bootstrap_ci(values, np.mean, reps, seed),
                "defect_rate": bootstrap_ci([[float(v[0] < threshold)] for v in values], np.mean,
                                            reps, seed)}
    per = float(np.mean([r["bon_candidate_nfe"] for r in rows]))
    out: dict[str, Any] = {"prompts": len(rows), "best_of_n": {}, "methods": {}}
    for n in spec["best_of_n_ns"]:
        out["best_of_n"][n] = {**stats(f"bon{n}_held"), "nfe": n * per}
    ns = sorted(spec["best_of_n_ns"])
    for name in spec["methods"]:
        entry = {**stats(f"{name}_held"),
                 "nfe": float(np.mean([r[f"{name}_nfe"] for r in rows])),
                 "verifier_calls": float(np.mean([r[f"{name}_verifier_calls"] for r in rows])),
                 "seconds": float(np.mean([r[f"{name}_seconds"] for r in rows]))}
        share = [r[f"{name}_refinement_selected"] for r in rows if f"{name}_refinement_selected" in r]
        if share:
            entry["refinement_selected_share"] = float(np.mean(share))
        match = next((n for n in ns if out["best_of_n"][n]["held"][0] >= entry["held"][0]), None)
        entry["bon_matching_n"] = match
        entry["bon_nfe_ratio_at_match"] = None if match is None else match * per / entry["nfe"]
        # paired difference to the Best-of-N of (about) the same NFE
        same = min(ns, key=lambda n: (abs(n * per - entry["nfe"]), n))
        entry["matched_bon_n"] = same
        entry["minus_matched_bon"] = bootstrap_ci(
            [[r[f"{name}_held"] - r[f"bon{same}_held"]] for r in rows], np.mean, reps, seed)
        out["methods"][name] = entry
    return out
