"""The verifier contract and the batching/validation every verifier shares."""
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol, Union, runtime_checkable

import numpy as np
import torch
from PIL import Image

Prompts = Union[str, Sequence[str]]


@runtime_checkable
class Verifier(Protocol):
    """Scores images against their prompts: one float per image, higher is better.

    Any callable with this signature works as a verifier; the sampler only compares scores of
    candidates for the same prompt, so the scale is free.
    """

    def __call__(self, images: list[Image.Image], prompts: list[str]) -> torch.Tensor: ...


def check_scores(scores: Any, n: int, name: str = "verifier") -> torch.Tensor:
    """Return `scores` as a 1-D float32 CPU tensor of length `n`, or raise ValueError.

    The sampler calls this on every verifier's output (user callables included): a wrong
    length or a NaN would silently pick the wrong candidate.
    """
    if isinstance(scores, (list, tuple, np.ndarray, float, int)):
        scores = torch.as_tensor(np.asarray(scores, dtype=np.float64))
    if not isinstance(scores, torch.Tensor):
        raise ValueError(f"{name} returned {type(scores).__name__}; "
                         f"expected a tensor of {n} scores")
    if scores.dim() == 2 and scores.shape[1] == 1:  # (n, 1), as regression heads return
        scores = scores[:, 0]
    if scores.dim() != 1 or scores.numel() != n or scores.is_complex():
        raise ValueError(f"{name} returned scores of shape {tuple(scores.shape)}; expected ({n},): "
                         f"one score per image")
    scores = scores.detach().to("cpu", torch.float32)
    bad = ~torch.isfinite(scores)
    if bad.any():
        where = bad.nonzero().flatten().tolist()
        raise ValueError(f"{name} returned non-finite scores at positions {where[:8]} "
                         f"(values {scores[bad][:8].tolist()}); every score must be finite")
    return scores


def _as_prompt_list(prompts: Prompts, n: int) -> list[str]:
    if isinstance(prompts, str):
        return [prompts] * n
    prompts = list(prompts)
    if len(prompts) != n:
        raise ValueError(f"got {n} images but {len(prompts)} prompts; pass one prompt per image "
                         f"(or a single string for all)")
    return prompts


class BatchedVerifier:
    """Base of the built-in verifiers: splits the input into batches and validates the scores.

    Subclasses implement `score_batch` for at most `batch_size` images; it runs under
    `torch.no_grad()` with the models in eval mode on `device`/`dtype`.
    """

    name = "verifier"

    def __init__(self, device: torch.device, dtype: torch.dtype, batch_size: int) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.device, self.dtype, self.batch_size = device, dtype, batch_size

    def score_batch(self, images: list[Image.Image], prompts: list[str]) -> torch.Tensor:
        raise NotImplementedError

    def __call__(self, images: Sequence[Image.Image], prompts: Prompts) -> torch.Tensor:
        images = list(images)
        prompts = _as_prompt_list(prompts, len(images))
        chunks = []
        with torch.no_grad():
            for start in range(0, len(images), self.batch_size):
                stop = start + self.batch_size
                scores = self.score_batch(images[start:stop], prompts[start:stop])
                chunks.append(scores.float().cpu())
        scores = torch.cat(chunks) if chunks else torch.zeros(0)
        return check_scores(scores, len(images), self.name)

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(name={self.name!r}, device={str(self.device)!r}, "
                f"dtype={self.dtype}, batch_size={self.batch_size})")


class CallableVerifier:
    """Wraps a user callable so its output is checked like a built-in verifier's."""

    def __init__(self, fn: Callable[..., Any]) -> None:
        self.fn = fn
        self.name = getattr(fn, "name", None) or getattr(fn, "__name__", type(fn).__name__)

    def __call__(self, images: Sequence[Image.Image], prompts: Prompts) -> torch.Tensor:
        images = list(images)
        return check_scores(self.fn(images, _as_prompt_list(prompts, len(images))), len(images),
                            self.name)

    def __repr__(self) -> str:
        return f"CallableVerifier({self.fn!r})"


def resolve_device_dtype(device: str | torch.device | None,
                         dtype: str | torch.dtype | None) -> tuple[torch.device, torch.dtype]:
    """Default to the GPU when present, and float32 (the scores' reference precision)."""
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if isinstance(dtype, str):
        name = {"fp16": "float16", "half": "float16", "bf16": "bfloat16", "fp32": "float32",
                "float": "float32"}.get(dtype, dtype)
        dtype = getattr(torch, name, None)
        if not isinstance(dtype, torch.dtype):
            raise ValueError(f"unknown dtype {name!r}")
    return torch.device(device), dtype or torch.float32
