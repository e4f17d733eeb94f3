"""``lotts demo``: the whole method end to end on the embedded default, no download, no GPU."""
from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Union

from lotts.cli.console import no_loading_bars, status
from lotts.cli.jobs import METHODS, Job, check_out_dir, load_verifiers, reported_as, run_job
from lotts.cli.options import positive_int
from lotts.runs.prompts import PromptItem

HELP = "the whole method end to end on the embedded default: no download, no GPU"


@dataclass
class EmbeddedDefault:
    """What the demo runs: a pipeline (loaded on demand, after the output directory is
    checked), verifiers that need no download, prompts, settings."""

    load_pipe: Callable[[], Any]
    model: str
    verifier: str
    report_with: list[str]
    prompts: list[str]
    pipe_kwargs: dict[str, Any]
    config: Any
    notes: list[str]
    best_of_n: Union[int, str, None] = "matched"


def embedded_default() -> EmbeddedDefault:
    """The demo's world: the committed miniature world (``lotts.world``), a StableDiffusionPipeline
    trained from scratch on shape scenes with two clean-vs-defect verifiers. Replace this one
    function to change what ``lotts demo`` shows."""
    from lotts.world.demo import embedded_world

    return EmbeddedDefault(**embedded_world())


def load_world_pipeline(world: EmbeddedDefault, quiet: bool) -> Any:
    hint = ("reinstall lotts, or retrain it from a source checkout with "
            "`python -m lotts.world.train`")
    status("loading the miniature world ...", quiet)
    # missing/corrupt assets, an incompatible diffusers
    with no_loading_bars(), reported_as("cannot load the miniature world (lotts/world/assets)", hint):
        return world.load_pipe()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--num-prompts", type=positive_int, default=None,
                        help="use only the first N of the demo prompts")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=positive_int, default=None,
                        help="denoising steps (default: the embedded world's; t0 is half of them)")


def run(args: argparse.Namespace) -> int:
    from lotts.runs.runner import one_cpu_thread

    world = embedded_default()
    device = "cpu"
    job = Job(model=world.model,
              items=[PromptItem(i, p) for i, p in enumerate(world.prompts[: args.num_prompts])],
              out=args.out, methods=METHODS, config=world.config, best_of_n=world.best_of_n,
              verifier=world.verifier, report_with=tuple(world.report_with),
              pipe_kwargs=dict(world.pipe_kwargs, **({"num_inference_steps": args.steps}
                                                     if args.steps else {})),
              seed=args.seed, save_candidates=True, quiet=args.quiet, notes=world.notes,
              title="LoTTS demo (embedded default)")
    check_out_dir(job)  # before anything loads
    job.verifiers = load_verifiers([world.verifier, *world.report_with], device, False)
    job.pipe = load_world_pipeline(world, args.quiet).to(device)
    with one_cpu_thread():
        run_job(job)
    if not args.quiet:
        print((args.out / "compare.md").read_text(encoding="utf-8"))
    return 0
