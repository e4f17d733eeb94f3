// Torch binding of the lotts_kernels CUDA launchers. Includes only torch/extension.h and the
// plain-C launcher header: no CUDA headers, so it compiles with the host compiler against any
// torch (the CUDA stream arrives from Python as an integer,
// torch.cuda.current_stream(device).cuda_stream). Inputs are checked here with TORCH_CHECK;
// lotts_kernels/ops/*.py (the CUDA launchers, built by lotts_kernels/cuda_build.py) prepare them (contiguity, mask layout).
#include <torch/extension.h>

#include "lotts_kernels.h"

namespace {

int dtype_code(const at::Tensor& t) {
  switch (t.scalar_type()) {
    case at::kFloat: return LOTTS_F32;
    case at::kHalf: return LOTTS_F16;
    case at::kBFloat16: return LOTTS_BF16;
    case at::kByte: return LOTTS_U8;
    case at::kBool: return LOTTS_U8;
    default: return -1;
  }
}

lotts_stream_t as_stream(int64_t stream) { return reinterpret_cast<lotts_stream_t>(stream); }

void check_status(int status, const char* what) {
  TORCH_CHECK(status == 0, what, " failed: ", lotts_error_string(status), " (code ", status,
              ")");
}

void check_cuda(const at::Tensor& t, const char* name, const at::Device& device) {
  TORCH_CHECK(t.is_cuda(), name, " must be a CUDA tensor, got device ", t.device());
  TORCH_CHECK(t.device() == device, name, " is on ", t.device(), " but x0/diff is on ", device);
}

void check_float(const at::Tensor& t, const char* name) {
  const int code = dtype_code(t);
  TORCH_CHECK(code == LOTTS_F32 || code == LOTTS_F16 || code == LOTTS_BF16, name,
              " must be float32, float16 or bfloat16, got ", t.scalar_type());
}

std::vector<at::Tensor> quality_mask(const at::Tensor& diff, const at::Tensor& orig, double lam,
                                     int64_t k, int64_t stream) {
  const at::Device device = diff.device();
  check_cuda(diff, "diff", device);
  check_cuda(orig, "orig", device);
  check_float(diff, "diff");
  TORCH_CHECK(orig.scalar_type() == diff.scalar_type(), "orig has dtype ", orig.scalar_type(),
              " but diff has ", diff.scalar_type(), "; convert both to one dtype");
  TORCH_CHECK(diff.dim() == 2 && orig.sizes() == diff.sizes(),
              "diff and orig must both be (B, N), got ", diff.sizes(), " and ", orig.sizes());
  TORCH_CHECK(diff.size(1) >= 1, "rows need at least one position");
  TORCH_CHECK(diff.stride(1) == 1 && orig.stride(1) == 1,
              "diff and orig need unit column stride (call .contiguous())");
  TORCH_CHECK(k >= 0 && k <= diff.size(1), "k must lie in [0, N], got ", k);
  const at::DeviceGuard guard(device);
  auto heat = at::empty(diff.sizes(), diff.options().dtype(at::kFloat));
  auto mask = at::empty(diff.sizes(), diff.options().dtype(at::kBool));
  if (diff.size(0) > 0) {
    check_status(lotts_quality_mask(diff.data_ptr(), orig.data_ptr(), dtype_code(diff),
                                    diff.size(0), diff.size(1), diff.stride(0), orig.stride(0),
                                    static_cast<float>(lam), k, heat.data_ptr<float>(),
                                    reinterpret_cast<uint8_t*>(mask.data_ptr<bool>()),
                                    as_stream(stream)),
                 "lotts_quality_mask");
  }
  return {heat, mask};
}

at::Tensor masked_noise_blend(const at::Tensor& x0, const at::Tensor& other,
                              const at::Tensor& mask, std::vector<int64_t> dims,
                              std::vector<int64_t> mask_strides, std::vector<int64_t> factors,
                              int64_t ndim, int64_t per_batch,
                              const c10::optional<at::Tensor>& alpha, double alpha_value,
                              const c10::optional<at::Tensor>& sigma, double sigma_value,
                              const c10::optional<at::Tensor>& noise, int64_t seed, bool use_seed,
                              const c10::optional<at::Tensor>& seeds, bool invert,
                              int64_t stream) {
  const at::Device device = x0.device();
  check_cuda(x0, "x0", device);
  check_cuda(other, "other", device);
  check_cuda(mask, "mask", device);
  check_float(x0, "x0");
  check_float(other, "other");
  TORCH_CHECK(x0.is_contiguous() && other.is_contiguous(), "x0 and other must be contiguous");
  TORCH_CHECK(other.sizes() == x0.sizes(), "other has shape ", other.sizes(), " but x0 has ",
              x0.sizes());
  TORCH_CHECK(other.scalar_type() == x0.scalar_type() || other.scalar_type() == at::kFloat,
              "other must have x0's dtype or float32, got ", other.scalar_type());
  const int mask_code = dtype_code(mask);
  TORCH_CHECK(mask_code == LOTTS_U8 || mask_code == LOTTS_F32,
              "mask must be bool/uint8 or float32 here, got ", mask.scalar_type());
  TORCH_CHECK(dims.size() == 4 && mask_strides.size() == 4 && factors.size() == 2,
              "dims and mask_strides need 4 entries, factors 2");
  TORCH_CHECK(ndim >= 1 && ndim <= 4, "ndim must lie in [1, 4], got ", ndim);
  int64_t view_numel = 1;
  for (int d = 0; d < 4; ++d) {
    TORCH_CHECK(dims[d] >= 1 && mask_strides[d] >= 0, "bad mask layout");
    view_numel *= dims[d];
  }
  TORCH_CHECK(view_numel == x0.numel(), "the mask layout covers ", view_numel,
              " elements but x0 has ", x0.numel());
  TORCH_CHECK(factors[0] >= 1 && factors[1] >= 1, "upsampling factors must be >= 1");
  TORCH_CHECK(x0.numel() == 0 || (per_batch >= 1 && x0.numel() % per_batch == 0),
              "per_batch must divide numel");
  const int64_t batch = x0.dim() > 0 ? x0.size(0) : 1;
  for (const auto* coefficient : {&alpha, &sigma}) {
    if (coefficient->has_value()) {
      const at::Tensor& c = coefficient->value();
      check_cuda(c, "alpha/sigma", device);
      TORCH_CHECK(c.scalar_type() == at::kFloat && c.is_contiguous() && c.dim() == 1 &&
                      c.size(0) == batch,
                  "alpha/sigma tensors must be contiguous float32 (B,) = (", batch, ",), got ",
                  c.scalar_type(), " ", c.sizes());
    }
  }
  int noise_mode = LOTTS_NOISE_NONE;
  if (noise.has_value()) {
    const at::Tensor& n = noise.value();
    check_cuda(n, "noise", device);
    TORCH_CHECK(n.is_contiguous() && n.sizes() == x0.sizes(), "noise must be contiguous with ",
                "x0's shape");
    TORCH_CHECK(n.scalar_type() == other.scalar_type(),
                "noise must have other's dtype (x0's or float32), got ", n.scalar_type());
    TORCH_CHECK(!use_seed, "give noise or seed, not both");
    noise_mode = LOTTS_NOISE_TENSOR;
    TORCH_CHECK(!seeds.has_value(), "give noise or seeds, not both");
  } else if (use_seed) {
    TORCH_CHECK(seed >= 0, "seed must be in [0, 2^63)");
    TORCH_CHECK(!seeds.has_value(), "give seed or seeds, not both");
    noise_mode = LOTTS_NOISE_PHILOX;
  }
  if (seeds.has_value()) {
    const at::Tensor& s = seeds.value();
    check_cuda(s, "seeds", device);
    TORCH_CHECK(s.scalar_type() == at::kLong && s.is_contiguous() && s.dim() == 1 &&
                    s.size(0) == batch,
                "seeds must be contiguous int64 (B,) = (", batch, ",), got ", s.scalar_type(),
                " ", s.sizes());
    noise_mode = LOTTS_NOISE_PHILOX;
  }

  const at::DeviceGuard guard(device);
  auto out = at::empty(x0.sizes(), x0.options().memory_format(at::MemoryFormat::Contiguous));
  if (x0.numel() == 0) return out;
  lotts_blend_args args{};
  args.x0 = x0.data_ptr();
  args.other = other.data_ptr();
  args.out = out.data_ptr();
  args.mask = mask.data_ptr();
  args.noise = noise.has_value() ? noise.value().data_ptr() : nullptr;
  args.alpha = alpha.has_value() ? alpha.value().data_ptr<float>() : nullptr;
  args.sigma = sigma.has_value() ? sigma.value().data_ptr<float>() : nullptr;
  args.seeds = seeds.has_value() ? seeds.value().data_ptr<int64_t>() : nullptr;
  args.x_dtype = dtype_code(x0);
  args.in_dtype = dtype_code(other);
  args.mask_dtype = mask_code;
  args.noise_mode = noise_mode;
  args.invert = invert ? 1 : 0;
  args.alpha_value = static_cast<float>(alpha_value);
  args.sigma_value = static_cast<float>(sigma_value);
  args.seed = static_cast<uint64_t>(seed);
  args.numel = x0.numel();
  args.per_batch = per_batch;
  args.ndim = static_cast<int>(ndim);
  for (int d = 0; d < 4; ++d) {
    args.dims[d] = dims[d];
    args.mask_strides[d] = mask_strides[d];
  }
  args.factors[0] = factors[0];
  args.factors[1] = factors[1];
  check_status(lotts_masked_noise_blend(&args, as_stream(stream)), "lotts_masked_noise_blend");
  return out;
}

at::Tensor philox_normal(const at::Tensor& like, int64_t numel, int64_t seed, int64_t stream) {
  TORCH_CHECK(like.is_cuda(), "philox_normal needs a CUDA device (pass a CUDA tensor as like)");
  TORCH_CHECK(numel >= 0 && seed >= 0, "numel and seed must be non-negative");
  const at::DeviceGuard guard(like.device());
  auto out = at::empty({numel}, like.options().dtype(at::kFloat));
  check_status(lotts_philox_normal(out.data_ptr<float>(), numel, static_cast<uint64_t>(seed),
                                   as_stream(stream)),
               "lotts_philox_normal");
  return out;
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "lotts_kernels CUDA kernels (quality_mask, masked_noise_blend)";
  m.def("quality_mask", &quality_mask, "heat and top-k mask per row", py::arg("diff"),
        py::arg("orig"), py::arg("lam"), py::arg("k"), py::arg("stream"));
  m.def("masked_noise_blend", &masked_noise_blend, "masked noise blend", py::arg("x0"),
        py::arg("other"), py::arg("mask"), py::arg("dims"), py::arg("mask_strides"),
        py::arg("factors"), py::arg("ndim"), py::arg("per_batch"), py::arg("alpha"),
        py::arg("alpha_value"), py::arg("sigma"), py::arg("sigma_value"), py::arg("noise"),
        py::arg("seed"), py::arg("use_seed"), py::arg("seeds"), py::arg("invert"),
        py::arg("stream"));
  m.def("philox_normal", &philox_normal, "philox.normal(seed) as float32 (numel,)",
        py::arg("like"), py::arg("numel"), py::arg("seed"), py::arg("stream"));
}
