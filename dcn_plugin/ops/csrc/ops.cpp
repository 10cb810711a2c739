// Operator schemas (TORCH_LIBRARY) and autocast kernels. Each operator's validator, driver and Meta
// kernel live in its own file (deform_conv.cpp); the CPU and CUDA kernels in cpu/ and cuda/.
//
// dcn_plugin::modulated_deform_conv2d           forward; mask None = DCNv1
// dcn_plugin::modulated_deform_conv2d_backward  gradients of input, offset, mask, weight, bias
//                                               (output_mask says which; the others come back empty)
// Autograd is registered from Python (dcn_plugin/ops/functional.py).
//
// On CUDA the convolution's and RoI pooling's public ops are Python kernels (dcn_plugin/ops/functional.py) that choose the
// Triton kernels (dcn_plugin/ops/triton) or the C++ CUDA kernels, registered under the private names
// _modulated_deform_conv2d_cuda, _deform_roi_pool_cuda and their _backward_cuda (same schemas). The
// Triton path validates through the _check_*_args ops: each op's one validator (deform_conv.cpp,
// deform_roi_pool.cpp), exposed as ops that return nothing.
#include <ATen/ATen.h>
#include <ATen/autocast_mode.h>
#include <Python.h>
#include <c10/core/impl/LocalDispatchKeySet.h>
#include <torch/library.h>

#include <string>

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

// Digest of the sources the library was built from: setup.py passes it as bare hex digits (no quotes
// to survive the build's shell), dcn_plugin/ops/_library.py compares it with the sources next to the
// package.
#define DCN_STRINGIZE_(x) #x
#define DCN_STRINGIZE(x) DCN_STRINGIZE_(x)
#ifdef DCN_SOURCE_DIGEST
std::string source_digest() { return DCN_STRINGIZE(DCN_SOURCE_DIGEST); }
#else
std::string source_digest() { return "unknown"; }
#endif

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
  m.def(
      "_modulated_deform_conv2d_cuda(Tensor input, Tensor offset, Tensor? mask, Tensor weight, Tensor? bias, "
      "int[2] stride, int[2] padding, int[2] dilation, int groups, int deform_groups) -> Tensor");
  m.def(
      "_modulated_deform_conv2d_backward_cuda(Tensor grad_output, Tensor input, Tensor offset, Tensor? mask, "
      "Tensor weight, int[2] stride, int[2] padding, int[2] dilation, int groups, int deform_groups, "
      "bool[5] output_mask) -> (Tensor, Tensor, Tensor, Tensor, Tensor)");
  m.def(
      "_check_modulated_deform_conv2d_args(Tensor input, Tensor offset, Tensor? mask, Tensor weight, Tensor? bias, "
      "int[2] stride, int[2] padding, int[2] dilation, int groups, int deform_groups) -> ()");
  m.def(
      "_check_modulated_deform_conv2d_backward_args(Tensor grad_output, Tensor input, Tensor offset, Tensor? mask, "
      "Tensor weight, int[2] stride, int[2] padding, int[2] dilation, int groups, int deform_groups) -> ()");
  // deformable RoI pooling (deform_roi_pool.cpp); offset None = RoIAlign-style pooling. The backward
  // gives the gradients of input and offset (output_mask says which; the other comes back empty).
  m.def(
      "deform_roi_pool(Tensor input, Tensor rois, Tensor? offset, int[2] output_size, float spatial_scale, "
      "int sampling_ratio, float gamma) -> Tensor");
  m.def(
      "deform_roi_pool_backward(Tensor grad_output, Tensor input, Tensor rois, Tensor? offset, int[2] output_size, "
      "float spatial_scale, int sampling_ratio, float gamma, bool[2] output_mask) -> (Tensor, Tensor)");
  // the same split for RoI pooling: C++ CUDA kernels under private names, the validator (with the checks
  // on the RoIs' values) as ops for the Triton kernels
  m.def(
      "_deform_roi_pool_cuda(Tensor input, Tensor rois, Tensor? offset, int[2] output_size, float spatial_scale, "
      "int sampling_ratio, float gamma) -> Tensor");
  m.def(
      "_deform_roi_pool_backward_cuda(Tensor grad_output, Tensor input, Tensor rois, Tensor? offset, "
      "int[2] output_size, float spatial_scale, int sampling_ratio, float gamma, bool[2] output_mask) -> "
      "(Tensor, Tensor)");
  m.def(
      "_check_deform_roi_pool_args(Tensor input, Tensor rois, Tensor? offset, int[2] output_size, "
      "float spatial_scale, int sampling_ratio, float gamma) -> ()");
  m.def(
      "_check_deform_roi_pool_backward_args(Tensor grad_output, Tensor input, Tensor rois, Tensor? offset, "
      "int[2] output_size, float spatial_scale, int sampling_ratio, float gamma) -> ()");
  m.def("_source_digest() -> str", &source_digest);
  m.def("_built_with_cuda() -> bool", &built_with_cuda);
}

TORCH_LIBRARY_IMPL(dcn_plugin, AutocastCUDA, m) {
  m.impl("modulated_deform_conv2d", forward_autocast<c10::DispatchKey::AutocastCUDA, c10::DeviceType::CUDA>);
}

TORCH_LIBRARY_IMPL(dcn_plugin, AutocastCPU, m) {
  m.impl("modulated_deform_conv2d", forward_autocast<c10::DispatchKey::AutocastCPU, c10::DeviceType::CPU>);
}

// ----------------------------------------------------------------------------- deform_roi_pool autocast
// As the convolution: the autocast dtype on CUDA, float32 on CPU. The RoIs are cast to float32, not to
// half: image coordinates in half precision would lose whole pixels.
namespace {

template <c10::DispatchKey autocast_key, c10::DeviceType device_type>
at::Tensor deform_roi_pool_autocast(const at::Tensor& input, const at::Tensor& rois,
                                    const std::optional<at::Tensor>& offset, at::IntArrayRef output_size,
                                    double spatial_scale, int64_t sampling_ratio, double gamma) {
  c10::impl::ExcludeDispatchKeyGuard no_autocast(autocast_key);
  const at::ScalarType to = device_type == c10::DeviceType::CUDA ? at::autocast::get_autocast_dtype(at::kCUDA)
                                                                 : at::kFloat;
  std::optional<at::Tensor> off = offset;
  if (off.has_value() && off->defined()) off = at::autocast::cached_cast(to, *off, device_type);
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("dcn_plugin::deform_roi_pool", "")
                       .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&,
                                         at::IntArrayRef, double, int64_t, double)>();
  return op.call(at::autocast::cached_cast(to, input, device_type),
                 at::autocast::cached_cast(at::kFloat, rois, device_type), off, output_size, spatial_scale,
                 sampling_ratio, gamma);
}

}  // namespace

TORCH_LIBRARY_IMPL(dcn_plugin, AutocastCUDA, m) {
  m.impl("deform_roi_pool", deform_roi_pool_autocast<c10::DispatchKey::AutocastCUDA, c10::DeviceType::CUDA>);
}

TORCH_LIBRARY_IMPL(dcn_plugin, AutocastCPU, m) {
  m.impl("deform_roi_pool", deform_roi_pool_autocast<c10::DispatchKey::AutocastCPU, c10::DeviceType::CPU>);
}

}  // namespace dcn_plugin
