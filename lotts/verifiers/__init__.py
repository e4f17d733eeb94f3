"""Verifiers: reward models that score candidate images so the sampler can keep the best.

A verifier is any callable `(images, prompts) -> 1-D float tensor` (one score per image,
higher is better). Built-ins load real checkpoints from local files with transformers
architectures only; see `load_verifier` for where each looks for its weights.
"""
from __future__ import annotations

import importlib
import os
from pathlib import Path
from typing import Any, Callable

import torch

from lotts.verifiers._base import (
    BatchedVerifier,
    CallableVerifier,
    Verifier,
    check_scores,
    resolve_device_dtype,
)
from lotts.verifiers._weights import VerifierWeightsNotFoundError

__all__ = ["Verifier", "VerifierWeightsNotFoundError", "available_verifiers", "check_scores",
           "load_verifier"]

# name -> module with a `load(*, path, device, dtype, allow_download, batch_size, **options)`.
_BUILTINS = {
    "clipscore": "lotts.verifiers.clipscore",
    "pickscore": "lotts.verifiers.pickscore",
    "aesthetic": "lotts.verifiers.aesthetic",
    "hpsv2": "lotts.verifiers.hpsv2",
    "image-reward": "lotts.verifiers.image_reward",
    # "module:function" entries: one module serving several names
    "world-clean-a": "lotts.verifiers.world:load_a",
    "world-clean-b": "lotts.verifiers.world:load_b",
    # weight-free stand-ins for demos and tests (lotts.verifiers.statistics)
    "stat-colorfulness": "lotts.verifiers.statistics:load_colorfulness",
    "stat-sharpness": "lotts.verifiers.statistics:load_sharpness",
    "stat-contrast": "lotts.verifiers.statistics:load_contrast",
}
# File-name hints for a bare path given as the spec (checked in this order).
_PATH_HINTS = (("imagereward", "image-reward"), ("hps", "hpsv2"), ("pickscore", "pickscore"),
               ("aesthetic", "aesthetic"), ("sac+logos", "aesthetic"), ("ava+logos", "aesthetic"))
_CHECKPOINTS = {".pt", ".pth", ".bin", ".safetensors"}


def available_verifiers() -> list[str]:
    """Names `load_verifier` accepts (case, '-' and '_' are ignored)."""
    return sorted(_BUILTINS)


def _canonical(name: str) -> str | None:
    key = name.lower().replace("-", "").replace("_", "")
    return next((n for n in _BUILTINS if n.replace("-", "") == key), None)


def _name_for_path(path: Path) -> str:
    """Guess which verifier a local file/folder belongs to, from its name, then its contents."""
    names = [path.name] + ([c.name for c in sorted(path.iterdir()) if c.suffix in _CHECKPOINTS]
                           if path.is_dir() else [])
    for hint, name in _PATH_HINTS:
        if any(hint in n.lower() for n in names):
            return name
    if path.is_dir() and (path / "config.json").is_file():
        return "clipscore"
    if path.is_file():
        from lotts.verifiers._weights import load_state_dict
        keys = load_state_dict(path).keys()
        if any(k.startswith("blip.") for k in keys):
            return "image-reward"
        if "visual.conv1.weight" in keys:
            return "hpsv2"
        if keys and all(k.startswith("layers.") for k in keys):
            return "aesthetic"
    raise ValueError(f"cannot tell which verifier {str(path)!r} is for; call "
                     f"load_verifier(name, path=...) with a name from {available_verifiers()}")


def load_verifier(spec: str | os.PathLike | Callable[..., Any], *,
                  device: str | torch.device | None = None,
                  dtype: str | torch.dtype | None = None,
                  path: str | os.PathLike | None = None,
                  allow_download: bool = False, batch_size: int = 8,
                  **options: Any) -> Verifier:
    """Return a ready verifier.

    `spec` is a built-in name (`available_verifiers()`), a local checkpoint file/folder (its
    verifier guessed from the name or keys), or any callable (wrapped so its scores are
    validated). Weights are looked up in order: `path`, the verifier's environment variable
    (`LOTTS_<NAME>_PATH`), the local Hugging Face cache, then a download if `allow_download`.
    Missing weights raise `VerifierWeightsNotFoundError` saying what to put where.

    On disk: clipscore/pickscore = a transformers CLIPModel folder; aesthetic = the MLP head
    file plus `clip_path=` a CLIP ViT-L/14 folder; hpsv2 = `HPS_v2.1_compressed.pt` plus
    `tokenizer_path=` a CLIP-H tokenizer folder; image-reward = `ImageReward.pt` plus
    `tokenizer_path=` a bert-base-uncased tokenizer folder. Extra keyword `options` go to the
    verifier's loader (e.g. `processor_path`, `version`, `vision_heads`, `text_heads`).

    Models run in eval mode under no_grad on `device` (default: CUDA when present) in `dtype`
    (default float32), `batch_size` images at a time; scores come back as float32 on the CPU.
    """
    if callable(spec) and not isinstance(spec, (str, os.PathLike)):
        if options or path is not None:
            raise ValueError("path/options apply to built-in verifiers, not to a callable")
        wrapped = isinstance(spec, (BatchedVerifier, CallableVerifier))
        return spec if wrapped else CallableVerifier(spec)
    if not isinstance(spec, (str, os.PathLike)):
        raise TypeError(f"spec must be a verifier name, a path or a callable, got {type(spec)}")
    name = _canonical(str(spec)) if isinstance(spec, str) else None
    if name is None:
        local = Path(spec).expanduser()
        if not local.exists():
            raise ValueError(f"unknown verifier {str(spec)!r}: not one of "
                             f"{available_verifiers()} and no such file or folder")
        name, path = _name_for_path(local), local
    device, dtype = resolve_device_dtype(device, dtype)
    module_name, _, function = _BUILTINS[name].partition(":")
    loader = getattr(importlib.import_module(module_name), function or "load")
    return loader(path=path, device=device, dtype=dtype, allow_download=allow_download,
                  batch_size=batch_size, **options)
