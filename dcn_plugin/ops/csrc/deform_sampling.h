// Bilinear sampling maths shared by the CPU and CUDA kernels (host/device).
//
// Conventions (identical to mmcv's and torchvision's deformable convolution):
//   the sample for output position (ho, wo), kernel point (i, j) and deform group g is taken at
//     y = ho * stride_h - pad_h + i * dil_h + offset[2 * (g * K + k)]
//     x = wo * stride_w - pad_w + j * dil_w + offset[2 * (g * K + k) + 1],    k = i * kw + j
//   by bilinear interpolation of the four neighbouring pixels, each one outside the image counting
//   as zero; a sample with y <= -1, y >= H, x <= -1 or x >= W (or NaN) is zero altogether.
// The coordinate is rounded to the accumulation type once, as y = float(grid position) + offset, as
// torchvision and mmcv compute it, so the tap (floor) chosen for a sample that rounds onto a pixel row
// is theirs and so is the offset gradient there; only where the grid position itself is not exact in
// that type (beyond 2^24 rows/columns in float) are the integer and fractional parts kept apart.
// Weights are computed in the accumulation type (float for half/bfloat16/float, double for double).
// floor() is a real floor (a truncating cast is wrong in (-1, 0)).
#pragma once

#include <cmath>
#include <cstdint>

#if defined(__CUDACC__) || defined(__HIPCC__)
#define DCN_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define DCN_HOST_DEVICE inline
#endif

