// The PyTorch op `fastflow_cpu::conv_block` (CPU) around the kernel of conv_block.cpp, and its C
// shim `aoti_torch_cpu_conv_block`, so that AOTInductor packages call it directly (no proxy
// executor). The Python wrapper (`fastflow.fused.cpu_block.conv_block`) raises typed errors first;
// these checks keep a direct call from reading out of bounds.
#include "conv_block.h"

#include <ATen/EmptyTensor.h>
#include <torch/csrc/inductor/aoti_torch/c/shim.h>
#include <torch/csrc/inductor/aoti_torch/utils.h>
#include <torch/library.h>

namespace {

const float* data_or_null(const std::optional<at::Tensor>& t) {
  return t.has_value() ? t->data_ptr<float>() : nullptr;
}

void check_tensor(const std::optional<at::Tensor>& t, const char* name, at::IntArrayRef shape) {
  if (!t.has_value()) return;
  TORCH_CHECK(t->scalar_type() == at::kFloat && t->device().is_cpu() && t->is_contiguous(),
              "conv_block: ", name, " must be a contiguous float32 CPU tensor");
  TORCH_CHECK(t->sizes() == shape, "conv_block: ", name, " must be ", shape, ", got ", t->sizes());
}

// The checks both ops share; fills the sizes of `a` (not its buffers) and returns the output's [h, w].
void check_block(const at::Tensor& x, int64_t cout, int64_t taps, const std::optional<at::Tensor>& bias,
                 const std::optional<at::Tensor>& norm_weight, const std::optional<at::Tensor>& norm_bias,
                 const std::optional<at::Tensor>& scale, const std::optional<at::Tensor>& shift, int64_t groups,
                 int64_t resample, const std::optional<at::Tensor>& add, const std::optional<at::Tensor>& residual,
                 fastflow_cpu::ConvBlockArgs& a) {
  TORCH_CHECK(x.dim() == 4 && x.scalar_type() == at::kFloat && x.device().is_cpu() && x.is_contiguous(),
              "conv_block: x must be a contiguous float32 CPU tensor [B, C, H, W]");
  const int64_t n = x.size(0), cin = x.size(1), hin = x.size(2), win = x.size(3);
  TORCH_CHECK(resample >= -1 && resample <= 1, "conv_block: resample must be -1, 0 or 1");
  TORCH_CHECK(resample != -1 || (hin % 2 == 0 && win % 2 == 0), "conv_block: 2× down needs even H and W");
  TORCH_CHECK(norm_weight.has_value() == norm_bias.has_value(), "conv_block: norm_weight and norm_bias go together");
  TORCH_CHECK(!norm_weight.has_value() || (groups > 0 && cin % groups == 0),
              "conv_block: ", cin, " channels do not split into ", groups, " groups");
  TORCH_CHECK(norm_weight.has_value() || (!scale.has_value() && !shift.has_value()),
              "conv_block: scale/shift modulate the GroupNorm");
  const int64_t h = resample == 1 ? 2 * hin : resample == -1 ? hin / 2 : hin;
  const int64_t w = resample == 1 ? 2 * win : resample == -1 ? win / 2 : win;
  check_tensor(bias, "bias", {cout});
  check_tensor(norm_weight, "norm_weight", {cin});
  check_tensor(norm_bias, "norm_bias", {cin});
  check_tensor(scale, "scale", {n, cin});
  check_tensor(shift, "shift", {n, cin});
  check_tensor(add, "add", {n, cout});
  check_tensor(residual, "residual", {n, cout, h, w});
  a.n = n, a.cin = cin, a.hin = hin, a.win = win, a.cout = cout, a.h = h, a.w = w, a.taps = static_cast<int>(taps);
}

// The buffers of the optional inputs and the output.
at::Tensor bind(const at::Tensor& x, const std::optional<at::Tensor>& bias, const std::optional<at::Tensor>& norm_weight,
                const std::optional<at::Tensor>& norm_bias, const std::optional<at::Tensor>& scale,
                const std::optional<at::Tensor>& shift, int64_t groups, double eps, bool act, int64_t resample,
                const std::optional<at::Tensor>& add, const std::optional<at::Tensor>& residual, double out_scale,
                fastflow_cpu::ConvBlockArgs& a) {
  at::Tensor y = at::detail::empty_cpu({a.n, a.cout, a.h, a.w}, at::kFloat, false, std::nullopt);  // no dispatch
  a.x = x.data_ptr<float>(), a.bias = data_or_null(bias), a.norm_weight = data_or_null(norm_weight);
  a.norm_bias = data_or_null(norm_bias), a.scale = data_or_null(scale), a.shift = data_or_null(shift);
  a.add = data_or_null(add), a.residual = data_or_null(residual), a.groups = groups, a.eps = eps, a.act = act;
  a.resample = resample, a.out_scale = static_cast<float>(out_scale), a.y = y.data_ptr<float>();
  return y;
}

}  // namespace

