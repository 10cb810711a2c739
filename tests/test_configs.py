"""Every shipped config loads, and builds its model (pretrained init switched off: no network)."""
import glob
import os.path as osp

import pytest
import torch

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
CONFIGS = sorted(p for p in glob.glob(osp.join(ROOT, 'configs', '**', '*.py'), recursive=True)
                 if not osp.basename(p).startswith('_'))
pytest.importorskip('mmdet')


def _ids(paths):
    return [osp.relpath(p, osp.join(ROOT, 'configs')) for p in paths]


def _load(path):
    from mmengine.config import Config

    import dcn_plugin.apis  # noqa: F401  ('mmdet::' bases without pkg_resources)
    cfg = Config.fromfile(path)
    cfg.model.backbone.init_cfg = None  # no pretrained download in tests
    return cfg


def _build(cfg):
    from mmdet.registry import MODELS
    from mmdet.utils import register_all_modules
    register_all_modules(init_default_scope=True)
    model = MODELS.build(cfg.model)
    model.init_weights()
    return model


def test_there_are_configs():
    names = {osp.basename(p) for p in CONFIGS}
    for expected in ('faster-rcnn_r50_fpn_1x_coco.py', 'faster-rcnn_r50-dconv-c3-c5_fpn_1x_coco.py',
                     'faster-rcnn_r50-mdconv-c3-c5_fpn_1x_coco.py',
                     'faster-rcnn_r18-mdconv-c3-c5_fpn_gn-all_demo-shapes.py',
                     'faster-rcnn_r50_fpn_dpool_1x_coco.py', 'faster-rcnn_r50_fpn_mdpool_1x_coco.py',
                     'faster-rcnn_r50-mdconv-c3-c5_fpn_mdpool_1x_coco.py',
                     'faster-rcnn_r18-mdconv-c3-c5_fpn_gn-all_mdpool_demo-shapes.py'):
        assert expected in names


@pytest.mark.parametrize('path', CONFIGS, ids=_ids(CONFIGS))
def test_config_builds_its_model(path):
    from dcn_plugin import DeformConv2dPack, ModulatedDeformConv2dPack
    cfg = _load(path)
    assert cfg.custom_imports == dict(imports=['dcn_plugin'], allow_failed_imports=False)
    model = _build(cfg)
    name = osp.basename(path)
    dcn = [m for m in model.modules() if isinstance(m, (ModulatedDeformConv2dPack, DeformConv2dPack))]
    if '-mdconv' in name or 'fpn-mdconv' in name:
        assert dcn and all(isinstance(m, ModulatedDeformConv2dPack) for m in dcn)
    elif '-dconv' in name:
        assert dcn and all(type(m) is DeformConv2dPack for m in dcn)
    else:
        assert not dcn
    if 'group4' in name:
        assert {m.deform_groups for m in dcn} == {4}
    if 'fpn-mdconv' in name:
        assert all(n.startswith('neck.') for n, m in model.named_modules() if m in dcn)
    elif dcn:  # c3-c5: stages 2-4 of the backbone, every block, none in c2
        names = [n for n, m in model.named_modules() if isinstance(m, (ModulatedDeformConv2dPack, DeformConv2dPack))]
        assert all(n.startswith(('backbone.layer2', 'backbone.layer3', 'backbone.layer4')) for n in names)
        assert any(n.startswith('backbone.layer2') for n in names)
        assert any(n.startswith('backbone.layer4') for n in names)
    norm = {'gn-all': torch.nn.GroupNorm, 'sampleln-all': 'SampleLayerNorm2d', 'channelln-all': 'ChannelLayerNorm2d'}
    for key, kind in norm.items():
        if f'_{key}' in name:
            types = {type(m).__name__ for part in (model.neck, model.backbone) for m in part.modules()}
            want = kind if isinstance(kind, str) else kind.__name__
            assert want in types and 'BatchNorm2d' not in types
            if '/demo/' not in path:  # COCO configs: 4conv1fc head with the norm (the demo's head is 2fc)
                assert want in {type(m).__name__ for m in model.roi_head.bbox_head.modules()}
    if 'x101' in name:
        assert model.backbone.groups == 32 and model.backbone.base_width == 4 and model.backbone.depth == 101
    if 'r101' in name:
        assert model.backbone.depth == 101
    if '_amp-' in name:
        assert cfg.optim_wrapper.type == 'AmpOptimWrapper'
    _check_roi_pooling(name, model)


