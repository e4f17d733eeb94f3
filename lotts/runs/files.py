"""Files written atomically: a killed run leaves whole files or temporary names, never halves."""
from __future__ import annotations

import hashlib
import io
import os
import re
from pathlib import Path
from typing import Any

from lotts.runs.prompts import PromptId

TMP_MARK = ".tmp-"


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

