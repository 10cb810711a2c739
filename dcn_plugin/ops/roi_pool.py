"""Functional interface of the deformable RoI pooling operator (DCNv1's deformable RoI pooling; DCNv2's
modulated form is this pooling times a mask).

Semantics are mmcv's ``deform_roi_pool``, so mmcv/mmdet models and numbers carry over:

* ``rois`` is ``(K, 5)``: ``(batch_index, x1, y1, x2, y2)`` in image coordinates; the corners map to
  ``x * spatial_scale - 0.5`` on the feature map (no rounding);
* the RoI is split into ``PH x PW`` bins; bin ``(ph, pw)`` is the mean of a ``grid_h x grid_w`` grid of
  samples at the sub-bin centres, ``grid = sampling_ratio``, or ``ceil(bin size)`` per side when
  ``sampling_ratio`` is 0; a sample is bilinear with RoIAlign's border rule (a coordinate in ``[-1, 0]``
  reads row/column 0, one in ``[size - 1, size]`` the last one, one outside ``[-1, size]`` makes the
  sample zero: it still counts in the mean);
* ``offset`` ``(K, 2, PH, PW)`` moves bin ``(ph, pw)`` by ``gamma * roi_width * offset[k, 0, ph, pw]``
  along x and ``gamma * roi_height * offset[k, 1, ph, pw]`` along y (feature-map units); ``None`` is
  plain pooling (RoIAlign with ``aligned=True``: torchvision's ``roi_align(..., aligned=True)``).

The gradients are those of this forward: where the border clamp holds a sample still, its offset
gradient along that axis is zero (mmcv's CUDA kernel computes the offset gradient from the unclamped
coordinates, so the two differ for samples in the one-pixel border band; the outputs agree).

The operators are ``torch.ops.dcn_plugin.deform_roi_pool`` and ``deform_roi_pool_backward`` (gradients
of input and offset; ``rois`` get none, as in mmcv): real custom ops with autograd (registered here) and
Meta kernels (in C++, with the op's validator), so ``torch.compile(fullgraph=True)`` and
``torch.library.opcheck`` work. Every rule on the arguments is checked by the operator; the checks that
need the RoIs' values (finite, integral batch index in range, ``x2 >= x1`` and ``y2 >= y1``) run in the
kernels (on CUDA at the cost of one device synchronisation per call).
"""
from numbers import Integral, Real
from typing import List, Optional, Tuple

import torch
from torch import Tensor

from .backend import cuda_backend_for
from .functional import _check_python_args, _cxx_cuda_op, refuse_double_backward
from .pair import IntPair, to_pair

_OP = 'dcn_plugin::deform_roi_pool'
_BWD = torch.ops.dcn_plugin.deform_roi_pool_backward


def _real(value, name: str) -> float:
    if isinstance(value, (bool, torch.Tensor)) or not isinstance(value, Real):
        raise TypeError(f'{name} must be a real number, got {value!r}')
    return float(value)


def pool_args(output_size: IntPair, spatial_scale: float, sampling_ratio: int,
              gamma: float) -> Tuple[List[int], float, int, float]:
    """The operator's ``output_size``, ``spatial_scale``, ``sampling_ratio`` and ``gamma`` from Python
    arguments: a TypeError naming the argument unless they are an int or pair of ints, a real number, an
    int (not a bool or a float) and a real number. Their values are checked by the operator."""
    size = to_pair(output_size, 'output_size')
    if isinstance(sampling_ratio, bool) or not isinstance(sampling_ratio, Integral):
        raise TypeError(f'sampling_ratio must be an int, got {sampling_ratio!r}')
    return size, _real(spatial_scale, 'spatial_scale'), int(sampling_ratio), _real(gamma, 'gamma')


def check_pool_args(output_size: IntPair, spatial_scale: float, sampling_ratio: int,
                    gamma: float) -> Tuple[List[int], float, int, float]:
    """:func:`pool_args`, with the values checked by the operator's validator (its Meta kernel, on meta
    tensors): what a module checks when it is built, so that a bad argument is refused there, with the
    operator's message, rather than at the first forward."""
    args = pool_args(output_size, spatial_scale, sampling_ratio, gamma)
    meta = dict(device='meta', dtype=torch.float32)
    torch.ops.dcn_plugin.deform_roi_pool(torch.empty(1, 1, 1, 1, **meta), torch.empty(1, 5, **meta), None, *args)
    return args


