"""Helpers shared by the model tests (CPU only, small inputs); skips them without mmdet / mmcv.ops."""
import math

import pytest
import torch
from torch import nn

pytest.importorskip('mmdet')
pytest.importorskip('mmcv.ops')

import dcn_plugin  # noqa: E402,F401  (registers everything)
from dcn_plugin.ops import DeformConv2dPack, ModulatedDeformConv2dPack  # noqa: E402

DCN_LAYERS = (ModulatedDeformConv2dPack, DeformConv2dPack)


def dcn_layers(model: nn.Module):
    """(name, module) of every deformable conv of this plugin in ``model``."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, DCN_LAYERS)]


@torch.no_grad()
def randomize_(model: nn.Module, x: torch.Tensor, offset_scale: float = 1.0, seed: int = 0) -> None:
    """Random conv weights (Kaiming), random non-zero ``conv_offset`` (offsets of about a pixel),
    random norm affine parameters, then BN running statistics calibrated on ``x`` (variances at least 0.25) so
    activations stay O(1) in eval mode. Works on mmcv's and this plugin's DCN modules alike (by
    attribute names)."""
    g = torch.Generator().manual_seed(seed)
    for name, m in model.named_modules():
        w = getattr(m, 'weight', None)
        if not isinstance(w, torch.Tensor):
            continue
        if w.dim() == 4:
            fan_in = w[0].numel()
            if name.endswith('conv_offset'):
                std = offset_scale / math.sqrt(fan_in)
            else:
                std = math.sqrt(2.0 / fan_in)
            w.copy_(torch.randn(w.shape, generator=g) * std)
        elif w.dim() == 1:
            w.copy_(torch.rand(w.shape, generator=g) * 0.5 + 0.5)
        b = getattr(m, 'bias', None)
        if isinstance(b, torch.Tensor):
            b.copy_(torch.randn(b.shape, generator=g) * 0.1)
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if bns:
        model.eval()
        for m in bns:
            m.train()
            m.momentum = 1.0
        model(x)
        for m in bns:
            m.momentum = 0.1
            # channels that ReLU left (nearly) constant on x: a tiny variance would amplify float
            # rounding by 1/sqrt(eps) in eval mode
            m.running_var.clamp_(min=0.25)
    model.eval()
