"""FPN with deformable convolutions (DCNv2 by default) in its 3x3 output convs."""
from typing import List, Union

from mmcv.cnn import ConvModule, build_conv_layer
from mmdet.models.necks import FPN
from mmdet.registry import MODELS
from mmdet.utils import ConfigType, MultiConfig, OptConfigType

from ..layers.dcn import DCN_LAYERS, layer_cfg, resolve_dcn_cfg
from ..layers.init import init_then_reset_then_pretrained
from ..layers.norm import check_norm_cfg


@MODELS.register_module()
class DCNFPN(FPN):
    """mmdet's ``FPN`` whose 3x3 output convs are deformable; optionally its lateral and extra convs too.

    Every argument of mmdet's ``FPN`` keeps its meaning (a config written for ``FPN`` works by changing
    ``type``); the convs chosen below are built from ``dcn`` with the geometry FPN gives them (kernel,
    stride, padding; a bias only where there is no norm, as in ``ConvModule``), each with its own
    zero-initialised ``conv_offset``. Module and parameter names are FPN's
    (``fpn_convs.{i}.conv.weight``, ``fpn_convs.{i}.conv.conv_offset.weight``, ...).

    Args:
        in_channels (list[int]): channels of each input level.
        out_channels (int): channels of every output level.
        num_outs (int): number of output levels.
        start_level (int): first input level used. Default 0.
        end_level (int): last input level used (inclusive); -1 = the last. Default -1.
        add_extra_convs (bool | str): extra levels by strided 3x3 convs: False (max-pool instead),
            True / 'on_input', 'on_lateral' or 'on_output'. Default False.
        relu_before_extra_convs (bool): ReLU before the 2nd, 3rd, ... extra conv. Default False.
        no_norm_on_lateral (bool): no norm after the lateral 1x1 convs. Default False.
        conv_cfg (dict, optional): conv layer of the non-deformable convs.
        norm_cfg (dict, optional): norm after every conv: None (default, FPN's), ``dict(type='BN')``,
            ``'SyncBN'``, ``dict(type='GN', num_groups=32)``, ``dict(type='SampleLN')`` or
            ``dict(type='ChannelLN')`` (see :mod:`dcn_plugin.models.layers.norm`).
        act_cfg (dict, optional): activation after every conv. Default None.
        upsample_cfg (dict): ``F.interpolate`` arguments of the top-down path.
            Default ``dict(mode='nearest')``.
        dcn (dict, optional): the deformable conv: ``type`` ``'MDConv'`` (DCNv2, default) or
            ``'DConv'`` (DCNv1), mmcv's ``'DCNv2'``/``'DCN'`` accepted; ``deform_groups`` (default 1);
            ``fallback_on_stride`` (keep strided extra convs regular). None: a plain FPN.
            Default ``dict(type='MDConv', deform_groups=1)``.
        dcn_on_output (bool): the 3x3 output convs are deformable. Default True.
        dcn_on_lateral (bool): the 1x1 lateral convs are deformable too. Default False.
        dcn_on_extra (bool): the strided 3x3 extra-level convs are deformable too. Default False.
        init_cfg (dict | list[dict]): default: FPN's Xavier-uniform on the convs, extended to the
            deformable convs' weights. ``init_weights()`` then zeroes every ``conv_offset``
            (a ``Pretrained`` entry is applied after that).

    Forward: a tuple of ``num_outs`` maps ``(N, out_channels, H_l, W_l)`` as mmdet's FPN.
    """

    def __init__(self,
                 in_channels: List[int],
                 out_channels: int,
                 num_outs: int,
                 start_level: int = 0,
                 end_level: int = -1,
                 add_extra_convs: Union[bool, str] = False,
                 relu_before_extra_convs: bool = False,
                 no_norm_on_lateral: bool = False,
                 conv_cfg: OptConfigType = None,
                 norm_cfg: OptConfigType = None,
                 act_cfg: OptConfigType = None,
                 upsample_cfg: ConfigType = dict(mode='nearest'),
                 dcn: OptConfigType = dict(type='MDConv', deform_groups=1),
                 dcn_on_output: bool = True,
                 dcn_on_lateral: bool = False,
                 dcn_on_extra: bool = False,
                 init_cfg: MultiConfig = dict(
                     type='Xavier', layer=['Conv2d', 'ModulatedDeformConv2dPack', 'DeformConv2dPack'],
                     distribution='uniform')) -> None:
        if not isinstance(in_channels, (list, tuple)) or not in_channels:
            raise TypeError(f'in_channels must be a non-empty list of ints, got {in_channels!r}')
        check_norm_cfg(norm_cfg, 'norm_cfg', allow_none=True)
        for name, flag in (('dcn_on_output', dcn_on_output), ('dcn_on_lateral', dcn_on_lateral),
                           ('dcn_on_extra', dcn_on_extra)):
            if not isinstance(flag, bool):
                raise TypeError(f'{name} must be a bool, got {flag!r}')
        dcn = resolve_dcn_cfg(dcn, 'dcn')
        super().__init__(list(in_channels), out_channels, num_outs, start_level=start_level,
                         end_level=end_level, add_extra_convs=add_extra_convs,
                         relu_before_extra_convs=relu_before_extra_convs,
                         no_norm_on_lateral=no_norm_on_lateral, conv_cfg=conv_cfg, norm_cfg=norm_cfg,
                         act_cfg=act_cfg, upsample_cfg=upsample_cfg, init_cfg=init_cfg)
        self.dcn = dcn
        self.dcn_on_output = dcn_on_output
        self.dcn_on_lateral = dcn_on_lateral
        self.dcn_on_extra = dcn_on_extra
        if dcn is None:
            return
        num_levels = len(self.lateral_convs)
        if dcn_on_lateral:
            for module in self.lateral_convs:
                self._make_deformable(module)
        for i, module in enumerate(self.fpn_convs):
            if (dcn_on_output and i < num_levels) or (dcn_on_extra and i >= num_levels):
                self._make_deformable(module)

    def _make_deformable(self, module: ConvModule) -> None:
        """Replace ``module.conv`` by a deformable conv of the same geometry (unless it falls back)."""
        conv = module.conv
        cfg = layer_cfg(self.dcn, tuple(conv.stride))
        if cfg is None:
            return
        module.conv = build_conv_layer(cfg, conv.in_channels, conv.out_channels, conv.kernel_size,
                                       stride=conv.stride, padding=conv.padding, dilation=conv.dilation,
                                       groups=conv.groups, bias=conv.bias is not None)

    def init_weights(self) -> None:
        """FPN's init, then zero every ``conv_offset``, then the ``Pretrained`` entries of ``init_cfg``.

        mmengine applies ``init_cfg`` (Xavier on every ``Conv2d``, ``conv_offset`` included) and does
        not reach the convs inside FPN's ``nn.ModuleList`` s with their own ``init_weights()``, so the
        offsets are reset here, before any checkpoint is loaded.
        """
        init_then_reset_then_pretrained(self, super().init_weights, self._zero_offsets)

    def _zero_offsets(self) -> None:
        for m in self.modules():
            if isinstance(m, DCN_LAYERS):
                m.init_offset()
