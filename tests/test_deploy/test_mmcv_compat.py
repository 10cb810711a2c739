"""Code written for mmcv / mmdet runs unchanged: mmcv's ``deform_conv2d`` call, the modules' deprecated
``deformable_groups`` and ``im2col_step``, and the exception types mmdet's ResNet raises."""
import warnings

import pytest
import torch

pytest.importorskip('mmdet')
mmcv_ops = pytest.importorskip('mmcv.ops')

from mmdet.models.backbones import ResNet, ResNeXt  # noqa: E402

from dcn_plugin.models.backbones import DCNResNet, DCNResNeXt  # noqa: E402
from dcn_plugin.ops import (  # noqa: E402
    DeformConv2d,
    DeformConv2dPack,
    ModulatedDeformConv2d,
    ModulatedDeformConv2dPack,
    deform_conv2d,
    modulated_deform_conv2d,
)


def _inputs(n=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 4, 7, 6, generator=g)
    offset = torch.randn(n, 2 * 2 * 9, 7, 6, generator=g) * 1.5  # deform_groups 2, 3x3
    weight = torch.randn(6, 2, 3, 3, generator=g)  # groups 2
    return x, offset, weight


# ----------------------------------------------------------------------------- functional
def test_deform_conv2d_takes_mmcvs_positional_call():
    x, offset, weight = _inputs()
    # mmcv's order: (input, offset, weight, stride, padding, dilation, groups, deform_groups, bias, im2col_step)
    ours = deform_conv2d(x, offset, weight, 1, 1, 1, 2, 2, False, 3)
    theirs = mmcv_ops.deform_conv2d(x, offset, weight, 1, 1, 1, 2, 2, False, 3)
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4)
    # mmcv-lite runs mmcv's function on our op: the numbers themselves are torchvision's either way
    import torchvision
    torch.testing.assert_close(ours, torchvision.ops.deform_conv2d(x, offset, weight, padding=1), rtol=1e-4,
                               atol=1e-4)
    torch.testing.assert_close(deform_conv2d(x, offset, weight, (1, 1), (1, 1), (1, 1), 2, 2), ours, rtol=0, atol=0)


def test_deform_conv2d_keeps_its_keyword_calls_with_a_bias_tensor():
    x, offset, weight = _inputs()
    bias = torch.randn(6)
    out = deform_conv2d(x, offset, weight, bias=bias, stride=1, padding=1, groups=2, deform_groups=2)
    plain = deform_conv2d(x, offset, weight, stride=1, padding=1, groups=2, deform_groups=2)
    torch.testing.assert_close(out, plain + bias.view(1, -1, 1, 1), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out, modulated_deform_conv2d(x, offset, None, weight, bias, 1, 1, 1, 2, 2),
                               rtol=0, atol=0)


def test_deform_conv2d_bias_false_and_none_mean_no_bias_and_true_is_refused():
    x, offset, weight = _inputs()
    ref = deform_conv2d(x, offset, weight, 1, 1, 1, 2, 2)
    torch.testing.assert_close(deform_conv2d(x, offset, weight, 1, 1, 1, 2, 2, None), ref, rtol=0, atol=0)
    with pytest.raises(TypeError, match=r'bias must be a torch.Tensor of shape \(out_channels,\), None or False '
                                        r'\(no bias\), got True'):
        deform_conv2d(x, offset, weight, 1, 1, 1, 2, 2, True)
    with pytest.raises(TypeError, match='bias must be a torch.Tensor'):
        deform_conv2d(x, offset, weight, 1, 1, 1, 2, 2, 1)


def test_old_positional_bias_gets_a_message_about_the_argument_order():
    x, offset, weight = _inputs()
    with pytest.raises(TypeError, match=r"stride must be an int or a pair of ints, got a Tensor: deform_conv2d takes "
                                        r"mmcv's argument order .* pass a bias tensor as bias="):
        deform_conv2d(x, offset, weight, torch.randn(6), 1, 1)


def test_im2col_step_is_accepted_for_any_batch_and_has_no_effect():
    x, offset, weight = _inputs(n=3)
    ref = deform_conv2d(x, offset, weight, 1, 1, 1, 2, 2)
    for step in (1, 2, 32, 64):  # mmcv refuses 2 for a batch of 3 (not divisible)
        torch.testing.assert_close(deform_conv2d(x, offset, weight, 1, 1, 1, 2, 2, False, step), ref, rtol=0, atol=0)
    with pytest.raises(ValueError, match='im2col_step must be positive'):
        deform_conv2d(x, offset, weight, 1, 1, 1, 2, 2, False, 0)
    with pytest.raises(TypeError, match='im2col_step must be an int'):
        deform_conv2d(x, offset, weight, 1, 1, 1, 2, 2, False, 2.0)


# ----------------------------------------------------------------------------- modules
@pytest.mark.parametrize('ours,theirs', [(ModulatedDeformConv2dPack, 'ModulatedDeformConv2dPack'),
                                         (DeformConv2dPack, 'DeformConv2dPack'),
                                         (ModulatedDeformConv2d, 'ModulatedDeformConv2d'),
                                         (DeformConv2d, 'DeformConv2d')])
