"""The CUDA extension: sources compile without a GPU; clear refusals; GPU tests behind a marker.

(a) every csrc/*.cu compiles with nvcc for sm_90a (with the flags torch's cpp_extension adds);
(b) csrc/binding.cpp passes a host-compiler syntax check against torch's headers;
(c) without a GPU the extension explains why it is unavailable and explicit requests raise;
(d) on a GPU (marker `gpu`): build it, compare both ops with the reference in fp32/fp16/bf16,
    philox noise with philox.normal, and the vector path with misaligned / odd-sized tensors.
Compilations run concurrently in a module fixture to keep this file fast on small CPUs.
"""
from __future__ import annotations

import inspect
import os
import shutil
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

import pytest
import torch

import lotts_kernels
from lotts_kernels import KernelUnavailableError, philox, use_impl
from lotts_kernels import cuda_build
from lotts_kernels.ops import masked_noise_blend as blend_op
from lotts_kernels.ops import quality_mask as quality_mask_op
from tests.helpers import assert_accurate, assert_close, blend_exact_and_low, seeded

REPO = Path(__file__).resolve().parent.parent
CSRC = REPO / "csrc"
CU_FILES = sorted(CSRC.glob("*.cu"))
# What torch.utils.cpp_extension adds to nvcc commands (half/bf16 operators disabled, etc.).
TORCH_NVCC_FLAGS = [
    "-D__CUDA_NO_HALF_OPERATORS__", "-D__CUDA_NO_HALF_CONVERSIONS__",
    "-D__CUDA_NO_BFLOAT16_CONVERSIONS__", "-D__CUDA_NO_HALF2_OPERATORS__",
    "--expt-relaxed-constexpr", "-Xcompiler", "-fPIC",
]


def _nvcc() -> str | None:
    found = shutil.which("nvcc")
    if found:
        return found
    for home in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"):
        if home and (Path(home) / "bin" / "nvcc").exists():
            return str(Path(home) / "bin" / "nvcc")
    return None


def _cxx_standard() -> str:
    """The C++ standard torch's own extension builds use (C++20 from torch 2.10 or so)."""
    from torch.utils import cpp_extension

    return "c++20" if "-std=c++20" in inspect.getsource(cpp_extension) else "c++17"


@pytest.fixture(scope="module")
def compiles(tmp_path_factory):
    """Start every compile at once; tests wait for their own result."""
    out = tmp_path_factory.mktemp("csrc_build")
    jobs: dict[str, subprocess.Popen | None] = {}
    nvcc = _nvcc()
    for cu in CU_FILES:
        if nvcc is None:
            jobs[cu.name] = None
            continue
        cmd = [nvcc, "-std=c++17", "-O3", "-gencode=arch=compute_90a,code=sm_90a",
               *TORCH_NVCC_FLAGS, "-I", str(CSRC), "-c", str(cu), "-o", str(out / f"{cu.stem}.o")]
        jobs[cu.name] = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                         text=True)
    gxx = shutil.which("g++")
    if gxx is not None:
        from torch.utils import cpp_extension

        includes = cpp_extension.include_paths() + [sysconfig.get_paths()["include"], str(CSRC)]
        cmd = [gxx, "-fsyntax-only", f"-std={_cxx_standard()}", "-Wno-c++20-extensions",
               "-DTORCH_EXTENSION_NAME=lotts_kernels_syntax_check",
               "-DTORCH_API_INCLUDE_EXTENSION_H",
               f"-D_GLIBCXX_USE_CXX11_ABI={int(torch._C._GLIBCXX_USE_CXX11_ABI)}",
               *[f"-I{p}" for p in includes], str(CSRC / "binding.cpp")]
        jobs["binding.cpp"] = subprocess.Popen(cmd, stdout=subprocess.PIPE,
                                               stderr=subprocess.STDOUT, text=True)
    else:
        jobs["binding.cpp"] = None
    results: dict[str, tuple[int, str] | None] = {}

    def result(name: str):
        if name not in results:
            job = jobs[name]
            results[name] = None if job is None else (job.wait(timeout=600), job.stdout.read())
        return results[name]

    yield result
    for job in jobs.values():
        if job is not None and job.poll() is None:
            job.kill()


# ----- (a), (b): compiling without a GPU -----------------------------------------------------

