"""Functional interface of the deformable convolution operators.

Semantics are those of mmcv's ``modulated_deform_conv2d`` and ``torchvision.ops.deform_conv2d``:

* ``offset`` has ``2 * deform_groups * kh * kw`` channels: for deform group ``g`` and kernel point
  ``k = i * kw + j`` the pair ``(dy, dx)`` sits at channels ``2 * (g * kh * kw + k)`` and ``+ 1``;
* ``mask`` has ``deform_groups * kh * kw`` channels (modulation scalars, DCNv2); ``None`` = DCNv1;
* the sample for output ``(y, x)`` and kernel point ``(i, j)`` is taken at
  ``(y * stride_h - pad_h + i * dil_h + dy, x * stride_w - pad_w + j * dil_w + dx)`` by bilinear
  interpolation, with zeros outside the image.

The operators are ``torch.ops.dcn_plugin.modulated_deform_conv2d`` (forward) and
``torch.ops.dcn_plugin.modulated_deform_conv2d_backward``: real custom ops with autograd (registered
here) and Meta kernels (in C++, with the kernels' validator), so ``torch.compile(fullgraph=True)`` and
``torch.library.opcheck`` work. Every rule on the arguments is checked once, by the operator; this
module only turns Python arguments (ints or pairs) into the operator's.

On CUDA the operators' kernels are registered here: each call runs the Triton kernels
(:mod:`dcn_plugin.ops.triton`) or the C++ CUDA kernels (the private ops ``_modulated_deform_conv2d_cuda``
and ``_modulated_deform_conv2d_backward_cuda``), by the rule of :mod:`dcn_plugin.ops.backend`.
"""
from numbers import Integral
from typing import Any, Optional, Union

import torch
from torch import Tensor

from .. import extension as _library
from .backend import cuda_backend_for
from .pair import IntPair, to_pair

_library.load()

_OP = 'dcn_plugin::modulated_deform_conv2d'
_BWD = torch.ops.dcn_plugin.modulated_deform_conv2d_backward


def _check_python_args(**args: Any) -> None:
    # Python-level types only: every rule on the tensors and values themselves is checked by the
    # operator (C++). TorchScript's types make these checks unnecessary in scripted code.
    for name, v in args.items():
        if name in ('groups', 'deform_groups'):
            if isinstance(v, bool) or not isinstance(v, Integral):
                raise TypeError(f'{name} must be an int, got {v!r}')
        elif v is not None and not isinstance(v, torch.Tensor):
            raise TypeError(f'{name} must be a torch.Tensor, got {type(v).__name__}')


def modulated_deform_conv2d(input: Tensor, offset: Tensor, mask: Optional[Tensor], weight: Tensor,
                            bias: Optional[Tensor] = None, stride: IntPair = 1, padding: IntPair = 0,
                            dilation: IntPair = 1, groups: int = 1, deform_groups: int = 1) -> Tensor:
    """Modulated deformable convolution (DCNv2); with ``mask=None``, deformable convolution (DCNv1).

    Same arguments, in the same order, as mmcv's ``modulated_deform_conv2d``. Scriptable
    (``torch.jit.script``) and exportable to ONNX (``DeformConv``, see :mod:`dcn_plugin.deploy`).

    Args:
        input: ``(N, C, H, W)``; any strides (channels_last included).
        offset: ``(N, 2 * deform_groups * kh * kw, Ho, Wo)``, ``(dy, dx)`` interleaved per point.
        mask: ``(N, deform_groups * kh * kw, Ho, Wo)`` modulation scalars, or ``None``.
        weight: ``(O, C / groups, kh, kw)``.
        bias: ``(O,)`` or ``None``.
        stride, padding, dilation: an int or a pair ``(h, w)``.
        groups: convolution groups (``C`` and ``O`` divisible by it).
        deform_groups: offset groups (``C`` divisible by it); each has its own offsets and mask.

    Returns:
        ``(N, O, Ho, Wo)`` with ``Ho = (H + 2*pad_h - (dil_h*(kh-1)+1)) // stride_h + 1`` (same for W).

    dtypes: float32/float64 on CPU; float16/bfloat16/float32/float64 on CUDA, sampling coordinates and
    accumulation in float32 (float64 for float64). Under autocast the op runs in the autocast dtype on
    CUDA (like ``conv2d``) and in float32 on CPU; the result is in that dtype.
    """
    stride_, padding_, dilation_ = to_pair(stride, 'stride'), to_pair(padding, 'padding'), to_pair(dilation, 'dilation')
    if not torch.jit.is_scripting():
        _check_python_args(input=input, offset=offset, mask=mask, weight=weight, bias=bias, groups=groups,
                           deform_groups=deform_groups)
    return torch.ops.dcn_plugin.modulated_deform_conv2d(input, offset, mask, weight, bias, stride_, padding_,
                                                        dilation_, groups, deform_groups)


def _check_mmcv_args(stride: Any, im2col_step: Any) -> None:
    # eager mode only (TorchScript's types exclude these mistakes)
    if isinstance(stride, torch.Tensor):
        raise TypeError('stride must be an int or a pair of ints, got a Tensor: deform_conv2d takes '
                        "mmcv's argument order (input, offset, weight, stride, padding, dilation, groups, "
                        'deform_groups, bias, im2col_step); pass a bias tensor as bias=...')
    check_im2col_step(im2col_step)


def check_im2col_step(im2col_step: Any) -> None:
    """mmcv's ``im2col_step`` (accepted for compatibility, no effect here) must still be a positive int."""
    if isinstance(im2col_step, bool) or not isinstance(im2col_step, Integral):
        raise TypeError(f'im2col_step must be an int (it has no effect), got {im2col_step!r}')
    if im2col_step < 1:
        raise ValueError(f'im2col_step must be positive (it has no effect), got {im2col_step}')


