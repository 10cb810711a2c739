// Device-agnostic driver of the deformable RoI pooling: validation (the op's one validator, on
// int64_t sizes for the kernels and on SymInts for the Meta kernel), the checks on the RoIs' values,
// channels-last layout, output allocation, and the calls into the backend's kernels; the Meta kernels.
//
//   forward:  out (K, C, PH, PW) contiguous
//   backward: grad_input (N, C, H, W) in the input's layout (channels_last or contiguous; accumulated
//             in float32 for half/bfloat16), grad_offset (K, 2, PH, PW) contiguous; a gradient not asked
//             for comes back as an empty tensor. rois get no gradient (as in mmcv).
#include <ATen/ATen.h>
#include <ATen/record_function.h>
#include <c10/core/DeviceGuard.h>
#include <torch/library.h>

#include <cmath>
#include <limits>
#include <sstream>

#include "checks.h"
#include "deform_roi_pool.h"

namespace dcn_plugin {

// ----------------------------------------------------------------------------------- validation
namespace {

constexpr int64_t kMaxOutputSide = 65536;     // bins per side; K*C*PH*PW must still be allocatable
constexpr int64_t kMaxSamplingRatio = 1024;   // samples per bin side: a bin costs sampling_ratio^2 samples

// rois: the input's dtype; with float16/bfloat16 input, float32 too (image coordinates in half
// precision lose whole pixels: autocast keeps them float32).
void check_rois_dtype(const at::Tensor& rois, const at::Tensor& input) {
  const auto in = input.scalar_type(), r = rois.scalar_type();
  const bool low = in == at::kHalf || in == at::kBFloat16;
  TORCH_CHECK_TYPE(r == in || (low && r == at::kFloat), "rois dtype must match input dtype (", dtype_str(in), ")",
                   low ? " or be torch.float32" : "", ", got ", dtype_str(r));
}

}  // namespace

template <typename I>
RoiPoolParamsT<I> check_roi_pool_args(const at::Tensor& input, const at::Tensor& rois,
                                      const std::optional<at::Tensor>& offset, at::IntArrayRef output_size,
                                      double spatial_scale, int64_t sampling_ratio, double gamma) {
  const bool has_offset = offset.has_value() && offset->defined();
  check_rank(input, "input", 4, " (N, C, H, W)");
  check_rank(rois, "rois", 2, " (K, 5) of (batch_index, x1, y1, x2, y2)");
  if (has_offset) check_rank(*offset, "offset", 4, " (K, 2, PH, PW)");
  check_same_device(rois, "rois", input);
  if (has_offset) check_same_device(*offset, "offset", input);
  check_floating_input(input);
  check_rois_dtype(rois, input);
  if (has_offset) check_same_dtype(*offset, "offset", input);

  check_pair(output_size, "output_size", 1);
  TORCH_CHECK_VALUE(output_size[0] <= kMaxOutputSide && output_size[1] <= kMaxOutputSide,
                    "output_size must be at most ", kMaxOutputSide, " per side, got ", tuple_str(output_size));
  TORCH_CHECK_VALUE(sampling_ratio >= 0 && sampling_ratio <= kMaxSamplingRatio,
                    "sampling_ratio must be an int in [0, ", kMaxSamplingRatio,
                    "] (0 = adaptive: ceil(bin size) samples per bin side), got ", sampling_ratio);
  TORCH_CHECK_VALUE(std::isfinite(spatial_scale) && spatial_scale > 0.0,
                    "spatial_scale must be a positive finite number (feature-map size / image size), got ",
                    spatial_scale);
  TORCH_CHECK_VALUE(std::isfinite(gamma), "gamma must be a finite number, got ", gamma);

  RoiPoolParamsT<I> p;
  p.n = size_of<I>(input, 0); p.c = size_of<I>(input, 1); p.h = size_of<I>(input, 2); p.w = size_of<I>(input, 3);
  p.k = size_of<I>(rois, 0);
  p.ph = output_size[0]; p.pw = output_size[1];
  p.spatial_scale = spatial_scale; p.sampling_ratio = sampling_ratio; p.gamma = gamma;
  p.has_offset = has_offset;
  TORCH_CHECK_VALUE(p.h >= 1 && p.w >= 1, "input height and width must be positive, got input shape ",
                    shape_str(input));
  TORCH_CHECK_VALUE(size_of<I>(rois, 1) == 5, "rois must have shape (K, 5) of (batch_index, x1, y1, x2, y2), got ",
                    shape_str(rois));
  if (has_offset)
    TORCH_CHECK_VALUE(has_shape<I>(*offset, {p.k, I(2), I(p.ph), I(p.pw)}),
                      "offset must have shape (K, 2, PH, PW) = ", tuple_str<I>({p.k, I(2), I(p.ph), I(p.pw)}),
                      " (K rois, output_size (PH, PW)), got ", shape_str(*offset));
  return p;
}

namespace {

template <typename I>
void check_roi_pool_grad_output(const at::Tensor& grad_output, const at::Tensor& input, const RoiPoolParamsT<I>& p) {
  check_same_device(grad_output, "grad_output", input);
  TORCH_CHECK_VALUE(has_shape<I>(grad_output, {p.k, p.c, I(p.ph), I(p.pw)}), "grad_output must have the output's shape ",
                    tuple_str<I>({p.k, p.c, I(p.ph), I(p.pw)}), ", got ", shape_str(grad_output));
  TORCH_CHECK_TYPE(grad_output.scalar_type() == input.scalar_type(), "grad_output dtype must match input dtype (",
                   dtype_str(input.scalar_type()), "), got ", dtype_str(grad_output.scalar_type()));
}

// The checks that need the RoIs' values (never in the Meta kernel): the backend finds the first bad
// RoI, this writes the message.
void check_rois_data(const RoiPoolBackend& be, const at::Tensor& rois_acc, const RoiPoolParams& p) {
  if (p.k == 0) return;
  const int64_t bad = be.first_bad_roi(rois_acc, p);
  if (bad < 0) return;
  const at::Tensor row = rois_acc.select(0, bad).to(at::kCPU, at::kDouble).contiguous();
  const double* v = row.data_ptr<double>();
  std::ostringstream roi;
  roi << "rois[" << bad << "] = (" << v[0] << ", " << v[1] << ", " << v[2] << ", " << v[3] << ", " << v[4] << ")";
  switch (roi_fault<double>(v, p.n, p.spatial_scale)) {
    case kRoiNotFinite:
      TORCH_CHECK_VALUE(false, "rois must be finite (NaN and infinity are not coordinates), got ", roi.str());
    case kRoiBatchNotInteger:
    case kRoiBatchOutOfRange:
      TORCH_CHECK_VALUE(false, "rois[:, 0] must be batch indices: integers in [0, N) = [0, ", p.n,
                        ") for input shape (", p.n, ", ", p.c, ", ", p.h, ", ", p.w, "), got ", roi.str());
    case kRoiCornersSwapped:
      TORCH_CHECK_VALUE(false, "rois must be (batch_index, x1, y1, x2, y2) with x2 >= x1 and y2 >= y1, got ",
                        roi.str());
    case kRoiTooFar:
      TORCH_CHECK_VALUE(false, "rois coordinates times spatial_scale (", p.spatial_scale, ") must lie within +-",
                        static_cast<int64_t>(kMaxRoiCoordinate), " feature-map units, got ", roi.str());
    default:
      TORCH_CHECK(false, "dcn_plugin: internal error: the RoI check failed on ", roi.str());
  }
}

// The layout of the input gradient: the input's (what suggest_memory_format says for its strides).
at::MemoryFormat input_layout(const at::Tensor& input) {
  return input.suggest_memory_format() == at::MemoryFormat::ChannelsLast ? at::MemoryFormat::ChannelsLast
                                                                          : at::MemoryFormat::Contiguous;
}

at::ScalarType acc_dtype(const at::Tensor& input) {
  return input.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
}

// (B, C, X, Y) -> (B, X, Y, C) contiguous rows: a view of a channels_last tensor, else one transposition.
at::Tensor rows_of(const RoiPoolBackend& be, const at::Tensor& t) {
  const at::Tensor rows = t.permute({0, 2, 3, 1});
  if (rows.is_contiguous()) return rows;
  return be.transpose_last2(t.flatten(2)).view(rows.sizes());
}

}  // namespace

// ----------------------------------------------------------------------------------- the driver
at::Tensor roi_pool_forward_impl(const RoiPoolBackend& be, const at::Tensor& input, const at::Tensor& rois,
                                 const std::optional<at::Tensor>& offset, at::IntArrayRef output_size,
                                 double spatial_scale, int64_t sampling_ratio, double gamma) {
  const RoiPoolParams p =
      check_roi_pool_args<int64_t>(input, rois, offset, output_size, spatial_scale, sampling_ratio, gamma);
  const c10::DeviceGuard device_guard(input.device());  // after the checks: they name a misplaced tensor
  at::Tensor out = at::empty({p.k, p.c, p.ph, p.pw}, input.options());
  if (p.k == 0) return out;
  const at::Tensor rois_acc = rois.to(acc_dtype(input)).contiguous();
  check_rois_data(be, rois_acc, p);
  if (p.c == 0) return out;
  RECORD_FUNCTION("dcn_plugin::roi_pool_forward_kernels", std::vector<c10::IValue>());
  be.forward(rows_of(be, input), rois_acc, p.has_offset ? offset->contiguous() : at::Tensor(), p, out);
  return out;
}

std::tuple<at::Tensor, at::Tensor> roi_pool_backward_impl(const RoiPoolBackend& be, const at::Tensor& grad_output,
                                                          const at::Tensor& input, const at::Tensor& rois,
                                                          const std::optional<at::Tensor>& offset,
                                                          at::IntArrayRef output_size, double spatial_scale,
                                                          int64_t sampling_ratio, double gamma,
                                                          std::array<bool, 2> output_mask) {
  const RoiPoolParams p =
      check_roi_pool_args<int64_t>(input, rois, offset, output_size, spatial_scale, sampling_ratio, gamma);
  check_roi_pool_grad_output(grad_output, input, p);
  const c10::DeviceGuard device_guard(input.device());
  const bool want_in = output_mask[0], want_off = output_mask[1] && p.has_offset;
  const auto opts = input.options();
  auto none = [&opts] { return at::empty({0}, opts); };  // never aliased
  // the input gradient is accumulated as (N, H, W, C) rows, in float32 for half/bfloat16
  at::Tensor g_in_rows = want_in ? at::zeros({p.n, p.h, p.w, p.c}, opts.dtype(acc_dtype(input))) : at::Tensor();
  at::Tensor g_off = want_off ? at::zeros(offset->sizes(), opts) : at::Tensor();
  auto finish = [&]() -> std::tuple<at::Tensor, at::Tensor> {
    if (!want_in) return {none(), want_off ? g_off : none()};
    // in the input's layout (a view for channels_last, one transposition for NCHW): gradients of other
    // branches of the same feature map add to it without a strided pass
    at::Tensor g_in = input_layout(input) == at::MemoryFormat::ChannelsLast
                          ? g_in_rows.permute({0, 3, 1, 2})
                          : be.transpose_last2(g_in_rows.view({p.n, p.h * p.w, p.c})).view(input.sizes());
    return {g_in.to(input.scalar_type()), want_off ? g_off : none()};
  };
  if (p.k == 0) return finish();
  const at::Tensor rois_acc = rois.to(acc_dtype(input)).contiguous();
  check_rois_data(be, rois_acc, p);
  if (p.c == 0 || !(want_in || want_off)) return finish();
  RECORD_FUNCTION("dcn_plugin::roi_pool_backward_kernels", std::vector<c10::IValue>());
  // the input's values only matter for the offset gradient
  be.backward(rows_of(be, grad_output), want_off ? rows_of(be, input) : at::Tensor(), rois_acc,
              p.has_offset ? offset->contiguous() : at::Tensor(), p, g_in_rows, g_off);
  return finish();
}

// ----------------------------------------------------------------------------------- Meta kernels
// What fake tensors, torch.compile and opcheck run: the same validator on symbolic sizes (no data
// checks: they need values), and outputs with the real kernels' shapes and layouts.
namespace {

at::Tensor roi_pool_forward_meta(const at::Tensor& input, const at::Tensor& rois, const std::optional<at::Tensor>& offset,
                                 at::IntArrayRef output_size, double spatial_scale, int64_t sampling_ratio,
                                 double gamma) {
  const auto p = check_roi_pool_args<c10::SymInt>(input, rois, offset, output_size, spatial_scale, sampling_ratio,
                                                  gamma);
  return at::empty_symint({p.k, p.c, c10::SymInt(p.ph), c10::SymInt(p.pw)}, input.options());
}

std::tuple<at::Tensor, at::Tensor> roi_pool_backward_meta(const at::Tensor& grad_output, const at::Tensor& input,
                                                          const at::Tensor& rois, const std::optional<at::Tensor>& offset,
                                                          at::IntArrayRef output_size, double spatial_scale,
                                                          int64_t sampling_ratio, double gamma,
                                                          std::array<bool, 2> output_mask) {
  const auto p = check_roi_pool_args<c10::SymInt>(input, rois, offset, output_size, spatial_scale, sampling_ratio,
                                                  gamma);
  check_roi_pool_grad_output(grad_output, input, p);
  auto none = [&] { return at::empty({0}, input.options()); };
  at::Tensor g_in = output_mask[0] ? at::empty_symint(input.sym_sizes(), input.options().memory_format(input_layout(input)))
                                   : none();
  at::Tensor g_off = output_mask[1] && p.has_offset ? at::empty_symint(offset->sym_sizes(), input.options()) : none();
  return {g_in, g_off};
}

}  // namespace

TORCH_LIBRARY_IMPL(dcn_plugin, Meta, m) {
  m.impl("deform_roi_pool", &roi_pool_forward_meta);
  m.impl("deform_roi_pool_backward", &roi_pool_backward_meta);
}

// ----------------------------------------------------------------------------------- the validator as ops
// For kernels written outside C++ (the Triton kernels): the validator and the checks on the RoIs' values,
// on the real tensors (the values on a float64 CPU copy of the RoIs), so every backend raises the same
// errors.
namespace {

int64_t first_bad_roi_host(const at::Tensor& rois_acc, const RoiPoolParams& p) {
  const at::Tensor r = rois_acc.to(at::kCPU, at::kDouble).contiguous();
  const double* v = r.data_ptr<double>();
  for (int64_t k = 0; k < p.k; ++k)
    if (roi_fault<double>(v + 5 * k, p.n, p.spatial_scale) != kRoiOk) return k;
  return -1;
}

void check_rois_values(const at::Tensor& input, const at::Tensor& rois, const RoiPoolParams& p) {
  RoiPoolBackend host{};
  host.first_bad_roi = &first_bad_roi_host;
  check_rois_data(host, rois.to(acc_dtype(input)), p);
}

void check_roi_pool_args_op(const at::Tensor& input, const at::Tensor& rois, const std::optional<at::Tensor>& offset,
                            at::IntArrayRef output_size, double spatial_scale, int64_t sampling_ratio, double gamma) {
  const RoiPoolParams p =
      check_roi_pool_args<int64_t>(input, rois, offset, output_size, spatial_scale, sampling_ratio, gamma);
  check_rois_values(input, rois, p);
}

void check_roi_pool_backward_args_op(const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& rois,
                                     const std::optional<at::Tensor>& offset, at::IntArrayRef output_size,
                                     double spatial_scale, int64_t sampling_ratio, double gamma) {
  const RoiPoolParams p =
      check_roi_pool_args<int64_t>(input, rois, offset, output_size, spatial_scale, sampling_ratio, gamma);
  check_roi_pool_grad_output(grad_output, input, p);
  check_rois_values(input, rois, p);
}

}  // namespace

// The validators as ops (for the Triton kernels): each operator's file registers its own pair, so this block has
// the shape of deform_conv.cpp's for a different operator.
TORCH_LIBRARY_IMPL(dcn_plugin, CompositeExplicitAutograd, m) {
  m.impl("_check_deform_roi_pool_args", &check_roi_pool_args_op);
  m.impl("_check_deform_roi_pool_backward_args", &check_roi_pool_backward_args_op);
}

}  // namespace dcn_plugin
