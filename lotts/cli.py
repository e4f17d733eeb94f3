"""The ``lotts`` command: generate, demo, bench, compare, env.

Every problem a user can fix (a missing model or verifier weights, an unreadable prompt file, an
out-of-range option, an output directory of another run) ends with one message and exit code 2;
``--debug`` shows the traceback instead.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import re
import sys
import typing
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Union

from lotts.batch import BatchError, PromptItem, RunSpec

METHODS = ("lotts", "best-of-n")
METHOD_CHOICES = (*METHODS, "both")
DTYPES = ("auto", "float32", "float16", "bfloat16")
DEFAULT_VERIFIER = "image-reward"


class UsageError(BatchError):
    """A problem the user can fix from the command line (exit code 2)."""


# --------------------------------------------------------------------------------------------
# LoTTSConfig options, generated from the dataclass
# --------------------------------------------------------------------------------------------
def _config_class() -> type:
    from lotts.config import LoTTSConfig

    return LoTTSConfig


def _field_help(doc: str, name: str, names: Sequence[str]) -> str:
    """The sentence(s) the class docstring gives a field ("name: text. next_name: ...")."""
    label = r"\b{}\b(?: \([^)]*\))?:"
    others = "|".join(label.format(re.escape(n)) for n in names if n != name)
    match = re.search(label.format(re.escape(name)) + rf"\s*(.*?)(?=\s(?:{others})|\n\s*\n|$)",
                      doc, re.DOTALL)
    return " ".join(match.group(1).split()) if match else ""


def _parse_scalar(text: str, kinds: Sequence[type], optional: bool) -> Any:
    """argparse type for int/float/str fields and unions of them; 'none' gives None."""
    if optional and text.lower() == "none":
        return None
    for kind in kinds:
        if kind is int and re.fullmatch(r"[+-]?\d+", text):
            return int(text)
        if kind is float:
            try:
                return float(text)
            except ValueError:
                continue
        if kind is str:
            return text
    raise argparse.ArgumentTypeError(f"expected {' or '.join(k.__name__ for k in kinds)}, got {text!r}")


def _argument_for(annotation: Any) -> dict[str, Any]:
    """argparse keyword arguments (type, nargs, metavar) for one dataclass field type."""
    origin, members = typing.get_origin(annotation), typing.get_args(annotation)
    if annotation is bool:
        return {"action": argparse.BooleanOptionalAction}
    if origin is tuple:
        return {"nargs": len(members), "type": members[0] if members else str}
    optional = origin is Union and type(None) in members
    kinds: list[type] = []
    for member in members if origin is Union else (annotation,):
        kinds += [m for m in typing.get_args(member) or (member,) if m in (int, float, str)]
    kinds.sort(key=(int, float, str).index)
    metavar = "|".join(k.__name__.upper() for k in kinds) + ("|none" if optional else "")
    return {"type": lambda text: _parse_scalar(text, kinds, optional), "metavar": metavar}


def add_config_options(parser: argparse.ArgumentParser) -> None:
    """One option per LoTTSConfig field (``num_seeds`` -> ``--num-seeds``), defaulting to the
    dataclass so there is one source of defaults."""
    cls = _config_class()
    group = parser.add_argument_group("LoTTS options (LoTTSConfig fields)")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    for item in dataclasses.fields(cls):
        default = item.default if item.default is not dataclasses.MISSING else item.default_factory()
        text = _field_help(cls.__doc__ or "", item.name, names)
        group.add_argument(f"--{item.name.replace('_', '-')}", dest=f"config_{item.name}",
                           default=None,
                           help=f"{text} (default: {default!r})".strip().replace("%", "%%"),
                           **_argument_for(hints[item.name]))


def config_from_args(args: argparse.Namespace) -> Any:
    """A validated LoTTSConfig from the options given; an invalid value is a UsageError."""
    cls = _config_class()
    given = {f.name: getattr(args, f"config_{f.name}") for f in dataclasses.fields(cls)
             if getattr(args, f"config_{f.name}", None) is not None}
    try:
        return cls(**given)
    except (TypeError, ValueError) as error:
        raise UsageError(f"invalid LoTTS option: {error}") from None


# --------------------------------------------------------------------------------------------
# Pipelines and verifiers
# --------------------------------------------------------------------------------------------
def resolve_dtype(name: str, device: str) -> Any:
    import torch

    if name == "auto":
        return torch.bfloat16 if device.startswith("cuda") else torch.float32
    return getattr(torch, name)


def load_pipeline(model: str, dtype: Any, allow_download: bool) -> Any:
    """``DiffusionPipeline.from_pretrained`` from a local folder or the local hub cache."""
    from diffusers import DiffusionPipeline
    from diffusers.utils import deprecation_utils

    # diffusers renamed torch_dtype to dtype (and warns on the old name where it knows both).
    dtype_key = "dtype" if hasattr(deprecation_utils, "_resolve_dtype") else "torch_dtype"
    try:
        return DiffusionPipeline.from_pretrained(model, local_files_only=not allow_download,
                                                 **{dtype_key: dtype})
    except (OSError, ValueError) as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        hint = ("pass a local path to a diffusers pipeline folder" if allow_download else
                "pass a local path to a diffusers pipeline folder, or --allow-download to fetch "
                "it from the Hugging Face Hub")
        raise UsageError(f"cannot load model {model!r}: {reason}\n  -> {hint}") from None


def place_pipeline(pipe: Any, device: str, offload: bool) -> Any:
    """Move the pipeline to ``device``, or let diffusers offload idle components to the CPU."""
    if offload:
        if not device.startswith("cuda"):
            raise UsageError("--offload needs a CUDA device (it keeps idle parts on the CPU)")
        pipe.enable_model_cpu_offload(device=device)
    else:
        pipe.to(device)
    return pipe


def load_verifiers(specs: Sequence[str], device: str, allow_download: bool) -> dict[str, Any]:
    """Verifiers by storage name; missing weights or unknown names are UsageErrors."""
    from lotts.batch import resolve_verifier, verifier_name

    loaded = {}
    for spec in specs:
        try:
            loaded[verifier_name(spec)] = resolve_verifier(spec, device=device,
                                                           allow_download=allow_download)
        except (OSError, ValueError, TypeError) as error:
            raise UsageError(f"cannot load verifier {spec!r}: {error}") from None
    return loaded


# --------------------------------------------------------------------------------------------
# A job: one pipeline, one or two methods, one output directory
# --------------------------------------------------------------------------------------------
@dataclass
class Job:
    """What ``generate`` and ``demo`` run: every input already loaded and validated."""

    pipe: Any
    model: str
    items: list[PromptItem]
    out: Path
    methods: tuple[str, ...]
    config: Any
    best_of_n: Union[int, str, None]  # a count, "matched" (resolved by check_settings) or None
    verifier: str
    verifiers: dict[str, Any]
    pipe_kwargs: dict[str, Any]
    seed: int = 0
    dtype: str = "float32"
    save_candidates: bool = False
    quiet: bool = False
    notes: list[str] = field(default_factory=list)
    title: str = "LoTTS report"
    state: Any = None  # accelerate PartialState

    @property
    def report_with(self) -> tuple[str, ...]:
        return tuple(name for name in self.verifiers if name != self.verifier)

    def run_dir(self, method: str) -> Path:
        return self.out if len(self.methods) == 1 else self.out / method

    def spec(self, method: str) -> RunSpec:
        config = (dataclasses.asdict(self.config) if method == "lotts"
                  else {"n": self.resolved_n()})
        return RunSpec(method=method, model=self.model, config=config,
                       pipe_kwargs=self.pipe_kwargs, verifier=self.verifier,
                       report_with=self.report_with, seed=self.seed, dtype=self.dtype)

    def resolved_n(self) -> int:
        """Best-of-N's N: given, else the number of candidates LoTTS scores (9 at defaults)."""
        if self.best_of_n is not None:
            return self.best_of_n
        return self.config.num_seeds * (1 + self.config.num_refinements)


