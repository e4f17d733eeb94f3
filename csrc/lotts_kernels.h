/* C interface of the lotts_kernels CUDA launchers (csrc/*.cu).
 *
 * Plain C with no CUDA or torch headers, so that both the nvcc-compiled kernels and the
 * host-compiled torch binding (binding.cpp) include it. `lotts_stream_t` is the very type
 * cudaStream_t names (a pointer to the opaque CUstream_st); the binding receives the stream as
 * an integer from Python (torch.cuda.current_stream().cuda_stream).
 * Every launcher returns 0 or a cudaError_t code; lotts_error_string() describes it.
 */
#ifndef LOTTS_KERNELS_H_
#define LOTTS_KERNELS_H_

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

struct CUstream_st;
typedef struct CUstream_st* lotts_stream_t;

/* element types of tensors handed to the launchers */
enum lotts_dtype { LOTTS_F32 = 0, LOTTS_F16 = 1, LOTTS_BF16 = 2, LOTTS_U8 = 3 };

/* eps source of masked_noise_blend */
enum lotts_noise { LOTTS_NOISE_NONE = 0, LOTTS_NOISE_TENSOR = 1, LOTTS_NOISE_PHILOX = 2 };

/* Longest quality_mask row: the kernel's int loop counters step by the block size (at most
 * 1024 threads), so i + blockDim.x must stay <= INT32_MAX for every i < n: n <= 2^31 - 1024.
 * lotts_kernels.ops.quality_mask.MAX_CUDA_N is the same number (a test reads this line). */
#define LOTTS_QUALITY_MASK_MAX_N 2147482624

/* Errors of our own, beyond cudaError_t's range. */
enum { LOTTS_ERR_BAD_ARGUMENT = 100000, LOTTS_ERR_ROW_TOO_LONG = 100001 };

/* quality_mask: diff and orig are (batch, n) of `dtype` (both the same) with row strides
 * stride_d / stride_o (elements, unit column stride); heat is float32 (batch, n) contiguous,
 * mask uint8 (0/1) (batch, n) contiguous; k positions per row are selected.
 * 1 <= n <= LOTTS_QUALITY_MASK_MAX_N. */
int lotts_quality_mask(const void* diff, const void* orig, int dtype, int64_t batch, int64_t n,
                       int64_t stride_d, int64_t stride_o, float lam, int64_t k, float* heat,
                       uint8_t* mask, lotts_stream_t stream);

/* masked_noise_blend on contiguous x0/other/out(/noise) of `numel` elements; the mask is read
 * at i0*s0 + i1*s1 + (i2/f2)*s2 + (i3/f3)*s3 for the flat index's coordinates (i0..i3) in
 * dims[0..3] (see lotts_kernels/ops/masked_noise_blend_layout.py). Philox noise uses key `seed`
 * and counter i, or, with `seeds`, key seeds[b] and counter i - b*per_batch for the element's
 * batch row b (each row then draws what a one-row call with seed seeds[b] draws). */
typedef struct lotts_blend_args {
  const void* x0;       /* x_dtype */
  const void* other;    /* in_dtype */
  void* out;            /* x_dtype */
  const void* mask;     /* mask_dtype: LOTTS_U8 (0/1) or LOTTS_F32 */
  const void* noise;    /* in_dtype, when noise_mode == LOTTS_NOISE_TENSOR */
  const float* alpha;   /* (batch,) or NULL: then alpha_value */
  const float* sigma;   /* (batch,) or NULL: then sigma_value */
  const int64_t* seeds; /* (batch,) per-row Philox seeds (noise_mode PHILOX) or NULL: seed */
  int x_dtype;          /* LOTTS_F32, LOTTS_F16 or LOTTS_BF16 */
  int in_dtype;         /* x_dtype or LOTTS_F32 */
  int mask_dtype;
  int noise_mode;
  int invert;
  float alpha_value;
  float sigma_value;
  uint64_t seed;
  int64_t numel;
  int64_t per_batch;    /* numel / batch */
  int ndim;             /* 1..4 trailing dims in use */
  int64_t dims[4];
  int64_t mask_strides[4];
  int64_t factors[2];   /* upsampling factors of dims 2 and 3 */
} lotts_blend_args;

int lotts_masked_noise_blend(const lotts_blend_args* args, lotts_stream_t stream);

/* Fill `out` (float32, numel) with philox.normal(seed) (for tests and tools). */
int lotts_philox_normal(float* out, int64_t numel, uint64_t seed, lotts_stream_t stream);

const char* lotts_error_string(int code);

#ifdef __cplusplus
}
#endif

#endif /* LOTTS_KERNELS_H_ */
