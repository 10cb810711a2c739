"""The nn.Modules: mmcv's constructor arguments and parameter names, zero-initialised offsets,
mmcv checkpoints loading unchanged, and the 'MDConv' / 'DConv' registrations."""
import importlib.util
import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from dcn_plugin.ops import DeformConv2d, DeformConv2dPack, ModulatedDeformConv2d, ModulatedDeformConv2dPack

HAS_MMCV = importlib.util.find_spec('mmcv') is not None and importlib.util.find_spec('mmengine') is not None


@pytest.mark.parametrize('cls,per_point', [(ModulatedDeformConv2dPack, 3), (DeformConv2dPack, 2)])
def test_pack_offset_conv_shape_and_zero_init(cls, per_point):
    m = cls(8, 16, (3, 2), stride=2, padding=1, dilation=(1, 2), deform_groups=2)
    assert m.conv_offset.out_channels == per_point * 2 * 3 * 2
    assert (m.conv_offset.stride, m.conv_offset.padding, m.conv_offset.dilation) == ((2, 2), (1, 1), (1, 2))
    torch.nn.init.normal_(m.conv_offset.weight)
    m.init_weights()
    assert torch.count_nonzero(m.conv_offset.weight) == 0 and torch.count_nonzero(m.conv_offset.bias) == 0


def test_fresh_dcnv2_pack_is_half_a_regular_conv():
    torch.manual_seed(0)
    m = ModulatedDeformConv2dPack(4, 6, 3, padding=1, groups=2)
    torch.nn.init.normal_(m.bias)
    x = torch.randn(2, 4, 9, 7)
    # zero offsets, mask = sigmoid(0) = 0.5
    expected = 0.5 * F.conv2d(x, m.weight, None, 1, 1, 1, 2) + m.bias.view(1, -1, 1, 1)
    torch.testing.assert_close(m(x), expected, rtol=1e-5, atol=1e-5)


def test_fresh_dcnv1_pack_is_a_regular_conv():
    torch.manual_seed(0)
    m = DeformConv2dPack(4, 6, 3, stride=2, padding=1)
    assert m.bias is None
    x = torch.randn(2, 4, 9, 7)
    torch.testing.assert_close(m(x), F.conv2d(x, m.weight, None, 2, 1), rtol=1e-5, atol=1e-5)


def test_gradients_reach_offset_and_mask_predictors():
    m = ModulatedDeformConv2dPack(4, 4, 3, padding=1)
    torch.nn.init.normal_(m.conv_offset.weight, std=0.1)
    m(torch.randn(1, 4, 6, 6)).square().sum().backward()
    assert m.conv_offset.weight.grad.abs().sum() > 0 and m.weight.grad.abs().sum() > 0


