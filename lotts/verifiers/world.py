"""The miniature world's verifiers: two small CNNs that score how clean (defect-free) an image is.

`world-clean-a` selects candidates; `world-clean-b` (another architecture, seed and data stream)
reports held out. Score = logit that the image carries no planted-style defect; the prompt is
ignored. Weights ship with the package (``lotts/world/assets/verifier_{a,b}``: a
``model.safetensors`` plus a ``config.json`` naming the architecture), so no path is needed;
``path=`` or ``$LOTTS_WORLD_CLEAN_A_PATH`` / ``$LOTTS_WORLD_CLEAN_B_PATH`` point elsewhere
(e.g. a retrained set from ``python -m lotts.world.train --out DIR``).
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Optional

import torch

from lotts.verifiers._base import BatchedVerifier
from lotts.verifiers._weights import PathLike, VerifierWeightsNotFoundError

ASSETS = Path(__file__).resolve().parent.parent / "world" / "assets"
NAMES = {"a": "world-clean-a", "b": "world-clean-b"}


class WorldCleanVerifier(BatchedVerifier):
    """Scores 64x64 RGB images (others are resized) with one of the world's CNNs."""

    def __init__(self, name: str, model: torch.nn.Module, device: torch.device,
                 dtype: torch.dtype, batch_size: int) -> None:
        super().__init__(device, dtype, batch_size)
        self.name = name
        self.model = model.to(device=device, dtype=dtype).eval()

    def score_batch(self, images, prompts) -> torch.Tensor:
        from lotts.world.verifier_models import images_to_tensor
        x = images_to_tensor(images).to(self.device, self.dtype)
        return self.model(x)

    def score_pixels(self, pixels: torch.Tensor, prompts) -> torch.Tensor:
        """Differentiable scores of a float (B, 3, H, W) batch in [0, 1] (the hook of verifier
        saliency, :mod:`lotts.mask_sources`); at 64x64 the same as scoring the images."""
        from lotts.world.verifier_models import SIZE
        x = pixels.to(self.device, self.dtype)
        if x.shape[-2:] != (SIZE, SIZE):
            x = torch.nn.functional.interpolate(x, size=(SIZE, SIZE), mode="bilinear",
                                                align_corners=False)
        return self.model(x)


def resolve_folder(which: str, path: Optional[PathLike] = None) -> Path:
    """The folder with `which`'s (a/b) weights: `path`, its environment variable, the package."""
    env_var = f"LOTTS_WORLD_CLEAN_{which.upper()}_PATH"
    tried = []
    candidates = [("path=", path), (f"${env_var}", os.environ.get(env_var)),
                  ("bundled assets", ASSETS / f"verifier_{which}")]
    for label, candidate in candidates:
        if candidate is None or candidate == "":
            tried.append(f"{label}: not given")
            continue
        folder = Path(candidate).expanduser()
        if folder.is_file():
            folder = folder.parent
        if (folder / "model.safetensors").is_file() and (folder / "config.json").is_file():
            return folder
        tried.append(f"{label} {str(folder)!r}: no model.safetensors + config.json")
        if label != "bundled assets":
            break
    raise VerifierWeightsNotFoundError(
        f"{NAMES[which]}: weights not found. They ship in lotts/world/assets/verifier_{which}; "
        f"retrain with `python -m lotts.world.train` or pass path=... / set {env_var}. "
        f"Looked at: {'; '.join(tried)}.")


def load_model(folder: Path) -> torch.nn.Module:
    from safetensors.torch import load_file

    from lotts.world.verifier_models import build_verifier
    config = json.loads((folder / "config.json").read_text())
    model = build_verifier(config["arch"])
    model.load_state_dict({k: v.float() for k, v in load_file(str(folder / "model.safetensors")).items()})
    return model.eval()


def _load(which: str, *, path: Optional[PathLike], device: torch.device, dtype: torch.dtype,
          allow_download: bool, batch_size: int) -> WorldCleanVerifier:
    folder = resolve_folder(which, path)
    return WorldCleanVerifier(NAMES[which], load_model(folder), device, dtype, batch_size)


CPU = torch.device("cpu")


def load_a(*, path: Optional[PathLike] = None, device: torch.device = CPU,
           dtype: torch.dtype = torch.float32, allow_download: bool = False,
           batch_size: int = 64) -> WorldCleanVerifier:
    """`world-clean-a`, the selection verifier."""
    return _load("a", path=path, device=device, dtype=dtype, allow_download=allow_download,
                 batch_size=batch_size)


def load_b(*, path: Optional[PathLike] = None, device: torch.device = CPU,
           dtype: torch.dtype = torch.float32, allow_download: bool = False,
           batch_size: int = 64) -> WorldCleanVerifier:
    """`world-clean-b`, the held-out verifier."""
    return _load("b", path=path, device=device, dtype=dtype, allow_download=allow_download,
                 batch_size=batch_size)
