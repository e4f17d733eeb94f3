"""World evaluation v2: mask sources on the model's own defects, and methods at matched NFE.

    python benchmarks/world_eval_v2.py                 # the committed spec (world_eval_spec_v2.json)
    python benchmarks/world_eval_v2.py --smoke         # two prompts, short schedule (tests)
    python benchmarks/world_eval_v2.py --dev           # development prompts/seeds (never the spec)
    python benchmarks/world_eval_v2.py --shard 0/2     # half the prompts; --merge joins shards

Measures (lotts/world/evaluate_v2.py): (1) planted-defect AUROC per mask source; (2) repair
rate of ONE refinement per mask source at equal area r against the random mask, paired on the
same parents and noise, 95% bootstrap intervals over prompts; (3) Best-of-N over N, LoTTS per
mask source, whole-image refinement and Particle Sampling, selected by world-clean-a and judged
by world-clean-b, with the N at which Best-of-N first matches each method.
The spec was written (``--write-spec``) and committed before any result on it was produced.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

SPEC = HERE / "world_eval_spec_v2.json"
ROWS = HERE / "world_eval_rows" / "world_eval_v2.json"
BEGIN, END = "<!-- world-eval-v2:begin -->", "<!-- world-eval-v2:end -->"
SOURCES = ("attention", "verifier", "attention+verifier", "random", "full")
# Seed bases: spec and development sets are disjoint from each other and from v1 (v1: scene
# seeds 700000+, prompt seeds 10000 + 100 i, generation 1000+, defect 5000+; v1 dev check:
# scene 910000+, generation 91000+, defect 95000+).
SEEDS = {"spec": {"scene": 740000, "prompt": 30000, "planted_scene": 750000,
                  "planted_generation": 40000, "planted_defect": 45000},
         "dev": {"scene": 960000, "prompt": 60000, "planted_scene": 970000,
                 "planted_generation": 70000, "planted_defect": 75000}}


def build_spec(which: str, repair_prompts: int, scaling_prompts: int, planted: int,
               methods: dict, lotts_base: dict) -> dict:
    from lotts.world.evaluate import planted_cases
    from lotts.world.evaluate_v2 import prompts_from
    s = SEEDS[which]
    return {
        "_doc": ("Fixed inputs of benchmarks/world_eval_v2.py, written and committed before any "
                 "result on them; never tuned afterwards. Designed on the development seeds "
                 "(SEEDS['dev'] in the script), disjoint from these and from v1's."),
        "set": which,
        "pipeline": "lotts/world/assets/pipeline",
        "pipe_kwargs": {"num_inference_steps": 20, "guidance_scale": 4.0, "height": 64, "width": 64},
        "select_with": "world-clean-a", "report_with": "world-clean-b",
        "defect_threshold": 0.0,
        "bootstrap": {"reps": 2000, "seed": 2024},
        "planted": {"cases": planted_cases(s["planted_scene"], s["planted_generation"],
                                           s["planted_defect"], planted),
                    "random_mask_seed": 4242, "occlusion_patch": 2},
        "repair": {"doc": ("parents: the sample of seed + j (j < seeds_per_prompt) per prompt, "
                           "denoised by the library's loop; defective = held-out logit < "
                           "threshold; each defective parent refined ONCE per (source, r) from "
                           "t0 with ONE injected noise (stream_seed(seed, 'repair-noise')); "
                           "repaired = held-out logit >= threshold after"),
                   "prompts": prompts_from(s["scene"], s["prompt"], repair_prompts),
                   "seeds_per_prompt": 3, "sources": list(SOURCES), "ratios": [0.2, 0.5, 0.8],
                   "config": lotts_base},
        "scaling": {"prompts": prompts_from(s["scene"] + 5000, s["prompt"] + 50, scaling_prompts),
                    "best_of_n_ns": [1, 2, 3, 4, 5, 6, 8, 10, 12, 16, 20, 24],
                    "methods": methods},
        "smoke": {"pipe_kwargs": {"num_inference_steps": 4, "guidance_scale": 4.0, "height": 64,
                                  "width": 64},
                  "repair_prompts": 2, "seeds_per_prompt": 1, "scaling_prompts": 1,
                  "planted_cases": 1, "best_of_n_ns": [1, 2],
                  "methods": ["lotts_attention_small", "particles_small"]},
    }


def default_methods(lotts_base: dict, particles: dict) -> dict:
    methods = {}
    for source in SOURCES:
        name = "lotts_" + source.replace("+", "_")
        methods[name] = {"kind": "lotts", "config": {**lotts_base, "mask_source": source}}
        methods[name + "_small"] = {"kind": "lotts", "config": {**lotts_base, "mask_source": source,
                                                                "num_seeds": 1}}
    methods["particles"] = {"kind": "particles", "options": particles}
    methods["particles_small"] = {"kind": "particles", "options": {**particles, "num_particles": 2}}
    return methods


def run(spec: dict, smoke: bool, shard: tuple[int, int], parts: set[str]) -> dict:
    import torch

    from lotts import LoTTSConfig
    from lotts.verifiers import load_verifier
    from lotts.world.evaluate import load_pipeline
    from lotts.world.evaluate_v2 import planted_eval, repair_eval, scaling_eval

    torch.set_num_threads(1)
    pipe = load_pipeline(HERE.parent / spec["pipeline"])
    select = load_verifier(spec["select_with"], device="cpu")
    held = load_verifier(spec["report_with"], device="cpu")
    kwargs = spec["smoke"]["pipe_kwargs"] if smoke else spec["pipe_kwargs"]
    threshold = spec["defect_threshold"]
    rep, sc, pl = spec["repair"], dict(spec["scaling"]), spec["planted"]
    repair_prompts, scaling_prompts, cases = rep["prompts"], sc["prompts"], pl["cases"]
    if smoke:
        sm = spec["smoke"]
        repair_prompts, scaling_prompts = repair_prompts[: sm["repair_prompts"]], \
            scaling_prompts[: sm["scaling_prompts"]]
        cases = cases[: sm["planted_cases"]]
        sc["best_of_n_ns"] = sm["best_of_n_ns"]
        sc["methods"] = {k: sc["methods"][k] for k in sm["methods"]}
    seeds_per_prompt = spec["smoke"]["seeds_per_prompt"] if smoke else rep["seeds_per_prompt"]
    i, n = shard
    out: dict = {"seconds": {}}
    t = time.perf_counter()
    if "planted" in parts:
        out["planted"] = planted_eval(pipe, cases[i::n], kwargs, select, pl["random_mask_seed"],
                                      patch=pl["occlusion_patch"])["rows"]
    out["seconds"]["planted"] = time.perf_counter() - t
    t = time.perf_counter()
    if "repair" in parts:
        out["repair"] = repair_eval(pipe, repair_prompts[i::n], seeds_per_prompt, kwargs,
                                    select, held, rep["sources"], rep["ratios"], threshold,
                                    LoTTSConfig(**rep["config"]))
        for row in out["repair"]:  # prompt index in the whole list, not the shard's
            row["prompt_index"] = row["prompt_index"] * n + i
    out["seconds"]["repair"] = time.perf_counter() - t
    t = time.perf_counter()
    if "scaling" in parts:
        out["scaling"] = scaling_eval(pipe, scaling_prompts[i::n], kwargs, select, held, sc,
                                      threshold)
    out["seconds"]["scaling"] = time.perf_counter() - t
    out["scaling_spec"] = sc
    return out


def summarize(result: dict, spec: dict) -> dict:
    import numpy as np

    from lotts.world.evaluate_v2 import AUROC_SOURCES, repair_summary, scaling_summary
    boot = spec["bootstrap"]
    summary: dict = {}
    if result.get("planted"):
        rows = result["planted"]
        summary["planted"] = {"cases": len(rows), **{
            f"{s}_{m}": float(np.nanmean([r[f"{s}_{m}"] for r in rows]))
            for s in AUROC_SOURCES for m in ("auroc", "iou")}}
    if result.get("repair"):
        rep = spec["repair"]
        summary["repair"] = repair_summary(result["repair"], rep["sources"], rep["ratios"],
                                           boot["reps"], boot["seed"])
    if result.get("scaling"):
        summary["scaling"] = scaling_summary(result["scaling"], result["scaling_spec"],
                                             spec["defect_threshold"], boot["reps"], boot["seed"])
    return summary


def _ci(t, fmt="{:.3f}") -> str:
    return f"{fmt.format(t[0])} [{fmt.format(t[1])}, {fmt.format(t[2])}]"


def tables(summary: dict, meta: dict) -> str:
    lines = []
    if "planted" in summary:
        p = summary["planted"]
        lines += ["### 1. Planted defects: heatmap AUROC per mask source", "",
                  f"{p['cases']} clean generated scenes, one planted defect each (16x16 grid).", "",
                  "| source | AUROC | IoU (r=0.5) |", "|---|---|---|"]
        for s in ("attention", "verifier_gradient", "verifier_occlusion", "attention+verifier",
                  "random"):
            lines.append(f"| {s} | {p[s + '_auroc']:.3f} | {p[s + '_iou']:.3f} |")
        lines.append("")
    if "repair" in summary:
        r = summary["repair"]
        lines += ["### 2. Repair of the model's own defects: one refinement per mask source", "",
                  f"{r['parents']} generated parents, {r['defective_parents']} defective "
                  f"(held-out world-clean-b logit < 0) over {r['prompts_with_defective']} prompts. "
                  "Each defective parent refined once per (source, r), all from the same injected "
                  "noise; repaired = held-out logit >= 0 afterwards. Brackets: 95% bootstrap "
                  "over prompts.", "",
                  "| source | r | repair rate | minus random (same r, paired) |", "|---|---|---|---|"]
        for key, entry in r["table"].items():
            source, ratio = key.split("@")
            diffs = "; ".join(f"vs {k[6:]}: {_ci(v, '{:+.3f}')}" for k, v in entry.items()
                              if k.startswith("minus_"))
            lines.append(f"| {source} | {ratio} | {_ci(entry['rate'])} | {diffs or '-'} |")
        lines.append("")
    if "scaling" in summary:
        s = summary["scaling"]
        lines += ["### 3. Scaling at matched NFE", "",
                  f"{s['prompts']} plain prompts; selected by world-clean-a, judged by world-clean-b "
                  "(logit of clean); defective = held-out logit < 0. Brackets: 95% bootstrap over "
                  f"prompts. Best-of-N rows are prefixes of one N = {max(map(int, s['best_of_n']))} run.", "",
                  "| method | held-out score | defect rate | NFE | verifier calls | s / prompt | "
                  "BoN matches at N (x NFE) | minus BoN of ~same NFE |",
                  "|---|---|---|---|---|---|---|---|"]
        for name, m in sorted(s["methods"].items(), key=lambda kv: kv[1]["nfe"]):
            match = (f"not up to N = {max(map(int, s['best_of_n']))}" if m["bon_matching_n"] is None else
                     f"{m['bon_matching_n']} ({m['bon_nfe_ratio_at_match']:.2f}x)")
            lines.append(f"| {name} | {_ci(m['held'])} | {_ci(m['defect_rate'])} | {m['nfe']:.0f} | "
                         f"{m['verifier_calls']:.0f} | {m['seconds']:.2f} | {match} | "
                         f"BoN-{m['matched_bon_n']}: {_ci(m['minus_matched_bon'], '{:+.3f}')} |")
        for n, b in sorted(s["best_of_n"].items(), key=lambda kv: int(kv[0])):
            lines.append(f"| Best-of-{n} | {_ci(b['held'])} | {_ci(b['defect_rate'])} | "
                         f"{b['nfe']:.0f} | {n} | | | |")
        lines.append("")
    lines.append(f"Run: {meta['platform']}, torch {meta['torch']}, diffusers {meta['diffusers']}, "
                 f"1 thread per process, {meta['processes']} processes, commit {meta['commit']}; "
                 f"seconds {meta['seconds']}.")
    return "\n".join(lines)


def meta_info(seconds: dict, processes: int) -> dict:
    import diffusers
    import torch
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True, cwd=HERE, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = "unknown"
    return {"platform": platform.platform(), "torch": torch.__version__,
            "diffusers": diffusers.__version__, "commit": commit, "processes": processes,
            "loadavg": os.getloadavg(), "seconds": {k: round(v) for k, v in seconds.items()}}


def write_results_md(text: str) -> None:
    from benchmarks.world_eval import write_results_block

    write_results_block(BEGIN, END,
                        "## Miniature world, evaluation v2 (`benchmarks/world_eval_v2.py`)\n\n"
                        "Fixed inputs in `benchmarks/world_eval_spec_v2.json` (committed before any "
                        "result on it). Per-prompt rows: "
                        "`benchmarks/world_eval_rows/world_eval_v2.json`.\n\n" + text)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--dev", action="store_true", help="development prompts and seeds")
    parser.add_argument("--spec", type=Path, default=SPEC)
    parser.add_argument("--shard", default="0/1", help="i/n: every n-th prompt from the i-th")
    parser.add_argument("--parts", default="planted,repair,scaling")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--merge", type=Path, nargs="+", default=None,
                        help="shard outputs to join into the rows file and the tables")
    parser.add_argument("--write-spec", action="store_true")
    parser.add_argument("--dev-sizes", default="16,8,10", help="repair,scaling,planted (dev)")
    parser.add_argument("--no-results-md", action="store_true")
    args = parser.parse_args(argv)
    if args.write_spec:
        spec = spec_from_design("spec", SPEC_SIZES)
        args.spec.write_text(json.dumps(spec, indent=1) + "\n")
        print(f"wrote {args.spec}")
        return 0
    if args.dev:
        spec = spec_from_design("dev", tuple(int(x) for x in args.dev_sizes.split(",")))
    else:
        spec = json.loads(args.spec.read_text())
    if args.merge:
        parts = [json.loads(p.read_text()) for p in args.merge]
        result = {"planted": [], "repair": [], "scaling": [], "seconds": {}}
        for part in parts:
            for key in ("planted", "repair", "scaling"):
                result[key] += part.get(key, [])
            for k, v in part["seconds"].items():
                result["seconds"][k] = max(result["seconds"].get(k, 0.0), v)
        result["scaling_spec"] = parts[0]["scaling_spec"]
        result["scaling"].sort(key=lambda r: r["seed"])
        result["meta"] = meta_info(result["seconds"], len(parts))
        # the code that produced the rows is the shards' commit, not the merging one
        result["meta"]["commit"] = ",".join(sorted({p["meta"]["commit"] for p in parts}))
        result["meta"]["loadavg"] = [p["meta"]["loadavg"] for p in parts]
        summary = summarize(result, spec)
        result["summary"] = summary
        out = args.out or ROWS
        out.parent.mkdir(exist_ok=True)
        out.write_text(json.dumps(result, indent=1, default=float))
        text = tables(summary, result["meta"])
        print(text)
        if not args.no_results_md and not args.dev:
            write_results_md(text)
        return 0
    i, n = (int(x) for x in args.shard.split("/"))
    commit = meta_info({}, 1)["commit"]  # the code that runs: HEAD when the run starts
    result = run(spec, args.smoke, (i, n), set(args.parts.split(",")))
    result["meta"] = {**meta_info(result["seconds"], 1), "commit": commit}
    summary = summarize(result, spec)
    result["summary"] = summary
    out = args.out or (HERE / "results" / ("world_eval_v2_smoke.json" if args.smoke else
                                           f"world_eval_v2_{'dev' if args.dev else 'shard'}"
                                           f"_{i}of{n}.json"))
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=1, default=float))
    print(tables(summary, result["meta"]))
    return 0


# ----- the design chosen on development seeds (see RESULTS.md's v2 section) ------------------
LOTTS_BASE: dict = {}            # LoTTSConfig() defaults: 3 seeds x (1 + 2), r = 0.5, t0 = half
PARTICLES = {"num_particles": 6, "potential": "max", "lam": 1.0}
# repair prompts (x 3 seeds), scaling prompts, planted cases: sized from the development run's
# per-case seconds on the shared machine (load ~7 on 2 cores: 1.3 s per planted case, 3.7 s per
# repair parent, ~90 s per scaling prompt with Best-of-24) to finish in ~25 min as 2 processes
SPEC_SIZES = (60, 24, 40)


def spec_from_design(which: str, sizes: tuple[int, int, int]) -> dict:
    return build_spec(which, sizes[0], sizes[1], sizes[2],
                      default_methods(LOTTS_BASE, PARTICLES), LOTTS_BASE)


if __name__ == "__main__":
    raise SystemExit(main())
