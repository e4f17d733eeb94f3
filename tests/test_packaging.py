"""The wheel ships runtime code and data only, and what an installed lotts needs is in it."""
from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel_files(tmp_path_factory) -> set[str]:
    # Built from a copy: an in-tree build/ would leave files behind (and could ship stale ones).
    source = tmp_path_factory.mktemp("source") / "lotts"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(
        ".git", "build", "*.egg-info", "__pycache__", ".mypy_cache", ".pytest_cache", "results"))
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                    "-q", "-w", str(out), str(source)], check=True, capture_output=True)
    (wheel,) = out.glob("lotts-*.whl")
    return set(zipfile.ZipFile(wheel).namelist())


def test_runtime_modules_and_data_are_shipped(wheel_files):
    assert {"lotts/world/assets/world_eval_spec.json", "lotts/world/evaluate.py",
            "lotts/tiny_pipelines.py", "lotts/offline_tokenizers.py",
            "lotts/assets/tiny_t5_unigram.json", "lotts/cli/generate.py",
            "lotts/backbones/registry.py", "lotts/runs/manifest.py"} <= wheel_files


def test_maintenance_tools_and_tests_are_not(wheel_files):
    assert "lotts/world/train.py" not in wheel_files
    assert not [f for f in wheel_files if f.startswith(("tools/", "tests/", "benchmarks/"))]
    assert "lotts/testing.py" not in wheel_files
