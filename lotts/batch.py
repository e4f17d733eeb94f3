"""Batch runs: prompt files, per-prompt seeds, the manifest, resume and sharding.

A batch run must survive being killed and must not depend on how it was launched. So every
prompt's seed comes from (global seed, prompt id) alone, each finished prompt is one line of
``manifest.jsonl`` appended (and fsync'd) only after its images were renamed into place, and a
rerun skips what the manifest holds. Under ``torchrun``/``accelerate launch`` the prompts still to
do are split with accelerate's ``PartialState``; each rank appends to its own
``manifest.part-<rank>.jsonl`` and the main rank merges them into one manifest sorted by id.
"""
from __future__ import annotations

import csv
import hashlib
import json
import os
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Union

import numpy as np

from lotts.result import PHASES

PromptId = Union[int, str]
# (prompt, seed, on_phase) -> a LoTTS-style result; on_phase(name) reports the current phase.
SampleFn = Callable[[str, int, Callable[[str], None]], Any]

MANIFEST = "manifest.jsonl"
RUN_FILE = "run.json"
TMP_MARK = ".tmp-"
IMAGES_DIR = "images"
CANDIDATES_DIR = "candidates"
PROMPT_COLUMNS = ("prompt", "text", "caption")


class BatchError(Exception):
    """A problem with the user's inputs or output directory; the CLI prints it and exits 2."""


class PromptFileError(BatchError):
    """The prompt file is missing, unreadable or malformed."""


class ManifestConflictError(BatchError):
    """The output directory holds the manifest of a run with other settings."""


# --------------------------------------------------------------------------------------------
# Prompts and seeds
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PromptItem:
    """One prompt with its stable id (the file's id column, else its 0-based line/row index)."""

    id: PromptId
    prompt: str


def id_sort_key(prompt_id: PromptId) -> tuple[int, Any]:
    """Integers in numeric order first, then strings: one total order for mixed ids."""
    return (0, prompt_id) if isinstance(prompt_id, int) else (1, str(prompt_id))


def read_prompts(path: Union[str, os.PathLike]) -> list[PromptItem]:
    """Read a prompt file: ``.csv`` / ``.jsonl`` with a prompt column/field and an optional
    ``id``, anything else plain text with one prompt per line (blank and ``#`` lines skipped,
    ids stay the line index so editing a comment never renumbers prompts)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise PromptFileError(f"cannot read prompt file {str(path)!r}: {error}") from None
    suffix = path.suffix.lower()
    if suffix == ".csv":
        items = _csv_prompts(text, path)
    elif suffix in (".jsonl", ".ndjson"):
        items = _jsonl_prompts(text, path)
    else:
        items = [PromptItem(i, line.strip()) for i, line in enumerate(text.splitlines())
                 if line.strip() and not line.lstrip().startswith("#")]
    return _checked(items, path)


def _csv_prompts(text: str, path: Path) -> list[PromptItem]:
    reader = csv.DictReader(text.splitlines())
    columns = {name.strip().lower(): name for name in reader.fieldnames or []}
    prompt_column = next((columns[c] for c in PROMPT_COLUMNS if c in columns), None)
    if prompt_column is None:
        raise PromptFileError(f"{str(path)!r} has no prompt column: expected one of "
                              f"{list(PROMPT_COLUMNS)}, found {list(columns)}")
    id_column = columns.get("id")
    items = []
    for row_index, row in enumerate(reader):
        prompt = (row.get(prompt_column) or "").strip()
        raw_id = (row.get(id_column) or "").strip() if id_column else ""
        items.append(PromptItem(raw_id or row_index, prompt))
    return items


def _jsonl_prompts(text: str, path: Path) -> list[PromptItem]:
    items = []
    for line_index, line in enumerate(text.splitlines()):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
        except json.JSONDecodeError as error:
            raise PromptFileError(f"{str(path)!r} line {line_index + 1} is not JSON: {error}") from None
        if isinstance(entry, str):
            entry = {"prompt": entry}
        prompt = next((entry[k] for k in PROMPT_COLUMNS if isinstance(entry, dict) and k in entry), None)
        if not isinstance(prompt, str):
            raise PromptFileError(f"{str(path)!r} line {line_index + 1} has no string field "
                                  f"among {list(PROMPT_COLUMNS)}")
        raw_id = entry.get("id")
        if raw_id is not None and not isinstance(raw_id, (int, str)):
            raise PromptFileError(f"{str(path)!r} line {line_index + 1}: id must be a string or "
                                  f"an integer, got {raw_id!r}")
        items.append(PromptItem(line_index if raw_id is None else raw_id, prompt.strip()))
    return items


def _checked(items: list[PromptItem], path: Path) -> list[PromptItem]:
    if not items:
        raise PromptFileError(f"{str(path)!r} holds no prompts")
    empty = [item.id for item in items if not item.prompt]
    if empty:
        raise PromptFileError(f"{str(path)!r}: empty prompt for id(s) {empty[:5]}")
    seen: set[PromptId] = set()
    duplicates = [item.id for item in items if item.id in seen or seen.add(item.id)]
    if duplicates:
        raise PromptFileError(f"{str(path)!r}: duplicate id(s) {duplicates[:5]}; ids must be unique")
    return items


def derive_seed(global_seed: int, prompt_id: PromptId) -> int:
    """A prompt's seed from (global seed, prompt id) with sha256: independent of the prompt's
    position, the number of workers and Python's per-process ``hash()`` salt. 31 bits, so the
    sampler may add candidate indices and still fit any RNG's seed range."""
    key = json.dumps([int(global_seed), prompt_id]).encode()
    return int.from_bytes(hashlib.sha256(b"lotts-seed:" + key).digest()[:8], "big") % (2**31)


