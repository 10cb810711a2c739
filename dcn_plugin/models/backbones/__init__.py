"""Backbones with deformable convolutions (registered in mmdet's ``MODELS``)."""
from .dcn_resnet import DCNBasicBlock, DCNBottleneck, DCNResNet, DCNResNeXt, DCNResNeXtBottleneck

__all__ = ['DCNResNet', 'DCNResNeXt', 'DCNBasicBlock', 'DCNBottleneck', 'DCNResNeXtBottleneck']