at::Tensor conv_block(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                      const std::optional<at::Tensor>& norm_weight, const std::optional<at::Tensor>& norm_bias,
                      const std::optional<at::Tensor>& scale, const std::optional<at::Tensor>& shift,
                      int64_t groups, double eps, bool act, int64_t resample,
                      const std::optional<at::Tensor>& add, const std::optional<at::Tensor>& residual,
                      double out_scale) {
  TORCH_CHECK(x.dim() == 4, "conv_block: x must be [B, C, H, W]");
  const int64_t cin = x.size(1);
  TORCH_CHECK(weight.dim() == 4 && weight.size(1) == cin && weight.size(2) == weight.size(3) &&
              (weight.size(2) == 3 || weight.size(2) == 1),
              "conv_block: weight must be [Cout, ", cin, ", 3, 3] or [Cout, ", cin, ", 1, 1], got ", weight.sizes());
  check_tensor(weight, "weight", weight.sizes());
  fastflow_cpu::ConvBlockArgs a{};
  check_block(x, weight.size(0), weight.size(2) * weight.size(3), bias, norm_weight, norm_bias, scale, shift, groups,
              resample, add, residual, a);
  at::Tensor y = bind(x, bias, norm_weight, norm_bias, scale, shift, groups, eps, act, resample, add, residual,
                      out_scale, a);
  a.weight = weight.data_ptr<float>();
  fastflow_cpu::run_conv_block(a);
  return y;
}

at::Tensor conv_block_q8(const at::Tensor& x, const at::Tensor& qweight, const at::Tensor& w_scale,
                         const std::optional<at::Tensor>& bias, const std::optional<at::Tensor>& norm_weight,
                         const std::optional<at::Tensor>& norm_bias, const std::optional<at::Tensor>& scale,
                         const std::optional<at::Tensor>& shift, int64_t groups, double eps, bool act,
                         int64_t resample, const std::optional<at::Tensor>& add,
                         const std::optional<at::Tensor>& residual, double out_scale) {
  TORCH_CHECK(x.dim() == 4, "conv_block_q8: x must be [B, C, H, W]");
  const int64_t blocks = (x.size(1) + 3) / 4;
  TORCH_CHECK(qweight.dim() == 4 && qweight.scalar_type() == at::kChar && qweight.is_contiguous() &&
              qweight.device().is_cpu() && qweight.size(1) == blocks && qweight.size(3) == 4 &&
              (qweight.size(2) == 9 || qweight.size(2) == 1),
              "conv_block_q8: qweight must be a contiguous int8 CPU tensor [Cout, ", blocks, ", 9 or 1, 4], got ",
              qweight.sizes());
  const int64_t cout = qweight.size(0);
  check_tensor(w_scale, "w_scale", {cout});
  fastflow_cpu::ConvBlockArgs a{};
  check_block(x, cout, qweight.size(2), bias, norm_weight, norm_bias, scale, shift, groups, resample, add, residual,
              a);
  at::Tensor y = bind(x, bias, norm_weight, norm_bias, scale, shift, groups, eps, act, resample, add, residual,
                      out_scale, a);
  a.qweight = qweight.data_ptr<int8_t>(), a.w_scale = w_scale.data_ptr<float>();
  fastflow_cpu::run_conv_block_q8(a);
  return y;
}

