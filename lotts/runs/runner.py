"""The runner: every prompt not yet in the manifest, resumably, one or many processes.

A batch run must survive being killed and must not depend on how it was launched: seeds come
from :func:`~lotts.runs.prompts.prompt_seed`, records from :mod:`lotts.runs.manifest`. Under
``torchrun``/``accelerate launch`` the prompts still to do are split with accelerate's
``PartialState``.
"""
from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

from lotts.result import PHASES
from lotts.runs.files import remove_temp_files
from lotts.runs.manifest import Manifest, RunSpec
from lotts.runs.outputs import OutputWriter, make_record, package_versions, score_candidates
from lotts.runs.prompts import PromptId, PromptItem, prompt_seed

# (prompt, seed, on_phase) -> a LoTTS-style result; on_phase(name) reports the current phase.
SampleFn = Callable[[str, int, Callable[[str], None]], Any]


@dataclass
class Progress:
    """One bar over prompts with the current prompt's phase as its postfix; silent when
    ``quiet`` or on a non-main rank. The only bar of a run (see silence_pipeline_progress)."""

    total: int
    done: int = 0
    quiet: bool = False
    desc: str = "prompts"
    _bar: Any = field(default=None, repr=False)

    def __enter__(self) -> Progress:
        if not self.quiet:
            from tqdm.auto import tqdm

            self._bar = tqdm(total=self.total, initial=self.done, desc=self.desc, unit="prompt",
                             dynamic_ncols=True, position=0)
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._bar is not None:
            self._bar.close()

    def phase(self, prompt_id: PromptId, phase: str) -> None:
        if self._bar is not None:
            self._bar.set_postfix_str(f"id {prompt_id}: {phase}", refresh=True)

    def advance(self, record: Mapping[str, Any]) -> None:
        if self._bar is not None:
            seconds = record.get("seconds", {})
            summary = " ".join(f"{p} {seconds[p]:.1f}s" for p in PHASES if p in seconds)
            self._bar.set_postfix_str(f"id {record['id']} done {summary}".strip(), refresh=False)
            self._bar.update(1)


@contextmanager
def one_cpu_thread() -> Iterator[None]:
    """Run tiny CPU models on one intra-op thread: they gain nothing from more, and two
    spinning OpenMP threads on a busy 2-core machine made the demo 8x slower (146 s vs 18 s)."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def silence_pipeline_progress(pipe: Any) -> None:
    """Turn off the pipeline's per-call step bars: a run shows one bar, over prompts, with the
    current prompt's phase on it; step bars would nest under it once per pipeline call."""
    if hasattr(pipe, "set_progress_bar_config"):
        pipe.set_progress_bar_config(disable=True)


# --------------------------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------------------------
def distributed_state(cpu: Optional[bool] = None) -> Any:
    """accelerate's ``PartialState``: one process normally, N under torchrun/accelerate launch
    (gloo on CPU)."""
    import torch
    from accelerate import PartialState

    return PartialState(cpu=not torch.cuda.is_available() if cpu is None else cpu)


def prepare_out_dir(out_dir: Path, spec: RunSpec, state: Any, notes: Sequence[str] = ()) -> None:
    """Check the directory belongs to this run (every rank, so all fail alike), then on the main
    rank fold leftover parts into the manifest, drop temp files and write ``run.json``."""
    manifest = Manifest(out_dir)
    manifest.check_owner(spec.hash)
    state.wait_for_everyone()  # every rank has read the directory before the main rank edits it
    if state.is_main_process:
        out_dir.mkdir(parents=True, exist_ok=True)
        manifest.merge()
        remove_temp_files(out_dir)
        manifest.write_run_info(spec, notes, package_versions())
    state.wait_for_everyone()


def run_batch(sample: SampleFn, items: Sequence[PromptItem], out_dir: Union[str, os.PathLike],
              spec: RunSpec, *, held_out: Optional[Mapping[str, Any]] = None,
              save_candidates: bool = False, quiet: bool = False,
              state: Any = None, notes: Sequence[str] = ()) -> list[dict[str, Any]]:
    """Run ``sample(prompt, seed, on_phase)`` for every prompt not yet in the manifest of
    ``out_dir``; ``held_out`` verifiers (by name) score every candidate for the report.
    Returns the merged manifest records (on every rank, after all ranks finished)."""
    out_dir = Path(out_dir)
    state = state if state is not None else distributed_state()
    prepare_out_dir(out_dir, spec, state, notes)
    manifest = Manifest(out_dir)
    done = manifest.done_ids()
    todo = [item for item in items if item.id not in done]
    writer = OutputWriter(out_dir, save_candidates, spec.verifier)
    with state.split_between_processes(todo) as mine, \
            _progress_for(state, len(items), len(mine), quiet) as progress:
        for item in mine:
            seed = prompt_seed(spec.seed, item.id)
            progress.phase(item.id, "generate")
            result = sample(item.prompt, seed, _phase_reporter(progress, item.id))
            progress.phase(item.id, "report")
            scores, report_seconds = score_candidates(result, item.prompt, spec.verifier,
                                                      held_out or {})
            files = writer.write(item, result, scores)
            record = make_record(item, seed, result, spec, scores, files, report_seconds,
                                 state.process_index)
            manifest.append(record, state.process_index, state.num_processes)
            progress.advance(record)
    state.wait_for_everyone()
    if state.is_main_process:
        manifest.merge()
    state.wait_for_everyone()
    return manifest.records()


def _phase_reporter(progress: Progress, prompt_id: PromptId) -> Callable[[str], None]:
    return lambda phase: progress.phase(prompt_id, phase)


def _progress_for(state: Any, total: int, mine: int, quiet: bool) -> Progress:
    """Alone: the whole run, resumed prompts counted as done. Sharded: the main rank's share."""
    if state.num_processes == 1:
        return Progress(total=total, done=total - mine, quiet=quiet)
    return Progress(total=mine, quiet=quiet or not state.is_main_process,
                    desc=f"prompts (rank 0 of {state.num_processes})")

