// Declarations and host/device geometry shared by the deformable RoI pooling driver
// (deform_roi_pool.cpp) and its CPU / CUDA kernels.
//
// Semantics are mmcv's deform_roi_pool (DCNv1's deformable RoI pooling; DCNv2's modulated form is this
// pooling times a mask, applied outside the op):
//   rois (K, 5) = (batch_index, x1, y1, x2, y2) in image coordinates; corners map to
//   x * spatial_scale - 0.5 on the feature map (no rounding); the RoI is split into PH x PW bins; bin
//   (ph, pw) averages a grid_h x grid_w grid of samples at the sub-bin centres (grid = sampling_ratio,
//   or ceil(bin size) when sampling_ratio is 0), bilinear with RoIAlign's border rule (deform_sampling.h);
//   samples outside the map count as zero in the mean. offset (K, 2, PH, PW) moves bin (ph, pw) by
//   gamma * roi_width * offset[k, 0, ph, pw] along x and gamma * roi_height * offset[k, 1, ph, pw]
//   along y (feature-map units).
// Coordinates are computed in the accumulation type (float32 for half/bfloat16/float32, float64 for
// float64) in mmcv's order of operations.
#pragma once

#include <ATen/core/Tensor.h>

#include <array>
#include <cmath>
#include <optional>
#include <tuple>

#include "deform_sampling.h"

