// Operator schemas (TORCH_LIBRARY), argument validation shared by all backends, autocast kernels.
//
// dcn_plugin::modulated_deform_conv2d           forward; mask None = DCNv1
// dcn_plugin::modulated_deform_conv2d_backward  gradients of input, offset, mask, weight, bias
//                                               (output_mask says which; the others come back empty)
// Autograd and fake (meta) kernels are registered from Python (dcn_plugin/ops/functional.py).
#include <ATen/ATen.h>
#include <ATen/autocast_mode.h>
#include <Python.h>
#include <c10/core/impl/LocalDispatchKeySet.h>
#include <torch/library.h>

#include <sstream>

#include "dcn_common.h"

extern "C" {
// Makes `import dcn_plugin._C` load this library (which registers the operators); no Python API.
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
}

namespace dcn_plugin {

namespace {

// Messages print shapes and dtypes as Python does ("(2, 3)", "(5,)", "torch.float32"), so the C++
// checks read the same as the Python ones in dcn_plugin/ops/functional.py.
std::string tuple_str(at::IntArrayRef v) {
  std::ostringstream ss;
  ss << "(";
  for (size_t i = 0; i < v.size(); ++i) ss << (i ? ", " : "") << v[i];
  ss << (v.size() == 1 ? ",)" : ")");
  return ss.str();
}

std::string shape_str(const at::Tensor& t) { return tuple_str(t.sizes()); }
std::string shape_str(std::initializer_list<int64_t> s) { return tuple_str(at::IntArrayRef(s)); }

std::string dtype_str(at::ScalarType t) {
  switch (t) {
    case at::kFloat: return "torch.float32";
    case at::kDouble: return "torch.float64";
    case at::kHalf: return "torch.float16";
    case at::kBFloat16: return "torch.bfloat16";
    case at::kLong: return "torch.int64";
    case at::kInt: return "torch.int32";
    default: return std::string("torch.") + c10::toString(t);
  }
}

void check_pair(at::IntArrayRef v, const char* name, int64_t low) {
  TORCH_CHECK_VALUE(v.size() == 2, name, " must be a pair of ints, got ", tuple_str(v));
  TORCH_CHECK_VALUE(v[0] >= low && v[1] >= low, name, " must be a pair of ",
                    low == 1 ? "positive" : "non-negative", " ints, got ", tuple_str(v));
}

bool is_allowed_dtype(at::ScalarType t, bool cuda) {
  if (t == at::kFloat || t == at::kDouble) return true;
  return cuda && (t == at::kHalf || t == at::kBFloat16);
}

}  // namespace

ConvParams check_and_get_params(const at::Tensor& input, const at::Tensor& offset,
                                const std::optional<at::Tensor>& mask, const at::Tensor& weight,
                                const std::optional<at::Tensor>& bias, at::IntArrayRef stride,
                                at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups,
                                int64_t deform_groups, bool cuda_dtypes) {
  const bool has_mask = mask.has_value() && mask->defined();
  const bool has_bias = bias.has_value() && bias->defined();
  TORCH_CHECK_VALUE(input.dim() == 4, "input must be a 4-D tensor (N, C, H, W), got shape ", shape_str(input));
  TORCH_CHECK_VALUE(offset.dim() == 4, "offset must be a 4-D tensor, got shape ", shape_str(offset));
  TORCH_CHECK_VALUE(weight.dim() == 4, "weight must be a 4-D tensor (O, C/groups, kh, kw), got shape ",
                    shape_str(weight));
  if (has_mask) TORCH_CHECK_VALUE(mask->dim() == 4, "mask must be a 4-D tensor, got shape ", shape_str(*mask));
  if (has_bias) TORCH_CHECK_VALUE(bias->dim() == 1, "bias must be a 1-D tensor, got shape ", shape_str(*bias));

  const auto dev = input.device();
  TORCH_CHECK_VALUE(offset.device() == dev, "offset must be on the same device as input (", dev, "), got ",
                    offset.device());
  TORCH_CHECK_VALUE(weight.device() == dev, "weight must be on the same device as input (", dev, "), got ",
                    weight.device());
  if (has_mask) TORCH_CHECK_VALUE(mask->device() == dev, "mask must be on the same device as input (", dev,
                                  "), got ", mask->device());
  if (has_bias) TORCH_CHECK_VALUE(bias->device() == dev, "bias must be on the same device as input (", dev,
                                  "), got ", bias->device());
  const auto dt = input.scalar_type();
  TORCH_CHECK_TYPE(is_allowed_dtype(dt, cuda_dtypes), "input dtype must be ",
                   cuda_dtypes ? "float16, bfloat16, float32 or float64 on cuda" : "float32 or float64 on cpu",
                   ", got ", dtype_str(dt));
  TORCH_CHECK_TYPE(offset.scalar_type() == dt, "offset dtype must match input dtype (", dtype_str(dt), "), got ", dtype_str(offset.scalar_type()));
  TORCH_CHECK_TYPE(weight.scalar_type() == dt, "weight dtype must match input dtype (", dtype_str(dt), "), got ", dtype_str(weight.scalar_type()));
  if (has_mask) TORCH_CHECK_TYPE(mask->scalar_type() == dt, "mask dtype must match input dtype (", dtype_str(dt), "), got ", dtype_str(mask->scalar_type()));
  if (has_bias) TORCH_CHECK_TYPE(bias->scalar_type() == dt, "bias dtype must match input dtype (", dtype_str(dt), "), got ", dtype_str(bias->scalar_type()));

  check_pair(stride, "stride", 1);
  check_pair(padding, "padding", 0);
  check_pair(dilation, "dilation", 1);
  TORCH_CHECK_VALUE(groups >= 1, "groups must be a positive int, got ", groups);
  TORCH_CHECK_VALUE(deform_groups >= 1, "deform_groups must be a positive int, got ", deform_groups);

  ConvParams p;
  p.n = input.size(0); p.c = input.size(1); p.h = input.size(2); p.w = input.size(3);
  p.o = weight.size(0); p.kh = weight.size(2); p.kw = weight.size(3);
  p.stride_h = stride[0]; p.stride_w = stride[1];
  p.pad_h = padding[0]; p.pad_w = padding[1];
  p.dil_h = dilation[0]; p.dil_w = dilation[1];
  p.groups = groups; p.deform_groups = deform_groups; p.has_mask = has_mask;

  TORCH_CHECK_VALUE(p.kh >= 1 && p.kw >= 1, "weight kernel size must be positive, got weight shape ",
                    shape_str(weight));
  TORCH_CHECK_VALUE(p.c % groups == 0, "input channels (", p.c, ") must be divisible by groups (", groups, ")");
  TORCH_CHECK_VALUE(p.o % groups == 0, "weight out channels (", p.o, ") must be divisible by groups (", groups,
                    ")");
  TORCH_CHECK_VALUE(weight.size(1) * groups == p.c, "weight must have input channels / groups = ", p.c, " / ",
                    groups, " = ", p.c / groups, " channels in dim 1, got weight shape ", shape_str(weight));
  TORCH_CHECK_VALUE(p.c % deform_groups == 0, "input channels (", p.c, ") must be divisible by deform_groups (",
                    deform_groups, ")");
  const int64_t eff_h = p.dil_h * (p.kh - 1) + 1, eff_w = p.dil_w * (p.kw - 1) + 1;
  const int64_t ph = p.h + 2 * p.pad_h, pw = p.w + 2 * p.pad_w;
  TORCH_CHECK_VALUE(eff_h <= ph && eff_w <= pw, "the dilated kernel (", eff_h, "x", eff_w,
                    ") is larger than the padded input (", ph, "x", pw, "): input ", shape_str(input), ", weight ",
                    shape_str(weight), ", padding ", padding, ", dilation ", dilation);
  p.ho = (ph - eff_h) / p.stride_h + 1;
  p.wo = (pw - eff_w) / p.stride_w + 1;
  const int64_t kk = p.k();
  TORCH_CHECK_VALUE(offset.sizes() == at::IntArrayRef({p.n, 2 * deform_groups * kk, p.ho, p.wo}),
                    "offset must have shape (N, 2*deform_groups*kh*kw, Ho, Wo) = ",
                    shape_str({p.n, 2 * deform_groups * kk, p.ho, p.wo}), ", got ", shape_str(offset));
  if (has_mask)
    TORCH_CHECK_VALUE(mask->sizes() == at::IntArrayRef({p.n, deform_groups * kk, p.ho, p.wo}),
                      "mask must have shape (N, deform_groups*kh*kw, Ho, Wo) = ",
                      shape_str({p.n, deform_groups * kk, p.ho, p.wo}), ", got ", shape_str(*mask));
  if (has_bias)
    TORCH_CHECK_VALUE(bias->size(0) == p.o, "bias must have shape (out_channels,) = (", p.o, ",), got ",
                      shape_str(*bias));
  return p;
}

void check_grad_output(const at::Tensor& grad_output, const at::Tensor& input, const ConvParams& p) {
  TORCH_CHECK_VALUE(grad_output.sizes() == at::IntArrayRef({p.n, p.o, p.ho, p.wo}),
                    "grad_output must have the output's shape ", shape_str({p.n, p.o, p.ho, p.wo}), ", got ",
                    shape_str(grad_output));
  TORCH_CHECK_TYPE(grad_output.scalar_type() == input.scalar_type(), "grad_output dtype must match input dtype (",
                   dtype_str(input.scalar_type()), "), got ", dtype_str(grad_output.scalar_type()));
  TORCH_CHECK_VALUE(grad_output.device() == input.device(), "grad_output must be on the same device as input (",
                    input.device(), "), got ", grad_output.device());
}

namespace {

int64_t abi_version() { return kAbiVersion; }

bool built_with_cuda() {
#ifdef WITH_CUDA
  return true;
#else
  return false;
#endif
}

// Autocast: on CUDA the op runs natively in the autocast dtype (float16/bfloat16, float32
// accumulation), like conv2d; on CPU the kernels are float32/float64, so the op runs in float32.
// float64 inputs are left alone (autocast never touches them).
template <c10::DispatchKey autocast_key, c10::DeviceType device_type>
at::Tensor forward_autocast(const at::Tensor& input, const at::Tensor& offset, const std::optional<at::Tensor>& mask,
                            const at::Tensor& weight, const std::optional<at::Tensor>& bias, at::IntArrayRef stride,
                            at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups,
                            int64_t deform_groups) {
  c10::impl::ExcludeDispatchKeyGuard no_autocast(autocast_key);
  const at::ScalarType to = device_type == c10::DeviceType::CUDA ? at::autocast::get_autocast_dtype(at::kCUDA)
                                                                 : at::kFloat;
  auto cast = [&](const at::Tensor& t) { return at::autocast::cached_cast(to, t, device_type); };
  auto cast_opt = [&](const std::optional<at::Tensor>& t) -> std::optional<at::Tensor> {
    if (!t.has_value() || !t->defined()) return t;
    return cast(*t);
  };
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("dcn_plugin::modulated_deform_conv2d", "")
                       .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&,
                                         const at::Tensor&, const std::optional<at::Tensor>&, at::IntArrayRef,
                                         at::IntArrayRef, at::IntArrayRef, int64_t, int64_t)>();
  return op.call(cast(input), cast(offset), cast_opt(mask), cast(weight), cast_opt(bias), stride, padding, dilation,
                 groups, deform_groups);
}

}  // namespace

