"""Triton kernels of the operators: on CUDA, the kernels of ``torch.ops.dcn_plugin.modulated_deform_conv2d``
and ``deform_roi_pool`` for float16/bfloat16/float32 (by the rule of :mod:`dcn_plugin.ops.backend`);
callable directly too.

``sampling`` is the Triton twin of ``ops/csrc/deform_sampling.h``, ``deform_conv`` the convolution's
kernels, ``roi_pool`` RoI pooling's. Every call is validated by the op's C++ validator
(``_check_modulated_deform_conv2d_args``, ``_check_deform_roi_pool_args``; the latter checks the RoIs'
values too), so errors are the op's own. On CPU tensors the kernels run only in Triton's interpreter: set
``TRITON_INTERPRET=1`` before this package is imported (the tests do, where no GPU is).
"""
from typing import Optional, Sequence, Tuple

import torch
from torch import Tensor

from ... import extension as _library
from ..functional import _check_python_args
from ..pair import IntPair, to_pair
from ..roi_pool import pool_args
from . import deform_conv
from . import roi_pool as roi_pool_kernels
from .deform_conv import DTYPES, interpreted

_library.load()


def _check_interpreter_switch() -> None:
    # TRITON_INTERPRET is read as each triton function is defined: set after triton.language was imported
    # (by torch, say), it turns these kernels into interpreted ones whose calls into triton's own library
    # then fail deep inside; say what happened instead
    import triton
    import triton.language as tl
    ours, theirs = interpreted(), not isinstance(tl.zeros, triton.runtime.JITFunction)
    if ours != theirs:
        raise ImportError('dcn_plugin.ops.triton: TRITON_INTERPRET changed between importing triton.language and '
                          'this package; set it before anything imports triton (before importing dcn_plugin)')


_check_interpreter_switch()

__all__ = ['modulated_deform_conv2d', 'forward', 'backward', 'deform_roi_pool', 'roi_pool_forward',
           'roi_pool_backward', 'interpreted']


def _check_runnable(input: Tensor) -> None:
    # what only these kernels need (the op's own rules are the validator's)
    if input.dtype not in DTYPES:
        raise TypeError(f'input dtype must be one of {", ".join(str(d) for d in DTYPES)} for the Triton kernels, '
                        f'got {input.dtype} (float64 runs the C++ kernels)')
    if input.device.type != 'cuda' and not interpreted():
        raise RuntimeError(f'the Triton kernels run on CUDA tensors, got input on {input.device}; CPU tensors run '
                           'only in Triton\'s interpreter (TRITON_INTERPRET=1 set before dcn_plugin.ops.triton is '
                           'imported)')


def forward(input: Tensor, offset: Tensor, mask: Optional[Tensor], weight: Tensor, bias: Optional[Tensor],
            stride: Sequence[int], padding: Sequence[int], dilation: Sequence[int], groups: int,
            deform_groups: int) -> Tensor:
    """``torch.ops.dcn_plugin.modulated_deform_conv2d``'s forward (same arguments) in the Triton kernels."""
    torch.ops.dcn_plugin._check_modulated_deform_conv2d_args(input, offset, mask, weight, bias, stride, padding,
                                                             dilation, groups, deform_groups)
    _check_runnable(input)
    return deform_conv.conv_forward(input, offset, mask, weight, bias, stride, padding, dilation, groups,
                                    deform_groups)


def backward(grad_output: Tensor, input: Tensor, offset: Tensor, mask: Optional[Tensor], weight: Tensor,
             stride: Sequence[int], padding: Sequence[int], dilation: Sequence[int], groups: int, deform_groups: int,
             output_mask: Sequence[bool]) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """``torch.ops.dcn_plugin.modulated_deform_conv2d_backward`` (same arguments and outputs) in the Triton
    kernels."""
    torch.ops.dcn_plugin._check_modulated_deform_conv2d_backward_args(grad_output, input, offset, mask, weight,
                                                                      stride, padding, dilation, groups,
                                                                      deform_groups)
    _check_runnable(input)
    return deform_conv.conv_backward(grad_output, input, offset, mask, weight, stride, padding, dilation, groups,
                                     deform_groups, output_mask)


class _ModulatedDeformConv2d(torch.autograd.Function):
    @staticmethod
    def forward(ctx, input, offset, mask, weight, bias, stride, padding, dilation, groups, deform_groups):
        out = forward(input, offset, mask, weight, bias, stride, padding, dilation, groups, deform_groups)
        ctx.save_for_backward(input, offset, mask, weight)
        ctx.has_mask, ctx.has_bias = mask is not None, bias is not None
        ctx.conv_args = (stride, padding, dilation, groups, deform_groups)
        return out

    @staticmethod
    def backward(ctx, grad_output):
        input, offset, mask, weight = ctx.saved_tensors
        need = ctx.needs_input_grad
        output_mask = [need[0], need[1], ctx.has_mask and need[2], need[3], ctx.has_bias and need[4]]
        grads = backward(grad_output, input, offset, mask, weight, *ctx.conv_args, output_mask)
        return tuple(g if want else None for g, want in zip(grads, output_mask)) + (None,) * 5


