// CPU kernels of the modulated deformable convolution.
//
// Layout: everything the gathers touch is channels-last. For one image the input is read as
// (H, W, C) rows, so one sample's four taps are four contiguous channel rows: one set of bilinear
// weights (and one offset/mask read) serves all channels of a deform group, and the channel loop is a
// plain vectorisable AXPY. The columns of one image are channel-major, (P, C, K) with P = Ho*Wo,
// K = kh*kw (so the weight is used in its own (O, C/g*K) layout, with no copy): the channel loops
// step through a column row with stride K, which stays in L1 (one row is C*K values).
// Backward: offset and mask gradients in one pass per
// (position, kernel point, deform group), reading the four taps once; the input gradient is a
// scatter partitioned by channel ranges (no two threads touch the same element, so no atomics and
// the result does not depend on the thread count); the weight gradient is grad_out @ col (GEMM).
// All of it is deterministic.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "dcn_common.h"
#include "deform_sampling.h"

// The three channel loops below do all the per-element work of the CPU kernels. They are compiled
// for several x86-64 ISA levels (AVX-512, AVX2+FMA, baseline SSE2) and the best one the CPU supports
// is picked at load time (GCC/Clang function multi-versioning), so the library runs everywhere and
// uses wide vectors where it can.
#if defined(__x86_64__) && defined(__linux__) && (defined(__GNUC__) || defined(__clang__))
#define DCN_SIMD_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define DCN_SIMD_CLONES
#endif
#define DCN_ALWAYS_INLINE inline __attribute__((always_inline))

namespace dcn_plugin {
namespace {

// dst[i*ds] = wa*a[i] + wb*b[i] + wc*c[i] + wd*d[i]
template <typename T>
DCN_ALWAYS_INLINE void blend4(T* __restrict dst, int64_t ds, const T* __restrict a, const T* __restrict b,
                              const T* __restrict c, const T* __restrict d, T wa, T wb, T wc, T wd, int64_t n) {
  for (int64_t i = 0; i < n; ++i) dst[i * ds] = wa * a[i] + wb * b[i] + wc * c[i] + wd * d[i];
}

// a[i] += wa*g[i*gs]; b[i] += wb*g[i*gs]; ... The four taps of a sample are four different pixels;
// only the sink row for taps outside the image may be passed more than once.
template <typename T>
DCN_ALWAYS_INLINE void scatter4(T* a, T* b, T* c, T* d, const T* __restrict g, int64_t gs, T wa, T wb, T wc, T wd,
                                int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    const T gi = g[i * gs];
    a[i] += wa * gi;
    b[i] += wb * gi;
    c[i] += wc * gi;
    d[i] += wd * gi;
  }
}

// Sums over i of g[i*gs]*(w00 v00 + w01 v01 + w10 v10 + w11 v11), of g*dval/dy and of g*dval/dx.
template <typename T>
DCN_ALWAYS_INLINE void coord_mask_grad(const T* __restrict g, int64_t gs, const T* __restrict v00, const T* __restrict v01,
                            const T* __restrict v10, const T* __restrict v11, const BilinearTaps<T>& t, int64_t n,
                            T& s_val, T& s_dy, T& s_dx) {
  // Per-lane partial sums (a fixed reduction order the compiler can vectorise).
  constexpr int kLanes = 8;
  T pv[kLanes] = {}, py[kLanes] = {}, px[kLanes] = {};
  const T hy = T(1) - t.ly, hx = T(1) - t.lx;
  // tap weights without validity (values of invalid taps are read from a zero row)
  const T a00 = hy * hx, a01 = hy * t.lx, a10 = t.ly * hx, a11 = t.ly * t.lx;
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    for (int l = 0; l < kLanes; ++l) {
      const T gi = g[(i + l) * gs];
      const T x00 = v00[i + l], x01 = v01[i + l], x10 = v10[i + l], x11 = v11[i + l];
      pv[l] += gi * (a00 * x00 + a01 * x01 + a10 * x10 + a11 * x11);
      py[l] += gi * (hx * (x10 - x00) + t.lx * (x11 - x01));
      px[l] += gi * (hy * (x01 - x00) + t.ly * (x11 - x10));
    }
  }
  for (int l = 0; i < n; ++i, ++l) {
    const T gi = g[i * gs];
    const T x00 = v00[i], x01 = v01[i], x10 = v10[i], x11 = v11[i];
    pv[l] += gi * (a00 * x00 + a01 * x01 + a10 * x10 + a11 * x11);
    py[l] += gi * (hx * (x10 - x00) + t.lx * (x11 - x01));
    px[l] += gi * (hy * (x01 - x00) + t.ly * (x11 - x10));
  }
  s_val = s_dy = s_dx = T(0);
  for (int l = 0; l < kLanes; ++l) {
    s_val += pv[l];
    s_dy += py[l];
    s_dx += px[l];
  }
}

