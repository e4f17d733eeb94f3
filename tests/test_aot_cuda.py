"""The CUDA extension checked without a GPU: resources and build limits.

(a) Every kernel in csrc/*.cu, compiled by nvcc with the extension's own flags for sm_80 and
    sm_90 with ``-Xptxas -v``, does not spill registers.
(b) The build refuses a GPU its nvcc cannot target (CUDA 13 has no sm_70/sm_72) with the reason,
    instead of failing inside nvcc.
(c) quality_mask's stated row limit agrees with its int loop counters (i + blockDim.x must not
    pass INT32_MAX), in the C header and on the Python side.
"""
from __future__ import annotations

import re

import pytest
import torch

from lotts_kernels import aot, cuda_build
from lotts_kernels.ops import quality_mask

TARGETS = aot.TARGET_CAPABILITIES
CSRC = cuda_build.source_dir()


# ----- (a) resources -------------------------------------------------------------------------

CU_FILES = [p for p in cuda_build.source_files() if p.suffix == ".cu"]


# Kernels allowed to spill (name, target): none. The blend kernels spilled until SMALL became a
# template parameter, 16-bit inputs were widened before the Philox loop and FastDiv64 replaced
# the 64-bit division calls; an entry here must say why it cannot be avoided.
KNOWN_SPILLS: set[tuple[str, int]] = set()


@pytest.mark.skipif(aot.find_nvcc() is None, reason="nvcc not found")
@pytest.mark.parametrize("capability", TARGETS)
@pytest.mark.parametrize("source", CU_FILES, ids=[p.name for p in CU_FILES])
def test_cuda_kernels_do_not_spill(source, capability):
    kernels = aot.compile_cuda_source(source, capability)
    assert kernels, f"no kernel found in {source.name}"
    spilling = {(k.kernel, capability): k.problems() for k in kernels if k.problems()}
    expected = {key for key in KNOWN_SPILLS if key[1] == capability
                and key[0] in {k.kernel for k in kernels}}
    assert set(spilling) == expected, "\n".join(f"{name} sm_{cap}: {problems}"
                                                for (name, cap), problems in spilling.items())


def test_ptxas_log_parsing_reads_every_entry():
    log = """ptxas info    : 0 bytes gmem
ptxas info    : Compiling entry function '_Z3fooPf' for 'sm_80'
ptxas info    : Function properties for _Z3fooPf
    24 bytes stack frame, 32 bytes spill stores, 24 bytes spill loads
ptxas info    : Used 48 registers, used 1 barriers, 1680 bytes smem, 416 bytes cmem[0]
ptxas info    : Compiling entry function '_Z3barv' for 'sm_80'
ptxas info    : Function properties for _Z3barv
    0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
ptxas info    : Used 8 registers, used 0 barriers, 352 bytes cmem[0]
"""
    entries = aot.parse_ptxas(log)
    assert entries == {
        "_Z3fooPf": {"registers": 48, "stack": 24, "spill_stores": 32, "spill_loads": 24,
                     "static_shared": 1680},
        "_Z3barv": {"registers": 8, "stack": 0, "spill_stores": 0, "spill_loads": 0,
                    "static_shared": 0},
    }


# ----- (b) architectures nvcc cannot build -----------------------------------------------------

CUDA13_ARCHITECTURES = ("compute_75", "compute_80", "compute_86", "compute_87", "compute_88",
                        "compute_89", "compute_90", "compute_100", "compute_110", "compute_103",
                        "compute_120", "compute_121")  # nvcc 13.0 --list-gpu-arch


@pytest.fixture
def fake_gpu(monkeypatch, tmp_path):
    """A CUDA torch on a GPU of a chosen capability, building with CUDA 13's nvcc; any real
    compile attempt fails the test."""
    def install(capability):
        monkeypatch.setattr(torch.version, "cuda", "13.0")
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
        monkeypatch.setattr(cuda_build, "_toolchain_reason", lambda: None)
        monkeypatch.setattr(cuda_build, "_nvcc_path", lambda: "/opt/cuda-13/bin/nvcc")
        monkeypatch.setattr(cuda_build, "supported_architectures",
                            lambda nvcc: CUDA13_ARCHITECTURES)
        monkeypatch.setenv("LOTTS_KERNELS_CACHE", str(tmp_path))

        def no_build(*args, **kwargs):
            raise AssertionError(f"tried to build for {capability}")

        monkeypatch.setattr(cuda_build, "_compile", no_build)
        cuda_build.reset()
    yield install
    cuda_build.reset()


