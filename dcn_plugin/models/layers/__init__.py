"""Building blocks: LayerNorm forms for conv features, ``dcn`` config handling."""
from .dcn import DCN_TYPES, layer_cfg, resolve_dcn_cfg
from .norm import NORM_LAYERS, ChannelLayerNorm2d, SampleLayerNorm2d, check_norm_cfg

__all__ = ['SampleLayerNorm2d', 'ChannelLayerNorm2d', 'NORM_LAYERS', 'check_norm_cfg', 'DCN_TYPES',
           'resolve_dcn_cfg', 'layer_cfg']
