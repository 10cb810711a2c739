"""``nn.Module`` wrappers of the deformable convolution operators.

Constructor arguments and parameter names are mmcv's (``weight``, ``bias``, ``conv_offset.*``), so
mmcv / mmdet DCN checkpoints load unchanged. ``ModulatedDeformConv2dPack`` and ``DeformConv2dPack``
are registered in mmengine's ``MODELS`` as ``'MDConv'`` (DCNv2) and ``'DConv'`` (DCNv1) when mmengine
is installed, so ``build_conv_layer(dict(type='MDConv'), ...)`` and mmdet's
``ResNet(dcn=dict(type='MDConv', deform_groups=1, fallback_on_stride=False), ...)`` use them.
"""
import importlib.util
import math
import sys
import warnings
from typing import Optional, Tuple, Union

import torch
from torch import Tensor, nn

from .functional import check_im2col_step, modulated_deform_conv2d
from .pair import IntPair, to_pair


def _caller_stacklevel() -> int:
    """``stacklevel`` for a warning raised in this file that points at the first frame outside it
    (the user's constructor call, through any number of subclass ``__init__``)."""
    level, frame = 1, sys._getframe(1)
    while frame is not None and frame.f_code.co_filename == __file__:
        frame, level = frame.f_back, level + 1
    return level