def test_build_refuses_volta_with_cuda13(fake_gpu):
    fake_gpu((7, 0))
    reason = cuda_build.unavailable_reason(build=True)
    assert reason is not None and "cannot build for compute capability 7.0" in reason, reason
    assert "compute_75" in reason and "CUDA 12" in reason


def test_build_goes_ahead_for_a_supported_gpu(fake_gpu):
    fake_gpu((8, 0))
    reason = cuda_build.unavailable_reason(build=True)
    assert "tried to build for (8, 0)" in reason, reason  # reached the compile step


@pytest.mark.skipif(aot.find_nvcc() is None, reason="nvcc not found")
def test_the_real_nvcc_lists_its_architectures():
    supported = cuda_build.supported_architectures(aot.find_nvcc())
    assert "compute_80" in supported and "compute_90" in supported
    if "compute_70" not in supported:  # CUDA 13+: Volta refused with the reason
        assert cuda_build._architecture_reason((7, 0), aot.find_nvcc()) is not None
    assert cuda_build._architecture_reason((9, 0), aot.find_nvcc()) is None


# ----- (c) quality_mask's row limit and its loop counters --------------------------------------

def _header_limit() -> int:
    text = (CSRC / "lotts_kernels.h").read_text()
    return int(re.search(r"#define LOTTS_QUALITY_MASK_MAX_N (\d+)", text).group(1))


def _max_threads() -> int:
    text = (CSRC / "quality_mask.cu").read_text()
    return int(re.search(r"constexpr int kMaxThreads = (\d+);", text).group(1))


def test_quality_mask_limit_fits_its_int_counters():
    limit = _header_limit()
    # `for (int i = tid; i < n; i += blockDim.x)`: the last i is n - 1, then i + blockDim.x
    assert limit - 1 + _max_threads() <= 2**31 - 1
    assert quality_mask.MAX_CUDA_N == limit
    source = (CSRC / "quality_mask.cu").read_text()
    assert "__launch_bounds__(kMaxThreads)" in source
    assert "n > LOTTS_QUALITY_MASK_MAX_N" in source


def test_quality_mask_cuda_limits_refuse_longer_rows():
    longest = torch.empty(1, quality_mask.MAX_CUDA_N, device="meta")
    too_long = torch.empty(1, quality_mask.MAX_CUDA_N + 1, device="meta")
    assert quality_mask.quality_mask_cuda_limits(longest, longest, 1.0, 0.5) == []
    reasons = quality_mask.quality_mask_cuda_limits(too_long, too_long, 1.0, 0.5)
    assert reasons and str(quality_mask.MAX_CUDA_N) in reasons[0]


# ----- FastDiv64 (the >= 2^31-element blend path), checked on the host -------------------------

FASTDIV_CHECK = r"""
#include <cstdio>
#include <random>
#include "lotts_common.cuh"
int main() {
  std::mt19937_64 rng(20261201);
  const uint64_t divisors[] = {1, 2, 3, 7, 64, 77, 96, 4096, 65535, 65537, 1000003,
                               (1ull << 31) - 1, (1ull << 31) + 11, (1ull << 40) + 3};
  long failures = 0;
  for (uint64_t d : divisors) {
    const lotts::FastDiv64 fd(d);
    for (int t = 0; t < 200000; ++t) {
      uint64_t n = rng() >> (1 + t % 40);  // n < 2^63, many magnitudes
      if (t < 64) n = (t % 2) ? (1ull << 63) - 1 - t : d * t - (t > 0);
      if (fd.div(n) != n / d) ++failures;
    }
  }
  std::printf("%ld\n", failures);
  return failures != 0;
}
"""


@pytest.mark.skipif(aot.find_nvcc() is None, reason="nvcc not found")
def test_fastdiv64_divides_exactly(tmp_path):
    import subprocess

    source = tmp_path / "fastdiv64.cu"
    source.write_text(FASTDIV_CHECK)
    binary = tmp_path / "fastdiv64"
    subprocess.run([aot.find_nvcc(), "-O2", f"-I{CSRC}", str(source), "-o", str(binary)],
                   check=True, capture_output=True)
    done = subprocess.run([str(binary)], capture_output=True, text=True, check=False)
    assert done.returncode == 0 and done.stdout.strip() == "0", done.stdout + done.stderr
