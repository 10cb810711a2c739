"""ResNet / ResNeXt backbones with deformable 3x3 convolutions (DCNv2 by default) in chosen stages.

Subclasses of mmdet's ``ResNet`` / ``ResNeXt``: same arguments, same module tree, so their state dicts
are those of mmdet's models built with an mmcv DCN of the same settings, and official mmdet DCN
checkpoints (``dcn=dict(type='DCNv2', ...)``) load strictly and give the same features.
"""
from numbers import Integral
from typing import Any, Dict, List, Optional, Sequence, Type, Union

from mmcv.cnn import build_conv_layer, build_norm_layer
from mmdet.models.backbones.resnet import BasicBlock, Bottleneck, ResNet
from mmdet.models.backbones.resnext import Bottleneck as ResNeXtBottleneck
from mmdet.registry import MODELS
from mmdet.utils import ConfigType, OptConfigType, OptMultiConfig
from mmengine.model import Sequential
from torch import nn

from ..layers.dcn import layer_cfg, resolve_dcn_cfg
from ..layers.norm import check_norm_cfg

_DEFAULT_DCN: ConfigType = dict(type='MDConv', deform_groups=1, fallback_on_stride=False)


def _check_block_dcn(dcn: OptConfigType, conv_cfg: OptConfigType) -> OptConfigType:
    dcn = resolve_dcn_cfg(dcn, 'dcn')
    if dcn is not None and conv_cfg is not None:
        raise ValueError(f'conv_cfg must be None in a deformable block (the deformable convs are set by dcn), '
                         f'got conv_cfg={conv_cfg!r}')
    return dcn


class DCNBasicBlock(BasicBlock):
    """mmdet's ``BasicBlock`` whose two 3x3 convs are deformable when ``dcn`` is given.

    mmdet's BasicBlock refuses ``dcn``; here ``conv1`` (stride and dilation of the block) and ``conv2``
    are built from ``dcn`` (``fallback_on_stride`` keeps a strided ``conv1`` regular). Without ``dcn``
    it is mmdet's BasicBlock. Arguments are mmdet's; ``dcn`` as in :class:`DCNResNet`.
    """

    def __init__(self, inplanes: int, planes: int, stride: int = 1, dilation: int = 1,
                 downsample: Optional[nn.Module] = None, style: str = 'pytorch', with_cp: bool = False,
                 conv_cfg: OptConfigType = None, norm_cfg: ConfigType = dict(type='BN'),
                 dcn: OptConfigType = None, plugins: Optional[list] = None,
                 init_cfg: OptMultiConfig = None) -> None:
        super().__init__(inplanes, planes, stride=stride, dilation=dilation, downsample=downsample,
                         style=style, with_cp=with_cp, conv_cfg=conv_cfg, norm_cfg=norm_cfg, dcn=None,
                         plugins=plugins, init_cfg=init_cfg)
        self.dcn = _check_block_dcn(dcn, conv_cfg)
        self.with_dcn = self.dcn is not None
        if self.with_dcn:
            conv1_cfg = layer_cfg(self.dcn, stride)
            if conv1_cfg is not None:
                # same geometry as mmdet's conv1; assigning keeps the module's place in the tree
                self.conv1 = build_conv_layer(conv1_cfg, inplanes, planes, 3, stride=stride,
                                              padding=dilation, dilation=dilation, bias=False)
            self.conv2 = build_conv_layer(layer_cfg(self.dcn, 1), planes, planes, 3, padding=1, bias=False)


