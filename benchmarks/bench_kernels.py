"""Benchmarks of the four LoTTS ops against their baselines: each case verifies, then times.

    PYTHONPATH=. pytest benchmarks/bench_kernels.py --benchmark-json b.json -rs
    python benchmarks/summary.py b.json

Shapes (one table, PRESETS): SD2.1 at 512 px, SDXL and FLUX at 1024 px. Attention batch B=3 (the
three localization prompts), op 3 B=9 (candidates), op 4 B=6 (3 seeds x 2 refinements). On a
GPU the full shapes; on CPU (no CUDA, or LOTTS_BENCH_SCALE=cpu) attention is reduced to 1024
image tokens, 2 heads and at most 128 text tokens, and op 4 to B=2. Baselines: op 1 SDPA alone
and the materializing path; op 2 SDPA with a D-wide v and the materialized head-mean matrix;
ops 3 and 4 the eager reference and torch.compile of it (op 4 also a device-to-device copy of
the bytes it moves).
Environment: LOTTS_BENCH_BUDGET seconds of timing per case (0.25); LOTTS_BENCH_COMPILE_SEED=1
also compiles the Philox reference (inductor needs minutes for it); LOTTS_BENCH_THREADS CPU
threads (1: steadier on a shared machine); LOTTS_COMMIT overrides `git rev-parse`.
"""
from __future__ import annotations

import dataclasses
import functools
import math
import os
import subprocess
import time
from functools import partial
from pathlib import Path
from typing import Any, Callable, Optional

import pytest
import torch
import torch.nn.functional as F

import lotts_kernels
from lotts_kernels import dispatch
from lotts_kernels.ops.attention import default_scale
from lotts_kernels.ops.masked_noise_blend import masked_noise_blend_ref
from lotts_kernels.ops.quality_mask import quality_mask_ref
from lotts_kernels.demo import (materialized_attention_maps, materialized_propagate, plan_rounds,
                                synced_timer)

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
SCALE = os.environ.get("LOTTS_BENCH_SCALE", "gpu" if DEVICE == "cuda" else "cpu")
BUDGET_S = float(os.environ.get("LOTTS_BENCH_BUDGET", "0.25"))
COMPILE_SEED = os.environ.get("LOTTS_BENCH_COMPILE_SEED") == "1"
if DEVICE == "cpu":
    torch.set_num_threads(int(os.environ.get("LOTTS_BENCH_THREADS", "1")))

ATTENTION_BATCH, QUALITY_BATCH, BLEND_BATCH = 3, 9, 6 if SCALE == "gpu" else 2
TOKENS, CHANNELS = 8, 2  # key tokens whose maps op 1 returns; op 2's map columns


@dataclasses.dataclass(frozen=True)
class Preset:
    """One model's shapes: attention (op 1 cross/joint, op 2 self/joint) and latents (ops 3, 4)."""

    heads: int
    head_dim: int
    image_tokens: int
    text_tokens: int
    joint: bool  # FLUX: queries and keys are text + image tokens of one joint attention
    latent: tuple[int, ...]  # per-sample latent of op 4
    mask: tuple[int, ...]  # per-sample mask of op 4; its numel is op 3's N
    dtype: torch.dtype  # attention and latents on a GPU


PRESETS = {
    "sd21": Preset(5, 64, 4096, 77, False, (4, 64, 64), (1, 64, 64), torch.float16),
    "sdxl": Preset(10, 64, 4096, 77, False, (4, 128, 128), (1, 128, 128), torch.float16),
    "flux": Preset(24, 128, 4096, 512, True, (4096, 64), (4096, 1), torch.bfloat16),
}
OP1, OP2, OP3, OP4 = ("attention_with_token_maps", "attention_propagate", "quality_mask",
                      "masked_noise_blend")
OP_SHAPES = {  # op: [(preset, variant)]; the first is the smallest
    OP1: [(p, "") for p in PRESETS],
    OP2: [(p, "") for p in PRESETS],
    OP3: [("sd21", ""), ("sdxl", "")],
    OP4: [(p, v) for p in PRESETS for v in ("blend", "seed")],
}
BASELINES = {OP1: ("sdpa", "materialize"), OP2: ("sdpa_dv", "materialize"),
             OP3: ("eager", "compile"), OP4: ("eager", "compile", "copy")}
