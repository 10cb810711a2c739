// CPU kernels of the deformable RoI pooling.
//
// Bilinear sampling is separable: the value of a bin is
//     (1 / count) * sum_r sum_s A[r] * B[s] * input[b, r, s, :]
// where A[r] sums, over the bin's sample rows, the weight each one gives to feature row r (1 - l to
// row i0, l to row i0 + 1, RoIAlign's border rule), and B[s] the same over the sample columns.
// Neighbouring samples share rows and columns, so a bin reads about (grid_h + 1) x (grid_w + 1)
// channel rows instead of 4 x grid_h x grid_w taps. A geometry pass builds these (row, weight) and
// (column, weight) lists once per call (with the derivative weights dA, dB for the offset gradient);
// the channel loops then run over channels-last rows of the input, one vectorisable AXPY / dot
// product per (row, column) pair.
//
//   forward        parallel over RoIs; each bin accumulates its C channels and writes them once
//   offset grad    parallel over RoIs: sum_rs dA[r] B[s] <input[b, r, s, :], grad[k, bin, :]> (and
//                  A dB for x), in a fixed order
//   input grad     parallel over blocks of 16 channels: each task owns its channels of the whole
//                  gradient and adds the contributions of every (RoI, bin, row, column) in the same
//                  order whatever the number of threads: no atomics, bit-reproducible
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "cpu/simd.h"
#include "cpu/transpose.h"
#include "deform_roi_pool.h"

namespace dcn_plugin {
namespace {

// ----------------------------------------------------------------------------------- channel loops
// acc[i] += w0*s0[i] + w1*s1[i] + w2*s2[i] + w3*s3[i]
template <typename T>
DCN_ALWAYS_INLINE void gather4(T* __restrict acc, const T* __restrict s0, const T* __restrict s1,
                               const T* __restrict s2, const T* __restrict s3, T w0, T w1, T w2, T w3, int64_t n) {
  for (int64_t i = 0; i < n; ++i) acc[i] += w0 * s0[i] + w1 * s1[i] + w2 * s2[i] + w3 * s3[i];
}

template <typename T>
DCN_ALWAYS_INLINE void gather1(T* __restrict acc, const T* __restrict s0, T w0, int64_t n) {
  for (int64_t i = 0; i < n; ++i) acc[i] += w0 * s0[i];
}

template <typename T>
DCN_ALWAYS_INLINE void scatter1(T* __restrict d0, const T* __restrict g, T w0, int64_t n) {
  for (int64_t i = 0; i < n; ++i) d0[i] += w0 * g[i];
}

// out[j] = sum_i g[i] * s_j[i], as per-lane partial sums reduced in a fixed order (vectorisable, and
// the same bits at every ISA level).
constexpr int kLanes = 16;

template <typename T>
DCN_ALWAYS_INLINE void dot4(const T* __restrict g, const T* __restrict s0, const T* __restrict s1,
                            const T* __restrict s2, const T* __restrict s3, int64_t n, T* out) {
  T p0[kLanes] = {}, p1[kLanes] = {}, p2[kLanes] = {}, p3[kLanes] = {};
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    for (int l = 0; l < kLanes; ++l) {
      const T gi = g[i + l];
      p0[l] += gi * s0[i + l];
      p1[l] += gi * s1[i + l];
      p2[l] += gi * s2[i + l];
      p3[l] += gi * s3[i + l];
    }
  }
  for (int l = 0; i < n; ++i, ++l) {
    p0[l] += g[i] * s0[i];
    p1[l] += g[i] * s1[i];
    p2[l] += g[i] * s2[i];
    p3[l] += g[i] * s3[i];
  }
  out[0] = out[1] = out[2] = out[3] = T(0);
  for (int l = 0; l < kLanes; ++l) {
    out[0] += p0[l];
    out[1] += p1[l];
    out[2] += p2[l];
    out[3] += p3[l];
  }
}

template <typename T>
DCN_ALWAYS_INLINE T dot1(const T* __restrict g, const T* __restrict s0, int64_t n) {
  T p0[kLanes] = {};
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes)
    for (int l = 0; l < kLanes; ++l) p0[l] += g[i + l] * s0[i + l];
  for (int l = 0; i < n; ++i, ++l) p0[l] += g[i] * s0[i];
  T out = T(0);
  for (int l = 0; l < kLanes; ++l) out += p0[l];
  return out;
}

