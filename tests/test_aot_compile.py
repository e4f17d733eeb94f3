"""GPU code checked without a GPU: ahead-of-time compiles for sm_80 and sm_90.

(a) Every Triton kernel, built by its own launcher (:mod:`lotts_kernels.aot` runs the launch
    through Triton's argument specialization) at one shape per backbone, in every dtype, for
    every autotune config the pruning keeps: it compiles with the bundled ptxas, does not spill
    registers and fits the target's shared memory - so the autotuner can only pick clean
    configs. The pruning's shared-memory estimate is never below Triton's allocation.
(b) The pruning refuses what no config can run: fp32 with IEEE dots (spills everywhere) and
    fp32 at head dim 129-256 on sm_90 (272-336 KB of shared memory), with a reason, so dispatch
    falls back to the reference instead of raising OutOfResources on the GPU.
The CUDA sources (nvcc -Xptxas -v) are checked in tests/test_aot_cuda.py.

Compiles are cached (Triton's cache plus our ptxas records next to it): a cold run of this file
costs a few minutes on two cores, a warm one seconds. The full matrix (pruned configs too, wide
heads) is benchmarks/aot_resources.py.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

pytest.importorskip("triton")

from lotts_kernels import aot, dispatch  # noqa: E402
from lotts_kernels.ops import attention  # noqa: E402

TARGETS = aot.TARGET_CAPABILITIES
REPO = Path(__file__).resolve().parent.parent


def _ptxas_available() -> bool:
    try:
        from triton.backends.nvidia.compiler import get_ptxas

        return all(get_ptxas(c).path for c in TARGETS)
    except Exception:  # noqa: BLE001 - no NVIDIA backend in this Triton build
        return False


needs_ptxas = pytest.mark.skipif(not _ptxas_available(), reason="Triton's bundled ptxas missing")


def _label(case: aot.Case, config) -> str:
    return f"{case.kernel} {case.name} {case.dtype} " + (
        attention.config_name(config) if config is not None else "")


@needs_ptxas
@pytest.mark.parametrize("capability", TARGETS)
@pytest.mark.parametrize("dtype_name", aot.DTYPE_NAMES)
def test_kernels_compile_clean_for_every_kept_config(dtype_name, capability):
    import json

    out = aot.run_isolated(["--dtype", dtype_name, "--capability", str(capability)])
    rows = [json.loads(line) for line in out.splitlines() if line.strip()]
    failures = [f"{r['case']} {r['config']} sm_{capability}: {p}"
                for r in rows for p in r["problems"]]
    failures += [f"{r['case']} {r['config']} sm_{capability}: shared-memory estimate "
                 f"{r['estimate']} B < {r['total_shared']} B allocated"
                 for r in rows if r["estimate"] is not None and r["estimate"] < r["total_shared"]]
    assert not failures, "\n".join(failures)
    expected = set() if dtype_name == "fp32" else {"_attention_kernel_body"}  # IEEE: refused
    if dtype_name != "fp32+tf32":  # TF32 changes attention only
        expected |= {"_quality_mask_kernel", "_blend_kernel"}
    assert {r["kernel"] for r in rows} == expected


# The one representative case TF32 cannot run spill-free: FLUX token maps (D=128) on sm_80,
# where every candidate spills (16 B for 128x64 w8 s3 up to 2.3 KB; benchmarks/RESULTS.md).
TF32_REFUSED = {("attention_with_token_maps", "FLUX", 80)}


@pytest.mark.parametrize("capability", TARGETS)
def test_every_kernel_keeps_a_config_in_16_bit_and_tf32(capability):
    for dtype_name in ("fp16", "bf16", "fp32+tf32"):
        for case in aot.representative_cases(dtype_name):
            refused = dtype_name == "fp32+tf32" and \
                (case.kernel, case.name, capability) in TF32_REFUSED
            assert bool(case.configs(capability)) != refused, \
                f"{_label(case, None)} sm_{capability}: kept {len(case.configs(capability))}"


IEEE_EVIDENCE = r"""
import json
from lotts_kernels import aot
case = next(c for c in aot.representative_cases("fp32")
            if c.kernel == "attention_with_token_maps" and c.name == "SD2.1")
smallest = min(case.candidates, key=lambda c: c.kwargs["BLOCK_M"] * c.kwargs["BLOCK_N"])
res = aot.compile_launch(case.launch.with_config(smallest), 90)
print(json.dumps({"precision": case.launch.kwargs["DOT_PRECISION"], "kept": len(case.configs(90)),
                  "spill_stores": res.spill_stores}))