def test_external_offset_modules_take_offset_and_mask():
    x = torch.randn(1, 4, 5, 5)
    off = torch.zeros(1, 18, 5, 5)
    v2 = ModulatedDeformConv2d(4, 3, 3, padding=1)
    torch.testing.assert_close(v2(x, off, torch.ones(1, 9, 5, 5)), F.conv2d(x, v2.weight, v2.bias, padding=1),
                               rtol=1e-5, atol=1e-5)
    v1 = DeformConv2d(4, 3, 3, padding=1, im2col_step=64)
    torch.testing.assert_close(v1(x, off), F.conv2d(x, v1.weight, None, padding=1), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('kwargs,pattern', [
    (dict(in_channels=6, out_channels=4, kernel_size=3, groups=4), r'divisible by groups'),
    (dict(in_channels=6, out_channels=4, kernel_size=3, deform_groups=4), r'divisible by deform_groups'),
    (dict(in_channels=0, out_channels=4, kernel_size=3), r'in_channels must be a positive int, got 0'),
])
def test_constructor_rejects_inconsistent_arguments(kwargs, pattern):
    with pytest.raises(ValueError, match=pattern):
        ModulatedDeformConv2dPack(**kwargs)


@pytest.mark.parametrize('change', [dict(stride=0), dict(stride=(1, -2)), dict(padding=-1), dict(dilation=0),
                                    dict(dilation=(1, 2 ** 31))], ids=repr)
@pytest.mark.parametrize('cls', [ModulatedDeformConv2dPack, DeformConv2dPack, ModulatedDeformConv2d, DeformConv2d])
def test_constructor_refuses_what_the_operator_refuses(cls, change):
    """A bad stride, padding or dilation is refused when the layer is built, with the operator's own message
    (its validator), not at the first forward."""
    from dcn_plugin.ops import modulated_deform_conv2d
    args = dict(stride=1, padding=1, dilation=1)
    args.update(change)
    x, weight = torch.zeros(1, 4, 9, 9), torch.zeros(4, 4, 3, 3)
    with pytest.raises(ValueError) as expected:
        modulated_deform_conv2d(x, torch.zeros(1, 18, 9, 9), torch.zeros(1, 9, 9, 9), weight, None, **args)
    with pytest.raises(ValueError, match=re.escape(str(expected.value))):
        cls(4, 4, 3, **args)


def test_constructor_refuses_a_kernel_size_below_one():
    for kernel_size in (0, (3, -2)):
        with pytest.raises(ValueError, match=r'kernel_size must be a pair of positive ints, got \('):
            ModulatedDeformConv2dPack(4, 4, kernel_size)


def test_old_conv_offset_mask_checkpoints_load():
    src = ModulatedDeformConv2dPack(4, 4, 3, padding=1)
    torch.nn.init.normal_(src.conv_offset.weight)
    sd = {k.replace('conv_offset.', 'conv_offset_mask.'): v for k, v in src.state_dict().items()}
    dst = ModulatedDeformConv2dPack(4, 4, 3, padding=1)
    dst.load_state_dict(sd, strict=True)  # no version metadata: treated as an mmcv < 1.0 checkpoint
    torch.testing.assert_close(dst.conv_offset.weight, src.conv_offset.weight)


@pytest.mark.skipif(not HAS_MMCV, reason='needs mmcv')
@pytest.mark.parametrize('ours_cls,mmcv_name', [(ModulatedDeformConv2dPack, 'ModulatedDeformConv2dPack'),
                                                (DeformConv2dPack, 'DeformConv2dPack')])
def test_mmcv_state_dicts_load_strictly_and_give_the_same_output(ours_cls, mmcv_name):
    import mmcv.ops
    torch.manual_seed(0)
    theirs = getattr(mmcv.ops, mmcv_name)(8, 8, 3, padding=1, deform_groups=2)
    with torch.no_grad():
        for p in theirs.parameters():
            p.normal_(0, 0.2)
    ours = ours_cls(8, 8, 3, padding=1, deform_groups=2, bias=getattr(theirs, 'bias', None) is not None)
    assert list(ours.state_dict()) == list(theirs.state_dict())
    ours.load_state_dict(theirs.state_dict(), strict=True)
    x = torch.randn(2, 8, 9, 9)
    torch.testing.assert_close(ours(x), theirs(x), rtol=1e-4, atol=1e-4)


@pytest.mark.skipif(not HAS_MMCV, reason='needs mmengine and mmcv')
def test_registered_as_mdconv_and_dconv_without_shadowing_mmcv():
    import mmcv.ops  # noqa: F401  (registers mmcv's own DCN / DCNv2)
    from mmcv.cnn import build_conv_layer
    from mmengine.registry import MODELS

    import dcn_plugin  # noqa: F401

    assert MODELS.get('MDConv') is ModulatedDeformConv2dPack
    assert MODELS.get('DConv') is DeformConv2dPack
    assert MODELS.get('DCNv2') is mmcv.ops.ModulatedDeformConv2dPack
    assert MODELS.get('DCN') is mmcv.ops.DeformConv2dPack
    layer = build_conv_layer(dict(type='MDConv', deform_groups=2), 8, 4, kernel_size=3, padding=1, bias=False)
    assert isinstance(layer, ModulatedDeformConv2dPack) and layer.deform_groups == 2 and layer.bias is None


def test_modules_check_their_int_or_pair_arguments_with_the_ops_helper():
    """One conversion for the package (dcn_plugin.ops.pair.to_pair): a TypeError naming the argument."""
    from dcn_plugin.ops import DeformRoIPool
    with pytest.raises(TypeError, match='kernel_size must be an int or a pair of ints'):
        ModulatedDeformConv2dPack(4, 4, (3, 3, 3))
    with pytest.raises(TypeError, match='dilation must be an int or a pair of ints'):
        DeformConv2dPack(4, 4, 3, dilation=1.5)
    with pytest.raises(TypeError, match='output_size must be an int or a pair of ints'):
        DeformRoIPool('7')
    layer = ModulatedDeformConv2dPack(4, 4, [3, 1], stride=np.int64(2), padding=(1, 0))
    assert (layer.kernel_size, layer.stride, layer.padding, layer.dilation) == ((3, 1), (2, 2), (1, 0), (1, 1))
