"""What ``generate`` and ``demo`` share: loading, the job, checking it, running it.

Library errors a user can fix (a missing model, verifier weights, a pipeline LoTTS cannot
drive) become :class:`~lotts.errors.UsageError` in one place, :func:`reported_as`, which
names what was being done; :func:`lotts.cli.main` prints every user error the same way.
"""
from __future__ import annotations

import dataclasses
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Union

from lotts.errors import UsageError
from lotts.runs.manifest import RunSpec, score_key
from lotts.runs.prompts import PromptItem

METHODS = ("lotts", "best-of-n")
# What a library raises for inputs a user can fix (weights missing, bad values, unsupported).
USER_FIXABLE = (OSError, ValueError, TypeError, NotImplementedError)


@contextmanager
def reported_as(what: str, hint: str = "", first_line: bool = False) -> Iterator[None]:
    """Turn a user-fixable library error inside the block into a UsageError saying `what`
    failed and why (`first_line`: only the reason's first line), with an optional hint."""
    try:
        yield
    except USER_FIXABLE as error:
        reason = str(error).strip()
        if first_line:
            reason = reason.splitlines()[0] if reason else type(error).__name__
        raise UsageError(f"{what}: {reason}" + (f"\n  -> {hint}" if hint else "")) from None


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
    hint = ("pass a local path to a diffusers pipeline folder" if allow_download else
            "pass a local path to a diffusers pipeline folder, or --allow-download to fetch "
            "it from the Hugging Face Hub")
    with reported_as(f"cannot load model {model!r}", hint, first_line=True):
        return DiffusionPipeline.from_pretrained(model, local_files_only=not allow_download,
                                                 **{dtype_key: dtype})


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
    """Verifiers by the key their scores are stored under (:func:`score_key`)."""
    from lotts.verifiers import load_verifier

    loaded = {}
    for spec in specs:
        with reported_as(f"cannot load verifier {spec!r}"):
            loaded[score_key(spec)] = load_verifier(spec, device=device,
                                                    allow_download=allow_download)
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
            return int(self.best_of_n)
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

    with reported_as("cannot run on this pipeline"):
        runner = LoTTS(job.pipe, verifier=job.verifiers[job.verifier], config=job.config)
        steps = runner.backbone.settings(dict(job.pipe_kwargs)).num_inference_steps
        if "lotts" in job.methods:
            if job.config.num_refinements > 0:
                runner.backbone.check_scheduler()
            job.config.resolved(runner.backbone.name, steps)
        if job.best_of_n == "matched":
            job.best_of_n = job.config.matched_best_of_n(steps, runner.backbone.name)


def run_job(job: Job) -> list[Path]:
    """Run every method of the job (resumably), then write report.html (and compare.md when
    both methods ran) on the main process. Returns the run directories."""
    from lotts import report
    from lotts.runs.runner import configure_pipeline_progress, distributed_state, run_batch

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

