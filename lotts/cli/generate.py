"""``lotts generate``: LoTTS and/or Best-of-N over prompts, resumable, sharded under torchrun."""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Optional

from lotts.cli.jobs import (
    METHODS,
    Job,
    check_out_dir,
    load_pipeline,
    load_verifiers,
    place_pipeline,
    resolve_dtype,
    run_job,
)
from lotts.cli.options import (
    add_config_options,
    best_of_n_arg,
    config_from_args,
    pipe_arg,
    positive_int,
)
from lotts.errors import UsageError
from lotts.methods import ALL_METHODS
from lotts.runs.manifest import score_key
from lotts.runs.prompts import PromptItem, read_prompts

HELP = ("run LoTTS, Best-of-N, Resampling or Particle Sampling over prompts (resumable, shards "
        "under torchrun/accelerate)")
METHOD_CHOICES = (*ALL_METHODS, "both", "all")
DTYPES = ("auto", "float32", "float16", "bfloat16")
DEFAULT_VERIFIER = "image-reward"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="diffusers pipeline: local folder or hub id")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--prompt", action="append", help="a prompt (repeat for several)")
    source.add_argument("--prompts", type=Path, metavar="FILE",
                        help="text (one prompt per line), .csv or .jsonl with a prompt column/"
                             "field and an optional id")
    parser.add_argument("--out", type=Path, required=True, help="output directory")
    parser.add_argument("--method", choices=METHOD_CHOICES, default="lotts",
                        help="'both' runs LoTTS and Best-of-N into OUT/lotts and OUT/best-of-n; "
                             "'all' also Resampling (one sample) and Particle Sampling, each "
                             "into OUT/<method>, ranked in OUT/ranking.md")
    parser.add_argument("--budget-nfe", type=positive_int, default=None, metavar="N",
                        help="size every method to at most N denoiser evaluations per prompt "
                             "(Best-of-N / particle counts, LoTTS seeds at the given k)")
    parser.add_argument("--particles", type=positive_int, default=None, metavar="N",
                        help="Particle Sampling's particle count (default: Best-of-N's N)")
    parser.add_argument("--best-of-n", type=best_of_n_arg, default="matched", metavar="N|matched",
                        help="Best-of-N sample count; 'matched' (the default): the N whose NFE "
                             "is closest to LoTTS's (LoTTSConfig.matched_best_of_n)")
    from lotts.verifiers import available_verifiers

    parser.add_argument("--verifier", default=DEFAULT_VERIFIER, metavar="NAME|PATH",
                        help=f"selection verifier: a built-in name ({', '.join(available_verifiers())}"
                             "; reward models need their weights on this machine, see the README; "
                             "world-clean-a/b ship with lotts, stat-* need no weights) or a path "
                             "to a verifier's weights (default: %(default)s)")
    parser.add_argument("--report-with", default="", metavar="NAMES",
                        help="comma-separated held-out verifiers (names or paths as for "
                             "--verifier) scoring every candidate")
    parser.add_argument("--seed", type=int, default=0, help="global seed (per-prompt seeds "
                        "derive from it and the prompt id)")
    parser.add_argument("--allow-download", action="store_true",
                        help="let diffusers and verifiers download weights")
    parser.add_argument("--save-candidates", action="store_true",
                        help="also save every candidate, mask, heatmap and a grid per prompt")
    pipe = parser.add_argument_group("pipeline options")
    pipe.add_argument("--steps", type=positive_int, default=None, help="num_inference_steps")
    pipe.add_argument("--guidance-scale", type=float, default=None)
    pipe.add_argument("--height", type=positive_int, default=None)
    pipe.add_argument("--width", type=positive_int, default=None)
    pipe.add_argument("--negative-prompt", default=None)
    pipe.add_argument("--pipe-arg", type=pipe_arg, action="append", default=[],
                      metavar="KEY=VALUE", help="any other pipeline call argument (VALUE as JSON)")
    pipe.add_argument("--dtype", choices=DTYPES, default="auto",
                      help="auto: bfloat16 on CUDA, float32 on CPU")
    pipe.add_argument("--device", default=None,
                      help="default: this process's accelerate device (cuda:N or cpu)")
    pipe.add_argument("--offload", action="store_true",
                      help="diffusers model CPU offload (saves GPU memory, costs time)")
    add_config_options(parser)


def pipe_kwargs_from_args(args: argparse.Namespace) -> dict[str, Any]:
    named = {"num_inference_steps": args.steps, "guidance_scale": args.guidance_scale,
             "height": args.height, "width": args.width, "negative_prompt": args.negative_prompt}
    kwargs = {key: value for key, value in named.items() if value is not None}
    kwargs.update(dict(args.pipe_arg))
    return kwargs


def prompt_items(args: argparse.Namespace) -> list[PromptItem]:
    if args.prompts is not None:
        return read_prompts(args.prompts)
    if any(not p.strip() for p in args.prompt):
        raise UsageError("--prompt must not be empty")
    return [PromptItem(i, p.strip()) for i, p in enumerate(args.prompt)]


def resolve_device(requested: Optional[str], state: Any) -> str:
    """This process's device: the one asked for, except that a bare "cuda" (or nothing) under
    a multi-process launch means this rank's own GPU."""
    if requested is None or (requested == "cuda" and state.device.type == "cuda"):
        return str(state.device)
    return requested


def run(args: argparse.Namespace) -> int:
    import torch

    from lotts.runs.runner import distributed_state

    items = prompt_items(args)  # before any loading: a bad file fails fast
    config = config_from_args(args)
    methods = {"both": METHODS, "all": ALL_METHODS}.get(args.method, (args.method,))
    on_cpu = (args.device or "").startswith("cpu") or not torch.cuda.is_available()
    if (args.device or "").startswith("cuda") and not torch.cuda.is_available():
        raise UsageError(f"--device {args.device} but no CUDA device is available")
    state = distributed_state(cpu=on_cpu)
    device = resolve_device(args.device, state)
    dtype = resolve_dtype(args.dtype, device)
    report_with = [s.strip() for s in args.report_with.split(",") if s.strip()]
    job = Job(model=args.model, items=items, out=args.out, methods=methods, config=config,
              best_of_n=args.best_of_n, verifier=score_key(args.verifier),
              report_with=tuple(score_key(spec) for spec in report_with),
              pipe_kwargs=pipe_kwargs_from_args(args), seed=args.seed,
              dtype=str(dtype).replace("torch.", ""), save_candidates=args.save_candidates,
              quiet=args.quiet, state=state, budget_nfe=args.budget_nfe, particles=args.particles)
    check_out_dir(job)  # before anything loads: a wrong --out costs nothing
    job.verifiers = load_verifiers([args.verifier, *report_with], device, args.allow_download)
    job.pipe = place_pipeline(load_pipeline(args.model, dtype, args.allow_download, args.quiet),
                              device, args.offload)
    run_job(job)
    return 0
