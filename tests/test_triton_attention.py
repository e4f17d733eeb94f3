"""Triton attention kernels against the references in lotts_kernels.ops.attention.

Without CUDA the kernels run in the Triton interpreter on CPU tensors (float32/float16). The
kernels are decorated lazily, per mode, on first use (lotts_kernels.triton_utils), so setting
TRITON_INTERPRET before the first call is enough: no module reload. With CUDA the same tests run
compiled on the GPU, plus the ``gpu``-marked realistic-shape tests.

Not tested here (needs a GPU and a memory profiler): that op 1 never allocates a (B,H,Lq,Lk)
tensor. By construction it does not: the launcher allocates only out (B,H,Lq,Dv) and a per-head
(B,H,Lq,T) float32 buffer, and the kernel holds one (BLOCK_M, BLOCK_N) score tile at a time.
"""
from __future__ import annotations

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
pytest.importorskip("triton")

import lotts_kernels  # noqa: E402
from lotts_kernels import triton_utils  # noqa: E402
from lotts_kernels.ops import attention  # noqa: E402
from tests.helpers import (  # noqa: E402
    assert_accurate,
    assert_close,
    exact_attention_probs,
    plain_attention_probs,
    randn,
    tolerance,
)

INTERPRETING = triton_utils.interpreting()
DEVICE = "cpu" if INTERPRETING else "cuda"

pytestmark = pytest.mark.skipif(
    not INTERPRETING and not torch.cuda.is_available(),
    reason="Triton needs CUDA or TRITON_INTERPRET=1",
)


def _qkv(batch, heads, num_queries, num_keys, head_dim, value_dim, dtype, seed=0):
    q = randn(batch, heads, num_queries, head_dim, dtype=dtype, seed=seed, device=DEVICE)
    k = randn(batch, heads, num_keys, head_dim, dtype=dtype, seed=seed + 1, device=DEVICE)
    v = randn(batch, heads, num_keys, value_dim, dtype=dtype, seed=seed + 2, device=DEVICE)
    return q, k, v


def _token_rows(batch, num_tokens, num_keys, seed=3):
    """Distinct random key positions per batch row."""
    gen = torch.Generator().manual_seed(seed)
    rows = torch.stack([torch.randperm(num_keys, generator=gen)[:num_tokens] for _ in range(batch)])
    return rows.to(DEVICE)


def _check_token_maps(q, k, v, token_index, scale=None):
    with lotts_kernels.use_impl("triton"):
        out, maps = lotts_kernels.attention_with_token_maps(q, k, v, token_index, scale)
    scale = attention.default_scale(q.shape[-1]) if scale is None else scale
    rows = token_index.expand(q.shape[0], token_index.shape[-1])
    ref_out, ref_maps = attention.attention_with_token_maps_ref(q.float(), k.float(), v.float(),
                                                            rows, scale)
    assert out.dtype == q.dtype and maps.dtype == torch.float32
    exact_out = torch.matmul(exact_attention_probs(q, k, scale), v.double())
    assert_accurate(out, exact_out, torch.matmul(plain_attention_probs(q, k, scale), v),
                    what="out")
    # maps are float32 math on the same inputs (fp16 products are exact in fp32 accumulation).
    assert_close(maps, ref_maps, *tolerance(torch.float32), what="maps")
    return out, maps


def _check_propagate(q, k, maps, scale=None):
    with lotts_kernels.use_impl("triton"):
        result = lotts_kernels.attention_propagate(q, k, maps, scale)
    scale = attention.default_scale(q.shape[-1]) if scale is None else scale
    assert result.dtype == torch.float32
    exact = torch.matmul(exact_attention_probs(q, k, scale), maps.double()[:, None]).mean(1)
    low = torch.matmul(plain_attention_probs(q, k, scale), maps.to(q.dtype)[:, None]).mean(1)
    assert_accurate(result, exact, low, what="propagated maps")
    return result


DTYPES = [torch.float32, torch.float16]


# ----- op 1: attention with token maps --------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("batch,heads,num_tokens", [(1, 1, 1), (3, 3, 5), (1, 3, 5), (3, 1, 1)])
def test_token_maps_clip_shape(dtype, batch, heads, num_tokens):
    q, k, v = _qkv(batch, heads, 37, 77, 24, 24, dtype)
    _check_token_maps(q, k, v, _token_rows(batch, num_tokens, 77))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("num_queries,num_keys,head_dim,value_dim", [
    (1, 1, 1, 1),       # size-1 everything
    (5, 17, 13, 7),     # primes, Dv != D, one partial key block
    (33, 64, 24, 40),   # Lk a multiple of every BLOCK_N: no masked tail block
    (2, 3, 16, 17),     # Dv just past a power of two
])
def test_token_maps_edge_shapes(dtype, num_queries, num_keys, head_dim, value_dim):
    q, k, v = _qkv(2, 2, num_queries, num_keys, head_dim, value_dim, dtype, seed=10)
    _check_token_maps(q, k, v, _token_rows(2, min(3, num_keys), num_keys), scale=0.37)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_token_maps_flux_joint_layout(dtype):
    """Joint attention: 512 text tokens then image tokens; maps read at text positions."""
    text, image = 512, 64
    q, k, v = _qkv(1, 1, text + image, text + image, 32, 32, dtype, seed=20)
    token_index = torch.tensor([[1, 7, 100, 511]], device=DEVICE)
    _check_token_maps(q, k, v, token_index)


