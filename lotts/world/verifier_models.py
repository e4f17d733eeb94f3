"""The two small CNN architectures of the world's verifiers (clean-vs-defect classifiers).

Both map a float (B, 3, 64, 64) batch in [0, 1] to one logit per image: high = clean. They differ
on purpose (kernel sizes, depth, pooling, normalization) so that the held-out verifier does not
share the selection verifier's blind spots.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

SIZE = 64


class VerifierA(nn.Module):
    """Strided 3x3 convolutions with GroupNorm, global average + max pooling."""

    def __init__(self, width: int = 24) -> None:
        super().__init__()
        w = width
        self.features = nn.Sequential(
            nn.Conv2d(3, w, 3, padding=1), nn.SiLU(),
            nn.Conv2d(w, w, 3, padding=1, stride=2), nn.GroupNorm(4, w), nn.SiLU(),       # 32
            nn.Conv2d(w, 2 * w, 3, padding=1, stride=2), nn.GroupNorm(4, 2 * w), nn.SiLU(),  # 16
            nn.Conv2d(2 * w, 2 * w, 3, padding=1), nn.GroupNorm(4, 2 * w), nn.SiLU(),
            nn.Conv2d(2 * w, 4 * w, 3, padding=1, stride=2), nn.GroupNorm(4, 4 * w), nn.SiLU(),  # 8
        )
        self.head = nn.Linear(8 * w, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.features(x * 2 - 1)
        pooled = torch.cat([f.mean(dim=(2, 3)), f.amax(dim=(2, 3))], dim=1)
        return self.head(pooled)[:, 0]


class VerifierB(nn.Module):
    """5x5 then 3x3 convolutions, max-pool downsampling, no normalization, a two-layer head
    on a log-sum-exp pooling of per-position evidence."""

    def __init__(self, width: int = 32) -> None:
        super().__init__()
        w = width
        self.features = nn.Sequential(
            nn.Conv2d(3, w, 5, padding=2), nn.LeakyReLU(0.1), nn.MaxPool2d(2),           # 32
            nn.Conv2d(w, w, 3, padding=1), nn.LeakyReLU(0.1), nn.MaxPool2d(2),           # 16
            nn.Conv2d(w, 2 * w, 3, padding=1), nn.LeakyReLU(0.1),
            nn.Conv2d(2 * w, 2 * w, 3, padding=1), nn.LeakyReLU(0.1), nn.MaxPool2d(2),   # 8
        )
        self.local = nn.Conv2d(2 * w, 1, 1)  # per-position defect evidence
        self.head = nn.Sequential(nn.Linear(2 * w + 1, w), nn.LeakyReLU(0.1), nn.Linear(w, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.features(x - 0.5)
        evidence = torch.logsumexp(self.local(f).flatten(1), dim=1, keepdim=True)
        return self.head(torch.cat([f.mean(dim=(2, 3)), evidence], dim=1))[:, 0]


VERIFIER_ARCHS = {"a": VerifierA, "b": VerifierB}


def build_verifier(arch: str) -> nn.Module:
    return VERIFIER_ARCHS[arch]()


def images_to_tensor(images) -> torch.Tensor:
    """uint8 (B, H, W, 3) array, or a list of PIL images / arrays -> float (B, 3, 64, 64) in [0, 1]."""
    if isinstance(images, np.ndarray) and images.ndim == 4:
        x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float() / 255.0
    else:
        arrays = []
        for im in images:
            if hasattr(im, "convert"):
                im = im.convert("RGB")
                if im.size != (SIZE, SIZE):
                    im = im.resize((SIZE, SIZE))
            arrays.append(np.asarray(im, dtype=np.uint8))
        x = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float() / 255.0
    if x.shape[-2:] != (SIZE, SIZE):
        x = torch.nn.functional.interpolate(x, size=(SIZE, SIZE), mode="bilinear",
                                            align_corners=False)
    return x
