"""Packaging for lotts (the sampler) and lotts_kernels (its fused kernels).

Pure Python: nothing is imported from torch and nothing is compiled here. The CUDA sources in
``csrc/`` ship as package data and are compiled lazily on first use on a machine with a GPU.
"""
import re
import shutil
from pathlib import Path

from setuptools import find_packages, setup
from setuptools.command.build_py import build_py

HERE = Path(__file__).parent
# Maintenance tools that live in the package tree of a checkout but are not shipped: retraining
# the miniature world (`python -m lotts.world.train`, which the tests also run).
NOT_SHIPPED = {("lotts.world", "train")}


def read_version() -> str:
    text = (HERE / "lotts_kernels" / "_version.py").read_text()
    return re.search(r'__version__ = "([^"]+)"', text).group(1)


class BuildPyWithCudaSources(build_py):
    """Copy the top-level ``csrc/`` into ``lotts_kernels/csrc`` of the built package, and leave
    the maintenance modules of :data:`NOT_SHIPPED` out of it."""

    def find_package_modules(self, package: str, package_dir: str) -> list:
        modules = super().find_package_modules(package, package_dir)
        return [m for m in modules if (m[0], m[1]) not in NOT_SHIPPED]

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
    # torch 2.9+ (CI pins 2.13) and transformers 5 need Python 3.10; mypy checks against 3.10.
    python_requires=">=3.10",
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
        "pillow>=9.1",
        "safetensors",
    ],
    extras_require={
        "test": ["pytest>=7", "pytest-benchmark>=4", "hypothesis>=6"],
        "dev": ["pytest>=7", "pytest-benchmark>=4", "hypothesis>=6", "ruff", "mypy", "ninja"],
    },
    entry_points={"console_scripts": ["lotts = lotts.cli:main"]},
    classifiers=["Programming Language :: Python :: 3", "Programming Language :: Python :: 3.10",
                 "Operating System :: OS Independent"],
)