int64_t int8_levels() { return fastflow_cpu::int8_levels(); }

TORCH_LIBRARY(fastflow_cpu, m) {
  m.def("conv_block(Tensor x, Tensor weight, Tensor? bias, Tensor? norm_weight, Tensor? norm_bias, "
        "Tensor? scale, Tensor? shift, int groups, float eps, bool act, int resample, Tensor? add, "
        "Tensor? residual, float out_scale) -> Tensor");
  m.def("conv_block_q8(Tensor x, Tensor qweight, Tensor w_scale, Tensor? bias, Tensor? norm_weight, "
        "Tensor? norm_bias, Tensor? scale, Tensor? shift, int groups, float eps, bool act, int resample, "
        "Tensor? add, Tensor? residual, float out_scale) -> Tensor");
  m.def("int8_levels() -> int", &int8_levels);
}

TORCH_LIBRARY_IMPL(fastflow_cpu, CPU, m) {
  m.impl("conv_block", &conv_block);
  m.impl("conv_block_q8", &conv_block_q8);
}

namespace {
std::optional<at::Tensor> optional_tensor(AtenTensorHandle* h) {
  if (!h) return std::nullopt;
  return *torch::aot_inductor::tensor_handle_to_tensor_pointer(*h);
}
}  // namespace

// The C shim AOTInductor calls (`aot_inductor.custom_ops_to_c_shims`); same argument order.
extern "C" AOTI_TORCH_EXPORT AOTITorchError aoti_torch_cpu_conv_block(
    AtenTensorHandle x, AtenTensorHandle weight, AtenTensorHandle* bias, AtenTensorHandle* norm_weight,
    AtenTensorHandle* norm_bias, AtenTensorHandle* scale, AtenTensorHandle* shift, int64_t groups,
    double eps, int32_t act, int64_t resample, AtenTensorHandle* add, AtenTensorHandle* residual,
    double out_scale, AtenTensorHandle* ret0) {
  AOTI_TORCH_CONVERT_EXCEPTION_TO_ERROR_CODE({
    at::Tensor y = conv_block(*torch::aot_inductor::tensor_handle_to_tensor_pointer(x),
                              *torch::aot_inductor::tensor_handle_to_tensor_pointer(weight),
                              optional_tensor(bias), optional_tensor(norm_weight), optional_tensor(norm_bias),
                              optional_tensor(scale), optional_tensor(shift), groups, eps, act != 0,
                              resample, optional_tensor(add), optional_tensor(residual), out_scale);
    *ret0 = torch::aot_inductor::new_tensor_handle(std::move(y));
  });
}

extern "C" AOTI_TORCH_EXPORT AOTITorchError aoti_torch_cpu_conv_block_q8(
    AtenTensorHandle x, AtenTensorHandle qweight, AtenTensorHandle w_scale, AtenTensorHandle* bias,
    AtenTensorHandle* norm_weight, AtenTensorHandle* norm_bias, AtenTensorHandle* scale, AtenTensorHandle* shift,
    int64_t groups, double eps, int32_t act, int64_t resample, AtenTensorHandle* add, AtenTensorHandle* residual,
    double out_scale, AtenTensorHandle* ret0) {
  AOTI_TORCH_CONVERT_EXCEPTION_TO_ERROR_CODE({
    at::Tensor y = conv_block_q8(*torch::aot_inductor::tensor_handle_to_tensor_pointer(x),
                                 *torch::aot_inductor::tensor_handle_to_tensor_pointer(qweight),
                                 *torch::aot_inductor::tensor_handle_to_tensor_pointer(w_scale),
                                 optional_tensor(bias), optional_tensor(norm_weight), optional_tensor(norm_bias),
                                 optional_tensor(scale), optional_tensor(shift), groups, eps, act != 0, resample,
                                 optional_tensor(add), optional_tensor(residual), out_scale);
    *ret0 = torch::aot_inductor::new_tensor_handle(std::move(y));
  });
}
