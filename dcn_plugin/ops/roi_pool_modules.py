"""``nn.Module`` wrappers of the deformable RoI pooling operator.

Constructor arguments, attribute and parameter names are mmcv's (``output_size``, ``spatial_scale``,
``sampling_ratio``, ``gamma``, ``output_channels``, ``deform_fc_channels``, ``offset_fc``, ``mask_fc``),
so mmcv / mmdet state dicts load strictly:

* :class:`DeformRoIPool`: the pooling with externally supplied offsets;
* :class:`DeformRoIPoolPack` (DCNv1): pools once without offsets, predicts the offsets from the pooled
  features with ``offset_fc`` (fc-ReLU-fc-ReLU-fc, last layer zero so training starts as RoIAlign),
  pools again with them;
* :class:`ModulatedDeformRoIPoolPack` (DCNv2): the same plus a modulation mask, ``mask_fc``
  (fc-ReLU-fc-sigmoid, last layer zero so the mask starts at 0.5). With ``branch='paper'`` the offsets and
  mask come from the DCNv2 paper's single branch instead: one 2x1024 trunk and a ``3 * PH * PW`` head
  (``offset_mask_fc``; hidden layers N(0, 0.01), head zero), about half the parameters.

The mmdet RoI extractor that builds these by name from a config is
``dcn_plugin.models.roi_extractors.DeformRoIExtractor``.
"""
from typing import Callable, Optional, Tuple

import torch
from torch import Tensor, nn

from .pair import IntPair
from .roi_pool import check_pool_args, deform_roi_pool

BRANCHES = ('mmcv', 'paper')


class DeformRoIPool(nn.Module):
    """Deformable RoI pooling with externally supplied offsets (mmcv's ``DeformRoIPool``).

    Args:
        output_size: ``PH = PW`` or ``(PH, PW)``.
        spatial_scale: feature-map size / image size.
        sampling_ratio: samples per bin side; 0 = adaptive (``ceil(bin size)``).
        gamma: offset scale (a bin moves by ``gamma * roi_size * offset``).

    The arguments follow :func:`~dcn_plugin.ops.roi_pool.deform_roi_pool`'s rule and are checked when
    the module is built (a TypeError / ValueError naming the argument).

    Forward ``(input, rois, offset=None)``: ``input (N, C, H, W)``, ``rois (K, 5)``,
    ``offset (K, 2, PH, PW)`` or ``None`` -> ``(K, C, PH, PW)``.
    """

    def __init__(self, output_size: IntPair, spatial_scale: float = 1.0, sampling_ratio: int = 0,
                 gamma: float = 0.1):
        super().__init__()
        # the functional op's rule, values checked by the operator now rather than at the first forward
        size, self.spatial_scale, self.sampling_ratio, self.gamma = check_pool_args(output_size, spatial_scale,
                                                                                     sampling_ratio, gamma)
        self.output_size = tuple(size)

    def forward(self, input: Tensor, rois: Tensor, offset: Optional[Tensor] = None) -> Tensor:
        return deform_roi_pool(input, rois, offset, self.output_size, self.spatial_scale, self.sampling_ratio,
                               self.gamma)

    def extra_repr(self) -> str:
        return (f'output_size={tuple(self.output_size)}, spatial_scale={self.spatial_scale}, '
                f'sampling_ratio={self.sampling_ratio}, gamma={self.gamma}')


def _mlp(in_features: int, hidden: int, out_features: int, hidden_layers: int) -> nn.Sequential:
    """fc-ReLU repeated ``hidden_layers`` times, then the output fc (mmcv's layout and indices)."""
    layers = []
    for i in range(hidden_layers):
        layers += [nn.Linear(in_features if i == 0 else hidden, hidden), nn.ReLU(inplace=True)]
    layers.append(nn.Linear(hidden, out_features))
    return nn.Sequential(*layers)