def modulated_deform_conv2d(input: Tensor, offset: Tensor, mask: Optional[Tensor], weight: Tensor,
                            bias: Optional[Tensor] = None, stride: IntPair = 1, padding: IntPair = 0,
                            dilation: IntPair = 1, groups: int = 1, deform_groups: int = 1) -> Tensor:
    """:func:`dcn_plugin.ops.modulated_deform_conv2d` (same arguments, shapes and gradients) run by the Triton
    kernels whatever the backend rule says: float16/bfloat16/float32 CUDA tensors, or CPU tensors under
    Triton's interpreter. Differentiable in every tensor argument (first order)."""
    stride_, padding_, dilation_ = to_pair(stride, 'stride'), to_pair(padding, 'padding'), to_pair(dilation, 'dilation')
    _check_python_args(input=input, offset=offset, mask=mask, weight=weight, bias=bias, groups=groups,
                       deform_groups=deform_groups)
    return _ModulatedDeformConv2d.apply(input, offset, mask, weight, bias, list(stride_), list(padding_),
                                        list(dilation_), groups, deform_groups)


# ----------------------------------------------------------------------------- deformable RoI pooling
def roi_pool_forward(input: Tensor, rois: Tensor, offset: Optional[Tensor], output_size: Sequence[int],
                     spatial_scale: float, sampling_ratio: int, gamma: float) -> Tensor:
    """``torch.ops.dcn_plugin.deform_roi_pool`` (same arguments) in the Triton kernels."""
    torch.ops.dcn_plugin._check_deform_roi_pool_args(input, rois, offset, output_size, spatial_scale, sampling_ratio,
                                                     gamma)
    _check_runnable(input)
    return roi_pool_kernels.roi_pool_forward(input, rois, offset, output_size, spatial_scale, sampling_ratio, gamma)


def roi_pool_backward(grad_output: Tensor, input: Tensor, rois: Tensor, offset: Optional[Tensor],
                      output_size: Sequence[int], spatial_scale: float, sampling_ratio: int, gamma: float,
                      output_mask: Sequence[bool]) -> Tuple[Tensor, Tensor]:
    """``torch.ops.dcn_plugin.deform_roi_pool_backward`` (same arguments and outputs) in the Triton kernels."""
    torch.ops.dcn_plugin._check_deform_roi_pool_backward_args(grad_output, input, rois, offset, output_size,
                                                              spatial_scale, sampling_ratio, gamma)
    _check_runnable(input)
    return roi_pool_kernels.roi_pool_backward(grad_output, input, rois, offset, output_size, spatial_scale,
                                              sampling_ratio, gamma, output_mask)


class _DeformRoIPool(torch.autograd.Function):
    @staticmethod
    def forward(ctx, input, rois, offset, output_size, spatial_scale, sampling_ratio, gamma):
        ctx.save_for_backward(input, rois, offset)
        ctx.has_offset = offset is not None
        ctx.pool_args = (output_size, spatial_scale, sampling_ratio, gamma)
        return roi_pool_forward(input, rois, offset, output_size, spatial_scale, sampling_ratio, gamma)

    @staticmethod
    def backward(ctx, grad_output):
        input, rois, offset = ctx.saved_tensors
        need = ctx.needs_input_grad
        output_mask = [need[0], ctx.has_offset and need[2]]
        g_in, g_off = roi_pool_backward(grad_output, input, rois, offset, *ctx.pool_args, output_mask)
        return (g_in if output_mask[0] else None, None, g_off if output_mask[1] else None) + (None,) * 4


def deform_roi_pool(input: Tensor, rois: Tensor, offset: Optional[Tensor], output_size: IntPair,
                    spatial_scale: float = 1.0, sampling_ratio: int = 0, gamma: float = 0.1) -> Tensor:
    """:func:`dcn_plugin.ops.deform_roi_pool` (same arguments, shapes and gradients) run by the Triton
    kernels whatever the backend rule says (CUDA tensors, or CPU tensors under Triton's interpreter).
    Differentiable in ``input`` and ``offset`` (first order); ``rois`` get no gradient, as in mmcv."""
    args = pool_args(output_size, spatial_scale, sampling_ratio, gamma)
    _check_python_args(input=input, rois=rois, offset=offset)
    return _DeformRoIPool.apply(input, rois, offset, *args)