class DCNBottleneck(Bottleneck):
    """mmdet's ``Bottleneck`` with a deformable ``conv2`` (the 3x3 conv) when ``dcn`` is given.

    Unlike mmdet's block, ``dcn`` is not mutated (mmdet pops ``fallback_on_stride`` from the shared
    dict, so only the first block sees it) and ``fallback_on_stride`` means what it says: a regular
    conv where ``conv2``'s stride is larger than 1. Arguments are mmdet's.
    """

    def __init__(self, inplanes: int, planes: int, stride: int = 1, dilation: int = 1,
                 downsample: Optional[nn.Module] = None, style: str = 'pytorch', with_cp: bool = False,
                 conv_cfg: OptConfigType = None, norm_cfg: ConfigType = dict(type='BN'),
                 dcn: OptConfigType = None, plugins: Optional[list] = None,
                 init_cfg: OptMultiConfig = None) -> None:
        dcn = _check_block_dcn(dcn, conv_cfg)
        conv2_cfg = layer_cfg(dcn, stride if style == 'pytorch' else 1) if dcn is not None else None
        super().__init__(inplanes, planes, stride=stride, dilation=dilation, downsample=downsample,
                         style=style, with_cp=with_cp, conv_cfg=conv_cfg, norm_cfg=norm_cfg,
                         dcn=conv2_cfg, plugins=plugins, init_cfg=init_cfg)
        self.dcn = dcn


class DCNResNeXtBottleneck(ResNeXtBottleneck):
    """mmdet's ResNeXt ``Bottleneck`` (grouped 3x3 conv) with a deformable ``conv2`` when ``dcn`` is given.

    The deformable conv keeps the block's ``groups`` (the op's ``groups``). Arguments are mmdet's:
    ``groups``, ``base_width``, ``base_channels`` plus those of :class:`DCNBottleneck`.
    """

    def __init__(self, inplanes: int, planes: int, groups: int = 1, base_width: int = 4,
                 base_channels: int = 64, **kwargs: Any) -> None:
        dcn = _check_block_dcn(kwargs.get('dcn'), kwargs.get('conv_cfg'))
        conv2_stride = kwargs.get('stride', 1) if kwargs.get('style', 'pytorch') == 'pytorch' else 1
        kwargs['dcn'] = layer_cfg(dcn, conv2_stride) if dcn is not None else None
        super().__init__(inplanes, planes, groups=groups, base_width=base_width,
                         base_channels=base_channels, **kwargs)
        self.dcn = dcn


def _is_int(v: Any) -> bool:
    return isinstance(v, Integral) and not isinstance(v, bool)