OUTPUTS = {OP1: ("out", "maps"), OP2: ("out",), OP3: ("heat", "mask"), OP4: ("out",)}
# Allowed max |error| as a fraction of max |reference| (about twice the tests' tolerances).
TOLERANCE = {torch.float32: 1e-4, torch.float16: 5e-3, torch.bfloat16: 4e-2}


def preset(name: str) -> Preset:
    """The preset, reduced for a CPU run."""
    p = PRESETS[name]
    if SCALE == "cpu":
        p = dataclasses.replace(p, heads=2, image_tokens=1024, text_tokens=min(p.text_tokens, 128))
    return p


def dtype_for(op: str, name: str) -> torch.dtype:
    if op == OP3:
        return torch.float32  # attention maps and heat are float32
    if op == OP4 or DEVICE == "cuda":
        return PRESETS[name].dtype
    return torch.float32  # CPU attention in low precision is neither fast nor realistic


def _cases() -> list:
    cases = []
    for op, shapes in OP_SHAPES.items():
        impls = [n for n in dispatch.IMPLEMENTATIONS if n in dispatch.registered(op)]
        for name, variant in shapes:
            dtype = str(dtype_for(op, name)).removeprefix("torch.")
            for impl in impls + list(BASELINES[op]):
                tag = f"{op}-{name}{'-' + variant if variant else ''}-{dtype}-{impl}"
                cases.append(pytest.param(op, name, variant, dtype, impl, id=tag))
    return cases


# ----- inputs and reference outputs ----------------------------------------------------------

@dataclasses.dataclass
class CaseData:
    kwargs: dict[str, Any]  # public-API arguments
    args: tuple  # the custom op's (and the reference's) positional arguments
    expected: dict[str, torch.Tensor]  # reference outputs by name
    shape: str
    bytes: int = 0  # memory-bound ops: bytes the op must move
    flops: dict[str, int] = dataclasses.field(default_factory=dict)  # by impl; "" = default
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)