namespace dcn_plugin {

// Sizes and hyper-parameters of one deformable RoI pooling call, validated once (deform_roi_pool.cpp).
// I is int64_t for the kernels and c10::SymInt for the Meta kernel (see checks.h).
template <typename I>
struct RoiPoolParamsT {
  I n, c, h, w;           // input (N, C, H, W)
  I k;                    // rois (K, 5)
  int64_t ph, pw;         // output_size
  double spatial_scale;   // > 0, finite
  int64_t sampling_ratio; // 0 = adaptive
  double gamma;           // finite
  bool has_offset;
  DCN_HOST_DEVICE int64_t bins() const { return ph * pw; }
};
using RoiPoolParams = RoiPoolParamsT<int64_t>;

// Largest accepted |coordinate * spatial_scale| of a RoI corner (feature-map units, 2^24): beyond it a
// float32 coordinate cannot tell neighbouring pixels apart, and it bounds every grid size.
constexpr double kMaxRoiCoordinate = 16777216.0;

// What is wrong with one RoI (roi_fault), checked on the data by the kernels' entry points.
constexpr int kRoiOk = 0;
constexpr int kRoiNotFinite = 1;
constexpr int kRoiBatchNotInteger = 2;
constexpr int kRoiBatchOutOfRange = 3;
constexpr int kRoiCornersSwapped = 4;
constexpr int kRoiTooFar = 5;

template <typename acc_t>
DCN_HOST_DEVICE int roi_fault(const acc_t* roi, int64_t batch, double spatial_scale) {
  for (int j = 0; j < 5; ++j) {
    const double v = static_cast<double>(roi[j]);
    if (!(v - v == 0.0)) return kRoiNotFinite;  // NaN or +-inf
  }
  const double b = static_cast<double>(roi[0]);
  if (b != ::floor(b)) return kRoiBatchNotInteger;
  if (b < 0.0 || b >= static_cast<double>(batch)) return kRoiBatchOutOfRange;
  if (roi[3] < roi[1] || roi[4] < roi[2]) return kRoiCornersSwapped;
  for (int j = 1; j < 5; ++j)
    if (::fabs(static_cast<double>(roi[j]) * spatial_scale) > kMaxRoiCoordinate) return kRoiTooFar;
  return kRoiOk;
}

// The samples of one bin along one axis: start + ((i + 0.5) * bin) / grid for i in [0, grid) (mmcv's
// expression), of which [lo, hi) lie inside [-1, size] and are not zero under RoIAlign's border rule.
// The positions are non-decreasing in i (every rounding step is monotone), so the inside samples are
// one interval, found by bisection: the work per bin is bounded by the map, not by the RoI's size.
template <typename acc_t>
struct BinAxis {
  acc_t start, bin;
  int64_t grid, lo, hi;
  DCN_HOST_DEVICE acc_t at(int64_t i) const {
    return start + (static_cast<acc_t>(i) + acc_t(0.5)) * bin / static_cast<acc_t>(grid);
  }
};

template <typename acc_t>
DCN_HOST_DEVICE BinAxis<acc_t> bin_axis(acc_t start, acc_t bin, int64_t grid, int64_t size) {
  BinAxis<acc_t> a{start, bin, grid, 0, 0};
  int64_t lo = 0, hi = grid;  // first i with at(i) >= -1 (never, for NaN positions)
  while (lo < hi) {
    const int64_t mid = lo + (hi - lo) / 2;
    if (a.at(mid) >= acc_t(-1)) hi = mid; else lo = mid + 1;
  }
  a.lo = lo;
  hi = grid;  // first i >= lo with at(i) > size
  while (lo < hi) {
    const int64_t mid = lo + (hi - lo) / 2;
    if (a.at(mid) > static_cast<acc_t>(size)) hi = mid; else lo = mid + 1;
  }
  a.hi = lo;
  return a;
}

// Geometry of output bin (k, ph, pw).
template <typename acc_t>
struct RoiBin {
  int64_t batch;
  BinAxis<acc_t> y, x;
  acc_t count;               // grid_h * grid_w (at least 1): the divisor of the mean
  acc_t dy_scale, dx_scale;  // d(sample position) / d(offset): gamma * roi height, gamma * roi width
};

// roi: the RoI's 5 values (checked by roi_fault); offset: (K, 2, PH, PW) contiguous or nullptr.
template <typename acc_t, typename off_t>
DCN_HOST_DEVICE RoiBin<acc_t> roi_bin(const acc_t* roi, const off_t* offset, const RoiPoolParams& p, int64_t k,
                                      int64_t ph, int64_t pw) {
  const acc_t scale = static_cast<acc_t>(p.spatial_scale), half = acc_t(0.5);
  acc_t x0 = roi[1] * scale - half, y0 = roi[2] * scale - half;  // no rounding
  const acc_t roi_w = (roi[3] * scale - half) - x0, roi_h = (roi[4] * scale - half) - y0;
  const acc_t bin_h = roi_h / static_cast<acc_t>(p.ph), bin_w = roi_w / static_cast<acc_t>(p.pw);
  // |corner| <= 2^24 (roi_fault): the adaptive grid fits easily in int64_t
  const int64_t grid_h = p.sampling_ratio > 0 ? p.sampling_ratio : static_cast<int64_t>(::ceil(bin_h));
  const int64_t grid_w = p.sampling_ratio > 0 ? p.sampling_ratio : static_cast<int64_t>(::ceil(bin_w));
  RoiBin<acc_t> b;
  const acc_t gamma = static_cast<acc_t>(p.gamma);
  b.dy_scale = gamma * roi_h;
  b.dx_scale = gamma * roi_w;
  if (offset != nullptr) {
    const off_t* o = offset + k * 2 * p.bins() + ph * p.pw + pw;
    x0 += b.dx_scale * static_cast<acc_t>(o[0]);
    y0 += b.dy_scale * static_cast<acc_t>(o[p.bins()]);
  }
  b.batch = static_cast<int64_t>(roi[0]);
  b.y = bin_axis<acc_t>(y0 + static_cast<acc_t>(ph) * bin_h, bin_h, grid_h, p.h);
  b.x = bin_axis<acc_t>(x0 + static_cast<acc_t>(pw) * bin_w, bin_w, grid_w, p.w);
  const int64_t count = grid_h * grid_w;
  b.count = static_cast<acc_t>(count > 0 ? count : 1);
  return b;
}

// The operator's validator (deform_roi_pool.cpp; int64_t and c10::SymInt): every rule on the
// arguments that does not need the data. ValueError / TypeError naming the argument.
template <typename I>
RoiPoolParamsT<I> check_roi_pool_args(const at::Tensor& input, const at::Tensor& rois,
                                      const std::optional<at::Tensor>& offset, at::IntArrayRef output_size,
                                      double spatial_scale, int64_t sampling_ratio, double gamma);

// The per-backend kernels, called by the driver with (all contiguous):
//   in     (N, H, W, C)   input rows, channels-last (backward: undefined unless g_off is wanted)
//   rois   (K, 5)         in the accumulation dtype (float32, or float64 for float64 inputs)
//   off    (K, 2, PH, PW) or undefined
//   out    (K, C, PH, PW) written
//   grad   (K, PH, PW, C) the output's gradient as channels-last rows
//   g_in   (N, H, W, C)   zero-initialised, in the accumulation dtype; undefined = not wanted
//   g_off  (K, 2, PH, PW) written; undefined = not wanted
struct RoiPoolBackend {
  // index of the first RoI with roi_fault != kRoiOk, or -1
  int64_t (*first_bad_roi)(const at::Tensor& rois, const RoiPoolParams& p);
  // (B, R, S) with any strides -> (B, S, R) contiguous: the layout changes between NCHW and rows
  at::Tensor (*transpose_last2)(const at::Tensor& src);
  void (*forward)(const at::Tensor& in, const at::Tensor& rois, const at::Tensor& off, const RoiPoolParams& p,
                  at::Tensor& out);
  void (*backward)(const at::Tensor& grad, const at::Tensor& in, const at::Tensor& rois, const at::Tensor& off,
                   const RoiPoolParams& p, at::Tensor& g_in, at::Tensor& g_off);
};

at::Tensor roi_pool_forward_impl(const RoiPoolBackend& be, const at::Tensor& input, const at::Tensor& rois,
                                 const std::optional<at::Tensor>& offset, at::IntArrayRef output_size,
                                 double spatial_scale, int64_t sampling_ratio, double gamma);

std::tuple<at::Tensor, at::Tensor> roi_pool_backward_impl(const RoiPoolBackend& be, const at::Tensor& grad_output,
                                                          const at::Tensor& input, const at::Tensor& rois,
                                                          const std::optional<at::Tensor>& offset,
                                                          at::IntArrayRef output_size, double spatial_scale,
                                                          int64_t sampling_ratio, double gamma,
                                                          std::array<bool, 2> output_mask);

// The op's kernels for one backend: TORCH_LIBRARY_IMPL(dcn_plugin, <key>, m) registers
// &roi_pool_forward_kernel<kBackend> and &roi_pool_backward_kernel<kBackend>.
template <const RoiPoolBackend& be>
at::Tensor roi_pool_forward_kernel(const at::Tensor& input, const at::Tensor& rois,
                                   const std::optional<at::Tensor>& offset, at::IntArrayRef output_size,
                                   double spatial_scale, int64_t sampling_ratio, double gamma) {
  return roi_pool_forward_impl(be, input, rois, offset, output_size, spatial_scale, sampling_ratio, gamma);
}

template <const RoiPoolBackend& be>
std::tuple<at::Tensor, at::Tensor> roi_pool_backward_kernel(const at::Tensor& grad_output, const at::Tensor& input,
                                                            const at::Tensor& rois,
                                                            const std::optional<at::Tensor>& offset,
                                                            at::IntArrayRef output_size, double spatial_scale,
                                                            int64_t sampling_ratio, double gamma,
                                                            std::array<bool, 2> output_mask) {
  return roi_pool_backward_impl(be, grad_output, input, rois, offset, output_size, spatial_scale, sampling_ratio,
                                gamma, output_mask);
}

}  // namespace dcn_plugin
