"""Finding verifier weights on disk and loading checkpoints strictly.

Reward-model weights are large and never bundled, and CI machines have no hub access. So every
verifier resolves its files the same way, in this order: the explicit argument, an environment
variable, the local Hugging Face cache, and a download only when the caller allowed one. When
all fail, the error says exactly which file or folder to put where.
"""
from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Union

import torch
from torch import nn

PathLike = Union[str, "os.PathLike[str]"]

# Files that make a folder a loadable transformers model (weights), checked after a snapshot.
_MODEL_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "model.safetensors.index.json",
                       "pytorch_model.bin.index.json")
_SNAPSHOT_PATTERNS = ["*.json", "*.txt", "*.safetensors"]


class VerifierWeightsNotFoundError(FileNotFoundError):
    """A verifier's weights (or tokenizer) are not on this machine; the message says what to
    put where and which argument or environment variable points at it. ``source`` (the
    WeightSource) and ``tried`` (where it looked) let a front end phrase its own fix."""

    def __init__(self, message: str, source: WeightSource | None = None,
                 tried: Iterable[str] = ()) -> None:
        super().__init__(message)
        self.source = source
        self.tried = tuple(tried)


@dataclass(frozen=True)
class WeightSource:
    """Where one file or folder a verifier needs can come from.

    `kind` is "file" (a checkpoint; a folder given instead is searched for `filenames`) or
    "dir" (a transformers folder that must contain every name in `required`, one of
    `any_of` when given, plus a weights file when `needs_weights`).
    """

    verifier: str
    what: str
    argument: str
    env_var: str
    kind: str
    repo_ids: tuple[str, ...] = ()
    filenames: tuple[str, ...] = ()
    required: tuple[str, ...] = ("config.json",)
    any_of: tuple[str, ...] = ()
    needs_weights: bool = False
    allow_patterns: tuple[str, ...] = tuple(_SNAPSHOT_PATTERNS)
    help_url: str = ""

    def resolve(self, path: PathLike | None, allow_download: bool = False) -> Path:
        """Return the local file/folder, or raise VerifierWeightsNotFoundError."""
        tried: list[str] = []
        if path is not None:
            found = self._accept(Path(path).expanduser())
            if found is None:
                raise self._error([f"{self.argument}={str(path)!r}: {self._mismatch(Path(path))}"])
            return found
        tried.append(f"{self.argument}=: not given")
        env_value = os.environ.get(self.env_var)
        if env_value:
            found = self._accept(Path(env_value).expanduser())
            if found is None:
                problem = self._mismatch(Path(env_value))
                raise self._error([f"${self.env_var}={env_value!r}: {problem}"])
            return found
        tried.append(f"${self.env_var}: not set")
        for repo_id in self.repo_ids:
            found = self._from_hub(repo_id, local_only=True)
            if found is not None:
                return found
            tried.append(f"Hugging Face cache, repo {repo_id!r}: not cached")
        if allow_download and self.repo_ids:
            try:
                found, reason = self._from_hub(self.repo_ids[0], local_only=False), "not found"
            except Exception as error:  # network/auth errors differ across hub client versions
                found, reason = None, f"{type(error).__name__}: {error}"
            if found is not None:
                return found
            tried.append(f"download from {self.repo_ids[0]!r}: {reason}")
        elif self.repo_ids:
            tried.append("download: not attempted (allow_download=False)")
        raise self._error(tried)

    # ----- checks ------------------------------------------------------------------------------

    def _accept(self, path: Path) -> Path | None:
        if self.kind == "dir":
            return path if path.is_dir() and not self._missing(path) else None
        if path.is_file():
            return path
        if path.is_dir():
            return next((path / n for n in self.filenames if (path / n).is_file()), None)
        return None

    def _mismatch(self, path: Path) -> str:
        if not path.exists():
            return "does not exist"
        if self.kind == "dir":
            return f"is not a folder containing {', '.join(self._missing(path))}"
        return f"is a folder without any of {', '.join(self.filenames)}"

    def _missing(self, folder: Path) -> list[str]:
        missing = [name for name in self.required if not (folder / name).exists()]
        if self.any_of and not any((folder / name).exists() for name in self.any_of):
            missing.append(" or ".join(self.any_of))
        if self.needs_weights and not _has_weights(folder):
            missing.append(" or ".join(_MODEL_WEIGHT_FILES[:2]))
        return missing

    # ----- hub cache / download ----------------------------------------------------------------

    def _from_hub(self, repo_id: str, local_only: bool) -> Path | None:
        try:
            import huggingface_hub
        except ImportError:
            return None
        try:
            if self.kind == "file":
                return self._file_from_hub(huggingface_hub, repo_id, local_only)
            folder = huggingface_hub.snapshot_download(
                repo_id, local_files_only=local_only, allow_patterns=list(self.allow_patterns))
        except (OSError, ValueError):  # not cached / offline / no such repo
            return None
        folder = Path(folder)
        if not local_only and self.needs_weights and not _has_weights(folder):
            folder = Path(huggingface_hub.snapshot_download(  # a repo without safetensors
                repo_id, allow_patterns=["pytorch_model.bin"]))
        return self._accept(folder)

    def _file_from_hub(self, hub, repo_id: str, local_only: bool) -> Path | None:
        for name in self.filenames:
            if local_only:
                cached = hub.try_to_load_from_cache(repo_id, name)
                if isinstance(cached, str):
                    return Path(cached)
            else:
                try:
                    return Path(hub.hf_hub_download(repo_id, name))
                except (OSError, ValueError):
                    continue
        return None

    # ----- the message -------------------------------------------------------------------------

    def _error(self, tried: Iterable[str]) -> VerifierWeightsNotFoundError:
        tried = list(tried)
        if self.kind == "file":
            names = " or ".join(repr(n) for n in self.filenames)
            put = f"Put the file {names} on this machine"
            example = f"/path/to/{self.filenames[0]}" if self.filenames else "/path/to/file"
        else:
            put = (f"Put a folder containing {', '.join(self._missing(Path('/nonexistent')))} "
                   f"(a transformers save_pretrained folder) on this machine")
            example = "/path/to/folder"
        source = ""
        if self.repo_ids:
            file_part = f" {self.filenames[0]}" if self.kind == "file" else ""
            source = (f"It comes from the Hugging Face repo {self.repo_ids[0]!r}: "
                      f"`huggingface-cli download {self.repo_ids[0]}{file_part}` on a machine with "
                      f"network access fills the cache, or pass allow_download=True. ")
        if self.help_url:
            source += f"See {self.help_url}. "
        return VerifierWeightsNotFoundError(
            f"{self.verifier}: {self.what} not found. {put} and pass "
            f"{self.argument}={example!r} to load_verifier({self.verifier!r}, ...), or set "
            f"{self.env_var}={example}. {source}Looked at: {'; '.join(tried)}.", self, tried)


