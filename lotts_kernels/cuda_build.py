"""The CUDA C++ extension (csrc/): lazy build with torch.utils.cpp_extension.load, and the
"cuda" backend's declared capabilities.

Nothing is compiled at import. :func:`unavailable_reason` (asked by the dispatcher through
:data:`CUDA`) says why the extension cannot be used: automatic dispatch (``build=False``) only
*loads* an extension already built into the cache directory, so it never starts a surprise
compile; an explicit request (``impl="cuda"``, ``LOTTS_KERNELS_IMPL=cuda``, ``use_impl("cuda")``,
:func:`build`, or ``python -m lotts_kernels.cuda_build``) compiles it once (about a minute) with
nvcc and ninja. Failures are remembered for the process, so they are not retried every call.
The per-op launchers that call the extension live with their op (``lotts_kernels/ops/``).

The cache directory is ``$LOTTS_KERNELS_CACHE`` or ``~/.cache/lotts_kernels`` (honouring
``XDG_CACHE_HOME``), then ``cuda_ext/<key>`` where key hashes the sources' bytes, the build
flags, torch's version and CUDA version and the GPU architecture: a changed source or a new torch
gets a fresh directory, never a stale binary.

Build flags: ``-O3`` without ``--use_fast_math``. Fast math would make ``/`` approximate (the
heat must equal the reference's IEEE division), swap logf/cosf for approximate intrinsics
(Box-Muller noise would drift from philox.normal), and flush denormals to zero (breaking
"out == other bit-for-bit where the mask is 0"); these kernels are memory- or latency-bound, so
it would buy nothing. (The exact float ops use *_rn intrinsics, which never contract into FMAs,
but logf/cosf and denormal handling follow the flags, so the flags live here, tested.)
"""
from __future__ import annotations

import functools
import hashlib
import importlib.util
import os
import shutil
import sys
import threading
import time
from pathlib import Path
from typing import Any, Optional

import torch

from lotts_kernels import dispatch

SOURCE_SUFFIXES = (".cu", ".cuh", ".cpp", ".h")
STALE_LOCK_SECONDS = 600
# The C++ standard is left to torch.utils.cpp_extension (C++17 or C++20 by torch version).
EXTRA_CFLAGS = ["-O3"]
EXTRA_CUDA_CFLAGS = ["-O3", "-lineinfo"]

_lock = threading.Lock()
_module: Any = None
_failure: Optional[str] = None  # cached reason of a failed build or load


# ----- locating sources and the cache ---------------------------------------------------------

def source_dir() -> Path:
    """``lotts_kernels/csrc`` inside an installed wheel, else the repository's ``csrc/``."""
    package = Path(__file__).resolve().parent
    for candidate in (package / "csrc", package.parent / "csrc"):
        if (candidate / "binding.cpp").is_file():
            return candidate
    raise FileNotFoundError(
        f"CUDA sources not found in {package / 'csrc'} or {package.parent / 'csrc'}"
    )


def source_files() -> list[Path]:
    return sorted(p for p in source_dir().iterdir() if p.suffix in SOURCE_SUFFIXES)


def arch_flags(capability: tuple[int, int]) -> list[str]:
    """sm_90a SASS on Hopper (plus PTX), else SASS + PTX for the device's own architecture."""
    major, minor = capability
    if (major, minor) == (9, 0):
        return ["-gencode=arch=compute_90a,code=sm_90a", "-gencode=arch=compute_90,code=compute_90"]
    arch = f"{major}{minor}"
    return [f"-gencode=arch=compute_{arch},code=sm_{arch}",
            f"-gencode=arch=compute_{arch},code=compute_{arch}"]


def cache_root() -> Path:
    root = os.environ.get("LOTTS_KERNELS_CACHE")
    if root:
        return Path(root)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "lotts_kernels"


@functools.cache
def build_key(capability: tuple[int, int]) -> str:
    """Hash of the sources' bytes, flags, torch/CUDA/Python versions and the architecture
    (computed once per process and architecture)."""
    digest = hashlib.sha256()
    for path in source_files():
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    for part in (torch.__version__, str(torch.version.cuda), repr(capability),
                 repr(EXTRA_CFLAGS), repr(EXTRA_CUDA_CFLAGS), repr(arch_flags(capability)),
                 sys.version.split()[0]):
        digest.update(part.encode())
    return digest.hexdigest()[:16]


