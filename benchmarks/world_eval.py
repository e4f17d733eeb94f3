"""The miniature world's benchmark: does LoTTS localize defects, and does it beat Best-of-N?

    python benchmarks/world_eval.py            # full evaluation (~15-30 min on 2 CPU cores)
    python benchmarks/world_eval.py --smoke    # a few prompts: loads, runs, numbers in range

Inputs are fixed in lotts/world/assets/world_eval_spec.json (written before any result was seen; never
tuned). Measures, with the committed world (lotts/world/assets) and the public sampler:
1. localization of planted defects: heatmap AUROC and mask IoU of the full method and the
   method doc's ablations (random mask, no propagation, CA_diff only, CA_orig only);
2. scaling: LoTTS at LoTTSConfig() defaults vs Best-of-N over N, held-out score (world-clean-b)
   and defect rate of the selected images, NFE and seconds, and the N at which Best-of-N first
   matches LoTTS;
3. faithfulness: mean absolute pixel change outside the mask between parent and refinement.
Writes benchmarks/world_eval_rows/world_eval.json (smoke: benchmarks/results/) and (full run) the tables into
benchmarks/RESULTS.md between the world-eval markers.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
if importlib.util.find_spec("lotts") is None:  # a bare checkout: its own source
    sys.path.insert(0, str(HERE.parent))

ROWS = HERE / "world_eval_rows" / "world_eval.json"
BEGIN, END = "<!-- world-eval:begin -->", "<!-- world-eval:end -->"


def run(smoke: bool = False, spec_path: Path | None = None, threads: int | None = None) -> dict:
    import torch

    from lotts.verifiers import load_verifier
    from lotts.world.evaluate import (
        load_pipeline,
        load_spec,
        localization_eval,
        packaged_path,
        scaling_eval,
    )

    if threads:
        torch.set_num_threads(threads)
    spec = load_spec(spec_path)
    pipe = load_pipeline(packaged_path(spec["pipeline"]))
    select = load_verifier(spec["select_with"], device="cpu")
    held = load_verifier(spec["report_with"], device="cpu")
    pipe_kwargs = spec["smoke"]["pipe_kwargs"] if smoke else spec["pipe_kwargs"]
    cases = spec["localization"]["cases"]
    prompts = spec["scaling"]["prompts"]
    ns = spec["scaling"]["best_of_n_ns"]
    if smoke:
        cases = cases[: spec["smoke"]["localization_cases"]]
        prompts = prompts[: spec["smoke"]["scaling_prompts"]]
        ns = spec["smoke"]["best_of_n_ns"]
    t0 = time.perf_counter()
    loc = localization_eval(pipe, cases, pipe_kwargs, spec["localization"]["random_mask_seed"])
    t1 = time.perf_counter()
    scal = scaling_eval(pipe, prompts, ns, pipe_kwargs, select, held,
                        threshold=spec["defect_threshold"], run_n9=not smoke)
    t2 = time.perf_counter()
    return {"smoke": smoke, "pipe_kwargs": pipe_kwargs,
            "machine": {"platform": platform.platform(), "torch": torch.__version__,
                        "threads": torch.get_num_threads(), "loadavg": os.getloadavg()},
            "seconds": {"localization": t1 - t0, "scaling": t2 - t1},
            "localization": loc, "scaling": scal}


def tables(result: dict, rows_path: str = "") -> str:
    loc = result["localization"]["summary"]
    sc = result["scaling"]["summary"]
    lines = ["### 1. Localization of planted defects",
             "", f"{loc['cases']} clean generated scenes, one planted defect each; heatmap at "
             f"latent resolution (16x16). IoU: top r = {loc['mask_ratio']} mask (the method's "
             "mask) and top-|region| mask (ratio matched to the planted area).", "",
             "| variant | AUROC | IoU (r=0.5) | IoU (matched r) |", "|---|---|---|---|"]
    names = {"full": "full method", "no_propagation": "no propagation (eq. 2 skipped)",
             "diff_only": "no reweighting (CA_diff only)", "orig_only": "reweighting only (CA_orig only)",
             "random": "random mask"}
    for v, label in names.items():
        lines.append(f"| {label} | {loc[v + '_auroc']:.3f} | {loc[v + '_iou']:.3f} | "
                     f"{loc[v + '_iou_matched']:.3f} |")
    lines += ["", "Full-method AUROC by defect kind: " + ", ".join(
        f"{k} {v:.3f}" for k, v in loc["by_kind_full_auroc"].items()), ""]
    lo = sc["lotts"]
    lines += ["### 2. Scaling: LoTTS (defaults) vs Best-of-N on plain prompts", "",
              f"{sc['prompts']} plain prompts; selection world-clean-a, held-out world-clean-b "
              f"(logit of clean); defective = held-out logit < 0. Plain-prompt defect rate of "
              f"single generations: {sc['plain_prompt_defect_rate']:.3f}.", "",
              "| method | held-out score | defect rate | NFE / prompt | verifier calls | s / prompt |",
              "|---|---|---|---|---|---|",
              f"| LoTTS (3 seeds x (1+2)) | {lo['held']:.3f} | {lo['defect_rate']:.3f} | "
              f"{lo['nfe']:.0f} | {lo['verifier_calls']:.0f} | {lo['seconds']:.2f} |"]
    if "best_of_9_run" in sc:
        b9 = sc["best_of_9_run"]
        lines.append(f"| Best-of-9 (own run) | {b9['held']:.3f} | {b9['defect_rate']:.3f} | "
                     f"{b9['nfe']:.0f} | 9 | {b9['seconds']:.2f} |")
    for n, b in sorted(sc["best_of_n"].items(), key=lambda kv: int(kv[0])):
        lines.append(f"| Best-of-{n} | {b['held']:.3f} | {b['defect_rate']:.3f} | {b['nfe']:.0f} | "
                     f"{b['verifier_calls']} | {b['seconds_est']:.2f} (est.) |")
    match = sc["bon_matching_n"]
    lines += ["", (f"Best-of-N first matches LoTTS's held-out score at N = {match}: "
                   f"{sc['cost_ratio_at_match']:.2f}x LoTTS's NFE.") if match is not None else
              f"Best-of-N does not reach LoTTS's held-out score up to N = "
              f"{max(int(n) for n in sc['best_of_n'])}.",
              f"LoTTS selected a refinement for {lo['selected_refinement_share']:.2f} of prompts.",
              "", "### 3. Faithfulness", ""]
    f = sc["faithfulness"]
    if f["refinements"]:
        lines.append(f"Over {f['refinements']} refinements: mean |refinement - parent| outside the "
                     f"mask {f['mean_abs_change_outside']:.2f}, inside {f['mean_abs_change_inside']:.2f} "
                     f"(0-255 per channel).")
    m = result["machine"]
    lines += ["", f"Run: {m['platform']}, torch {m['torch']}, {m['threads']} threads, load average "
              f"{m['loadavg'][0]:.1f}; localization {result['seconds']['localization']:.0f} s, "
              f"scaling {result['seconds']['scaling']:.0f} s. Per-prompt rows: "
              f"`{rows_path}`."]
    return "\n".join(lines)


def write_results_block(begin: str, end: str, text: str) -> None:
    """Put `text` between the `begin` and `end` markers of RESULTS.md (appended if absent)."""
    path = HERE / "RESULTS.md"
    body = path.read_text() if path.exists() else "# Benchmark results\n"
    block = f"{begin}\n{text}\n{end}"
    if begin in body and end in body:
        body = body[: body.index(begin)] + block + body[body.index(end) + len(end):]
    else:
        body = body.rstrip("\n") + "\n\n" + block + "\n"
    path.write_text(body)


def write_results_md(text: str) -> None:
    write_results_block(BEGIN, END, "## Miniature world (`benchmarks/world_eval.py`)\n\n"
                        "Command: `python benchmarks/world_eval.py`; fixed inputs in "
                        "`lotts/world/assets/world_eval_spec.json`.\n\n" + text)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--spec", type=Path, default=None)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--no-results-md", action="store_true")
    args = parser.parse_args(argv)
    result = run(args.smoke, args.spec, args.threads)
    # per-prompt rows of full runs on the committed spec are kept next to RESULTS.md; smoke runs
    # and other specs write scratch files
    if args.smoke:
        out = HERE / "results" / "world_eval_smoke.json"
    elif args.spec is None:
        out = ROWS
    else:
        out = HERE / "results" / f"world_eval_{args.spec.stem}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=1, default=float))
    text = tables(json.loads(out.read_text()), str(out.relative_to(HERE.parent)))
    print(text)
    if not args.smoke and not args.no_results_md:
        write_results_md(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