#define DCN_DEFINE_ROI_LOOPS(T)                                                                                  \
  DCN_SIMD_CLONES void gather4_simd(T* __restrict acc, const T* __restrict s0, const T* __restrict s1,           \
                                    const T* __restrict s2, const T* __restrict s3, T w0, T w1, T w2, T w3,      \
                                    int64_t n) {                                                                 \
    gather4<T>(acc, s0, s1, s2, s3, w0, w1, w2, w3, n);                                                          \
  }                                                                                                              \
  DCN_SIMD_CLONES void gather1_simd(T* __restrict acc, const T* __restrict s0, T w0, int64_t n) {                \
    gather1<T>(acc, s0, w0, n);                                                                                  \
  }                                                                                                              \
  DCN_SIMD_CLONES void scatter4_simd(T* __restrict d0, T* __restrict d1, T* __restrict d2, T* __restrict d3,     \
                                     const T* __restrict g, T w0, T w1, T w2, T w3, int64_t n) {                 \
    scatter4<T>(d0, d1, d2, d3, g, /*cs=*/0, w0, w1, w2, w3, n, /*runs=*/1);                                     \
  }                                                                                                              \
  DCN_SIMD_CLONES void scatter1_simd(T* __restrict d0, const T* __restrict g, T w0, int64_t n) {                 \
    scatter1<T>(d0, g, w0, n);                                                                                   \
  }                                                                                                              \
  DCN_SIMD_CLONES void dot4_simd(const T* __restrict g, const T* __restrict s0, const T* __restrict s1,          \
                                 const T* __restrict s2, const T* __restrict s3, int64_t n, T* out) {            \
    dot4<T>(g, s0, s1, s2, s3, n, out);                                                                          \
  }                                                                                                              \
  DCN_SIMD_CLONES T dot1_simd(const T* __restrict g, const T* __restrict s0, int64_t n) { return dot1<T>(g, s0, n); }
DCN_DEFINE_ROI_LOOPS(float)
DCN_DEFINE_ROI_LOOPS(double)
#undef DCN_DEFINE_ROI_LOOPS

// One (pixel row, weight[, second weight]) pair of a bin, for the channel loops.
template <typename T>
struct Pair {
  int64_t pixel;  // (b * H + r) * W + s
  T w, w2;
};

// sum_j w_j * input[pixel_j, :] added to acc (n channels from channel 0 of each pixel row)
template <typename T>
void gather_pairs(T* acc, const T* in, int64_t c, const std::vector<Pair<T>>& pairs, int64_t n) {
  size_t j = 0;
  for (; j + 4 <= pairs.size(); j += 4)
    gather4_simd(acc, in + pairs[j].pixel * c, in + pairs[j + 1].pixel * c, in + pairs[j + 2].pixel * c,
                 in + pairs[j + 3].pixel * c, pairs[j].w, pairs[j + 1].w, pairs[j + 2].w, pairs[j + 3].w, n);
  for (; j < pairs.size(); ++j) gather1_simd(acc, in + pairs[j].pixel * c, pairs[j].w, n);
}

// g_in[pixel_j, :] += w_j * g for every pair (the pairs of one bin are different pixels); g_in and g
// point at the first channel of the caller's block
template <typename T>
void scatter_pairs(T* g_in, int64_t c, const T* g, const std::vector<Pair<T>>& pairs, int64_t n) {
  size_t j = 0;
  for (; j + 4 <= pairs.size(); j += 4)
    scatter4_simd(g_in + pairs[j].pixel * c, g_in + pairs[j + 1].pixel * c, g_in + pairs[j + 2].pixel * c,
                  g_in + pairs[j + 3].pixel * c, g, pairs[j].w, pairs[j + 1].w, pairs[j + 2].w, pairs[j + 3].w, n);
  for (; j < pairs.size(); ++j) scatter1_simd(g_in + pairs[j].pixel * c, g, pairs[j].w, n);
}

