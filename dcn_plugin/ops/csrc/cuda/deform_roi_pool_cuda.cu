// CUDA kernels of the deformable RoI pooling (the driver is deform_roi_pool.cpp).
//
// The input is read as channels-last (N, H, W, C) rows: consecutive threads take consecutive channels
// of one output bin, so the tap reads are coalesced and the bin's geometry (RoI, offset, sample range)
// is the same across a warp. Coordinates, weights and sums are float32 for half/bfloat16/float32 data
// (float64 for float64).
//
//   roi_fault_kernel           the checks on the RoIs' values: the index of the first bad RoI, read back
//                              with one synchronisation before any kernel touches the input (a batch
//                              index out of range never reaches a read)
//   forward_kernel             one thread per (RoI, bin, channel)
//   offset_grad_kernel         one warp per (RoI, bin): lanes over channels, a fixed shuffle tree, one
//                              write per offset (deterministic)
//   input_grad_atomic_kernel   one thread per (RoI, bin, channel), atomicAdd into a float32/float64
//                              (N, H, W, C) buffer (fast; the order of the additions varies run to run)
//   deterministic input gradient (torch.use_deterministic_algorithms(True)): every (bin, sample, tap)
//                              is keyed by the input pixel it touches, the keys are sorted stably, and one
//                              thread per (pixel, channel) sums its contributions in sorted order: the
//                              same bits every run (one more synchronisation: the number of entries).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/cuda/Atomic.cuh>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <torch/library.h>

#include <algorithm>
#include <limits>

#include "deform_roi_pool.h"