class ModulatedDeformConv2d(nn.Module):
    """Modulated deformable convolution (DCNv2) with externally supplied offset and mask.

    Args:
        in_channels, out_channels: ``C`` and ``O``.
        kernel_size, stride, padding, dilation: an int or a pair ``(h, w)``.
        groups: convolution groups. deform_groups: offset/mask groups.
        bias: whether to learn a bias (``bias`` parameter of shape ``(O,)``).
        deformable_groups: mmcv's deprecated name of ``deform_groups``, accepted with mmcv's
            ``DeprecationWarning`` (keyword only).

    The arguments are checked when the layer is built (a TypeError / ValueError naming the argument;
    the geometry by the operator's own validator), as are those of every subclass.

    Forward ``(x, offset, mask)``: ``x (N, C, H, W)``, ``offset (N, 2*dg*kh*kw, Ho, Wo)``,
    ``mask (N, dg*kh*kw, Ho, Wo)`` or ``None`` -> ``(N, O, Ho, Wo)``. The modules script
    (``torch.jit.script``) and export to ONNX's ``DeformConv`` (:mod:`dcn_plugin.deploy`).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: IntPair, stride: IntPair = 1,
                 padding: IntPair = 0, dilation: IntPair = 1, groups: int = 1, deform_groups: int = 1,
                 bias: Union[bool, str] = True, *, deformable_groups: Optional[int] = None):
        super().__init__()
        if deformable_groups is not None:
            if deform_groups not in (1, deformable_groups):
                raise TypeError(f'{type(self).__name__}: pass deform_groups or its deprecated alias '
                                f'deformable_groups, not both (got deform_groups={deform_groups!r}, '
                                f'deformable_groups={deformable_groups!r})')
            warnings.warn(f'"deformable_groups" is deprecated in `{type(self).__name__}.__init__`, please use '
                          '"deform_groups" instead', DeprecationWarning, stacklevel=_caller_stacklevel())
            deform_groups = deformable_groups
        # the layer's own shapes (as torchvision's DeformConv2d checks them); every rule of the operator,
        # deform_groups included, is the operator's validator's (_check_geometry)
        for name, v in (('in_channels', in_channels), ('out_channels', out_channels), ('groups', groups)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f'{name} must be a positive int, got {v!r}')
        if in_channels % groups or out_channels % groups:
            raise ValueError(f'in_channels ({in_channels}) and out_channels ({out_channels}) must be '
                             f'divisible by groups ({groups})')
        if isinstance(deform_groups, bool) or not isinstance(deform_groups, int):
            raise TypeError(f'deform_groups must be an int, got {deform_groups!r}')
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = tuple(to_pair(kernel_size, 'kernel_size'))
        self.stride = tuple(to_pair(stride, 'stride'))
        self.padding = tuple(to_pair(padding, 'padding'))
        self.dilation = tuple(to_pair(dilation, 'dilation'))
        self.groups = groups
        self.deform_groups = deform_groups
        self._check_geometry()
        # mmcv compatibility: these exist on mmcv's modules and some code reads them
        self.transposed = False
        self.output_padding = (0, 0)
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels // groups, *self.kernel_size))
        if bias:
            self.bias = nn.Parameter(torch.empty(out_channels))
        else:
            self.register_parameter('bias', None)
        self.init_weights()

    def _check_geometry(self) -> None:
        """Refuse a bad ``kernel_size``, ``stride``, ``padding`` or ``dilation`` when the layer is built, not
        at its first forward: the operator's validator (its Meta kernel) checks them on meta tensors of a
        size the layer accepts, so the rule and the message are the operator's."""
        kh, kw = self.kernel_size
        if kh < 1 or kw < 1:
            raise ValueError(f'kernel_size must be a pair of positive ints, got {self.kernel_size}')
        (sh, sw), (ph, pw), (dh, dw) = self.stride, self.padding, self.dilation
        h, w = (kh - 1) * max(dh, 1) + 1, (kw - 1) * max(dw, 1) + 1  # the dilated kernel fits exactly
        ho = max((h + 2 * ph - h) // sh + 1, 1) if sh >= 1 else 1
        wo = max((w + 2 * pw - w) // sw + 1, 1) if sw >= 1 else 1
        points = max(self.deform_groups, 0) * kh * kw
        meta = dict(device='meta', dtype=torch.float32)
        torch.ops.dcn_plugin.modulated_deform_conv2d(
            torch.empty(1, self.in_channels, h, w, **meta), torch.empty(1, 2 * points, ho, wo, **meta),
            torch.empty(1, points, ho, wo, **meta),
            torch.empty(self.out_channels, self.in_channels // self.groups, kh, kw, **meta), None,
            list(self.stride), list(self.padding), list(self.dilation), self.groups, self.deform_groups)

    def init_weights(self) -> None:
        """mmcv's initialisation: ``U(-1/sqrt(n), 1/sqrt(n))`` with ``n = C * kh * kw``, zero bias;
        a ``conv_offset`` (Pack variants) is zeroed, so a fresh layer samples the regular grid."""
        n = self.in_channels * math.prod(self.kernel_size)
        stdv = 1.0 / math.sqrt(n)
        with torch.no_grad():
            self.weight.uniform_(-stdv, stdv)
            if self.bias is not None:
                self.bias.zero_()
        self.init_offset()

    def init_offset(self) -> None:
        """Zero the Pack variants' ``conv_offset`` (mmcv's ``DeformConv2dPack.init_offset``): the layer
        then samples the regular grid (DCNv2: with mask 0.5). No-op without ``conv_offset``."""
        conv_offset = getattr(self, 'conv_offset', None)
        if conv_offset is not None:
            nn.init.zeros_(conv_offset.weight)
            nn.init.zeros_(conv_offset.bias)

    def _add_conv_offset(self, values_per_point: int) -> None:
        """Give the layer its offset (and mask) predictor: a conv with this layer's geometry and
        ``values_per_point * deform_groups * kh * kw`` outputs, zero-initialised."""
        self.conv_offset = nn.Conv2d(self.in_channels,
                                     self.deform_groups * values_per_point * math.prod(self.kernel_size),
                                     kernel_size=self.kernel_size, stride=self.stride, padding=self.padding,
                                     dilation=self.dilation, bias=True)
        self.init_weights()

    def forward(self, x: Tensor, offset: Tensor, mask: Optional[Tensor]) -> Tensor:
        return modulated_deform_conv2d(x, offset, mask, self.weight, self.bias, self.stride, self.padding,
                                       self.dilation, self.groups, self.deform_groups)

    def extra_repr(self) -> str:
        s = (f'{self.in_channels}, {self.out_channels}, kernel_size={tuple(self.kernel_size)}, '
             f'stride={tuple(self.stride)}, padding={tuple(self.padding)}, dilation={tuple(self.dilation)}')
        if self.groups != 1:
            s += f', groups={self.groups}'
        if self.deform_groups != 1:
            s += f', deform_groups={self.deform_groups}'
        if self.bias is None:
            s += ', bias=False'
        return s


class ModulatedDeformConv2dPack(ModulatedDeformConv2d):
    """DCNv2 that predicts its own offsets and mask (mmcv's ``ModulatedDeformConv2dPack``).

    ``conv_offset`` is a plain conv with the layer's kernel, stride, padding and dilation and
    ``3 * deform_groups * kh * kw`` outputs, split in thirds ``(o1, o2, m)``:
    ``offset = cat(o1, o2)``, ``mask = sigmoid(m)``. ``init_weights()`` zeroes it, so a fresh layer
    starts as a regular convolution (mask 0.5). Registered as ``'MDConv'``.
    """

    _version = 2

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._add_conv_offset(3)  # (dy, dx, mask) per kernel point

    def offset_and_mask(self, x: Tensor) -> Tuple[Tensor, Optional[Tensor]]:
        """The offsets and mask this layer samples ``x`` with (what :meth:`forward` uses).

        ``conv_offset(x)`` split in thirds ``(o1, o2, m)``: ``offset = cat(o1, o2)``
        ``(N, 2*dg*kh*kw, Ho, Wo)``, ``mask = sigmoid(m)`` ``(N, dg*kh*kw, Ho, Wo)``.
        """
        out = self.conv_offset(x)
        o1, o2, m = torch.chunk(out, 3, dim=1)
        return torch.cat((o1, o2), dim=1), torch.sigmoid(m)

    def forward(self, x: Tensor) -> Tensor:  # type: ignore[override]
        offset, mask = self.offset_and_mask(x)
        return modulated_deform_conv2d(x, offset, mask, self.weight, self.bias, self.stride, self.padding,
                                       self.dilation, self.groups, self.deform_groups)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs):
        # mmcv < 1.0 (version < 2) named the offset conv "conv_offset_mask"; accept those checkpoints.
        version = local_metadata.get('version', None)
        if version is None or version < 2:
            for suffix in ('weight', 'bias'):
                old = prefix + 'conv_offset_mask.' + suffix
                new = prefix + 'conv_offset.' + suffix
                if new not in state_dict and old in state_dict:
                    state_dict[new] = state_dict.pop(old)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)


class DeformConv2d(ModulatedDeformConv2d):
    """Deformable convolution (DCNv1) with externally supplied offset (mmcv's ``DeformConv2d``).

    mmcv's arguments in mmcv's order, ``deformable_groups`` included (deprecated, with mmcv's warning):

    - ``bias`` defaults to ``False``, as in mmcv, whose ``DeformConv2d`` refuses ``bias=True``
      (AssertionError). Here ``bias=True`` adds a learned ``bias`` ``(O,)`` (zero-initialised), which
      the operator supports; mmcv checkpoints, which never have one, load unchanged.
    - ``im2col_step`` is accepted and kept as an attribute, but has no effect: mmcv's CUDA kernel
      processed the batch in chunks of that many images (and required the batch size to be divisible
      by it); these kernels choose their own chunking and take any batch size.

    Forward ``(x, offset)``: ``x (N, C, H, W)``, ``offset (N, 2*dg*kh*kw, Ho, Wo)`` -> ``(N, O, Ho, Wo)``.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: IntPair, stride: IntPair = 1,
                 padding: IntPair = 0, dilation: IntPair = 1, groups: int = 1, deform_groups: int = 1,
                 bias: bool = False, im2col_step: int = 32, *, deformable_groups: Optional[int] = None):
        check_im2col_step(im2col_step)
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation, groups,
                         deform_groups, bias, deformable_groups=deformable_groups)
        self.im2col_step = im2col_step

    def forward(self, x: Tensor, offset: Tensor) -> Tensor:  # type: ignore[override]
        return modulated_deform_conv2d(x, offset, None, self.weight, self.bias, self.stride, self.padding,
                                       self.dilation, self.groups, self.deform_groups)


class DeformConv2dPack(DeformConv2d):
    """DCNv1 that predicts its own offsets (mmcv's ``DeformConv2dPack``); registered as ``'DConv'``.

    ``conv_offset`` has ``2 * deform_groups * kh * kw`` outputs and is zeroed by ``init_weights()``.
    """

    _version = 2

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._add_conv_offset(2)  # (dy, dx) per kernel point

    def offset_and_mask(self, x: Tensor) -> Tuple[Tensor, Optional[Tensor]]:
        """The offsets ``conv_offset(x)`` ``(N, 2*dg*kh*kw, Ho, Wo)`` this layer samples ``x`` with, and
        ``None``: DCNv1 has no mask (the signature of :meth:`ModulatedDeformConv2dPack.offset_and_mask`)."""
        return self.conv_offset(x), None

    def forward(self, x: Tensor) -> Tensor:  # type: ignore[override]
        offset, mask = self.offset_and_mask(x)
        return modulated_deform_conv2d(x, offset, mask, self.weight, self.bias, self.stride, self.padding,
                                       self.dilation, self.groups, self.deform_groups)


def _register_in_mmengine() -> None:
    from mmengine.registry import MODELS
    MODELS.register_module('MDConv', module=ModulatedDeformConv2dPack)
    MODELS.register_module('DConv', module=DeformConv2dPack)


if importlib.util.find_spec('mmengine') is not None:
    _register_in_mmengine()
