"""Cost benchmark: seconds and NFE of LoTTS against Best-of-N on one device, in one run.

The paper's headline is GPU cost: Best-of-N quality with 2.8-4x fewer samples. Cost depends on
the architecture, resolution and step count, not on the weights, so ``--scale real`` builds
SD2.1-base, SDXL-base and FLUX.1-dev from their published configs (``lotts.model_configs``)
with random weights, in bf16, and a stand-in verifier of realistic cost (a random-weight CLIP
ViT-L/14 image tower). ``--scale tiny`` runs the same protocol with the tiny test pipelines.

Per backbone it measures LoTTS at the paper's defaults (3 seeds, k = 2, r = 0.5, t0 =
25/15/1), Best-of-N at N = 9 and at the N the paper matches (25, 30, 36), and reports the
measured time ratio beside the NFE ratio, and LoTTS's overhead share: the part of its time
that Best-of-N's cost per NFE does not explain, ``1 - NFE_lotts * (T_bon9 / NFE_bon9) /
T_lotts``. Then ``time ratio = NFE ratio x (1 - overhead share)``.

Batching, the same policy for both methods: Best-of-N makes its images 9 per pipeline call
(N = 9 in one call; 25, 30 and 36 in calls of 9, which also keeps a 1024 px VAE decode within
GPU memory); LoTTS makes its 3 originals in one call and all 6 refinements in one batch.
"""
from __future__ import annotations

import argparse
import contextlib
import datetime
import platform
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

PAPER_N = 9  # candidates per prompt in the paper's main table; also Best-of-N's batch


@dataclass(frozen=True)
class BenchSetting:
    """One benchmark setting: the paper's schedule, t0 and matched Best-of-N."""

    name: str
    kind: str            # lotts.tiny_pipelines kind
    steps: int
    t0: int
    matched_n: int
    size: int            # pixels at real scale
    guidance_scale: float
    extra_call: tuple[tuple[str, Any], ...] = ()


BACKBONES = {
    "sd21": BenchSetting("sd21", "sd", 50, 25, 25, 512, 7.5),
    "sdxl": BenchSetting("sdxl", "sdxl", 50, 15, 30, 1024, 5.0),
    "flux": BenchSetting("flux", "flux", 28, 1, 36, 1024, 3.5, (("max_sequence_length", 512),)),
}
TINY_SIZE = 64


@dataclass
class Measurement:
    backbone: str
    method: str
    n: int
    nfe: int
    seconds: float
    verifier_calls: int
    phases: dict[str, float] = field(default_factory=dict)
    extrapolated: bool = False
    capture_peak_mb: float = 0.0  # q/k the localization capture kept (LoTTS only)


# --------------------------------------------------------------------------------------------
# Models
# --------------------------------------------------------------------------------------------
@contextlib.contextmanager
def _construct_on(device: str, dtype: Any) -> Iterator[None]:
    """Create parameters directly on ``device`` in ``dtype``: a 12B FLUX transformer never
    exists in float32 or on the CPU."""
    import torch

    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            yield
    finally:
        torch.set_default_dtype(previous)


def build_pipeline(setting: BenchSetting, scale: str, device: str, dtype: Any) -> Any:
    """The backbone's pipeline: tiny test components, or the published architectures with
    random weights. Tokenizers come from ``lotts.tiny_pipelines`` (the real CLIP vocabulary;
    the T5 tokenizer is a small stand-in, which only shortens nothing: FLUX pads to
    ``max_sequence_length`` anyway), schedulers from the modelled checkpoint's config."""
    import diffusers
    import torch

    from lotts import model_configs
    from lotts.tiny_pipelines import build_tiny_pipeline, pipeline_class

    tiny = build_tiny_pipeline(setting.kind, seed=0)
    if setting.name in model_configs.BENCH_SCHEDULERS:  # the modelled checkpoint's own schedule
        class_name, config = model_configs.BENCH_SCHEDULERS[setting.name]
        tiny.scheduler = getattr(diffusers, class_name).from_config(config)
    if scale == "tiny":  # built in float32; cast only when asked for another dtype
        return tiny.to(device) if dtype == torch.float32 else tiny.to(device=device, dtype=dtype)
    components = dict(tiny.components)
    with torch.random.fork_rng(devices=[]), _construct_on(device, dtype):
        torch.manual_seed(0)
        for name, (class_name, config) in model_configs.BACKBONE_COMPONENTS[setting.name].items():
            components[name] = model_configs.build_component(class_name, config).eval()
    extra = {"requires_safety_checker": False} if setting.kind == "sd" else {}
    pipe = pipeline_class(setting.kind)(**components, **extra)
    pipe.set_progress_bar_config(disable=True)
    return pipe