def canonical_json(value: Any) -> str:
    """The one serialization that hashes: sorted keys, no spaces, tuples as lists."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


@dataclass(frozen=True)
class RunSpec:
    """Everything that decides a run's images; its hash marks the output directory."""

    method: str
    model: str
    config: Mapping[str, Any]
    pipe_kwargs: Mapping[str, Any]
    verifier: str
    report_with: tuple[str, ...] = ()
    seed: int = 0
    dtype: str = "float32"

    def to_json(self) -> dict[str, Any]:
        return json.loads(canonical_json(asdict(self)))

    @property
    def hash(self) -> str:
        return hashlib.sha256(canonical_json(self.to_json()).encode()).hexdigest()


# --------------------------------------------------------------------------------------------
# Files written atomically
# --------------------------------------------------------------------------------------------
def _temp_name(path: Path) -> Path:
    return path.with_name(f"{path.stem}{TMP_MARK}{os.getpid()}{path.suffix}")


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """Write to a temporary name, fsync, then rename: readers see the whole file or none."""
    temp = _temp_name(path)
    with open(temp, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temp, path)


def save_image_atomic(image: Any, path: Path) -> None:
    """Save a PIL image as PNG under ``path`` atomically."""
    import io

    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    write_bytes_atomic(path, buffer.getvalue())


def remove_temp_files(out_dir: Path) -> int:
    """Delete files a killed run left half-written; returns how many."""
    removed = 0
    for temp in out_dir.rglob(f"*{TMP_MARK}*"):
        if temp.is_file():
            temp.unlink()
            removed += 1
    return removed


def safe_name(prompt_id: PromptId) -> str:
    """A file name for a prompt id: zero-padded integers; other ids sanitized, with a short
    hash when sanitizing changed them so two ids never share a file."""
    if isinstance(prompt_id, int):
        return f"{prompt_id:05d}"
    cleaned = re.sub(r"[^A-Za-z0-9._-]", "_", prompt_id)[:80].lstrip(".") or "_"
    if cleaned != prompt_id:
        cleaned += "-" + hashlib.sha256(prompt_id.encode()).hexdigest()[:8]
    return cleaned


