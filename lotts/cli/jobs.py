"""What ``generate`` and ``demo`` share: loading, the job, checking it, running it.

Library errors a user can fix (a missing model, verifier weights, a pipeline LoTTS cannot
drive) become :class:`~lotts.errors.UsageError` in one place, :func:`reported_as`, which
names what was being done; :func:`lotts.cli.main` prints every user error the same way.
"""
from __future__ import annotations

import dataclasses
import tempfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

from lotts.cli.console import no_loading_bars, status
from lotts.errors import ManifestConflictError, UsageError
from lotts.runs.manifest import Manifest, RunSpec, score_key
from lotts.runs.prompts import PromptItem

METHODS = ("lotts", "best-of-n")  # "both"; "all" is lotts.methods.ALL_METHODS
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


def load_pipeline(model: str, dtype: Any, allow_download: bool, quiet: bool = False) -> Any:
    """``DiffusionPipeline.from_pretrained`` from a local folder or the local hub cache."""
    from diffusers import DiffusionPipeline
    from diffusers.utils import deprecation_utils

    # diffusers renamed torch_dtype to dtype (and warns on the old name where it knows both).
    dtype_key = "dtype" if hasattr(deprecation_utils, "_resolve_dtype") else "torch_dtype"
    hint = ("pass a local path to a diffusers pipeline folder" if allow_download else
            "pass a local path to a diffusers pipeline folder, or --allow-download to fetch "
            "it from the Hugging Face Hub")
    status(f"loading model {model} ...", quiet)
    with no_loading_bars(), reported_as(f"cannot load model {model!r}", hint, first_line=True):
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
    from lotts.verifiers import VerifierWeightsNotFoundError, load_verifier

    loaded = {}
    for spec in specs:
        try:
            with reported_as(f"cannot load verifier {spec!r}"):
                loaded[score_key(spec)] = load_verifier(spec, device=device,
                                                        allow_download=allow_download)
        except UsageError as error:
            cause = error.__context__
            if isinstance(cause, VerifierWeightsNotFoundError) and cause.source is not None:
                raise UsageError(missing_weights(spec, cause, allow_download)) from None
            raise
    return loaded


def missing_weights(spec: str, error: Any, allow_download: bool) -> str:
    """The missing-weights message in the command line's terms (the library's names the
    Python API's path= and allow_download=)."""
    source = error.source
    looked = [entry for entry in error.tried
              if not entry.startswith(f"{source.argument}=") and "allow_download" not in entry]
    target = source.filenames[0] if source.kind == "file" and source.filenames else \
        source.what.removeprefix("the ")
    fixes = [f"--verifier PATH (PATH: {target})"] if source.argument == "path" else []
    fixes.append(f"set {source.env_var}=PATH")
    if source.repo_ids and not allow_download:
        fixes.append(f"--allow-download to fetch it from the Hugging Face repo {source.repo_ids[0]!r}")
    listed = ", ".join(fixes[:-1]) + (", or " if len(fixes) > 1 else "") + fixes[-1]
    return (f"cannot load verifier {spec!r}: {source.what} not found on this machine (looked at: "
            f"{'; '.join(looked)})\n  -> {listed}")


# --------------------------------------------------------------------------------------------
# A job: one pipeline, one or two methods, one output directory
# --------------------------------------------------------------------------------------------
@dataclass
class Job:
    """What ``generate`` and ``demo`` run. Built from the options alone, so that its output
    directory is checked (:func:`check_out_dir`) before anything loads; ``pipe`` and
    ``verifiers`` (by score key) are filled in after that."""

    model: str
    items: list[PromptItem]
    out: Path
    methods: tuple[str, ...]
    config: Any
    best_of_n: Union[int, str, None]  # a count, "matched" (LoTTS's NFE) or None (its candidates)
    verifier: str  # score key of the selection verifier
    report_with: tuple[str, ...]  # score keys of the held-out verifiers
    pipe_kwargs: dict[str, Any]
    seed: int = 0
    dtype: str = "float32"
    save_candidates: bool = False
    quiet: bool = False
    notes: list[str] = field(default_factory=list)
    title: str = "LoTTS report"
    state: Any = None  # accelerate PartialState
    pipe: Any = None
    verifiers: dict[str, Any] = field(default_factory=dict)
    matched_n: Optional[int] = None  # Best-of-N's N for "matched", set by check_settings
    budget_nfe: Optional[int] = None  # size every method to this NFE per prompt
    particles: Optional[int] = None  # particle count (default: Best-of-N's N)
    sizes: Any = None  # lotts.methods.Sizes, set by check_settings under a budget

    def run_dir(self, method: str) -> Path:
        return self.out if len(self.methods) == 1 else self.out / method

    def spec(self, method: str) -> RunSpec:
        """The run's identity, from the options alone: the directory check runs before the
        pipeline loads, so a matched Best-of-N and a budget are recorded as asked (resolving
        them needs the pipeline's backbone and step count)."""
        if method == "lotts":
            config: dict[str, Any] = dataclasses.asdict(self.config)
        elif method == "resampling":
            config = {"n": 1}
        elif method == "particles":
            config = {"num_particles": self.particles or self._n_as_asked()}
        else:
            config = {"n": self._n_as_asked()}
        if self.budget_nfe is not None:
            config = {**config, "budget_nfe": self.budget_nfe}
        return RunSpec(method=method, model=self.model, config=config,
                       pipe_kwargs=self.pipe_kwargs, verifier=self.verifier,
                       report_with=self.report_with, seed=self.seed, dtype=self.dtype)

    def resolved_n(self) -> int:
        """Best-of-N's N: given, matched to LoTTS's NFE, else LoTTS's candidate count."""
        if self.best_of_n == "matched":
            if self.matched_n is None:
                raise RuntimeError("check_settings resolves a matched Best-of-N first")
            return self.matched_n
        if self.best_of_n is not None:
            return int(self.best_of_n)
        return self.config.num_seeds * (1 + self.config.num_refinements)

    def _n_as_asked(self) -> Union[int, str]:
        return "matched" if self.best_of_n == "matched" else self.resolved_n()

    def method_sizes(self) -> Any:
        """Each method's size (:class:`lotts.methods.Sizes`): the budget's, else as given.
        Needs :func:`check_settings` first (it resolves a matched N and the budget)."""
        from lotts.methods import Sizes
        if self.sizes is None:
            n = self.resolved_n()
            self.sizes = Sizes(self.config, n, self.particles or n)
        return self.sizes


