// masked_noise_blend: x = m * (alpha * x0 + sigma * eps) + (1 - m) * other, float32 math,
// stored in x0's dtype, as lotts_kernels.reference.masked_noise_blend.
//
// Memory-bound: a grid-stride loop over 16-byte vectors of x0 / out (4 floats or 8 halves),
// `other` and `noise` loaded as matching vectors (one or two 16-byte accesses), a scalar loop for
// the tail and a scalar-only path when any pointer is misaligned. The mask is gathered per element
// through the coalesced 4-D view computed by lotts_kernels/ops/masked_noise_blend_layout.py (broadcast
// dims have stride 0; (B,1,h,w) masks over (B,C,H,W) use integer factors), with multiply-high
// divisions when the tensor has fewer than 2^31 elements. eps is `noise`, or Philox4x32-10 +
// Box-Muller of (seed, flat index) exactly as lotts_kernels/philox.py, or absent (NOISE_NONE
// compiles the noise path out).
#include "lotts_common.cuh"
#include "lotts_kernels.h"

namespace lotts {
namespace {

struct BlendParams {
  const void* x0;
  const void* other;
  void* out;
  const void* mask;
  const void* noise;
  const float* alpha;
  const float* sigma;
  const int64_t* seeds;  // per-row Philox seeds or nullptr (then `seed`)
  float alpha_value;
  float sigma_value;
  uint64_t seed;
  int64_t numel;
  int invert;
  int aligned;      // vector path: all streamed tensors of x0's dtype and 16-byte aligned
  int in_is_float;  // other / noise are float32 while x0 is not
  int mask_is_float;
  int ndim;
  int upsample;
  int small;    // numel < 2^31: 32-bit index math with FastDiv
  int64_t dims[4];
  int64_t strides[4];
  int64_t factors[2];
  int64_t per_batch;
  FastDiv div_d1, div_d2, div_d3, div_f2, div_f3, div_batch;
  FastDiv64 div64_d1, div64_d2, div64_d3, div64_f2, div64_f3, div64_batch;  // when !small
};

// Mask element offset of flat index i (see masked_noise_blend_layout.py). SMALL (numel < 2^31,
// p.small) is a template parameter, so the kernels for tensors below 2^31 elements carry no
// 64-bit index math at all.
template <bool SMALL>
__device__ __forceinline__ int64_t mask_offset(const BlendParams& p, int64_t i) {
  int64_t i0 = 0, i1 = 0, i2 = 0, i3;
  if (SMALL) {
    const uint32_t n = static_cast<uint32_t>(i);
    uint32_t rest = 0, c3 = n, c2 = 0, c1 = 0, c0 = 0;
    if (p.ndim > 1) {
      rest = p.div_d3.div(n);
      c3 = n - rest * p.div_d3.divisor;
      if (p.ndim == 2) {
        c2 = rest;
      } else {
        const uint32_t r2 = p.div_d2.div(rest);
        c2 = rest - r2 * p.div_d2.divisor;
        if (p.ndim == 3) {
          c1 = r2;
        } else {
          c0 = p.div_d1.div(r2);
          c1 = r2 - c0 * p.div_d1.divisor;
        }
      }
    }
    if (p.upsample) {
      c3 = p.div_f3.div(c3);
      c2 = p.div_f2.div(c2);
    }
    i0 = c0; i1 = c1; i2 = c2; i3 = c3;
  } else {  // 64-bit: FastDiv64 (a 64-bit `/` would be a subroutine call)
    const uint64_t n = static_cast<uint64_t>(i);
    uint64_t rest = 0, c3 = n, c2 = 0, c1 = 0, c0 = 0;
    if (p.ndim > 1) {
      rest = p.div64_d3.div(n);
      c3 = n - rest * p.div64_d3.divisor;
      if (p.ndim == 2) {
        c2 = rest;
      } else {
        const uint64_t r2 = p.div64_d2.div(rest);
        c2 = rest - r2 * p.div64_d2.divisor;
        if (p.ndim == 3) {
          c1 = r2;
        } else {
          c0 = p.div64_d1.div(r2);
          c1 = r2 - c0 * p.div64_d1.divisor;
        }
      }
    }
    if (p.upsample) {
      c3 = p.div64_f3.div(c3);
      c2 = p.div64_f2.div(c2);
    }
    i0 = static_cast<int64_t>(c0); i1 = static_cast<int64_t>(c1);
    i2 = static_cast<int64_t>(c2); i3 = static_cast<int64_t>(c3);
  }
  return i0 * p.strides[0] + i1 * p.strides[1] + i2 * p.strides[2] + i3 * p.strides[3];
}

template <bool SMALL>
__device__ __forceinline__ int64_t batch_of(const BlendParams& p, int64_t i) {
  return SMALL ? static_cast<int64_t>(p.div_batch.div(static_cast<uint32_t>(i)))
               : static_cast<int64_t>(p.div64_batch.div(static_cast<uint64_t>(i)));
}

// The mask value at flat index i as a float (bool masks are stored as 0/1 bytes).
template <bool SMALL>
__device__ __forceinline__ float mask_value(const BlendParams& p, int64_t i) {
  const int64_t offset = mask_offset<SMALL>(p, i);
  return p.mask_is_float ? static_cast<const float*>(p.mask)[offset]
                         : to_float(static_cast<const uint8_t*>(p.mask)[offset]);
}

// One element, in the reference's float32 operations and order (every op rounded: *_rn).
template <int NOISE, bool SMALL>
__device__ __forceinline__ float blend_one(const BlendParams& p, int64_t i, float x, float o,
                                           float noise) {
  float m = mask_value<SMALL>(p, i);
  if (p.invert) m = __fsub_rn(1.0f, m);
  int64_t b = 0;
  if (p.alpha != nullptr || p.sigma != nullptr || p.seeds != nullptr)
    b = batch_of<SMALL>(p, i);
  const float a = p.alpha != nullptr ? p.alpha[b] : p.alpha_value;
  float inside = __fmul_rn(a, x);
  if (NOISE != LOTTS_NOISE_NONE) {
    // per-row seeds: key seeds[b], counter restarting at the row (as a one-row call draws)
    const float eps =
        NOISE == LOTTS_NOISE_TENSOR ? noise
        : p.seeds != nullptr
            ? philox_normal(static_cast<uint64_t>(p.seeds[b]),
                            static_cast<uint64_t>(i - b * p.per_batch))
            : philox_normal(p.seed, static_cast<uint64_t>(i));
    const float s = p.sigma != nullptr ? p.sigma[b] : p.sigma_value;
    inside = __fadd_rn(inside, __fmul_rn(s, eps));
  }
  return __fadd_rn(__fmul_rn(m, inside), __fmul_rn(__fsub_rn(1.0f, m), o));
}

// `other` / `noise` element: x0's dtype T, or float32 when p.in_is_float (mixed dtypes).
template <typename T>
__device__ __forceinline__ float input_value(const BlendParams& p, const void* ptr, int64_t i) {
  return p.in_is_float ? static_cast<const float*>(ptr)[i]
                       : to_float(static_cast<const T*>(ptr)[i]);
}

template <typename T, int NOISE, bool SMALL>
__global__ void __launch_bounds__(256) blend_kernel(const BlendParams p) {
  constexpr int VEC = 16 / sizeof(T);
  const T* __restrict__ x0 = static_cast<const T*>(p.x0);
  T* __restrict__ out = static_cast<T*>(p.out);
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  const int64_t tid = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  int64_t scalar_start = 0;
  if (p.aligned) {  // all streamed tensors of dtype T, 16-byte aligned
    const T* __restrict__ other = static_cast<const T*>(p.other);
    const T* __restrict__ noise = static_cast<const T*>(p.noise);
    const int64_t num_vec = p.numel / VEC;
    for (int64_t v = tid; v < num_vec; v += stride) {
      const int64_t base = v * VEC;
      const Vec<T, VEC> xv = load_vec<T, VEC>(x0 + base);
      const Vec<T, VEC> ov = load_vec<T, VEC>(other + base);
      Vec<T, VEC> nv;
      if (NOISE == LOTTS_NOISE_TENSOR) nv = load_vec<T, VEC>(noise + base);
      // Widen before the element loop: packed 16-bit pairs kept live across the Philox cosf
      // (whose slow path is a subroutine call) made ptxas spill one on sm_90.
      float xf[VEC], of[VEC];
#pragma unroll
      for (int j = 0; j < VEC; ++j) {
        xf[j] = to_float(xv.v[j]);
        of[j] = to_float(ov.v[j]);
      }
      Vec<T, VEC> result;
#pragma unroll
      for (int j = 0; j < VEC; ++j) {
        const float n = NOISE == LOTTS_NOISE_TENSOR ? to_float(nv.v[j]) : 0.0f;
        result.v[j] = from_float<T>(blend_one<NOISE, SMALL>(p, base + j, xf[j], of[j], n));
      }
      store_vec<T, VEC>(out + base, result);
    }
    scalar_start = num_vec * VEC;
  }
  // scalar tail, or everything when misaligned / mixed dtypes
  for (int64_t i = scalar_start + tid; i < p.numel; i += stride) {
    const float n = NOISE == LOTTS_NOISE_TENSOR ? input_value<T>(p, p.noise, i) : 0.0f;
    out[i] = from_float<T>(
        blend_one<NOISE, SMALL>(p, i, to_float(x0[i]), input_value<T>(p, p.other, i), n));
  }
}

bool aligned_to(const void* ptr, size_t bytes) {
  return ptr == nullptr || reinterpret_cast<uintptr_t>(ptr) % bytes == 0;
}

int multiprocessors() {
  static int sm_count[64] = {0};
  int device = 0;
  if (cudaGetDevice(&device) != cudaSuccess) device = 0;
  int sms = device < 64 ? sm_count[device] : 0;
  if (sms == 0) {
    if (cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device) != cudaSuccess ||
        sms <= 0)
      sms = 132;
    if (device < 64) sm_count[device] = sms;
  }
  return sms;
}

// Blocks for a grid-stride loop: enough for the work, at most the blocks resident at once.
int grid_size(int64_t work_items, int threads, int blocks_per_sm) {
  const int64_t wanted = (work_items + threads - 1) / threads;
  const int64_t cap =
      static_cast<int64_t>(multiprocessors()) * (blocks_per_sm > 0 ? blocks_per_sm : 1);
  return static_cast<int>(wanted < 1 ? 1 : (wanted < cap ? wanted : cap));
}

template <typename T, int NOISE, bool SMALL>
int launch_blend_kernel(const BlendParams& p, cudaStream_t stream) {
  constexpr int kThreads = 256;
  constexpr int VEC = 16 / sizeof(T);
  static int blocks_per_sm = 0;  // per instantiation; same on every device we target
  if (blocks_per_sm == 0) {
    if (cudaOccupancyMaxActiveBlocksPerMultiprocessor(
            &blocks_per_sm, blend_kernel<T, NOISE, SMALL>, kThreads, 0) != cudaSuccess)
      blocks_per_sm = 2048 / kThreads;
  }
  const int64_t items = p.aligned ? (p.numel + VEC - 1) / VEC : p.numel;
  blend_kernel<T, NOISE, SMALL>
      <<<grid_size(items, kThreads, blocks_per_sm), kThreads, 0, stream>>>(p);
  return cudaGetLastError();
}

template <typename T, int NOISE>
int launch_blend(const BlendParams& p, cudaStream_t stream) {
  return p.small ? launch_blend_kernel<T, NOISE, true>(p, stream)
                 : launch_blend_kernel<T, NOISE, false>(p, stream);
}

template <typename T>
int dispatch_noise(const BlendParams& p, int noise_mode, cudaStream_t stream) {
  switch (noise_mode) {
    case LOTTS_NOISE_NONE: return launch_blend<T, LOTTS_NOISE_NONE>(p, stream);
    case LOTTS_NOISE_TENSOR: return launch_blend<T, LOTTS_NOISE_TENSOR>(p, stream);
    case LOTTS_NOISE_PHILOX: return launch_blend<T, LOTTS_NOISE_PHILOX>(p, stream);
    default: return LOTTS_ERR_BAD_ARGUMENT;
  }
}

}  // namespace
}  // namespace lotts

