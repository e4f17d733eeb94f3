"""Implementation choice: automatic fallback, explicit override, and readable refusals."""
from __future__ import annotations

import pytest
import torch

import lotts_kernels as kernels
from lotts_kernels import dispatch as _dispatch
from lotts_kernels import triton_utils
from tests.helpers import randn


def args_for_mask():
    return (randn(2, 9, seed=1), randn(2, 9, seed=2), 1.0, 0.5)


def test_auto_uses_the_reference_on_cpu_without_interpreter(monkeypatch):
    monkeypatch.delenv(_dispatch.ENV_VAR, raising=False)
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    args = args_for_mask()
    assert _dispatch.select("quality_mask", args).name == "ref"


def test_env_override_ref_is_honoured(monkeypatch):
    monkeypatch.setenv(_dispatch.ENV_VAR, "ref")
    args = args_for_mask()
    assert _dispatch.select("quality_mask", args).name == "ref"


def test_explicit_choice_that_cannot_run_explains_why(monkeypatch):
    monkeypatch.setenv(_dispatch.ENV_VAR, "cuda")
    with pytest.raises(kernels.KernelUnavailableError, match="cuda.*CUDA tensors"):
        kernels.quality_mask(randn(2, 9, seed=1), randn(2, 9, seed=2))
    monkeypatch.setenv(_dispatch.ENV_VAR, "triton")
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(kernels.KernelUnavailableError, match="triton"):
        kernels.quality_mask(randn(2, 9, seed=1), randn(2, 9, seed=2))


def test_cuda_is_not_offered_for_attention(monkeypatch):
    monkeypatch.setenv(_dispatch.ENV_VAR, "cuda")
    q = randn(1, 1, 4, 8, seed=3)
    with pytest.raises(kernels.KernelUnavailableError, match="no 'cuda' implementation"):
        kernels.attention_propagate(q, q, randn(1, 4, 2, seed=4))


def test_unknown_env_value_is_rejected(monkeypatch):
    monkeypatch.setenv(_dispatch.ENV_VAR, "fastest")
    with pytest.raises(kernels.KernelUnavailableError, match="LOTTS_KERNELS_IMPL"):
        kernels.quality_mask(randn(2, 9, seed=1), randn(2, 9, seed=2))


def test_use_impl_nests_and_wins_over_env(monkeypatch):
    monkeypatch.setenv(_dispatch.ENV_VAR, "cuda")
    with kernels.use_impl("triton"):
        with kernels.use_impl("ref"):
            assert _dispatch.requested() == "ref"
        assert _dispatch.requested() == "triton"
    assert _dispatch.requested() == "cuda"
    with pytest.raises(ValueError, match="unknown implementation"):
        with kernels.use_impl("fast"):
            pass


def test_every_op_has_a_reference_and_triton_registered():
    for op in ("attention_with_token_maps", "attention_propagate", "quality_mask",
               "masked_noise_blend"):
        assert {"ref", "triton"} <= set(_dispatch.registered(op))
    assert "cuda" in _dispatch.registered("quality_mask")
    assert "cuda" in _dispatch.registered("masked_noise_blend")
    assert torch.ops.lotts.quality_mask is not None


def test_auto_keeps_the_reference_on_cpu_even_when_interpreting(monkeypatch):
    monkeypatch.delenv(_dispatch.ENV_VAR, raising=False)
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    args = args_for_mask()
    assert _dispatch.select("quality_mask", args).name == "ref"
    if triton_utils.missing_reason() is None:
        with kernels.use_impl("triton"):
            assert _dispatch.select("quality_mask", args).name == "triton"


# ----- declared capabilities: every reason kept, explain, cache, context variable -------------

def _rank5_blend_args():
    x0 = randn(2, 3, 4, 5, 6, seed=5)
    mask = torch.rand(2, 1, 4, 1, 6, generator=torch.Generator().manual_seed(6)) > 0.5
    return x0, randn(2, 3, 4, 5, 6, seed=7), mask