def test_token_maps_shared_1d_index_and_strided_inputs():
    """(T,) index; q/k/v as transposed (B,L,H,D) views; q with a non-unit last stride."""
    batch, heads, num_queries, num_keys, head_dim = 2, 3, 19, 29, 8
    q = randn(batch, num_queries, heads, 2 * head_dim, seed=30, device=DEVICE)
    q = q.transpose(1, 2)[..., ::2]
    k = randn(batch, num_keys, heads, head_dim, seed=31, device=DEVICE).transpose(1, 2)
    v = randn(batch, num_keys, heads, head_dim + 3, seed=32, device=DEVICE).transpose(1, 2)
    assert q.stride(-1) == 2 and not k.is_contiguous()
    _check_token_maps(q, k, v, torch.tensor([0, 28, 5], device=DEVICE))


def test_token_maps_independent_of_output_garbage():
    """Outputs come from torch.empty: a second run after NaN-filled allocations must agree."""
    q, k, v = _qkv(2, 2, 37, 77, 24, 24, torch.float32, seed=40)
    token_index = _token_rows(2, 3, 77)
    first = _check_token_maps(q, k, v, token_index)
    poison = [torch.full_like(t, float("nan")) for t in first for _ in range(4)]
    del poison
    second = _check_token_maps(q, k, v, token_index)
    for a, b in zip(first, second):
        assert torch.equal(a, b)


def test_token_maps_out_of_range_gpu_index_reads_nothing_and_flags_nan():
    """Fix 5: GPU token indices are not range-checked on the host (that needs a device sync);
    the kernel must not read keys out of bounds and flags such a column with NaN."""
    q, k, v = _qkv(2, 2, 9, 13, 8, 8, torch.float32, seed=45)
    rows = torch.tensor([[0, 13, 5], [-1, 12, 2**40]], device=DEVICE)  # bypasses the host check
    scale = attention.default_scale(8)
    out, maps = attention.attention_with_token_maps_triton(q, k, v, rows, scale)
    ref_out, ref_maps = attention.attention_with_token_maps_ref(q, k, v, rows, scale)
    bad = torch.tensor([[False, True, False], [True, False, True]])
    assert bool(maps[bad[:, None, :].expand_as(maps)].isnan().all())
    assert bool(ref_maps[bad[:, None, :].expand_as(ref_maps)].isnan().all())
    good = ~bad[:, None, :].expand_as(maps)
    assert_close(maps[good], ref_maps[good], *tolerance(torch.float32), what="valid columns")
    assert_close(out, ref_out, *tolerance(torch.float32), what="out")


def test_token_index_as_list_is_checked_and_used():
    q, k, v = _qkv(2, 1, 5, 9, 8, 8, torch.float32, seed=46)
    with lotts_kernels.use_impl("triton"):
        _, from_list = lotts_kernels.attention_with_token_maps(q, k, v, [[1, 8], [0, 3]])
        _, from_tensor = lotts_kernels.attention_with_token_maps(
            q, k, v, torch.tensor([[1, 8], [0, 3]], device=DEVICE))
    assert torch.equal(from_list, from_tensor)
    with pytest.raises(ValueError, match=r"token_index values must lie in \[0, 9\)"):
        lotts_kernels.attention_with_token_maps(q, k, v, [1, 9])


# ----- op 2: attention propagate --------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("channels", [1, 2, 3])
def test_propagate(dtype, channels):
    q, k, _ = _qkv(2, 3, 37, 77, 24, 1, dtype, seed=50 + channels)
    maps = torch.rand(2, 77, channels, generator=torch.Generator().manual_seed(channels))
    _check_propagate(q, k, maps.to(DEVICE))


@pytest.mark.parametrize("num_queries,num_keys,head_dim,channels", [(1, 1, 1, 1), (13, 64, 5, 17)])
def test_propagate_edge_shapes(num_queries, num_keys, head_dim, channels):
    q, k, _ = _qkv(1, 2, num_queries, num_keys, head_dim, 1, torch.float32, seed=60)
    maps = randn(1, num_keys, channels, seed=61, device=DEVICE)
    _check_propagate(q, k, maps, scale=-0.5)  # a negative scale: max taken after scaling