# --------------------------------------------------------------------------------------------
# The output directory, checked before anything loads
# --------------------------------------------------------------------------------------------
def check_writable_dir(out: Path) -> None:
    """OUT is a directory this process can write into, or can be created as one. Checked
    with a probe file in it (or in its nearest existing parent), which also catches what
    permission bits do not say (root on a read-only mount); nothing is left behind."""
    existing = out
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        where = "is a file" if existing == out else f"is under {str(existing)!r}, a file"
        raise UsageError(f"--out {str(out)!r} {where}, not a directory")
    try:
        with tempfile.TemporaryFile(dir=existing, prefix=".lotts-probe-"):
            pass
    except OSError as error:
        raise UsageError(f"--out {str(out)!r}: cannot write in {str(existing)!r} "
                         f"({error.strerror or error})") from None


def check_out_dir(job: Job) -> None:
    """Refuse, before any model loads, an OUT that is not a writable directory or that holds
    any run but this job's own (rerunning the same command resumes it). A run may sit in OUT
    itself (one method) or in OUT/<method> (both), so all of those places are checked."""
    check_writable_dir(job.out)
    mine = {job.run_dir(method): job.spec(method).hash for method in job.methods}
    for place in (job.out, *(job.out / method for method in METHODS)):
        manifest = Manifest(place)
        if place in mine:
            manifest.check_owner(mine[place])
        elif manifest.owners():
            method = manifest.run_info().get("spec", {}).get("method")
            what = f"a {method} run" if method else "a run"
            raise ManifestConflictError(
                f"{str(job.out)!r} holds another run ({what} in {str(place)!r}): rerun the "
                "command that made it to resume it, or pass a new --out")


def make_sampler(job: Job, method: str) -> Callable[[str, int, Callable[[str], None]], Any]:
    """``(prompt, seed, on_phase) -> result`` for one method, the selection verifier only;
    ``on_phase`` puts the sampler's current phase on the progress bar."""
    from lotts.methods import make_method_sampler

    return make_method_sampler(method, job.pipe, job.verifiers[job.verifier], job.method_sizes(),
                               job.pipe_kwargs)


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
            job.matched_n = job.config.matched_best_of_n(steps, runner.backbone.name)
        if job.budget_nfe is not None:
            from lotts.methods import budget_sizes
            settings = runner.backbone.settings(dict(job.pipe_kwargs))
            job.sizes = budget_sizes(job.budget_nfe, job.config, steps, runner.backbone.name,
                                     runner.backbone.uses_cfg(settings))


def run_job(job: Job) -> list[Path]:
    """Run every method of the job (resumably), then write report.html (and compare.md when
    both methods ran) on the main process. Returns the run directories."""
    from lotts import report
    from lotts.runs.runner import distributed_state, run_batch, silence_pipeline_progress

    check_settings(job)
    state = job.state if job.state is not None else distributed_state(cpu=True)
    silence_pipeline_progress(job.pipe)
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
        if len(run_dirs) > 2:
            (job.out / "ranking.md").write_text(report.ranking_markdown(run_dirs), encoding="utf-8")
        status(f"wrote {job.out / 'report.html'}", job.quiet)
    return run_dirs

