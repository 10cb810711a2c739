"""Necks with deformable convolutions (registered in mmdet's ``MODELS``)."""
from .dcn_fpn import DCNFPN

__all__ = ['DCNFPN']
