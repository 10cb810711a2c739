// CUDA kernels of the modulated deformable convolution (the GEMMs run in the shared driver,
// deform_conv.cpp, through cuBLAS).
//
// Layout as on the CPU: the input is read as (N, H, W, C) rows and the columns are
// (nc, P, groups, K, C/groups), so consecutive threads take consecutive channels of one sample:
// coalesced tap reads and column writes, with the offset/mask/bilinear weights of the sample shared
// (cached) across the threads of a deform group. Sampling coordinates, weights and every
// accumulation are float32 for half/bfloat16/float32 data (float64 for float64).
//
//   im2col_kernel            one thread per column element
//   offset_mask_grad_kernel  one warp per (image, position, kernel point, deform group): the four taps
//                            are read once, the three sums are reduced over the group's channels with
//                            a fixed shuffle tree and written once (deterministic)
//   input_grad_atomic_kernel one thread per column element, four atomicAdds into a float32/float64
//                            (N, H, W, C) buffer (fast; order of additions varies run to run)
//   deterministic input gradient (torch.use_deterministic_algorithms(True)): every (sample, tap) is
//                            keyed by the input cell it touches, the keys are sorted stably, and one
//                            thread per (cell, channel) sums its contributions in sorted order: the
//                            same bits every run.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/cuda/Atomic.cuh>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <limits>

#include "dcn_common.h"
#include "deform_sampling.h"

