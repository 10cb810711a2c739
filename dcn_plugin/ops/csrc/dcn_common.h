// Declarations shared by the operator registration and the per-backend kernels.
#pragma once

#include <ATen/core/Tensor.h>

#include <array>
#include <optional>
#include <tuple>

#include "deform_sampling.h"

namespace dcn_plugin {

// Sizes of one deformable convolution call, derived and validated once. I is int64_t for the
// kernels and c10::SymInt for the Meta kernel (see checks.h).
template <typename I>
struct ConvParamsT {
  I n, c, h, w;                // input
  I o, kh, kw;                 // weight (O, C/groups, kh, kw)
  I ho, wo;                    // output
  int64_t stride_h, stride_w, pad_h, pad_w, dil_h, dil_w;
  int64_t groups, deform_groups;
  bool has_mask;
  DCN_HOST_DEVICE I k() const { return kh * kw; }
  DCN_HOST_DEVICE I p() const { return ho * wo; }
  DCN_HOST_DEVICE I c_per_group() const { return c / groups; }
  DCN_HOST_DEVICE I o_per_group() const { return o / groups; }
  DCN_HOST_DEVICE I c_per_deform_group() const { return c / deform_groups; }
};
using ConvParams = ConvParamsT<int64_t>;

// The operator's validator (deform_conv.cpp; instantiated for int64_t and c10::SymInt): every rule
// on the arguments (ranks, shapes, channel/group relations, hyper-parameters, dtypes, devices), with
// messages that name the argument, the expected and the actual value. ValueError / TypeError.
template <typename I>
ConvParamsT<I> check_conv_args(const at::Tensor& input, const at::Tensor& offset,
                               const std::optional<at::Tensor>& mask, const at::Tensor& weight,
                               const std::optional<at::Tensor>& bias, at::IntArrayRef stride,
                               at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups,
                               int64_t deform_groups);

// grad_output of the backward op: the output's shape, the input's dtype and device.
template <typename I>
void check_grad_output(const at::Tensor& grad_output, const at::Tensor& input, const ConvParamsT<I>& p);

using BackwardResult = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>;

// A chunk of the work: positions [pos0, pos0 + np) of the images [n0, n0 + nc). Chunks are whole images
// (pos0 = 0, np = P) unless the backend allows position blocks and one image's columns exceed its budget.
struct Chunk {
  int64_t n0, nc, pos0, np;
  int64_t rows() const { return nc * np; }
};

// The per-backend kernels. The device-agnostic driver (deform_conv.cpp) lays the tensors out
// channels-last, splits the work into chunks, runs the GEMMs and calls these.
// Row tensors (all contiguous):
//   in      (N, H, W, C)           input
//   off     (N, P, dg*K*2)         offsets, P = Ho*Wo, K = kh*kw, (dy, dx) interleaved
//   msk     (N, P, dg*K)           mask, or an undefined tensor (DCNv1)
//   col     columns of the chunk (im2col writes; the others read the gradient of the columns in the
//           same layout): (nc, np, groups, K, C/groups), "K-major": the channels of one sample are
//           contiguous, as in the input rows
//   g_off   (N, P, dg*K*2), g_msk (N, P, dg*K): written for the chunk's positions; undefined = not wanted
//   g_in    (N, H, W, C) accumulated into (float32 for half/bfloat16 inputs); zero-initialised
struct Backend {
  void (*im2col)(const at::Tensor& in, const at::Tensor& off, const at::Tensor& msk, const ConvParams& p,
                 const Chunk& ch, at::Tensor& col);
  void (*offset_mask_grad)(const at::Tensor& in, const at::Tensor& off, const at::Tensor& msk,
                           const at::Tensor& gcol, const ConvParams& p, const Chunk& ch, at::Tensor& g_off,
                           at::Tensor& g_msk);
  // offset_mask_grad that also writes the chunk's columns (one pass over the samples for both), or nullptr:
  // the backward then recomputes the columns with im2col
  void (*col_and_offset_mask_grad)(const at::Tensor& in, const at::Tensor& off, const at::Tensor& msk,
                                   const at::Tensor& gcol, const ConvParams& p, const Chunk& ch, at::Tensor& col,
                                   at::Tensor& g_off, at::Tensor& g_msk);
  void (*input_grad)(const at::Tensor& off, const at::Tensor& msk, const at::Tensor& gcol, const ConvParams& p,
                     const Chunk& ch, at::Tensor& g_in);
  // dst (B, S, R) = src (B, R, S) transposed, any strides: the layout changes NCHW <-> rows
  void (*transpose_into)(const at::Tensor& src, const at::Tensor& dst);
  int64_t col_budget_elements;  // the columns buffer of one chunk holds at most this many elements
  bool position_blocks;         // may split one image into blocks of positions to keep within the budget
};

at::Tensor forward_impl(const Backend& be, const at::Tensor& input, const at::Tensor& offset,
                        const std::optional<at::Tensor>& mask, const at::Tensor& weight,
                        const std::optional<at::Tensor>& bias, at::IntArrayRef stride, at::IntArrayRef padding,
                        at::IntArrayRef dilation, int64_t groups, int64_t deform_groups);

BackwardResult backward_impl(const Backend& be, const at::Tensor& grad_output, const at::Tensor& input,
                             const at::Tensor& offset, const std::optional<at::Tensor>& mask,
                             const at::Tensor& weight, at::IntArrayRef stride, at::IntArrayRef padding,
                             at::IntArrayRef dilation, int64_t groups, int64_t deform_groups,
                             std::array<bool, 5> output_mask);

// The op's kernels for one backend: TORCH_LIBRARY_IMPL(dcn_plugin, <key>, m) registers
// &forward_kernel<kBackend> and &backward_kernel<kBackend> (as deform_roi_pool.h does for RoI pooling).
template <const Backend& be>
at::Tensor forward_kernel(const at::Tensor& input, const at::Tensor& offset, const std::optional<at::Tensor>& mask,
                          const at::Tensor& weight, const std::optional<at::Tensor>& bias, at::IntArrayRef stride,
                          at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups, int64_t deform_groups) {
  return forward_impl(be, input, offset, mask, weight, bias, stride, padding, dilation, groups, deform_groups);
}

template <const Backend& be>
BackwardResult backward_kernel(const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& offset,
                               const std::optional<at::Tensor>& mask, const at::Tensor& weight,
                               at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation,
                               int64_t groups, int64_t deform_groups, std::array<bool, 5> output_mask) {
  return backward_impl(be, grad_output, input, offset, mask, weight, stride, padding, dilation, groups,
                       deform_groups, output_mask);
}

}  // namespace dcn_plugin
