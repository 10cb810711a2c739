"""Functional interface of the deformable convolution operators.

Semantics are those of mmcv's ``modulated_deform_conv2d`` and ``torchvision.ops.deform_conv2d``:

* ``offset`` has ``2 * deform_groups * kh * kw`` channels: for deform group ``g`` and kernel point
  ``k = i * kw + j`` the pair ``(dy, dx)`` sits at channels ``2 * (g * kh * kw + k)`` and ``+ 1``;
* ``mask`` has ``deform_groups * kh * kw`` channels (modulation scalars, DCNv2); ``None`` = DCNv1;
* the sample for output ``(y, x)`` and kernel point ``(i, j)`` is taken at
  ``(y * stride_h - pad_h + i * dil_h + dy, x * stride_w - pad_w + j * dil_w + dx)`` by bilinear
  interpolation, with zeros outside the image.

The operators are ``torch.ops.dcn_plugin.modulated_deform_conv2d`` (forward) and
``torch.ops.dcn_plugin.modulated_deform_conv2d_backward``: real custom ops with autograd and fake
(meta) implementations, so ``torch.compile(fullgraph=True)`` and ``torch.library.opcheck`` work.
"""
from numbers import Integral
from typing import List, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor

from . import _library

_library.load()

IntPair = Union[int, Sequence[int]]
_OP = 'dcn_plugin::modulated_deform_conv2d'
_BWD = torch.ops.dcn_plugin.modulated_deform_conv2d_backward
_CPU_DTYPES = (torch.float32, torch.float64)
_CUDA_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _pair(value: IntPair, name: str) -> List[int]:
    if isinstance(value, (bool, torch.Tensor)) or not isinstance(value, (Integral, Sequence)):
        raise TypeError(f'{name} must be an int or a pair of ints, got {value!r}')
    if isinstance(value, Integral):
        return [int(value), int(value)]
    vals = list(value)
    if len(vals) != 2 or not all(isinstance(v, Integral) and not isinstance(v, bool) for v in vals):
        raise TypeError(f'{name} must be an int or a pair of ints, got {value!r}')
    return [int(v) for v in vals]


def _shape(t: Tensor) -> Tuple[int, ...]:
    return tuple(t.shape)


def check_args(input: Tensor, offset: Tensor, mask: Optional[Tensor], weight: Tensor,
               bias: Optional[Tensor], stride: Sequence[int], padding: Sequence[int],
               dilation: Sequence[int], groups: int, deform_groups: int,
               check_dtypes: bool = True) -> Tuple[int, int]:
    """Validate the operator's arguments; return the output size ``(Ho, Wo)``.

    ``check_dtypes=False`` skips the dtype checks (under autocast the op's autocast kernel casts the
    tensors to one dtype before the kernels run, which check again).

    Raises:
        TypeError: an argument is not a tensor, or dtypes are mixed or unsupported.
        ValueError: a shape, size or hyper-parameter does not fit; the message names the
            argument, what was expected and what was given.
    """
    named = [('input', input), ('offset', offset), ('weight', weight)]
    named += [('mask', mask)] if mask is not None else []
    named += [('bias', bias)] if bias is not None else []
    for name, t in named:
        if not isinstance(t, torch.Tensor):
            raise TypeError(f'{name} must be a torch.Tensor, got {type(t).__name__}')
    for name, rank, t in (('input', 4, input), ('offset', 4, offset), ('weight', 4, weight),
                          ('mask', 4, mask), ('bias', 1, bias)):
        if t is not None and t.dim() != rank:
            raise ValueError(f'{name} must be a {rank}-D tensor, got shape {_shape(t)} ({t.dim()}-D)')
    dev = input.device
    for name, t in named[1:]:
        if t.device != dev:
            raise ValueError(f'{name} must be on the same device as input ({dev}), got {t.device}')
    allowed = _CUDA_DTYPES if dev.type == 'cuda' else _CPU_DTYPES
    if check_dtypes and input.dtype not in allowed:
        names = [str(d).replace('torch.', '') for d in allowed]
        raise TypeError(f'input dtype must be {", ".join(names[:-1])} or {names[-1]} on {dev.type}, '
                        f'got {input.dtype}')
    for name, t in named[1:]:
        if check_dtypes and t.dtype != input.dtype:
            raise TypeError(f'{name} dtype must match input dtype ({input.dtype}), got {t.dtype}')
    for name, vals, low in (('stride', stride, 1), ('dilation', dilation, 1), ('padding', padding, 0)):
        if len(vals) != 2 or any(v < low for v in vals):
            what = 'positive' if low == 1 else 'non-negative'
            raise ValueError(f'{name} must be a pair of {what} ints, got {tuple(vals)}')
    for name, v in (('groups', groups), ('deform_groups', deform_groups)):
        if isinstance(v, bool) or not isinstance(v, Integral) or v < 1:
            raise ValueError(f'{name} must be a positive int, got {v!r}')

    n, c, h, w = input.shape
    o, cpg, kh, kw = weight.shape
    if kh < 1 or kw < 1:
        raise ValueError(f'weight kernel size must be positive, got weight shape {_shape(weight)}')
    if c % groups != 0:
        raise ValueError(f'input channels ({c}) must be divisible by groups ({groups})')
    if o % groups != 0:
        raise ValueError(f'weight out channels ({o}) must be divisible by groups ({groups})')
    if cpg * groups != c:
        raise ValueError(f'weight must have input channels / groups = {c} / {groups} = {c // groups} '
                         f'channels in dim 1, got weight shape {_shape(weight)}')
    if c % deform_groups != 0:
        raise ValueError(f'input channels ({c}) must be divisible by deform_groups ({deform_groups})')
    eff_h = dilation[0] * (kh - 1) + 1
    eff_w = dilation[1] * (kw - 1) + 1
    ph, pw = h + 2 * padding[0], w + 2 * padding[1]
    if eff_h > ph or eff_w > pw:
        raise ValueError(f'the dilated kernel ({eff_h}x{eff_w}) is larger than the padded input '
                         f'({ph}x{pw}): input {_shape(input)}, weight {_shape(weight)}, '
                         f'padding {tuple(padding)}, dilation {tuple(dilation)}')
    ho = (ph - eff_h) // stride[0] + 1
    wo = (pw - eff_w) // stride[1] + 1
    exp_off = (n, 2 * deform_groups * kh * kw, ho, wo)
    if _shape(offset) != exp_off:
        raise ValueError(f'offset must have shape (N, 2*deform_groups*kh*kw, Ho, Wo) = {exp_off}, '
                         f'got {_shape(offset)}')
    if mask is not None:
        exp_mask = (n, deform_groups * kh * kw, ho, wo)
        if _shape(mask) != exp_mask:
            raise ValueError(f'mask must have shape (N, deform_groups*kh*kw, Ho, Wo) = {exp_mask}, '
                             f'got {_shape(mask)}')
    if bias is not None and _shape(bias) != (o,):
        raise ValueError(f'bias must have shape (out_channels,) = ({o},), got {_shape(bias)}')
    return ho, wo