def _check_roi_pooling(name, model):
    from dcn_plugin.ops import DeformRoIPool, DeformRoIPoolPack, ModulatedDeformRoIPoolPack
    extractor = model.roi_head.bbox_roi_extractor
    layers = list(extractor.roi_layers)
    if '_dpool' not in name and '_mdpool' not in name:
        assert not any(isinstance(m, DeformRoIPool) for m in model.modules())
        return
    assert type(extractor).__name__ == 'DeformRoIExtractor'
    want = ModulatedDeformRoIPoolPack if '_mdpool' in name else DeformRoIPoolPack
    if extractor.share_offset_branch:  # the DCNv2 paper's form: one branch, plain pooling per level
        assert type(extractor.offset_branch) is want and all(type(m) is DeformRoIPool for m in layers)
        assert extractor.offset_branch.branch == 'paper' and layers[0].sampling_ratio == 2
    else:  # mmdet's layout: one branch per level
        assert all(type(m) is want for m in layers) and len(layers) == 4
    assert [m.spatial_scale for m in layers] == [1 / s for s in extractor.featmap_strides]
    # the parameter counts docs/models.md gives
    branch_params = sum(p.numel() for p in extractor.parameters())
    expected = {'faster-rcnn_r50_fpn_dpool_1x_coco.py': 4 * 13_996_130,
                'faster-rcnn_r50_fpn_mdpool_1x_coco.py': 4 * 26_892_435,
                'faster-rcnn_r50-mdconv-c3-c5_fpn_mdpool_1x_coco.py': 14_046_355,
                'faster-rcnn_r50-mdconv-c3-c5_fpn_mdpool_mimic_1x_coco.py': 14_046_355,
                'faster-rcnn_r18-mdconv-c3-c5_fpn_gn-all_mdpool_demo-shapes.py': 906_643,
                'faster-rcnn_r18-mdconv-c3-c5_fpn_gn-all_mdpool_mimic_demo-shapes.py': 906_643}
    assert branch_params == expected[name]


def test_demo_configs_run_forward_and_match_the_generator():
    from mmdet.structures import DetDataSample
    from mmengine.structures import InstanceData

    from dcn_plugin.datasets import DEMO_CLASSES
    for name in ('faster-rcnn_r18_fpn_gn-all_demo-shapes.py', 'faster-rcnn_r18-mdconv-c3-c5_fpn_gn-all_demo-shapes.py',
                 'faster-rcnn_r18-mdconv-c3-c5_fpn_gn-all_mdpool_demo-shapes.py',
                 'faster-rcnn_r18-dconv-c3-c5_fpn_gn-all_demo-shapes.py'):
        cfg = _load(osp.join(ROOT, 'configs', 'demo', name))
        assert tuple(cfg.metainfo['classes']) == DEMO_CLASSES
        assert cfg.model.roi_head.bbox_head.num_classes == len(DEMO_CLASSES)
        model = _build(cfg)
        torch.manual_seed(0)
        sample = DetDataSample(metainfo=dict(img_shape=(64, 64), pad_shape=(64, 64), batch_input_shape=(64, 64),
                                             scale_factor=(1.0, 1.0), ori_shape=(64, 64)))
        sample.gt_instances = InstanceData(bboxes=torch.tensor([[8.0, 8.0, 40.0, 30.0]]), labels=torch.tensor([1]))
        losses = model(torch.randn(1, 3, 64, 64), [sample], mode='loss')
        total = sum(v if torch.is_tensor(v) else sum(v) for k, v in losses.items() if 'loss' in k)
        assert torch.isfinite(total)
        total.backward()


def test_data_root_is_changeable_from_the_command_line():
    from dcn_plugin.apis import load_config
    cfg = load_config(osp.join(ROOT, 'configs', 'dcn', 'faster-rcnn_r50-mdconv-c3-c5_fpn_1x_coco.py'),
                      cfg_options={'data_root': '/datasets/coco'})
    assert cfg.data_root == '/datasets/coco/'
    assert cfg.train_dataloader.dataset.data_root == '/datasets/coco/'
    assert cfg.test_dataloader.dataset.data_root == '/datasets/coco/'
    assert cfg.val_evaluator.ann_file == '/datasets/coco/annotations/instances_val2017.json'
    assert cfg.test_evaluator.ann_file == '/datasets/coco/annotations/instances_val2017.json'


# R-CNN feature mimicking: each config is the same model as another shipped config, plus the branch
MIMIC_CONFIGS = {
    'dcn/faster-rcnn_r50-mdconv-c3-c5_fpn_mimic_1x_coco.py': 'dcn/faster-rcnn_r50-mdconv-c3-c5_fpn_1x_coco.py',
    'dcn/faster-rcnn_r50-mdconv-c3-c5_fpn_mdpool_mimic_1x_coco.py':
        'dcn/faster-rcnn_r50-mdconv-c3-c5_fpn_mdpool_1x_coco.py',
    'demo/faster-rcnn_r18_fpn_gn-all_mimic_demo-shapes.py': 'demo/faster-rcnn_r18_fpn_gn-all_demo-shapes.py',
    'demo/faster-rcnn_r18-mdconv-c3-c5_fpn_gn-all_mimic_demo-shapes.py':
        'demo/faster-rcnn_r18-mdconv-c3-c5_fpn_gn-all_demo-shapes.py',
    'demo/faster-rcnn_r18-mdconv-c3-c5_fpn_gn-all_mdpool_mimic_demo-shapes.py':
        'demo/faster-rcnn_r18-mdconv-c3-c5_fpn_gn-all_mdpool_demo-shapes.py',
}


