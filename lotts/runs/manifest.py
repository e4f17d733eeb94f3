"""The manifest: the one reader and writer of a run directory's records and ``run.json``.

Each finished prompt is one line of ``manifest.jsonl``, appended (and fsync'd) only after its
images were renamed into place, so a rerun skips exactly what the manifest holds. Under
``torchrun``/``accelerate launch`` each rank appends to its own ``manifest.part-<rank>.jsonl``
and the main rank merges them into one manifest sorted by id.
"""
from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Union

from lotts.errors import ManifestConflictError
from lotts.runs.files import write_bytes_atomic
from lotts.runs.prompts import PromptId, id_sort_key, normalize_id

MANIFEST = "manifest.jsonl"
RUN_FILE = "run.json"
PARTS_GLOB = "manifest.part-*.jsonl"


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



def score_key(spec: Union[str, os.PathLike]) -> str:
    """The key a verifier's scores are stored under: its name, or a path's file name."""
    spec = str(spec)
    looks_like_path = os.sep in spec or Path(spec).suffix in (".pt", ".pth", ".bin", ".safetensors")
    return Path(spec).stem or spec if looks_like_path else spec


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
            record["id"] = normalize_id(record["id"])  # runs written before ids were normalized
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
        return sorted(self.out_dir.glob(PARTS_GLOB))

    def records(self) -> list[dict[str, Any]]:
        """Every finished prompt, from the manifest and any leftover parts."""
        sources = [self.path, *self.parts()]
        return sorted_unique(record for source in sources for record in read_jsonl(source))

    def done_ids(self) -> set[PromptId]:
        return {record["id"] for record in self.records()}

    def owners(self) -> set[str]:
        """Config hashes of the runs whose records (or run.json) are in this directory."""
        owners = {str(record.get("config_hash")) for record in self.records()}
        info = self.run_info()
        if info:
            owners.add(str(info.get("config_hash")))
        return owners

    def check_owner(self, config_hash: str) -> None:
        """Refuse a directory whose records (or run.json) come from other settings."""
        others = sorted(self.owners() - {config_hash})
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


    # ----- run.json and the whole directory ---------------------------------------------------
    def run_info(self) -> dict[str, Any]:
        """``run.json`` (spec, config hash, notes, versions); {} when absent or unreadable."""
        try:
            info = json.loads((self.out_dir / RUN_FILE).read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            return {}
        return info if isinstance(info, dict) else {}

    def write_run_info(self, spec: RunSpec, notes: Iterable[str],
                       versions: Mapping[str, str]) -> None:
        run = {"spec": spec.to_json(), "config_hash": spec.hash, "notes": list(notes),
               "versions": dict(versions)}
        write_bytes_atomic(self.out_dir / RUN_FILE, (json.dumps(run, indent=2) + "\n").encode())

    def load(self) -> RunDirectory:
        """The whole directory as read by reports; raises if it holds no manifest."""
        if not self.path.is_file() and not self.parts():
            raise FileNotFoundError(f"{str(self.out_dir)!r} holds no {MANIFEST}: not a lotts run "
                                    "directory")
        info = self.run_info()
        return RunDirectory(self.out_dir, info.get("spec", {}), list(info.get("notes", [])),
                            self.records())


@dataclass
class RunDirectory:
    """A finished (or partial) run directory: its spec, notes and manifest records."""

    path: Path
    spec: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    records: list[dict[str, Any]] = field(default_factory=list)

    @property
    def name(self) -> str:
        return str(self.spec.get("method") or self.path.name)
