"""Prompt files and per-prompt seeds.

A prompt's seed comes from (global seed, prompt id) alone, so a resumed or sharded run draws
the same images as one uninterrupted run.
"""
from __future__ import annotations

import csv
import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Union

from lotts.errors import PromptFileError

PromptId = Union[int, str]
PROMPT_COLUMNS = ("prompt", "text", "caption")


# A string id that spells an integer the one way Python prints it ("7", not "07", "+7", "-0").
_INTEGER_ID = re.compile(r"0|-?[1-9][0-9]*")


def normalize_id(raw: PromptId) -> PromptId:
    """The one form of an id: a string spelling an integer is that integer, so line 0 of a text
    file and a CSV row with id "0" are the same prompt (same seed, file name and compare row)."""
    if isinstance(raw, str) and _INTEGER_ID.fullmatch(raw):
        return int(raw)
    return raw


@dataclass(frozen=True)
class PromptItem:
    """One prompt with its stable id (the file's id column, else its 0-based line/row index),
    normalized by :func:`normalize_id`."""

    id: PromptId
    prompt: str

    def __post_init__(self) -> None:
        object.__setattr__(self, "id", normalize_id(self.id))


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
    duplicates = []
    for item in items:
        if item.id in seen:
            duplicates.append(item.id)
        seen.add(item.id)
    if duplicates:
        raise PromptFileError(f"{str(path)!r}: duplicate id(s) {duplicates[:5]}; ids must be unique")
    return items



def prompt_seed(global_seed: int, prompt_id: PromptId) -> int:
    """A prompt's seed from (global seed, prompt id) with sha256: independent of the prompt's
    position, the number of workers and Python's per-process ``hash()`` salt. 31 bits, so the
    sampler may add candidate indices and still fit any RNG's seed range."""
    key = json.dumps([int(global_seed), prompt_id]).encode()
    return int.from_bytes(hashlib.sha256(b"lotts-seed:" + key).digest()[:8], "big") % (2**31)