def test_csrc_layout():
    names = {p.name for p in CSRC.iterdir()}
    assert {"binding.cpp", "lotts_kernels.h", "lotts_common.cuh", "quality_mask.cu",
            "masked_noise_blend.cu"} <= names
    # Kernels include only the CUDA toolkit; the binding only torch/extension.h (+ our C header)
    for path in CSRC.iterdir():
        text = path.read_text()
        includes = [line.split()[1] for line in text.splitlines()
                    if line.startswith("#include")]
        if path.suffix in (".cu", ".cuh"):
            assert not any("torch" in i or "ATen" in i or "c10" in i for i in includes), path
        if path.name == "binding.cpp":
            assert includes == ["<torch/extension.h>", '"lotts_kernels.h"'], includes
        if path.name == "lotts_kernels.h":
            assert includes == ["<stdint.h>"], includes


@pytest.mark.parametrize("cu", [p.name for p in CU_FILES])
def test_cuda_sources_compile_for_sm90a(compiles, cu):
    outcome = compiles(cu)
    if outcome is None:
        pytest.skip("nvcc not found")
    status, log = outcome
    assert status == 0, f"nvcc failed on {cu}:\n{log[-4000:]}"


def test_binding_passes_host_syntax_check(compiles):
    outcome = compiles("binding.cpp")
    if outcome is None:
        pytest.skip("g++ not found")
    status, log = outcome
    if status != 0 and ("cuda_runtime" in log or "cuda.h" in log):
        pytest.skip(f"torch headers here want CUDA headers: {log[-500:]}")
    assert status == 0, f"binding.cpp syntax check failed:\n{log[-4000:]}"


# ----- (c) refusals and build plumbing (no GPU needed) -----------------------------------------

@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU message")
def test_unavailable_reason_without_gpu():
    reason = cuda_build.unavailable_reason()
    assert isinstance(reason, str) and "CUDA" in reason
    assert cuda_build.unavailable_reason(build=True) == reason  # no build attempted


def test_explicit_cuda_request_on_cpu_tensors_raises(monkeypatch):
    monkeypatch.setenv("LOTTS_KERNELS_IMPL", "cuda")
    diff = torch.randn(2, 9)
    with pytest.raises(KernelUnavailableError, match="cuda.*CUDA"):
        lotts_kernels.quality_mask(diff, diff.flip(1), lam=1.0, ratio=0.5)
    x0 = torch.randn(2, 3, 4, 4)
    with pytest.raises(KernelUnavailableError, match="CUDA"):
        lotts_kernels.masked_noise_blend(x0, x0, torch.ones(2, 1, 2, 2, dtype=torch.bool),
                                         1.0, 0.0)


def test_auto_dispatch_never_builds(monkeypatch):
    def forbidden(*args, **kwargs):
        raise AssertionError("automatic dispatch must not compile")

    monkeypatch.setattr(cuda_build, "_compile", forbidden)
    monkeypatch.delenv("LOTTS_KERNELS_IMPL", raising=False)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    x0 = torch.randn(2, 3, 4, 4, device=device)
    mask = torch.ones(2, 1, 2, 2, dtype=torch.bool, device=device)
    out = lotts_kernels.masked_noise_blend(x0, x0, mask, 1.0, 0.0)
    assert torch.equal(out, x0)


def test_sources_found_and_cache_key():
    assert cuda_build.source_dir() == CSRC
    names = {p.name for p in cuda_build.source_files()}
    assert {"binding.cpp", "quality_mask.cu", "masked_noise_blend.cu"} <= names
    key = cuda_build.build_key((9, 0))
    assert len(key) == 16 and key == cuda_build.build_key((9, 0))
    assert key != cuda_build.build_key((8, 0))
    assert cuda_build.module_name(key).endswith(key)


def test_cache_dir_honours_env(monkeypatch, tmp_path):
    monkeypatch.setenv("LOTTS_KERNELS_CACHE", str(tmp_path))
    directory = cuda_build.build_dir((9, 0))
    assert directory.parent.parent == tmp_path


def test_arch_flags():
    hopper = cuda_build.arch_flags((9, 0))
    assert "-gencode=arch=compute_90a,code=sm_90a" in hopper
    assert any("code=compute_90" in f for f in hopper)  # PTX for forward compatibility
    ampere = cuda_build.arch_flags((8, 6))
    assert ampere == ["-gencode=arch=compute_86,code=sm_86",
                      "-gencode=arch=compute_86,code=compute_86"]
    assert not any("fast_math" in f for f in cuda_build.EXTRA_CUDA_CFLAGS)