def make_sampler(job: Job, method: str) -> Callable[[str, int, Callable[[str], None]], Any]:
    """``(prompt, seed, on_phase) -> result`` for one method, the selection verifier only;
    ``on_phase`` puts the sampler's current phase on the progress bar."""
    from lotts import LoTTS, best_of_n

    verifier = job.verifiers[job.verifier]
    if method == "lotts":
        def sample(prompt: str, seed: int, on_phase: Callable[[str], None]) -> Any:
            runner = LoTTS(job.pipe, verifier=verifier, config=job.config, on_phase=on_phase)
            return runner(prompt, seed=seed, **job.pipe_kwargs)
        return sample
    n = job.resolved_n()

    def sample_best_of_n(prompt: str, seed: int, on_phase: Callable[[str], None]) -> Any:
        return best_of_n(job.pipe, prompt, n, verifier, seed=seed, on_phase=on_phase,
                         **job.pipe_kwargs)
    return sample_best_of_n


def check_settings(job: Job) -> None:
    """Fail before the first prompt on what would fail at every prompt: an unsupported
    pipeline or scheduler, unknown pipeline arguments, t0 beyond the schedule. Resolves
    ``--best-of-n matched`` with the pipeline's backbone and step count."""
    from lotts import LoTTS

    try:
        runner = LoTTS(job.pipe, verifier=job.verifiers[job.verifier], config=job.config)
        steps = runner.backbone.settings(dict(job.pipe_kwargs)).num_inference_steps
        if "lotts" in job.methods:
            if job.config.num_refinements > 0:
                runner.backbone.check_scheduler()
            job.config.resolved(runner.backbone.name, steps)
        if job.best_of_n == "matched":
            job.best_of_n = job.config.matched_best_of_n(steps, runner.backbone.name)
    except (ValueError, TypeError, NotImplementedError) as error:
        raise UsageError(f"cannot run on this pipeline: {error}") from None


