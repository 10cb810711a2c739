// CPU kernels of the modulated deformable convolution.
//
// Layout: everything the gathers touch is channels-last. For one image the input is read as
// (H, W, C) rows, so one sample's four taps are four contiguous channel rows: one set of bilinear
// weights (and one offset/mask read) serves all channels of a deform group. The columns of one image
// are K-major, (P, groups, K, C/groups) with P = Ho*Wo, K = kh*kw, the layout the CUDA kernels use
// too: the channels of one sample are contiguous in the columns as in the input, so every channel
// loop below (gather, offset/mask gradient, input-gradient scatter) runs over unit-stride rows.
// Backward: offset and mask gradients in one pass per (position, kernel point, deform group), reading
// the four taps once; the input gradient is a scatter partitioned by channel ranges (no two threads
// touch the same element, so no atomics and the result does not depend on the thread count); the
// weight gradient is grad_out @ col (GEMM). All of it is deterministic.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <vector>

#include "cpu/simd.h"
#include "cpu/transpose.h"
#include "dcn_common.h"
#include "deform_sampling.h"

namespace dcn_plugin {
namespace {

// The three channel loops below do all the per-element work of the CPU kernels. Each runs over `runs`
// runs of `len` channels: contiguous in the input rows (run r starts at r*len), and in the columns at a
// stride of `cs` (the next conv group's block of a K-major column row; one run when groups == 1).

// dst[r*cs + i] = wa*a[r*len + i] + wb*b[...] + wc*c[...] + wd*d[...]
template <typename T>
DCN_ALWAYS_INLINE void blend4(T* __restrict dst, int64_t cs, const T* __restrict a, const T* __restrict b,
                              const T* __restrict c, const T* __restrict d, T wa, T wb, T wc, T wd, int64_t len,
                              int64_t runs) {
  for (int64_t r = 0; r < runs; ++r, dst += cs, a += len, b += len, c += len, d += len)
    for (int64_t i = 0; i < len; ++i) dst[i] = wa * a[i] + wb * b[i] + wc * c[i] + wd * d[i];
}

// Adds to (s_val, s_dy, s_dx) the sums over the channels of g*(w00 v00 + w01 v01 + w10 v10 + w11 v11),
// of g*dval/dy and of g*dval/dx (g from the columns' gradient, v from the four tap rows).
template <typename T>
DCN_ALWAYS_INLINE void coord_mask_grad(const T* __restrict g, int64_t cs, const T* __restrict v00,
                                       const T* __restrict v01, const T* __restrict v10, const T* __restrict v11,
                                       const BilinearTaps<T>& t, int64_t len, int64_t runs, T& s_val, T& s_dy,
                                       T& s_dx) {
  // Per-lane partial sums (a fixed reduction order the compiler can vectorise).
  constexpr int kLanes = 16;
  T pv[kLanes] = {}, py[kLanes] = {}, px[kLanes] = {};
  const T hy = T(1) - t.ly, hx = T(1) - t.lx;
  // tap weights without validity (values of invalid taps are read from a zero row)
  const T a00 = hy * hx, a01 = hy * t.lx, a10 = t.ly * hx, a11 = t.ly * t.lx;
  for (int64_t r = 0; r < runs; ++r, g += cs, v00 += len, v01 += len, v10 += len, v11 += len) {
    int64_t i = 0;
    for (; i + kLanes <= len; i += kLanes) {
      for (int l = 0; l < kLanes; ++l) {
        const T gi = g[i + l];
        const T x00 = v00[i + l], x01 = v01[i + l], x10 = v10[i + l], x11 = v11[i + l];
        pv[l] += gi * (a00 * x00 + a01 * x01 + a10 * x10 + a11 * x11);
        py[l] += gi * (hx * (x10 - x00) + t.lx * (x11 - x01));
        px[l] += gi * (hy * (x01 - x00) + t.ly * (x11 - x10));
      }
    }
    for (int l = 0; i < len; ++i, ++l) {
      const T gi = g[i];
      const T x00 = v00[i], x01 = v01[i], x10 = v10[i], x11 = v11[i];
      pv[l] += gi * (a00 * x00 + a01 * x01 + a10 * x10 + a11 * x11);
      py[l] += gi * (hx * (x10 - x00) + t.lx * (x11 - x01));
      px[l] += gi * (hy * (x01 - x00) + t.ly * (x11 - x10));
    }
  }
  for (int l = 0; l < kLanes; ++l) {
    s_val += pv[l];
    s_dy += py[l];
    s_dx += px[l];
  }
}

// Multi-versioned entry points of the channel loops (target_clones does not apply to templates).
#define DCN_DEFINE_LOOPS(T)                                                                                      \
  DCN_SIMD_CLONES void blend4_simd(T* __restrict dst, int64_t cs, const T* __restrict a, const T* __restrict b,  \
                                   const T* __restrict c, const T* __restrict d, T wa, T wb, T wc, T wd,         \
                                   int64_t len, int64_t runs) {                                                  \
    blend4<T>(dst, cs, a, b, c, d, wa, wb, wc, wd, len, runs);                                                   \
  }                                                                                                              \
  DCN_SIMD_CLONES void scatter4_simd(T* a, T* b, T* c, T* d, const T* __restrict g, int64_t cs, T wa, T wb,     \
                                     T wc, T wd, int64_t len, int64_t runs) {                                    \
    scatter4<T>(a, b, c, d, g, cs, wa, wb, wc, wd, len, runs);                                                   \
  }                                                                                                              \
  DCN_SIMD_CLONES void coord_mask_grad_simd(const T* __restrict g, int64_t cs, const T* __restrict v00,          \
                                            const T* __restrict v01, const T* __restrict v10,                    \
                                            const T* __restrict v11, const BilinearTaps<T>& t, int64_t len,      \
                                            int64_t runs, T& s_val, T& s_dy, T& s_dx) {                          \
    coord_mask_grad<T>(g, cs, v00, v01, v10, v11, t, len, runs, s_val, s_dy, s_dx);                              \
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

// Where the samples of one call sit, computed once per call so that the per-sample work has no integer
// division: the kernel points' displacements, and each deform group's channels split into spans.
struct Span {
  int64_t c0, col0, len, runs;  // runs [c0 + r*len, c0 + (r+1)*len), r < runs; see spans_of
};
struct SpanList {
  std::array<Span, 3> span;
  int n = 0;
};

// The channels of deform group g that lie in [lo, hi), split at conv-group boundaries into at most three
// spans of equal runs: the entries of run r for kernel point k start at offset col0 + k*C/groups + r*cs of a
// K-major column row (cs = K * C/groups).
inline SpanList spans_of(const ConvParams& p, int64_t g, int64_t lo, int64_t hi) {
  const int64_t cd = p.c_per_deform_group(), cg = p.c_per_group(), kk = p.k();
  SpanList l;
  int64_t c0 = std::max(g * cd, lo);
  const int64_t end = std::min((g + 1) * cd, hi);
  auto add = [&](int64_t len, int64_t runs) {
    l.span[l.n++] = {c0, (c0 / cg) * kk * cg + c0 % cg, len, runs};
    c0 += len * runs;
  };
  if (c0 >= end) return l;
  if (c0 % cg != 0 || end - c0 < cg) add(std::min(end, (c0 / cg + 1) * cg) - c0, 1);  // a partial first group
  if ((end - c0) / cg > 0) add(cg, (end - c0) / cg);                                    // whole conv groups
  if (c0 < end) add(end - c0, 1);                                                        // a partial last one
  return l;
}

struct Grid {
  std::vector<int64_t> ky, kx;    // kernel point k's displacement on the input grid: i*dil_h, j*dil_w
  std::vector<SpanList> spans;    // per deform group: its spans over all channels
  int64_t cs;                     // column stride between conv groups: K * C/groups
  explicit Grid(const ConvParams& p) : ky(p.k()), kx(p.k()), spans(p.deform_groups), cs(p.k() * p.c_per_group()) {
    for (int64_t k = 0; k < p.k(); ++k) {
      ky[k] = (k / p.kw) * p.dil_h;
      kx[k] = (k % p.kw) * p.dil_w;
    }
    for (int64_t g = 0; g < p.deform_groups; ++g) spans[g] = spans_of(p, g, 0, p.c);
  }
};

// The sample of kernel point k and deform group g for the output position pos, whose kernel window
// starts at (y0, x0) on the input grid, and its four tap rows.
template <typename T>
struct Sample {
  BilinearTaps<T> t;
  T m;  // modulation
  const T* r00; const T* r01; const T* r10; const T* r11;
  int64_t i00, i01, i10, i11;  // pixel indices (y*W+x) of the taps, -1 outside
};

template <typename T>
DCN_ALWAYS_INLINE Sample<T> make_sample(const ImageView<T>& im, const ConvParams& p, const Grid& grid, int64_t pos,
                                        int64_t y0, int64_t x0, int64_t k, int64_t g) {
  Sample<T> s;
  const int64_t dgk = p.deform_groups * p.k(), e = g * p.k() + k;
  const T* o = im.off + pos * 2 * dgk + 2 * e;
  s.t = bilinear_taps_at<T>(y0 + grid.ky[k], x0 + grid.kx[k], o[0], o[1], p.h, p.w);
  s.m = im.msk ? im.msk[pos * dgk + e] : T(1);
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

// The top-left corner of output position pos's kernel window on the input grid.
inline void window_origin(const ConvParams& p, int64_t pos, int64_t& y0, int64_t& x0) {
  const int64_t ho = pos / p.wo;
  y0 = ho * p.stride_h - p.pad_h;
  x0 = (pos - ho * p.wo) * p.stride_w - p.pad_w;
}

// Columns of the positions [pos0, pos0 + np) of one image: col (np, groups, K, C/groups), K-major.
template <typename T>
void im2col(const ImageView<T>& im, const ConvParams& p, const Grid& grid, int64_t pos0, int64_t np, T* col) {
  const int64_t kk = p.k(), row = p.c * kk, cg = p.c_per_group();
  at::parallel_for(pos0, pos0 + np, 16, [&](int64_t begin, int64_t end) {
    for (int64_t pos = begin; pos < end; ++pos) {
      T* dst_row = col + (pos - pos0) * row;
      int64_t y0, x0;
      window_origin(p, pos, y0, x0);
      for (int64_t k = 0; k < kk; ++k) {
        for (int64_t g = 0; g < p.deform_groups; ++g) {
          const Sample<T> s = make_sample(im, p, grid, pos, y0, x0, k, g);
          const T w00 = s.t.w00 * s.m, w01 = s.t.w01 * s.m, w10 = s.t.w10 * s.m, w11 = s.t.w11 * s.m;
          const SpanList& sl = grid.spans[g];
          for (int i = 0; i < sl.n; ++i) {
            const Span& sp = sl.span[i];
            blend4_simd(dst_row + sp.col0 + k * cg, grid.cs, s.r00 + sp.c0, s.r01 + sp.c0, s.r10 + sp.c0,
                        s.r11 + sp.c0, w00, w01, w10, w11, sp.len, sp.runs);
          }
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

void im2col_cpu(const at::Tensor& in, const at::Tensor& off, const at::Tensor& msk, const ConvParams& p,
                const Chunk& ch, at::Tensor& col) {
  AT_DISPATCH_FLOATING_TYPES(in.scalar_type(), "dcn_plugin im2col (CPU)", [&] {
    const at::Tensor zeros = at::zeros({p.c}, in.options());
    const Grid grid(p);
    for (int64_t i = 0; i < ch.nc; ++i)
      im2col(image_view<scalar_t>(in, off, msk, zeros.data_ptr<scalar_t>(), p, ch.n0 + i), p, grid, ch.pos0, ch.np,
             col.data_ptr<scalar_t>() + i * ch.np * p.c * p.k());
  });
}

// Offset and mask gradients of the chunk; with kCol, the chunk's columns as well (what im2col writes), from
// the same samples and tap reads: the backward pass needs both.
template <typename T, bool kCol>
void offset_mask_grad_rows(const at::Tensor& in, const at::Tensor& off, const at::Tensor& msk, const at::Tensor& gcol,
                           const ConvParams& p, const Chunk& ch, T* col, at::Tensor& g_off, at::Tensor& g_msk) {
  const at::Tensor zeros = at::zeros({p.c}, in.options());
  const int64_t kk = p.k(), dg = p.deform_groups, P = p.p(), row = p.c * kk, cg = p.c_per_group();
  const Grid grid(p);
  for (int64_t i = 0; i < ch.nc; ++i) {
    const int64_t n = ch.n0 + i;
    const ImageView<T> im = image_view<T>(in, off, msk, zeros.data_ptr<T>(), p, n);
    const T* gc = gcol.data_ptr<T>() + i * ch.np * row;  // position pos: row pos - pos0
    T* cl = kCol ? col + i * ch.np * row : nullptr;
    T* goff = g_off.defined() ? g_off.data_ptr<T>() + n * P * 2 * dg * kk : nullptr;
    T* gmsk = g_msk.defined() ? g_msk.data_ptr<T>() + n * P * dg * kk : nullptr;
    at::parallel_for(ch.pos0, ch.pos0 + ch.np, 16, [&](int64_t begin, int64_t end) {
      for (int64_t pos = begin; pos < end; ++pos) {
        const T* gc_row = gc + (pos - ch.pos0) * row;
        int64_t y0, x0;
        window_origin(p, pos, y0, x0);
        for (int64_t k = 0; k < kk; ++k) {
          for (int64_t g = 0; g < dg; ++g) {
            const Sample<T> s = make_sample(im, p, grid, pos, y0, x0, k, g);
            const SpanList& sl = grid.spans[g];
            if (kCol) {
              const T w00 = s.t.w00 * s.m, w01 = s.t.w01 * s.m, w10 = s.t.w10 * s.m, w11 = s.t.w11 * s.m;
              for (int j = 0; j < sl.n; ++j) {
                const Span& sp = sl.span[j];
                blend4_simd(cl + (pos - ch.pos0) * row + sp.col0 + k * cg, grid.cs, s.r00 + sp.c0, s.r01 + sp.c0,
                            s.r10 + sp.c0, s.r11 + sp.c0, w00, w01, w10, w11, sp.len, sp.runs);
              }
            }
            T sv = 0, sy = 0, sx = 0;
            if (s.t.in_range) {
              for (int j = 0; j < sl.n; ++j) {
                const Span& sp = sl.span[j];
                coord_mask_grad_simd(gc_row + sp.col0 + k * cg, grid.cs, s.r00 + sp.c0, s.r01 + sp.c0,
                                     s.r10 + sp.c0, s.r11 + sp.c0, s.t, sp.len, sp.runs, sv, sy, sx);
              }
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
}

void offset_mask_grad_cpu(const at::Tensor& in, const at::Tensor& off, const at::Tensor& msk, const at::Tensor& gcol,
                          const ConvParams& p, const Chunk& ch, at::Tensor& g_off, at::Tensor& g_msk) {
  AT_DISPATCH_FLOATING_TYPES(in.scalar_type(), "dcn_plugin offset/mask grad (CPU)", [&] {
    offset_mask_grad_rows<scalar_t, false>(in, off, msk, gcol, p, ch, nullptr, g_off, g_msk);
  });
}

void col_and_offset_mask_grad_cpu(const at::Tensor& in, const at::Tensor& off, const at::Tensor& msk,
                                  const at::Tensor& gcol, const ConvParams& p, const Chunk& ch, at::Tensor& col,
                                  at::Tensor& g_off, at::Tensor& g_msk) {
  AT_DISPATCH_FLOATING_TYPES(in.scalar_type(), "dcn_plugin columns + offset/mask grad (CPU)", [&] {
    offset_mask_grad_rows<scalar_t, true>(in, off, msk, gcol, p, ch, col.data_ptr<scalar_t>(), g_off, g_msk);
  });
}

void input_grad_cpu(const at::Tensor& off, const at::Tensor& msk, const at::Tensor& gcol, const ConvParams& p,
                    const Chunk& ch, at::Tensor& g_in) {
  AT_DISPATCH_FLOATING_TYPES(gcol.scalar_type(), "dcn_plugin input grad (CPU)", [&] {
    using T = scalar_t;
    const int64_t kk = p.k(), dg = p.deform_groups, P = p.p(), row = p.c * kk, cd = p.c_per_deform_group();
    const int64_t cg = p.c_per_group();
    const Grid grid(p);
    const int nthreads = at::get_num_threads();
    const int64_t grain = std::max<int64_t>(16, (p.c + nthreads - 1) / nthreads);
    for (int64_t i = 0; i < ch.nc; ++i) {
      const int64_t n = ch.n0 + i;
      // the sampling geometry needs no input values: in/zeros are not read here
      const ImageView<T> im{nullptr, off.data_ptr<T>() + n * P * 2 * dg * kk,
                            msk.defined() ? msk.data_ptr<T>() + n * P * dg * kk : nullptr, nullptr};
      const T* gc = gcol.data_ptr<T>() + i * ch.np * row;  // position pos: row pos - pos0
      T* gin = g_in.data_ptr<T>() + n * p.h * p.w * p.c;
      // Each task owns a channel range of the input gradient: no races, and every element sums its
      // contributions in the same (position, kernel point) order whatever the number of threads.
      at::parallel_for(0, p.c, grain, [&](int64_t c_lo, int64_t c_hi) {
        std::vector<T> sink(c_hi - c_lo);  // written for taps outside the image, never read
        const int64_t g_lo = c_lo / cd, g_hi = std::min(dg, (c_hi + cd - 1) / cd);  // deform groups in range
        std::vector<SpanList> spans;
        for (int64_t g = g_lo; g < g_hi; ++g) spans.push_back(spans_of(p, g, c_lo, c_hi));
        for (int64_t pos = ch.pos0; pos < ch.pos0 + ch.np; ++pos) {
          const T* gc_row = gc + (pos - ch.pos0) * row;
          int64_t y0, x0;
          window_origin(p, pos, y0, x0);
          for (int64_t k = 0; k < kk; ++k) {
            for (int64_t g = g_lo; g < g_hi; ++g) {
              const Sample<T> s = make_sample(im, p, grid, pos, y0, x0, k, g);
              if (!s.t.in_range) continue;
              const T w00 = s.t.w00 * s.m, w01 = s.t.w01 * s.m, w10 = s.t.w10 * s.m, w11 = s.t.w11 * s.m;
              const SpanList& sl = spans[g - g_lo];
              for (int j = 0; j < sl.n; ++j) {
                const Span& sp = sl.span[j];
                T* sk = sink.data() + (sp.c0 - c_lo);
                scatter4_simd(s.i00 >= 0 ? gin + s.i00 * p.c + sp.c0 : sk, s.i01 >= 0 ? gin + s.i01 * p.c + sp.c0 : sk,
                              s.i10 >= 0 ? gin + s.i10 * p.c + sp.c0 : sk, s.i11 >= 0 ? gin + s.i11 * p.c + sp.c0 : sk,
                              gc_row + sp.col0 + k * cg, grid.cs, w00, w01, w10, w11, sp.len, sp.runs);
              }
            }
          }
        }
      });
    }
  });
}

// Columns of about 4 MB per chunk: several images at a time for small maps (so that their GEMMs stay
// large), one image, or blocks of at least 256 positions of one image for detection-sized maps: the
// buffer, reused by every chunk, then stays in the cache between im2col and the GEMM.
const Backend kCpuBackend{&im2col_cpu, &offset_mask_grad_cpu, &col_and_offset_mask_grad_cpu, &input_grad_cpu,
                          &transpose_last2_into_cpu, /*col_budget_elements=*/int64_t(1) << 20,
                          /*position_blocks=*/true};

}  // namespace

TORCH_LIBRARY_IMPL(dcn_plugin, CPU, m) {
  m.impl("modulated_deform_conv2d", &forward_kernel<kCpuBackend>);
  m.impl("modulated_deform_conv2d_backward", &backward_kernel<kCpuBackend>);
}

}  // namespace dcn_plugin