def test_stale_lock_is_removed(tmp_path):
    lock = tmp_path / "lock"
    lock.write_text("")
    cuda_build._remove_stale_lock(tmp_path)
    assert lock.exists()  # fresh: another process may be building
    old = time.time() - cuda_build.STALE_LOCK_SECONDS - 60
    os.utime(lock, (old, old))
    cuda_build._remove_stale_lock(tmp_path)
    assert not lock.exists()


def test_build_failures_are_cached(monkeypatch):
    monkeypatch.setattr(cuda_build, "_failure", "building the CUDA extension failed: boom")
    monkeypatch.setattr(cuda_build, "_module", None)
    assert "boom" in cuda_build.unavailable_reason(build=True)
    with pytest.raises(RuntimeError, match="boom"):
        cuda_build.build()


def test_main_reports_reason_without_gpu():
    if torch.cuda.is_available():
        pytest.skip("would build on a GPU machine")
    done = subprocess.run([sys.executable, "-m", "lotts_kernels.cuda_build"],
                          capture_output=True, text=True, timeout=120, cwd=REPO,
                          env={**os.environ, "PYTHONPATH": str(REPO)}, check=False)
    assert done.returncode == 1 and "CUDA" in done.stderr


def test_limits():
    x0 = torch.empty(2, 3, 4, 5, 6)
    mask = torch.ones(2, 1, 4, 1, 6, dtype=torch.bool)
    assert "4 index dims" in blend_op.masked_noise_blend_limits(
        x0, x0, mask, None, 1.0, None, 0.0, None, None, None, False)[0]
    assert quality_mask_op.quality_mask_cuda_limits(torch.empty(2, 10), None, 1.0, 0.5) == []


# ----- (d) on a GPU ---------------------------------------------------------------------------

GPU_DTYPES = [torch.float32, torch.float16, torch.bfloat16]


@pytest.fixture(scope="module")
def ext():
    return cuda_build.build()


def _gpu_rows(kind, batch, n, dtype, seed):
    gen = seeded(seed)
    if kind == "ties":
        diff = torch.randint(0, 4, (batch, n), generator=gen).float()
        orig = torch.randint(0, 3, (batch, n), generator=gen).float()
    else:
        diff, orig = torch.randn(batch, n, generator=gen), torch.randn(batch, n, generator=gen)
    return diff.to("cuda", dtype), orig.to("cuda", dtype)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", GPU_DTYPES)
@pytest.mark.parametrize("n", [1, 7, 37, 1000, 16384, 70001, 100000])
@pytest.mark.parametrize("kind", ["randn", "ties"])
def test_gpu_quality_mask(ext, dtype, n, kind):
    diff, orig = _gpu_rows(kind, 3, n, dtype, seed=n)
    for ratio, lam in ((0.0, 1.0), (1.0, 0.0), (0.5, 2.0), (0.33, -0.5)):
        with use_impl("cuda"):
            heat, mask = lotts_kernels.quality_mask(diff, orig, lam=lam, ratio=ratio)
        heat_ref, mask_ref = quality_mask_op.quality_mask_ref(diff, orig, lam, ratio)
        assert torch.equal(heat, heat_ref), "heat must match the reference bit for bit"
        assert bool((mask.sum(1) == quality_mask_op.num_selected(ratio, n)).all())
        assert torch.equal(mask, mask_ref)


@pytest.mark.gpu
def test_gpu_quality_mask_constant_rows(ext):
    diff = torch.full((2, 513), 3.0, device="cuda")
    heat, mask = quality_mask_op.quality_mask_cuda(diff, diff.clone(), 2.0, 0.5)
    assert torch.equal(heat, torch.zeros_like(heat))
    assert mask[:, :256].all() and not mask[:, 256:].any()  # round(256.5) = 256, lowest indices


@pytest.mark.gpu
@pytest.mark.parametrize("seed", [0, 1, 2**32 + 5, 2**63 - 1])
def test_gpu_philox_matches_reference(ext, seed):
    eps = blend_op.philox_normal_cuda_eps(seed, 3 * 1000 * 37, "cuda")
    expected = philox.normal(seed, (3 * 1000 * 37,), device="cuda")
    assert_close(eps, expected, atol=1e-5, rtol=1e-5, what="philox eps")