class LearnedOffsetRoIPool(DeformRoIPool):
    """Base of the Pack modules: pools, predicts offsets (and a mask) from the pooled features, pools again.

    Subclasses build their branch and implement :meth:`predict` and :meth:`init_weights`.
    """

    def __init__(self, output_size: IntPair, output_channels: int, deform_fc_channels: int = 1024,
                 spatial_scale: float = 1.0, sampling_ratio: int = 0, gamma: float = 0.1):
        super().__init__(output_size, spatial_scale, sampling_ratio, gamma)
        for name, v in (('output_channels', output_channels), ('deform_fc_channels', deform_fc_channels)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f'{name} must be a positive int, got {v!r}')
        self.output_channels = output_channels
        self.deform_fc_channels = deform_fc_channels

    @property
    def bins(self) -> int:
        return self.output_size[0] * self.output_size[1]

    def predict(self, pooled: Tensor) -> Tuple[Tensor, Optional[Tensor]]:
        """Offsets ``(K, 2, PH, PW)`` and mask ``(K, 1, PH, PW)`` (or ``None``) from pooled features
        ``(K, output_channels, PH, PW)``."""
        raise NotImplementedError

    def init_weights(self) -> None:
        """Zero the branch's last layer(s): a fresh layer pools like RoIAlign (mask 0.5)."""
        raise NotImplementedError

    def pool_with_learned_offsets(self, pool: Callable[[Optional[Tensor]], Tensor]) -> Tensor:
        """``pool(None)`` -> features -> offsets, mask -> ``pool(offsets) * mask``.

        ``pool(offset)`` pools every RoI (with ``offset (K, 2, PH, PW)`` or none) into
        ``(K, output_channels, PH, PW)``: this layer's own map in :meth:`forward`, or the RoIs' FPN levels
        in an extractor that shares one branch across levels.
        """
        pooled = pool(None)
        if pooled.shape[1] != self.output_channels:
            raise ValueError(f'{type(self).__name__} was built for output_channels={self.output_channels}, '
                             f'but the input has {pooled.shape[1]} channels')
        offset, mask = self.predict(pooled)
        out = pool(offset)
        return out if mask is None else out * mask

    def forward(self, input: Tensor, rois: Tensor) -> Tensor:  # type: ignore[override]
        # both poolings read the map as channels-last rows: lay it out so once, not in each call
        x = input.contiguous(memory_format=torch.channels_last) if input.dim() == 4 else input
        return self.pool_with_learned_offsets(lambda offset: super(LearnedOffsetRoIPool, self).forward(
            x, rois, offset))

    def extra_repr(self) -> str:
        return (f'{super().extra_repr()}, output_channels={self.output_channels}, '
                f'deform_fc_channels={self.deform_fc_channels}')


class DeformRoIPoolPack(LearnedOffsetRoIPool):
    """DCNv1 deformable RoI pooling predicting its own offsets (mmcv's ``DeformRoIPoolPack``).

    Args:
        output_size, spatial_scale, sampling_ratio, gamma: as :class:`DeformRoIPool`.
        output_channels: channels ``C`` of the input (the branch reads ``C * PH * PW`` features).
        deform_fc_channels: width of the offset branch's hidden layers.

    ``offset_fc`` = fc(C*PH*PW, D)-ReLU-fc(D, D)-ReLU-fc(D, 2*PH*PW), last layer zero-initialised.
    Forward ``(input (N, C, H, W), rois (K, 5))`` -> ``(K, C, PH, PW)``.
    """

    def __init__(self, output_size: IntPair, output_channels: int, deform_fc_channels: int = 1024,
                 spatial_scale: float = 1.0, sampling_ratio: int = 0, gamma: float = 0.1):
        super().__init__(output_size, output_channels, deform_fc_channels, spatial_scale, sampling_ratio, gamma)
        self.offset_fc = _mlp(output_channels * self.bins, deform_fc_channels, 2 * self.bins, hidden_layers=2)
        self.init_weights()

    def init_weights(self) -> None:
        nn.init.zeros_(self.offset_fc[-1].weight)
        nn.init.zeros_(self.offset_fc[-1].bias)

    def predict(self, pooled: Tensor) -> Tuple[Tensor, Optional[Tensor]]:
        offset = self.offset_fc(pooled.flatten(1))
        return offset.view(-1, 2, *self.output_size), None


