"""Shared pytest configuration and fixtures."""
from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import torch

# Triton reads TRITON_INTERPRET when a kernel is decorated (at our backends' import): set it
# before anything imports them, so Triton kernels are testable on CPU-only machines.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

# ----- markers and GPU gating (kernels) -------------------------------------------------------


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "gpu: needs a CUDA device; skipped without one")
    config.addinivalue_line("markers", "slow: slower end-to-end test")


def pytest_collection_modifyitems(config: pytest.Config, items: list) -> None:
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


# ============================================================================================
# BEGIN tiny offline pipelines (lotts.tiny_pipelines) -- fixtures: tiny_pipeline_dir,
# tiny_pipelines, load_tiny_pipeline. Saved once per session per (kind, seed, scheduler), built lazily.
# ============================================================================================


class _LazyPipelineDirs(Mapping):
    """kind -> saved pipeline directory; a kind is built and saved on first access only."""

    def __init__(self, factory: Callable[..., str]) -> None:
        self._factory = factory

    def __getitem__(self, kind: str) -> str:
        from lotts.tiny_pipelines import KINDS

        if kind not in KINDS:
            raise KeyError(kind)
        return self._factory(kind)

    def __iter__(self) -> Iterator[str]:
        from lotts.tiny_pipelines import KINDS

        return iter(KINDS)

    def __len__(self) -> int:
        from lotts.tiny_pipelines import KINDS

        return len(KINDS)


@pytest.fixture(scope="session")
def tiny_pipeline_dir(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., str]:
    """Factory ``(kind, seed=0, scheduler=None) -> str``: directory of a saved tiny pipeline.

    Load it with ``lotts.tiny_pipelines.pipeline_class(kind).from_pretrained(path,
    local_files_only=True)`` (or the ``load_tiny_pipeline`` fixture). Never write into it.
    """
    from lotts.tiny_pipelines import save_tiny_pipeline

    cache: dict = {}

    def get(kind: str, seed: int = 0, scheduler: str | None = None) -> str:
        key = (kind, seed, scheduler)
        if key not in cache:
            name = f"tiny-{kind}-s{seed}-{scheduler or 'default'}".replace("+", "p")
            cache[key] = save_tiny_pipeline(
                kind, tmp_path_factory.mktemp(name), seed=seed, scheduler=scheduler
            )
        return cache[key]

    return get


@pytest.fixture(scope="session")
def tiny_pipelines(tiny_pipeline_dir: Callable[..., str]) -> Mapping[str, str]:
    """Lazy mapping ``{"sd" | "sdxl" | "flux": saved directory}`` of default tiny pipelines."""
    return _LazyPipelineDirs(tiny_pipeline_dir)


@pytest.fixture(scope="session")
def load_tiny_pipeline(tiny_pipeline_dir: Callable[..., str]) -> Callable[..., Any]:
    """Factory ``(kind, seed=0, scheduler=None)`` -> a *fresh* pipeline loaded from disk.

    Fresh on every call, so a test may patch attention processors or schedulers freely.
    """
    from lotts.tiny_pipelines import pipeline_class

    def load(kind: str, seed: int = 0, scheduler: str | None = None) -> Any:
        path = tiny_pipeline_dir(kind, seed=seed, scheduler=scheduler)
        pipe = pipeline_class(kind).from_pretrained(path, local_files_only=True)
        pipe.set_progress_bar_config(disable=True)
        return pipe

    return load


# ============================================================================================
# END tiny offline pipelines
# ============================================================================================