def run_job(job: Job) -> list[Path]:
    """Run every method of the job (resumably), then write report.html (and compare.md when
    both methods ran) on the main process. Returns the run directories."""
    from lotts import report
    from lotts.batch import configure_pipeline_progress, distributed_state, run_batch

    check_settings(job)
    state = job.state if job.state is not None else distributed_state(cpu=True)
    configure_pipeline_progress(job.pipe, job.quiet or not state.is_main_process)
    held_out = {name: job.verifiers[name] for name in job.report_with}
    run_dirs = []
    for method in job.methods:
        run_dir = job.run_dir(method)
        run_batch(make_sampler(job, method), job.items, run_dir, job.spec(method),
                  held_out=held_out, save_candidates=job.save_candidates, quiet=job.quiet,
                  state=state, notes=job.notes)
        run_dirs.append(run_dir)
    if state.is_main_process:
        report.write_report(run_dirs, job.out / "report.html", title=job.title, notes=job.notes)
        if len(run_dirs) == 2:
            (job.out / "compare.md").write_text(report.compare_runs(*run_dirs), encoding="utf-8")
        if not job.quiet:
            print(f"wrote {job.out / 'report.html'}", file=sys.stderr)
    return run_dirs


# --------------------------------------------------------------------------------------------
# generate
# --------------------------------------------------------------------------------------------
def _pipe_arg(text: str) -> tuple[str, Any]:
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        return key.strip(), json.loads(value)
    except json.JSONDecodeError:
        return key.strip(), value


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _best_of_n_arg(text: str) -> Union[int, str]:
    return "matched" if text == "matched" else positive_int(text)