# ----- checkpoints --------------------------------------------------------------------------


def load_state_dict(path: PathLike) -> dict[str, torch.Tensor]:
    """Read a `.safetensors`/`.pt`/`.pth`/`.bin` checkpoint as a flat tensor dict.

    Unwraps the usual containers (`state_dict`, `model`) and DDP's `module.` prefix, so the
    original training scripts' files load as they are.
    """
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file
        return load_file(str(path))
    obj = torch.load(str(path), map_location="cpu", weights_only=True, mmap=_is_zip(path))
    for key in ("state_dict", "model"):
        if isinstance(obj, Mapping) and isinstance(obj.get(key), Mapping):
            obj = obj[key]
    if not isinstance(obj, Mapping):
        raise ValueError(f"{path}: expected a state dict, found {type(obj).__name__}")
    tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if tensors and all(k.startswith("module.") for k in tensors):
        tensors = {k[len("module."):]: v for k, v in tensors.items()}
    return tensors


def _has_weights(folder: Path) -> bool:
    return any((folder / name).exists() for name in _MODEL_WEIGHT_FILES)


def _is_zip(path: Path) -> bool:
    with open(path, "rb") as handle:
        return handle.read(4) == b"PK\x03\x04"


def check_keys(expected: Iterable[str], got: Iterable[str], what: str) -> None:
    """Raise ValueError naming missing and unexpected keys: a conversion must be exact."""
    expected, got = set(expected), set(got)
    missing, unexpected = sorted(expected - got), sorted(got - expected)
    if missing or unexpected:
        raise ValueError(
            f"{what}: checkpoint does not match the model; missing {len(missing)} keys "
            f"{missing[:8]}, unexpected {len(unexpected)} keys {unexpected[:8]}")


def build_from_state_dict(factory: Callable[[], nn.Module], state_dict: Mapping[str, torch.Tensor],
                          what: str) -> nn.Module:
    """Build a module on the meta device and load `state_dict` into it strictly.

    Meta construction skips the random initialisation of a billion parameters that the
    checkpoint overwrites anyway; non-persistent buffers (position ids) are rebuilt after.
    """
    with torch.device("meta"):
        model = factory()
    check_keys(model.state_dict().keys(), state_dict.keys(), what)
    model.load_state_dict(dict(state_dict), strict=True, assign=True)
    _materialize_position_ids(model)
    return model.eval()


def _materialize_position_ids(model: nn.Module) -> None:
    for module in model.modules():
        for name, buffer in list(module._buffers.items()):
            if buffer is None or not buffer.is_meta:
                continue
            if "position_ids" not in name:
                raise RuntimeError(f"buffer {name} of {type(module).__name__} was not loaded")
            ids = torch.arange(buffer.shape[-1], dtype=buffer.dtype)
            module._buffers[name] = ids.expand(buffer.shape).contiguous()