def test_deprecated_deformable_groups_works_with_mmcvs_warning(ours, theirs):
    with pytest.warns(DeprecationWarning) as record:
        mmcv_layer = getattr(mmcv_ops, theirs)(8, 8, 3, padding=1, deformable_groups=2)
    mmcv_message = str(record[0].message)
    with pytest.warns(DeprecationWarning) as record:
        layer = ours(8, 8, 3, padding=1, deformable_groups=2)
    assert layer.deform_groups == mmcv_layer.deform_groups == 2
    assert str(record[0].message) == mmcv_message.replace(f'`{theirs.replace("Pack", "")}.', f'`{ours.__name__}.')
    assert record[0].filename == __file__, 'the warning points at the caller'
    assert list(layer.state_dict()) == list(mmcv_layer.state_dict())
    assert layer.state_dict()['weight'].shape == mmcv_layer.state_dict()['weight'].shape


def test_deform_groups_and_its_deprecated_alias_together_are_refused():
    with pytest.raises(TypeError, match='pass deform_groups or its deprecated alias deformable_groups, not both'):
        DeformConv2dPack(8, 8, 3, deform_groups=4, deformable_groups=2)
    with warnings.catch_warnings():
        warnings.simplefilter('ignore', DeprecationWarning)
        assert DeformConv2dPack(8, 8, 3, deform_groups=2, deformable_groups=2).deform_groups == 2


def test_deform_conv_modules_accept_im2col_step_without_effect():
    torch.manual_seed(0)
    a = DeformConv2dPack(4, 6, 3, padding=1, im2col_step=2)
    b = DeformConv2dPack(4, 6, 3, padding=1, im2col_step=64)
    b.load_state_dict(a.state_dict())
    with torch.no_grad():
        a.conv_offset.weight.normal_(0, 0.3)
        b.conv_offset.weight.copy_(a.conv_offset.weight)
    x = torch.randn(3, 4, 7, 6)  # a batch mmcv would refuse with im2col_step=2
    assert a.im2col_step == 2
    torch.testing.assert_close(a(x), b(x), rtol=0, atol=0)
    with pytest.raises(ValueError, match='im2col_step must be positive'):
        DeformConv2d(4, 6, 3, im2col_step=0)


def test_deform_conv2d_bias_true_learns_a_bias_where_mmcv_refuses_it():
    with pytest.raises(AssertionError, match='bias=True is not supported'):
        mmcv_ops.DeformConv2d(4, 6, 3, bias=True)
    torch.manual_seed(0)
    layer = DeformConv2d(4, 6, 3, padding=1, bias=True)
    assert layer.bias.shape == (6,) and torch.count_nonzero(layer.bias) == 0
    assert DeformConv2d(4, 6, 3).bias is None  # mmcv's default: no bias, same state dict keys as mmcv
    with torch.no_grad():
        layer.bias.normal_()
    x, offset = torch.randn(2, 4, 7, 6), torch.randn(2, 18, 7, 6)
    plain = deform_conv2d(x, offset, layer.weight, 1, 1)
    torch.testing.assert_close(layer(x, offset), plain + layer.bias.view(1, -1, 1, 1), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('cls', [DeformConv2dPack, ModulatedDeformConv2dPack])
def test_init_offset_zeroes_the_offset_predictor_as_in_mmcv(cls):
    layer = cls(4, 6, 3, padding=1)
    with torch.no_grad():
        layer.conv_offset.weight.normal_()
        layer.conv_offset.bias.normal_()
    weight = layer.weight.detach().clone()
    layer.init_offset()
    assert torch.count_nonzero(layer.conv_offset.weight) == 0 and torch.count_nonzero(layer.conv_offset.bias) == 0
    torch.testing.assert_close(layer.weight, weight, rtol=0, atol=0)


# ----------------------------------------------------------------------------- backbone exceptions
#: mmdet's own arguments: DCNResNet leaves them to mmdet's ResNet, so code written against mmdet catches the same
MMDET_ARGS = [dict(depth=20), dict(depth=50, num_stages=5), dict(depth=50, strides=(1, 2, 2)),
              dict(depth=50, dilations=(1, 1)), dict(depth=50, out_indices=(0, 4)), dict(depth=50, style='tf'),
              dict(depth=50, dcn=dict(type='DCNv2'), stage_with_dcn=(False, True))]


@pytest.mark.parametrize('kwargs', MMDET_ARGS, ids=[str(sorted(k)) for k in MMDET_ARGS])
def test_backbone_leaves_mmdets_own_arguments_to_mmdet(kwargs):
    with pytest.raises(Exception) as theirs:
        ResNet(**kwargs)
    with pytest.raises(type(theirs.value)):
        DCNResNet(**kwargs)


def test_resnext_unknown_depth_is_a_key_error_as_in_mmdet():
    with pytest.raises(KeyError):
        ResNeXt(depth=18)
    with pytest.raises(KeyError):
        DCNResNeXt(depth=18)


@pytest.mark.parametrize('kwargs', [dict(dcn_last_blocks=-1), dict(norm_cfg=dict(type='LN')),
                                    dict(dcn=dict(type='Conv2d'))])
def test_backbone_errors_without_an_mmdet_counterpart_keep_their_plain_types(kwargs):
    with pytest.raises(ValueError) as info:
        DCNResNet(depth=18, **kwargs)
    assert not isinstance(info.value, (AssertionError, KeyError))