TORCH_LIBRARY(dcn_plugin, m) {
  m.def(
      "modulated_deform_conv2d(Tensor input, Tensor offset, Tensor? mask, Tensor weight, Tensor? bias, "
      "int[2] stride, int[2] padding, int[2] dilation, int groups, int deform_groups) -> Tensor");
  m.def(
      "modulated_deform_conv2d_backward(Tensor grad_output, Tensor input, Tensor offset, Tensor? mask, "
      "Tensor weight, int[2] stride, int[2] padding, int[2] dilation, int groups, int deform_groups, "
      "bool[5] output_mask) -> (Tensor, Tensor, Tensor, Tensor, Tensor)");
  m.def("_abi_version() -> int", &abi_version);
  m.def("_built_with_cuda() -> bool", &built_with_cuda);
}

TORCH_LIBRARY_IMPL(dcn_plugin, AutocastCUDA, m) {
  m.impl("modulated_deform_conv2d", forward_autocast<c10::DispatchKey::AutocastCUDA, c10::DeviceType::CUDA>);
}

TORCH_LIBRARY_IMPL(dcn_plugin, AutocastCPU, m) {
  m.impl("modulated_deform_conv2d", forward_autocast<c10::DispatchKey::AutocastCPU, c10::DeviceType::CPU>);
}

}  // namespace dcn_plugin