// (sum_j w_j <input[pixel_j], g>, sum_j w2_j <input[pixel_j], g>)
template <typename T>
void dot_pairs(const T* in, int64_t c, const T* g, const std::vector<Pair<T>>& pairs, T& s, T& s2) {
  s = s2 = T(0);
  size_t j = 0;
  T d[4];
  for (; j + 4 <= pairs.size(); j += 4) {
    dot4_simd(g, in + pairs[j].pixel * c, in + pairs[j + 1].pixel * c, in + pairs[j + 2].pixel * c,
              in + pairs[j + 3].pixel * c, c, d);
    for (int q = 0; q < 4; ++q) {
      s += pairs[j + q].w * d[q];
      s2 += pairs[j + q].w2 * d[q];
    }
  }
  for (; j < pairs.size(); ++j) {
    const T dj = dot1_simd(g, in + pairs[j].pixel * c, c);
    s += pairs[j].w * dj;
    s2 += pairs[j].w2 * dj;
  }
}

// ----------------------------------------------------------------------------------- geometry
// One feature row (or column) a bin reads: summed tap weights and derivative weights of its samples.
template <typename T>
struct AxisEntry {
  int64_t idx;
  T w, dw;
};

template <typename T>
struct BinGeom {
  int64_t batch;
  int64_t rows, n_rows, cols, n_cols;  // ranges in Geometry::entries
  T inv_count, dy_scale, dx_scale;
};

template <typename T>
struct Geometry {
  std::vector<BinGeom<T>> bins;  // (K, PH, PW)
  std::vector<AxisEntry<T>> entries;
};

// The taps of the inside samples of one axis, merged by index (strictly increasing): at most
// axis_capacity entries.
template <typename T>
int64_t axis_entries(const BinAxis<T>& a, int64_t size, AxisEntry<T>* out) {
  int64_t n = 0;
  auto add = [&](int64_t idx, T w, T dw) {
    // sample positions never decrease, so a repeated index is one of the last two entries
    for (int64_t j = std::max<int64_t>(0, n - 2); j < n; ++j) {
      if (out[j].idx == idx) {
        out[j].w += w;
        out[j].dw += dw;
        return;
      }
    }
    out[n++] = {idx, w, dw};
  };
  for (int64_t i = a.lo; i < a.hi; ++i) {
    const AxisTaps<T> t = roi_align_axis<T>(a.at(i), size);
    const T m = t.moves ? T(1) : T(0);  // d(value)/d(position): -1 on tap i0, +1 on tap i0 + 1
    add(t.i0, T(1) - t.l, -m);
    if (t.i0 + 1 < size) add(t.i0 + 1, t.l, m);
  }
  return n;
}

// Room for the entries of one axis: 2 per sample, and never more than the feature rows (columns)
// the samples span (indices are distinct), so dense sampling does not cost memory.
template <typename T>
int64_t axis_capacity(const BinAxis<T>& a, int64_t size) {
  if (a.hi <= a.lo) return 0;
  const int64_t first = roi_align_axis<T>(a.at(a.lo), size).i0, last = roi_align_axis<T>(a.at(a.hi - 1), size).i0;
  return std::min(2 * (a.hi - a.lo), last - first + 2);
}

