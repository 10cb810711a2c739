"""ONNX export of the registered models (DCNResNet + DCNFPN, DCNResNeXt) through both exporters, with
a dynamic batch and image size, checked in onnxruntime against PyTorch at the export size and another."""
import os.path as osp
import sys

import pytest
import torch
from deploy_test_utils import assert_onnxruntime_matches, deform_conv_nodes, export_torchscript
from torch import nn

sys.path.insert(0, osp.join(osp.dirname(osp.dirname(osp.abspath(__file__))), 'test_models'))
from model_test_utils import dcn_layers, randomize_  # noqa: E402  (skips without mmdet)

import dcn_plugin.deploy as deploy  # noqa: E402
from dcn_plugin.models.backbones import DCNResNet, DCNResNeXt  # noqa: E402
from dcn_plugin.models.necks import DCNFPN  # noqa: E402

AXES = {'x': {0: 'batch', 2: 'height', 3: 'width'}}


class ResNetFPN(nn.Module):
    """DCNResNet-18 (DCNv2 in both 3x3 convs of every block of conv3-conv5, strided ones included) and a
    DCNFPN with deformable output and lateral convs; BatchNorm in eval mode (GroupNorm: the detector's
    export test)."""

    def __init__(self):
        super().__init__()
        self.backbone = DCNResNet(depth=18, base_channels=16)
        self.neck = DCNFPN([16, 32, 64, 128], 16, num_outs=5, dcn_on_lateral=True, norm_cfg=dict(type='BN'))

    def forward(self, x):
        return self.neck(self.backbone(x))


def resnext():
    """DCNResNeXt-50 (grouped DCNv1, two deform groups) in two stages, BatchNorm in eval mode."""
    return DCNResNeXt(depth=50, groups=4, base_width=4, base_channels=16, num_stages=2, strides=(1, 2),
                      dilations=(1, 1), out_indices=(0, 1), stage_with_dcn=(True, True),
                      dcn=dict(type='DConv', deform_groups=2))


X = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
X_OTHER = torch.randn(3, 3, 50, 78, generator=torch.Generator().manual_seed(1))  # other batch, odd size


@pytest.fixture(scope='module', params=['resnet_fpn', 'resnext'])
def model(request):
    torch.manual_seed(0)
    net = ResNetFPN() if request.param == 'resnet_fpn' else resnext()
    randomize_(net, X, offset_scale=1.0)  # non-zero offsets (about a pixel), masks away from 1
    return net.eval()


@pytest.mark.slow
@pytest.mark.parametrize('exporter', ['dynamo', 'torchscript'])
def test_model_exports_and_runs_in_onnxruntime_at_any_batch_and_size(model, exporter, tmp_path):
    path = str(tmp_path / 'model.onnx')
    if exporter == 'dynamo':
        deploy.export_onnx(model, (X,), path, dynamic_shapes=AXES, verbose=False)
    else:
        export_torchscript(model, (X,), path, ['x'], AXES)
    assert len(deform_conv_nodes(path)) == len(dcn_layers(model))
    assert_onnxruntime_matches(path, model, X)
    assert_onnxruntime_matches(path, model, X_OTHER)
