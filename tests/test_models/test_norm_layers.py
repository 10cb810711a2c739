"""The LayerNorm forms for conv features: definitions, registration, use through mmcv's builder."""
import subprocess
import sys
import textwrap

import model_test_utils  # noqa: F401  (skips without mmdet / mmcv.ops)
import pytest
import torch
from mmcv.cnn import build_norm_layer
from torch import nn

from dcn_plugin.models.layers import ChannelLayerNorm2d, SampleLayerNorm2d, check_norm_cfg


def _affine(layer: nn.Module, c: int, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        layer.weight.copy_(torch.randn(c, generator=g))
        layer.bias.copy_(torch.randn(c, generator=g))


@pytest.mark.parametrize('shape', [(2, 6, 5, 7), (3, 4, 1, 1), (1, 8, 3, 2)])
def test_sample_ln_normalises_each_sample_over_chw_with_per_channel_affine(shape):
    n, c = shape[:2]
    x = torch.randn(*shape, dtype=torch.float64) * 3 + 1
    ln = SampleLayerNorm2d(c, eps=1e-5).double()
    _affine(ln, c)
    flat = x.reshape(n, -1)
    mean = flat.mean(1).view(n, 1, 1, 1)
    var = flat.var(1, unbiased=False).view(n, 1, 1, 1)
    expected = (x - mean) / torch.sqrt(var + 1e-5) * ln.weight.view(1, c, 1, 1) + ln.bias.view(1, c, 1, 1)
    torch.testing.assert_close(ln(x), expected)


def test_sample_ln_is_groupnorm_with_one_group():
    x = torch.randn(2, 12, 9, 4)
    ln = SampleLayerNorm2d(12)
    gn = nn.GroupNorm(1, 12)
    _affine(ln, 12)
    gn.load_state_dict(ln.state_dict())
    torch.testing.assert_close(ln(x), gn(x), rtol=0, atol=0)
    assert isinstance(ln, nn.GroupNorm) and ln.num_groups == 1


@pytest.mark.parametrize('shape', [(2, 6, 5, 7), (3, 4, 1, 1), (1, 8, 3, 2)])
def test_channel_ln_normalises_over_channels_at_each_position(shape):
    c = shape[1]
    x = torch.randn(*shape, dtype=torch.float64) * 3 + 1
    ln = ChannelLayerNorm2d(c).double()
    _affine(ln, c)
    mean = x.mean(1, keepdim=True)
    var = x.var(1, unbiased=False, keepdim=True)
    expected = (x - mean) / torch.sqrt(var + 1e-5) * ln.weight.view(1, c, 1, 1) + ln.bias.view(1, c, 1, 1)
    torch.testing.assert_close(ln(x), expected)
    # the same as nn.LayerNorm(C) applied to the NHWC tensor (ConvNeXt's channels_first LayerNorm)
    ref = nn.LayerNorm(c).double()
    ref.load_state_dict(ln.state_dict())
    torch.testing.assert_close(ln(x), ref(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2))


def test_channel_ln_keeps_memory_format_and_backpropagates():
    ln = ChannelLayerNorm2d(5)
    x = torch.randn(2, 5, 4, 3)
    assert ln(x).is_contiguous()
    y = ln(x.to(memory_format=torch.channels_last))
    assert y.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(y, ln(x))
    xd = torch.randn(2, 3, 2, 2, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(ChannelLayerNorm2d(3).double(), (xd,))
    assert torch.autograd.gradcheck(SampleLayerNorm2d(3).double(), (xd,))


def test_channel_ln_rejects_wrong_channel_count():
    with pytest.raises(ValueError, match='C = 4'):
        ChannelLayerNorm2d(4)(torch.randn(1, 3, 2, 2))


@pytest.mark.parametrize('name, cls', [('SampleLN', SampleLayerNorm2d), ('ChannelLN', ChannelLayerNorm2d)])
def test_build_norm_layer_builds_ln_forms_from_channels_only(name, cls):
    layer_name, layer = build_norm_layer(dict(type=name), 16, postfix=2)
    assert layer_name == 'ln2' and type(layer) is cls
    assert set(layer.state_dict()) == {'weight', 'bias'}
    assert layer.weight.shape == (16,) and layer.eps == 1e-5
    _, frozen = build_norm_layer(dict(type=name, requires_grad=False, eps=1e-6), 16)
    assert frozen.eps == 1e-6 and not any(p.requires_grad for p in frozen.parameters())


def test_registration_adds_new_names_only_and_leaves_mmcv_ln_alone():
    """In a fresh interpreter: mmcv/mmdet do not know the names; importing dcn_plugin adds them and
    does not change what 'LN' (or any other existing name) builds."""
    code = textwrap.dedent('''
        import mmcv.cnn, mmdet.models  # everything mmcv and mmdet register
        from mmengine.registry import MODELS
        from mmdet.registry import MODELS as DET
        from mmcv.cnn import build_norm_layer
        import torch.nn as nn
        names = ['SampleLN', 'ChannelLN', 'DCNResNet', 'DCNResNeXt', 'DCNFPN', 'MDConv', 'DConv']
        assert not any(n in MODELS.module_dict or n in DET.module_dict for n in names), names
        before = {k: v for k, v in MODELS.module_dict.items()}
        det_before = {k: v for k, v in DET.module_dict.items()}
        assert type(build_norm_layer(dict(type='LN'), 8)[1]) is nn.LayerNorm
        import dcn_plugin
        assert type(build_norm_layer(dict(type='LN'), 8)[1]) is nn.LayerNorm
        assert all(MODELS.module_dict[k] is v for k, v in before.items())
        assert all(DET.module_dict[k] is v for k, v in det_before.items())
        assert MODELS.get('SampleLN') is dcn_plugin.models.SampleLayerNorm2d
        assert MODELS.get('ChannelLN') is dcn_plugin.models.ChannelLayerNorm2d
        for n in ('DCNResNet', 'DCNResNeXt', 'DCNFPN'):
            assert DET.module_dict[n].__module__.startswith('dcn_plugin.'), n
        print('ok')
    ''')
    out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and out.stdout.strip().endswith('ok'), out.stderr[-3000:]


def test_check_norm_cfg_names_the_argument_and_the_fix():
    check_norm_cfg(dict(type='BN'))
    check_norm_cfg(dict(type='GN', num_groups=4))
    check_norm_cfg(None, 'dcn_norm_cfg', allow_none=True)
    with pytest.raises(ValueError, match=r"norm_cfg.*'SampleLN'.*'ChannelLN'"):
        check_norm_cfg(dict(type='LN'))
    with pytest.raises(ValueError, match="dcn_norm_cfg.*num_groups"):
        check_norm_cfg(dict(type='GN'), 'dcn_norm_cfg')
    with pytest.raises(ValueError, match="norm_cfg.*'Nope' is not a registered norm layer"):
        check_norm_cfg(dict(type='Nope'))
    with pytest.raises(TypeError, match='norm_cfg'):
        check_norm_cfg(None)
