// Device helpers shared by the lotts_kernels CUDA kernels: only CUDA toolkit headers.
//
// Exactness: these kernels reproduce lotts_kernels/reference.py operation by operation. Every
// float operation that must round like PyTorch's eager kernels uses an explicit *_rn intrinsic
// (__fadd_rn, __fmul_rn, __fdiv_rn, __fsqrt_rn), which nvcc never contracts into an FMA nor
// replaces with an approximation. Box-Muller's logf/cosf and denormal handling do follow the
// math flags, so these sources must be built WITHOUT --use_fast_math (it would swap in
// __logf/__cosf and flush denormals to zero, breaking "out == other where m == 0" for denormal
// `other`). nvcc 13 defines no macro for that flag, so the build flags live in
// lotts_kernels/cuda_build.py (and a test checks them).
#pragma once

#include <cuda_runtime.h>
#include <cuda_fp16.h>
#include <cuda_bf16.h>
#include <stdint.h>

namespace lotts {

// ----- element conversion -------------------------------------------------------------------

__device__ __forceinline__ float to_float(float v) { return v; }
__device__ __forceinline__ float to_float(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }
__device__ __forceinline__ float to_float(uint8_t v) { return v ? 1.0f : 0.0f; }

template <typename T> __device__ __forceinline__ T from_float(float v);
template <> __device__ __forceinline__ float from_float<float>(float v) { return v; }
template <> __device__ __forceinline__ __half from_float<__half>(float v) {
  return __float2half_rn(v);
}
template <> __device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float v) {
  return __float2bfloat16_rn(v);
}

// ----- vectors --------------------------------------------------------------------------------

// N elements loaded/stored as one aligned access (16 bytes -> ld.global.v4; 32 -> two of them).
template <typename T, int N>
struct alignas(sizeof(T) * N) Vec {
  T v[N];
};

template <typename T, int N>
__device__ __forceinline__ Vec<T, N> load_vec(const T* p) {
  return *reinterpret_cast<const Vec<T, N>*>(p);
}

template <typename T, int N>
__device__ __forceinline__ void store_vec(T* p, const Vec<T, N>& v) {
  *reinterpret_cast<Vec<T, N>*>(p) = v;
}

// ----- Philox4x32-10 + Box-Muller, as lotts_kernels/philox.py ---------------------------------

constexpr uint32_t kPhiloxM0 = 0xD2511F53u;
constexpr uint32_t kPhiloxM1 = 0xCD9E8D57u;
constexpr uint32_t kPhiloxW0 = 0x9E3779B9u;
constexpr uint32_t kPhiloxW1 = 0xBB67AE85u;
constexpr float kUniformScale = 5.9604644775390625e-08f;  // 2^-24
constexpr float kTwoPi = 6.2831854820251465f;             // float32(2*pi), as torch rounds it

struct Philox2 {
  uint32_t w0, w1;
};

// First two output words of Philox4x32-10 with key (seed lo, seed hi), counter (i lo, i hi, 0, 0).
__device__ __forceinline__ Philox2 philox4x32_10(uint64_t seed, uint64_t index) {
  uint32_t c0 = static_cast<uint32_t>(index);
  uint32_t c1 = static_cast<uint32_t>(index >> 32);
  uint32_t c2 = 0u, c3 = 0u;
  uint32_t k0 = static_cast<uint32_t>(seed);
  uint32_t k1 = static_cast<uint32_t>(seed >> 32);
#pragma unroll
  for (int round = 0; round < 10; ++round) {
    const uint32_t hi0 = __umulhi(kPhiloxM0, c0);
    const uint32_t lo0 = kPhiloxM0 * c0;
    const uint32_t hi1 = __umulhi(kPhiloxM1, c2);
    const uint32_t lo1 = kPhiloxM1 * c2;
    c0 = hi1 ^ c1 ^ k0;
    c1 = lo1;
    c2 = hi0 ^ c3 ^ k1;
    c3 = lo0;
    k0 += kPhiloxW0;
    k1 += kPhiloxW1;
  }
  return Philox2{c0, c1};
}

// (w >> 8 + 0.5) / 2^24: exact in float32, in (0, 1).
__device__ __forceinline__ float uniform_from_word(uint32_t w) {
  return __fmul_rn(__fadd_rn(static_cast<float>(w >> 8), 0.5f), kUniformScale);
}

// eps_i = sqrt(-2 ln u1) * cos(2 pi u2), in the reference's float32 operations.
__device__ __forceinline__ float philox_normal(uint64_t seed, uint64_t index) {
  const Philox2 w = philox4x32_10(seed, index);
  const float u1 = uniform_from_word(w.w0);
  const float u2 = uniform_from_word(w.w1);
  const float radius = __fsqrt_rn(__fmul_rn(-2.0f, logf(u1)));
  return __fmul_rn(radius, cosf(__fmul_rn(kTwoPi, u2)));
}

// ----- integer division by a runtime constant (multiply-high; n < 2^31) ------------------------

// PyTorch's IntDivider scheme: n / d == (umulhi(n, m) + n) >> s for n < 2^31.
struct FastDiv {
  uint32_t divisor;
  uint32_t multiplier;
  uint32_t shift;

  __host__ __device__ FastDiv() : divisor(1), multiplier(0), shift(0) {}
  __host__ explicit FastDiv(uint32_t d) : divisor(d) {
    shift = 0;
    while (shift < 32 && (uint64_t(1) << shift) < d) ++shift;
    const uint64_t one = 1;
    multiplier = static_cast<uint32_t>(((one << 32) * ((one << shift) - d)) / d + 1);
  }
  __device__ __forceinline__ uint32_t div(uint32_t n) const {
    return (__umulhi(n, multiplier) + n) >> shift;
  }
};

// The same for 64-bit n < 2^63 (tensors of 2^31 elements or more): a 64-bit `/` or `%` is a
// subroutine call in SASS, whose register saves ptxas reports as spills; this is two IMADs.
struct FastDiv64 {
  uint64_t divisor;
  uint64_t multiplier;
  uint32_t shift;

  __host__ __device__ FastDiv64() : divisor(1), multiplier(0), shift(0) {}
  __host__ explicit FastDiv64(uint64_t d) : divisor(d) {
    shift = 0;
    while (shift < 64 && (static_cast<unsigned __int128>(1) << shift) < d) ++shift;
    const unsigned __int128 one = 1;
    multiplier = static_cast<uint64_t>(((one << 64) * ((one << shift) - d)) / d + 1);
  }
  __host__ __device__ __forceinline__ uint64_t div(uint64_t n) const {
#ifdef __CUDA_ARCH__
    const uint64_t high = __umul64hi(n, multiplier);
#else
    const uint64_t high =
        static_cast<uint64_t>((static_cast<unsigned __int128>(n) * multiplier) >> 64);
#endif
    return (high + n) >> shift;
  }
};

// ----- block-wide reductions (blockDim.x a multiple of 32, at most 1024) ----------------------

__device__ __forceinline__ float warp_min(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = fminf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

}  // namespace lotts