@MODELS.register_module()
class DCNResNet(ResNet):
    """ResNet with deformable 3x3 convs (DCNv2 on conv3-conv5 by default), any norm layer.

    mmdet's ``ResNet`` with other defaults for ``dcn`` / ``stage_with_dcn`` and three additions
    (``dcn_last_blocks``, ``dcn_norm_cfg``, DCN in BasicBlocks); a config written for mmdet's ResNet
    works by changing ``type='ResNet'`` to ``type='DCNResNet'``. With the defaults this is the DCNv2
    paper's "more deformable layers" backbone: every 3x3 conv of stages conv3, conv4 and conv5 (the
    ``conv2`` of each Bottleneck; ``conv1`` and ``conv2`` of each BasicBlock) is a modulated
    deformable conv (``ModulatedDeformConv2dPack``), with its own zero-initialised ``conv_offset``.

    The module tree and parameter names are mmdet's ResNet with mmcv's DCN, so official mmdet DCN
    checkpoints (``backbone.*`` of e.g. Faster R-CNN R50-DCNv2-c3-c5) load strictly.

    Args:
        depth (int): 18, 34 (BasicBlock), 50, 101 or 152 (Bottleneck).
        in_channels (int): image channels. Default 3.
        stem_channels (int, optional): stem width; ``base_channels`` when None.
        base_channels (int): width of the first stage. Default 64.
        num_stages (int): 1 to 4. Default 4.
        strides (Sequence[int]): stride of the first block of each stage. Default (1, 2, 2, 2).
        dilations (Sequence[int]): dilation of each stage. Default (1, 1, 1, 1).
        out_indices (Sequence[int]): stages whose outputs are returned. Default (0, 1, 2, 3).
        style (str): 'pytorch' (stride in the 3x3 conv) or 'caffe' (stride in the first 1x1 conv).
        deep_stem (bool): three 3x3 convs instead of the 7x7 stem conv.
        avg_down (bool): AvgPool + 1x1 conv instead of a strided 1x1 conv in the shortcut.
        frozen_stages (int): stages (and the stem) whose parameters are frozen and whose norm
            layers are kept in eval mode; -1 freezes nothing. Default -1.
        conv_cfg (dict, optional): conv layer of the non-deformable convs; must be None in
            deformable blocks (as in mmdet).
        norm_cfg (dict): norm layer of the whole backbone. ``dict(type='BN')``, ``'SyncBN'``,
            ``dict(type='GN', num_groups=32)``, ``dict(type='SampleLN')`` (LayerNorm over C, H, W of
            each sample), ``dict(type='ChannelLN')`` (LayerNorm over C at each position), plus
            ``requires_grad`` and the layer's own arguments (``eps``, ...). Default
            ``dict(type='BN', requires_grad=True)``. mmcv's ``'LN'`` is refused (it normalises the
            width axis of NCHW maps).
        norm_eval (bool): keep BatchNorm layers in eval mode (frozen statistics) while training;
            no effect on GN / LN. Default True.
        dcn (dict, optional): the deformable conv; None makes a plain ResNet. Keys:
            ``type``: ``'MDConv'`` (DCNv2, default) or ``'DConv'`` (DCNv1); mmcv's names ``'DCNv2'``
            / ``'DCN'`` are accepted and mean the same (they build this plugin's layers);
            ``deform_groups`` (int, default 1); ``fallback_on_stride`` (bool, default False): a
            regular conv where the 3x3 conv is strided (the first block of a stage).
            Default ``dict(type='MDConv', deform_groups=1, fallback_on_stride=False)``.
        stage_with_dcn (Sequence[bool]): per stage, whether its blocks are deformable; one entry
            per stage. Default (False, True, True, True), i.e. conv3-conv5.
        dcn_last_blocks (int | Sequence[int | None], optional): make only the last N blocks of
            each deformable stage deformable (an int for every stage, or one entry per stage; None
            = all blocks; N larger than the stage means all; 0 means none). E.g. DCNv1's "last
            three layers of conv5": ``stage_with_dcn=(False, False, False, True),
            dcn_last_blocks=3`` on a Bottleneck ResNet (3 blocks in conv5, each with one 3x3 conv).
            Default None.
        dcn_norm_cfg (dict, optional): norm layer of the deformable blocks (all their norms and the
            shortcut norm of a stage whose first block is deformable); ``norm_cfg`` when None.
        plugins (list[dict], optional): mmdet's block plugins (Bottleneck only).
        with_cp (bool): gradient checkpointing in the blocks.
        zero_init_residual (bool): with the default init, zero the last norm of every block.
            Default True.
        pretrained (str, optional): deprecated, use ``init_cfg=dict(type='Pretrained', ...)``.
        init_cfg (dict | list[dict], optional): mmengine init config. Default (None): mmdet's
            Kaiming for ``Conv2d`` and constant 1 for BN/GN. Every ``conv_offset`` is zero after
            ``init_weights()`` (the default init and a Pretrained checkpoint without
            ``conv_offset`` keys alike), so a fresh deformable conv samples the regular grid.

    Returns (forward): a tuple of ``(N, C_i, H / s_i, W / s_i)`` maps for ``out_indices``, with
    ``C_i = base_channels * 2**i * expansion`` (expansion 1 for depth 18/34, 4 otherwise) and
    ``s_i = 4 * prod(strides[1:i + 1])`` (4, 8, 16, 32 by default).
    """

    arch_settings = {
        18: (DCNBasicBlock, (2, 2, 2, 2)),
        34: (DCNBasicBlock, (3, 4, 6, 3)),
        50: (DCNBottleneck, (3, 4, 6, 3)),
        101: (DCNBottleneck, (3, 4, 23, 3)),
        152: (DCNBottleneck, (3, 8, 36, 3)),
    }

    def __init__(self,
                 depth: int,
                 in_channels: int = 3,
                 stem_channels: Optional[int] = None,
                 base_channels: int = 64,
                 num_stages: int = 4,
                 strides: Sequence[int] = (1, 2, 2, 2),
                 dilations: Sequence[int] = (1, 1, 1, 1),
                 out_indices: Sequence[int] = (0, 1, 2, 3),
                 style: str = 'pytorch',
                 deep_stem: bool = False,
                 avg_down: bool = False,
                 frozen_stages: int = -1,
                 conv_cfg: OptConfigType = None,
                 norm_cfg: ConfigType = dict(type='BN', requires_grad=True),
                 norm_eval: bool = True,
                 dcn: OptConfigType = _DEFAULT_DCN,
                 stage_with_dcn: Sequence[bool] = (False, True, True, True),
                 dcn_last_blocks: Union[None, int, Sequence[Optional[int]]] = None,
                 dcn_norm_cfg: OptConfigType = None,
                 plugins: Optional[List[ConfigType]] = None,
                 with_cp: bool = False,
                 zero_init_residual: bool = True,
                 pretrained: Optional[str] = None,
                 init_cfg: OptMultiConfig = None) -> None:
        # mmdet's ResNet checks its own arguments; these are the DCN additions
        check_norm_cfg(norm_cfg, 'norm_cfg')
        check_norm_cfg(dcn_norm_cfg, 'dcn_norm_cfg', allow_none=True)
        dcn = resolve_dcn_cfg(dcn, 'dcn')
        if dcn_last_blocks is None or _is_int(dcn_last_blocks):
            last = (dcn_last_blocks,) * num_stages
        elif isinstance(dcn_last_blocks, Sequence) and len(dcn_last_blocks) == num_stages:
            last = tuple(dcn_last_blocks)
        else:
            raise ValueError(f'dcn_last_blocks must be None, an int or one entry per stage (num_stages = '
                             f'{num_stages}), got {dcn_last_blocks!r}')
        if not all(n is None or (_is_int(n) and n >= 0) for n in last):
            raise ValueError(f'dcn_last_blocks must hold None or non-negative ints, got {dcn_last_blocks!r}')

        # read by make_res_layer, which mmdet's __init__ calls (plain values: allowed before
        # nn.Module.__init__, as mmdet's ResNeXt does)
        self.dcn_last_blocks = last
        self.dcn_norm_cfg = dcn_norm_cfg if dcn_norm_cfg is not None else norm_cfg
        self._zero_init_blocks = zero_init_residual and init_cfg is None and pretrained is None
        super().__init__(
            depth=depth, in_channels=in_channels, stem_channels=stem_channels,
            base_channels=base_channels, num_stages=num_stages, strides=strides, dilations=dilations,
            out_indices=out_indices, style=style, deep_stem=deep_stem, avg_down=avg_down,
            frozen_stages=frozen_stages, conv_cfg=conv_cfg, norm_cfg=norm_cfg, norm_eval=norm_eval,
            dcn=dcn, stage_with_dcn=stage_with_dcn, plugins=plugins, with_cp=with_cp,
            zero_init_residual=zero_init_residual, pretrained=pretrained, init_cfg=init_cfg)

    def train(self, mode: bool = True) -> 'DCNResNet':
        """mmdet's ``train`` (frozen stages stay frozen, BN stays in eval with ``norm_eval``),
        returning ``self`` like ``nn.Module.train`` (mmdet's returns None, which breaks
        ``model.eval()`` chains)."""
        super().train(mode)
        return self

    def deformable_blocks(self, stage: int, num_blocks: int) -> List[bool]:
        """Which blocks of stage ``stage`` (0-based) are deformable."""
        if self.dcn is None or not self.stage_with_dcn[stage]:
            return [False] * num_blocks
        n = self.dcn_last_blocks[stage]
        n = num_blocks if n is None else min(n, num_blocks)
        return [j >= num_blocks - n for j in range(num_blocks)]

    def block_extra_args(self) -> Dict[str, Any]:
        """Block arguments besides mmdet ResLayer's (ResNeXt: groups and widths)."""
        return {}

    def make_res_layer(self, **kwargs: Any) -> Sequential:
        """Build one stage: mmdet's ``ResLayer`` structure (same names), per-block dcn and norm."""
        block: Type[nn.Module] = kwargs.pop('block')
        inplanes: int = kwargs.pop('inplanes')
        planes: int = kwargs.pop('planes')
        num_blocks: int = kwargs.pop('num_blocks')
        stride: int = kwargs.pop('stride')
        avg_down: bool = kwargs.pop('avg_down')
        conv_cfg = kwargs.pop('conv_cfg')
        norm_cfg = kwargs.pop('norm_cfg')
        kwargs.pop('dcn')  # decided per block below
        init_cfg = kwargs.pop('init_cfg')
        if init_cfg is None and self._zero_init_blocks:
            # mmdet only does this for its own block classes (an identity check)
            last_norm = 'norm2' if issubclass(block, BasicBlock) else 'norm3'
            init_cfg = dict(type='Constant', val=0, override=dict(name=last_norm))
        # mmdet's ResNet builds the stages in order and appends each one's name to res_layers after
        # building it: the stage being built is the number of those names
        stage = len(self.res_layers)
        deformable = self.deformable_blocks(stage, num_blocks)
        norms = [self.dcn_norm_cfg if d else norm_cfg for d in deformable]
        out_planes = planes * block.expansion

        downsample = None
        if stride != 1 or inplanes != out_planes:
            layers: List[nn.Module] = []
            conv_stride = stride
            if avg_down:
                conv_stride = 1
                layers.append(nn.AvgPool2d(kernel_size=stride, stride=stride, ceil_mode=True,
                                           count_include_pad=False))
            layers += [build_conv_layer(conv_cfg, inplanes, out_planes, kernel_size=1, stride=conv_stride,
                                        bias=False),
                       build_norm_layer(norms[0], out_planes)[1]]
            downsample = nn.Sequential(*layers)

        blocks = []
        for j in range(num_blocks):
            blocks.append(block(
                inplanes=inplanes if j == 0 else out_planes, planes=planes,
                stride=stride if j == 0 else 1, downsample=downsample if j == 0 else None,
                conv_cfg=conv_cfg, norm_cfg=norms[j], dcn=self.dcn if deformable[j] else None,
                init_cfg=init_cfg, **kwargs, **self.block_extra_args()))
        return Sequential(*blocks)


