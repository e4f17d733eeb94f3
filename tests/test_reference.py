"""The PyTorch references against float64 naive math written independently here."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

import lotts_kernels as kernels
from lotts_kernels import philox
from lotts_kernels.ops import attention
from tests.helpers import (
    assert_accurate,
    assert_close,
    blend_exact_and_low,
    plain_attention_probs,
    randn,
)

ATTENTION_SHAPES = [  # (B, H, Lq, Lk, D, T)
    (1, 1, 37, 77, 24, 1),
    (3, 2, 37, 77, 24, 5),
    (3, 3, 1, 77, 24, 5),
    (1, 2, 64, 77, 40, 3),
]


def naive_token_maps(q, k, token_index, scale):
    probs = attention.naive_attention_probs(q, k, scale)  # (B, H, Lq, Lk) float64
    rows = token_index.expand(q.shape[0], -1) if token_index.dim() == 1 else token_index
    picked = torch.stack([probs[b][..., rows[b]] for b in range(q.shape[0])])
    return picked.mean(dim=1)


@pytest.mark.parametrize("shape", ATTENTION_SHAPES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_token_maps_match_naive(shape, dtype):
    batch, heads, lq, lk, d, t = shape
    q, k = randn(batch, heads, lq, d, dtype=dtype, seed=1), randn(batch, heads, lk, d, dtype=dtype, seed=2)
    v = randn(batch, heads, lk, d + 3, dtype=dtype, seed=3)
    token_index = torch.randint(0, lk, (batch, t), generator=torch.Generator().manual_seed(4))
    out, maps = kernels.attention_with_token_maps(q, k, v, token_index)
    assert out.dtype == dtype and maps.dtype == torch.float32
    assert maps.shape == (batch, lq, t)
    scale = d ** -0.5
    exact_out = torch.softmax(q.double() @ k.double().transpose(-1, -2) * scale, -1) @ v.double()
    assert_accurate(out, exact_out, plain_attention_probs(q, k, scale) @ v, what="out")
    # maps are computed in float32 from low-precision q, k: compare with the same inputs upcast.
    assert_close(maps, naive_token_maps(q, k, token_index, scale), 1e-6, 1e-5, what="maps")


def test_token_maps_one_dimensional_index_and_custom_scale():
    q, k, v = randn(2, 2, 9, 16, seed=5), randn(2, 2, 77, 16, seed=6), randn(2, 2, 77, 16, seed=7)
    index = torch.tensor([0, 5, 76])
    out, maps = kernels.attention_with_token_maps(q, k, v, index, scale=0.3)
    assert_close(out, F.scaled_dot_product_attention(q, k, v, scale=0.3), 1e-6, 1e-5)
    assert_close(maps, naive_token_maps(q, k, index, 0.3), 1e-6, 1e-5)


def test_token_maps_flux_layout():
    """FLUX joint attention: keys are 512 text tokens then image tokens; maps read text keys."""
    text, image, d = 512, 64, 32
    q = randn(1, 2, text + image, d, seed=8)
    k = randn(1, 2, text + image, d, seed=9)
    v = randn(1, 2, text + image, d, seed=10)
    index = torch.tensor([[3, 4, 5, 17, 100, 511]])
    _, maps = kernels.attention_with_token_maps(q, k, v, index)
    expected = naive_token_maps(q, k, index, d ** -0.5)
    assert_close(maps, expected, 1e-6, 1e-5)


@pytest.mark.parametrize("channels", [1, 2, 3])
@pytest.mark.parametrize("shape", [(1, 1, 37, 77, 24), (3, 2, 37, 61, 24)])
def test_propagate_matches_naive(shape, channels):
    batch, heads, lq, lk, d = shape
    q, k = randn(batch, heads, lq, d, seed=11), randn(batch, heads, lk, d, seed=12)
    maps = randn(batch, lk, channels, seed=13)
    out = kernels.attention_propagate(q, k, maps)
    expected = attention.naive_attention_probs(q, k, d ** -0.5).mean(1) @ maps.double()
    assert out.dtype == torch.float32
    assert_close(out, expected, 1e-6, 1e-5)


def test_reference_attention_is_chunked_within_budget(monkeypatch):
    """At Lq = Lk = 4096 the CPU path never holds more than the score budget at once."""
    largest = []
    real_softmax = torch.softmax

    def spying_softmax(x, dim):
        largest.append(x.numel() * x.element_size())
        return real_softmax(x, dim)

    monkeypatch.setattr(attention.torch, "softmax", spying_softmax)
    q, k = randn(1, 2, 4096, 8, seed=14), randn(1, 2, 4096, 8, seed=15)
    out = attention.attention_propagate_ref(q, k, randn(1, 4096, 2, seed=16), 8 ** -0.5)
    assert out.shape == (1, 4096, 2)
    assert max(largest) <= attention.SCORE_BUDGET_BYTES
    assert len(largest) > 1


def naive_heat(diff, orig, lam):
    def mm(x):
        x = x.double()
        low, high = x.min(1, keepdim=True).values, x.max(1, keepdim=True).values
        span = high - low
        return torch.where(span > 0, (x - low) / torch.where(span > 0, span, 1), 0)
    return mm(diff) + lam * mm(orig)


def naive_top_mask(heat, count):
    mask = torch.zeros(heat.shape, dtype=torch.bool)
    for row in range(heat.shape[0]):
        ranked = sorted(range(heat.shape[1]), key=lambda i: (-float(heat[row, i]), i))
        mask[row, ranked[:count]] = True
    return mask


@pytest.mark.parametrize("n", [1, 7, 37, 200])
@pytest.mark.parametrize("ratio", [0.0, 0.33, 0.5, 1.0])
@pytest.mark.parametrize("lam", [0.0, 1.0, 2.5])
def test_quality_mask_matches_naive(n, ratio, lam):
    diff, orig = randn(3, n, seed=17), randn(3, n, seed=18)
    heat, mask = kernels.quality_mask(diff, orig, lam=lam, ratio=ratio)
    assert heat.dtype == torch.float32 and mask.dtype == torch.bool
    assert_close(heat, naive_heat(diff, orig, lam), 1e-6, 1e-6)
    assert (mask.sum(1) == round(ratio * n)).all()
    assert torch.equal(mask, naive_top_mask(heat, round(ratio * n)))


def test_quality_mask_constant_rows_and_ties():
    diff = torch.tensor([[2.0] * 6, [1.0, 3.0, 3.0, 1.0, 3.0, 2.0]])
    orig = torch.tensor([[5.0] * 6, [0.0, 1.0, 1.0, 0.0, 1.0, 0.5]])
    heat, mask = kernels.quality_mask(diff, orig, ratio=0.5)
    assert torch.equal(heat[0], torch.zeros(6))  # constant rows normalize to zeros
    assert mask[0].tolist() == [True, True, True, False, False, False]  # ties: lowest indices
    assert mask[1].tolist() == [False, True, True, False, True, False]


@settings(deadline=None, max_examples=40)
@given(batch=st.integers(1, 4), n=st.integers(1, 300), ratio=st.floats(0.0, 1.0),
       lam=st.floats(0.0, 3.0), levels=st.integers(2, 50), seed=st.integers(0, 2**31))
def test_quality_mask_properties(batch, n, ratio, lam, levels, seed):
    gen = torch.Generator().manual_seed(seed)
    # Few distinct levels make ties common.
    diff = torch.randint(0, levels, (batch, n), generator=gen).float()
    orig = torch.randn(batch, n, generator=gen)
    heat, mask = kernels.quality_mask(diff, orig, lam=lam, ratio=ratio)
    count = round(ratio * n)
    assert (mask.sum(1) == count).all()
    assert heat.min() >= 0 and heat.max() <= 1 + lam + 1e-6
    for row in range(batch):
        chosen, rest = heat[row][mask[row]], heat[row][~mask[row]]
        if chosen.numel() and rest.numel():
            assert chosen.min() >= rest.max()
            # Among values equal to the threshold, the chosen ones come first by index.
            threshold = chosen.min()
            tied = (heat[row] == threshold).nonzero().flatten()
            picked = mask[row][tied]
            assert picked.tolist() == sorted(picked.tolist(), reverse=True)


def naive_blend(x0, other, m, alpha, sigma, eps):
    return m * (alpha * x0.double() + sigma * eps.double()) + (1 - m) * other.double()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_blend_upsampled_mask_with_noise(dtype):
    x0, other = randn(2, 4, 12, 18, dtype=dtype, seed=19), randn(2, 4, 12, 18, dtype=dtype, seed=20)
    small = torch.rand(2, 1, 4, 6, generator=torch.Generator().manual_seed(21)) > 0.5
    noise = randn(2, 4, 12, 18, dtype=dtype, seed=22)
    out = kernels.masked_noise_blend(x0, other, small, 0.7, 0.4, noise=noise)
    m = small.double().repeat_interleave(3, 2).repeat_interleave(3, 3)
    assert out.dtype == dtype
    exact = naive_blend(x0, other, m, 0.7, 0.4, noise)
    assert_accurate(out, exact, blend_exact_and_low(x0, other, small, 0.7, 0.4, noise)[1])


def test_blend_soft_packed_mask_tensor_coefficients_and_invert():
    x0, other, noise = randn(3, 33, 16, seed=23), randn(3, 33, 16, seed=24), randn(3, 33, 16, seed=25)
    soft = torch.rand(3, 33, 1, generator=torch.Generator().manual_seed(26))
    alpha, sigma = torch.tensor([0.9, 0.5, 0.1]), torch.tensor([0.2, 0.6, 1.0])
    out = kernels.masked_noise_blend(x0, other, soft, alpha, sigma, noise=noise, invert=True)
    expected = naive_blend(x0, other, 1 - soft.double(), alpha.double()[:, None, None],
                           sigma.double()[:, None, None], noise)
    assert_close(out, expected, 1e-6, 1e-5)


def test_blend_keeps_outside_exactly_and_seeded_noise_is_philox():
    x0, other = randn(2, 4, 8, 8, dtype=torch.float16, seed=27), randn(2, 4, 8, 8, dtype=torch.float16, seed=28)
    mask = torch.zeros(2, 1, 8, 8, dtype=torch.bool)
    mask[:, :, 2:5, 3:7] = True
    out = kernels.masked_noise_blend(x0, other, mask, 0.6, 0.8, seed=1234)
    outside = ~mask.expand_as(x0)
    assert torch.equal(out[outside], other[outside])
    eps = philox.normal(1234, x0.shape)
    expected = (0.6 * x0.float() + 0.8 * eps).half()
    assert torch.equal(out[~outside], expected[~outside])
    again = kernels.masked_noise_blend(x0, other, mask, 0.6, 0.8, seed=1234)
    assert torch.equal(out, again)


def test_blend_sigma_zero_needs_no_noise():
    x0, other = randn(2, 5, seed=29), randn(2, 5, seed=30)
    mask = torch.tensor([[1.0], [0.0]])
    out = kernels.masked_noise_blend(x0, other, mask, 1.0, 0.0)
    assert torch.equal(out[0], x0[0]) and torch.equal(out[1], other[1])


@settings(deadline=None, max_examples=40)
@given(shape=st.lists(st.integers(1, 9), min_size=1, max_size=4), seed=st.integers(0, 2**31),
       soft=st.booleans(), invert=st.booleans())
def test_blend_properties(shape, seed, soft, invert):
    gen = torch.Generator().manual_seed(seed)
    x0, other, noise = (torch.randn(*shape, generator=gen) for _ in range(3))
    mask_shape = [s if torch.rand(1, generator=gen) > 0.5 else 1 for s in shape]
    mask = torch.rand(*mask_shape, generator=gen)
    mask = mask if soft else mask > 0.5
    out = kernels.masked_noise_blend(x0, other, mask, 0.3, 0.9, noise=noise, invert=invert)
    m = mask.double().expand(shape)
    m = 1 - m if invert else m
    assert_close(out, naive_blend(x0, other, m, 0.3, 0.9, noise), 1e-6, 1e-5)


def test_philox_known_answer_and_statistics():
    zero = torch.zeros(1, dtype=torch.int64)
    words = [int(w) for w in philox.philox4x32(zero, zero, 0)]
    assert words == [0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8]  # Random123 KAT
    values = torch.tensor([0, 1, 0xFFFF, 0x10000, 0x89ABCDEF, 0xFFFFFFFF])
    high, low = philox._mul_hi_lo(philox.MULTIPLIER_1, values)
    for value, h, l in zip(values.tolist(), high.tolist(), low.tolist()):
        assert (h << 32) | l == philox.MULTIPLIER_1 * value
    eps = philox.normal(7, (200_000,))
    assert abs(eps.mean().item()) < 0.01 and abs(eps.std().item() - 1) < 0.01
    assert torch.equal(philox.normal(7, (2, 3)).flatten(), philox.normal(7, (6,)))
    assert not torch.equal(philox.normal(7, (6,)), philox.normal(8, (6,)))


def _per_row_blend(x0, other, mask, alpha, sigma, seeds, impl=None):
    """The call batched seeds replace: one call per row with that row's seed."""
    rows = []
    for b, seed in enumerate(seeds.tolist()):
        row_mask = mask[b:b + 1] if mask.dim() == x0.dim() and mask.shape[0] > 1 else mask
        row_alpha = alpha[b:b + 1] if isinstance(alpha, torch.Tensor) else alpha
        row_sigma = sigma[b:b + 1] if isinstance(sigma, torch.Tensor) else sigma
        rows.append(kernels.masked_noise_blend(x0[b:b + 1], other[b:b + 1], row_mask, row_alpha,
                                               row_sigma, seed=seed, impl=impl))
    return torch.cat(rows)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_blend_batched_seeds_equal_per_row_calls(dtype):
    x0, other = randn(3, 4, 6, 10, dtype=dtype, seed=31), randn(3, 4, 6, 10, dtype=dtype, seed=32)
    mask = torch.rand(3, 1, 3, 5, generator=torch.Generator().manual_seed(33)) > 0.4
    seeds = torch.tensor([7, 2**40 + 3, 7])  # a repeated seed: rows 0 and 2 draw the same eps
    sigma = torch.tensor([0.3, 0.9, 0.5])
    out = kernels.masked_noise_blend(x0, other, mask, 0.8, sigma, seed=seeds)
    assert torch.equal(out, _per_row_blend(x0, other, mask, 0.8, sigma, seeds))
    eps = philox.normal_rows(seeds, (3, 40))
    assert torch.equal(eps[0], eps[2]) and not torch.equal(eps[0], eps[1])
    assert torch.equal(eps[1], philox.normal(2**40 + 3, (40,)))


