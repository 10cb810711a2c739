"""DCNResNet / DCNResNeXt: build matrix, DCN placement, checkpoint equivalence with mmdet + mmcv, init."""
import copy

import pytest
import torch
from mmdet.models.backbones import ResNet, ResNeXt
from mmdet.registry import MODELS
from mmengine.registry import DefaultScope
from model_test_utils import dcn_layers, randomize_  # first: skips without mmdet / mmcv.ops
from torch import nn

from dcn_plugin.models import ChannelLayerNorm2d, DCNResNet, DCNResNeXt, SampleLayerNorm2d
from dcn_plugin.ops import DeformConv2dPack, ModulatedDeformConv2dPack

NORMS = {
    'BN': (dict(type='BN', requires_grad=True), nn.BatchNorm2d),
    'SyncBN': (dict(type='SyncBN', requires_grad=True), nn.SyncBatchNorm),
    'GN': (dict(type='GN', num_groups=8, requires_grad=True), nn.GroupNorm),
    'SampleLN': (dict(type='SampleLN'), SampleLayerNorm2d),
    'ChannelLN': (dict(type='ChannelLN'), ChannelLayerNorm2d),
}
ARCHS = {  # name -> (config, expansion)
    'R18': (dict(type='DCNResNet', depth=18), 1),
    'R34': (dict(type='DCNResNet', depth=34), 1),
    'R50': (dict(type='DCNResNet', depth=50), 4),
    'R101': (dict(type='DCNResNet', depth=101), 4),
    'R152': (dict(type='DCNResNet', depth=152), 4),
    'X50-32x4d': (dict(type='DCNResNeXt', depth=50, groups=32, base_width=4), 4),
    'X101-32x4d': (dict(type='DCNResNeXt', depth=101, groups=32, base_width=4), 4),
    'X152-32x4d': (dict(type='DCNResNeXt', depth=152, groups=32, base_width=4), 4),
}
STAGE_BLOCKS = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3), 50: (3, 4, 6, 3), 101: (3, 4, 23, 3), 152: (3, 8, 36, 3)}


def _block_convs(block):
    """The 3x3 convs of a block: conv1 and conv2 of a BasicBlock, conv2 of a Bottleneck."""
    return [block.conv1, block.conv2] if not hasattr(block, 'conv3') else [block.conv2]