# --------------------------------------------------------------------------------------------
# Manifest
# --------------------------------------------------------------------------------------------
def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Records of a JSONL file; a torn last line from a killed writer is skipped (that prompt
    is simply redone)."""
    if not path.is_file():
        return []
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict) and "id" in record:
            records.append(record)
    return records


def sorted_unique(records: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """One record per id (the first seen), sorted by id."""
    by_id: dict[PromptId, dict[str, Any]] = {}
    for record in records:
        by_id.setdefault(record["id"], record)
    return [by_id[key] for key in sorted(by_id, key=id_sort_key)]


class Manifest:
    """``manifest.jsonl`` of an output directory plus the per-rank parts of a sharded run."""

    def __init__(self, out_dir: Union[str, os.PathLike]) -> None:
        self.out_dir = Path(out_dir)
        self.path = self.out_dir / MANIFEST

    def part_path(self, rank: int, num_processes: int) -> Path:
        """Where a rank appends: the manifest itself when it runs alone."""
        return self.path if num_processes == 1 else self.out_dir / f"manifest.part-{rank}.jsonl"

    def parts(self) -> list[Path]:
        return sorted(self.out_dir.glob("manifest.part-*.jsonl"))

    def records(self) -> list[dict[str, Any]]:
        """Every finished prompt, from the manifest and any leftover parts."""
        sources = [self.path, *self.parts()]
        return sorted_unique(record for source in sources for record in read_jsonl(source))

    def done_ids(self) -> set[PromptId]:
        return {record["id"] for record in self.records()}

    def check_owner(self, config_hash: str) -> None:
        """Refuse a directory whose records (or run.json) come from other settings."""
        owners = {record.get("config_hash") for record in self.records()}
        run_file = self.out_dir / RUN_FILE
        if run_file.is_file():
            try:
                owners.add(json.loads(run_file.read_text(encoding="utf-8")).get("config_hash"))
            except (OSError, json.JSONDecodeError):
                pass
        others = sorted(str(owner) for owner in owners - {config_hash})
        if others:
            raise ManifestConflictError(
                f"{str(self.out_dir)!r} holds another run (config hash {others[0][:12]}, this run "
                f"{config_hash[:12]}): rerun with the same options to resume it, or pass a new --out")

    def append(self, record: Mapping[str, Any], rank: int = 0, num_processes: int = 1) -> None:
        """Append one record durably (flush + fsync) as a single line."""
        line = json.dumps(record, sort_keys=True) + "\n"
        with open(self.part_path(rank, num_processes), "a", encoding="utf-8") as handle:
            handle.write(line)
            handle.flush()
            os.fsync(handle.fileno())

    def merge(self) -> list[dict[str, Any]]:
        """Rewrite the manifest from itself and the parts, sorted by id, then drop the parts.
        Safe to repeat after a crash at any point (records are deduplicated by id)."""
        records = self.records()
        parts = self.parts()
        if records or self.path.exists():
            payload = "".join(json.dumps(r, sort_keys=True) + "\n" for r in records)
            write_bytes_atomic(self.path, payload.encode("utf-8"))
        for part in parts:
            part.unlink()
        return records


# --------------------------------------------------------------------------------------------
# Results -> files and records
# --------------------------------------------------------------------------------------------
def to_float_list(values: Any) -> list[float]:
    """Scores as plain floats (tensors, arrays, lists all accepted)."""
    return [float(v) for v in np.asarray(_to_numpy(values), dtype=np.float64).reshape(-1)]


def _to_numpy(value: Any) -> Any:
    if hasattr(value, "detach"):
        return value.detach().float().cpu().numpy()
    return value


def candidate_scores(result: Any, prompt: str, verifier_name: str,
                     held_out: Mapping[str, Any]) -> tuple[dict[str, list[float]], float]:
    """Scores of every candidate by every verifier: the selection verifier's from the
    candidates, each held-out verifier's computed here on all candidate images (held-out
    scoring is reporting, not the method's cost, so its seconds are returned apart)."""
    import time

    scores = {verifier_name: [float(c.score) for c in result.candidates]}
    images = [c.image for c in result.candidates]
    start = time.perf_counter()
    for name, verifier in held_out.items():
        scores[name] = to_float_list(verifier(images, [prompt] * len(images)))
    return scores, time.perf_counter() - start


def phase_seconds(cost: Any, report_seconds: float = 0.0) -> dict[str, float]:
    """Seconds per phase; ``total`` is the method's own (held-out scoring is under ``report``
    and left out of it)."""
    out = {str(k): float(v) for k, v in dict(getattr(cost, "seconds", None) or {}).items()}
    out["total"] = sum(v for k, v in out.items() if k not in ("total", "report"))
    out["report"] = out.get("report", 0.0) + report_seconds
    return out