namespace dcn_plugin {

// The four taps of one bilinear sample. A tap outside the image has valid == false and weight 0.
template <typename acc_t>
struct BilinearTaps {
  int64_t y0, x0;          // top-left tap; the others are (y0, x0+1), (y0+1, x0), (y0+1, x0+1)
  acc_t ly, lx;            // fractional parts: weights are (1-ly)(1-lx), (1-ly)lx, ly(1-lx), ly lx
  bool in_range;           // the sample touches the image at all
  bool v00, v01, v10, v11; // which taps lie inside the image
  acc_t w00, w01, w10, w11;
};

// Offsets beyond this magnitude (and NaN/inf) put a sample far outside any image: the sample is zero.
// It keeps the integer conversion below exact and free of overflow.
template <typename acc_t>
DCN_HOST_DEVICE acc_t max_sampling_offset() { return acc_t(1099511627776.0); }  // 2^40

// Largest grid position that acc_t holds exactly: 2^24 for float, 2^53 for double.
template <typename acc_t>
DCN_HOST_DEVICE int64_t exact_grid_limit() { return sizeof(acc_t) >= 8 ? (int64_t(1) << 53) : (int64_t(1) << 24); }

// One axis of a sample: the grid position p moved by d, split into the floor row i0 and the fraction l.
// Up to exact_grid_limit the coordinate is rounded once, float(p) + d, exactly as torchvision and mmcv
// round it (a sample within half a unit in the last place below a pixel row takes that row, in the
// output and in the offset gradient alike); beyond it p + floor(d) stays exact, so rows past 2^24 of a
// float32 map are still the right ones.
template <typename acc_t>
DCN_HOST_DEVICE void split_coord(int64_t p, acc_t d, int64_t& i0, acc_t& l) {
  const int64_t lim = exact_grid_limit<acc_t>();
  if (p < lim && p > -lim) {
    const acc_t v = static_cast<acc_t>(p) + d;
    const acc_t f = ::floor(v);
    i0 = static_cast<int64_t>(f);
    l = v - f;  // exact, in [0, 1)
  } else {
    const acc_t f = ::floor(d);
    i0 = p + static_cast<int64_t>(f);
    l = d - f;
  }
}

// The taps of the sample at the integer grid position (by, bx) moved by (dy, dx) (see split_coord).
template <typename acc_t>
DCN_HOST_DEVICE BilinearTaps<acc_t> bilinear_taps_at(int64_t by, int64_t bx, acc_t dy, acc_t dx, int64_t height,
                                                     int64_t width) {
  BilinearTaps<acc_t> t;
  t.y0 = t.x0 = 0;
  t.ly = t.lx = acc_t(0);
  t.v00 = t.v01 = t.v10 = t.v11 = false;
  t.w00 = t.w01 = t.w10 = t.w11 = acc_t(0);
  t.in_range = false;
  // Written so that NaN fails the test.
  const acc_t lim = max_sampling_offset<acc_t>();
  if (!(dy > -lim && dy < lim && dx > -lim && dx < lim)) return t;
  int64_t y0, x0;
  acc_t ly, lx;
  split_coord(by, dy, y0, ly);
  split_coord(bx, dx, x0, lx);
  // y = y0 + ly lies in (-1, height) and x = x0 + lx in (-1, width)
  t.in_range = (y0 > -1 || (y0 == -1 && ly > acc_t(0))) && y0 < height &&
               (x0 > -1 || (x0 == -1 && lx > acc_t(0))) && x0 < width;
  if (!t.in_range) return t;
  t.y0 = y0;
  t.x0 = x0;
  t.ly = ly;
  t.lx = lx;
  const acc_t hy = acc_t(1) - ly, hx = acc_t(1) - lx;
  const bool y0_in = y0 >= 0, y1_in = y0 + 1 <= height - 1;
  const bool x0_in = x0 >= 0, x1_in = x0 + 1 <= width - 1;
  t.v00 = y0_in && x0_in;
  t.v01 = y0_in && x1_in;
  t.v10 = y1_in && x0_in;
  t.v11 = y1_in && x1_in;
  t.w00 = t.v00 ? hy * hx : acc_t(0);
  t.w01 = t.v01 ? hy * lx : acc_t(0);
  t.w10 = t.v10 ? ly * hx : acc_t(0);
  t.w11 = t.v11 ? ly * lx : acc_t(0);
  return t;
}

// The taps of the sample at the real coordinates (y, x) (RoI pooling's sampling points).
template <typename acc_t>
DCN_HOST_DEVICE BilinearTaps<acc_t> bilinear_taps(acc_t y, acc_t x, int64_t height, int64_t width) {
  return bilinear_taps_at<acc_t>(0, 0, y, x, height, width);
}

// Sampling position of kernel point (i, j) for output (ho, wo) on the input grid, before the learned
// offset (an integer: exact whatever the image size).
DCN_HOST_DEVICE int64_t base_coord(int64_t out_pos, int64_t stride, int64_t pad, int64_t kernel_idx,
                                   int64_t dilation) {
  return out_pos * stride - pad + kernel_idx * dilation;
}

// Gradient of the sampled value with respect to the coordinates, given the four tap values (zero for
// taps outside the image): d/dy and d/dx of (1-ly)(1-lx)v00 + (1-ly)lx v01 + ly(1-lx)v10 + ly lx v11.
template <typename acc_t>
DCN_HOST_DEVICE void bilinear_coord_grad(const BilinearTaps<acc_t>& t, acc_t v00, acc_t v01, acc_t v10,
                                         acc_t v11, acc_t& d_dy, acc_t& d_dx) {
  const acc_t hy = acc_t(1) - t.ly, hx = acc_t(1) - t.lx;
  d_dy = hx * (v10 - v00) + t.lx * (v11 - v01);
  d_dx = hy * (v01 - v00) + t.ly * (v11 - v10);
}

// ------------------------------------------------------------------------------------------------
// RoIAlign's border rule (torchvision's and mmcv's roi_align, mmcv's deform_roi_pool), used by the
// deformable RoI pooling. It differs from the convolution's rule above near the border: a coordinate
// in [-1, 0] reads row (column) 0 with full weight, one in [size - 1, size] reads the last row with
// full weight, and only a coordinate outside [-1, size] (or NaN) makes the whole sample zero.

// One axis of a sample under RoIAlign's border rule: taps i0 (weight 1 - l) and i0 + 1 (weight l,
// read only when i0 + 1 < size; l is 0 otherwise).
template <typename acc_t>
struct AxisTaps {
  int64_t i0;
  acc_t l;      // in [0, 1)
  bool valid;   // the coordinate lies in [-1, size]; otherwise the whole sample is zero
  bool moves;   // 0 < v < size - 1: the sampled value follows v (elsewhere the clamp holds it still, so
                // its derivative with respect to v is zero)
};

template <typename acc_t>
DCN_HOST_DEVICE AxisTaps<acc_t> roi_align_axis(acc_t v, int64_t size) {
  AxisTaps<acc_t> a;
  a.i0 = 0;
  a.l = acc_t(0);
  a.moves = false;
  a.valid = v >= acc_t(-1) && v <= static_cast<acc_t>(size);  // false for NaN
  if (!a.valid || v <= acc_t(0)) return a;
  const int64_t i0 = static_cast<int64_t>(v);  // v in (0, size]: truncation is floor
  if (i0 >= size - 1) {
    a.i0 = size - 1;
    return a;
  }
  a.i0 = i0;
  a.l = v - static_cast<acc_t>(i0);
  a.moves = true;
  return a;
}

// The four taps of the sample whose axes are (ay, ax), under RoIAlign's border rule. The weights are
// bilinear_taps_at's; the coordinate gradient is bilinear_coord_grad's times ay.moves / ax.moves.
template <typename acc_t>
DCN_HOST_DEVICE BilinearTaps<acc_t> roi_align_taps(const AxisTaps<acc_t>& ay, const AxisTaps<acc_t>& ax,
                                                   int64_t height, int64_t width) {
  if (!(ay.valid && ax.valid))  // an offset at the limit: bilinear_taps_at's zero sample
    return bilinear_taps_at<acc_t>(0, 0, max_sampling_offset<acc_t>(), acc_t(0), height, width);
  return bilinear_taps_at<acc_t>(ay.i0, ax.i0, ay.l, ax.l, height, width);
}

}  // namespace dcn_plugin
