"""Development check of the miniature world's localization, on seeds the evaluation never uses.

    python benchmarks/world_dev_check.py                                  # LoTTSConfig() defaults
    python benchmarks/world_dev_check.py --token-selection quality --localization-level 0.7
    python benchmarks/world_dev_check.py --pipeline /tmp/exported_checkpoint

For looking at a model during training, or at a config option, without touching the fixed
evaluation (lotts/world/assets/world_eval_spec.json): cases are drawn from scene seeds 910000+,
generation seeds 91000+ and defect seeds 95000+, which the spec does not contain. Numbers from
here are diagnostics, never evaluation results. Every LoTTSConfig field is an option, as in
``lotts generate``.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

SCENE_SEED, GENERATION_SEED, DEFECT_SEED = 910000, 91000, 95000


def dev_cases(count: int) -> list[dict]:
    from lotts.world.evaluate import planted_cases

    return planted_cases(SCENE_SEED, GENERATION_SEED, DEFECT_SEED, count)


def main(argv: list[str] | None = None) -> int:
    from lotts.cli.options import add_config_options, config_from_args, positive_int
    from lotts.errors import UsageError

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pipeline", type=Path, default=None,
                        help="a saved StableDiffusionPipeline (default: the committed world)")
    parser.add_argument("--cases", type=positive_int, default=30)
    add_config_options(parser)
    args = parser.parse_args(argv)

    import torch

    from lotts import LoTTSConfig
    from lotts.world.evaluate import load_pipeline, load_spec, localization_eval

    torch.set_num_threads(1)
    try:
        config = config_from_args(args)
    except UsageError as error:
        parser.error(str(error))
    changed = {k: v for k, v in dataclasses.asdict(config).items()
               if v != getattr(LoTTSConfig(), k)}
    pipe = load_pipeline(args.pipeline)
    pipe_kwargs = load_spec()["pipe_kwargs"]
    result = localization_eval(pipe, dev_cases(args.cases), pipe_kwargs, random_mask_seed=4321,
                               config=config)
    summary = result["summary"]
    setting = " ".join(f"{k}={v}" for k, v in changed.items()) or "LoTTSConfig() defaults"
    print(f"{args.cases} development cases, {setting}")
    print("| variant | AUROC | IoU (r=0.5) |\n|---|---|---|")
    for variant in ("full", "no_propagation", "diff_only", "orig_only", "random"):
        print(f"| {variant} | {summary[f'{variant}_auroc']:.3f} | {summary[f'{variant}_iou']:.3f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