def module_name(key: str) -> str:
    return f"lotts_kernels_cuda_{key}"


def build_dir(capability: tuple[int, int]) -> Path:
    return cache_root() / "cuda_ext" / build_key(capability)


def _built_library(directory: Path, name: str) -> Optional[Path]:
    for suffix in (".so", ".pyd"):
        path = directory / f"{name}{suffix}"
        if path.is_file():
            return path
    return None


# ----- availability ---------------------------------------------------------------------------

def _device_reason() -> Optional[str]:
    if torch.version.cuda is None:
        return ("this torch build has no CUDA support (torch.version.cuda is None); install a "
                "CUDA build of torch to use the CUDA extension")
    if not torch.cuda.is_available():
        return "no CUDA device (torch.cuda.is_available() is False)"
    major, _ = torch.cuda.get_device_capability()
    if major < 7:
        return f"needs compute capability >= 7.0 (warp match/ballot intrinsics), got {major}.x"
    return None


def _nvcc_path() -> Optional[str]:
    """The nvcc torch.utils.cpp_extension builds with ($CUDA_HOME/bin/nvcc), if it exists."""
    from torch.utils import cpp_extension

    cuda_home = cpp_extension.CUDA_HOME
    if cuda_home is None:
        return None
    candidate = Path(cuda_home) / "bin" / "nvcc"
    return str(candidate) if candidate.exists() else None


