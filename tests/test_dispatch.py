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
