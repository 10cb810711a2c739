// Building blocks of the operators' argument validation.
//
// Every operator has exactly one validator, in its driver file, and it is the only place where the
// operator's rules and messages are written. The validator is a template over the integer type of
// the sizes, so the same code serves
//   * the CPU and CUDA kernels (int64_t, from Tensor::sizes()), and
//   * the operator's Meta kernel (c10::SymInt, from Tensor::sym_sizes()), which is what fake tensors,
//     torch.compile and torch.library.opcheck run: the errors are the same in eager and compiled code.
// Comparisons of SymInts guard on the symbolic sizes, which is what shape checks should do.
//
// Messages print shapes and dtypes as Python does ("(2, 3)", "(5,)", "torch.float32") and always
// name the argument, the expectation and what was given. User errors raise ValueError
// (TORCH_CHECK_VALUE) or TypeError (TORCH_CHECK_TYPE).
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/core/SymInt.h>
#include <c10/util/Exception.h>

#include <sstream>
#include <string>

namespace dcn_plugin {

// Tensor sizes as the validator's integer type.
template <typename I>
inline I size_of(const at::Tensor& t, int64_t dim);
template <>
inline int64_t size_of<int64_t>(const at::Tensor& t, int64_t dim) { return t.size(dim); }
template <>
inline c10::SymInt size_of<c10::SymInt>(const at::Tensor& t, int64_t dim) { return t.sym_size(dim); }

template <typename I>
inline std::string tuple_str(c10::ArrayRef<I> v) {
  std::ostringstream ss;
  ss << "(";
  for (size_t i = 0; i < v.size(); ++i) ss << (i ? ", " : "") << v[i];
  ss << (v.size() == 1 ? ",)" : ")");
  return ss.str();
}
template <typename I>
inline std::string tuple_str(std::initializer_list<I> v) { return tuple_str(c10::ArrayRef<I>(v)); }

inline std::string shape_str(const at::Tensor& t) { return tuple_str(t.sym_sizes()); }

inline std::string dtype_str(at::ScalarType t) {
  switch (t) {
    case at::kFloat: return "torch.float32";
    case at::kDouble: return "torch.float64";
    case at::kHalf: return "torch.float16";
    case at::kBFloat16: return "torch.bfloat16";
    case at::kLong: return "torch.int64";
    case at::kInt: return "torch.int32";
    case at::kBool: return "torch.bool";
    default: return std::string("torch.") + c10::toString(t);
  }
}

// Whether the sizes of `t` equal `expected` (each comparison guards for symbolic sizes).
template <typename I>
inline bool has_shape(const at::Tensor& t, std::initializer_list<I> expected) {
  if (t.dim() != static_cast<int64_t>(expected.size())) return false;
  int64_t d = 0;
  for (const I& e : expected)
    if (!(size_of<I>(t, d++) == e)) return false;
  return true;
}

inline void check_rank(const at::Tensor& t, const char* name, int64_t rank, const char* layout) {
  TORCH_CHECK_VALUE(t.dim() == rank, name, " must be a ", rank, "-D tensor", layout, ", got shape ", shape_str(t),
                    " (", t.dim(), "-D)");
}

inline void check_same_device(const at::Tensor& t, const char* name, const at::Tensor& input) {
  TORCH_CHECK_VALUE(t.device() == input.device(), name, " must be on the same device as input (", input.device(),
                    "), got ", t.device());
}

inline void check_same_dtype(const at::Tensor& t, const char* name, const at::Tensor& input) {
  TORCH_CHECK_TYPE(t.scalar_type() == input.scalar_type(), name, " dtype must match input dtype (",
                   dtype_str(input.scalar_type()), "), got ", dtype_str(t.scalar_type()));
}

// The floating dtypes the kernels support: float32/float64 everywhere, float16/bfloat16 on CUDA.
// The Meta kernel cannot tell the device a fake tensor stands for, so it accepts all four (the
// kernels check again when the compiled code runs).
inline void check_floating_input(const at::Tensor& input, const char* name = "input") {
  const auto dt = input.scalar_type();
  const auto dev = input.device().type();
  const bool half_ok = dev == c10::DeviceType::CUDA || dev == c10::DeviceType::Meta;
  const bool ok = dt == at::kFloat || dt == at::kDouble || (half_ok && (dt == at::kHalf || dt == at::kBFloat16));
  TORCH_CHECK_TYPE(ok, name, " dtype must be ",
                   half_ok ? "float16, bfloat16, float32 or float64" : "float32 or float64", " on ",
                   c10::DeviceTypeName(dev, /*lower_case=*/true), ", got ", dtype_str(dt));
}

// A pair of ints >= low (stride, padding, dilation, output size).
inline void check_pair(at::IntArrayRef v, const char* name, int64_t low) {
  TORCH_CHECK_VALUE(v.size() == 2, name, " must be a pair of ints, got ", tuple_str(v));
  TORCH_CHECK_VALUE(v[0] >= low && v[1] >= low, name, " must be a pair of ",
                    low == 1 ? "positive" : "non-negative", " ints, got ", tuple_str(v));
}

}  // namespace dcn_plugin