def versions() -> dict[str, str]:
    """Package versions recorded with every prompt (results may change with them)."""
    import importlib

    out = {}
    for module in ("lotts", "torch", "diffusers", "transformers", "accelerate"):
        try:
            out[module] = str(importlib.import_module(module).__version__)
        except Exception:  # an optional package missing: record that, never fail a run
            out[module] = "missing"
    return out


@dataclass
class OutputWriter:
    """Writes one prompt's images (selected, and optionally every candidate with its mask,
    heatmap and a grid) atomically, and returns the record's file fields."""

    out_dir: Path
    save_candidates: bool = False
    verifier_name: str = "verifier"

    def write(self, item: PromptItem, result: Any, scores: Mapping[str, list[float]]) -> dict[str, Any]:
        name = safe_name(item.id)
        (self.out_dir / IMAGES_DIR).mkdir(parents=True, exist_ok=True)
        image_path = f"{IMAGES_DIR}/{name}.png"
        save_image_atomic(result.image, self.out_dir / image_path)
        files: dict[str, Any] = {"image": image_path, "grid": None, "candidate_files": None}
        if self.save_candidates:
            files.update(self._write_candidates(name, item, result, scores))
        return files

    def _write_candidates(self, name: str, item: PromptItem, result: Any,
                          scores: Mapping[str, list[float]]) -> dict[str, Any]:
        from lotts import report

        folder = self.out_dir / CANDIDATES_DIR / name
        folder.mkdir(parents=True, exist_ok=True)
        relative = f"{CANDIDATES_DIR}/{name}"
        entries = []
        for index, candidate in enumerate(result.candidates):
            entry = {"image": f"{relative}/c{index:02d}.png", "mask": None, "heatmap": None}
            save_image_atomic(candidate.image, self.out_dir / entry["image"])
            size = candidate.image.size
            if getattr(candidate, "mask", None) is not None:
                entry["mask"] = f"{relative}/c{index:02d}-mask.png"
                save_image_atomic(report.mask_image(candidate.mask, size), self.out_dir / entry["mask"])
            if getattr(candidate, "heatmap", None) is not None:
                entry["heatmap"] = f"{relative}/c{index:02d}-heatmap.png"
                save_image_atomic(report.heatmap_image(candidate.heatmap, size),
                                  self.out_dir / entry["heatmap"])
            entries.append(entry)
        grid = report.candidate_grid(result, scores.get(self.verifier_name), title=item.prompt,
                                     score_name=self.verifier_name)
        save_image_atomic(grid, folder / "grid.png")
        return {"grid": f"{relative}/grid.png", "candidate_files": entries}


def make_record(item: PromptItem, seed: int, result: Any, spec: RunSpec,
                scores: Mapping[str, list[float]], files: Mapping[str, Any],
                report_seconds: float = 0.0, rank: int = 0) -> dict[str, Any]:
    """The manifest line for one finished prompt (``rank``: the process that made it)."""
    cost = result.cost
    nfe_by_phase = getattr(cost, "nfe_by_phase", None)
    return {
        "id": item.id,
        "prompt": item.prompt,
        "method": spec.method,
        "seed": seed,
        "seeds": [int(c.seed) for c in result.candidates],
        "parents": [None if c.parent is None else int(c.parent) for c in result.candidates],
        "candidate_nfe": [int(getattr(c, "nfe", 0) or 0) for c in result.candidates],
        "scores": dict(scores),
        "selection_verifier": spec.verifier,
        "selected": int(result.selected),
        "nfe": int(cost.nfe),
        "verifier_calls": int(cost.verifier_calls),
        "nfe_by_phase": None if nfe_by_phase is None else {k: int(v) for k, v in nfe_by_phase.items()},
        "seconds": phase_seconds(cost, report_seconds),
        "config_hash": spec.hash,
        "rank": rank,
        "versions": versions(),
        **files,
    }