template <typename T>
Geometry<T> build_geometry(const T* rois, const T* off, const RoiPoolParams& p) {
  const int64_t bins = p.bins(), total = p.k * bins;
  std::vector<RoiBin<T>> rb(total);
  std::vector<int64_t> start(total + 1, 0), rows_cap(total);
  at::parallel_for(0, p.k, 1, [&](int64_t k0, int64_t k1) {
    for (int64_t i = k0 * bins; i < k1 * bins; ++i) {
      const int64_t k = i / bins, b = i % bins;
      RoiBin<T>& r = rb[i];
      r = roi_bin<T, T>(rois + 5 * k, off, p, k, b / p.pw, b % p.pw);
      rows_cap[i] = axis_capacity(r.y, p.h);
      start[i + 1] = rows_cap[i] + axis_capacity(r.x, p.w);
    }
  });
  for (int64_t i = 0; i < total; ++i) start[i + 1] += start[i];
  Geometry<T> g;
  g.bins.resize(total);
  g.entries.resize(start[total]);
  at::parallel_for(0, p.k, 1, [&](int64_t k0, int64_t k1) {
    for (int64_t i = k0 * bins; i < k1 * bins; ++i) {
      const RoiBin<T>& r = rb[i];
      BinGeom<T>& bg = g.bins[i];
      bg.batch = r.batch;
      bg.rows = start[i];
      bg.n_rows = axis_entries<T>(r.y, p.h, g.entries.data() + bg.rows);
      bg.cols = start[i] + rows_cap[i];
      bg.n_cols = axis_entries<T>(r.x, p.w, g.entries.data() + bg.cols);
      bg.inv_count = T(1) / r.count;
      bg.dy_scale = r.dy_scale;
      bg.dx_scale = r.dx_scale;
    }
  });
  return g;
}

// The (pixel, weight) pairs of one bin: weight A[r] * B[s] * scale (zero weights left out).
template <typename T>
void value_pairs(const Geometry<T>& geo, const BinGeom<T>& bg, const RoiPoolParams& p, T scale,
                 std::vector<Pair<T>>& pairs) {
  pairs.clear();
  const AxisEntry<T>* rows = geo.entries.data() + bg.rows;
  const AxisEntry<T>* cols = geo.entries.data() + bg.cols;
  for (int64_t i = 0; i < bg.n_rows; ++i) {
    if (rows[i].w == T(0)) continue;
    const int64_t row_pixel = (bg.batch * p.h + rows[i].idx) * p.w;
    for (int64_t j = 0; j < bg.n_cols; ++j) {
      const T w = rows[i].w * cols[j].w * scale;
      if (w != T(0)) pairs.push_back({row_pixel + cols[j].idx, w, T(0)});
    }
  }
}

// ----------------------------------------------------------------------------------- kernels
template <typename T>
void forward_kernel(const T* in, const Geometry<T>& geo, const RoiPoolParams& p, T* out) {
  const int64_t bins = p.bins(), c = p.c;
  at::parallel_for(0, p.k, 1, [&](int64_t k0, int64_t k1) {
    std::vector<T> acc(c);
    std::vector<Pair<T>> pairs;
    for (int64_t k = k0; k < k1; ++k) {
      for (int64_t b = 0; b < bins; ++b) {
        const BinGeom<T>& bg = geo.bins[k * bins + b];
        value_pairs(geo, bg, p, T(1), pairs);
        std::fill(acc.begin(), acc.end(), T(0));
        gather_pairs(acc.data(), in, c, pairs, c);
        T* o = out + k * c * bins + b;
        for (int64_t ci = 0; ci < c; ++ci) o[ci * bins] = acc[ci] * bg.inv_count;
      }
    }
  });
}

template <typename T>
void offset_grad_kernel(const T* grad, const T* in, const Geometry<T>& geo, const RoiPoolParams& p, T* g_off) {
  const int64_t bins = p.bins(), c = p.c;
  at::parallel_for(0, p.k, 1, [&](int64_t k0, int64_t k1) {
    std::vector<Pair<T>> pairs;
    for (int64_t k = k0; k < k1; ++k) {
      for (int64_t b = 0; b < bins; ++b) {
        const BinGeom<T>& bg = geo.bins[k * bins + b];
        const AxisEntry<T>* rows = geo.entries.data() + bg.rows;
        const AxisEntry<T>* cols = geo.entries.data() + bg.cols;
        // pairs with (d/dy weight dA[r] B[s], d/dx weight A[r] dB[s])
        pairs.clear();
        for (int64_t i = 0; i < bg.n_rows; ++i) {
          const int64_t row_pixel = (bg.batch * p.h + rows[i].idx) * p.w;
          for (int64_t j = 0; j < bg.n_cols; ++j) {
            const T wy = rows[i].dw * cols[j].w, wx = rows[i].w * cols[j].dw;
            if (wy != T(0) || wx != T(0)) pairs.push_back({row_pixel + cols[j].idx, wy, wx});
          }
        }
        T sy, sx;
        dot_pairs(in, c, grad + (k * bins + b) * c, pairs, sy, sx);
        g_off[k * 2 * bins + b] = bg.dx_scale * bg.inv_count * sx;
        g_off[k * 2 * bins + bins + b] = bg.dy_scale * bg.inv_count * sy;
      }
    }
  });
}

