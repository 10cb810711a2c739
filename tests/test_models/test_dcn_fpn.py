"""DCNFPN: which convs are deformable, norms, init of the offsets, equivalence with mmdet FPN + mmcv DCNv2."""
import pytest
import torch
from mmdet.models.necks import FPN
from mmdet.registry import MODELS
from model_test_utils import dcn_layers, randomize_  # first: skips without mmdet / mmcv.ops
from torch import nn

from dcn_plugin.models import DCNFPN, ChannelLayerNorm2d, SampleLayerNorm2d
from dcn_plugin.ops import DeformConv2dPack, ModulatedDeformConv2dPack

IN_CHANNELS = [16, 32, 64, 128]


def _features(n: int = 2, size: int = 32, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(n, c, size // 2**i, size // 2**i, generator=g)
                 for i, c in enumerate(IN_CHANNELS))


@pytest.mark.parametrize('norm_cfg, norm_cls', [
    (None, None),
    (dict(type='BN'), nn.BatchNorm2d),
    (dict(type='GN', num_groups=8), nn.GroupNorm),
    (dict(type='SampleLN'), SampleLayerNorm2d),
    (dict(type='ChannelLN'), ChannelLayerNorm2d),
])
def test_output_convs_are_dcnv2_with_any_norm_and_shapes_match_fpn(norm_cfg, norm_cls):
    neck = MODELS.build(dict(type='DCNFPN', in_channels=IN_CHANNELS, out_channels=24, num_outs=5,
                             norm_cfg=norm_cfg))
    assert [type(m.conv) for m in neck.fpn_convs] == [ModulatedDeformConv2dPack] * 4
    assert all(type(m.conv) is nn.Conv2d for m in neck.lateral_convs)
    if norm_cls is not None:
        assert all(isinstance(m.norm, norm_cls) for m in neck.fpn_convs)
        assert all(m.conv.bias is None for m in neck.fpn_convs)  # ConvModule's bias='auto'
    else:
        assert all(m.conv.bias is not None for m in neck.fpn_convs)
    neck.init_weights()
    outs = neck.eval()(_features())
    expected = [(2, 24, 32 // 2**i, 32 // 2**i) for i in range(4)] + [(2, 24, 2, 2)]
    assert [tuple(o.shape) for o in outs] == expected


def test_lateral_and_extra_convs_optionally_deformable():
    neck = DCNFPN(IN_CHANNELS, 24, num_outs=6, add_extra_convs='on_input',
                  dcn=dict(type='DConv', deform_groups=2), dcn_on_lateral=True, dcn_on_extra=True)
    assert all(type(m.conv) is DeformConv2dPack for m in neck.lateral_convs)
    assert all(type(m.conv) is DeformConv2dPack for m in neck.fpn_convs)
    assert neck.lateral_convs[0].conv.kernel_size == (1, 1)
    assert neck.lateral_convs[0].conv.conv_offset.out_channels == 2 * 2 * 1
    assert neck.fpn_convs[4].conv.stride == (2, 2) and neck.fpn_convs[4].conv.in_channels == 128
    outs = neck(_features())
    assert [o.shape[-1] for o in outs] == [32, 16, 8, 4, 2, 1]
    fallback = DCNFPN(IN_CHANNELS, 24, num_outs=6, add_extra_convs='on_output', dcn_on_extra=True,
                      dcn=dict(type='MDConv', fallback_on_stride=True))
    assert [type(m.conv) for m in fallback.fpn_convs] == [ModulatedDeformConv2dPack] * 4 + [nn.Conv2d] * 2
    plain = DCNFPN(IN_CHANNELS, 24, num_outs=5, dcn=None)
    assert not dcn_layers(plain)
    assert set(plain.state_dict()) == set(FPN(IN_CHANNELS, 24, num_outs=5).state_dict())


def test_state_dict_and_features_equal_mmdet_fpn_with_mmcv_dcnv2():
    """mmdet's FPN(conv_cfg=dict(type='DCNv2')) makes every conv deformable; so does DCNFPN with
    lateral and extra convs on: same names, strict load, same features."""
    ref = FPN(IN_CHANNELS, 24, num_outs=6, add_extra_convs='on_input', conv_cfg=dict(type='DCNv2'))
    assert 'mmcv.ops' in type(ref.fpn_convs[0].conv).__module__
    x = _features()
    randomize_(ref, x)
    ours = DCNFPN(IN_CHANNELS, 24, num_outs=6, add_extra_convs='on_input', dcn_on_lateral=True,
                  dcn_on_extra=True)
    ours.load_state_dict(ref.state_dict(), strict=True)
    ours.eval()
    with torch.no_grad():
        for e, g in zip(ref(x), ours(x)):
            torch.testing.assert_close(g, e, rtol=1e-4, atol=1e-4 * e.abs().max().item())


def test_gradients_reach_offsets_and_masks():
    neck = DCNFPN(IN_CHANNELS, 24, num_outs=5, norm_cfg=dict(type='ChannelLN'), dcn_on_lateral=True)
    neck.init_weights()
    x = tuple(f.requires_grad_() for f in _features())
    sum(o.square().mean() for o in neck(x)).backward()
    for name, m in dcn_layers(neck):
        k = m.kernel_size[0] * m.kernel_size[1]
        g = m.conv_offset.weight.grad
        assert g[:2 * k].abs().sum() > 0 and g[2 * k:].abs().sum() > 0, name
    assert all(f.grad.abs().sum() > 0 for f in x)


def test_init_weights_zeroes_offsets_after_xavier_and_before_pretrained(tmp_path):
    neck = DCNFPN(IN_CHANNELS, 24, num_outs=5)
    for _, m in dcn_layers(neck):
        nn.init.normal_(m.conv_offset.weight)
    neck.init_weights()
    assert all(m.conv_offset.weight.abs().sum() == 0 and m.conv_offset.bias.abs().sum() == 0
               for _, m in dcn_layers(neck))
    # Xavier-uniform reaches the deformable weights: bound sqrt(6 / (fan_in + fan_out))
    w = neck.fpn_convs[0].conv.weight
    assert w.abs().max() <= (6 / (24 * 9 + 24 * 9)) ** 0.5 and w.abs().max() > 0.5 * (6 / (24 * 9 * 2)) ** 0.5

    # a Pretrained entry is applied last: a DCN checkpoint's offsets are loaded ...
    src = DCNFPN(IN_CHANNELS, 24, num_outs=5)
    randomize_(src, _features())
    torch.save({'state_dict': {'neck.' + k: v for k, v in src.state_dict().items()}}, tmp_path / 'det.pth')
    cfg = [dict(type='Xavier', layer='Conv2d', distribution='uniform'),
           dict(type='Pretrained', checkpoint=str(tmp_path / 'det.pth'), prefix='neck.')]
    neck = DCNFPN(IN_CHANNELS, 24, num_outs=5, init_cfg=cfg)
    neck.init_weights()
    for k, v in src.state_dict().items():
        torch.testing.assert_close(neck.state_dict()[k], v, msg=k)
    assert neck.init_cfg == cfg
    # ... and a plain FPN checkpoint leaves them at zero
    plain = FPN(IN_CHANNELS, 24, num_outs=5)
    torch.save({'state_dict': plain.state_dict()}, tmp_path / 'plain.pth')
    neck = DCNFPN(IN_CHANNELS, 24, num_outs=5,
                  init_cfg=dict(type='Pretrained', checkpoint=str(tmp_path / 'plain.pth')))
    neck.init_weights()
    assert all(m.conv_offset.weight.abs().sum() == 0 for _, m in dcn_layers(neck))
    torch.testing.assert_close(neck.fpn_convs[1].conv.weight, plain.fpn_convs[1].conv.weight)


@pytest.mark.parametrize('kwargs, exc, match', [
    (dict(dcn=dict(type='Nope')), ValueError, r"dcn\['type'\] must be one of"),
    (dict(norm_cfg=dict(type='LN')), ValueError, r"norm_cfg\['type'\] = 'LN' is nn.LayerNorm"),
    (dict(dcn_on_lateral=1), TypeError, 'dcn_on_lateral must be a bool'),
])
def test_bad_arguments_raise_errors_that_name_them(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        DCNFPN(IN_CHANNELS, 24, num_outs=5, **kwargs)