class ModulatedDeformRoIPoolPack(LearnedOffsetRoIPool):
    """DCNv2 modulated deformable RoI pooling (mmcv's ``ModulatedDeformRoIPoolPack``).

    Args:
        output_size, spatial_scale, sampling_ratio, gamma: as :class:`DeformRoIPool`.
        output_channels: channels ``C`` of the input.
        deform_fc_channels: width ``D`` of the branch's hidden layers.
        branch: ``'mmcv'`` (default): ``offset_fc`` as :class:`DeformRoIPoolPack`'s plus
            ``mask_fc`` = fc(C*PH*PW, D)-ReLU-fc(D, PH*PW)-sigmoid, last layers zero (mmcv's layout:
            its checkpoints load). ``'paper'``: the DCNv2 paper's branch, ``offset_mask_fc`` =
            fc(C*PH*PW, D)-ReLU-fc(D, D)-ReLU-fc(D, 3*PH*PW) whose outputs are the ``2*PH*PW`` offsets
            and ``PH*PW`` mask logits; hidden layers N(0, 0.01) with zero bias, head zero.

    Forward ``(input (N, C, H, W), rois (K, 5))`` -> ``(K, C, PH, PW)`` = pooling with the predicted
    offsets times the mask.
    """

    def __init__(self, output_size: IntPair, output_channels: int, deform_fc_channels: int = 1024,
                 spatial_scale: float = 1.0, sampling_ratio: int = 0, gamma: float = 0.1, branch: str = 'mmcv'):
        super().__init__(output_size, output_channels, deform_fc_channels, spatial_scale, sampling_ratio, gamma)
        if branch not in BRANCHES:
            raise ValueError(f"branch must be one of {BRANCHES} ('mmcv': separate offset_fc / mask_fc as mmcv; "
                             f"'paper': one shared trunk with a 3*PH*PW head), got {branch!r}")
        self.branch = branch
        features = output_channels * self.bins
        if branch == 'mmcv':
            self.offset_fc = _mlp(features, deform_fc_channels, 2 * self.bins, hidden_layers=2)
            self.mask_fc = nn.Sequential(*_mlp(features, deform_fc_channels, self.bins, hidden_layers=1),
                                         nn.Sigmoid())
        else:
            self.offset_mask_fc = _mlp(features, deform_fc_channels, 3 * self.bins, hidden_layers=2)
        self.init_weights()

    def init_weights(self) -> None:
        if self.branch == 'mmcv':
            heads = (self.offset_fc[-1], self.mask_fc[2])
        else:
            for layer in self.offset_mask_fc[:-1]:
                if isinstance(layer, nn.Linear):
                    nn.init.normal_(layer.weight, std=0.01)
                    nn.init.zeros_(layer.bias)
            heads = (self.offset_mask_fc[-1],)
        for head in heads:
            nn.init.zeros_(head.weight)
            nn.init.zeros_(head.bias)

    def predict(self, pooled: Tensor) -> Tuple[Tensor, Optional[Tensor]]:
        x = pooled.flatten(1)
        if self.branch == 'mmcv':
            offset, mask = self.offset_fc(x), self.mask_fc(x)
        else:
            out = self.offset_mask_fc(x)
            offset, mask = out[:, :2 * self.bins], torch.sigmoid(out[:, 2 * self.bins:])
        return offset.reshape(-1, 2, *self.output_size), mask.reshape(-1, 1, *self.output_size)

    def extra_repr(self) -> str:
        return super().extra_repr() + (", branch='paper'" if self.branch == 'paper' else '')
