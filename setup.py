"""Packaging for lotts (the sampler), which bundles lotts_kernels (its fused kernels).

lotts depends on lotts_kernels by shipping it in the same wheel, so ``pip install -e .`` needs
nothing that is not on PyPI. lotts_kernels is also a distribution of its own, with its own
version (lotts_kernels/_version.py), for other frontends: ``pip install ./kernels`` builds it
from the same sources (kernels/setup.py). Install one of the two, not both.

Pure Python: nothing is imported from torch and nothing is compiled here. The CUDA sources in
``csrc/`` ship as package data and are compiled lazily on first use on a machine with a GPU.
"""
import re
import shutil
from pathlib import Path

from setuptools import find_packages, setup
from setuptools.command.build_py import build_py

HERE = Path(__file__).parent


def read_version() -> str:
    text = (HERE / "lotts" / "_version.py").read_text()
    return re.search(r'__version__ = "([^"]+)"', text).group(1)


class BuildPyWithCudaSources(build_py):
    """Copy the top-level ``csrc/`` into ``lotts_kernels/csrc`` of the built package."""

    def run(self) -> None:
        super().run()
        target = Path(self.build_lib) / "lotts_kernels" / "csrc"
        target.mkdir(parents=True, exist_ok=True)
        for source in (HERE / "csrc").iterdir():
            if source.suffix in {".cu", ".cuh", ".cpp", ".h"}:
                shutil.copy2(source, target / source.name)


setup(
    name="lotts",
    version=read_version(),
    description="Localized test-time scaling (LoTTS) for diffusers pipelines, with fused kernels",
    long_description=(HERE / "README.md").read_text(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.9",
    packages=find_packages(include=["lotts", "lotts.*", "lotts_kernels", "lotts_kernels.*"]),
    # The CUDA sources travel inside the wheel (see BuildPyWithCudaSources) so the lazy build
    # finds them after a non-editable install too.
    package_data={"lotts": ["assets/*", "world/assets/*", "world/assets/*/*",
                           "world/assets/*/*/*"]},
    cmdclass={"build_py": BuildPyWithCudaSources},
    install_requires=[
        "torch>=2.4",
        "triton>=3.0; platform_system == 'Linux' and platform_machine == 'x86_64'",
        "diffusers>=0.30",
        "transformers>=4.40",
        "accelerate>=0.30",
        "numpy",
        "pillow",
        "safetensors",
    ],
    extras_require={
        "test": ["pytest>=7", "pytest-benchmark>=4", "hypothesis>=6"],
        "dev": ["pytest>=7", "pytest-benchmark>=4", "hypothesis>=6", "ruff", "ninja"],
    },
    entry_points={"console_scripts": ["lotts = lotts.cli:main"]},
    classifiers=["Programming Language :: Python :: 3", "Operating System :: OS Independent"],
)