constexpr int64_t kChannelBlock = 16;  // a cache line of float32: tasks never share one

template <typename T>
void input_grad_kernel(const T* grad, const Geometry<T>& geo, const RoiPoolParams& p, T* g_in) {
  const int64_t bins = p.bins(), c = p.c, blocks = (c + kChannelBlock - 1) / kChannelBlock;
  at::parallel_for(0, blocks, 1, [&](int64_t b0, int64_t b1) {
    const int64_t c0 = b0 * kChannelBlock, n = std::min(c, b1 * kChannelBlock) - c0;
    std::vector<Pair<T>> pairs;
    for (int64_t kb = 0; kb < p.k * bins; ++kb) {
      const BinGeom<T>& bg = geo.bins[kb];
      value_pairs(geo, bg, p, bg.inv_count, pairs);
      scatter_pairs(g_in + c0, c, grad + kb * c + c0, pairs, n);
    }
  });
}

// ----------------------------------------------------------------------------------- entry points
int64_t first_bad_roi_cpu(const at::Tensor& rois, const RoiPoolParams& p) {
  int64_t bad = -1;
  AT_DISPATCH_FLOATING_TYPES(rois.scalar_type(), "dcn_plugin deform_roi_pool rois check (CPU)", [&] {
    const scalar_t* r = rois.data_ptr<scalar_t>();
    for (int64_t k = 0; k < p.k && bad < 0; ++k)
      if (roi_fault<scalar_t>(r + 5 * k, p.n, p.spatial_scale) != kRoiOk) bad = k;
  });
  return bad;
}

void forward_rows_cpu(const at::Tensor& in, const at::Tensor& rois, const at::Tensor& off, const RoiPoolParams& p,
                      at::Tensor& out) {
  AT_DISPATCH_FLOATING_TYPES(in.scalar_type(), "dcn_plugin deform_roi_pool (CPU)", [&] {
    using T = scalar_t;
    const Geometry<T> geo = build_geometry<T>(rois.data_ptr<T>(), off.defined() ? off.data_ptr<T>() : nullptr, p);
    forward_kernel<T>(in.data_ptr<T>(), geo, p, out.data_ptr<T>());
  });
}

void backward_rows_cpu(const at::Tensor& grad, const at::Tensor& in, const at::Tensor& rois, const at::Tensor& off,
                       const RoiPoolParams& p, at::Tensor& g_in, at::Tensor& g_off) {
  AT_DISPATCH_FLOATING_TYPES(grad.scalar_type(), "dcn_plugin deform_roi_pool backward (CPU)", [&] {
    using T = scalar_t;
    const Geometry<T> geo = build_geometry<T>(rois.data_ptr<T>(), off.defined() ? off.data_ptr<T>() : nullptr, p);
    if (g_off.defined()) offset_grad_kernel<T>(grad.data_ptr<T>(), in.data_ptr<T>(), geo, p, g_off.data_ptr<T>());
    if (g_in.defined()) input_grad_kernel<T>(grad.data_ptr<T>(), geo, p, g_in.data_ptr<T>());
  });
}

const RoiPoolBackend kCpuRoiPool{&first_bad_roi_cpu, &transpose_last2_cpu, &forward_rows_cpu, &backward_rows_cpu};

}  // namespace

TORCH_LIBRARY_IMPL(dcn_plugin, CPU, m) {
  m.impl("deform_roi_pool", &roi_pool_forward_kernel<kCpuRoiPool>);
  m.impl("deform_roi_pool_backward", &roi_pool_backward_kernel<kCpuRoiPool>);
}

}  // namespace dcn_plugin
