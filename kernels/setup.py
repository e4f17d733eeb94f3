"""The standalone `lotts-kernels` distribution: only the lotts_kernels package, built from the
repository's own sources (../lotts_kernels and ../csrc), with its own version.

    pip install torch==2.13.0 ./kernels        # from the repository root

The `lotts` distribution (../setup.py) bundles the same package, so the repository's two set-up
commands need nothing beyond PyPI; a frontend that wants only the kernels installs this one.
Install one of the two, not both: they provide the same import package. Pure Python, like the
parent: nothing is imported from torch and nothing is compiled here; the CUDA sources travel as
package data and are compiled lazily on first use on a machine with a GPU.
"""
import re
import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
SOURCE_SUFFIXES = {".cu", ".cuh", ".cpp", ".h"}


def read_version() -> str:
    text = (ROOT / "lotts_kernels" / "_version.py").read_text()
    return re.search(r'__version__ = "([^"]+)"', text).group(1)


class BuildPyWithCudaSources(build_py):
    """Copy ../csrc into lotts_kernels/csrc of the built package (found there by cuda_build)."""

    def run(self) -> None:
        super().run()
        target = Path(self.build_lib) / "lotts_kernels" / "csrc"
        target.mkdir(parents=True, exist_ok=True)
        for source in (ROOT / "csrc").iterdir():
            if source.suffix in SOURCE_SUFFIXES:
                shutil.copy2(source, target / source.name)


setup(
    name="lotts-kernels",
    version=read_version(),
    description="Fused Triton/CUDA kernels for localized test-time scaling (LoTTS) of "
                "diffusion models: attention maps of chosen tokens, map propagation, quality "
                "masks and masked noise blending, each with a PyTorch reference",
    long_description=(HERE / "README.md").read_text(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.9",
    packages=["lotts_kernels", "lotts_kernels.ops"],
    package_dir={"lotts_kernels": "../lotts_kernels", "lotts_kernels.ops": "../lotts_kernels/ops"},
    cmdclass={"build_py": BuildPyWithCudaSources},
    install_requires=[
        "torch>=2.4",
        "numpy",  # `import triton` needs it (Triton 3.9 does not declare it)
        "triton>=3.0; platform_system == 'Linux' and platform_machine == 'x86_64'",
    ],
    classifiers=["Programming Language :: Python :: 3", "Operating System :: OS Independent"],
)