def deform_roi_pool(input: Tensor, rois: Tensor, offset: Optional[Tensor], output_size: IntPair,
                    spatial_scale: float = 1.0, sampling_ratio: int = 0, gamma: float = 0.1) -> Tensor:
    """Deformable RoI pooling (mmcv's ``deform_roi_pool``, same argument order).

    Args:
        input: ``(N, C, H, W)`` feature map; any strides (channels_last included).
        rois: ``(K, 5)`` rows ``(batch_index, x1, y1, x2, y2)`` in image coordinates, ``x2 >= x1``,
            ``y2 >= y1``; the input's dtype (float32 is also accepted for float16/bfloat16 inputs).
        offset: ``(K, 2, PH, PW)`` normalised bin offsets (channel 0 along x, 1 along y), or ``None``.
        output_size: ``PH = PW`` or ``(PH, PW)``.
        spatial_scale: feature-map size / image size (``1 / stride``).
        sampling_ratio: samples per bin side; 0 = ``ceil(bin size)`` (adaptive).
        gamma: offset scale: a bin moves by ``gamma * roi_size * offset``.

    Returns:
        ``(K, C, PH, PW)``.

    dtypes: float32/float64 on CPU; float16/bfloat16/float32/float64 on CUDA, coordinates and sums in
    float32 (float64 for float64). Under autocast the op runs in the autocast dtype on CUDA and in
    float32 on CPU, with float32 RoIs.
    """
    args = pool_args(output_size, spatial_scale, sampling_ratio, gamma)
    _check_python_args(input=input, rois=rois, offset=offset)
    return torch.ops.dcn_plugin.deform_roi_pool(input, rois, offset, *args)


# ----------------------------------------------------------------------------- autograd
def _setup_context(ctx, inputs, output):
    input, rois, offset, output_size, spatial_scale, sampling_ratio, gamma = inputs
    ctx.save_for_backward(input, rois, offset)
    ctx.has_offset = offset is not None
    ctx.pool_args = (output_size, spatial_scale, sampling_ratio, gamma)


def _backward(ctx, grad_output):
    input, rois, offset = ctx.saved_tensors
    need = ctx.needs_input_grad
    output_mask = [need[0], ctx.has_offset and need[2]]
    if not any(output_mask):
        return (None,) * 7
    g_in, g_off = _BWD(grad_output, input, rois, offset, *ctx.pool_args, output_mask)
    return (g_in if output_mask[0] else None, None, g_off if output_mask[1] else None) + (None,) * 4


torch.library.register_autograd(_OP, _backward, setup_context=_setup_context)


refuse_double_backward('dcn_plugin::deform_roi_pool_backward', 'deform_roi_pool')


# ----------------------------------------------------------------------------- CUDA kernels
# As the convolution's (functional.py): the Triton kernels or the C++ CUDA kernels (private ops), by the
# rule of dcn_plugin.ops.backend.
def _forward_cuda(input, rois, offset, output_size, spatial_scale, sampling_ratio, gamma):
    if cuda_backend_for(input.dtype) == 'triton':
        from . import triton as triton_kernels
        return triton_kernels.roi_pool_forward(input, rois, offset, output_size, spatial_scale, sampling_ratio,
                                               gamma)
    return _cxx_cuda_op('_deform_roi_pool_cuda')(input, rois, offset, output_size, spatial_scale, sampling_ratio,
                                                 gamma)


def _backward_cuda(grad_output, input, rois, offset, output_size, spatial_scale, sampling_ratio, gamma, output_mask):
    if cuda_backend_for(input.dtype) == 'triton':
        from . import triton as triton_kernels
        return triton_kernels.roi_pool_backward(grad_output, input, rois, offset, output_size, spatial_scale,
                                                sampling_ratio, gamma, output_mask)
    return _cxx_cuda_op('_deform_roi_pool_backward_cuda')(grad_output, input, rois, offset, output_size,
                                                          spatial_scale, sampling_ratio, gamma, output_mask)


torch.library.impl(_OP, 'CUDA', _forward_cuda)
torch.library.impl('dcn_plugin::deform_roi_pool_backward', 'CUDA', _backward_cuda)
