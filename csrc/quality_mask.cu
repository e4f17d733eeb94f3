// quality_mask: heat = mm(diff) + lam * mm(orig) per row, and exactly k of its largest positions
// (ties to the lower index), as lotts_kernels.reference.quality_mask. One block per row:
//   1. min/max of both inputs (block reduction);
//   2. heat in the reference's float32 operations (explicit _rn intrinsics), written out, and its
//      order-preserving uint32 keys kept in shared memory when the row fits (else re-derived from
//      the heat just written, which stays in L1/L2);
//   3. radix select of the k-th largest key v: 4 passes of 8 bits, each a 256-bin shared-memory
//      histogram of the keys that match the digits found so far (warp-aggregated atomics via
//      __match_any_sync), then a 256-wide block scan from the top bin picks the next digit;
//   4. mask = key > v, plus the first (k - count(key > v)) keys == v in index order: tiles of
//      blockDim positions, a block prefix count of "== v" (warp ballots + per-warp totals).
#include "lotts_common.cuh"
#include "lotts_kernels.h"

namespace lotts {
namespace {

constexpr int kMaxThreads = 1024;  // blockDim.x; LOTTS_QUALITY_MASK_MAX_N depends on it
constexpr int kMaxWarps = kMaxThreads / 32;

__device__ __forceinline__ uint32_t order_key(float h) {
  const uint32_t bits = __float_as_uint(h);
  return (bits & 0x80000000u) ? ~bits : (bits | 0x80000000u);
}

__device__ __forceinline__ float min_max_normalize(float x, float low, float span) {
  return span > 0.0f ? __fdiv_rn(__fsub_rn(x, low), span) : 0.0f;
}

template <typename T, bool KEYS_IN_SMEM>
__global__ void __launch_bounds__(kMaxThreads)
quality_mask_kernel(const T* __restrict__ diff, const T* __restrict__ orig, int n,
                    int64_t stride_d, int64_t stride_o, float lam, int k,
                    float* __restrict__ heat, uint8_t* __restrict__ mask) {
  extern __shared__ uint32_t smem_keys[];
  __shared__ float s_red[4][kMaxWarps];
  __shared__ int s_hist[256];
  __shared__ int s_warp[kMaxWarps];
  __shared__ uint32_t s_digit;
  __shared__ int s_rank;

  const int tid = threadIdx.x;
  const int lane = tid & 31;
  const int warp = tid >> 5;
  const int num_warps = blockDim.x >> 5;
  const int64_t row = blockIdx.x;
  const T* d_row = diff + row * stride_d;
  const T* o_row = orig + row * stride_o;
  float* h_row = heat + row * static_cast<int64_t>(n);
  uint8_t* m_row = mask + row * static_cast<int64_t>(n);

  // 1. min / max of both rows
  float d_lo = INFINITY, d_hi = -INFINITY, o_lo = INFINITY, o_hi = -INFINITY;
  for (int i = tid; i < n; i += blockDim.x) {
    const float d = to_float(d_row[i]);
    const float o = to_float(o_row[i]);
    d_lo = fminf(d_lo, d);
    d_hi = fmaxf(d_hi, d);
    o_lo = fminf(o_lo, o);
    o_hi = fmaxf(o_hi, o);
  }
  d_lo = warp_min(d_lo);
  d_hi = warp_max(d_hi);
  o_lo = warp_min(o_lo);
  o_hi = warp_max(o_hi);
  if (lane == 0) {
    s_red[0][warp] = d_lo;
    s_red[1][warp] = d_hi;
    s_red[2][warp] = o_lo;
    s_red[3][warp] = o_hi;
  }
  __syncthreads();
  if (warp == 0) {
    const bool has = lane < num_warps;
    d_lo = warp_min(has ? s_red[0][lane] : INFINITY);
    d_hi = warp_max(has ? s_red[1][lane] : -INFINITY);
    o_lo = warp_min(has ? s_red[2][lane] : INFINITY);
    o_hi = warp_max(has ? s_red[3][lane] : -INFINITY);
    if (lane == 0) {
      s_red[0][0] = d_lo;
      s_red[1][0] = d_hi;
      s_red[2][0] = o_lo;
      s_red[3][0] = o_hi;
    }
  }
  __syncthreads();
  d_lo = s_red[0][0];
  o_lo = s_red[2][0];
  const float d_span = __fsub_rn(s_red[1][0], d_lo);
  const float o_span = __fsub_rn(s_red[3][0], o_lo);

  // 2. heat (+ keys)
  for (int i = tid; i < n; i += blockDim.x) {
    const float mm_d = min_max_normalize(to_float(d_row[i]), d_lo, d_span);
    const float mm_o = min_max_normalize(to_float(o_row[i]), o_lo, o_span);
    const float h = __fadd_rn(mm_d, __fmul_rn(lam, mm_o));
    h_row[i] = h;
    if (KEYS_IN_SMEM) smem_keys[i] = order_key(h);
  }
  if (k <= 0) {
    for (int i = tid; i < n; i += blockDim.x) m_row[i] = 0;
    return;
  }
  __syncthreads();  // keys / heat visible to the whole block

  auto key_at = [&](int i) -> uint32_t {
    return KEYS_IN_SMEM ? smem_keys[i] : order_key(h_row[i]);
  };

  // 3. radix select: the k-th largest key, 8 bits per pass from the top
  uint32_t prefix = 0u;
  int rank = k;  // rank of the wanted key among the keys matching `prefix` (1-based, from top)
  for (int pass = 0; pass < 4; ++pass) {
    const int shift = 24 - 8 * pass;
    for (int b = tid; b < 256; b += blockDim.x) s_hist[b] = 0;
    __syncthreads();
    for (int base = 0; base < n; base += blockDim.x) {  // uniform trip count: full warps
      const int i = base + tid;
      int bin = -1;
      if (i < n) {
        const uint32_t key = key_at(i);
        const bool match = pass == 0 || ((key ^ prefix) >> (shift + 8)) == 0u;
        if (match) bin = static_cast<int>((key >> shift) & 0xFFu);
      }
      const uint32_t peers = __match_any_sync(0xffffffffu, bin);
      if (bin >= 0 && lane == __ffs(peers) - 1) atomicAdd(&s_hist[bin], __popc(peers));
    }
    __syncthreads();
    // inclusive scan of the bin counts from bin 255 down (threads 0..255 = 8 warps)
    int count = 0, inclusive = 0;
    if (tid < 256) {
      count = s_hist[255 - tid];
      inclusive = count;
#pragma unroll
      for (int o = 1; o < 32; o <<= 1) {
        const int up = __shfl_up_sync(0xffffffffu, inclusive, o);
        if (lane >= o) inclusive += up;
      }
      if (lane == 31) s_warp[warp] = inclusive;  // warp total
    }
    __syncthreads();
    if (tid < 256) {
      for (int w = 0; w < warp; ++w) inclusive += s_warp[w];
      const int exclusive = inclusive - count;  // keys in strictly higher bins
      if (exclusive < rank && rank <= inclusive) {  // exactly one bin holds the wanted key
        s_digit = static_cast<uint32_t>(255 - tid);
        s_rank = rank - exclusive;
      }
    }
    __syncthreads();
    prefix |= s_digit << shift;
    rank = s_rank;
  }
  const uint32_t v = prefix;
  const int need = rank;  // how many keys == v to take, in index order

  // 4. mask, ties by index
  int taken = 0;  // keys == v in earlier tiles
  for (int base = 0; base < n; base += blockDim.x) {
    const int i = base + tid;
    uint32_t key = 0u;
    if (i < n) key = key_at(i);
    const bool eq = i < n && key == v;
    const uint32_t ballot = __ballot_sync(0xffffffffu, eq);
    const int lane_before = __popc(ballot & ((1u << lane) - 1u));
    __syncthreads();  // previous tile's s_warp reads are done
    if (lane == 0) s_warp[warp] = __popc(ballot);
    __syncthreads();
    int warp_before = 0, tile_total = 0;
    for (int w = 0; w < num_warps; ++w) {
      const int c = s_warp[w];
      if (w < warp) warp_before += c;
      tile_total += c;
    }
    if (i < n) {
      const int eq_rank = taken + warp_before + lane_before;  // exclusive
      m_row[i] = (key > v || (eq && eq_rank < need)) ? 1 : 0;
    }
    taken += tile_total;
  }
}

template <typename T>
int launch(const void* diff, const void* orig, int64_t batch, int64_t n, int64_t stride_d,
           int64_t stride_o, float lam, int64_t k, float* heat, uint8_t* mask,
           cudaStream_t stream) {
  const int threads = n > 2048 ? kMaxThreads : 256;
  int device = 0;
  cudaError_t err = cudaGetDevice(&device);
  if (err != cudaSuccess) return err;
  int smem_optin = 0;
  err = cudaDeviceGetAttribute(&smem_optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device);
  if (err != cudaSuccess) return err;
  // leave room for the static shared memory (a few KiB)
  const int64_t key_bytes = n * static_cast<int64_t>(sizeof(uint32_t));
  const bool keys_in_smem = key_bytes + 8192 <= smem_optin;
  const dim3 grid(static_cast<unsigned>(batch));
  if (keys_in_smem) {
    auto kernel = quality_mask_kernel<T, true>;
    if (key_bytes > 48 * 1024) {
      err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                 static_cast<int>(key_bytes));
      if (err != cudaSuccess) return err;
    }
    kernel<<<grid, threads, static_cast<size_t>(key_bytes), stream>>>(
        static_cast<const T*>(diff), static_cast<const T*>(orig), static_cast<int>(n), stride_d,
        stride_o, lam, static_cast<int>(k), heat, mask);
  } else {
    quality_mask_kernel<T, false><<<grid, threads, 0, stream>>>(
        static_cast<const T*>(diff), static_cast<const T*>(orig), static_cast<int>(n), stride_d,
        stride_o, lam, static_cast<int>(k), heat, mask);
  }
  return cudaGetLastError();
}

}  // namespace
}  // namespace lotts

extern "C" int lotts_quality_mask(const void* diff, const void* orig, int dtype, int64_t batch,
                                  int64_t n, int64_t stride_d, int64_t stride_o, float lam,
                                  int64_t k, float* heat, uint8_t* mask, lotts_stream_t stream) {
  if (batch < 0 || n < 1 || k < 0 || k > n || batch > 0x7fffffff) return LOTTS_ERR_BAD_ARGUMENT;
  if (n > LOTTS_QUALITY_MASK_MAX_N) return LOTTS_ERR_ROW_TOO_LONG;
  if (batch == 0) return 0;
  cudaStream_t s = reinterpret_cast<cudaStream_t>(stream);
  switch (dtype) {
    case LOTTS_F32:
      return lotts::launch<float>(diff, orig, batch, n, stride_d, stride_o, lam, k, heat, mask, s);
    case LOTTS_F16:
      return lotts::launch<__half>(diff, orig, batch, n, stride_d, stride_o, lam, k, heat, mask, s);
    case LOTTS_BF16:
      return lotts::launch<__nv_bfloat16>(diff, orig, batch, n, stride_d, stride_o, lam, k, heat,
                                          mask, s);
    default:
      return LOTTS_ERR_BAD_ARGUMENT;
  }
}