def test_refusal_lists_every_reason_of_the_requested_implementation(monkeypatch):
    """Triton on CPU without the interpreter AND a mask needing 5 index dims: both reasons."""
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    x0, other, mask = _rank5_blend_args()
    with pytest.raises(kernels.KernelUnavailableError) as raised:
        kernels.masked_noise_blend(x0, other, mask, 1.0, 0.0, impl="triton")
    message = str(raised.value)
    if triton_utils.missing_reason() is None:
        assert "TRITON_INTERPRET=1" in message
    assert "4 index dims" in message


def test_automatic_failure_lists_every_backend():
    op = _dispatch.Op("test_nothing_runs", lambda x, impl=None: ((x,), impl))
    picky = _dispatch.Backend("triton", devices=("cuda",),
                              availability=lambda device, dtypes, explicit: ["no compiler"])
    op.register(_dispatch.Implementation(picky, lambda x: x,
                                         limits=lambda x: ["too long", "too wide"]))
    op.register(_dispatch.Implementation(_dispatch.REF, lambda x: x, dtypes=(torch.float64,),
                                         limits=lambda x: ["rows must be even"]))
    _dispatch.register_op(op)
    try:
        with pytest.raises(kernels.KernelUnavailableError) as raised:
            _dispatch.select(op.name, (torch.ones(3),))
        message = str(raised.value)
        for reason in ("takes CUDA tensors", "no compiler", "dtype torch.float32",
                       "rows must be even"):
            assert reason in message, (reason, message)
        explanation = kernels.explain(op.name, torch.ones(3))
        assert explanation.chosen is None
        assert "rows must be even" in explanation.reasons["ref"]
        assert "no compiler" in explanation.reasons["triton"]
        assert explanation.reasons["cuda"] == ["test_nothing_runs has no cuda implementation"]
    finally:
        _dispatch._OPS.pop(op.name)
        _dispatch.clear_cache()


def test_explain_names_the_choice_and_why_others_were_skipped(monkeypatch):
    monkeypatch.delenv(_dispatch.ENV_VAR, raising=False)
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    x0, other, mask = _rank5_blend_args()
    explanation = kernels.explain("masked_noise_blend", x0, other, mask, 0.5, 0.0)
    assert explanation.chosen == "ref" and explanation.requested == "auto"
    assert any("CUDA tensors" in r for r in explanation.reasons["cuda"])
    assert any("4 index dims" in r for r in explanation.reasons["cuda"])
    assert any("4 index dims" in r for r in explanation.reasons["triton"])
    assert explanation.reasons["ref"] == []
    text = str(explanation)
    assert "uses ref" in text and "triton: skipped" in text
    forced = kernels.explain("quality_mask", randn(2, 9), randn(2, 9), impl="ref")
    assert forced.chosen == "ref" and forced.requested == "ref"
    with pytest.raises(ValueError, match="ratio"):  # explain runs the op's argument checks
        kernels.explain("quality_mask", randn(2, 9), randn(2, 9), ratio=2.0)


def test_size_independent_choice_is_cached_but_sizes_are_checked_per_call(monkeypatch):
    """The per-step blend pays one cached lookup; a later call out of a kernel's size range
    still falls back (sizes are not part of the cached answer)."""
    monkeypatch.delenv(_dispatch.ENV_VAR, raising=False)
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    calls = []
    op = _dispatch.get_op("masked_noise_blend")
    triton_impl = op.implementations["triton"]
    real = triton_impl.backend.availability
    backend = _dispatch.Backend("triton", triton_impl.backend.devices,
                                lambda *a: calls.append(a) or real(*a))
    monkeypatch.setattr(triton_impl, "backend", backend)
    _dispatch.clear_cache()
    x0, other = randn(2, 4, 6, 6, seed=1), randn(2, 4, 6, 6, seed=2)
    mask = torch.ones(2, 1, 3, 3, dtype=torch.bool)
    with kernels.use_impl("triton"):
        for _ in range(3):
            kernels.masked_noise_blend(x0, other, mask, 0.5, 0.0)
        assert len(calls) == 1
        x5, other5, mask5 = _rank5_blend_args()
        with pytest.raises(kernels.KernelUnavailableError, match="4 index dims"):
            kernels.masked_noise_blend(x5, other5, mask5, 0.5, 0.0)
    kernels.masked_noise_blend(x5, other5, mask5, 0.5, 0.0)  # auto: falls back to ref quietly
    _dispatch.clear_cache()