def _gpu_blend_case(dtype, shape, mask, alpha, sigma, noise=None, seed=None, invert=False,
                    x0=None, other=None):
    gen = seeded(sum(shape))
    if x0 is None:
        x0 = torch.randn(shape, generator=gen).to("cuda", dtype)
    if other is None:
        other = torch.randn(shape, generator=gen).to("cuda", dtype)
    with use_impl("cuda"):
        out = lotts_kernels.masked_noise_blend(x0, other, mask, alpha, sigma, noise=noise,
                                               seed=seed, invert=invert)
    with use_impl("ref"):
        expected = lotts_kernels.masked_noise_blend(x0, other, mask, alpha, sigma, noise=noise,
                                                    seed=seed, invert=invert)
    assert out.dtype == x0.dtype
    if seed is None:  # same float32 operations as eager PyTorch: identical bits
        assert torch.equal(out, expected)
    assert_accurate(out, *blend_exact_and_low(x0, other, mask, alpha, sigma, noise, seed, invert),
                    what="blend")
    m = blend_op.expand_mask(mask, x0.shape).float()
    zero = (1.0 - m if invert else m) == 0
    assert torch.equal(out[zero], other[zero].to(out.dtype))


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", GPU_DTYPES)
def test_gpu_blend(ext, dtype):
    b = 2
    alpha = torch.tensor([0.9, 0.6], device="cuda")
    sigma = torch.tensor([0.2, 0.4], device="cuda")
    for mask_hw, shape in (((64, 64), (b, 4, 64, 64)), ((32, 32), (b, 4, 64, 64)),
                           ((3, 5), (b, 4, 9, 10)), ((21, 13), (b, 16, 63, 39))):
        mask = torch.rand(b, 1, *mask_hw, device="cuda") > 0.5
        noise = torch.randn(shape, device="cuda").to(dtype)
        _gpu_blend_case(dtype, shape, mask, alpha, sigma, noise=noise)
        _gpu_blend_case(dtype, shape, mask, 0.7, 0.3, seed=1234)
        _gpu_blend_case(dtype, shape, mask[:1], 1.0, 0.0, invert=True)
    soft = torch.rand(b, 4096, 1, device="cuda")
    soft[:, :100] = 0
    _gpu_blend_case(dtype, (b, 4096, 64), soft, 0.8, 0.5, seed=7)
    _gpu_blend_case(dtype, (b, 4096, 64), soft.half(), alpha, 0.0)
    _gpu_blend_case(dtype, (b, 4, 8, 8), torch.ones((), dtype=torch.bool, device="cuda"), 1.0,
                    0.0)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", GPU_DTYPES)
@pytest.mark.parametrize("numel", [1, 7, 4099, 65537])
def test_gpu_blend_misaligned_and_odd(ext, dtype, numel):
    """Storage offsets of one element (not 16-byte aligned) and sizes with a scalar tail."""
    big_x = torch.randn(numel + 1, device="cuda").to(dtype)
    big_o = torch.randn(numel + 1, device="cuda").to(dtype)
    x0, other = big_x[1:].view(1, numel), big_o[1:].view(1, numel)
    mask = torch.rand(1, numel, device="cuda") > 0.3
    _gpu_blend_case(dtype, (1, numel), mask, 0.5, 0.25, noise=torch.randn_like(x0), x0=x0,
                    other=other)
    aligned_x = torch.randn(1, numel, device="cuda").to(dtype)  # aligned, odd tail
    _gpu_blend_case(dtype, (1, numel), mask, 0.5, 0.25, seed=99, x0=aligned_x,
                    other=torch.randn_like(aligned_x))


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", GPU_DTYPES)
def test_gpu_blend_batched_seeds_equal_per_row_calls(ext, dtype):
    shape = (3, 4, 33, 17)
    x0 = torch.randn(shape, generator=seeded(5)).to("cuda", dtype)
    other = torch.randn(shape, generator=seeded(6)).to("cuda", dtype)
    mask = torch.rand(3, 1, 11, 17, device="cuda") > 0.4
    seeds = torch.tensor([9, 2**35 + 1, 2**63 - 1])
    with use_impl("cuda"):
        batched = lotts_kernels.masked_noise_blend(x0, other, mask, 0.6, 0.8, seed=seeds)
        rows = torch.cat([lotts_kernels.masked_noise_blend(
            x0[b:b + 1], other[b:b + 1], mask[b:b + 1], 0.6, 0.8, seed=int(seeds[b]))
            for b in range(3)])
        on_device = lotts_kernels.masked_noise_blend(x0, other, mask, 0.6, 0.8,
                                                     seed=seeds.cuda())
    assert torch.equal(batched, rows) and torch.equal(batched, on_device)
    assert_accurate(batched, *blend_exact_and_low(x0, other, mask, 0.6, 0.8, seed=seeds),
                    what="blend")