class ClipTowerVerifier:
    """Stand-in verifier of realistic cost: a random-weight CLIP image tower (ViT-L/14 at real
    scale) and a fixed random linear head, like an aesthetic predictor. Its scores mean
    nothing; its time is what a CLIP-based reward model spends."""

    name = "clip-tower-standin"

    def __init__(self, scale: str, device: str, dtype: Any) -> None:
        import torch

        from lotts import model_configs

        config = model_configs.CLIP_L14_VISION if scale == "real" else model_configs.TINY_CLIP_VISION
        with torch.random.fork_rng(devices=[]), _construct_on(device, dtype):
            torch.manual_seed(1)
            self.model = model_configs.build_component("CLIPVisionModelWithProjection", config).eval()
            self.head = torch.randn(config["projection_dim"])
        self.size, self.device, self.dtype = config["image_size"], device, dtype

    def __call__(self, images: Sequence[Any], prompts: Sequence[str]) -> Any:
        import numpy as np
        import torch

        mean = torch.tensor([0.4815, 0.4578, 0.4082]).view(1, 3, 1, 1)
        std = torch.tensor([0.2686, 0.2613, 0.2758]).view(1, 3, 1, 1)
        pixels = np.stack([np.asarray(im.convert("RGB").resize((self.size, self.size)), np.float32)
                           for im in images]) / 255.0
        batch = ((torch.from_numpy(pixels).permute(0, 3, 1, 2) - mean) / std)
        with torch.no_grad():
            embeds = self.model(pixel_values=batch.to(self.device, self.dtype)).image_embeds
            embeds = torch.nn.functional.normalize(embeds.float(), dim=-1)
        return (embeds @ self.head.float()).cpu()


# --------------------------------------------------------------------------------------------
# Measuring
# --------------------------------------------------------------------------------------------
def call_kwargs(setting: BenchSetting, scale: str, steps: int, size: Optional[int] = None) -> dict[str, Any]:
    size = size or (setting.size if scale == "real" else TINY_SIZE)
    kwargs = {"height": size, "width": size, "num_inference_steps": steps,
              "guidance_scale": setting.guidance_scale, **dict(setting.extra_call)}
    if scale == "tiny" and setting.kind == "flux":
        kwargs["max_sequence_length"] = 64
    return kwargs


def lotts_config(setting: BenchSetting, steps: int) -> Any:
    """The paper's defaults; t0 keeps its share of the schedule when steps are overridden."""
    from lotts import LoTTSConfig

    t0 = setting.t0 if steps == setting.steps else max(0, round(setting.t0 * steps / setting.steps))
    return LoTTSConfig(num_seeds=3, num_refinements=2, mask_ratio=0.5, t0=t0, refine_batch_size=6)


def measure(label: str, setting: BenchSetting, n: int, run: Any) -> Measurement:
    """Time one prompt's run, synchronized at both ends."""
    from lotts_kernels.demo import synced_timer

    start = synced_timer()
    result = run()
    seconds = synced_timer() - start
    cost = result.cost
    return Measurement(setting.name, label, n, int(cost.nfe), seconds, int(cost.verifier_calls),
                       {k: float(v) for k, v in dict(cost.seconds).items()},
                       capture_peak_mb=getattr(cost, "capture_peak_bytes", 0) / 2**20)


def bench_backbone(setting: BenchSetting, scale: str, device: str, dtype: Any,
                   steps: Optional[int] = None, deadline: Optional[float] = None,
                   log: Any = print, size: Optional[int] = None) -> list[Measurement]:
    """LoTTS, Best-of-N at 9 and at the matched N, on one backbone (its models freed after)."""
    steps = steps or setting.steps
    rows = measure_methods(setting, build_pipeline(setting, scale, device, dtype),
                           ClipTowerVerifier(scale, device, dtype),
                           call_kwargs(setting, scale, steps, size), steps, deadline, log)
    _free(device)
    return rows


