"""Measure LoTTS in the miniature world: localization of planted defects (with the method doc's
ablations), scaling against Best-of-N, and faithfulness outside the mask.

Everything runs through the public sampler (``LoTTS``, ``best_of_n``) and the library's own
localization pieces; the ablations re-read the same attention capture the library uses and
only change how equations (1)-(4) combine its maps. ``benchmarks/world_eval.py`` is the command;
the fixed prompts and seeds are in ``lotts/world/assets/world_eval_spec.json``.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
from PIL import Image

from lotts.world import scenes

ASSETS = Path(__file__).resolve().parent / "assets"
PIPELINE_DIR = ASSETS / "pipeline"
SPEC_FILE = ASSETS / "world_eval_spec.json"
PACKAGE_ROOT = Path(__file__).resolve().parents[2]
VARIANTS = ("full", "no_propagation", "diff_only", "orig_only", "random")


# ----- loading -------------------------------------------------------------------------------
def load_pipeline(path: Optional[str | Path] = None, device: str = "cpu",
                  dtype: torch.dtype = torch.float32):
    """The world's StableDiffusionPipeline, loaded the standard way (float16 files, loading as
    float32), then moved to `device` and `dtype`."""
    from diffusers import StableDiffusionPipeline
    pipe = StableDiffusionPipeline.from_pretrained(str(path or PIPELINE_DIR), local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    if dtype != pipe.unet.dtype:  # a same-dtype .to(dtype=...) still warns about casting
        pipe.to(dtype=dtype)
    return pipe.to(device)


def load_spec(path: Optional[str | Path] = None) -> dict:
    """The fixed evaluation inputs (shipped as package data, so an installed lotts has them)."""
    return json.loads(Path(path or SPEC_FILE).read_text())


def packaged_path(relative: str) -> Path:
    """A path the spec names ("lotts/world/assets/pipeline"), relative to the folder holding
    the lotts package: the checkout, or site-packages after a non-editable install."""
    return PACKAGE_ROOT / relative


# ----- metrics -------------------------------------------------------------------------------
def region_to_grid(region: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
    """bool (H, W) pixel region -> bool grid: a cell is defective when >= 50% of it is."""
    h, w = grid
    fh, fw = region.shape[0] // h, region.shape[1] // w
    return region.reshape(h, fh, w, fw).mean(axis=(1, 3)) >= 0.5


def auroc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney U, ties counted half); NaN without both classes."""
    scores, labels = np.asarray(scores, np.float64).ravel(), np.asarray(labels, bool).ravel()
    pos, neg = labels.sum(), (~labels).sum()
    if pos == 0 or neg == 0:
        return float("nan")
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores))
    sorted_scores = scores[order]
    i = 0
    while i < len(scores):  # average ranks over ties
        j = i
        while j + 1 < len(scores) and sorted_scores[j + 1] == sorted_scores[i]:
            j += 1
        ranks[order[i: j + 1]] = (i + j) / 2 + 1
        i = j + 1
    return float((ranks[labels].sum() - pos * (pos + 1) / 2) / (pos * neg))


