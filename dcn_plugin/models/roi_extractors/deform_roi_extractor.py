"""An mmdet RoI extractor that builds this plugin's deformable RoI pooling layers by name."""
from typing import List, Optional, Tuple

import torch
from mmcv import ops as mmcv_ops
from mmdet.models.roi_heads.roi_extractors import SingleRoIExtractor
from mmdet.registry import MODELS
from mmdet.utils import ConfigType, OptMultiConfig
from torch import Tensor, nn

from ...ops.roi_pool_modules import DeformRoIPool, DeformRoIPoolPack, LearnedOffsetRoIPool, ModulatedDeformRoIPoolPack
from ..layers.init import init_then_reset_then_pretrained

# The RoI layers a config reaches by name; any other name is looked up in mmcv.ops (RoIAlign, ...) as
# mmdet's extractors do.
ROI_LAYERS = {
    'DeformRoIPool': DeformRoIPool,
    'DeformRoIPoolPack': DeformRoIPoolPack,
    'ModulatedDeformRoIPoolPack': ModulatedDeformRoIPoolPack,
}


@MODELS.register_module()
class DeformRoIExtractor(SingleRoIExtractor):
    """mmdet's ``SingleRoIExtractor`` whose ``roi_layer`` may be this plugin's deformable RoI pooling.

    mmdet's extractors look ``roi_layer.type`` up in ``mmcv.ops``, where ``'DeformRoIPoolPack'`` and
    ``'ModulatedDeformRoIPoolPack'`` are mmcv's CUDA-only layers. This one resolves those names (and
    ``'DeformRoIPool'``) to :mod:`dcn_plugin.ops`' layers (CPU and CUDA, same arguments, same state-dict
    keys) and any other name (``'RoIAlign'``, ...) in ``mmcv.ops`` as before; a class is accepted too.
    Every argument of ``SingleRoIExtractor`` keeps its meaning, and so does the level mapping.

    Args:
        roi_layer (dict): the RoI layer, e.g. ``dict(type='ModulatedDeformRoIPoolPack', output_size=7,
            output_channels=256)``; ``spatial_scale`` is set per level from ``featmap_strides``.
        out_channels (int): channels of the RoI features.
        featmap_strides (list[int]): strides of the input feature maps.
        finest_scale (int): scale threshold of level 0 (mmdet's FPN rule). Default 56.
        share_offset_branch (bool): for the learned-offset layers (``DeformRoIPoolPack``,
            ``ModulatedDeformRoIPoolPack``): one offset (and mask) branch for all levels, as in the
            DCNv2 paper, instead of one per level (mmdet's layout). The branch is the module
            ``offset_branch`` (a layer of ``roi_layer``'s type whose ``predict`` is used), the per-level
            ``roi_layers`` are plain ``DeformRoIPool`` s; the branch runs once on the RoIs of all
            levels. Default False.
        init_cfg (dict, optional): as mmdet's; the RoI layers' branches are zero-initialised after it
            (their own ``init_weights``), a ``Pretrained`` entry is applied last.

    State dict: with ``share_offset_branch=False`` it is mmdet's (``roi_layers.{i}.offset_fc.*``,
    ``roi_layers.{i}.mask_fc.*``), so mmdet mdpool / dpool checkpoints load strictly; with True,
    ``offset_branch.offset_fc.*`` (and ``mask_fc`` or ``offset_mask_fc``) once.
    """

    def __init__(self,
                 roi_layer: ConfigType,
                 out_channels: int,
                 featmap_strides: List[int],
                 finest_scale: int = 56,
                 share_offset_branch: bool = False,
                 init_cfg: OptMultiConfig = None) -> None:
        if not isinstance(share_offset_branch, bool):
            raise TypeError(f'share_offset_branch must be a bool, got {share_offset_branch!r}')
        self.share_offset_branch = share_offset_branch  # read by build_roi_layers (called by the base)
        super().__init__(roi_layer=roi_layer, out_channels=out_channels, featmap_strides=featmap_strides,
                         finest_scale=finest_scale, init_cfg=init_cfg)

    def build_roi_layers(self, layer_cfg: ConfigType, featmap_strides: List[int]) -> nn.ModuleList:
        cfg = dict(layer_cfg)
        layer_type = cfg.pop('type', None)
        if isinstance(layer_type, str):
            layer_cls = ROI_LAYERS.get(layer_type) or getattr(mmcv_ops, layer_type, None)
            if layer_cls is None:
                raise KeyError(f'roi_layer type {layer_type!r} is neither one of {sorted(ROI_LAYERS)} nor a '
                               'layer of mmcv.ops (e.g. RoIAlign)')
        elif isinstance(layer_type, type) and issubclass(layer_type, nn.Module):
            layer_cls = layer_type
        else:
            raise TypeError(f'roi_layer type must be a layer name or an nn.Module class, got {layer_type!r}')
        if 'spatial_scale' in cfg:
            raise ValueError('roi_layer must not set spatial_scale: each level gets 1 / its featmap_stride')
        if not self.share_offset_branch:
            return nn.ModuleList([layer_cls(spatial_scale=1 / s, **cfg) for s in featmap_strides])
        if not (isinstance(layer_cls, type) and issubclass(layer_cls, LearnedOffsetRoIPool)):
            raise ValueError('share_offset_branch=True needs a roi_layer that learns its offsets '
                             f'(DeformRoIPoolPack or ModulatedDeformRoIPoolPack), got {layer_cls.__name__}')
        self.offset_branch = layer_cls(**cfg)
        b = self.offset_branch
        return nn.ModuleList([DeformRoIPool(b.output_size, 1 / s, b.sampling_ratio, b.gamma)
                              for s in featmap_strides])

    def init_weights(self) -> None:
        """mmdet's init (``init_cfg``), then the branches' own init (last layers zero: RoIAlign, mask
        0.5), then the ``Pretrained`` entries of ``init_cfg``."""
        init_then_reset_then_pretrained(self, super().init_weights, self._init_branches)

    def _init_branches(self) -> None:
        for m in self.modules():
            if isinstance(m, LearnedOffsetRoIPool):
                m.init_weights()

    def forward(self, feats: Tuple[Tensor], rois: Tensor, roi_scale_factor: Optional[float] = None) -> Tensor:
        """RoI features ``(K, out_channels, PH, PW)`` of ``rois (K, 5)`` from the FPN levels ``feats``."""
        if not self.share_offset_branch:
            return super().forward(feats, rois, roi_scale_factor)
        rois = rois.type_as(feats[0])
        num_levels = len(feats)
        if num_levels > 1:
            levels = self.map_roi_levels(rois, num_levels)
        else:
            levels = rois.new_zeros(len(rois), dtype=torch.long)
        if roi_scale_factor is not None:
            rois = self.roi_rescale(rois, roi_scale_factor)
        per_level = [(i, (levels == i).nonzero(as_tuple=False).squeeze(1)) for i in range(num_levels)]
        # both poolings read each map as channels-last rows: lay them out so once
        maps = [f.contiguous(memory_format=torch.channels_last) if len(inds) else f
                for f, (_, inds) in zip(feats, per_level)]

        def pool(offset: Optional[Tensor]) -> Tensor:
            out = feats[0].new_zeros(rois.size(0), self.out_channels, *self.offset_branch.output_size)
            for i, inds in per_level:
                if inds.numel() > 0:
                    out[inds] = self.roi_layers[i](maps[i], rois[inds], None if offset is None else offset[inds])
            return out

        out = self.offset_branch.pool_with_learned_offsets(pool)
        # levels without RoIs stay in the graph (distributed training expects every input used), as mmdet does
        for i, inds in per_level:
            if inds.numel() == 0:
                out = out + feats[i].sum() * 0.
        return out
