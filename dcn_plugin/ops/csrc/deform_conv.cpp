// Device-agnostic driver of the modulated deformable convolution: validation, channels-last layout,
// chunking of the batch, the GEMMs and the calls into the backend's sampling kernels. One columns
// buffer per chunk of images, reused across chunks; one GEMM per conv group per chunk.
//
//   forward:  col = im2col(input, offset, mask)                     (nc, P, groups, K*C/g)
//             out[:, g]^T (nc*P, O/g) = col[:, :, g] (nc*P, K*C/g) @ W[g]^T
//   backward: gcol[:, :, g] (nc*P, K*C/g) = grad_out_rows[:, g] @ W[g]   (the columns' gradient)
//             grad_W[g] += grad_out_rows[:, g]^T @ col[:, :, g]          (col recomputed)
//             grad_offset, grad_mask = backend.offset_mask_grad(gcol, ...)
//             grad_input             = backend.input_grad(gcol, ...)
//
// GEMMs: cuBLAS on CUDA. On CPU, float32 GEMMs go through oneDNN (the library behind torch's CPU
// convolutions, reached through the mkldnn::_linear_pointwise op) when torch has it: measured here
// (AMD EPYC, torch 2.14's MKL) it ran these shapes 2.2x faster than at::mm; float64 and builds
// without oneDNN use at::mm.
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/record_function.h>
#include <c10/core/DeviceGuard.h>
#include <torch/library.h>

#include <algorithm>
#include <limits>
#include <vector>

#include "checks.h"
#include "dcn_common.h"