def measure_methods(setting: BenchSetting, pipe: Any, verifier: Any, kwargs: dict[str, Any],
                    steps: int, deadline: Optional[float], log: Any) -> list[Measurement]:
    """Warm up both methods (kernel compilation, allocator) at 2 steps, then time LoTTS,
    Best-of-9 and the matched Best-of-N. Past ``deadline`` (a ``time.perf_counter()`` value)
    the matched Best-of-N is extrapolated linearly from N = 9 and marked so."""
    from dataclasses import replace

    from lotts import LoTTS, best_of_n

    prompt = "a photo of an astronaut riding a horse on the moon, highly detailed"
    config = lotts_config(setting, steps)

    def sample_lotts(**overrides: Any) -> Any:
        runner = LoTTS(pipe, verifier=verifier, config=replace(config, t0=overrides.pop("t0", config.t0)))
        return runner(prompt, seed=0, **dict(kwargs, **overrides))

    def sample_best_of(n: int, **overrides: Any) -> Any:
        return best_of_n(pipe, prompt, n, verifier, seed=0, batch_size=PAPER_N,
                         **dict(kwargs, **overrides))

    log(f"[bench] {setting.name}: warm-up")
    sample_lotts(num_inference_steps=3, t0=1)  # the shortest schedule with a masked step
    sample_best_of(PAPER_N, num_inference_steps=2)
    rows = [measure("lotts", setting, PAPER_N, sample_lotts)]
    log(f"[bench] {setting.name}: lotts {rows[-1].seconds:.1f}s")
    rows.append(measure("best-of-n", setting, PAPER_N, lambda: sample_best_of(PAPER_N)))
    log(f"[bench] {setting.name}: best-of-{PAPER_N} {rows[-1].seconds:.1f}s")
    rows.append(matched_best_of_n(setting, rows[-1], deadline, sample_best_of))
    log(f"[bench] {setting.name}: best-of-{setting.matched_n} {rows[-1].seconds:.1f}s"
        + (" (extrapolated)" if rows[-1].extrapolated else ""))
    return rows


def matched_best_of_n(setting: BenchSetting, nine: Measurement, deadline: Optional[float],
                      run: Any) -> Measurement:
    n = setting.matched_n
    projected = nine.seconds * n / nine.n
    if deadline is None or time.perf_counter() + projected <= deadline:
        return measure("best-of-n", setting, n, lambda: run(n))
    scale = n / nine.n
    return Measurement(setting.name, "best-of-n", n, round(nine.nfe * scale), projected,
                       round(nine.verifier_calls * scale), {}, extrapolated=True)


def _free(device: str) -> None:
    import gc

    import torch

    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.empty_cache()


# --------------------------------------------------------------------------------------------
# Reporting
# --------------------------------------------------------------------------------------------
def table(rows: Sequence[Measurement]) -> str:
    """Markdown: per backbone, LoTTS then Best-of-N rows with ratios against LoTTS."""
    lines = ["| backbone | method | N | NFE | seconds | NFE ratio | time ratio | overhead share |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    for name in dict.fromkeys(r.backbone for r in rows):
        group = [r for r in rows if r.backbone == name]
        lotts = next(r for r in group if r.method == "lotts")
        nine = next(r for r in group if r.method == "best-of-n" and r.n == PAPER_N)
        per_nfe = nine.seconds / nine.nfe
        overhead = 1 - lotts.nfe * per_nfe / lotts.seconds
        for r in group:
            nfe_ratio, time_ratio = r.nfe / lotts.nfe, r.seconds / lotts.seconds
            mark = " (extrapolated)" if r.extrapolated else ""
            share = f"{overhead:.1%}" if r is lotts else ""
            lines.append(f"| {name} | {r.method} | {r.n}{mark} | {r.nfe} | {r.seconds:.2f} | "
                         f"{nfe_ratio:.2f}x | {time_ratio:.2f}x | {share} |")
    return "\n".join(lines)


def phase_lines(rows: Sequence[Measurement]) -> list[str]:
    """Per backbone: LoTTS's seconds by phase and the attention capture's peak kept q/k."""
    return [f"- {r.backbone} LoTTS seconds by phase: "
            + ", ".join(f"{k} {v:.2f}" for k, v in r.phases.items())
            + f"; attention capture peak (kept q/k) {r.capture_peak_mb:.1f} MB"
            for r in rows if r.method == "lotts"]


def context(scale: str, device: str, dtype: Any, steps: Optional[int],
            size: Optional[int] = None) -> str:
    import torch

    from lotts.runs.outputs import package_versions

    name = (torch.cuda.get_device_name(0) if device.startswith("cuda")
            else f"CPU ({platform.processor() or platform.machine()})")
    packages = ", ".join(f"{k} {v}" for k, v in package_versions().items())
    when = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    what = ("published configs, random weights" if scale == "real"
            else "tiny random-weight test pipelines at 64 px")
    threads = torch.get_num_threads()
    return (f"Device: {name}, {threads} CPU thread(s); dtype {str(dtype).replace('torch.', '')}; "
            f"scale {scale} ({what}); "
            f"steps {'paper' if steps is None else steps}; size {size or 'paper'}; "
            f"commit {_commit()}; {when}.\n"
            f"Versions: python {platform.python_version()}, {packages}.")


def _commit() -> str:
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              timeout=10, cwd=Path(__file__).parent).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10,
                               cwd=Path(__file__).parent).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return (head + ("+dirty" if dirty else "")) if head else "unknown"