@pytest.mark.parametrize('norm', list(NORMS))
@pytest.mark.parametrize('arch', list(ARCHS))
def test_every_depth_block_and_norm_builds_and_gives_right_shapes_and_strides(arch, norm):
    cfg, expansion = ARCHS[arch]
    norm_cfg, norm_cls = NORMS[norm]
    # quarter width and a 64x32 image keep the 40 builds fast; depth and block structure are the real ones
    model = MODELS.build(dict(cfg, norm_cfg=norm_cfg, base_channels=16)).eval()
    with torch.no_grad():
        outs = model(torch.randn(1, 3, 64, 32))
    assert [tuple(o.shape) for o in outs] == [
        (1, 16 * 2**i * expansion, 64 // s, 32 // s) for i, s in enumerate((4, 8, 16, 32))]
    assert all(torch.isfinite(o).all() for o in outs)
    # DCNv2 on every 3x3 conv of conv3-conv5 (layer2-4), none in conv2 (layer1)
    for stage, n in enumerate(STAGE_BLOCKS[cfg['depth']]):
        layer = getattr(model, f'layer{stage + 1}')
        assert len(layer) == n
        for block in layer:
            kinds = {type(c) for c in _block_convs(block)}
            assert kinds == ({ModulatedDeformConv2dPack} if stage > 0 else {nn.Conv2d}), (stage, kinds)
            assert isinstance(block.norm2, norm_cls)
    assert isinstance(model.norm1, norm_cls)


@pytest.mark.parametrize('arch', ['R18', 'R50', 'X50'])
@pytest.mark.parametrize('dcn_type', ['MDConv', 'DConv'])
def test_gradients_reach_offsets_and_masks_of_every_deformable_conv(arch, dcn_type):
    depth = 18 if arch == 'R18' else 50
    extra = dict(groups=4, base_width=4) if arch == 'X50' else {}
    cls = DCNResNeXt if arch == 'X50' else DCNResNet
    torch.manual_seed(0)
    model = cls(depth=depth, base_channels=16, norm_cfg=dict(type='GN', num_groups=4),
                dcn=dict(type=dcn_type, deform_groups=2), zero_init_residual=False, **extra).train()
    x = torch.randn(2, 3, 64, 64)
    sum(o.square().mean() for o in model(x)).backward()
    layers = dcn_layers(model)
    assert len(layers) == (12 if depth == 18 else 13)
    for name, m in layers:
        g = m.conv_offset.weight.grad
        n_off = 2 * 2 * 9  # (dy, dx) x deform_groups x kernel points
        assert g.shape[0] == (n_off + 2 * 9 if dcn_type == 'MDConv' else n_off), name
        assert g[:n_off].abs().sum() > 0, f'no gradient reaches the offsets of {name}'
        if dcn_type == 'MDConv':
            assert g[n_off:].abs().sum() > 0, f'no gradient reaches the mask of {name}'
        assert m.weight.grad.abs().sum() > 0, name


MMDET_DCN_CASES = {
    # official mmdet DCN configs: faster-rcnn_r50-dconv-c3-c5 (DCN), r50-mdconv-c3-c5 (DCNv2),
    # r50-mdconv-group4-c3-c5, x101-32x4d-dconv-c3-c5 (here on depth 50)
    'R50-DCNv2': (ResNet, DCNResNet, dict(depth=50), dict(type='DCNv2', deform_groups=1)),
    'R50-DCNv2-dg4': (ResNet, DCNResNet, dict(depth=50), dict(type='DCNv2', deform_groups=4)),
    'R50-DCNv1': (ResNet, DCNResNet, dict(depth=50), dict(type='DCN', deform_groups=1)),
    'X50-32x4d-DCNv2': (ResNeXt, DCNResNeXt, dict(depth=50, groups=32, base_width=4),
                        dict(type='DCNv2', deform_groups=1)),
}
OUR_TYPE = {'DCNv2': 'MDConv', 'DCN': 'DConv'}


@pytest.mark.parametrize('case', list(MMDET_DCN_CASES))
def test_mmdet_mmcv_dcn_state_dict_loads_strictly_and_gives_identical_features(case):
    ref_cls, our_cls, arch, dcn = MMDET_DCN_CASES[case]
    torch.manual_seed(0)
    x = torch.randn(2, 3, 96, 96)  # mmcv's DCNv1 needs conv5 maps of at least 3x3
    ref = ref_cls(**arch, dcn=dict(dcn, fallback_on_stride=False), stage_with_dcn=(False, True, True, True))
    assert 'mmcv.ops' in type(ref.layer2[0].conv2).__module__  # the reference is mmcv's DCN
    randomize_(ref, x)
    state = ref.state_dict()
    assert any(k.endswith('conv_offset.weight') for k in state)
    ours = our_cls(**arch, dcn=dict(type=OUR_TYPE[dcn['type']], deform_groups=dcn['deform_groups']))
    result = ours.load_state_dict(state, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    assert list(ours.state_dict()) == list(state)
    ours.eval()
    with torch.no_grad():
        expected = ref(x)
        got = ours(x)
    assert all(o.abs().max() > 0 for o in got)
    for e, g in zip(expected, got):
        torch.testing.assert_close(g, e, rtol=1e-4, atol=1e-4 * e.abs().max().item())
    # the offsets matter: zeroing them changes the features
    for _, m in dcn_layers(ours):
        nn.init.zeros_(m.conv_offset.weight)
        nn.init.zeros_(m.conv_offset.bias)
    with torch.no_grad():
        assert (ours(x)[-1] - expected[-1]).abs().max() > 1e-2 * expected[-1].abs().max()


def test_mmcv_type_names_in_dcn_build_this_plugins_layers():
    model = DCNResNet(depth=50, dcn=dict(type='DCNv2', deform_groups=1, fallback_on_stride=False))
    assert type(model.layer3[0].conv2) is ModulatedDeformConv2dPack
    model = DCNResNet(depth=18, dcn=dict(type='DCN'))
    assert type(model.layer3[0].conv1) is DeformConv2dPack


@pytest.mark.parametrize('scope', [None, 'mmdet'])
def test_stock_mmdet_resnet_with_mdconv_uses_this_plugins_op(scope):
    cfg = dict(type='ResNet', depth=50, dcn=dict(type='MDConv', deform_groups=1, fallback_on_stride=False),
               stage_with_dcn=(False, True, True, True))
    with DefaultScope.overwrite_default_scope(scope):
        stock = MODELS.build(copy.deepcopy(cfg))
    assert isinstance(stock, ResNet) and type(stock) is ResNet
    assert all(type(b.conv2) is ModulatedDeformConv2dPack for b in stock.layer4)
    stock.init_weights()
    assert all(m.conv_offset.weight.abs().sum() == 0 for _, m in dcn_layers(stock))
    ours = DCNResNet(depth=50)
    assert set(ours.state_dict()) == set(stock.state_dict())
    x = torch.randn(1, 3, 64, 64)
    randomize_(ours, x, seed=1)
    stock.load_state_dict(ours.state_dict(), strict=True)
    stock.eval()
    with torch.no_grad():
        for a, b in zip(stock(x), ours(x)):
            torch.testing.assert_close(a, b)


def _offsets_are_zero(model):
    return all(m.conv_offset.weight.abs().sum() == 0 and m.conv_offset.bias.abs().sum() == 0
               for _, m in dcn_layers(model))


@pytest.mark.parametrize('depth', [18, 50])
def test_default_init_weights_leaves_offsets_zero_and_zero_inits_residual_norms(depth):
    model = DCNResNet(depth=depth, norm_cfg=dict(type='SampleLN'))
    for _, m in dcn_layers(model):  # as if something had disturbed them before init
        nn.init.normal_(m.conv_offset.weight)
    model.init_weights()
    assert dcn_layers(model) and _offsets_are_zero(model)
    last = 'norm2' if depth == 18 else 'norm3'
    assert all(getattr(b, last).weight.abs().sum() == 0 for b in model.layer3)  # zero_init_residual
    assert model.layer3[0].conv1.weight.std() > 0


def test_pretrained_init_loads_weights_keeps_offsets_zero_and_loads_dcn_checkpoints(tmp_path):
    # an "ImageNet" checkpoint of a plain ResNet-50: no conv_offset keys
    arch = dict(depth=50, base_channels=32)  # half width: the same tree, a quicker test
    plain = ResNet(**arch)
    randomize_(plain, torch.randn(1, 3, 64, 64))
    torch.save({'state_dict': plain.state_dict()}, tmp_path / 'plain.pth')
    model = DCNResNet(**arch, init_cfg=dict(type='Pretrained', checkpoint=str(tmp_path / 'plain.pth')))
    model.init_weights()
    assert _offsets_are_zero(model)
    torch.testing.assert_close(model.layer3[1].conv2.weight, plain.layer3[1].conv2.weight)
    torch.testing.assert_close(model.layer1[0].bn1.running_var, plain.layer1[0].bn1.running_var)

    # a detector checkpoint with a DCN backbone: its offsets are loaded
    det = DCNResNet(**arch)
    randomize_(det, torch.randn(1, 3, 64, 64), seed=3)
    torch.save({'state_dict': {'backbone.' + k: v for k, v in det.state_dict().items()}},
               tmp_path / 'det.pth')
    model = DCNResNet(**arch, init_cfg=dict(type='Pretrained', checkpoint=str(tmp_path / 'det.pth'),
                                            prefix='backbone.'))
    model.init_weights()
    for k, v in det.state_dict().items():
        torch.testing.assert_close(model.state_dict()[k], v, msg=k)


@pytest.mark.parametrize('dcn_type', ['MDConv', 'DConv'])
def test_basicblock_dcn_with_zero_offsets_is_the_regular_block(dcn_type):
    """Geometry of the deformable BasicBlock convs (stride, padding, dilation) equals mmdet's:
    with zero offsets DCNv2 is the conv with mask 0.5, DCNv1 the conv itself."""
    arch = dict(depth=18, strides=(1, 2, 2, 1), dilations=(1, 1, 1, 2),
                stage_with_dcn=(True, True, True, True))
    ref = ResNet(**{k: v for k, v in arch.items() if k != 'stage_with_dcn'})
    x = torch.randn(2, 3, 48, 40)
    randomize_(ref, x, seed=5)
    ours = DCNResNet(**arch, dcn=dict(type=dcn_type))
    state = ref.state_dict()
    scale = 2.0 if dcn_type == 'MDConv' else 1.0
    for name, m in dcn_layers(ours):
        state[name + '.weight'] = state[name + '.weight'] * scale
    result = ours.load_state_dict(state, strict=False)
    assert not result.unexpected_keys and all('conv_offset' in k for k in result.missing_keys)
    assert len(dcn_layers(ours)) == 16
    ours.eval()
    with torch.no_grad():
        for a, b in zip(ref(x), ours(x)):
            torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-4 * a.abs().max().item())


def test_stage_choice_last_n_blocks_and_deform_groups():
    model = DCNResNet(depth=50, stage_with_dcn=(False, False, True, True), dcn_last_blocks=(None, None, 2, 5),
                      dcn=dict(type='DConv', deform_groups=4))
    dcn_of = [[isinstance(b.conv2, DeformConv2dPack) for b in getattr(model, f'layer{i}')]
              for i in range(1, 5)]
    assert dcn_of == [[False] * 3, [False] * 4, [False] * 4 + [True] * 2, [True] * 3]
    assert model.layer4[0].conv2.conv_offset.out_channels == 2 * 4 * 9
    assert model.layer4[0].conv2.deform_groups == 4
    # an int applies to every deformable stage; 0 disables
    model = DCNResNet(depth=18, dcn_last_blocks=1)
    assert [len(dcn_layers(getattr(model, f'layer{i}'))) for i in range(1, 5)] == [0, 2, 2, 2]
    assert type(model.layer2[0].conv1) is nn.Conv2d
    assert type(model.layer2[1].conv1) is ModulatedDeformConv2dPack
    assert not dcn_layers(DCNResNet(depth=18, dcn_last_blocks=0))
    assert not dcn_layers(DCNResNet(depth=18, dcn=None))


def test_fallback_on_stride_keeps_strided_convs_regular():
    model = DCNResNet(depth=50, dcn=dict(type='MDConv', fallback_on_stride=True))
    for i in (2, 3, 4):
        layer = getattr(model, f'layer{i}')
        assert type(layer[0].conv2) is nn.Conv2d  # the strided 3x3 conv
        assert all(type(b.conv2) is ModulatedDeformConv2dPack for b in layer[1:])
    model = DCNResNet(depth=18, dcn=dict(type='MDConv', fallback_on_stride=True))
    assert type(model.layer2[0].conv1) is nn.Conv2d
    assert type(model.layer2[0].conv2) is ModulatedDeformConv2dPack


def test_separate_norm_for_deformable_blocks():
    model = DCNResNet(depth=50, norm_cfg=dict(type='BN'), dcn_norm_cfg=dict(type='GN', num_groups=32),
                      stage_with_dcn=(False, False, True, True), dcn_last_blocks=(None, None, 3, None))
    assert isinstance(model.norm1, nn.BatchNorm2d)
    assert all(isinstance(b.norm1, nn.BatchNorm2d) for b in model.layer2)
    assert [type(b.norm3) for b in model.layer3] == [nn.BatchNorm2d] * 3 + [nn.GroupNorm] * 3
    assert isinstance(model.layer3[0].downsample[1], nn.BatchNorm2d)
    assert isinstance(model.layer4[0].downsample[1], nn.GroupNorm)
    assert 'layer4.0.gn2.weight' in model.state_dict()
    out = model.eval()(torch.randn(1, 3, 64, 64))
    assert out[-1].shape == (1, 2048, 2, 2)


def test_frozen_stages_and_norm_eval_behave_as_in_mmdet():
    model = DCNResNet(depth=18, frozen_stages=2, norm_eval=False)
    model.train()
    frozen = [model.conv1, model.norm1, model.layer1, model.layer2]
    assert all(not p.requires_grad for m in frozen for p in m.parameters())
    assert all(p.requires_grad for p in model.layer3.parameters())
    assert not model.layer2[0].bn1.training and model.layer3[0].bn1.training
    assert not model.layer2[0].conv1.conv_offset.weight.requires_grad
    model = DCNResNet(depth=18, norm_eval=True).train()
    assert not any(m.training for m in model.modules() if isinstance(m, nn.BatchNorm2d))
    assert model.layer3[0].conv1.training


@pytest.mark.parametrize('kwargs, exc, match', [
    (dict(depth=18, dcn=dict(type='DCNv3')), ValueError, r"dcn\['type'\] must be one of"),
    (dict(depth=18, dcn='MDConv'), TypeError, r'dcn must be None or a dict'),
    (dict(depth=18, dcn=dict(type='MDConv', deform_groups=0)), ValueError,
     r'deform_groups must be a positive int, got 0'),
    (dict(depth=18, dcn=dict(type='MDConv', stride=2)), ValueError, r"dcn must not set \['stride'\]"),
    (dict(depth=18, dcn_last_blocks=-1), ValueError, 'dcn_last_blocks'),
    (dict(depth=18, dcn_last_blocks=(1, 2)), ValueError, 'dcn_last_blocks must be None, an int or one entry per '
                                                         r'stage \(num_stages = 4\)'),
    (dict(depth=18, norm_cfg=dict(type='LN')), ValueError, r"norm_cfg\['type'\] = 'LN' is nn.LayerNorm"),
    (dict(depth=18, dcn_norm_cfg=dict(type='GN')), ValueError, 'dcn_norm_cfg .*num_groups'),
    (dict(depth=18, conv_cfg=dict(type='Conv2d')), ValueError, 'conv_cfg must be None'),
])
def test_bad_arguments_raise_errors_that_name_them(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        DCNResNet(**kwargs)


def test_resnext_rejects_basicblock_depths_as_mmdet_does():
    with pytest.raises(KeyError, match='depth 18'):
        DCNResNeXt(depth=18)


def test_resnext_deformable_conv_is_grouped():
    model = DCNResNeXt(depth=50, groups=32, base_width=4, dcn=dict(type='MDConv', deform_groups=2))
    conv = model.layer3[0].conv2
    assert type(conv) is ModulatedDeformConv2dPack and conv.groups == 32 and conv.deform_groups == 2
    assert conv.weight.shape == (512, 512 // 32, 3, 3)


def test_torch_compile_of_dcnresnet18_forward_matches_eager():
    torch._dynamo.reset()
    model = DCNResNet(depth=18, base_channels=16, norm_cfg=dict(type='ChannelLN')).eval()
    x = torch.randn(1, 3, 64, 64)
    randomize_(model, x, seed=7)
    compiled = torch.compile(model, fullgraph=True)
    with torch.no_grad():
        expected = model(x)
        got = compiled(x)
    for e, g in zip(expected, got):
        torch.testing.assert_close(g, e, rtol=1e-4, atol=1e-4 * e.abs().max().item())