def modulated_deform_conv2d(input: Tensor, offset: Tensor, mask: Optional[Tensor], weight: Tensor,
                            bias: Optional[Tensor] = None, stride: IntPair = 1, padding: IntPair = 0,
                            dilation: IntPair = 1, groups: int = 1, deform_groups: int = 1) -> Tensor:
    """Modulated deformable convolution (DCNv2); with ``mask=None``, deformable convolution (DCNv1).

    Argument order follows mmcv's ``modulated_deform_conv2d``.

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
    stride_, padding_, dilation_ = _pair(stride, 'stride'), _pair(padding, 'padding'), _pair(dilation, 'dilation')
    if not torch.compiler.is_compiling():  # when compiling, the fake kernel runs the same checks
        check_args(input, offset, mask, weight, bias, stride_, padding_, dilation_, groups, deform_groups,
                   check_dtypes=not _autocast_active(input))
    return torch.ops.dcn_plugin.modulated_deform_conv2d(input, offset, mask, weight, bias, stride_, padding_,
                                                        dilation_, groups, deform_groups)


def deform_conv2d(input: Tensor, offset: Tensor, weight: Tensor, bias: Optional[Tensor] = None,
                  stride: IntPair = 1, padding: IntPair = 0, dilation: IntPair = 1, groups: int = 1,
                  deform_groups: int = 1) -> Tensor:
    """Deformable convolution (DCNv1): :func:`modulated_deform_conv2d` without a mask.

    Argument order follows mmcv's ``deform_conv2d`` (offset before weight); shapes as there.
    """
    return modulated_deform_conv2d(input, offset, None, weight, bias, stride, padding, dilation, groups,
                                   deform_groups)


def _autocast_active(input: Tensor) -> bool:
    # Under autocast the tensors reach the kernels only after the op's autocast kernel has cast them,
    # so mixed dtypes here are legitimate; the kernels validate dtypes again after the casts.
    return (isinstance(input, torch.Tensor) and input.device.type in ('cpu', 'cuda')
            and torch.is_autocast_enabled(input.device.type))


# ----------------------------------------------------------------------------- fake (meta) kernels
@torch.library.register_fake(_OP)
def _fake_forward(input, offset, mask, weight, bias, stride, padding, dilation, groups, deform_groups):
    ho, wo = check_args(input, offset, mask, weight, bias, stride, padding, dilation, groups, deform_groups)
    return input.new_empty((input.shape[0], weight.shape[0], ho, wo))


@torch.library.register_fake('dcn_plugin::modulated_deform_conv2d_backward')
def _fake_backward(grad_output, input, offset, mask, weight, stride, padding, dilation, groups,
                   deform_groups, output_mask):
    check_args(input, offset, mask, weight, None, stride, padding, dilation, groups, deform_groups)
    want_in, want_off, want_mask, want_w, want_b = output_mask

    def empty():  # one fresh tensor per gradient not asked for (op outputs never alias)
        return input.new_empty((0,))

    def like(t, layout=torch.channels_last):  # the kernels produce these gradients channels-last
        return torch.empty(t.shape, dtype=t.dtype, device=t.device, memory_format=layout)

    # the weight gradient follows the kernels' column order: the weight's own layout on CPU
    # (channel-major columns), channels-last on CUDA
    w_layout = torch.contiguous_format if weight.device.type == 'cpu' else torch.channels_last
    return (like(input) if want_in else empty(),
            like(offset) if want_off else empty(),
            like(mask) if (want_mask and mask is not None) else empty(),
            like(weight, w_layout) if want_w else empty(),
            weight.new_empty((weight.shape[0],)) if want_b else empty())


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