# --------------------------------------------------------------------------------------------
# Command line (``lotts bench`` and benchmarks/bench_cost.py)
# --------------------------------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default=None, help="default: cuda when present, else cpu")
    parser.add_argument("--scale", choices=("tiny", "real"), default=None,
                        help="real: published architectures in bf16 (needs a GPU); "
                             "default: real on CUDA, tiny on CPU")
    parser.add_argument("--backbones", default="sd21,sdxl,flux",
                        help=f"comma-separated, from {', '.join(BACKBONES)}")
    parser.add_argument("--steps", type=int, default=None,
                        help="override the paper's step counts (t0 keeps its share)")
    parser.add_argument("--size", type=int, default=None,
                        help="override the resolution in pixels (quick checks only)")
    parser.add_argument("--budget-s", type=float, default=None,
                        help="past this many seconds, extrapolate matched Best-of-N from N=9")
    parser.add_argument("--results", type=Path, default=None,
                        help="append the table with its context to this markdown file")


@dataclass
class BenchRun:
    """One ``lotts bench`` invocation: measures backbone by backbone, cheapest first, and after
    each rewrites the results file (its earlier content kept) with everything so far, so a run
    stopped by its caller's timeout keeps what it measured. Past the deadline the remaining
    backbones are skipped and listed."""

    scale: str
    device: str
    dtype: Any
    steps: Optional[int] = None
    size: Optional[int] = None
    deadline: Optional[float] = None
    results: Optional[Path] = None
    log: Any = print
    rows: list[Measurement] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)

    def run(self, names: Sequence[str]) -> str:
        from lotts.runs.runner import one_cpu_thread

        before = self.results.read_text(encoding="utf-8") if self.results and self.results.is_file() else ""
        tiny_cpu = self.scale == "tiny" and self.device == "cpu"
        with one_cpu_thread() if tiny_cpu else contextlib.nullcontext():
            header = context(self.scale, self.device, self.dtype, self.steps, self.size)
            for name in names:
                if self.deadline is not None and time.perf_counter() >= self.deadline:
                    self.skipped.append(name)
                else:
                    self.rows += bench_backbone(BACKBONES[name], self.scale, self.device, self.dtype,
                                                self.steps, self.deadline, self.log, self.size)
                self.save(before, header)
        return self.text(header)

    def text(self, header: str) -> str:
        lines = [header, "", table(self.rows) if self.rows else "(no backbone finished)", "",
                 *phase_lines(self.rows)]
        if self.skipped:
            lines.append(f"- skipped, out of time budget: {', '.join(self.skipped)}")
        return "\n".join(lines) + "\n"

    def save(self, before: str, header: str) -> None:
        from lotts.runs.files import write_bytes_atomic

        if self.results is not None:
            write_bytes_atomic(self.results, (before + "\n" + self.text(header)).encode("utf-8"))


def run_from_args(args: argparse.Namespace) -> int:
    import torch

    from lotts.errors import UsageError

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    names = [n.strip() for n in args.backbones.split(",") if n.strip()]
    unknown = [n for n in names if n not in BACKBONES]
    if unknown or not names:
        raise UsageError(f"unknown backbone(s) {unknown}: choose from {list(BACKBONES)}")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError("--device cuda but no CUDA device is available")
    if args.steps is not None and args.steps < 2:
        raise UsageError(f"--steps must be >= 2, got {args.steps}")
    run = BenchRun(
        scale=args.scale or ("real" if device.startswith("cuda") else "tiny"), device=device,
        dtype=torch.bfloat16 if device.startswith("cuda") else torch.float32, steps=args.steps,
        size=args.size, results=args.results,
        deadline=None if args.budget_s is None else time.perf_counter() + args.budget_s,
        log=(lambda *a: None) if args.quiet else (lambda msg: print(msg, file=sys.stderr, flush=True)))
    print(run.run(names))
    return 0