// Multi-versioned entry points of the channel loops (target_clones does not apply to templates).
#define DCN_DEFINE_LOOPS(T)                                                                                       \
  DCN_SIMD_CLONES void blend4_simd(T* __restrict dst, int64_t ds, const T* __restrict a, const T* __restrict b,  \
                                   const T* __restrict c, const T* __restrict d, T wa, T wb, T wc, T wd,          \
                                   int64_t n) {                                                                   \
    blend4<T>(dst, ds, a, b, c, d, wa, wb, wc, wd, n);                                                            \
  }                                                                                                               \
  DCN_SIMD_CLONES void scatter4_simd(T* a, T* b, T* c, T* d, const T* __restrict g, int64_t gs, T wa, T wb, T wc, \
                                     T wd, int64_t n) {                                                           \
    scatter4<T>(a, b, c, d, g, gs, wa, wb, wc, wd, n);                                                            \
  }                                                                                                               \
  DCN_SIMD_CLONES void coord_mask_grad_simd(const T* __restrict g, int64_t gs, const T* __restrict v00,           \
                                            const T* __restrict v01, const T* __restrict v10,                     \
                                            const T* __restrict v11, const BilinearTaps<T>& t, int64_t n,         \
                                            T& s_val, T& s_dy, T& s_dx) {                                         \
    coord_mask_grad<T>(g, gs, v00, v01, v10, v11, t, n, s_val, s_dy, s_dx);                                       \
  }
DCN_DEFINE_LOOPS(float)
DCN_DEFINE_LOOPS(double)
#undef DCN_DEFINE_LOOPS

// Everything needed to locate one image's samples.
template <typename T>
struct ImageView {
  const T* in;    // (H, W, C)
  const T* off;   // (P, dg*K*2)
  const T* msk;   // (P, dg*K) or nullptr
  const T* zeros; // C zeros: the row read for taps outside the image
};

// The sample of output position pos, kernel point k, deform group g, and its four tap rows.
template <typename T>
struct Sample {
  BilinearTaps<T> t;
  T m;  // modulation
  const T* r00; const T* r01; const T* r10; const T* r11;
  int64_t i00, i01, i10, i11;  // pixel indices (y*W+x) of the taps, -1 outside
};

template <typename T>
inline Sample<T> make_sample(const ImageView<T>& im, const ConvParams& p, int64_t pos, int64_t k, int64_t g) {
  Sample<T> s;
  const int64_t ho = pos / p.wo, wo = pos % p.wo, i = k / p.kw, j = k % p.kw, kk = p.k();
  const T* o = im.off + pos * 2 * p.deform_groups * kk + 2 * (g * kk + k);
  s.t = bilinear_taps_at<T>(base_coord(ho, p.stride_h, p.pad_h, i, p.dil_h),
                            base_coord(wo, p.stride_w, p.pad_w, j, p.dil_w), o[0], o[1], p.h, p.w);
  s.m = im.msk ? im.msk[pos * p.deform_groups * kk + g * kk + k] : T(1);
  const int64_t base = s.t.y0 * p.w + s.t.x0;
  s.i00 = s.t.v00 ? base : -1;
  s.i01 = s.t.v01 ? base + 1 : -1;
  s.i10 = s.t.v10 ? base + p.w : -1;
  s.i11 = s.t.v11 ? base + p.w + 1 : -1;
  if (im.in) {  // tap rows (the input gradient pass needs only the geometry)
    s.r00 = s.i00 >= 0 ? im.in + s.i00 * p.c : im.zeros;
    s.r01 = s.i01 >= 0 ? im.in + s.i01 * p.c : im.zeros;
    s.r10 = s.i10 >= 0 ? im.in + s.i10 * p.c : im.zeros;
    s.r11 = s.i11 >= 0 ? im.in + s.i11 * p.c : im.zeros;
  } else {
    s.r00 = s.r01 = s.r10 = s.r11 = nullptr;
  }
  return s;
}

