"""DeformRoIExtractor: builds the plugin's deformable RoI pooling from a config, keeps mmdet's state-dict
layout (mmdet dpool / mdpool checkpoints load strictly), and can share one offset branch across levels."""
import os.path as osp

import pytest
import torch

pytest.importorskip('mmdet')

from dcn_plugin.ops import DeformRoIPool, DeformRoIPoolPack, ModulatedDeformRoIPoolPack, deform_roi_pool  # noqa: E402

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
STRIDES = [4, 8, 16, 32]


def _build(cfg):
    from mmdet.registry import MODELS
    from mmdet.utils import register_all_modules
    register_all_modules(init_default_scope=True)
    return MODELS.build(cfg)


def _feats(c=8, size=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(2, c, size // s, size // s, generator=g) for s in STRIDES)


def _rois(seed=0, k=24, size=64):
    g = torch.Generator().manual_seed(seed)
    x1 = torch.rand(k, generator=g) * size * 0.6
    y1 = torch.rand(k, generator=g) * size * 0.6
    wh = torch.rand(k, 2, generator=g) * size * 1.5 + 2  # RoIs of all sizes: every level gets some
    b = torch.randint(2, (k,), generator=g).float()
    return torch.stack([b, x1, y1, x1 + wh[:, 0], y1 + wh[:, 1]], 1)


def _extractor(roi_layer, **kw):
    cfg = dict(type='DeformRoIExtractor', roi_layer=roi_layer, out_channels=8, featmap_strides=STRIDES,
               finest_scale=8, **kw)
    return _build(cfg)


def test_plugin_layers_are_built_by_name_and_mmcv_layers_still_are():
    from mmcv.ops import RoIAlign
    ext = _extractor(dict(type='ModulatedDeformRoIPoolPack', output_size=7, output_channels=8, deform_fc_channels=16))
    assert [type(m) for m in ext.roi_layers] == [ModulatedDeformRoIPoolPack] * 4
    assert [m.spatial_scale for m in ext.roi_layers] == [1 / s for s in STRIDES]
    ext = _extractor(dict(type='DeformRoIPoolPack', output_size=7, output_channels=8, deform_fc_channels=16))
    assert [type(m) for m in ext.roi_layers] == [DeformRoIPoolPack] * 4
    ext = _extractor(dict(type='RoIAlign', output_size=7, sampling_ratio=0))
    assert all(type(m) is RoIAlign for m in ext.roi_layers)
    ext = _extractor(dict(type=DeformRoIPool, output_size=5))
    assert all(type(m) is DeformRoIPool for m in ext.roi_layers)


def test_importing_the_plugin_changes_no_mmcv_or_mmdet_name():
    import mmcv.ops
    from mmdet.registry import MODELS
    assert mmcv.ops.ModulatedDeformRoIPoolPack is not ModulatedDeformRoIPoolPack
    assert mmcv.ops.DeformRoIPoolPack is not DeformRoIPoolPack
    assert MODELS.get('SingleRoIExtractor').__module__.startswith('mmdet.')


@pytest.mark.parametrize('layer', ['DeformRoIPoolPack', 'ModulatedDeformRoIPoolPack'])
def test_per_level_branches_train_from_a_forward_on_cpu(layer):
    torch.manual_seed(0)
    ext = _extractor(dict(type=layer, output_size=3, output_channels=8, deform_fc_channels=16))
    ext.init_weights()
    feats = tuple(f.requires_grad_() for f in _feats())
    out = ext(feats, _rois())
    assert out.shape == (24, 8, 3, 3)
    out.square().sum().backward()
    assert all(f.grad is not None and f.grad.abs().sum() > 0 for f in feats)
    # each level's branch got its RoIs' gradient
    assert all(m.offset_fc[-1].weight.grad.abs().sum() > 0 for m in ext.roi_layers)


@pytest.mark.parametrize('branch', ['mmcv', 'paper'])
def test_shared_branch_runs_once_over_all_levels(branch):
    torch.manual_seed(0)
    roi_layer = dict(type='ModulatedDeformRoIPoolPack', output_size=3, output_channels=8, deform_fc_channels=16,
                     sampling_ratio=2, branch=branch)
    ext = _extractor(roi_layer, share_offset_branch=True)
    ext.init_weights()
    assert all(type(m) is DeformRoIPool for m in ext.roi_layers)
    with torch.no_grad():  # non-trivial offsets and mask
        for p in ext.offset_branch.parameters():
            p.normal_(std=0.05)
    keys = list(ext.state_dict())
    assert all(k.startswith('offset_branch.') for k in keys)
    per_level = ModulatedDeformRoIPoolPack(**{k: v for k, v in roi_layer.items() if k != 'type'})
    assert sum(p.numel() for p in ext.parameters()) == sum(p.numel() for p in per_level.parameters())

    feats, rois = _feats(), _rois()
    out = ext(feats, rois)
    # by hand: plain pooling of every RoI on its level, one branch over all of them, pooling with offsets
    levels = ext.map_roi_levels(rois, 4)
    assert len(set(levels.tolist())) == 4

    def pool(offset):
        res = torch.zeros(len(rois), 8, 3, 3)
        for i in range(4):
            idx = (levels == i).nonzero().squeeze(1)
            res[idx] = deform_roi_pool(feats[i], rois[idx], None if offset is None else offset[idx], 3,
                                       1 / STRIDES[i], 2, 0.1)
        return res

    offset, mask = ext.offset_branch.predict(pool(None))
    torch.testing.assert_close(out, pool(offset) * mask)


def test_shared_branch_with_a_level_left_empty_keeps_every_input_in_the_graph():
    ext = _extractor(dict(type='DeformRoIPoolPack', output_size=2, output_channels=8, deform_fc_channels=4),
                     share_offset_branch=True)
    feats = tuple(f.requires_grad_() for f in _feats())
    rois = torch.tensor([[0., 1., 1., 9., 9.]])  # one small RoI: level 0 only
    ext(feats, rois).sum().backward()
    assert all(f.grad is not None for f in feats)
    assert ext(feats, rois[:0]).shape == (0, 8, 2, 2)


def test_refuses_what_it_cannot_build():
    with pytest.raises(KeyError, match="roi_layer type 'DeformRoIPoolv9' is neither one of"):
        _extractor(dict(type='DeformRoIPoolv9', output_size=7))
    with pytest.raises(ValueError, match='share_offset_branch=True needs a roi_layer that learns its offsets'):
        _extractor(dict(type='RoIAlign', output_size=7), share_offset_branch=True)
    with pytest.raises(ValueError, match='roi_layer must not set spatial_scale'):
        _extractor(dict(type='DeformRoIPool', output_size=7, spatial_scale=0.5))
    with pytest.raises(TypeError, match='share_offset_branch must be a bool'):
        _extractor(dict(type='DeformRoIPool', output_size=7), share_offset_branch='yes')


def test_init_weights_zeroes_the_heads_after_an_init_cfg():
    ext = _extractor(dict(type='ModulatedDeformRoIPoolPack', output_size=2, output_channels=8, deform_fc_channels=4),
                     init_cfg=dict(type='Normal', layer='Linear', std=1.0))
    ext.init_weights()
    for m in ext.roi_layers:
        assert m.offset_fc[-1].weight.abs().sum() == 0 and m.mask_fc[2].weight.abs().sum() == 0
        assert m.offset_fc[0].weight.std() > 0.5  # the init_cfg reached the hidden layers


@pytest.mark.parametrize('ours,theirs', [
    ('faster-rcnn_r50_fpn_mdpool_1x_coco.py', 'dcnv2/faster-rcnn_r50_fpn_mdpool_1x_coco.py'),
    ('faster-rcnn_r50_fpn_dpool_1x_coco.py', 'dcn/faster-rcnn_r50_fpn_dpool_1x_coco.py'),
], ids=['mdpool', 'dpool'])
def test_mmdet_state_dict_loads_strictly_into_our_config(ours, theirs):
    import mmdet
    from mmengine.config import Config

    import dcn_plugin.apis  # noqa: F401  ('mmdet::' bases)
    # mmdet's own config and model (mmcv's CUDA-only RoI layers can be built, not run, on CPU)
    cfg = Config.fromfile(osp.join(osp.dirname(mmdet.__file__), '.mim', 'configs', theirs))
    cfg.model.backbone.init_cfg = None
    mmdet_model = _build(cfg.model)
    assert type(mmdet_model.roi_head.bbox_roi_extractor.roi_layers[0]).__module__.startswith('mmcv.')
    state = {k: v.clone() for k, v in mmdet_model.state_dict().items()}
    del mmdet_model
    layer_keys = [k for k in state if k.startswith('roi_head.bbox_roi_extractor.roi_layers.3.')]
    assert 'roi_head.bbox_roi_extractor.roi_layers.3.offset_fc.4.weight' in layer_keys
    if 'mdpool' in ours:
        assert 'roi_head.bbox_roi_extractor.roi_layers.3.mask_fc.2.weight' in layer_keys
    cfg = Config.fromfile(osp.join(ROOT, 'configs', 'dcn', ours))
    cfg.model.backbone.init_cfg = None
    model = _build(cfg.model)
    assert type(model.roi_head.bbox_roi_extractor).__name__ == 'DeformRoIExtractor'
    model.load_state_dict(state, strict=True)
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k]), k


def test_a_pretrained_init_cfg_has_the_last_word(tmp_path):
    layer = dict(type='ModulatedDeformRoIPoolPack', output_size=2, output_channels=8, deform_fc_channels=4)
    trained = _extractor(layer)
    with torch.no_grad():
        for p in trained.parameters():
            p.normal_()
    path = tmp_path / 'extractor.pth'
    torch.save(trained.state_dict(), path)
    ext = _extractor(layer, init_cfg=[dict(type='Normal', layer='Linear', std=1.0),
                                      dict(type='Pretrained', checkpoint=str(path))])
    ext.init_weights()
    for k, v in trained.state_dict().items():
        assert torch.equal(ext.state_dict()[k], v), k
