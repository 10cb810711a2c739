"""mmdet models with deformable convolutions; importing this module registers them.

Registered in mmdet's ``MODELS``: ``DCNResNet``, ``DCNResNeXt`` (backbones), ``DCNFPN`` (neck).
Registered in mmengine's root ``MODELS`` (where mmcv's ``build_norm_layer`` looks, so every
OpenMMLab scope sees them): ``SampleLN``, ``ChannelLN`` (norm layers).
"""
from . import layers  # noqa: F401  (norm layers first: the backbones check norm configs against them)
from .backbones import DCNResNet, DCNResNeXt
from .layers import ChannelLayerNorm2d, SampleLayerNorm2d
from .necks import DCNFPN
from .roi_heads import MimicFasterRCNN, MimicRoIHead  # noqa: F401  (R-CNN feature mimicking)

__all__ = ['DCNResNet', 'DCNResNeXt', 'DCNFPN', 'SampleLayerNorm2d', 'ChannelLayerNorm2d']