def iou(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    union = (a | b).sum()
    return float((a & b).sum() / union) if union else float("nan")


def top_mask(heat: np.ndarray, count: int) -> np.ndarray:
    """The `count` largest positions (ties to the lower index), as quality_mask selects."""
    flat = heat.ravel()
    order = np.lexsort((np.arange(flat.size), -flat))
    mask = np.zeros(flat.size, bool)
    mask[order[:count]] = True
    return mask.reshape(heat.shape)


# ----- localization with ablations ----------------------------------------------------------
class Localizer:
    """LoTTS localization of given images, returning the heatmap of every ablation variant.

    "full" is the library's own heatmap (:func:`lotts.localization.mask_from_capture`); the
    other variants recombine the maps of the same localization forward:
    no_propagation: P = mm(CA_diff) + lam * mm(CA_orig) without the SA product (eq. 2 skipped);
    diff_only: P = mm(CA'_diff) (no reweighting, lam = 0); orig_only: P = mm(CA'_orig)
    (reweighting map only); random: uniform noise.
    """

    def __init__(self, pipe: Any, config: Any = None, **pipe_kwargs: Any) -> None:
        from lotts import LoTTSConfig
        from lotts.backbones import detect_backbone
        self.config = config or LoTTSConfig()
        self.backbone = detect_backbone(pipe)
        self.settings = self.backbone.settings(dict(pipe_kwargs))

    @torch.no_grad()
    def __call__(self, image: Image.Image, prompt: str, seed: int,
                 random_seed: int = 0) -> dict[str, np.ndarray]:
        from lotts.backbones import Run
        from lotts.config import stream_seed
        from lotts.localization import (
            contrast_maps,
            localization_capture,
            localization_inputs,
            mask_from_capture,
            propagate_maps,
            resize_maps,
        )
        from lotts_kernels import quality_mask

        backbone, settings, config = self.backbone, self.settings, self.config
        cond = backbone.encode(prompt, settings)
        run = Run(backbone, settings, prompt, cond, backbone.noise_shape(settings))
        plan = config.resolved(backbone.name, run.num_steps)
        loc_cond, tokens = localization_inputs(backbone, settings, prompt, config)
        x0 = backbone.encode_image(image, settings)
        seeds = [stream_seed(seed, "localize", 0)]
        capture = localization_capture(run, x0, seeds, plan.localization_step, loc_cond, tokens)
        grid = backbone.mask_grid(settings)
        library = mask_from_capture(capture, 1, grid, config.lam, config.mask_ratio)

        raw = contrast_maps(capture, 1)  # (1, 2, h, w)
        prop = propagate_maps(capture, raw).reshape(1, 2, *capture.self_attention_grid)
        prop = resize_maps(prop, grid).flatten(2).float()
        raw = resize_maps(raw, grid).flatten(2).float()
        heat = {
            "full": library.heatmap.reshape(1, -1),
            "no_propagation": quality_mask(raw[:, 0], raw[:, 1], lam=config.lam, ratio=0.5)[0],
            "diff_only": quality_mask(prop[:, 0], prop[:, 1], lam=0.0, ratio=0.5)[0],
            "orig_only": quality_mask(prop[:, 1], prop[:, 1], lam=0.0, ratio=0.5)[0],
        }
        generator = torch.Generator().manual_seed(int(random_seed))
        out = {k: v.view(*grid).cpu().numpy() for k, v in heat.items()}
        out["random"] = torch.rand(grid, generator=generator).numpy()
        return out


def generate(pipe, prompt: str, seed: int, **pipe_kwargs) -> Image.Image:
    generator = torch.Generator("cpu").manual_seed(int(seed))
    return pipe(prompt, generator=generator, **pipe_kwargs).images[0]


def planted_cases(scene_seed: int, generation_seed: int, defect_seed: int, count: int) -> list[dict]:
    """`count` planted-defect cases from consecutive seeds, cycling through the defect kinds."""
    cases = []
    for i in range(count):
        scene = scenes.sample_scene(np.random.default_rng(scene_seed + i))
        cases.append({"scene_seed": scene_seed + i, "caption": scene.caption,
                      "generation_seed": generation_seed + i, "defect_seed": defect_seed + i,
                      "kind": scenes.DEFECT_KINDS[i % len(scenes.DEFECT_KINDS)]})
    return cases


def planted_case(pipe, case: dict, pipe_kwargs: dict) -> tuple[Any, Image.Image, Any]:
    """(scene, damaged image, defect) of one planted case: a clean generation of the case's
    scene with the case's defect planted in it."""
    scene = scenes.sample_scene(np.random.default_rng(case["scene_seed"]))
    clean = generate(pipe, scenes.HIGH_QUALITY.format(scene.caption), case["generation_seed"],
                     **pipe_kwargs)
    damaged, defect = scenes.plant_defect(np.asarray(clean.convert("RGB")), scene,
                                          np.random.default_rng(case["defect_seed"]), case["kind"])
    return scene, Image.fromarray(damaged), defect


def localization_eval(pipe, cases: list[dict], pipe_kwargs: dict, random_mask_seed: int,
                      config: Any = None) -> dict:
    """Plant a defect in clean generated scenes and score each variant's heatmap against it."""
    localizer = Localizer(pipe, config, **pipe_kwargs)
    ratio = localizer.config.mask_ratio
    rows = []
    t0 = time.perf_counter()
    for i, case in enumerate(cases):
        scene, damaged, defect = planted_case(pipe, case, pipe_kwargs)
        heat = localizer(damaged, scene.caption, case["generation_seed"], random_mask_seed + i)
        grid = heat["full"].shape
        truth = region_to_grid(defect.region, grid)
        n = heat["full"].size
        row = {"case": i, "kind": case["kind"], "area": defect.area, "cells": int(truth.sum())}
        for variant in VARIANTS:
            h = heat[variant]
            row[f"{variant}_auroc"] = auroc(h, truth)
            row[f"{variant}_iou"] = iou(top_mask(h, int(round(ratio * n))), truth)
            row[f"{variant}_iou_matched"] = iou(top_mask(h, max(1, int(truth.sum()))), truth)
        rows.append(row)
    summary = {"cases": len(rows), "seconds": time.perf_counter() - t0, "mask_ratio": ratio}
    for variant in VARIANTS:
        for metric in ("auroc", "iou", "iou_matched"):
            values = np.array([r[f"{variant}_{metric}"] for r in rows], np.float64)
            summary[f"{variant}_{metric}"] = float(np.nanmean(values))
    kinds = sorted({r["kind"] for r in rows})
    summary["by_kind_full_auroc"] = {k: float(np.nanmean([r["full_auroc"] for r in rows
                                                          if r["kind"] == k])) for k in kinds}
    return {"summary": summary, "rows": rows}


# ----- scaling and faithfulness -------------------------------------------------------------
def _outside_change(child: Image.Image, parent: Image.Image, mask: torch.Tensor) -> tuple[float, float]:
    """Mean |child - parent| (0-255 scale) outside and inside the (upsampled) mask."""
    a = np.asarray(child.convert("RGB"), np.float32)
    b = np.asarray(parent.convert("RGB"), np.float32)
    m = mask.float().cpu().numpy()
    fy, fx = a.shape[0] // m.shape[0], a.shape[1] // m.shape[1]
    m = np.kron(m, np.ones((fy, fx))) > 0.5
    diff = np.abs(a - b).mean(axis=2)
    outside = float(diff[~m].mean()) if (~m).any() else float("nan")
    inside = float(diff[m].mean()) if m.any() else float("nan")
    return outside, inside


def scaling_eval(pipe, prompts: list[dict], ns: list[int], pipe_kwargs: dict, select: Any,
                 held: Any, threshold: float = 0.0, config: Any = None,
                 run_n9: bool = True) -> dict:
    """LoTTS (defaults) vs Best-of-N on plain prompts; held-out scores by `held`."""
    from lotts import LoTTS, LoTTSConfig, best_of_n
    config = config or LoTTSConfig()
    lotts = LoTTS(pipe, select, config)
    n_max = max(ns)
    per_prompt, faithful = [], []
    for item in prompts:
        prompt, seed = item["prompt"], int(item["seed"])
        res = lotts(prompt, seed=seed, **pipe_kwargs)
        held_scores = held([c.image for c in res.candidates], prompt).numpy()
        originals = [i for i, c in enumerate(res.candidates) if c.parent is None]
        for c in res.candidates:
            if c.parent is not None and c.mask is not None:
                out, inside = _outside_change(c.image, res.candidates[c.parent].image, c.mask)
                faithful.append((out, inside))
        bon = best_of_n(pipe, prompt, n_max, select, seed=seed, **pipe_kwargs)
        bon_sel = np.array([c.score for c in bon.candidates])
        bon_held = held([c.image for c in bon.candidates], prompt).numpy()
        row = {
            "prompt": prompt, "seed": seed,
            "lotts_held": float(held_scores[res.selected]),
            "lotts_select": float(res.candidates[res.selected].score),
            "lotts_defective": bool(held_scores[res.selected] < threshold),
            "lotts_selected_refinement": res.candidates[res.selected].parent is not None,
            "lotts_nfe": int(res.cost.nfe), "lotts_seconds": res.cost.total_seconds,
            "lotts_verifier_calls": int(res.cost.verifier_calls),
            "originals_defective": [bool(held_scores[i] < threshold) for i in originals],
            "bon_nmax_seconds": bon.cost.total_seconds, "bon_nmax_nfe": int(bon.cost.nfe),
            "bon_candidate_nfe": int(bon.candidates[0].nfe),
            "bon_defective_all": [bool(s < threshold) for s in bon_held],
        }
        for n in ns:
            pick = int(np.argmax(bon_sel[:n]))  # argmax: ties to the lower index, as the sampler
            row[f"bon{n}_held"] = float(bon_held[pick])
            row[f"bon{n}_defective"] = bool(bon_held[pick] < threshold)
        if run_n9:
            b9 = best_of_n(pipe, prompt, 9, select, seed=seed, **pipe_kwargs)
            row["bon9_run_held"] = float(held([b9.image], prompt)[0])
            row["bon9_run_defective"] = bool(row["bon9_run_held"] < threshold)
            row["bon9_run_nfe"], row["bon9_run_seconds"] = int(b9.cost.nfe), b9.cost.total_seconds
            row["bon9_run_matches_prefix"] = bool(abs(row["bon9_run_held"] - row["bon9_held"]) < 1e-3)
        per_prompt.append(row)
    mean = lambda key: float(np.mean([r[key] for r in per_prompt]))  # noqa: E731
    summary = {
        "prompts": len(per_prompt),
        "lotts": {"held": mean("lotts_held"), "defect_rate": mean("lotts_defective"),
                  "nfe": mean("lotts_nfe"), "seconds": mean("lotts_seconds"),
                  "verifier_calls": mean("lotts_verifier_calls"),
                  "selected_refinement_share": mean("lotts_selected_refinement")},
        "plain_prompt_defect_rate": float(np.mean([d for r in per_prompt
                                                   for d in r["bon_defective_all"]])),
        "best_of_n": {},
    }
    per_candidate_nfe = mean("bon_candidate_nfe")
    per_candidate_seconds = mean("bon_nmax_seconds") / n_max
    for n in ns:
        summary["best_of_n"][n] = {"held": mean(f"bon{n}_held"),
                                   "defect_rate": mean(f"bon{n}_defective"),
                                   "nfe": n * per_candidate_nfe, "verifier_calls": n,
                                   "seconds_est": n * per_candidate_seconds}
    if run_n9:
        summary["best_of_9_run"] = {"held": mean("bon9_run_held"), "nfe": mean("bon9_run_nfe"),
                                    "defect_rate": mean("bon9_run_defective"),
                                    "seconds": mean("bon9_run_seconds"),
                                    "matches_prefix": all(r["bon9_run_matches_prefix"]
                                                          for r in per_prompt)}
    match = next((n for n in sorted(ns) if summary["best_of_n"][n]["held"]
                  >= summary["lotts"]["held"]), None)
    summary["bon_matching_n"] = match
    summary["cost_ratio_at_match"] = (None if match is None else
                                      summary["best_of_n"][match]["nfe"] / summary["lotts"]["nfe"])
    summary["faithfulness"] = {
        "refinements": len(faithful),
        "mean_abs_change_outside": float(np.mean([f[0] for f in faithful])) if faithful else None,
        "mean_abs_change_inside": float(np.mean([f[1] for f in faithful])) if faithful else None,
        "scale": "0-255 per channel, pixel space",
    }
    return {"summary": summary, "rows": per_prompt}