namespace dcn_plugin {

// ----------------------------------------------------------------------------------- validation
namespace {

// Hyper-parameters above this are refused: they keep every size computed from them inside int64_t.
constexpr int64_t kMaxHyper = std::numeric_limits<int32_t>::max();

void check_hyper(at::IntArrayRef v, const char* name, int64_t low) {
  check_pair(v, name, low);
  TORCH_CHECK_VALUE(v[0] <= kMaxHyper && v[1] <= kMaxHyper, name, " must be at most ", kMaxHyper, ", got ",
                    tuple_str(v));
}

}  // namespace

template <typename I>
ConvParamsT<I> check_conv_args(const at::Tensor& input, const at::Tensor& offset,
                               const std::optional<at::Tensor>& mask, const at::Tensor& weight,
                               const std::optional<at::Tensor>& bias, at::IntArrayRef stride,
                               at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups,
                               int64_t deform_groups) {
  const bool has_mask = mask.has_value() && mask->defined();
  const bool has_bias = bias.has_value() && bias->defined();
  check_rank(input, "input", 4, " (N, C, H, W)");
  check_rank(offset, "offset", 4, " (N, 2*deform_groups*kh*kw, Ho, Wo)");
  check_rank(weight, "weight", 4, " (O, C/groups, kh, kw)");
  if (has_mask) check_rank(*mask, "mask", 4, " (N, deform_groups*kh*kw, Ho, Wo)");
  if (has_bias) check_rank(*bias, "bias", 1, " (O,)");

  check_same_device(offset, "offset", input);
  check_same_device(weight, "weight", input);
  if (has_mask) check_same_device(*mask, "mask", input);
  if (has_bias) check_same_device(*bias, "bias", input);
  check_floating_input(input);
  check_same_dtype(offset, "offset", input);
  check_same_dtype(weight, "weight", input);
  if (has_mask) check_same_dtype(*mask, "mask", input);
  if (has_bias) check_same_dtype(*bias, "bias", input);

  check_hyper(stride, "stride", 1);
  check_hyper(padding, "padding", 0);
  check_hyper(dilation, "dilation", 1);
  TORCH_CHECK_VALUE(groups >= 1, "groups must be a positive int, got ", groups);
  TORCH_CHECK_VALUE(deform_groups >= 1, "deform_groups must be a positive int, got ", deform_groups);

  ConvParamsT<I> p;
  p.n = size_of<I>(input, 0); p.c = size_of<I>(input, 1); p.h = size_of<I>(input, 2); p.w = size_of<I>(input, 3);
  p.o = size_of<I>(weight, 0); p.kh = size_of<I>(weight, 2); p.kw = size_of<I>(weight, 3);
  p.stride_h = stride[0]; p.stride_w = stride[1];
  p.pad_h = padding[0]; p.pad_w = padding[1];
  p.dil_h = dilation[0]; p.dil_w = dilation[1];
  p.groups = groups; p.deform_groups = deform_groups; p.has_mask = has_mask;

  TORCH_CHECK_VALUE(p.h >= 1 && p.w >= 1, "input height and width must be positive, got input shape ",
                    shape_str(input));
  TORCH_CHECK_VALUE(p.kh >= 1 && p.kw >= 1, "weight kernel size must be positive, got weight shape ",
                    shape_str(weight));
  TORCH_CHECK_VALUE(p.c % groups == 0, "input channels (", p.c, ") must be divisible by groups (", groups, ")");
  TORCH_CHECK_VALUE(p.o % groups == 0, "weight out channels (", p.o, ") must be divisible by groups (", groups,
                    ")");
  TORCH_CHECK_VALUE(size_of<I>(weight, 1) * groups == p.c, "weight must have input channels / groups = ", p.c,
                    " / ", groups, " = ", p.c / groups, " channels in dim 1, got weight shape ", shape_str(weight));
  TORCH_CHECK_VALUE(p.c % deform_groups == 0, "input channels (", p.c, ") must be divisible by deform_groups (",
                    deform_groups, ")");
  // kernel extent and padded size: kernel sizes are tensor sizes (< 2^63) and the hyper-parameters are
  // below 2^31, so compare before multiplying to stay inside int64_t
  const I ph = p.h + 2 * p.pad_h, pw = p.w + 2 * p.pad_w;
  const bool fits_h = p.kh - 1 <= (ph - 1) / p.dil_h, fits_w = p.kw - 1 <= (pw - 1) / p.dil_w;
  TORCH_CHECK_VALUE(fits_h && fits_w, "the dilated kernel (", (p.kh - 1) * p.dil_h + 1, "x",
                    (p.kw - 1) * p.dil_w + 1, ") is larger than the padded input (", ph, "x", pw, "): input ",
                    shape_str(input), ", weight ", shape_str(weight), ", padding ", tuple_str(padding),
                    ", dilation ", tuple_str(dilation));
  p.ho = (ph - ((p.kh - 1) * p.dil_h + 1)) / p.stride_h + 1;
  p.wo = (pw - ((p.kw - 1) * p.dil_w + 1)) / p.stride_w + 1;
  const I kk = p.k();
  TORCH_CHECK_VALUE(has_shape<I>(offset, {p.n, 2 * deform_groups * kk, p.ho, p.wo}),
                    "offset must have shape (N, 2*deform_groups*kh*kw, Ho, Wo) = ",
                    tuple_str<I>({p.n, 2 * deform_groups * kk, p.ho, p.wo}), ", got ", shape_str(offset));
  if (has_mask)
    TORCH_CHECK_VALUE(has_shape<I>(*mask, {p.n, deform_groups * kk, p.ho, p.wo}),
                      "mask must have shape (N, deform_groups*kh*kw, Ho, Wo) = ",
                      tuple_str<I>({p.n, deform_groups * kk, p.ho, p.wo}), ", got ", shape_str(*mask));
  if (has_bias)
    TORCH_CHECK_VALUE(has_shape<I>(*bias, {p.o}), "bias must have shape (out_channels,) = (", p.o, ",), got ",
                      shape_str(*bias));
  return p;
}

template <typename I>
void check_grad_output(const at::Tensor& grad_output, const at::Tensor& input, const ConvParamsT<I>& p) {
  check_same_device(grad_output, "grad_output", input);
  TORCH_CHECK_VALUE(has_shape<I>(grad_output, {p.n, p.o, p.ho, p.wo}), "grad_output must have the output's shape ",
                    tuple_str<I>({p.n, p.o, p.ho, p.wo}), ", got ", shape_str(grad_output));
  TORCH_CHECK_TYPE(grad_output.scalar_type() == input.scalar_type(), "grad_output dtype must match input dtype (",
                   dtype_str(input.scalar_type()), "), got ", dtype_str(grad_output.scalar_type()));
}

template ConvParamsT<int64_t> check_conv_args<int64_t>(const at::Tensor&, const at::Tensor&,
                                                       const std::optional<at::Tensor>&, const at::Tensor&,
                                                       const std::optional<at::Tensor>&, at::IntArrayRef,
                                                       at::IntArrayRef, at::IntArrayRef, int64_t, int64_t);
template void check_grad_output<int64_t>(const at::Tensor&, const at::Tensor&, const ConvParamsT<int64_t>&);

// ----------------------------------------------------------------------------------- the driver
namespace {

struct Layout {
  at::Tensor in, off, msk, w;  // channels-last rows; w is (groups, O/g, K*C/g)
};

// (N, C, H, W) -> contiguous (N, H, W, C) rows: a view of a channels_last tensor, else one transposition.
at::Tensor rows_of(const Backend& be, const at::Tensor& t) {
  const at::Tensor rows = t.permute({0, 2, 3, 1});
  if (rows.is_contiguous()) return rows;
  at::Tensor out = at::empty(rows.sizes(), t.options());
  be.transpose_into(t.reshape({t.size(0), t.size(1), -1}), out.view({t.size(0), -1, t.size(1)}));
  return out;
}

Layout channels_last_rows(const Backend& be, const ConvParams& p, const at::Tensor& input,
                          const at::Tensor& offset, const std::optional<at::Tensor>& mask,
                          const at::Tensor& weight) {
  Layout l;
  l.in = rows_of(be, input);
  l.off = rows_of(be, offset);
  if (p.has_mask) l.msk = rows_of(be, *mask);
  // the weight in the columns' (kh, kw, C/g) order: one weight-sized copy per call
  const at::Tensor w = weight.permute({0, 2, 3, 1}).contiguous();
  l.w = w.view({p.groups, p.o_per_group(), p.k() * p.c_per_group()});
  return l;
}

// at::zeros ignores a memory format in its options: allocate, then zero.
at::Tensor zeros_channels_last(at::IntArrayRef sizes, const at::TensorOptions& opts) {
  return at::empty(sizes, opts.memory_format(at::MemoryFormat::ChannelsLast)).zero_();
}

// a @ b^T (a: (M, K), b: (N, K), any strides) -> (M, N) contiguous.
at::Tensor matmul_nt(const at::Tensor& a, const at::Tensor& b) {
  RECORD_FUNCTION("dcn_plugin::gemm", std::vector<c10::IValue>());
  if (a.device().is_cpu() && a.scalar_type() == at::kFloat && at::globalContext().userEnabledMkldnn()) {
    static const std::optional<c10::OperatorHandle> linear =
        c10::Dispatcher::singleton().findOp(c10::OperatorName("mkldnn::_linear_pointwise", ""));
    if (linear.has_value()) {
      // mkldnn::_linear_pointwise(Tensor X, Tensor W, Tensor? B, str attr, Scalar?[] scalars, str? algorithm)
      std::vector<c10::IValue> stack{a, b, c10::IValue(), c10::IValue(std::string("none")),
                                     c10::IValue(c10::List<std::optional<at::Scalar>>()), c10::IValue()};
      linear->callBoxed(stack);
      return stack[0].toTensor();
    }
  }
  return at::mm(a, b.t());
}

// The chunks, in order: as many whole images as the backend's columns budget holds (at least one), or,
// where the backend allows it and one image's columns exceed the budget, blocks of positions of one image
// (at least 256 positions, so that the GEMMs stay large).
std::vector<Chunk> chunks_of(const Backend& be, const ConvParams& p) {
  const int64_t P = p.p(), row = std::max<int64_t>(1, p.c * p.k());
  std::vector<Chunk> out;
  if (be.position_blocks && P * row > be.col_budget_elements) {
    const int64_t np = std::min(P, std::max<int64_t>(256, be.col_budget_elements / row));
    for (int64_t n = 0; n < p.n; ++n)
      for (int64_t pos0 = 0; pos0 < P; pos0 += np) out.push_back({n, 1, pos0, std::min(np, P - pos0)});
    return out;
  }
  const int64_t per_chunk = std::clamp<int64_t>(be.col_budget_elements / (P * row), 1, std::max<int64_t>(p.n, 1));
  for (int64_t n0 = 0; n0 < p.n; n0 += per_chunk) out.push_back({n0, std::min(per_chunk, p.n - n0), 0, P});
  return out;
}

// The chunk's part (nc, S, np) of a (N, S, P) tensor.
at::Tensor chunk_of(const at::Tensor& t, const Chunk& ch) { return t.narrow(0, ch.n0, ch.nc).narrow(2, ch.pos0, ch.np); }

}  // namespace

at::Tensor forward_impl(const Backend& be, const at::Tensor& input, const at::Tensor& offset,
                        const std::optional<at::Tensor>& mask, const at::Tensor& weight,
                        const std::optional<at::Tensor>& bias, at::IntArrayRef stride, at::IntArrayRef padding,
                        at::IntArrayRef dilation, int64_t groups, int64_t deform_groups) {
  const ConvParams p = check_conv_args<int64_t>(input, offset, mask, weight, bias, stride, padding, dilation, groups,
                                                deform_groups);
  const c10::DeviceGuard guard(input.device());  // after the checks: they name a misplaced tensor
  at::Tensor out = at::empty({p.n, p.o, p.ho, p.wo}, input.options());
  if (p.n == 0 || p.o == 0) return out;
  if (p.c == 0) {  // no input channels: the convolution sums nothing
    out.zero_();
    if (bias.has_value() && bias->defined()) out.add_(bias->view({1, p.o, 1, 1}));
    return out;
  }
  const Layout l = channels_last_rows(be, p, input, offset, mask, weight);
  const std::vector<Chunk> chunks = chunks_of(be, p);
  const int64_t og = p.o_per_group(), kc = p.k() * p.c_per_group();
  int64_t max_rows = 0;
  for (const Chunk& ch : chunks) max_rows = std::max(max_rows, ch.rows());
  at::Tensor col = at::empty({max_rows, p.groups, kc}, input.options());  // reused by every chunk
  const at::Tensor out3 = out.view({p.n, p.o, p.p()});
  for (const Chunk& ch : chunks) {
    at::Tensor col_c = col.narrow(0, 0, ch.rows());
    {
      RECORD_FUNCTION("dcn_plugin::im2col", std::vector<c10::IValue>());
      be.im2col(l.in, l.off, l.msk, p, ch, col_c);
    }
    const at::Tensor out_c = chunk_of(out3, ch);  // (nc, O, np)
    for (int64_t g = 0; g < p.groups; ++g) {
      // (rows, O/g) = col[:, g] @ W[g]^T. This orientation keeps the big operand (the columns) as the
      // GEMM's "input", which oneDNN reads in place, rather than as its "weight", which it would copy
      // into a blocked layout; the result is transposed into the NCHW output.
      const at::Tensor r = matmul_nt(col_c.select(1, g), l.w.select(0, g));
      be.transpose_into(r.view({ch.nc, ch.np, og}), out_c.narrow(1, g * og, og));
    }
  }
  if (bias.has_value() && bias->defined()) out.add_(bias->view({1, p.o, 1, 1}));
  return out;
}

BackwardResult backward_impl(const Backend& be, const at::Tensor& grad_output, const at::Tensor& input,
                             const at::Tensor& offset, const std::optional<at::Tensor>& mask,
                             const at::Tensor& weight, at::IntArrayRef stride, at::IntArrayRef padding,
                             at::IntArrayRef dilation, int64_t groups, int64_t deform_groups,
                             std::array<bool, 5> output_mask) {
  const ConvParams p = check_conv_args<int64_t>(input, offset, mask, weight, std::nullopt, stride, padding,
                                                dilation, groups, deform_groups);
  check_grad_output(grad_output, input, p);
  const c10::DeviceGuard guard(input.device());
  const bool want_in = output_mask[0], want_off = output_mask[1], want_msk = output_mask[2] && p.has_mask,
             want_w = output_mask[3], want_b = output_mask[4];
  const auto opts = input.options();
  // a fresh empty tensor for each gradient not asked for (outputs of an op must not alias)
  auto none = [&opts] { return at::empty({0}, opts); };
  // The gradients of input, offset and mask come out channels-last (the layout the kernels work in),
  // the weight's in the columns' order (below); the fake kernels in functional.py promise the same.
  const bool low_precision = input.scalar_type() == at::kHalf || input.scalar_type() == at::kBFloat16;
  const auto acc_opts = low_precision ? opts.dtype(at::kFloat) : opts;
  at::Tensor g_in_acc = want_in ? zeros_channels_last(input.sizes(), acc_opts) : at::Tensor();
  // every element of the offset and mask gradients is written by the kernels (zeroed below if none run)
  const auto cl_opts = opts.memory_format(at::MemoryFormat::ChannelsLast);
  at::Tensor g_off = want_off ? at::empty(offset.sizes(), cl_opts) : none();
  at::Tensor g_msk = want_msk ? at::empty(mask->sizes(), cl_opts) : none();
  // weight gradient accumulated over chunks in float32 for half/bfloat16, in the columns' (kh, kw, C/g)
  // order: channels-last
  at::Tensor g_w_acc = want_w ? zeros_channels_last(weight.sizes(), acc_opts) : at::Tensor();
  at::Tensor g_b = want_b ? grad_output.sum({0, 2, 3}) : none();
  auto finish = [&]() -> BackwardResult {
    at::Tensor g_in = want_in ? (low_precision ? g_in_acc.to(input.scalar_type()) : g_in_acc) : none();
    // the weight gradient is returned contiguous (a weight-sized copy from the columns' order)
    at::Tensor g_w = want_w ? (low_precision ? g_w_acc.to(weight.scalar_type()) : g_w_acc).contiguous() : none();
    return {g_in, g_off, g_msk, g_w, g_b};
  };
  // nothing to sum (no images, no input or output channels): the gradients are zeros
  if (p.n == 0 || p.c == 0 || p.o == 0 || !(want_in || want_off || want_msk || want_w)) {
    if (want_off) g_off.zero_();
    if (want_msk) g_msk.zero_();
    return finish();
  }

  const Layout l = channels_last_rows(be, p, input, offset, mask, weight);
  const int64_t og = p.o_per_group(), kc = p.k() * p.c_per_group();
  const bool want_gcol = want_in || want_off || want_msk;
  at::Tensor g_off_rows = want_off ? g_off.permute({0, 2, 3, 1}) : at::Tensor();   // (N, Ho, Wo, 2dgK) contiguous
  at::Tensor g_msk_rows = want_msk ? g_msk.permute({0, 2, 3, 1}) : at::Tensor();
  at::Tensor g_in_rows = want_in ? g_in_acc.permute({0, 2, 3, 1}) : at::Tensor();
  at::Tensor g_w_rows = !want_w ? at::Tensor() : g_w_acc.permute({0, 2, 3, 1}).view({p.groups, og, kc});
  // grad_output as (N, P, O) rows: a view when it is channels_last, else transposed chunk by chunk from its
  // (N, O, P) form (only the form that is used is made: a reshape that cannot be a view copies the batch)
  const bool go_is_rows = grad_output.permute({0, 2, 3, 1}).is_contiguous();
  const at::Tensor go_rows =
      go_is_rows ? grad_output.permute({0, 2, 3, 1}).reshape({p.n, p.p(), p.o}) : at::Tensor();
  const at::Tensor go3 = go_is_rows ? at::Tensor() : grad_output.reshape({p.n, p.o, p.p()});

  // The columns are recomputed for the weight gradient. With a fused kernel (CPU) they come from the same
  // pass as the offset/mask gradients (the columns and their gradient are then alive together: the chunks
  // are small); otherwise (CUDA, large chunks) the columns' gradient is released before they are
  // recomputed, so the peak is one chunk-sized buffer (plus the gradients themselves).
  const bool fused = be.col_and_offset_mask_grad != nullptr && want_w && (want_off || want_msk);
  for (const Chunk& ch : chunks_of(be, p)) {
    at::Tensor go_c;  // the chunk's grad_out as channels-last rows (rows, O)
    if (go_is_rows) {
      go_c = go_rows.narrow(0, ch.n0, ch.nc).narrow(1, ch.pos0, ch.np).reshape({ch.rows(), p.o});
    } else {
      go_c = at::empty({ch.rows(), p.o}, opts);
      be.transpose_into(chunk_of(go3, ch), go_c.view({ch.nc, ch.np, p.o}));
    }
    at::Tensor col_c;
    if (want_gcol) {
      at::Tensor gcol_c;
      if (p.groups == 1) {
        gcol_c = matmul_nt(go_c, l.w.select(0, 0).t()).view({ch.rows(), 1, kc});
      } else {
        gcol_c = at::empty({ch.rows(), p.groups, kc}, opts);
        for (int64_t g = 0; g < p.groups; ++g)
          gcol_c.select(1, g).copy_(matmul_nt(go_c.narrow(1, g * og, og), l.w.select(0, g).t()));
      }
      if (fused) {
        RECORD_FUNCTION("dcn_plugin::offset_mask_grad", std::vector<c10::IValue>());
        col_c = at::empty({ch.rows(), p.groups, kc}, opts);
        be.col_and_offset_mask_grad(l.in, l.off, l.msk, gcol_c, p, ch, col_c, g_off_rows, g_msk_rows);
      } else if (want_off || want_msk) {
        RECORD_FUNCTION("dcn_plugin::offset_mask_grad", std::vector<c10::IValue>());
        be.offset_mask_grad(l.in, l.off, l.msk, gcol_c, p, ch, g_off_rows, g_msk_rows);
      }
      if (want_in) {
        RECORD_FUNCTION("dcn_plugin::input_grad", std::vector<c10::IValue>());
        be.input_grad(l.off, l.msk, gcol_c, p, ch, g_in_rows);
      }
    }
    if (want_w) {
      if (!col_c.defined()) {
        col_c = at::empty({ch.rows(), p.groups, kc}, opts);
        RECORD_FUNCTION("dcn_plugin::im2col", std::vector<c10::IValue>());
        be.im2col(l.in, l.off, l.msk, p, ch, col_c);
      }
      for (int64_t g = 0; g < p.groups; ++g) {
        // grad_W[g] (O/g, K*C/g) += grad_out_rows[:, g]^T (O/g, rows) @ col[:, g] (rows, K*C/g)
        // one group's columns are rows strided by groups*kc: a GEMM library handed them transposed with that
        // stride takes a slow path (oneDNN reorders them element by element), so pack them first
        const at::Tensor col_g = col_c.select(1, g);
        const at::Tensor r = matmul_nt(go_c.narrow(1, g * og, og).t(), (p.groups == 1 ? col_g : col_g.contiguous()).t());
        g_w_rows.select(0, g).add_(r);  // float32 accumulation for half/bfloat16
      }
    }
  }
  return finish();
}

// ----------------------------------------------------------------------------------- Meta kernels
// What fake tensors, torch.compile and opcheck run: the same validator on symbolic sizes, and outputs
// with the real kernels' shapes and layouts.
namespace {

at::Tensor forward_meta(const at::Tensor& input, const at::Tensor& offset, const std::optional<at::Tensor>& mask,
                        const at::Tensor& weight, const std::optional<at::Tensor>& bias, at::IntArrayRef stride,
                        at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups, int64_t deform_groups) {
  const auto p = check_conv_args<c10::SymInt>(input, offset, mask, weight, bias, stride, padding, dilation, groups,
                                              deform_groups);
  return at::empty_symint({p.n, p.o, p.ho, p.wo}, input.options());
}

BackwardResult backward_meta(const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& offset,
                             const std::optional<at::Tensor>& mask, const at::Tensor& weight, at::IntArrayRef stride,
                             at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups, int64_t deform_groups,
                             std::array<bool, 5> output_mask) {
  const auto p = check_conv_args<c10::SymInt>(input, offset, mask, weight, std::nullopt, stride, padding, dilation,
                                              groups, deform_groups);
  check_grad_output(grad_output, input, p);
  auto none = [&] { return at::empty({0}, input.options()); };  // never aliased
  auto channels_last = [](const at::Tensor& t) {
    return at::empty_symint(t.sym_sizes(), t.options().memory_format(at::MemoryFormat::ChannelsLast));
  };
  return {output_mask[0] ? channels_last(input) : none(), output_mask[1] ? channels_last(offset) : none(),
          output_mask[2] && p.has_mask ? channels_last(*mask) : none(),
          output_mask[3] ? at::empty_symint(weight.sym_sizes(), weight.options()) : none(),
          output_mask[4] ? at::empty_symint({p.o}, weight.options()) : none()};
}

}  // namespace

TORCH_LIBRARY_IMPL(dcn_plugin, Meta, m) {
  m.impl("modulated_deform_conv2d", &forward_meta);
  m.impl("modulated_deform_conv2d_backward", &backward_meta);
}

// ----------------------------------------------------------------------------------- the validator as ops
// For kernels written outside C++ (the Triton kernels): they run the validator through these, on the real
// tensors, so every backend raises the same errors.
namespace {

void check_args_op(const at::Tensor& input, const at::Tensor& offset, const std::optional<at::Tensor>& mask,
                   const at::Tensor& weight, const std::optional<at::Tensor>& bias, at::IntArrayRef stride,
                   at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups, int64_t deform_groups) {
  check_conv_args<int64_t>(input, offset, mask, weight, bias, stride, padding, dilation, groups, deform_groups);
}

void check_backward_args_op(const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& offset,
                            const std::optional<at::Tensor>& mask, const at::Tensor& weight, at::IntArrayRef stride,
                            at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups,
                            int64_t deform_groups) {
  const auto p = check_conv_args<int64_t>(input, offset, mask, weight, std::nullopt, stride, padding, dilation,
                                          groups, deform_groups);
  check_grad_output(grad_output, input, p);
}

}  // namespace

TORCH_LIBRARY_IMPL(dcn_plugin, CompositeExplicitAutograd, m) {
  m.impl("_check_modulated_deform_conv2d_args", &check_args_op);
  m.impl("_check_modulated_deform_conv2d_backward_args", &check_backward_args_op);
}

}  // namespace dcn_plugin
