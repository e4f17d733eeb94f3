"""lotts_kernels is a distribution of its own (kernels/setup.py) with its own version, built from
the repository's sources; the lotts distribution bundles the same package (see setup.py)."""
from __future__ import annotations

import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import lotts
import lotts_kernels

ROOT = Path(__file__).resolve().parent.parent


def _version(path: Path) -> str:
    return re.search(r'__version__ = "([^"]+)"', path.read_text()).group(1)


def test_versions_are_separate():
    assert lotts_kernels.__version__ == _version(ROOT / "lotts_kernels" / "_version.py")
    assert lotts.__version__ == _version(ROOT / "lotts" / "_version.py")
    assert "lotts/_version.py" in (ROOT / "setup.py").read_text().replace("\" / \"", "/")


def test_lotts_kernels_never_imports_lotts():
    pattern = re.compile(r"^\s*(from|import)\s+lotts(\.|\s|$)", re.M)
    importers = [p.relative_to(ROOT) for p in (ROOT / "lotts_kernels").rglob("*.py")
                 if pattern.search(p.read_text())]
    assert importers == []


def test_standalone_wheel_holds_only_lotts_kernels_and_the_cuda_sources(tmp_path):
    pytest.importorskip("setuptools")
    source = tmp_path / "src"  # a copy: the in-tree build writes build/ and *.egg-info
    for part in ("kernels", "lotts_kernels", "csrc"):
        shutil.copytree(ROOT / part, source / part,
                        ignore=shutil.ignore_patterns("__pycache__", "build", "*.egg-info"))
    done = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         str(source / "kernels"), "-w", str(tmp_path)],
        capture_output=True, text=True, timeout=300, check=False, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    wheels = list(tmp_path.glob("lotts_kernels-*.whl"))
    assert [w.name.split("-")[1] for w in wheels] == [lotts_kernels.__version__]
    names = zipfile.ZipFile(wheels[0]).namelist()
    packages = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert packages == {"lotts_kernels"}
    for needed in ("lotts_kernels/ops/attention.py", "lotts_kernels/dispatch.py",
                   "lotts_kernels/csrc/binding.cpp", "lotts_kernels/csrc/masked_noise_blend.cu"):
        assert needed in names, needed
    metadata = next(n for n in names if n.endswith("METADATA"))
    requires = [line for line in zipfile.ZipFile(wheels[0]).read(metadata).decode().splitlines()
                if line.startswith("Requires-Dist")]
    assert any("torch" in r for r in requires) and not any("diffusers" in r for r in requires)