@functools.cache
def supported_architectures(nvcc: str) -> tuple[str, ...]:
    """The virtual architectures (compute_XY) this nvcc can build, from ``--list-gpu-arch``;
    empty if it cannot say (nvcc before CUDA 11)."""
    import subprocess

    try:
        listed = subprocess.run([nvcc, "--list-gpu-arch"], capture_output=True, text=True,
                                timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return ()
    return tuple(word for word in listed.stdout.split() if word.startswith("compute_"))


def _architecture_reason(capability: tuple[int, int], nvcc: str) -> Optional[str]:
    """Why `nvcc` cannot build for this GPU (CUDA 13 dropped Volta, sm_70/sm_72), or None."""
    supported = supported_architectures(nvcc)
    wanted = f"compute_{capability[0]}{capability[1]}"
    if not supported or wanted in supported:
        return None
    return (f"{nvcc} cannot build for compute capability {capability[0]}.{capability[1]} "
            f"(it supports {', '.join(supported)}; CUDA 13 dropped sm_70/sm_72): build with a "
            "CUDA 12 toolkit (CUDA_HOME) or use the Triton or reference implementation")


def _toolchain_reason() -> Optional[str]:
    from torch.utils import cpp_extension

    nvcc = _nvcc_path()
    if nvcc is None:
        return ("nvcc not found: install the CUDA toolkit and set CUDA_HOME (e.g. "
                "CUDA_HOME=/usr/local/cuda) to build the CUDA extension")
    try:
        cpp_extension.verify_ninja_availability()
    except RuntimeError:
        return "ninja is required to build the CUDA extension: pip install ninja"
    if shutil.which(os.environ.get("CXX", "c++")) is None and shutil.which("g++") is None:
        return "no host C++ compiler (c++/g++) found to build the CUDA extension"
    return None


def _import_library(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load the extension library {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _remove_stale_lock(directory: Path) -> None:
    lock = directory / "lock"
    try:
        if lock.exists() and time.time() - lock.stat().st_mtime > STALE_LOCK_SECONDS:
            lock.unlink()
    except OSError:
        pass


def _first_lines(text: str, count: int = 12) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    errors = [line for line in lines if "error" in line.lower()]
    chosen = (errors or lines)[:count]
    return "\n".join(chosen)


def _compile(capability: tuple[int, int], verbose: bool = False):
    from torch.utils import cpp_extension

    directory = build_dir(capability)
    directory.mkdir(parents=True, exist_ok=True)
    _remove_stale_lock(directory)
    sources = [str(p) for p in source_files() if p.suffix in (".cu", ".cpp")]
    return cpp_extension.load(
        name=module_name(build_key(capability)),
        sources=sources,
        extra_cflags=list(EXTRA_CFLAGS),
        extra_cuda_cflags=list(EXTRA_CUDA_CFLAGS) + arch_flags(capability),
        extra_include_paths=[str(source_dir())],
        build_directory=str(directory),
        with_cuda=True,
        verbose=verbose,
    )


def _load(build: bool, verbose: bool = False) -> Optional[str]:
    """Load (or, with `build`, compile and load) the extension; the reason if it cannot be."""
    global _module, _failure
    with _lock:
        if _module is not None:
            return None
        if _failure is not None:
            return _failure
        reason = _device_reason()
        if reason is not None:
            return reason  # not cached: cheap, and a device may appear (CUDA_VISIBLE_DEVICES)
        capability = torch.cuda.get_device_capability()
        try:
            directory = build_dir(capability)
            name = module_name(build_key(capability))
        except OSError as error:
            _failure = f"cannot read the CUDA sources: {error}"
            return _failure
        library = _built_library(directory, name)
        if library is not None:
            try:
                _module = _import_library(name, library)
                dispatch.clear_cache()
                return None
            except Exception as error:  # noqa: BLE001 - a broken .so: rebuild when asked
                if not build:
                    _failure = (f"the built CUDA extension at {library} failed to load "
                                f"({type(error).__name__}: {error}); rebuild it with "
                                "python -m lotts_kernels.cuda_build")
                    return _failure
        if not build:
            return ("the CUDA extension is not built yet; build it once with "
                    "`python -m lotts_kernels.cuda_build` or request it with "
                    f"LOTTS_KERNELS_IMPL=cuda (compiles into {directory})")
        reason = _toolchain_reason() or _architecture_reason(capability, _nvcc_path())
        if reason is not None:
            _failure = reason
            return reason
        try:
            _module = _compile(capability, verbose=verbose)
            dispatch.clear_cache()
        except Exception as error:  # noqa: BLE001 - report, remember, fall back
            _failure = f"building the CUDA extension failed:\n{_first_lines(str(error))}"
            return _failure
        return None


def unavailable_reason(build: bool = False) -> Optional[str]:
    """Why the CUDA extension cannot be used now, or None when it is loaded.

    With ``build=True`` a missing extension is compiled (once per process); with False only an
    extension already built into the cache directory is loaded.
    """
    return _load(build)


def build(verbose: bool = False):
    """Compile (if needed) and load the extension; return the module or raise RuntimeError."""
    reason = _load(True, verbose=verbose)
    if reason is not None:
        raise RuntimeError(reason)
    return _module


def reset() -> None:
    """Forget a cached failure (and the loaded module reference), e.g. after installing nvcc."""
    global _module, _failure
    with _lock:
        _module = None
        _failure = None
    dispatch.clear_cache()


def extension():
    """The loaded extension module, building it first if needed (raises RuntimeError)."""
    if _module is None:
        build()
    return _module


def stream(device: torch.device) -> int:
    """The current CUDA stream of `device` as the integer the binding takes."""
    return torch.cuda.current_stream(device).cuda_stream


def _availability(device: torch.device, dtypes: tuple, explicit: bool) -> list[str]:
    if device.type != "cuda":
        return []
    reason = unavailable_reason(build=explicit)
    return [] if reason is None else [reason]


CUDA = dispatch.Backend("cuda", devices=("cuda",), availability=_availability)


def main(argv: Optional[list[str]] = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m lotts_kernels.cuda_build",
        description="Build (once) and load the lotts_kernels CUDA extension.")
    parser.add_argument("--verbose", action="store_true", help="show the compiler commands")
    args = parser.parse_args(argv)
    started = time.time()
    try:
        module = build(verbose=args.verbose)
    except RuntimeError as error:
        print(f"CUDA extension unavailable: {error}", file=sys.stderr)
        return 1
    print(f"CUDA extension ready in {time.time() - started:.1f} s: {module.__file__}")
    print(f"build directory: {build_dir(torch.cuda.get_device_capability())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
