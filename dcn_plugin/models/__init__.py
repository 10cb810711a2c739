"""mmdet models with deformable convolutions; importing this module registers them.

Registered in mmdet's ``MODELS``: ``DCNResNet``, ``DCNResNeXt`` (backbones), ``DCNFPN`` (neck),
``DeformRoIExtractor`` (RoI extractor building the deformable RoI pooling layers by name),
``MimicFasterRCNN`` and ``MimicRoIHead`` (R-CNN feature mimicking, a training-only branch).
Registered in mmengine's root ``MODELS`` (where mmcv's ``build_norm_layer`` looks, so every
OpenMMLab scope sees them): ``SampleLN``, ``ChannelLN`` (norm layers).
"""
from . import layers  # noqa: F401  (norm layers first: the backbones check norm configs against them)
from .backbones import DCNResNet, DCNResNeXt
from .layers import ChannelLayerNorm2d, SampleLayerNorm2d
from .necks import DCNFPN
from .roi_extractors import DeformRoIExtractor
from .roi_heads import MimicFasterRCNN, MimicRoIHead

__all__ = ['DCNResNet', 'DCNResNeXt', 'DCNFPN', 'SampleLayerNorm2d', 'ChannelLayerNorm2d', 'DeformRoIExtractor',
           'MimicFasterRCNN', 'MimicRoIHead']