def deform_conv2d(input: Tensor, offset: Tensor, weight: Tensor, stride: IntPair = 1, padding: IntPair = 0,
                  dilation: IntPair = 1, groups: int = 1, deform_groups: int = 1,
                  bias: Union[Tensor, bool, None] = False, im2col_step: int = 32) -> Tensor:
    """Deformable convolution (DCNv1): :func:`modulated_deform_conv2d` without a mask.

    Takes mmcv's ``deform_conv2d`` arguments in mmcv's order, so code written for mmcv runs unchanged:
    ``deform_conv2d(input, offset, weight, stride, padding, dilation, groups, deform_groups, False, 32)``.

    Args:
        input, offset, weight, stride, padding, dilation, groups, deform_groups: as in
            :func:`modulated_deform_conv2d`.
        bias: a ``(O,)`` tensor added to the output, or ``False`` / ``None`` for none. mmcv's function
            only accepts ``False`` (it has no bias); a tensor is an addition, and ``True`` is refused
            (a flag carries no values).
        im2col_step: accepted for mmcv compatibility; it has no effect (mmcv's CUDA kernel processed
            the batch in chunks of this many images; these kernels choose their own chunking), but
            must be a positive int.

    Returns:
        ``(N, O, Ho, Wo)``, as :func:`modulated_deform_conv2d`.
    """
    if not torch.jit.is_scripting():
        _check_mmcv_args(stride, im2col_step)
    bias_tensor: Optional[Tensor] = None
    if isinstance(bias, Tensor):
        bias_tensor = bias
    elif not (bias is None or bias is False):
        raise TypeError(f'bias must be a torch.Tensor of shape (out_channels,), None or False (no bias), '
                        f'got {bias}')
    return modulated_deform_conv2d(input, offset, None, weight, bias_tensor, stride, padding, dilation, groups,
                                   deform_groups)


# ----------------------------------------------------------------------------- autograd
def _setup_context(ctx, inputs, output):
    input, offset, mask, weight, bias, stride, padding, dilation, groups, deform_groups = inputs
    ctx.save_for_backward(input, offset, mask, weight)
    ctx.has_mask = mask is not None
    ctx.has_bias = bias is not None
    ctx.conv_args = (stride, padding, dilation, groups, deform_groups)


def _backward(ctx, grad_output):
    input, offset, mask, weight = ctx.saved_tensors
    need = ctx.needs_input_grad
    output_mask = [need[0], need[1], ctx.has_mask and need[2], need[3], ctx.has_bias and need[4]]
    if not any(output_mask):
        return (None,) * 10
    grads = _BWD(grad_output, input, offset, mask, weight, *ctx.conv_args, output_mask)
    return tuple(g if want else None for g, want in zip(grads, output_mask)) + (None,) * 5


torch.library.register_autograd(_OP, _backward, setup_context=_setup_context)


def refuse_double_backward(backward_op: str, op_name: str) -> None:
    """Register an autograd for ``backward_op`` that raises NotImplementedError.

    First-order gradients never record a graph through a backward op; a second-order one would, and
    must fail loudly rather than return zeros.
    """
    def refuse(ctx, *grads):
        raise NotImplementedError(
            'dcn_plugin: double backward (a gradient of the gradient, e.g. torch.autograd.grad(..., '
            f'create_graph=True) followed by another backward) is not supported by {op_name}')

    def setup_context(ctx, inputs, output):
        pass

    torch.library.register_autograd(backward_op, refuse, setup_context=setup_context)


refuse_double_backward('dcn_plugin::modulated_deform_conv2d_backward', 'modulated_deform_conv2d')


# ----------------------------------------------------------------------------- CUDA kernels
def _cxx_cuda_op(name: str):
    if not _library.has_cuda_kernels():
        raise RuntimeError(
            'dcn_plugin: this call needs the C++ CUDA kernels (float64, torch.use_deterministic_algorithms(True) '
            "or DCN_PLUGIN_CUDA_BACKEND=cuda choose them; see dcn_plugin.ops.backend), but dcn_plugin._C was built "
            'without them. Rebuild with FORCE_CUDA=1, or run float16/bfloat16/float32 on the Triton kernels.')
    return getattr(torch.ops.dcn_plugin, name)


def _forward_cuda(input, offset, mask, weight, bias, stride, padding, dilation, groups, deform_groups):
    if cuda_backend_for(input.dtype) == 'triton':
        from . import triton as triton_kernels
        return triton_kernels.forward(input, offset, mask, weight, bias, stride, padding, dilation, groups,
                                      deform_groups)
    return _cxx_cuda_op('_modulated_deform_conv2d_cuda')(input, offset, mask, weight, bias, stride, padding,
                                                        dilation, groups, deform_groups)


def _backward_cuda(grad_output, input, offset, mask, weight, stride, padding, dilation, groups, deform_groups,
                   output_mask):
    if cuda_backend_for(input.dtype) == 'triton':
        from . import triton as triton_kernels
        return triton_kernels.backward(grad_output, input, offset, mask, weight, stride, padding, dilation, groups,
                                       deform_groups, output_mask)
    return _cxx_cuda_op('_modulated_deform_conv2d_backward_cuda')(grad_output, input, offset, mask, weight, stride,
                                                                 padding, dilation, groups, deform_groups,
                                                                 output_mask)


torch.library.impl(_OP, 'CUDA', _forward_cuda)
torch.library.impl('dcn_plugin::modulated_deform_conv2d_backward', 'CUDA', _backward_cuda)
