"""The ops are torch custom ops: opcheck passes and torch.compile traces with no graph break.

The custom ops' last argument is the requested implementation ("" = use_impl / env / auto), so
that a compiled graph still runs what its caller asked for."""
from __future__ import annotations

import pytest
import torch

import lotts_kernels as kernels
from tests.helpers import randn


def sample_calls():
    q, k, v = randn(2, 2, 9, 8, seed=1), randn(2, 2, 11, 8, seed=2), randn(2, 2, 11, 8, seed=3)
    index = torch.tensor([[0, 4], [1, 10]])
    yield torch.ops.lotts.attention_with_token_maps.default, (q, k, v, index, 0.35, "")
    yield torch.ops.lotts.attention_propagate.default, (q, k, randn(2, 11, 2, seed=4), 0.35, "ref")
    yield torch.ops.lotts.quality_mask.default, (randn(2, 13, seed=5), randn(2, 13, seed=6), 1.0, 0.5, "")
    x0, other = randn(2, 4, 6, 6, seed=7), randn(2, 4, 6, 6, seed=8)
    mask = torch.rand(2, 1, 3, 3, generator=torch.Generator().manual_seed(9)) > 0.5
    yield torch.ops.lotts.masked_noise_blend.default, (
        x0, other, mask, None, 0.8, torch.tensor([0.1, 0.2]), 0.0, None, 5, None, False, "")
    yield torch.ops.lotts.masked_noise_blend.default, (
        x0, other, mask.float(), torch.tensor([0.9, 0.7]), 0.0, None, 0.4, randn(2, 4, 6, 6, seed=10),
        None, None, True, "auto")
    yield torch.ops.lotts.masked_noise_blend.default, (
        x0, other, mask, None, 0.8, None, 0.5, None, None, torch.tensor([3, 2**40]), False, "")


@pytest.mark.parametrize("op, args", list(sample_calls()), ids=lambda v: str(v)[:40])
def test_opcheck(op, args):
    torch.library.opcheck(op, args)


def lotts_step(q, k, v, index, x0, other, noise):
    _, maps = kernels.attention_with_token_maps(q, k, v, index)
    propagated = kernels.attention_propagate(q, q, maps)
    heat, mask = kernels.quality_mask(propagated[..., 0], propagated[..., 1], lam=1.0, ratio=0.5)
    mask = mask.reshape(x0.shape[0], 1, 3, 3)
    return kernels.masked_noise_blend(x0, other, mask, 0.7, 0.3, noise=noise), heat


def test_compile_fullgraph_of_all_four_ops():
    torch._dynamo.reset()
    q, k, v = randn(2, 2, 9, 8, seed=11), randn(2, 2, 5, 8, seed=12), randn(2, 2, 5, 8, seed=13)
    index = torch.tensor([1, 3])
    x0, other, noise = randn(2, 4, 6, 6, seed=14), randn(2, 4, 6, 6, seed=15), randn(2, 4, 6, 6, seed=16)
    expected = lotts_step(q, k, v, index, x0, other, noise)
    compiled = torch.compile(lotts_step, fullgraph=True)
    got = compiled(q, k, v, index, x0, other, noise)
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b)
