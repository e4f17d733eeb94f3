"""Every bad input named by the op contracts raises a ValueError that names the argument."""
from __future__ import annotations

import pytest
import torch

import lotts_kernels as kernels
from tests.helpers import randn

Q, K, V = randn(2, 3, 5, 8, seed=1), randn(2, 3, 7, 8, seed=2), randn(2, 3, 7, 4, seed=3)
INDEX = torch.tensor([0, 3])
X = randn(2, 4, 8, 8, seed=4)
MASK = torch.ones(2, 1, 4, 4, dtype=torch.bool)


def call_maps(**override):
    args = dict(q=Q, k=K, v=V, token_index=INDEX)
    args.update(override)
    return kernels.attention_with_token_maps(**args)


def call_propagate(**override):
    args = dict(q=Q, k=K, maps=randn(2, 7, 2, seed=5))
    args.update(override)
    return kernels.attention_propagate(**args)


def call_mask(**override):
    args = dict(diff=randn(2, 9, seed=6), orig=randn(2, 9, seed=7))
    args.update(override)
    return kernels.quality_mask(**args)


def call_blend(**override):
    args = dict(x0=X, other=randn(2, 4, 8, 8, seed=8), mask=MASK, alpha=0.5, sigma=0.5, seed=1)
    args.update(override)
    return kernels.masked_noise_blend(**args)


META = torch.device("meta")
CASES = [
    (call_maps, dict(q=Q[0]), "q"),
    (call_maps, dict(k=K[:1]), "k"),
    (call_maps, dict(k=randn(2, 3, 7, 6, seed=9)), "k"),
    (call_maps, dict(v=V[:, :, :5]), "v"),
    (call_maps, dict(q=Q.long()), "q"),
    (call_maps, dict(v=V.half()), "v"),
    (call_maps, dict(token_index=INDEX.int()), "token_index"),
    (call_maps, dict(token_index=torch.tensor([0, 7])), "token_index"),
    (call_maps, dict(token_index=torch.zeros(3, 2, dtype=torch.long)), "token_index"),
    (call_maps, dict(token_index=[[0, 1], [2]]), "token_index"),
    (call_maps, dict(token_index=[0, 7]), "token_index"),
    (call_maps, dict(q=Q.to(META)), "device"),
    (call_propagate, dict(maps=randn(2, 6, 2, seed=10)), "maps"),
    (call_propagate, dict(maps=randn(2, 7, seed=11)), "maps"),
    (call_propagate, dict(k=K.to(torch.int32)), "k"),
    (call_mask, dict(orig=randn(2, 8, seed=12)), "orig"),
    (call_mask, dict(diff=randn(9, seed=13)), "diff"),
    (call_mask, dict(ratio=1.5), "ratio"),
    (call_mask, dict(ratio=-0.1), "ratio"),
    (call_mask, dict(diff=torch.ones(2, 9, dtype=torch.int64)), "diff"),
    (call_mask, dict(orig=randn(2, 9, seed=14).to(META)), "device"),
    (call_blend, dict(other=randn(2, 4, 8, 9, seed=15)), "other"),
    (call_blend, dict(mask=torch.ones(2, 1, 3, 3, dtype=torch.bool)), "mask"),
    (call_blend, dict(mask=torch.ones(2, 4, 8, 8, dtype=torch.int32)), "mask"),
    (call_blend, dict(alpha=torch.ones(3)), "alpha"),
    (call_blend, dict(sigma="big"), "sigma"),
    (call_blend, dict(seed=None), "noise or seed"),
    (call_blend, dict(noise=randn(2, 4, 8, 8, seed=16)), "noise or seed"),
    (call_blend, dict(seed=None, noise=randn(2, 4, 8, 7, seed=17)), "noise"),
    (call_blend, dict(x0=X.long()), "x0"),
    (call_blend, dict(mask=MASK.to(META)), "device"),
]


@pytest.mark.parametrize("call, override, named", CASES,
                         ids=[f"{c.__name__}-{i}" for i, (c, _, _) in enumerate(CASES)])
def test_bad_input_names_the_argument(call, override, named):
    with pytest.raises(ValueError, match=named):
        call(**override)
