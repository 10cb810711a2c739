"""Layer normalisations for convolutional feature maps ``(N, C, *spatial)``.

mmcv's ``'LN'`` is ``nn.LayerNorm(C)``, which normalises over the *last* axis: on an NCHW map that is
the width, not the channels, so it cannot be used as ``norm_cfg`` of a conv network. The two layers
here are the two LayerNorm forms used for conv features. Both are registered in mmengine's root
``MODELS`` (where mmcv's ``build_norm_layer`` looks), under names that no OpenMMLab library uses, so
``norm_cfg=dict(type='SampleLN')`` / ``dict(type='ChannelLN')`` works in every backbone, neck and
head built with mmcv's ``build_norm_layer``; mmcv's ``'LN'`` is left as it is.

Both need nothing but the number of channels (``eps`` defaults to 1e-5, as mmcv's
``build_norm_layer`` sets it; ``affine`` to ``True``), have per-channel affine parameters
``weight`` and ``bias`` of shape ``(C,)`` and take the layer-name abbreviation ``'ln'`` (``ln1``,
``ln2``, ... in state dicts).
"""
import importlib.util
import inspect
from typing import Any, Dict, Optional

import torch.nn.functional as F
from torch import Tensor, nn


class SampleLayerNorm2d(nn.GroupNorm):
    """LayerNorm over ``(C, H, W)`` of each sample, per-channel affine; registered as ``'SampleLN'``.

    ``y[n, c] = (x[n, c] - mean(x[n])) / sqrt(var(x[n]) + eps) * weight[c] + bias[c]``, the mean and
    (biased) variance taken over all channels and positions of sample ``n``. This is exactly
    ``nn.GroupNorm(1, C)`` (and it is one: a subclass, so mmcv's ``is_norm`` and mmengine's
    ``norm_decay_mult`` treat it as a norm layer, and mmdet's ``Constant`` init for ``'GroupNorm'``
    reaches it). It does not depend on the batch size.

    Config: ``dict(type='SampleLN', eps=1e-5, affine=True, requires_grad=True)``; only ``type`` is
    needed.

    Args:
        num_channels: ``C``.
        eps: added to the variance.
        affine: learn ``weight`` (init 1) and ``bias`` (init 0), each of shape ``(C,)``.

    Shape: ``(N, C, *)`` -> same.
    """

    _abbr_ = 'ln'

    def __init__(self, num_channels: int, eps: float = 1e-5, affine: bool = True) -> None:
        super().__init__(1, num_channels, eps=eps, affine=affine)


class ChannelLayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels at each position (as in ConvNeXt); registered as ``'ChannelLN'``.

    ``y[n, :, h, w] = (x[n, :, h, w] - mean) / sqrt(var + eps) * weight + bias``, the mean and
    (biased) variance taken over the ``C`` channels of each position ``(n, h, w)``. A subclass of
    ``nn.LayerNorm(C)`` applied with the channel axis moved last, so norm-aware tools recognise it.
    The output keeps the input's memory format (NCHW in, NCHW out; channels_last in, channels_last
    out).

    Config ``dict(type='ChannelLN', eps=1e-5, affine=True, requires_grad=True)``; arguments and shapes as
    :class:`SampleLayerNorm2d`.
    """

    _abbr_ = 'ln'

    def __init__(self, num_channels: int, eps: float = 1e-5, affine: bool = True) -> None:
        super().__init__(num_channels, eps=eps, elementwise_affine=affine)

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() < 2 or x.shape[1] != self.normalized_shape[0]:
            raise ValueError(f'{type(self).__name__}: input must have shape (N, C, *) with '
                             f'C = {self.normalized_shape[0]}, got {tuple(x.shape)}')
        y = F.layer_norm(x.movedim(1, -1), self.normalized_shape, self.weight, self.bias, self.eps)
        y = y.movedim(-1, 1)
        # NCHW input: return a standard contiguous tensor rather than a permuted view.
        return y.contiguous() if x.is_contiguous() else y

    def extra_repr(self) -> str:
        return f'{self.normalized_shape[0]}, eps={self.eps}, affine={self.elementwise_affine}'


def check_norm_cfg(cfg: Optional[Dict[str, Any]], arg: str = 'norm_cfg', allow_none: bool = False) -> None:
    """Check that ``cfg`` builds a norm layer for conv features; raise an error naming ``arg`` if not.

    Accepts any registered norm layer (``'BN'``, ``'SyncBN'``, ``'GN'`` with ``num_groups``,
    ``'SampleLN'``, ``'ChannelLN'``, ...); refuses mmcv's ``'LN'`` (``nn.LayerNorm`` over the last
    axis, i.e. the width of an NCHW map) with a pointer to the two LayerNorm forms.
    """
    if cfg is None:
        if allow_none:
            return
        raise TypeError(f"{arg} must be a dict like dict(type='BN'), got None")
    if not isinstance(cfg, dict) or 'type' not in cfg:
        raise TypeError(f"{arg} must be a dict with a 'type' key, like dict(type='BN'), got {cfg!r}")
    layer_type = cfg['type']
    if inspect.isclass(layer_type):
        cls = layer_type
    else:
        from mmengine.registry import MODELS
        with MODELS.switch_scope_and_registry(None) as registry:
            cls = registry.get(layer_type)
        if cls is None:
            raise ValueError(f"{arg}['type'] = {layer_type!r} is not a registered norm layer; use 'BN', "
                             f"'SyncBN', 'GN' (with num_groups), 'SampleLN' or 'ChannelLN'")
    if cls is nn.LayerNorm:
        raise ValueError(f"{arg}['type'] = {layer_type!r} is nn.LayerNorm, which normalises the last axis "
                         f"(the width of an NCHW feature map); use 'SampleLN' (statistics over C, H, W "
                         f"of each sample) or 'ChannelLN' (over C at each position)")
    if cls is nn.GroupNorm and 'num_groups' not in cfg:
        raise ValueError(f"{arg} of type {layer_type!r} needs 'num_groups', e.g. "
                         f"dict(type='GN', num_groups=32)")


#: Registered name -> class, as registered in mmengine's root ``MODELS``.
NORM_LAYERS = {'SampleLN': SampleLayerNorm2d, 'ChannelLN': ChannelLayerNorm2d}


def _register() -> None:
    from mmengine.registry import MODELS
    for name, cls in NORM_LAYERS.items():
        existing = MODELS.get(name) if name in MODELS.module_dict else None
        if existing is not None and not existing.__module__.startswith('dcn_plugin.'):
            raise KeyError(f'dcn_plugin: the norm layer name {name!r} is already registered in '
                           f"mmengine's MODELS by {existing.__module__}.{existing.__qualname__}")
        MODELS.register_module(name, module=cls, force=True)


if importlib.util.find_spec('mmengine') is not None:
    _register()