@functools.lru_cache(maxsize=1)
def case_data(op: str, name: str, variant: str, dtype: torch.dtype) -> CaseData:
    """Seeded inputs for one op at one shape and the reference's outputs on them."""
    p, gen = preset(name), torch.Generator(DEVICE).manual_seed(0)

    def randn(*shape: int, dtype: torch.dtype = dtype) -> torch.Tensor:
        return torch.randn(*shape, generator=gen, device=DEVICE).to(dtype)

    if op in (OP1, OP2):
        b, h, d = ATTENTION_BATCH, p.heads, p.head_dim
        lq = p.image_tokens + (p.text_tokens if p.joint else 0)
        lk = p.text_tokens if op == OP1 and not p.joint else lq
        q, k, scale = randn(b, h, lq, d), randn(b, h, lk, d), default_scale(d)
        if op == OP1:
            v = randn(b, h, lk, d)
            index = torch.stack([torch.randperm(p.text_tokens, generator=torch.Generator()
                                                .manual_seed(i))[:TOKENS] for i in range(b)])
            index = index.sort(dim=1).values.to(DEVICE)
            kwargs = {"q": q, "k": k, "v": v, "token_index": index}
            with dispatch.use_impl("ref"):
                maps = lotts_kernels.attention_with_token_maps(**kwargs)[1]
            out = F.scaled_dot_product_attention(q.float(), k.float(), v.float())
            return CaseData(kwargs, (q, k, v, index, scale), {"out": out, "maps": maps},
                            f"B{b} H{h} Lq{lq} Lk{lk} D{d} T{TOKENS}",
                            flops={"": 4 * b * h * lq * lk * d})
        maps = torch.rand(b, lk, CHANNELS, generator=gen, device=DEVICE)
        v_dv = randn(b, h, lk, d)
        kwargs = {"q": q, "k": k, "maps": maps}
        with dispatch.use_impl("ref"):
            out = lotts_kernels.attention_propagate(**kwargs)
        out_dv = F.scaled_dot_product_attention(q.float(), k.float(), v_dv.float())
        attention = b * h * lq * lk
        return CaseData(kwargs, (q, k, maps, scale), {"out": out, "out_dv": out_dv},
                        f"B{b} H{h} Lq{lq} Lk{lk} D{d} C{CHANNELS}",
                        flops={"": 2 * attention * (d + CHANNELS), "sdpa_dv": 4 * attention * d},
                        extra={"v_dv": v_dv, "lq_lk_bytes": lq * lk * 2})  # one 16-bit Lq x Lk
    if op == OP3:
        n = math.prod(p.mask)
        diff, orig = randn(QUALITY_BATCH, n), randn(QUALITY_BATCH, n)
        args = (diff, orig, 1.0, 0.5)
        heat, mask = quality_mask_ref(*args)
        return CaseData({"diff": diff, "orig": orig, "lam": 1.0, "ratio": 0.5}, args,
                        {"heat": heat, "mask": mask}, f"B{QUALITY_BATCH} N{n}",
                        bytes=QUALITY_BATCH * n * (2 * 4 + 4 + 1))
    b, seeded = BLEND_BATCH, variant == "seed"
    x0, other = randn(b, *p.latent), randn(b, *p.latent)
    mask = torch.rand(b, *p.mask, generator=gen, device=DEVICE) > 0.5
    alpha, sigma, seed = (0.7, 0.71, 1234) if seeded else (1.0, 0.0, None)
    moved = 3 * x0.numel() * x0.element_size() + mask.numel()  # x0, other, out; bool mask
    buffer = torch.randint(0, 256, (moved // 2,), dtype=torch.uint8, generator=gen, device=DEVICE)
    kwargs = {"x0": x0, "other": other, "mask": mask, "alpha": alpha, "sigma": sigma, "seed": seed}
    args = dispatch.get_op(OP4).prepare(**kwargs)[0]  # the custom op's arguments
    return CaseData(kwargs, args, {"out": masked_noise_blend_ref(*args), "copy": buffer},
                    f"B{b} {p.latent} mask {p.mask}" + (" seed noise" if seeded else " sigma=0"),
                    bytes=moved, extra={"buffer": buffer})


# ----- what runs, and its check ----------------------------------------------------------------

def runner(op: str, impl: str, data: CaseData) -> tuple[Callable[[], Any], tuple[str, ...]]:
    """A zero-argument call of `impl` (an implementation or a baseline) and its output names."""
    x = data.kwargs
    if impl in dispatch.IMPLEMENTATIONS:  # the public op; the caller forces `impl`
        return partial(getattr(lotts_kernels, op), **x), OUTPUTS[op]
    if impl == "sdpa":
        return partial(F.scaled_dot_product_attention, x["q"], x["k"], x["v"]), ("out",)
    if impl == "sdpa_dv":
        v_dv = data.extra["v_dv"]
        return partial(F.scaled_dot_product_attention, x["q"], x["k"], v_dv), ("out_dv",)
    if impl == "materialize":
        materialized = materialized_attention_maps if op == OP1 else materialized_propagate
        return partial(materialized, **x), OUTPUTS[op]
    if impl == "copy":
        return data.extra["buffer"].clone, ("copy",)
    function = dispatch.registered(op)["ref"].fn
    if impl == "compile":
        torch.compiler.reset()
        function = torch.compile(function, dynamic=False)
    return partial(function, *data.args), OUTPUTS[op]


def verify(outputs: Any, names: tuple[str, ...], expected: dict[str, torch.Tensor],
           dtype: torch.dtype) -> float:
    """Assert every output matches the reference; return the largest absolute error."""
    outputs = tuple(outputs) if isinstance(outputs, (tuple, list)) else (outputs,)
    assert len(outputs) == len(names), f"{len(outputs)} outputs, expected {names}"
    worst = 0.0
    for name, actual in zip(names, outputs):
        want = expected[name]
        assert actual.shape == want.shape, f"{name}: shape {actual.shape} != {want.shape}"
        if name == "copy":
            assert torch.equal(actual, want), "copy differs from its source"
        elif name == "mask":
            check_mask(actual, want, expected["heat"])
        else:
            error = (actual.double() - want.double()).abs().max().item()
            bound = TOLERANCE[dtype] * want.abs().max().item()
            assert error <= bound, (f"{name}: max |error| {error:.3g} exceeds {bound:.3g} "
                                    f"({TOLERANCE[dtype]} x max |reference|)")
            worst = max(worst, error)
    return worst


def check_mask(actual: torch.Tensor, want: torch.Tensor, heat: torch.Tensor) -> None:
    """Same count per row; differences only where the heat ties the row's threshold."""
    assert torch.equal(actual.sum(1), want.sum(1)), "mask: wrong number of positions per row"
    wrong = actual != want
    threshold = heat.masked_fill(~want, math.inf).amin(dim=1, keepdim=True)
    near = (heat - threshold).abs() <= 1e-6 * (1 + threshold.abs())
    assert bool(near[wrong].all()), f"mask: {int(wrong.sum())} positions differ off the threshold"


def peak_bytes(fn: Callable[[], Any]) -> Optional[int]:
    """Peak CUDA memory one call allocates beyond what was allocated before (None on CPU)."""
    if DEVICE != "cuda":
        return None
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    result = fn()
    torch.cuda.synchronize()
    del result
    return torch.cuda.max_memory_allocated() - base


# ----- context of a run ------------------------------------------------------------------------

def _git_commit() -> str:
    if os.environ.get("LOTTS_COMMIT"):
        return os.environ["LOTTS_COMMIT"]
    root = Path(__file__).resolve().parent.parent
    try:
        run = partial(subprocess.run, cwd=root, capture_output=True, text=True, timeout=10)
        commit = run(["git", "rev-parse", "--short", "HEAD"], check=True).stdout.strip()
        return commit + ("+dirty" if run(["git", "diff", "--quiet", "HEAD"]).returncode else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _device_name() -> str:
    if DEVICE == "cuda":
        return torch.cuda.get_device_name()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"{line.split(':', 1)[1].strip()} ({os.cpu_count()} cores)"
    except OSError:
        pass
    return "cpu"


def _triton_version() -> str:
    try:
        import triton
        return triton.__version__
    except ImportError:
        return "not installed"


CONTEXT = dict(device=_device_name(), scale=SCALE, torch=torch.__version__,
               triton=_triton_version(), commit=_git_commit(),
               threads=torch.get_num_threads() if DEVICE == "cpu" else None)


# ----- the benchmark ---------------------------------------------------------------------------

def _compile_skip(op: str, name: str, variant: str) -> Optional[str]:
    if SCALE == "cpu" and (name, variant) != OP_SHAPES[op][0]:
        return "CPU run: torch.compile baseline only at the smallest shape"
    if variant == "seed" and not COMPILE_SEED:
        return ("inductor needs minutes to compile the int64 Philox reference; "
                "set LOTTS_BENCH_COMPILE_SEED=1 (run_all.sh does on a GPU, in its own stage)")
    return None


@pytest.mark.parametrize("op,name,variant,dtype,impl", _cases())
def test_bench(benchmark, op: str, name: str, variant: str, dtype: str, impl: str) -> None:
    reason = _compile_skip(op, name, variant) if impl == "compile" else None
    if reason:
        pytest.skip(reason)
    torch_dtype = getattr(torch, dtype)
    data = case_data(op, name, variant, torch_dtype)
    fn, names = runner(op, impl, data)
    is_impl = impl in dispatch.IMPLEMENTATIONS
    with dispatch.use_impl(impl if is_impl else "auto"):
        start = time.perf_counter()
        try:
            outputs = fn()  # first call: builds, compiles, autotunes
        except (dispatch.KernelUnavailableError, ImportError) as error:
            pytest.skip(f"{impl} unavailable: {error}")
        except Exception as error:  # a broken baseline compile is a note, not a kernel bug
            if impl != "compile":
                raise
            pytest.skip(f"torch.compile failed: {type(error).__name__}: {str(error)[:200]}")
        first_call_s = synced_timer() - start
        max_error = verify(outputs, names, data.expected, torch_dtype)
        del outputs
        peak = peak_bytes(fn)
        rounds, iterations = plan_rounds(fn, BUDGET_S, warm=False)  # fn ran above
        benchmark.group = f"{op} {name}{' ' + variant if variant else ''}"
        benchmark.pedantic(fn, rounds=rounds, iterations=iterations,
                           warmup_rounds=int(iterations > 1))
    median = benchmark.stats.stats.median
    auto_impl = dispatch.select(op, data.args).name  # after any lazy build/load
    flops = data.flops.get(impl, data.flops.get(""))
    benchmark.extra_info.update(
        CONTEXT, op=op, preset=name, variant=variant, shape=data.shape, dtype=dtype, impl=impl,
        kind="implementation" if is_impl else "baseline", auto_impl=auto_impl,
        max_error=max_error, first_call_s=first_call_s, peak_bytes=peak,
        bytes=data.bytes or None, gbps=data.bytes / median / 1e9 if data.bytes else None,
        flops=flops, tflops=flops / median / 1e12 if flops else None,
        lq_lk_bytes=data.extra.get("lq_lk_bytes"))
