// Tiled transposition of the last two dimensions (see transpose.h).
#include "cpu/transpose.h"

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>

#include <algorithm>

namespace dcn_plugin {
namespace {

// Tiles of 32 (r) x 16 (s), taken in the order of dst: each task writes whole tiles one after the other,
// and a tile's reads and writes stay in L1.
constexpr int64_t kTileR = 32, kTileS = 16;

template <typename T>
void transpose_kernel(const T* src, int64_t nb, int64_t nr, int64_t ns, int64_t sb, int64_t sr, int64_t ss, T* dst,
                      int64_t db, int64_t ds, int64_t dr) {
  const int64_t ts = (ns + kTileS - 1) / kTileS;
  at::parallel_for(0, nb * ts, 8, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t b = t / ts, s0 = t % ts * kTileS, s1 = std::min(ns, s0 + kTileS);
      const T* sp = src + b * sb;
      T* dp = dst + b * db;
      for (int64_t r0 = 0; r0 < nr; r0 += kTileR) {
        const int64_t r1 = std::min(nr, r0 + kTileR);
        for (int64_t s = s0; s < s1; ++s)
          for (int64_t r = r0; r < r1; ++r) dp[s * ds + r * dr] = sp[r * sr + s * ss];
      }
    }
  });
}

}  // namespace

void transpose_last2_into_cpu(const at::Tensor& src, const at::Tensor& dst) {
  TORCH_INTERNAL_ASSERT(src.dim() == 3 && dst.dim() == 3 && src.size(0) == dst.size(0) && src.size(1) == dst.size(2) &&
                        src.size(2) == dst.size(1) && src.scalar_type() == dst.scalar_type());
  if (dst.numel() == 0) return;
  AT_DISPATCH_FLOATING_TYPES(src.scalar_type(), "dcn_plugin transpose (CPU)", [&] {
    transpose_kernel<scalar_t>(src.data_ptr<scalar_t>(), src.size(0), src.size(1), src.size(2), src.stride(0),
                               src.stride(1), src.stride(2), dst.data_ptr<scalar_t>(), dst.stride(0), dst.stride(1),
                               dst.stride(2));
  });
}

at::Tensor transpose_last2_cpu(const at::Tensor& src) {
  at::Tensor dst = at::empty({src.size(0), src.size(2), src.size(1)}, src.options());
  transpose_last2_into_cpu(src, dst);
  return dst;
}

}  // namespace dcn_plugin