# --------------------------------------------------------------------------------------------
# Progress
# --------------------------------------------------------------------------------------------
@dataclass
class Progress:
    """One bar over prompts with the current prompt's phase as its postfix; silent when
    ``quiet`` or on a non-main rank. Diffusers' per-step bars sit below it (``leave=False``)."""

    total: int
    done: int = 0
    quiet: bool = False
    desc: str = "prompts"
    _bar: Any = field(default=None, repr=False)

    def __enter__(self) -> "Progress":
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


def configure_pipeline_progress(pipe: Any, quiet: bool) -> None:
    """Make diffusers' step bars fit under ours: transient, on the line below, or off."""
    if hasattr(pipe, "set_progress_bar_config"):
        if quiet:
            pipe.set_progress_bar_config(disable=True)
        else:
            pipe.set_progress_bar_config(disable=False, leave=False, position=1, dynamic_ncols=True)


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
        run = {"spec": spec.to_json(), "config_hash": spec.hash, "notes": list(notes),
               "versions": versions()}
        write_bytes_atomic(out_dir / RUN_FILE, (json.dumps(run, indent=2) + "\n").encode())
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
            seed = derive_seed(spec.seed, item.id)
            progress.phase(item.id, "generate")
            result = sample(item.prompt, seed, lambda phase, _id=item.id: progress.phase(_id, phase))
            progress.phase(item.id, "report")
            scores, report_seconds = candidate_scores(result, item.prompt, spec.verifier,
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


def _progress_for(state: Any, total: int, mine: int, quiet: bool) -> Progress:
    """Alone: the whole run, resumed prompts counted as done. Sharded: the main rank's share."""
    if state.num_processes == 1:
        return Progress(total=total, done=total - mine, quiet=quiet)
    return Progress(total=mine, quiet=quiet or not state.is_main_process,
                    desc=f"prompts (rank 0 of {state.num_processes})")


# --------------------------------------------------------------------------------------------
# Verifier specs
# --------------------------------------------------------------------------------------------
def _luminance(image: Any) -> np.ndarray:
    return np.asarray(image.convert("L"), dtype=np.float64) / 255.0


def _colorfulness(image: Any) -> float:
    """Hasler & Suesstrunk's colorfulness statistic."""
    rgb = np.asarray(image.convert("RGB"), dtype=np.float64) / 255.0
    rg = rgb[..., 0] - rgb[..., 1]
    yb = 0.5 * (rgb[..., 0] + rgb[..., 1]) - rgb[..., 2]
    return float(np.hypot(rg.std(), yb.std()) + 0.3 * np.hypot(rg.mean(), yb.mean()))


def _sharpness(image: Any) -> float:
    """Mean absolute Laplacian of the luminance."""
    y = _luminance(image)
    laplacian = -4 * y[1:-1, 1:-1] + y[:-2, 1:-1] + y[2:, 1:-1] + y[1:-1, :-2] + y[1:-1, 2:]
    return float(np.abs(laplacian).mean())


def _contrast(image: Any) -> float:
    """Standard deviation of the luminance."""
    return float(_luminance(image).std())


STANDIN_VERIFIERS: dict[str, Callable[[Any], float]] = {
    "stat-colorfulness": _colorfulness,
    "stat-sharpness": _sharpness,
    "stat-contrast": _contrast,
}


@dataclass(frozen=True)
class StatisticVerifier:
    """A verifier that needs no weights: a deterministic image statistic. A stand-in for
    demos and tests only; it knows nothing about the prompt."""

    name: str

    def __call__(self, images: Sequence[Any], prompts: Sequence[str]) -> Any:
        import torch

        return torch.tensor([STANDIN_VERIFIERS[self.name](image) for image in images],
                            dtype=torch.float32)


def verifier_name(spec: str) -> str:
    """The key a verifier's scores are stored under: its name, or a path's file name."""
    spec = str(spec)
    looks_like_path = os.sep in spec or Path(spec).suffix in (".pt", ".pth", ".bin", ".safetensors")
    return Path(spec).stem or spec if looks_like_path else spec


def resolve_verifier(spec: str, **options: Any) -> Any:
    """A weight-free stand-in by name (``stat-*``), else ``lotts.verifiers.load_verifier``."""
    if str(spec) in STANDIN_VERIFIERS:
        return StatisticVerifier(str(spec))
    from lotts.verifiers import load_verifier

    return load_verifier(spec, **options)