def test_every_mimic_config_has_its_counterpart_listed():
    assert {osp.relpath(p, osp.join(ROOT, 'configs')) for p in CONFIGS if '_mimic_' in p} == set(MIMIC_CONFIGS)


@pytest.mark.parametrize('mimic, plain', MIMIC_CONFIGS.items(), ids=list(MIMIC_CONFIGS))
def test_mimic_config_is_its_counterpart_plus_the_branch(mimic, plain):
    a, b = (_load(osp.join(ROOT, 'configs', p)) for p in (mimic, plain))
    assert (a.model.type, a.model.roi_head.type) == ('MimicFasterRCNN', 'MimicRoIHead')
    assert (b.model.type, b.model.roi_head.type) == ('FasterRCNN', 'StandardRoIHead')
    ma, mb = a.model.to_dict(), b.model.to_dict()
    branch = {k: ma['roi_head'].pop(k) for k in list(ma['roi_head']) if k.startswith(('mimic_', 'loss_mimic'))}
    for m in (ma, mb):
        m.pop('type')
        m['roi_head'].pop('type')
    assert ma == mb  # same detector: only the branch differs
    rest = lambda cfg: {k: v for k, v in cfg.to_dict().items() if k != 'model'}  # noqa: E731
    assert rest(a) == rest(b)  # same data, schedule and runtime
    model_a, model_b = _build(a), _build(b)
    head = model_a.roi_head
    if 'coco' in mimic:  # the paper's settings, which are the head's defaults
        assert branch == {}
        assert (head.mimic_num_rois, head.mimic_crop_size, head.mimic_positives_only, head.mimic_detach_rcnn,
                head.loss_mimic_weight) == (32, (224, 224), True, True, 0.1)
        assert type(head.loss_mimic_cls).__name__ == 'CrossEntropyLoss' and head.loss_mimic_cls.loss_weight == 0.1
        assert not head.loss_mimic_cls.use_sigmoid
        assert a.model.roi_head.bbox_roi_extractor.get('finest_scale', 56) == 56
    else:  # scaled to the demo's 256 px images and CPU budget
        assert branch == dict(mimic_num_rois=8, mimic_crop_size=64)
    # the branch's only parameters are the unshared classifier's
    extra = set(model_a.state_dict()) - set(model_b.state_dict())
    assert extra == {'roi_head.mimic_cls.weight', 'roi_head.mimic_cls.bias'}
    assert set(model_b.state_dict()) <= set(model_a.state_dict())
    num_classes = a.model.roi_head.bbox_head.num_classes
    assert model_a.roi_head.mimic_cls.out_features == num_classes + 1
    if '/demo/' in mimic:  # a training step through the branch
        from mmdet.structures import DetDataSample
        from mmengine.structures import InstanceData
        torch.manual_seed(0)
        sample = DetDataSample(metainfo=dict(img_shape=(96, 96), pad_shape=(96, 96), batch_input_shape=(96, 96),
                                             scale_factor=(1.0, 1.0), ori_shape=(96, 96)))
        sample.gt_instances = InstanceData(bboxes=torch.tensor([[8.0, 8.0, 60.0, 50.0]]), labels=torch.tensor([1]))
        losses = model_a(torch.randn(1, 3, 96, 96), [sample], mode='loss')
        assert losses['mimic_num_rois'].item() >= 1
        loss, _ = model_a.parse_losses(losses)
        assert torch.isfinite(loss)
        loss.backward()
        assert model_a.roi_head.mimic_cls.weight.grad.abs().sum() > 0


def test_the_model_zoo_lists_every_shipped_config_once():
    """configs/dcn/metafile.yml (imported by model-index.yml) and configs/dcn/README.md name every config;
    mmdet's COCO numbers are labelled as theirs, ours carry their source."""
    import yaml
    with open(osp.join(ROOT, 'model-index.yml')) as f:
        index = yaml.safe_load(f)
    assert 'configs/dcn/metafile.yml' in index['Import']
    listed = []
    for meta_path in index['Import']:
        with open(osp.join(ROOT, meta_path)) as f:
            meta = yaml.safe_load(f)
        collections = {c['Name'] for c in meta['Collections']}
        for model in meta['Models']:
            assert model['In Collection'] in collections
            assert model['Name'] == osp.splitext(osp.basename(model['Config']))[0]
            listed.append(model['Config'])
            published = model.get('Published Results')
            if published is not None:
                assert published['Source'].startswith('mmdet 3.3.0 model zoo (not trained with this package)')
                assert published['Dataset'] == 'COCO' and 0 < published['Metrics']['box AP'] < 100
            for result in model.get('Results', []):
                assert '/demo/' in model['Config'] and result['Source'].startswith('docs/demo.md')
    shipped = sorted(osp.relpath(p, ROOT) for p in CONFIGS)
    assert sorted(listed) == shipped
    readme = open(osp.join(ROOT, 'configs', 'dcn', 'README.md')).read()
    for path in shipped:
        name = osp.basename(path)
        assert (f'({name})' in readme) or (f'(../demo/{name})' in readme), name
    assert 'No COCO training was run with this package' in readme