def test_use_impl_is_per_thread_and_per_task(monkeypatch):
    import asyncio
    import threading

    monkeypatch.delenv(_dispatch.ENV_VAR, raising=False)
    seen = {}
    entered, release = threading.Event(), threading.Event()

    def other_thread():
        entered.wait()
        seen["thread"] = _dispatch.requested()
        release.set()

    worker = threading.Thread(target=other_thread)
    worker.start()
    with kernels.use_impl("ref"):
        entered.set()
        release.wait(timeout=10)
        seen["main"] = _dispatch.requested()
    worker.join()
    assert seen == {"thread": "auto", "main": "ref"}

    async def task(name, impl, started, proceed):
        with kernels.use_impl(impl):
            started.set()
            await proceed.wait()
            return name, _dispatch.requested()

    async def both():
        a_started, b_started, proceed = asyncio.Event(), asyncio.Event(), asyncio.Event()
        a = asyncio.create_task(task("a", "ref", a_started, proceed))
        b = asyncio.create_task(task("b", "triton", b_started, proceed))
        await a_started.wait()
        await b_started.wait()
        proceed.set()
        return dict(await asyncio.gather(a, b))

    assert asyncio.run(both()) == {"a": "ref", "b": "triton"}


def test_per_call_impl_wins_over_use_impl_and_env(monkeypatch):
    monkeypatch.setenv(_dispatch.ENV_VAR, "cuda")
    diff, orig = randn(2, 9, seed=1), randn(2, 9, seed=2)
    with kernels.use_impl("cuda"):
        heat, _ = kernels.quality_mask(diff, orig, impl="ref")
    assert heat.shape == (2, 9)
    with pytest.raises(kernels.KernelUnavailableError, match="cuda"):
        kernels.quality_mask(diff, orig, impl="cuda")
    with pytest.raises(ValueError, match="unknown implementation"):
        kernels.quality_mask(diff, orig, impl="fastest")


def test_per_call_impl_survives_torch_compile(monkeypatch):
    """impl= travels as a custom-op argument, so a compiled graph still honours it."""
    monkeypatch.delenv(_dispatch.ENV_VAR, raising=False)
    torch._dynamo.reset()
    diff, orig = randn(2, 9, seed=1), randn(2, 9, seed=2)
    compiled = torch.compile(lambda d, o: kernels.quality_mask(d, o, impl="cuda"),
                             fullgraph=True)
    with pytest.raises(kernels.KernelUnavailableError, match="cuda"):
        compiled(diff, orig)


def test_env_report_never_builds_the_cuda_extension(monkeypatch):
    """python -m lotts_kernels.env asks every backend about a CUDA device; asking the CUDA one
    as if it were requested would compile the extension on a GPU machine."""
    from lotts_kernels import cuda_build, env

    monkeypatch.delenv(_dispatch.ENV_VAR, raising=False)
    builds = []
    monkeypatch.setattr(cuda_build, "unavailable_reason",
                        lambda build=False: builds.append(build) or "not built (test)")
    _dispatch.clear_cache()
    table = env.availability(torch.device("cuda"))
    assert builds and not any(builds)
    assert table["quality_mask"]["cuda"] == "not built (test)"
    assert table["attention_propagate"]["cuda"] == "not implemented for this op"
    assert "report" in dir(env) and "quality_mask" in env.report()