"""


@needs_ptxas
def test_ieee_fp32_spills_even_in_the_smallest_tile(tmp_path):
    """The evidence behind refusing IEEE fp32 (IEEE_SPILLS): the smallest candidate tile at the
    smallest backbone head dim (64) spills."""
    import json
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    done = subprocess.run([sys.executable, "-c", IEEE_EVIDENCE], env=env, capture_output=True,
                          text=True, timeout=1800, check=False)
    assert done.returncode == 0, done.stderr[-4000:]
    found = json.loads(done.stdout.strip().splitlines()[-1])
    assert found["precision"] == "ieee" and found["kept"] == 0, found
    assert found["spill_stores"] > 0, found


# ----- (b) refusals, CPU-side (no compile) ---------------------------------------------------

@pytest.fixture
def fake_h100(monkeypatch):
    """Pretend every tensor lives on an sm_90 GPU with 227 KB of shared memory per block."""
    monkeypatch.setattr(attention, "device_limits",
                        lambda device: (90, aot.SHARED_MEMORY_PER_BLOCK[90]))

    def on_gpu(*shape, dtype):
        tensor = torch.empty(*shape, dtype=dtype, device="meta")
        return _CudaLooking(tensor)
    return on_gpu


class _CudaLooking(torch.Tensor):
    """A meta tensor whose .device says cuda (what the limits read)."""

    @staticmethod
    def __new__(cls, data):
        return torch.Tensor._make_subclass(cls, data)

    @property
    def device(self):
        return torch.device("cuda", 0)


@pytest.fixture
def allow_tf32():
    """Set ``torch.backends.cuda.matmul.allow_tf32`` for one test and restore it. Not through
    monkeypatch: the flag lives in torch's C state behind ``__getattr__``, so pytest >= 9.2 finds
    no attribute to restore and tries to delete it."""
    before = torch.backends.cuda.matmul.allow_tf32

    def set_flag(value: bool) -> None:
        torch.backends.cuda.matmul.allow_tf32 = value
    yield set_flag
    torch.backends.cuda.matmul.allow_tf32 = before


def _token_maps_args(make, head_dim: int, dtype=torch.float32):
    q = make(1, 2, 300, head_dim, dtype=dtype)
    kv = make(1, 2, 77, head_dim, dtype=dtype)
    index = torch.zeros(1, 4, dtype=torch.int64, device="meta")
    return q, kv, kv, index, head_dim ** -0.5


@pytest.mark.parametrize("head_dim", [129, 200, 256])
def test_fp32_wide_heads_are_refused_for_shared_memory_on_sm90(fake_h100, allow_tf32,
                                                               head_dim):
    # Before the fix the pruning kept 64x64 w4 s3 and 128x32 w4 s3 here (~464 and ~336 KB).
    allow_tf32(True)
    args = _token_maps_args(fake_h100, head_dim)
    reasons = attention.attention_with_token_maps_limits(*args)
    assert len(reasons) == 1 and "no autotune config fits sm_90" in reasons[0], reasons
    assert "shared memory" in reasons[0] and "232448 B" in reasons[0]
    kernel_args = {"q_ptr": args[0], "v_ptr": args[2],
                   **attention._constexprs(args[0], head_dim, 4)}
    with pytest.raises(ValueError, match="no autotune config"):
        attention._prune_configs(attention._configs(False), kernel_args)


def test_fp32_ieee_is_refused_with_the_reason(fake_h100, allow_tf32):
    allow_tf32(False)
    reasons = attention.attention_with_token_maps_limits(*_token_maps_args(fake_h100, 64))
    assert reasons == [attention.IEEE_SPILLS]
    q = fake_h100(1, 2, 300, 64, dtype=torch.float32)
    maps = fake_h100(1, 300, 2, dtype=torch.float32)
    assert attention.attention_propagate_limits(q, q, maps, 0.125) == [attention.IEEE_SPILLS]


def test_16_bit_and_tf32_at_backbone_head_dims_are_accepted(fake_h100, allow_tf32):
    allow_tf32(True)
    for dtype in (torch.float16, torch.bfloat16, torch.float32):
        for head_dim in (64, 128):
            args = _token_maps_args(fake_h100, head_dim, dtype)
            assert attention.attention_with_token_maps_limits(*args) == [], (dtype, head_dim)


def test_refused_triton_call_falls_back_to_the_reference(fake_h100, allow_tf32):
    """Automatic dispatch skips Triton with the pruning's reason (explain lists it)."""
    allow_tf32(False)
    implementation = dispatch.registered("attention_with_token_maps")["triton"]
    reasons = implementation.limits(*_token_maps_args(fake_h100, 64))
    assert reasons == [attention.IEEE_SPILLS]


def test_shared_memory_limits_are_the_cuda_guide_numbers():
    # cudaDevAttrMaxSharedMemoryPerBlockOptin: A100 166912 B, H100/H200 232448 B.
    assert aot.SHARED_MEMORY_PER_BLOCK[80] == 166912
    assert aot.SHARED_MEMORY_PER_BLOCK[90] == 232448


def test_explain_names_the_pruning_reason_and_picks_the_reference(fake_h100, allow_tf32):
    import lotts_kernels

    allow_tf32(True)
    q, k, v, _, scale = _token_maps_args(fake_h100, 200)
    index = fake_h100(4, dtype=torch.int64)
    explanation = lotts_kernels.explain("attention_with_token_maps", q, k, v, index, scale)
    assert explanation.chosen == "ref", explanation
    assert any("no autotune config fits sm_90" in r for r in explanation.reasons["triton"])