def test_propagate_strided_and_repeatable():
    """Transposed q, maps as a channel slice (non-unit last stride), garbage-independent."""
    q = randn(2, 21, 3, 8, seed=70, device=DEVICE).transpose(1, 2)
    k, maps = randn(2, 3, 30, 8, seed=71, device=DEVICE), randn(2, 30, 4, seed=72, device=DEVICE)
    first = _check_propagate(q, k, maps[..., ::2])
    poison = torch.full_like(first, float("nan"))
    del poison
    assert torch.equal(first, _check_propagate(q, k, maps[..., ::2]))


# ----- limits ---------------------------------------------------------------------------------

def test_limits_explain_refusals():
    backend = attention
    q = torch.empty(1, 1, 4, 300)
    v = torch.empty(1, 1, 4, 8)
    index = torch.zeros(1, 1, dtype=torch.int64)
    assert "head dim 300" in backend.attention_with_token_maps_limits(q, q, v, index, 1.0)[0]
    assert "value dim 300" in backend.attention_with_token_maps_limits(v, v, q, index, 1.0)[0]
    assert "65" in backend.attention_propagate_limits(v, v, torch.empty(1, 4, 65), 1.0)[0]
    assert backend.attention_propagate_limits(v, v, torch.empty(1, 4, 64), 1.0) == []
    assert backend.attention_with_token_maps_limits(v, v, v, index, 1.0) == []


def test_explicit_triton_request_names_the_limit():
    q = randn(1, 1, 4, 8, device=DEVICE)
    maps = randn(1, 4, 65, device=DEVICE)
    with lotts_kernels.use_impl("triton"), pytest.raises(lotts_kernels.KernelUnavailableError,
                                                         match="65 channels"):
        lotts_kernels.attention_propagate(q, q, maps)


# ----- GPU: realistic shapes, flash-attention's error rule ------------------------------------

@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
def test_gpu_token_maps_sd_shape(dtype):
    batch, heads, num_queries, num_keys, head_dim, num_tokens = 2, 5, 4096, 77, 64, 4
    q, k, v = (randn(batch, heads, n, head_dim, dtype=dtype, seed=s, device="cuda")
               for s, n in ((80, num_queries), (81, num_keys), (82, num_keys)))
    token_index = torch.tensor([[1, 2, 5, 76], [3, 4, 9, 40]], device="cuda")
    scale = attention.default_scale(head_dim)
    with lotts_kernels.use_impl("triton"):
        out, maps = lotts_kernels.attention_with_token_maps(q, k, v, token_index, scale)
    gather = token_index[:, None, None, :].expand(batch, heads, num_queries, num_tokens)
    exact = exact_attention_probs(q, k, scale)
    low = plain_attention_probs(q, k, scale)
    assert_accurate(out, torch.matmul(exact, v.double()), torch.matmul(low, v), what="out")
    assert_accurate(maps, exact.gather(-1, gather).mean(1), low.gather(-1, gather).mean(1),
                    what="maps")


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
def test_gpu_propagate_self_attention_shape(dtype):
    batch, heads, length, head_dim = 2, 5, 1024, 64
    q = randn(batch, heads, length, head_dim, dtype=dtype, seed=90, device="cuda")
    k = randn(batch, heads, length, head_dim, dtype=dtype, seed=91, device="cuda")
    maps = torch.rand(batch, length, 2, generator=torch.Generator().manual_seed(92)).cuda()
    scale = attention.default_scale(head_dim)
    with lotts_kernels.use_impl("triton"):
        result = lotts_kernels.attention_propagate(q, k, maps, scale)
    exact = torch.matmul(exact_attention_probs(q, k, scale), maps.double()[:, None])
    low = torch.matmul(plain_attention_probs(q, k, scale), maps.to(dtype)[:, None])
    assert_accurate(result, exact.mean(1), low.mean(1), what="propagated maps")


@pytest.mark.gpu
def test_gpu_token_index_host_copy_is_checked_and_device_index_flagged():
    q = randn(2, 3, 64, 32, dtype=torch.float16, seed=95, device="cuda")
    k = randn(2, 3, 77, 32, dtype=torch.float16, seed=96, device="cuda")
    with pytest.raises(ValueError, match="token_index values"):
        lotts_kernels.attention_with_token_maps(q, k, k, torch.tensor([3, 77]))  # host copy
    _, host = lotts_kernels.attention_with_token_maps(q, k, k, torch.tensor([3, 76]))
    _, device = lotts_kernels.attention_with_token_maps(q, k, k, torch.tensor([3, 76]).cuda())
    assert torch.equal(host, device)
    _, flagged = lotts_kernels.attention_with_token_maps(q, k, k, torch.tensor([3, 77]).cuda(),
                                                         impl="triton")
    assert bool(flagged[..., 1].isnan().all()) and not bool(flagged[..., 0].isnan().any())
