"""Weight-free stand-in verifiers ("stat-*"): deterministic image statistics.

For demos and tests only: they know nothing about the prompt. Registered in
:mod:`lotts.verifiers` like every verifier, so ``LoTTS(verifier="stat-sharpness")`` and
``lotts generate --verifier stat-sharpness`` accept the same names.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch


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

    def __call__(self, images: Sequence[Any], prompts: Sequence[str]) -> torch.Tensor:
        return torch.tensor([STANDIN_VERIFIERS[self.name](image) for image in images],
                            dtype=torch.float32)


def _loader(name: str) -> Callable[..., StatisticVerifier]:
    def load(**_options: Any) -> StatisticVerifier:
        """No weights to find: path, device, dtype and batch size do not apply."""
        return StatisticVerifier(name)
    return load


load_colorfulness = _loader("stat-colorfulness")
load_sharpness = _loader("stat-sharpness")
load_contrast = _loader("stat-contrast")