def test_blend_batched_seeds_are_checked():
    x0 = randn(2, 5, seed=34)
    with pytest.raises(ValueError, match=r"int64 of shape \(2,\)"):
        kernels.masked_noise_blend(x0, x0, torch.ones(2, 5) > 0, 1.0, 0.5, seed=torch.tensor([1]))
    with pytest.raises(ValueError, match="int64"):
        kernels.masked_noise_blend(x0, x0, torch.ones(2, 5) > 0, 1.0, 0.5,
                                   seed=torch.tensor([1, 2], dtype=torch.int32))
    with pytest.raises(ValueError, match=r"\[0, 2\*\*63\)"):
        kernels.masked_noise_blend(x0, x0, torch.ones(2, 5) > 0, 1.0, 0.5,
                                   seed=torch.tensor([1, -2]))
    with pytest.raises(ValueError, match="noise or seed"):
        kernels.masked_noise_blend(x0, x0, torch.ones(2, 5) > 0, 1.0, 0.5, noise=x0,
                                   seed=torch.tensor([1, 2]))


def test_philox_constants_agree_with_the_cuda_sources():
    """philox.py defines the constants once for Python and Triton; csrc/lotts_common.cuh has
    to repeat them in C++, so check every one (and the round count) against it."""
    import re
    from pathlib import Path

    text = (Path(__file__).resolve().parent.parent / "csrc" / "lotts_common.cuh").read_text()

    def constant(name):
        return re.search(rf"{name}\s*=\s*([0-9.eE+-x]+?[0-9A-Fa-f])[uf]?;", text).group(1)

    assert int(constant("kPhiloxM0"), 16) == philox.MULTIPLIER_0
    assert int(constant("kPhiloxM1"), 16) == philox.MULTIPLIER_1
    assert int(constant("kPhiloxW0"), 16) == philox.WEYL_0
    assert int(constant("kPhiloxW1"), 16) == philox.WEYL_1
    assert float(constant("kUniformScale")) == philox.UNIFORM_SCALE
    two_pi = torch.tensor(philox.TWO_PI, dtype=torch.float32).item()  # as the reference rounds
    assert float(constant("kTwoPi")) == two_pi
    assert f"round < {philox.ROUNDS};" in text
