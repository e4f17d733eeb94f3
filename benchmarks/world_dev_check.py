"""Development check of the miniature world's localization, on seeds the evaluation never uses.

    python benchmarks/world_dev_check.py                                  # LoTTSConfig() defaults
    python benchmarks/world_dev_check.py --set token_selection=quality --set localization_level=0.7
    python benchmarks/world_dev_check.py --pipeline /tmp/exported_checkpoint

For looking at a model during training, or at a config option, without touching the fixed
evaluation (benchmarks/world_eval_spec.json): cases are drawn from scene seeds 910000+,
generation seeds 91000+ and defect seeds 95000+, which the spec does not contain. Numbers from
here are diagnostics, never evaluation results.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

SCENE_SEED, GENERATION_SEED, DEFECT_SEED = 910000, 91000, 95000


def dev_cases(count: int) -> list[dict]:
    import numpy as np

    from lotts.world import scenes
    cases = []
    for i in range(count):
        scene = scenes.sample_scene(np.random.default_rng(SCENE_SEED + i))
        cases.append({"scene_seed": SCENE_SEED + i, "caption": scene.caption,
                      "generation_seed": GENERATION_SEED + i, "defect_seed": DEFECT_SEED + i,
                      "kind": scenes.DEFECT_KINDS[i % len(scenes.DEFECT_KINDS)]})
    return cases


def parse_settings(items: list[str]) -> dict:
    """["lam=0.5", "token_selection=quality"] -> LoTTSConfig keyword arguments."""
    from lotts import LoTTSConfig
    fields = {f.name: f for f in dataclasses.fields(LoTTSConfig)}
    out = {}
    for item in items:
        name, equals, text = item.partition("=")
        if not equals:
            raise SystemExit(f"--set {item!r}: expected FIELD=VALUE")
        if name not in fields:
            raise SystemExit(f"--set {item!r}: {name!r} is not a LoTTSConfig field")
        try:
            out[name] = json.loads(text)
        except json.JSONDecodeError:
            out[name] = text
    return out


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pipeline", type=Path, default=None,
                        help="a saved StableDiffusionPipeline (default: the committed world)")
    parser.add_argument("--cases", type=_positive_int, default=30)
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                        help="a LoTTSConfig field for the localization (repeatable)")
    args = parser.parse_args(argv)

    import torch

    from lotts import LoTTSConfig
    from lotts.world.evaluate import load_pipeline, load_spec, localization_eval

    torch.set_num_threads(1)
    config = LoTTSConfig(**parse_settings(args.set))
    pipe = load_pipeline(args.pipeline)
    pipe_kwargs = load_spec()["pipe_kwargs"]
    result = localization_eval(pipe, dev_cases(args.cases), pipe_kwargs, random_mask_seed=4321,
                               config=config)
    summary = result["summary"]
    print(f"{args.cases} development cases, {' '.join(args.set) or 'LoTTSConfig() defaults'}")
    print("| variant | AUROC | IoU (r=0.5) |\n|---|---|---|")
    for variant in ("full", "no_propagation", "diff_only", "orig_only", "random"):
        print(f"| {variant} | {summary[f'{variant}_auroc']:.3f} | {summary[f'{variant}_iou']:.3f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