namespace dcn_plugin {
namespace {

constexpr int kThreads = 256;
constexpr int kWarp = 32;

inline unsigned int grid_for(int64_t work_items, int items_per_block = kThreads) {
  const int64_t blocks = (work_items + items_per_block - 1) / items_per_block;
  return static_cast<unsigned int>(std::min<int64_t>(std::max<int64_t>(blocks, 1), int64_t(1) << 20));
}

// Geometry of one sample: taps (with validity), modulation.
template <typename scalar_t, typename acc_t>
__device__ __forceinline__ BilinearTaps<acc_t> sample_taps(const scalar_t* __restrict__ off,
                                                           const scalar_t* __restrict__ msk, const ConvParams& p,
                                                           int64_t n, int64_t pos, int64_t k, int64_t g, acc_t& m) {
  const int64_t kk = p.k(), dgk = p.deform_groups * kk;
  const int64_t ho = pos / p.wo, wo = pos % p.wo, i = k / p.kw, j = k % p.kw;
  const scalar_t* o = off + (n * p.p() + pos) * 2 * dgk + 2 * (g * kk + k);
  m = msk ? static_cast<acc_t>(msk[(n * p.p() + pos) * dgk + g * kk + k]) : acc_t(1);
  return bilinear_taps_at<acc_t>(base_coord(ho, p.stride_h, p.pad_h, i, p.dil_h),
                                 base_coord(wo, p.stride_w, p.pad_w, j, p.dil_w), static_cast<acc_t>(o[0]),
                                 static_cast<acc_t>(o[1]), p.h, p.w);
}

// Decomposes a column index e over (nc, P, groups, K, C/groups).
struct ColIndex {
  int64_t n, pos, k, c;
};

__device__ __forceinline__ ColIndex decompose_col(int64_t e, const ConvParams& p) {
  const int64_t cg = p.c_per_group(), kk = p.k();
  ColIndex r;
  const int64_t ci = e % cg;
  int64_t t = e / cg;
  r.k = t % kk;
  t /= kk;
  const int64_t gr = t % p.groups;
  t /= p.groups;
  r.pos = t % p.p();
  r.n = t / p.p();
  r.c = gr * cg + ci;
  return r;
}

template <typename scalar_t, typename acc_t>
__device__ __forceinline__ acc_t tap(const scalar_t* __restrict__ in_n, const ConvParams& p, bool valid, int64_t y,
                                     int64_t x, int64_t c) {
  return valid ? static_cast<acc_t>(in_n[(y * p.w + x) * p.c + c]) : acc_t(0);
}

template <typename scalar_t>
__global__ void im2col_kernel(const scalar_t* __restrict__ in, const scalar_t* __restrict__ off,
                              const scalar_t* __restrict__ msk, ConvParams p, int64_t n0, int64_t total,
                              scalar_t* __restrict__ col) {
  using acc_t = at::opmath_type<scalar_t>;
  for (int64_t e = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; e < total; e += int64_t(blockDim.x) * gridDim.x) {
    const ColIndex ix = decompose_col(e, p);
    const int64_t n = n0 + ix.n, g = ix.c / p.c_per_deform_group();
    acc_t m;
    const BilinearTaps<acc_t> t = sample_taps<scalar_t, acc_t>(off, msk, p, n, ix.pos, ix.k, g, m);
    acc_t v = acc_t(0);
    if (t.in_range) {
      const scalar_t* in_n = in + n * p.h * p.w * p.c;
      v = t.w00 * tap<scalar_t, acc_t>(in_n, p, t.v00, t.y0, t.x0, ix.c) +
          t.w01 * tap<scalar_t, acc_t>(in_n, p, t.v01, t.y0, t.x0 + 1, ix.c) +
          t.w10 * tap<scalar_t, acc_t>(in_n, p, t.v10, t.y0 + 1, t.x0, ix.c) +
          t.w11 * tap<scalar_t, acc_t>(in_n, p, t.v11, t.y0 + 1, t.x0 + 1, ix.c);
    }
    col[e] = static_cast<scalar_t>(v * m);
  }
}

template <typename scalar_t>
__global__ void offset_mask_grad_kernel(const scalar_t* __restrict__ in, const scalar_t* __restrict__ off,
                                        const scalar_t* __restrict__ msk, const scalar_t* __restrict__ gcol,
                                        ConvParams p, int64_t n0, int64_t items, scalar_t* __restrict__ g_off,
                                        scalar_t* __restrict__ g_msk) {
  using acc_t = at::opmath_type<scalar_t>;
  const int lane = threadIdx.x % kWarp;
  const int64_t warps_total = int64_t(gridDim.x) * (blockDim.x / kWarp);
  const int64_t kk = p.k(), dg = p.deform_groups, cd = p.c_per_deform_group(), cg = p.c_per_group();
  for (int64_t item = (blockIdx.x * int64_t(blockDim.x) + threadIdx.x) / kWarp; item < items; item += warps_total) {
    // item over (nc, P, K, dg)
    const int64_t g = item % dg;
    int64_t t_ = item / dg;
    const int64_t k = t_ % kk;
    t_ /= kk;
    const int64_t pos = t_ % p.p(), i = t_ / p.p(), n = n0 + i;
    acc_t m;
    const BilinearTaps<acc_t> t = sample_taps<scalar_t, acc_t>(off, msk, p, n, pos, k, g, m);
    acc_t sv = 0, sy = 0, sx = 0;
    if (t.in_range) {
      const scalar_t* in_n = in + n * p.h * p.w * p.c;
      const scalar_t* gc = gcol + (i * p.p() + pos) * p.c * kk;
      for (int64_t c = g * cd + lane; c < (g + 1) * cd; c += kWarp) {
        const int64_t gr = c / cg;
        const acc_t gv = static_cast<acc_t>(gc[(gr * kk + k) * cg + (c - gr * cg)]);
        const acc_t v00 = tap<scalar_t, acc_t>(in_n, p, t.v00, t.y0, t.x0, c);
        const acc_t v01 = tap<scalar_t, acc_t>(in_n, p, t.v01, t.y0, t.x0 + 1, c);
        const acc_t v10 = tap<scalar_t, acc_t>(in_n, p, t.v10, t.y0 + 1, t.x0, c);
        const acc_t v11 = tap<scalar_t, acc_t>(in_n, p, t.v11, t.y0 + 1, t.x0 + 1, c);
        acc_t dy, dx;
        bilinear_coord_grad(t, v00, v01, v10, v11, dy, dx);
        sv += gv * (t.w00 * v00 + t.w01 * v01 + t.w10 * v10 + t.w11 * v11);
        sy += gv * dy;
        sx += gv * dx;
      }
    }
#pragma unroll
    for (int d = kWarp / 2; d > 0; d /= 2) {
      sv += __shfl_down_sync(0xffffffffu, sv, d);
      sy += __shfl_down_sync(0xffffffffu, sy, d);
      sx += __shfl_down_sync(0xffffffffu, sx, d);
    }
    if (lane == 0) {
      const int64_t base = n * p.p() + pos;
      if (g_off) {
        g_off[base * 2 * dg * kk + 2 * (g * kk + k)] = static_cast<scalar_t>(m * sy);
        g_off[base * 2 * dg * kk + 2 * (g * kk + k) + 1] = static_cast<scalar_t>(m * sx);
      }
      if (g_msk) g_msk[base * dg * kk + g * kk + k] = static_cast<scalar_t>(sv);
    }
  }
}

template <typename scalar_t, typename acc_t>
__global__ void input_grad_atomic_kernel(const scalar_t* __restrict__ off, const scalar_t* __restrict__ msk,
                                         const scalar_t* __restrict__ gcol, ConvParams p, int64_t n0, int64_t total,
                                         acc_t* __restrict__ g_in) {
  for (int64_t e = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; e < total; e += int64_t(blockDim.x) * gridDim.x) {
    const ColIndex ix = decompose_col(e, p);
    const int64_t n = n0 + ix.n, g = ix.c / p.c_per_deform_group();
    acc_t m;
    const BilinearTaps<acc_t> t = sample_taps<scalar_t, acc_t>(off, msk, p, n, ix.pos, ix.k, g, m);
    if (!t.in_range) continue;
    const acc_t gv = static_cast<acc_t>(gcol[e]) * m;
    acc_t* base = g_in + n * p.h * p.w * p.c + ix.c;
    if (t.v00) gpuAtomicAdd(base + (t.y0 * p.w + t.x0) * p.c, t.w00 * gv);
    if (t.v01) gpuAtomicAdd(base + (t.y0 * p.w + t.x0 + 1) * p.c, t.w01 * gv);
    if (t.v10) gpuAtomicAdd(base + ((t.y0 + 1) * p.w + t.x0) * p.c, t.w10 * gv);
    if (t.v11) gpuAtomicAdd(base + ((t.y0 + 1) * p.w + t.x0 + 1) * p.c, t.w11 * gv);
  }
}

constexpr int64_t kNoCell = std::numeric_limits<int64_t>::max();

// Deterministic path, step 1: one entry per (image of the chunk, position, kernel point, deform group,
// tap): the input cell (image, deform group, y, x) it touches, or kNoCell, and its weight (tap weight x
// modulation).
template <typename scalar_t, typename acc_t>
__global__ void tap_keys_kernel(const scalar_t* __restrict__ off, const scalar_t* __restrict__ msk, ConvParams p,
                                int64_t n0, int64_t total, int64_t* __restrict__ keys, acc_t* __restrict__ coef) {
  const int64_t kk = p.k(), dg = p.deform_groups;
  for (int64_t e = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; e < total; e += int64_t(blockDim.x) * gridDim.x) {
    const int corner = static_cast<int>(e % 4);
    int64_t t_ = e / 4;
    const int64_t g = t_ % dg;
    t_ /= dg;
    const int64_t k = t_ % kk;
    t_ /= kk;
    const int64_t pos = t_ % p.p(), i = t_ / p.p();
    acc_t m;
    const BilinearTaps<acc_t> t = sample_taps<scalar_t, acc_t>(off, msk, p, n0 + i, pos, k, g, m);
    const bool valid = corner == 0 ? t.v00 : corner == 1 ? t.v01 : corner == 2 ? t.v10 : t.v11;
    const acc_t w = corner == 0 ? t.w00 : corner == 1 ? t.w01 : corner == 2 ? t.w10 : t.w11;
    const int64_t y = t.y0 + corner / 2, x = t.x0 + corner % 2;
    keys[e] = valid ? ((i * dg + g) * p.h + y) * p.w + x : kNoCell;
    coef[e] = valid ? w * m : acc_t(0);
  }
}

// Deterministic path, step 2: one thread per (touched cell, channel of its deform group) sums the
// contributions of the cell's entries in sorted (stable) order and writes the input gradient once.
template <typename scalar_t, typename acc_t>
__global__ void input_grad_sorted_kernel(const int64_t* __restrict__ cell_keys, const int64_t* __restrict__ starts,
                                         const int64_t* __restrict__ counts, const int64_t* __restrict__ order,
                                         const acc_t* __restrict__ coef, const scalar_t* __restrict__ gcol,
                                         ConvParams p, int64_t n0, int64_t total, acc_t* __restrict__ g_in) {
  const int64_t kk = p.k(), dg = p.deform_groups, cd = p.c_per_deform_group(), cg = p.c_per_group();
  for (int64_t e = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; e < total; e += int64_t(blockDim.x) * gridDim.x) {
    const int64_t s = e / cd, ci = e % cd;
    const int64_t key = cell_keys[s];
    if (key == kNoCell) continue;
    const int64_t x = key % p.w, y = (key / p.w) % p.h, g = (key / (p.w * p.h)) % dg, i = key / (p.w * p.h * dg);
    const int64_t c = g * cd + ci, gr = c / cg, cig = c - gr * cg;
    acc_t acc = 0;
    const int64_t begin = starts[s], end = begin + counts[s];
    for (int64_t j = begin; j < end; ++j) {
      const int64_t ent = order[j];
      const int64_t t_ = ent / 4 / dg;  // (i, pos, k)
      const int64_t k = t_ % kk, pos = (t_ / kk) % p.p();
      acc += coef[ent] * static_cast<acc_t>(gcol[((i * p.p() + pos) * p.groups + gr) * kk * cg + k * cg + cig]);
    }
    g_in[(((n0 + i) * p.h + y) * p.w + x) * p.c + c] += acc;
  }
}

// The CUDA backend's chunks are whole images (no position blocks): [n0, n0 + nc).
void check_whole_images(const Chunk& ch, const ConvParams& p) {
  TORCH_INTERNAL_ASSERT(ch.pos0 == 0 && ch.np == p.p(), "dcn_plugin: the CUDA kernels take chunks of whole images");
}

void im2col_cuda(const at::Tensor& in, const at::Tensor& off, const at::Tensor& msk, const ConvParams& p,
                 const Chunk& ch, at::Tensor& col) {
  check_whole_images(ch, p);
  const int64_t n0 = ch.n0, nc = ch.nc;
  const c10::cuda::CUDAGuard guard(in.device());
  const int64_t total = nc * p.p() * p.c * p.k();
  if (total == 0) return;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, in.scalar_type(), "dcn_plugin im2col (CUDA)", [&] {
    im2col_kernel<scalar_t><<<grid_for(total), kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
        in.data_ptr<scalar_t>(), off.data_ptr<scalar_t>(), msk.defined() ? msk.data_ptr<scalar_t>() : nullptr, p, n0,
        total, col.data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

void offset_mask_grad_cuda(const at::Tensor& in, const at::Tensor& off, const at::Tensor& msk, const at::Tensor& gcol,
                           const ConvParams& p, const Chunk& ch, at::Tensor& g_off, at::Tensor& g_msk) {
  check_whole_images(ch, p);
  const int64_t n0 = ch.n0, nc = ch.nc;
  const c10::cuda::CUDAGuard guard(in.device());
  const int64_t items = nc * p.p() * p.k() * p.deform_groups;
  if (items == 0) return;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, in.scalar_type(), "dcn_plugin offset/mask grad (CUDA)", [&] {
    offset_mask_grad_kernel<scalar_t><<<grid_for(items, kThreads / kWarp), kThreads, 0,
                                        at::cuda::getCurrentCUDAStream()>>>(
        in.data_ptr<scalar_t>(), off.data_ptr<scalar_t>(), msk.defined() ? msk.data_ptr<scalar_t>() : nullptr,
        gcol.data_ptr<scalar_t>(), p, n0, items, g_off.defined() ? g_off.data_ptr<scalar_t>() : nullptr,
        g_msk.defined() ? g_msk.data_ptr<scalar_t>() : nullptr);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

void input_grad_cuda(const at::Tensor& off, const at::Tensor& msk, const at::Tensor& gcol, const ConvParams& p,
                     const Chunk& ch, at::Tensor& g_in) {
  check_whole_images(ch, p);
  const int64_t n0 = ch.n0, nc = ch.nc;
  const c10::cuda::CUDAGuard guard(gcol.device());
  const auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, gcol.scalar_type(), "dcn_plugin input grad (CUDA)", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* msk_ptr = msk.defined() ? msk.data_ptr<scalar_t>() : nullptr;
    if (!at::globalContext().deterministicAlgorithms()) {
      const int64_t total = nc * p.p() * p.c * p.k();
      if (total == 0) return;
      input_grad_atomic_kernel<scalar_t, acc_t><<<grid_for(total), kThreads, 0, stream>>>(
          off.data_ptr<scalar_t>(), msk_ptr, gcol.data_ptr<scalar_t>(), p, n0, total, g_in.data_ptr<acc_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      return;
    }
    const int64_t entries = nc * p.p() * p.k() * p.deform_groups * 4;
    if (entries == 0) return;
    at::Tensor keys = at::empty({entries}, gcol.options().dtype(at::kLong));
    at::Tensor coef = at::empty({entries}, g_in.options());
    tap_keys_kernel<scalar_t, acc_t><<<grid_for(entries), kThreads, 0, stream>>>(
        off.data_ptr<scalar_t>(), msk_ptr, p, n0, entries, keys.data_ptr<int64_t>(), coef.data_ptr<acc_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    auto [sorted, order] = at::sort(keys, /*stable=*/true, /*dim=*/0, /*descending=*/false);
    auto [cells, inverse, counts] = at::unique_consecutive(sorted, /*return_inverse=*/false, /*return_counts=*/true);
    const at::Tensor starts = counts.cumsum(0) - counts;
    const int64_t total = cells.numel() * p.c_per_deform_group();
    input_grad_sorted_kernel<scalar_t, acc_t><<<grid_for(total), kThreads, 0, stream>>>(
        cells.data_ptr<int64_t>(), starts.data_ptr<int64_t>(), counts.data_ptr<int64_t>(), order.data_ptr<int64_t>(),
        coef.data_ptr<acc_t>(), gcol.data_ptr<scalar_t>(), p, n0, total, g_in.data_ptr<acc_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

void transpose_into_cuda(const at::Tensor& src, const at::Tensor& dst) { dst.copy_(src.transpose(1, 2)); }

const Backend kCudaBackend{&im2col_cuda, &offset_mask_grad_cuda, /*col_and_offset_mask_grad=*/nullptr,
                           &input_grad_cuda, &transpose_into_cuda,
                           /*col_budget_elements=*/int64_t(1) << 28, /*position_blocks=*/false};

}  // namespace

// Private names: the public ops' CUDA kernels (dcn_plugin/ops/functional.py) call these or the Triton
// kernels, by one backend rule.
TORCH_LIBRARY_IMPL(dcn_plugin, CUDA, m) {
  m.impl("_modulated_deform_conv2d_cuda", &forward_kernel<kCudaBackend>);
  m.impl("_modulated_deform_conv2d_backward_cuda", &backward_kernel<kCudaBackend>);
}

}  // namespace dcn_plugin
