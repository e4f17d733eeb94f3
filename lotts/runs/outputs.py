"""One finished prompt -> its image files and its manifest record."""
from __future__ import annotations

import importlib
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np

from lotts.runs.files import safe_name, save_image_atomic
from lotts.runs.manifest import RunSpec
from lotts.runs.prompts import PromptItem

IMAGES_DIR = "images"
CANDIDATES_DIR = "candidates"


def to_float_list(values: Any) -> list[float]:
    """Scores as plain floats (tensors, arrays, lists all accepted)."""
    return [float(v) for v in np.asarray(_to_numpy(values), dtype=np.float64).reshape(-1)]


def _to_numpy(value: Any) -> Any:
    if hasattr(value, "detach"):
        return value.detach().float().cpu().numpy()
    return value


def score_candidates(result: Any, prompt: str, selection_key: str,
                     held_out: Mapping[str, Any]) -> tuple[dict[str, list[float]], float]:
    """Scores of every candidate by every verifier: the selection verifier's from the
    candidates, each held-out verifier's computed here on all candidate images (held-out
    scoring is reporting, not the method's cost, so its seconds are returned apart)."""
    scores = {selection_key: [float(c.score) for c in result.candidates]}
    images = [c.image for c in result.candidates]
    start = time.perf_counter()
    for name, verifier in held_out.items():
        scores[name] = to_float_list(verifier(images, [prompt] * len(images)))
    return scores, time.perf_counter() - start


def phase_seconds(cost: Any, report_seconds: float = 0.0) -> dict[str, float]:
    """Seconds per phase; ``total`` is the method's own (held-out scoring is under ``report``
    and left out of it)."""
    out = {str(k): float(v) for k, v in dict(getattr(cost, "seconds", None) or {}).items()}
    out["total"] = sum(v for k, v in out.items() if k not in ("total", "report"))
    out["report"] = out.get("report", 0.0) + report_seconds
    return out


def package_versions() -> dict[str, str]:
    """Package versions recorded with every prompt (results may change with them)."""
    out = {}
    for module in ("lotts", "torch", "diffusers", "transformers", "accelerate"):
        try:
            out[module] = str(importlib.import_module(module).__version__)
        except Exception:  # an optional package missing: record that, never fail a run
            out[module] = "missing"
    return out


@dataclass
class OutputWriter:
    """Writes one prompt's images (selected, and optionally every candidate with its mask,
    heatmap and a grid) atomically, and returns the record's file fields."""

    out_dir: Path
    save_candidates: bool = False
    selection_key: str = "verifier"

    def write(self, item: PromptItem, result: Any, scores: Mapping[str, list[float]]) -> dict[str, Any]:
        name = safe_name(item.id)
        (self.out_dir / IMAGES_DIR).mkdir(parents=True, exist_ok=True)
        image_path = f"{IMAGES_DIR}/{name}.png"
        save_image_atomic(result.image, self.out_dir / image_path)
        files: dict[str, Any] = {"image": image_path, "grid": None, "candidate_files": None}
        if self.save_candidates:
            files.update(self._write_candidates(name, item, result, scores))
        return files

    def _write_candidates(self, name: str, item: PromptItem, result: Any,
                          scores: Mapping[str, list[float]]) -> dict[str, Any]:
        from lotts import report

        folder = self.out_dir / CANDIDATES_DIR / name
        folder.mkdir(parents=True, exist_ok=True)
        relative = f"{CANDIDATES_DIR}/{name}"
        entries = []
        for index, candidate in enumerate(result.candidates):
            stem = f"{relative}/c{index:02d}"
            entry: dict[str, Optional[str]] = {"image": f"{stem}.png", "mask": None,
                                               "heatmap": None}
            save_image_atomic(candidate.image, self.out_dir / f"{stem}.png")
            size = candidate.image.size
            if getattr(candidate, "mask", None) is not None:
                entry["mask"] = f"{stem}-mask.png"
                save_image_atomic(report.mask_image(candidate.mask, size),
                                  self.out_dir / f"{stem}-mask.png")
            if getattr(candidate, "heatmap", None) is not None:
                entry["heatmap"] = f"{stem}-heatmap.png"
                save_image_atomic(report.heatmap_image(candidate.heatmap, size),
                                  self.out_dir / f"{stem}-heatmap.png")
            entries.append(entry)
        grid = report.candidate_grid(result, scores.get(self.selection_key), title=item.prompt,
                                     score_name=self.selection_key)
        save_image_atomic(grid, folder / "grid.png")
        return {"grid": f"{relative}/grid.png", "candidate_files": entries}


def make_record(item: PromptItem, seed: int, result: Any, spec: RunSpec,
                scores: Mapping[str, list[float]], files: Mapping[str, Any],
                report_seconds: float = 0.0, rank: int = 0) -> dict[str, Any]:
    """The manifest line for one finished prompt (``rank``: the process that made it)."""
    cost = result.cost
    nfe_by_phase = getattr(cost, "nfe_by_phase", None)
    return {
        "id": item.id,
        "prompt": item.prompt,
        "method": spec.method,
        "seed": seed,
        "seeds": [int(c.seed) for c in result.candidates],
        "parents": [None if c.parent is None else int(c.parent) for c in result.candidates],
        "candidate_nfe": [int(getattr(c, "nfe", 0) or 0) for c in result.candidates],
        "scores": dict(scores),
        "selection_verifier": spec.verifier,
        "selected": int(result.selected),
        "nfe": int(cost.nfe),
        "verifier_calls": int(cost.verifier_calls),
        "nfe_by_phase": None if nfe_by_phase is None else {k: int(v) for k, v in nfe_by_phase.items()},
        "seconds": phase_seconds(cost, report_seconds),
        "config_hash": spec.hash,
        "rank": rank,
        "versions": package_versions(),
        **files,
    }