extern "C" int lotts_masked_noise_blend(const lotts_blend_args* args, lotts_stream_t stream) {
  using namespace lotts;
  if (args == nullptr || args->numel < 0 || args->ndim < 1 || args->ndim > 4 ||
      args->per_batch <= 0 || args->factors[0] < 1 || args->factors[1] < 1)
    return args != nullptr && args->numel == 0 ? 0 : LOTTS_ERR_BAD_ARGUMENT;
  if (args->numel == 0) return 0;
  for (int d = 0; d < 4; ++d)
    if (args->dims[d] < 1) return LOTTS_ERR_BAD_ARGUMENT;
  BlendParams p;
  p.x0 = args->x0;
  p.other = args->other;
  p.out = args->out;
  p.mask = args->mask;
  p.noise = args->noise;
  p.alpha = args->alpha;
  p.sigma = args->sigma;
  p.seeds = args->seeds;
  p.alpha_value = args->alpha_value;
  p.sigma_value = args->sigma_value;
  p.seed = args->seed;
  p.numel = args->numel;
  p.invert = args->invert != 0;
  p.ndim = args->ndim;
  p.upsample = args->factors[0] != 1 || args->factors[1] != 1;
  p.per_batch = args->per_batch;
  for (int d = 0; d < 4; ++d) {
    p.dims[d] = args->dims[d];
    p.strides[d] = args->mask_strides[d];
  }
  p.factors[0] = args->factors[0];
  p.factors[1] = args->factors[1];
  p.small = args->numel < (int64_t(1) << 31);
  if (p.small) {  // every divisor is <= numel < 2^31 here
    p.div_d1 = FastDiv(static_cast<uint32_t>(p.dims[1]));
    p.div_d2 = FastDiv(static_cast<uint32_t>(p.dims[2]));
    p.div_d3 = FastDiv(static_cast<uint32_t>(p.dims[3]));
    p.div_f2 = FastDiv(static_cast<uint32_t>(p.factors[0]));
    p.div_f3 = FastDiv(static_cast<uint32_t>(p.factors[1]));
    p.div_batch = FastDiv(static_cast<uint32_t>(p.per_batch));
  } else {
    p.div64_d1 = FastDiv64(static_cast<uint64_t>(p.dims[1]));
    p.div64_d2 = FastDiv64(static_cast<uint64_t>(p.dims[2]));
    p.div64_d3 = FastDiv64(static_cast<uint64_t>(p.dims[3]));
    p.div64_f2 = FastDiv64(static_cast<uint64_t>(p.factors[0]));
    p.div64_f3 = FastDiv64(static_cast<uint64_t>(p.factors[1]));
    p.div64_batch = FastDiv64(static_cast<uint64_t>(p.per_batch));
  }
  if (args->in_dtype != args->x_dtype && args->in_dtype != LOTTS_F32)
    return LOTTS_ERR_BAD_ARGUMENT;
  if (args->mask_dtype != LOTTS_U8 && args->mask_dtype != LOTTS_F32)
    return LOTTS_ERR_BAD_ARGUMENT;
  p.in_is_float = args->in_dtype != args->x_dtype;
  p.mask_is_float = args->mask_dtype == LOTTS_F32;
  p.aligned = !p.in_is_float && aligned_to(p.x0, 16) && aligned_to(p.out, 16) &&
              aligned_to(p.other, 16) &&
              (args->noise_mode != LOTTS_NOISE_TENSOR || aligned_to(p.noise, 16));
  cudaStream_t s = reinterpret_cast<cudaStream_t>(stream);
  switch (args->x_dtype) {
    case LOTTS_F32: return dispatch_noise<float>(p, args->noise_mode, s);
    case LOTTS_F16: return dispatch_noise<__half>(p, args->noise_mode, s);
    case LOTTS_BF16: return dispatch_noise<__nv_bfloat16>(p, args->noise_mode, s);
    default: return LOTTS_ERR_BAD_ARGUMENT;
  }
}

// ----- philox.normal on the device (tests, tools) ---------------------------------------------

namespace {
__global__ void philox_normal_kernel(float* out, int64_t numel, uint64_t seed) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < numel;
       i += stride)
    out[i] = lotts::philox_normal(seed, static_cast<uint64_t>(i));
}
}  // namespace

extern "C" int lotts_philox_normal(float* out, int64_t numel, uint64_t seed,
                                   lotts_stream_t stream) {
  if (numel < 0) return LOTTS_ERR_BAD_ARGUMENT;
  if (numel == 0) return 0;
  philox_normal_kernel<<<lotts::grid_size(numel, 256, 2048 / 256), 256, 0,
                         reinterpret_cast<cudaStream_t>(stream)>>>(out, numel, seed);
  return cudaGetLastError();
}

extern "C" const char* lotts_error_string(int code) {
  switch (code) {
    case LOTTS_ERR_BAD_ARGUMENT: return "lotts_kernels: invalid launcher argument";
    case LOTTS_ERR_ROW_TOO_LONG:
      return "lotts_kernels: quality_mask rows must have at most 2^31 - 1024 positions";
    default: return cudaGetErrorString(static_cast<cudaError_t>(code));
  }
}