def add_generate_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="diffusers pipeline: local folder or hub id")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--prompt", action="append", help="a prompt (repeat for several)")
    source.add_argument("--prompts", type=Path, metavar="FILE",
                        help="text (one prompt per line), .csv or .jsonl with a prompt column/"
                             "field and an optional id")
    parser.add_argument("--out", type=Path, required=True, help="output directory")
    parser.add_argument("--method", choices=METHOD_CHOICES, default="lotts",
                        help="'both' runs LoTTS and Best-of-N into OUT/lotts and OUT/best-of-n")
    parser.add_argument("--best-of-n", type=_best_of_n_arg, default=None, metavar="N|matched",
                        help="Best-of-N sample count (default: LoTTS's candidate count; "
                             "'matched': the N with LoTTS's NFE)")
    parser.add_argument("--verifier", default=DEFAULT_VERIFIER,
                        help="selection verifier: a name (image-reward, hpsv2, pickscore, "
                             "clipscore, aesthetic, or a weight-free stat-* stand-in) or a path")
    parser.add_argument("--report-with", default="", metavar="NAMES",
                        help="comma-separated held-out verifiers scoring every candidate")
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
    pipe.add_argument("--pipe-arg", type=_pipe_arg, action="append", default=[],
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


def _prompt_items(args: argparse.Namespace) -> list[PromptItem]:
    from lotts.batch import read_prompts

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


def cmd_generate(args: argparse.Namespace) -> int:
    import torch

    from lotts.batch import distributed_state, verifier_name

    items = _prompt_items(args)  # before any loading: a bad file fails fast
    config = config_from_args(args)
    methods = METHODS if args.method == "both" else (args.method,)
    on_cpu = (args.device or "").startswith("cpu") or not torch.cuda.is_available()
    if (args.device or "").startswith("cuda") and not torch.cuda.is_available():
        raise UsageError(f"--device {args.device} but no CUDA device is available")
    state = distributed_state(cpu=on_cpu)
    device = resolve_device(args.device, state)
    dtype = resolve_dtype(args.dtype, device)
    report_with = [s.strip() for s in args.report_with.split(",") if s.strip()]
    verifiers = load_verifiers([args.verifier, *report_with], device, args.allow_download)
    pipe = place_pipeline(load_pipeline(args.model, dtype, args.allow_download), device, args.offload)
    job = Job(pipe=pipe, model=args.model, items=items, out=args.out, methods=methods,
              config=config, best_of_n=args.best_of_n, verifier=verifier_name(args.verifier),
              verifiers=verifiers, pipe_kwargs=pipe_kwargs_from_args(args), seed=args.seed,
              dtype=str(dtype).replace("torch.", ""), save_candidates=args.save_candidates,
              quiet=args.quiet, state=state)
    run_job(job)
    return 0


# --------------------------------------------------------------------------------------------
# demo
# --------------------------------------------------------------------------------------------
@dataclass
class EmbeddedDefault:
    """What the demo runs: a pipeline, verifiers that need no download, prompts, settings."""

    pipe: Any
    model: str
    verifier: str
    report_with: list[str]
    prompts: list[str]
    pipe_kwargs: dict[str, Any]
    config: Any
    notes: list[str]


def embedded_default() -> EmbeddedDefault:
    """The demo's world: the committed miniature world (``lotts.world``), a StableDiffusionPipeline
    trained from scratch on shape scenes with two clean-vs-defect verifiers. Replace this one
    function to change what ``lotts demo`` shows."""
    from lotts.world.demo import embedded_world

    try:
        return EmbeddedDefault(**embedded_world())
    except (OSError, ValueError) as error:  # missing/corrupt assets, an incompatible diffusers
        raise UsageError(f"cannot load the miniature world (lotts/world/assets): {error}\n  -> "
                         "reinstall lotts, or retrain it with `python -m lotts.world.train`") from None


def cmd_demo(args: argparse.Namespace) -> int:
    world = embedded_default()
    device = "cpu"
    verifiers = load_verifiers([world.verifier, *world.report_with], device, False)
    job = Job(pipe=world.pipe.to(device), model=world.model,
              items=[PromptItem(i, p) for i, p in enumerate(world.prompts[: args.num_prompts])],
              out=args.out, methods=METHODS, config=world.config, best_of_n=None,
              verifier=world.verifier, verifiers=verifiers,
              pipe_kwargs=dict(world.pipe_kwargs, **({"num_inference_steps": args.steps}
                                                     if args.steps else {})),
              seed=args.seed, save_candidates=True, quiet=args.quiet, notes=world.notes,
              title="LoTTS demo (embedded default)")
    from lotts.batch import one_cpu_thread

    with one_cpu_thread():
        run_job(job)
    if not args.quiet:
        print((args.out / "compare.md").read_text(encoding="utf-8"))
    return 0


# --------------------------------------------------------------------------------------------
# compare, env, bench
# --------------------------------------------------------------------------------------------
def cmd_compare(args: argparse.Namespace) -> int:
    from lotts.report import compare_runs

    try:
        text = compare_runs(args.dir_a, args.dir_b)
    except (FileNotFoundError, ValueError) as error:
        raise UsageError(str(error)) from None
    print(text, end="")
    out = args.out or Path("compare.md")
    out.write_text(text, encoding="utf-8")
    print(f"wrote {out}", file=sys.stderr)
    return 0


def cmd_env(args: argparse.Namespace) -> int:
    from lotts.batch import versions
    from lotts_kernels.env import report

    print(report())
    print("")
    for name, version in versions().items():
        print(f"{name:<20} {version}")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from lotts import bench

    return bench.run_from_args(args)


# --------------------------------------------------------------------------------------------
# main
# --------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--quiet", action="store_true", help="no progress bars")
    common.add_argument("--debug", action="store_true", help="show tracebacks")
    parser = argparse.ArgumentParser(prog="lotts", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    generate = commands.add_parser("generate", parents=[common], help="run LoTTS / Best-of-N "
                                   "over prompts (resumable, shards under torchrun/accelerate)")
    add_generate_arguments(generate)
    generate.set_defaults(handler=cmd_generate)

    demo = commands.add_parser("demo", parents=[common], help="the whole method end to end on "
                               "the embedded default: no download, no GPU")
    demo.add_argument("--out", type=Path, required=True)
    demo.add_argument("--num-prompts", type=positive_int, default=None,
                      help="use only the first N of the demo prompts")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--steps", type=positive_int, default=None,
                      help="denoising steps (default: the embedded world's; t0 is half of them)")
    demo.set_defaults(handler=cmd_demo)

    from lotts import bench

    bench_parser = commands.add_parser("bench", parents=[common], help="cost benchmark: LoTTS "
                                       "against Best-of-N, seconds and NFE")
    bench.add_arguments(bench_parser)
    bench_parser.set_defaults(handler=cmd_bench)

    compare = commands.add_parser("compare", parents=[common], help="side-by-side table of two runs")
    compare.add_argument("dir_a", type=Path)
    compare.add_argument("dir_b", type=Path)
    compare.add_argument("--out", type=Path, default=None, help="markdown file (default compare.md)")
    compare.set_defaults(handler=cmd_compare)

    env = commands.add_parser("env", parents=[common], help="versions, device and kernels")
    env.set_defaults(handler=cmd_env)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.handler(args) or 0)
    except BatchError as error:
        if args.debug:
            raise
        print(f"lotts {args.command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        if args.debug:
            raise
        print(f"lotts {args.command}: interrupted; rerun the same command to resume",
              file=sys.stderr)
        return 130