namespace dcn_plugin {
namespace {

constexpr int kThreads = 256;
constexpr int kWarp = 32;
constexpr int64_t kNoPixel = std::numeric_limits<int64_t>::max();

inline unsigned int blocks_for(int64_t work_items, int items_per_block = kThreads) {
  const int64_t blocks = (work_items + items_per_block - 1) / items_per_block;
  return static_cast<unsigned int>(std::min<int64_t>(std::max<int64_t>(blocks, 1), int64_t(1) << 20));
}

template <typename scalar_t, typename acc_t>
__device__ __forceinline__ acc_t tap(const scalar_t* __restrict__ in_b, const RoiPoolParams& p, bool valid, int64_t y,
                                     int64_t x, int64_t c) {
  return valid ? static_cast<acc_t>(in_b[(y * p.w + x) * p.c + c]) : acc_t(0);
}

// Geometry of bin kb of the (K, PH, PW) bins.
template <typename acc_t, typename scalar_t>
__device__ __forceinline__ RoiBin<acc_t> bin_at(const acc_t* __restrict__ rois, const scalar_t* __restrict__ off,
                                                const RoiPoolParams& p, int64_t kb) {
  const int64_t bins = p.bins(), k = kb / bins, b = kb % bins;
  return roi_bin<acc_t, scalar_t>(rois + 5 * k, off, p, k, b / p.pw, b % p.pw);
}

// f(taps, y axis, x axis) for every sample of bin g that lies on the map (the others are zero).
template <typename acc_t, typename F>
__device__ __forceinline__ void for_each_sample(const RoiBin<acc_t>& g, const RoiPoolParams& p, F&& f) {
  for (int64_t iy = g.y.lo; iy < g.y.hi; ++iy) {
    const AxisTaps<acc_t> ay = roi_align_axis<acc_t>(g.y.at(iy), p.h);
    for (int64_t ix = g.x.lo; ix < g.x.hi; ++ix) {
      const AxisTaps<acc_t> ax = roi_align_axis<acc_t>(g.x.at(ix), p.w);
      f(roi_align_taps<acc_t>(ay, ax, p.h, p.w), ay, ax);
    }
  }
}

template <typename acc_t>
__global__ void roi_fault_kernel(const acc_t* __restrict__ rois, RoiPoolParams p,
                                 unsigned long long* __restrict__ first) {
  for (int64_t k = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; k < p.k; k += int64_t(blockDim.x) * gridDim.x)
    if (roi_fault<acc_t>(rois + 5 * k, p.n, p.spatial_scale) != kRoiOk)
      atomicMin(first, static_cast<unsigned long long>(k));
}

template <typename scalar_t, typename acc_t>
__global__ void forward_kernel(const scalar_t* __restrict__ in, const acc_t* __restrict__ rois,
                               const scalar_t* __restrict__ off, RoiPoolParams p, int64_t total,
                               scalar_t* __restrict__ out) {
  const int64_t bins = p.bins();
  for (int64_t e = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; e < total; e += int64_t(blockDim.x) * gridDim.x) {
    const int64_t c = e % p.c, kb = e / p.c;
    const RoiBin<acc_t> g = bin_at(rois, off, p, kb);
    const scalar_t* in_b = in + g.batch * p.h * p.w * p.c;
    acc_t s = acc_t(0);
    for_each_sample(g, p, [&](const BilinearTaps<acc_t>& t, const AxisTaps<acc_t>&, const AxisTaps<acc_t>&) {
      s += t.w00 * tap<scalar_t, acc_t>(in_b, p, t.v00, t.y0, t.x0, c) +
           t.w01 * tap<scalar_t, acc_t>(in_b, p, t.v01, t.y0, t.x0 + 1, c) +
           t.w10 * tap<scalar_t, acc_t>(in_b, p, t.v10, t.y0 + 1, t.x0, c) +
           t.w11 * tap<scalar_t, acc_t>(in_b, p, t.v11, t.y0 + 1, t.x0 + 1, c);
    });
    out[(kb / bins * p.c + c) * bins + kb % bins] = static_cast<scalar_t>(s / g.count);
  }
}

// grad: (K, PH, PW, C) rows of the output's gradient
template <typename scalar_t, typename acc_t>
__global__ void offset_grad_kernel(const scalar_t* __restrict__ grad, const scalar_t* __restrict__ in,
                                   const acc_t* __restrict__ rois, const scalar_t* __restrict__ off, RoiPoolParams p,
                                   int64_t items, scalar_t* __restrict__ g_off) {
  const int lane = threadIdx.x % kWarp;
  const int64_t warps_total = int64_t(gridDim.x) * (blockDim.x / kWarp), bins = p.bins();
  for (int64_t kb = (blockIdx.x * int64_t(blockDim.x) + threadIdx.x) / kWarp; kb < items; kb += warps_total) {
    const RoiBin<acc_t> g = bin_at(rois, off, p, kb);
    const scalar_t* in_b = in + g.batch * p.h * p.w * p.c;
    const scalar_t* gr = grad + kb * p.c;
    acc_t sy = acc_t(0), sx = acc_t(0);
    for_each_sample(g, p, [&](const BilinearTaps<acc_t>& t, const AxisTaps<acc_t>& ay, const AxisTaps<acc_t>& ax) {
      if (!(ay.moves || ax.moves)) return;  // the clamp holds the sample still on both axes
      for (int64_t c = lane; c < p.c; c += kWarp) {
        const acc_t gv = static_cast<acc_t>(gr[c]);
        acc_t dy, dx;
        bilinear_coord_grad(t, tap<scalar_t, acc_t>(in_b, p, t.v00, t.y0, t.x0, c),
                            tap<scalar_t, acc_t>(in_b, p, t.v01, t.y0, t.x0 + 1, c),
                            tap<scalar_t, acc_t>(in_b, p, t.v10, t.y0 + 1, t.x0, c),
                            tap<scalar_t, acc_t>(in_b, p, t.v11, t.y0 + 1, t.x0 + 1, c), dy, dx);
        if (ay.moves) sy += gv * dy;
        if (ax.moves) sx += gv * dx;
      }
    });
#pragma unroll
    for (int d = kWarp / 2; d > 0; d /= 2) {
      sy += __shfl_down_sync(0xffffffffu, sy, d);
      sx += __shfl_down_sync(0xffffffffu, sx, d);
    }
    if (lane == 0) {
      const int64_t k = kb / bins, b = kb % bins;
      g_off[k * 2 * bins + b] = static_cast<scalar_t>(g.dx_scale * sx / g.count);
      g_off[k * 2 * bins + bins + b] = static_cast<scalar_t>(g.dy_scale * sy / g.count);
    }
  }
}

template <typename scalar_t, typename acc_t>
__global__ void input_grad_atomic_kernel(const scalar_t* __restrict__ grad, const acc_t* __restrict__ rois,
                                         const scalar_t* __restrict__ off, RoiPoolParams p, int64_t total,
                                         acc_t* __restrict__ g_in) {
  for (int64_t e = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; e < total; e += int64_t(blockDim.x) * gridDim.x) {
    const int64_t c = e % p.c;
    const RoiBin<acc_t> g = bin_at(rois, off, p, e / p.c);
    const acc_t gv = static_cast<acc_t>(grad[e]) / g.count;  // grad rows: e = kb * C + c
    acc_t* base = g_in + g.batch * p.h * p.w * p.c + c;
    for_each_sample(g, p, [&](const BilinearTaps<acc_t>& t, const AxisTaps<acc_t>&, const AxisTaps<acc_t>&) {
      if (t.v00) gpuAtomicAdd(base + (t.y0 * p.w + t.x0) * p.c, t.w00 * gv);
      if (t.v01) gpuAtomicAdd(base + (t.y0 * p.w + t.x0 + 1) * p.c, t.w01 * gv);
      if (t.v10) gpuAtomicAdd(base + ((t.y0 + 1) * p.w + t.x0) * p.c, t.w10 * gv);
      if (t.v11) gpuAtomicAdd(base + ((t.y0 + 1) * p.w + t.x0 + 1) * p.c, t.w11 * gv);
    });
  }
}

// Deterministic path, step 1: the number of (sample, tap) entries of each bin.
template <typename scalar_t, typename acc_t>
__global__ void tap_count_kernel(const acc_t* __restrict__ rois, const scalar_t* __restrict__ off, RoiPoolParams p,
                                 int64_t items, int64_t* __restrict__ counts) {
  for (int64_t kb = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; kb < items; kb += int64_t(blockDim.x) * gridDim.x) {
    const RoiBin<acc_t> g = bin_at(rois, off, p, kb);
    counts[kb] = 4 * (g.y.hi - g.y.lo) * (g.x.hi - g.x.lo);
  }
}

// Step 2: each bin writes its entries from starts[kb]: the pixel (b, y, x) a tap touches (kNoPixel for
// a tap outside the map), its weight / count, and the bin it comes from.
template <typename scalar_t, typename acc_t>
__global__ void tap_entries_kernel(const acc_t* __restrict__ rois, const scalar_t* __restrict__ off, RoiPoolParams p,
                                   int64_t items, const int64_t* __restrict__ starts, int64_t* __restrict__ keys,
                                   acc_t* __restrict__ coef, int64_t* __restrict__ src) {
  for (int64_t kb = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; kb < items; kb += int64_t(blockDim.x) * gridDim.x) {
    const RoiBin<acc_t> g = bin_at(rois, off, p, kb);
    int64_t j = starts[kb];
    for_each_sample(g, p, [&](const BilinearTaps<acc_t>& t, const AxisTaps<acc_t>&, const AxisTaps<acc_t>&) {
      const bool valid[4] = {t.v00, t.v01, t.v10, t.v11};
      const acc_t w[4] = {t.w00, t.w01, t.w10, t.w11};
      for (int q = 0; q < 4; ++q, ++j) {
        const int64_t y = t.y0 + q / 2, x = t.x0 + q % 2;
        keys[j] = valid[q] ? (g.batch * p.h + y) * p.w + x : kNoPixel;
        coef[j] = valid[q] ? w[q] / g.count : acc_t(0);
        src[j] = kb;
      }
    });
  }
}

// Step 3: one thread per (touched pixel, channel) sums the pixel's entries in sorted (stable) order and
// writes the input gradient once.
template <typename scalar_t, typename acc_t>
__global__ void input_grad_sorted_kernel(const int64_t* __restrict__ pixels, const int64_t* __restrict__ starts,
                                         const int64_t* __restrict__ counts, const int64_t* __restrict__ order,
                                         const acc_t* __restrict__ coef, const int64_t* __restrict__ src,
                                         const scalar_t* __restrict__ grad, RoiPoolParams p, int64_t total,
                                         acc_t* __restrict__ g_in) {
  for (int64_t e = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; e < total; e += int64_t(blockDim.x) * gridDim.x) {
    const int64_t s = e / p.c, c = e % p.c;
    const int64_t pixel = pixels[s];
    if (pixel == kNoPixel) continue;
    acc_t acc = acc_t(0);
    const int64_t begin = starts[s], end = begin + counts[s];
    for (int64_t j = begin; j < end; ++j) {
      const int64_t ent = order[j];
      acc += coef[ent] * static_cast<acc_t>(grad[src[ent] * p.c + c]);
    }
    g_in[pixel * p.c + c] = acc;
  }
}

// ----------------------------------------------------------------------------------- launchers
int64_t first_bad_roi_cuda(const at::Tensor& rois, const RoiPoolParams& p) {
  at::Tensor first = at::full({1}, p.k, rois.options().dtype(at::kLong));
  AT_DISPATCH_FLOATING_TYPES(rois.scalar_type(), "dcn_plugin deform_roi_pool rois check (CUDA)", [&] {
    roi_fault_kernel<scalar_t><<<blocks_for(p.k), kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
        rois.data_ptr<scalar_t>(), p, reinterpret_cast<unsigned long long*>(first.data_ptr<int64_t>()));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  const int64_t bad = first.item<int64_t>();  // the one synchronisation of the call
  return bad < p.k ? bad : -1;
}

at::Tensor transpose_last2_cuda(const at::Tensor& src) { return src.transpose(1, 2).contiguous(); }

void forward_rows_cuda(const at::Tensor& in, const at::Tensor& rois, const at::Tensor& off, const RoiPoolParams& p,
                       at::Tensor& out) {
  const int64_t total = p.k * p.bins() * p.c;
  if (total == 0) return;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, in.scalar_type(), "dcn_plugin deform_roi_pool (CUDA)", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    forward_kernel<scalar_t, acc_t><<<blocks_for(total), kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
        in.data_ptr<scalar_t>(), rois.data_ptr<acc_t>(), off.defined() ? off.data_ptr<scalar_t>() : nullptr, p,
        total, out.data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

template <typename scalar_t, typename acc_t>
void input_grad_deterministic(const at::Tensor& grad, const at::Tensor& rois, const scalar_t* off,
                              const RoiPoolParams& p, at::Tensor& g_in) {
  const auto stream = at::cuda::getCurrentCUDAStream();
  const int64_t items = p.k * p.bins();
  const acc_t* r = rois.data_ptr<acc_t>();
  at::Tensor counts = at::empty({items}, rois.options().dtype(at::kLong));
  tap_count_kernel<scalar_t, acc_t><<<blocks_for(items), kThreads, 0, stream>>>(r, off, p, items,
                                                                                counts.data_ptr<int64_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  const at::Tensor ends = counts.cumsum(0);
  const int64_t entries = ends[items - 1].item<int64_t>();
  if (entries == 0) return;
  const at::Tensor starts = ends - counts;
  at::Tensor keys = at::empty({entries}, counts.options());
  at::Tensor src = at::empty({entries}, counts.options());
  at::Tensor coef = at::empty({entries}, g_in.options());
  tap_entries_kernel<scalar_t, acc_t><<<blocks_for(items), kThreads, 0, stream>>>(
      r, off, p, items, starts.data_ptr<int64_t>(), keys.data_ptr<int64_t>(), coef.data_ptr<acc_t>(),
      src.data_ptr<int64_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  auto [sorted, order] = at::sort(keys, /*stable=*/true, /*dim=*/0, /*descending=*/false);
  auto [pixels, inverse, pixel_counts] =
      at::unique_consecutive(sorted, /*return_inverse=*/false, /*return_counts=*/true);
  const at::Tensor pixel_starts = pixel_counts.cumsum(0) - pixel_counts;
  const int64_t total = pixels.numel() * p.c;
  input_grad_sorted_kernel<scalar_t, acc_t><<<blocks_for(total), kThreads, 0, stream>>>(
      pixels.data_ptr<int64_t>(), pixel_starts.data_ptr<int64_t>(), pixel_counts.data_ptr<int64_t>(),
      order.data_ptr<int64_t>(), coef.data_ptr<acc_t>(), src.data_ptr<int64_t>(), grad.data_ptr<scalar_t>(), p, total,
      g_in.data_ptr<acc_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

void backward_rows_cuda(const at::Tensor& grad, const at::Tensor& in, const at::Tensor& rois, const at::Tensor& off,
                        const RoiPoolParams& p, at::Tensor& g_in, at::Tensor& g_off) {
  const auto stream = at::cuda::getCurrentCUDAStream();
  const int64_t items = p.k * p.bins(), total = items * p.c;
  if (total == 0) return;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad.scalar_type(), "dcn_plugin deform_roi_pool backward (CUDA)", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* off_ptr = off.defined() ? off.data_ptr<scalar_t>() : nullptr;
    if (g_off.defined()) {
      offset_grad_kernel<scalar_t, acc_t><<<blocks_for(items, kThreads / kWarp), kThreads, 0, stream>>>(
          grad.data_ptr<scalar_t>(), in.data_ptr<scalar_t>(), rois.data_ptr<acc_t>(), off_ptr, p, items,
          g_off.data_ptr<scalar_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
    if (!g_in.defined()) return;
    if (at::globalContext().deterministicAlgorithms()) {
      input_grad_deterministic<scalar_t, acc_t>(grad, rois, off_ptr, p, g_in);
      return;
    }
    input_grad_atomic_kernel<scalar_t, acc_t><<<blocks_for(total), kThreads, 0, stream>>>(
        grad.data_ptr<scalar_t>(), rois.data_ptr<acc_t>(), off_ptr, p, total, g_in.data_ptr<acc_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

const RoiPoolBackend kCudaRoiPool{&first_bad_roi_cuda, &transpose_last2_cuda, &forward_rows_cuda,
                                  &backward_rows_cuda};

}  // namespace

// Private names: the public ops' CUDA kernels (dcn_plugin/ops/roi_pool.py) call these or the Triton
// kernels, by one backend rule.
TORCH_LIBRARY_IMPL(dcn_plugin, CUDA, m) {
  m.impl("_deform_roi_pool_cuda", &roi_pool_forward_kernel<kCudaRoiPool>);
  m.impl("_deform_roi_pool_backward_cuda", &roi_pool_backward_kernel<kCudaRoiPool>);
}

}  // namespace dcn_plugin