// The channels [c0, c1) of deform group g that lie in [lo, hi); empty when c0 >= c1.
inline void deform_group_channels(const ConvParams& p, int64_t g, int64_t lo, int64_t hi, int64_t& c0, int64_t& c1) {
  const int64_t cd = p.c_per_deform_group();
  c0 = std::max(g * cd, lo);
  c1 = std::min((g + 1) * cd, hi);
}

// Columns of one image: col (P, C, K), channel-major.
template <typename T>
void im2col(const ImageView<T>& im, const ConvParams& p, T* col) {
  const int64_t kk = p.k(), row = p.c * kk;
  at::parallel_for(0, p.p(), 16, [&](int64_t begin, int64_t end) {
    for (int64_t pos = begin; pos < end; ++pos) {
      T* dst_row = col + pos * row;
      for (int64_t k = 0; k < kk; ++k) {
        for (int64_t g = 0; g < p.deform_groups; ++g) {
          const Sample<T> s = make_sample(im, p, pos, k, g);
          const T m = s.m;
          int64_t c0, c1;
          deform_group_channels(p, g, 0, p.c, c0, c1);
          blend4_simd(dst_row + c0 * kk + k, kk, s.r00 + c0, s.r01 + c0, s.r10 + c0, s.r11 + c0, s.t.w00 * m,
                      s.t.w01 * m, s.t.w10 * m, s.t.w11 * m, c1 - c0);
        }
      }
    }
  });
}

template <typename T>
ImageView<T> image_view(const at::Tensor& in, const at::Tensor& off, const at::Tensor& msk, const T* zeros,
                        const ConvParams& p, int64_t n) {
  const int64_t P = p.p(), dgk = p.deform_groups * p.k();
  return {in.data_ptr<T>() + n * p.h * p.w * p.c, off.data_ptr<T>() + n * P * 2 * dgk,
          msk.defined() ? msk.data_ptr<T>() + n * P * dgk : nullptr, zeros};
}

void im2col_cpu(const at::Tensor& in, const at::Tensor& off, const at::Tensor& msk, const ConvParams& p, int64_t n0,
                int64_t nc, at::Tensor& col) {
  AT_DISPATCH_FLOATING_TYPES(in.scalar_type(), "dcn_plugin im2col (CPU)", [&] {
    const at::Tensor zeros = at::zeros({p.c}, in.options());
    for (int64_t i = 0; i < nc; ++i)
      im2col(image_view<scalar_t>(in, off, msk, zeros.data_ptr<scalar_t>(), p, n0 + i), p,
             col.data_ptr<scalar_t>() + i * p.p() * p.c * p.k());
  });
}

void offset_mask_grad_cpu(const at::Tensor& in, const at::Tensor& off, const at::Tensor& msk, const at::Tensor& gcol,
                          const ConvParams& p, int64_t n0, int64_t nc, at::Tensor& g_off, at::Tensor& g_msk) {
  AT_DISPATCH_FLOATING_TYPES(in.scalar_type(), "dcn_plugin offset/mask grad (CPU)", [&] {
    using T = scalar_t;
    const at::Tensor zeros = at::zeros({p.c}, in.options());
    const int64_t kk = p.k(), dg = p.deform_groups, P = p.p(), row = p.c * kk;
    for (int64_t i = 0; i < nc; ++i) {
      const int64_t n = n0 + i;
      const ImageView<T> im = image_view<T>(in, off, msk, zeros.data_ptr<T>(), p, n);
      const T* gc = gcol.data_ptr<T>() + i * P * row;
      T* goff = g_off.defined() ? g_off.data_ptr<T>() + n * P * 2 * dg * kk : nullptr;
      T* gmsk = g_msk.defined() ? g_msk.data_ptr<T>() + n * P * dg * kk : nullptr;
      at::parallel_for(0, P, 16, [&](int64_t begin, int64_t end) {
        for (int64_t pos = begin; pos < end; ++pos) {
          for (int64_t k = 0; k < kk; ++k) {
            for (int64_t g = 0; g < dg; ++g) {
              const Sample<T> s = make_sample(im, p, pos, k, g);
              T sv = 0, sy = 0, sx = 0;
              if (s.t.in_range) {
                int64_t c0, c1;
                deform_group_channels(p, g, 0, p.c, c0, c1);
                coord_mask_grad_simd(gc + pos * row + c0 * kk + k, kk, s.r00 + c0, s.r01 + c0, s.r10 + c0, s.r11 + c0,
                                     s.t, c1 - c0, sv, sy, sx);
              }
              if (goff) {
                goff[pos * 2 * dg * kk + 2 * (g * kk + k)] = s.m * sy;
                goff[pos * 2 * dg * kk + 2 * (g * kk + k) + 1] = s.m * sx;
              }
              if (gmsk) gmsk[pos * dg * kk + g * kk + k] = sv;
            }
          }
        }
      });
    }
  });
}

