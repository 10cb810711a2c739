// Layout transpositions of the CPU kernels (NCHW <-> channels-last rows, GEMM results -> NCHW).
#pragma once

#include <ATen/core/Tensor.h>

namespace dcn_plugin {

// dst[b][s][r] = src[b][r][s] for src (B, R, S) and dst (B, S, R) of the same dtype, any strides (dst may
// be a strided view into a larger tensor). Done in tiles that keep both sides in L1: a plain strided
// copy misses the cache, and the TLB, on every element.
void transpose_last2_into_cpu(const at::Tensor& src, const at::Tensor& dst);

// The same into a new contiguous (B, S, R) tensor.
at::Tensor transpose_last2_cpu(const at::Tensor& src);

}  // namespace dcn_plugin
