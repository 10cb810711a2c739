"""Validation of ``dcn`` configs and the ``build_conv_layer`` configs of the deformable convs they describe."""
from typing import Any, Dict, Optional, Tuple, Type, Union

from torch import nn

from ...ops import DeformConv2dPack, ModulatedDeformConv2dPack

#: Accepted ``dcn['type']`` values -> the layer class. mmcv's names (``'DCNv2'``, ``'DCN'``) are
#: accepted so configs written for mmdet's ResNet work unchanged; they build *our* layers (same maths,
#: same parameter names), not mmcv's.
DCN_TYPES: Dict[str, Type[nn.Module]] = {
    'MDConv': ModulatedDeformConv2dPack,
    'DCNv2': ModulatedDeformConv2dPack,
    'DConv': DeformConv2dPack,
    'DCN': DeformConv2dPack,
}
DCN_LAYERS: Tuple[Type[nn.Module], ...] = (ModulatedDeformConv2dPack, DeformConv2dPack)
_CANONICAL = {ModulatedDeformConv2dPack: 'MDConv', DeformConv2dPack: 'DConv'}
_RESERVED = ('in_channels', 'out_channels', 'kernel_size', 'stride', 'padding', 'dilation', 'groups',
             'bias')


def resolve_dcn_cfg(dcn: Optional[Dict[str, Any]], arg: str = 'dcn') -> Optional[Dict[str, Any]]:
    """Check a ``dcn`` config and return a normalised copy (or ``None`` for ``None``).

    Args:
        dcn: ``None`` or a dict with

            - ``type``: ``'MDConv'`` (DCNv2, modulated) or ``'DConv'`` (DCNv1); mmcv's ``'DCNv2'`` and
              ``'DCN'`` mean the same, and the classes themselves are accepted too.
            - ``deform_groups`` (int, default 1): offset groups; must divide the layer's input channels.
            - ``fallback_on_stride`` (bool, default False): use a regular conv where the conv's stride
              is larger than 1.
        arg: the argument's name, for error messages.

    Returns:
        ``dict(type=<'MDConv' | 'DConv'>, deform_groups=int, fallback_on_stride=bool)``, a new dict.

    Raises:
        TypeError: ``dcn`` is not a dict or ``None``.
        ValueError: unknown ``type`` or unexpected keys (``deform_groups`` is checked by the layer).
    """
    if dcn is None:
        return None
    if not isinstance(dcn, dict):
        raise TypeError(f'{arg} must be None or a dict like dict(type=\'MDConv\', deform_groups=1), '
                        f'got {type(dcn).__name__}: {dcn!r}')
    cfg = dict(dcn)
    layer_type = cfg.pop('type', 'MDConv')
    if isinstance(layer_type, type) and layer_type in _CANONICAL:
        layer_type = _CANONICAL[layer_type]
    if not isinstance(layer_type, str) or layer_type not in DCN_TYPES:
        raise ValueError(f"{arg}['type'] must be one of {sorted(DCN_TYPES)} ('MDConv'/'DCNv2': DCNv2, "
                         f"'DConv'/'DCN': DCNv1), got {layer_type!r}")
    deform_groups = cfg.pop('deform_groups', 1)  # the layer checks it, by the operator's rule
    fallback = cfg.pop('fallback_on_stride', False)
    if not isinstance(fallback, bool):
        raise ValueError(f"{arg}['fallback_on_stride'] must be a bool, got {fallback!r}")
    bad = [k for k in cfg if k in _RESERVED]
    if bad:
        raise ValueError(f'{arg} must not set {bad}: the layer geometry comes from the network')
    if cfg:
        raise ValueError(f"{arg} has unexpected keys {sorted(cfg)}; accepted: 'type', 'deform_groups', "
                         f"'fallback_on_stride'")
    return dict(type=_CANONICAL[DCN_TYPES[layer_type]], deform_groups=deform_groups,
                fallback_on_stride=fallback)


def layer_cfg(dcn: Dict[str, Any], stride: Union[int, Tuple[int, int]] = 1) -> Optional[Dict[str, Any]]:
    """The ``build_conv_layer`` config of one conv from a resolved ``dcn`` config.

    Returns ``None`` (a regular conv) where ``fallback_on_stride`` applies to ``stride``, else a dict
    whose ``type`` is the layer class itself (so no registry scope can change what it builds).
    """
    strided = any(s > 1 for s in (stride if isinstance(stride, tuple) else (stride,)))
    if dcn.get('fallback_on_stride', False) and strided:
        return None
    cfg = {k: v for k, v in dcn.items() if k not in ('type', 'fallback_on_stride')}
    cfg['type'] = DCN_TYPES[dcn['type']]
    return cfg