@MODELS.register_module()
class DCNResNeXt(DCNResNet):
    """ResNeXt with deformable grouped 3x3 convs (DCNv2 on conv3-conv5 by default), any norm layer.

    mmdet's ``ResNeXt`` as :class:`DCNResNet` is mmdet's ``ResNet``: every argument of
    :class:`DCNResNet` plus

    Args:
        groups (int): groups of the 3x3 convs (the deformable op's ``groups``), e.g. 32 for 32x4d.
            Default 1.
        base_width (int): width per group in the first stage, e.g. 4 for 32x4d. Default 4.

    ``depth`` is 50, 101 or 152. The state dict is that of mmdet's ResNeXt with mmcv's DCN.
    """

    arch_settings = {
        50: (DCNResNeXtBottleneck, (3, 4, 6, 3)),
        101: (DCNResNeXtBottleneck, (3, 4, 23, 3)),
        152: (DCNResNeXtBottleneck, (3, 8, 36, 3)),
    }

    def __init__(self, groups: int = 1, base_width: int = 4, **kwargs: Any) -> None:
        self.groups = groups
        self.base_width = base_width
        super().__init__(**kwargs)

    def block_extra_args(self) -> Dict[str, Any]:
        return dict(groups=self.groups, base_width=self.base_width, base_channels=self.base_channels)


__all__ = ['DCNResNet', 'DCNResNeXt', 'DCNBasicBlock', 'DCNBottleneck', 'DCNResNeXtBottleneck']