void input_grad_cpu(const at::Tensor& off, const at::Tensor& msk, const at::Tensor& gcol, const ConvParams& p,
                    int64_t n0, int64_t nc, at::Tensor& g_in) {
  AT_DISPATCH_FLOATING_TYPES(gcol.scalar_type(), "dcn_plugin input grad (CPU)", [&] {
    using T = scalar_t;
    const int64_t kk = p.k(), dg = p.deform_groups, P = p.p(), row = p.c * kk, cd = p.c_per_deform_group();
    const int nthreads = at::get_num_threads();
    const int64_t grain = std::max<int64_t>(16, (p.c + nthreads - 1) / nthreads);
    for (int64_t i = 0; i < nc; ++i) {
      const int64_t n = n0 + i;
      // the sampling geometry needs no input values: in/zeros are not read here
      const ImageView<T> im{nullptr, off.data_ptr<T>() + n * P * 2 * dg * kk,
                            msk.defined() ? msk.data_ptr<T>() + n * P * dg * kk : nullptr, nullptr};
      const T* gc = gcol.data_ptr<T>() + i * P * row;
      T* gin = g_in.data_ptr<T>() + n * p.h * p.w * p.c;
      // Each task owns a channel range of the input gradient: no races, and every element sums its
      // contributions in the same (position, kernel point) order whatever the number of threads.
      at::parallel_for(0, p.c, grain, [&](int64_t c_lo, int64_t c_hi) {
        std::vector<T> sink(c_hi - c_lo);  // written for taps outside the image, never read
        for (int64_t pos = 0; pos < P; ++pos) {
          for (int64_t k = 0; k < kk; ++k) {
            for (int64_t g = std::max<int64_t>(0, c_lo / cd); g < dg && g * cd < c_hi; ++g) {
              const Sample<T> s = make_sample(im, p, pos, k, g);
              if (!s.t.in_range) continue;
              int64_t c0, c1;
              deform_group_channels(p, g, c_lo, c_hi, c0, c1);
              if (c0 >= c1) continue;
              T* sk = sink.data() + (c0 - c_lo);
              scatter4_simd(s.i00 >= 0 ? gin + s.i00 * p.c + c0 : sk, s.i01 >= 0 ? gin + s.i01 * p.c + c0 : sk,
                            s.i10 >= 0 ? gin + s.i10 * p.c + c0 : sk, s.i11 >= 0 ? gin + s.i11 * p.c + c0 : sk,
                            gc + pos * row + c0 * kk + k, kk, s.t.w00 * s.m, s.t.w01 * s.m, s.t.w10 * s.m,
                            s.t.w11 * s.m, c1 - c0);
            }
          }
        }
      });
    }
  });
}

// Chunks of about 4 MB of columns: one image at a time for detection-sized maps (the smallest work
// buffers, below torchvision's, which holds the columns of several images), several images at a
// time for small maps, so that their GEMMs stay large enough to run at full speed.
const Backend kCpuBackend{&im2col_cpu, &offset_mask_grad_cpu, &input_grad_cpu,
                          /*col_budget_elements=*/int64_t(1) << 20, /*channel_major_columns=*/true};

at::Tensor forward_cpu(const at::Tensor& input, const at::Tensor& offset, const std::optional<at::Tensor>& mask,
                       const at::Tensor& weight, const std::optional<at::Tensor>& bias, at::IntArrayRef stride,
                       at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups, int64_t deform_groups) {
  return forward_impl(kCpuBackend, input, offset, mask, weight, bias, stride, padding, dilation, groups,
                      deform_groups);
}

BackwardResult backward_cpu(const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& offset,
                            const std::optional<at::Tensor>& mask, const at::Tensor& weight, at::IntArrayRef stride,
                            at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups, int64_t deform_groups,
                            std::array<bool, 5> output_mask) {
  return backward_impl(kCpuBackend, grad_output, input, offset, mask, weight, stride, padding, dilation, groups,
                       deform_groups, output_mask);
}

}  // namespace

TORCH_LIBRARY_IMPL(dcn_plugin, CPU, m) {
  m.impl("modulated_deform_conv2d", &forward_cpu);
  m.impl("modulated_deform_conv2d_backward", &backward_cpu);
}

}  // namespace dcn_plugin
