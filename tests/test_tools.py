"""Wiring of the tools and the library code under them: safe checkpoint loading, config handling,
offset visualisation maths, and (slow) train -> test round trip, resume, 2-process CPU run."""
import json
import os
import os.path as osp
import pickle
import subprocess

import numpy as np
import pytest
import torch
from torch import nn

from tiny_detector import PY, ROOT, assert_same_training_state, load, run, write_tiny

HAVE_MMDET = all(__import__('importlib').util.find_spec(m) is not None for m in ('mmdet', 'mmcv'))
needs_mmdet = pytest.mark.skipif(not HAVE_MMDET, reason='needs mmdet and mmcv')


# --------------------------------------------------------------------------- safe checkpoint loading
def _toy_runner(work_dir, max_iters, resume=False, load_from=None):
    """A real mmengine Runner whose checkpoints carry numpy scalars/arrays in message hub and meta."""
    from mmengine.hooks import Hook
    from mmengine.model import BaseModel
    from mmengine.runner import Runner

    class Toy(BaseModel):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(2, 1)

        def forward(self, x, y=None, mode='loss'):
            out = self.lin(torch.stack(x) if isinstance(x, list) else x)
            return dict(loss=((out - 1) ** 2).mean()) if mode == 'loss' else out

    class NumpyInfo(Hook):
        def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):
            runner.message_hub.update_info('np_float', np.float64(1.5))
            runner.message_hub.update_info('np_int', np.int64(runner.iter))
            runner.message_hub.update_info('np_array', np.arange(3, dtype=np.float32))
            runner.message_hub.update_scalar('train/np_metric', np.float32(0.25))

        def before_save_checkpoint(self, runner, checkpoint):
            checkpoint['meta']['np_best'] = np.float32(0.5)

    g = torch.Generator().manual_seed(0)
    data = [dict(x=torch.randn(2, generator=g), y=0) for _ in range(8)]
    torch.manual_seed(0)  # same initial weights in every run
    return Runner(
        model=Toy(), work_dir=str(work_dir),
        train_dataloader=dict(dataset=data, sampler=dict(type='DefaultSampler', shuffle=True, seed=0),
                              batch_size=2, collate_fn=dict(type='default_collate')),
        train_cfg=dict(by_epoch=False, max_iters=max_iters),
        optim_wrapper=dict(optimizer=dict(type='SGD', lr=0.1, momentum=0.9)),
        param_scheduler=dict(type='MultiStepLR', by_epoch=False, milestones=[3]),
        default_hooks=dict(checkpoint=dict(type='CheckpointHook', interval=2, by_epoch=False)),
        custom_hooks=[NumpyInfo()], randomness=dict(seed=0), resume=resume, load_from=load_from,
        experiment_name=f'toy_{osp.basename(str(work_dir))}_{max_iters}_{int(resume)}')


@pytest.fixture(scope='module')
def toy_checkpoint(tmp_path_factory):
    wd = tmp_path_factory.mktemp('toy')
    _toy_runner(wd, 4).train()
    return wd, str(wd / 'iter_4.pth')


def test_checkpoint_with_numpy_needs_the_allow_list(toy_checkpoint):
    # without our allow-list torch's weights_only default refuses the checkpoint (fresh process)
    _, ckpt = toy_checkpoint
    code = ('import torch, pickle, sys\n'
            f'try:\n    torch.load({ckpt!r})\nexcept pickle.UnpicklingError as e:\n    sys.exit(3)\n')
    assert subprocess.run([PY, '-c', code]).returncode == 3


def test_checkpoint_with_numpy_loads_and_resumes(toy_checkpoint, tmp_path):
    from mmengine.runner.checkpoint import _load_checkpoint

    from dcn_plugin.utils import register_safe_checkpoint_globals
    register_safe_checkpoint_globals()
    wd, ckpt = toy_checkpoint
    loaded = _load_checkpoint(ckpt, map_location='cpu')  # torch.load with its weights_only default
    info = loaded['message_hub']['runtime_info']
    assert isinstance(info['np_float'], np.float64) and info['np_float'] == 1.5
    assert loaded['meta']['np_best'] == np.float32(0.5)
    assert loaded['message_hub']['log_scalars']['train/np_metric'].mean() == pytest.approx(0.25)
    # resume: 4 iterations, resume, 2 more == 6 straight
    resumed = _toy_runner(tmp_path / 'resumed', 6, resume=True, load_from=ckpt)
    resumed.train()
    straight = _toy_runner(tmp_path / 'straight', 6)
    straight.train()
    assert resumed.iter == straight.iter == 6
    for a, b in zip(resumed.model.parameters(), straight.model.parameters()):
        torch.testing.assert_close(a, b)


class _RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f'touch {self.marker}',))


class _GetattrEscape:
    def __reduce__(self):
        from mmengine.logging import HistoryBuffer
        return (getattr, (HistoryBuffer, '__init__'))


@pytest.mark.parametrize('payload', ['os.system', 'getattr'])
def test_checkpoint_that_runs_code_is_refused(tmp_path, payload):
    from mmengine.runner import load_checkpoint

    from dcn_plugin.utils import register_safe_checkpoint_globals
    register_safe_checkpoint_globals()
    marker = tmp_path / 'pwned'
    evil = _RunsCode(marker) if payload == 'os.system' else _GetattrEscape()
    path = tmp_path / 'evil.pth'
    torch.save({'state_dict': {'lin.weight': torch.zeros(1, 2)}, 'meta': {'x': evil}}, path)
    with pytest.raises(pickle.UnpicklingError):
        load_checkpoint(nn.Linear(2, 1), str(path), map_location='cpu')
    assert not marker.exists()


# --------------------------------------------------------------------------- offset maths
def _record(offset_dy=0.0, offset_dx=0.0, hw=(8, 8), stride=1, mask=1.0, name='backbone.l'):
    from dcn_plugin.visualization.offsets import DCNRecord
    off = torch.zeros(1, 9, 2, *hw)
    off[:, :, 0] = offset_dy
    off[:, :, 1] = offset_dx
    out_hw = (hw[0] // stride, hw[1] // stride)
    off = off[..., :out_hw[0], :out_hw[1]]
    return DCNRecord(name, off, torch.full((1, 9, *out_hw), mask), True, hw, out_hw, (3, 3), (stride, stride),
                     (1, 1), (1, 1))


def test_zero_offsets_give_the_regular_grid_stacked():
    from dcn_plugin.visualization.offsets import stack_sampling_locations
    recs = [_record(), _record()]
    pts, w, origin = stack_sampling_locations(recs, (4, 4), (8, 8), num_layers=2)
    assert pts.shape == (81, 2) and w.shape == (81,)
    np.testing.assert_allclose(origin, (4, 4))
    # two stacked 3x3 layers reach a 5x5 neighbourhood
    assert set(map(tuple, pts.round(6).tolist())) == {(x, y) for x in range(2, 7) for y in range(2, 7)}
    np.testing.assert_allclose(w, 1.0)


def test_offsets_and_masks_move_and_weight_the_points():
    from dcn_plugin.visualization.offsets import stack_sampling_locations
    pts, w, _ = stack_sampling_locations([_record(1.0, -2.0, mask=0.5)], (4, 4), (8, 8), num_layers=1)
    grid = {(x - 2.0, y + 1.0) for x in range(3, 6) for y in range(3, 6)}
    assert set(map(tuple, pts.tolist())) == grid
    np.testing.assert_allclose(w, 0.5)
    # two layers: weights multiply
    _, w2, _ = stack_sampling_locations([_record(mask=0.5), _record(mask=0.5)], (4, 4), (8, 8), num_layers=2)
    np.testing.assert_allclose(w2, 0.25)


def test_strided_maps_are_mapped_through_image_pixels():
    from dcn_plugin.visualization.offsets import stack_sampling_locations
    # one layer on a stride-4 map (8x8 map of a 32x32 input): cells are 4 pixels apart
    pts, _, origin = stack_sampling_locations([_record()], (17.5, 17.5), (32, 32), num_layers=1)
    np.testing.assert_allclose(origin, (17.5, 17.5))
    xs = sorted(set(pts[:, 0].tolist()))
    np.testing.assert_allclose(np.diff(xs), 4.0)


def test_record_dcn_layers_sees_every_dcn_call():
    from dcn_plugin import DeformConv2dPack, ModulatedDeformConv2dPack
    from dcn_plugin.visualization.offsets import draw_sampling_locations, record_dcn_layers, stack_sampling_locations
    model = nn.Sequential(ModulatedDeformConv2dPack(3, 4, 3, padding=1), nn.ReLU(),
                          ModulatedDeformConv2dPack(4, 4, 3, stride=2, padding=1), DeformConv2dPack(4, 4, 3, padding=1))
    with record_dcn_layers(model) as recs:
        model(torch.randn(2, 3, 16, 16))
    assert [r.name for r in recs] == ['0', '2', '3']
    assert recs[1].out_hw == (8, 8) and recs[1].in_hw == (16, 16) and recs[1].modulated
    assert not recs[2].modulated
    np.testing.assert_allclose(recs[0].mask.numpy(), 0.5)  # fresh layer: zero offsets, mask 0.5
    pts, w, origin = stack_sampling_locations(recs[:2], (8, 8), (16, 16), num_layers=2)
    assert pts.shape == (81, 2)
    pic = draw_sampling_locations(np.zeros((16, 16, 3), np.uint8), [(pts, w, origin)], modulated=True)
    assert pic.ndim == 3 and pic.dtype == np.uint8
    # hooks are removed on exit
    assert not any(m._forward_hooks for m in model.modules())


def test_overlapping_detections_get_one_panel():
    """mmdet's NMS is per class: one object detected under two labels must not give two near-identical panels."""
    from dcn_plugin.visualization import PANEL_IOU, select_panel_boxes
    boxes = np.array([[10, 10, 50, 50], [12, 11, 51, 52], [60, 60, 90, 90], [0, 0, 30, 30], [11, 9, 49, 50.]])
    scores = np.array([0.6, 0.9, 0.8, 0.7, 0.5])
    assert PANEL_IOU == 0.5
    assert select_panel_boxes(boxes, scores, topk=3) == [1, 2, 3]  # 0 and 4 overlap the better 1 (IoU > 0.5)
    assert select_panel_boxes(boxes, scores, topk=16) == [1, 2, 3]
    assert select_panel_boxes(boxes, scores, topk=2) == [1, 2]
    assert select_panel_boxes(boxes, scores, topk=5, iou_thr=1.0) == [1, 2, 3, 0, 4]
    assert select_panel_boxes(np.zeros((0, 4)), np.zeros(0), topk=3) == []


def test_each_panel_outlines_its_own_detection():
    from dcn_plugin.visualization.offsets import PANEL_BOX_COLOUR, draw_sampling_locations
    image = np.zeros((40, 80, 3), np.uint8)
    boxes = [np.array([4., 4., 30., 30.]), np.array([44., 6., 76., 34.])]
    panels = [(np.array([[17., 17.]]), np.ones(1), np.array([17., 17.])),
              (np.array([[60., 20.]]), np.ones(1), np.array([60., 20.]))]
    pic = draw_sampling_locations(image, panels, modulated=False, boxes=np.stack(boxes), upscale=1,
                                  panel_boxes=boxes)
    colour = np.all(pic == np.array(PANEL_BOX_COLOUR, np.uint8), axis=-1)
    for index, own in enumerate(boxes):
        panel = colour[:40, index * 80:(index + 1) * 80]
        x1, y1, x2, y2 = own.astype(int)
        assert panel[y1 + 10, x1] and panel[y1 + 10, x2] and panel[y2, x1 + 10]  # its own box, in the colour
        other = boxes[1 - index].astype(int)
        assert not panel[other[1] + 10, other[0]] and not panel[other[1] + 10, other[2]]  # not the other's
    with pytest.raises(ValueError, match='one box \\(or None\\) per panel: 2 panels, 1 boxes'):
        draw_sampling_locations(image, panels, modulated=False, panel_boxes=boxes[:1])


# --------------------------------------------------------------------------- tool wiring (fast)
def _tool(name):
    import importlib.util
    spec = importlib.util.spec_from_file_location(f'tool_{name}', osp.join(ROOT, 'tools', f'{name}.py'))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@needs_mmdet
def test_train_and_test_parse_mmdet_style_arguments():
    args = _tool('train').parse_args(['cfg.py', '--amp', '--resume', '--cfg-options', 'a.b=1', 'data_root=/d/',
                                      '--launcher', 'pytorch'])
    assert args.amp and args.resume == 'auto' and args.cfg_options == {'a.b': 1, 'data_root': '/d/'}
    assert args.launcher == 'pytorch'
    assert _tool('train').parse_args(['cfg.py', '--resume', 'x.pth']).resume == 'x.pth'
    assert _tool('train').parse_args(['cfg.py']).resume is None
    args = _tool('test').parse_args(['cfg.py', 'ckpt.pth', '--show-dir', 'vis', '--work-dir', 'w'])
    assert (args.config, args.checkpoint, args.show_dir, args.work_dir) == ('cfg.py', 'ckpt.pth', 'vis', 'w')
    with pytest.raises(SystemExit) as e:
        _tool('visualize_offsets').main(['--help'])
    assert e.value.code == 0


DEMO_DCN = osp.join(ROOT, 'configs', 'demo', 'faster-rcnn_r18-mdconv-c3-c5_fpn_gn-all_demo-shapes.py')


@needs_mmdet
def test_load_config_defaults_and_overrides(monkeypatch):
    from dcn_plugin.apis import load_config, setup_test_cfg, setup_train_cfg
    cfg = load_config(DEMO_DCN)
    assert cfg.work_dir == osp.join('work_dirs', 'faster-rcnn_r18-mdconv-c3-c5_fpn_gn-all_demo-shapes')
    assert cfg.launcher == 'none' and 'model_wrapper_cfg' not in cfg
    cfg = load_config(DEMO_DCN, {'train_cfg.max_iters': 7, 'data_root': '/x/demo'}, work_dir='w')
    assert cfg.train_cfg.max_iters == 7 and cfg.work_dir == 'w'
    assert cfg.train_dataloader.dataset.data_root == '/x/demo/'
    assert cfg.test_evaluator.ann_file == '/x/demo/annotations/instances_val.json'
    # no GPU + a launcher: gloo and DDP without device_ids
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: False)
    cfg = load_config(DEMO_DCN, launcher='pytorch')
    assert cfg.env_cfg.dist_cfg.backend == 'gloo' and cfg.model_wrapper_cfg.device_ids is None
    setup_train_cfg(cfg, resume='auto')
    assert cfg.resume is True and cfg.load_from is None
    setup_train_cfg(cfg, resume='a.pth')
    assert cfg.load_from == 'a.pth'
    with pytest.raises(RuntimeError, match='--amp needs a GPU'):
        setup_train_cfg(cfg, amp=True)
    setup_test_cfg(cfg, 'c.pth', show_dir='vis')
    assert cfg.load_from == 'c.pth'
    assert cfg.default_hooks.visualization.draw and cfg.default_hooks.visualization.test_out_dir == 'vis'


def test_save_metrics_writes_json(tmp_path):
    from dcn_plugin.apis import save_metrics
    path = save_metrics({'coco/bbox_mAP': np.float64(0.5), 'n': torch.tensor(3)}, str(tmp_path), checkpoint='c.pth')
    with open(path) as f:
        rec = json.load(f)
    assert rec == {'checkpoint': 'c.pth', 'config': None, 'metrics': {'coco/bbox_mAP': 0.5, 'n': 3}}


def test_the_offset_recorder_uses_the_layers_own_offset_and_mask_split():
    """What is drawn is what the layer samples with: the module's ``offset_and_mask``."""
    from dcn_plugin.ops import DeformConv2dPack, ModulatedDeformConv2dPack
    from dcn_plugin.visualization import record_dcn_layers
    torch.manual_seed(0)
    for cls in (ModulatedDeformConv2dPack, DeformConv2dPack):
        layer = cls(4, 4, 3, padding=1, deform_groups=2)
        torch.nn.init.normal_(layer.conv_offset.weight, std=0.3)
        x = torch.randn(2, 4, 5, 6)
        with record_dcn_layers(layer) as records:
            layer(x)
        offset, mask = layer.offset_and_mask(x[:1])
        (rec,) = records
        assert torch.equal(rec.offset, offset.reshape(2, 9, 2, 5, 6))
        if mask is None:
            assert not rec.modulated and torch.equal(rec.mask, torch.ones(2, 9, 5, 6))
        else:
            assert rec.modulated and torch.equal(rec.mask, mask.reshape(2, 9, 5, 6))


def test_run_demo_script_is_valid_bash_with_help():
    script = osp.join(ROOT, 'tools', 'run_demo.sh')
    subprocess.run(['bash', '-n', script], check=True)
    out = subprocess.run(['bash', script, '--help'], capture_output=True, text=True, check=True).stdout
    assert '--plain' in out
    for sh in ('dist_train.sh', 'dist_test.sh', 'dist_run.sh'):
        subprocess.run(['bash', '-n', osp.join(ROOT, 'tools', sh)], check=True)


@pytest.mark.slow
def test_run_demo_says_it_continues_a_run_only_when_there_is_a_checkpoint(tmp_path):
    """A fresh clone trains from scratch and says so; a work dir with an intact checkpoint is continued from it
    (the training and evaluation tools are stand-ins here: only the script's own decisions run)."""
    import shutil
    import stat
    sandbox = tmp_path / 'repo'
    (sandbox / 'tools').mkdir(parents=True)
    shutil.copy(osp.join(ROOT, 'tools', 'run_demo.sh'), sandbox / 'tools')
    for tool in ('train.py', 'test.py', 'visualize_offsets.py', 'generate_demo_data.py', 'collect_metrics.py'):
        (sandbox / 'tools' / tool).write_text('import sys\nprint("stand-in", sys.argv[1:])\n')
    os.symlink(osp.join(ROOT, 'dcn_plugin'), sandbox / 'dcn_plugin')
    os.symlink(osp.join(ROOT, 'configs'), sandbox / 'configs')
    (sandbox / '.venv' / 'bin').mkdir(parents=True)
    python = sandbox / '.venv' / 'bin' / 'python'
    python.write_text(f'#!/bin/sh\nexec {PY} "$@"\n')
    python.chmod(python.stat().st_mode | stat.S_IEXEC)
    wd = sandbox / 'work_dirs' / 'faster-rcnn_r18-mdconv-c3-c5_fpn_gn-all_demo-shapes'
    wd.mkdir(parents=True)
    (wd / 'last_checkpoint').write_text(str(wd / 'iter_1000.pth'))  # what the stand-in train.py leaves behind

    def demo():
        return run(['bash', str(sandbox / 'tools' / 'run_demo.sh'), '--no-setup'], cwd=str(sandbox)).out

    out = demo()
    assert 'from scratch' in out and 'continues' not in out, out[-2000:]
    (wd / 'last_checkpoint').unlink()
    torch.save({'state_dict': {}}, wd / 'iter_500.pth')
    (wd / 'last_checkpoint').write_text(str(wd / 'iter_500.pth'))
    out = demo()
    assert f'continues the interrupted run from {wd / "iter_500.pth"}' in out and 'from scratch' not in out, out


# --------------------------------------------------------------------------- the tools, end to end (slow)
@pytest.fixture(scope='module')
def tiny(tmp_path_factory):
    """Tiny demo data (96 px), a config that trains on it, and a 4-iteration run of tools/train.py."""
    if not HAVE_MMDET:
        pytest.skip('needs mmdet and mmcv')
    base = tmp_path_factory.mktemp('tiny')
    made = write_tiny(base)
    straight = base / 'straight'
    out = _run([PY, 'tools/train.py', made['cfg'], '--work-dir', str(straight)])
    return dict(base=base, root=made['root'], cfg=made['cfg'], straight=straight, train_log=out)


def _state(path):
    return load(str(path))


def _run(args, **kwargs):
    return run(args, **kwargs).out


@pytest.mark.slow
def test_train_writes_checkpoints_in_the_work_dir(tiny):
    assert (tiny['straight'] / 'iter_2.pth').exists() and (tiny['straight'] / 'iter_4.pth').exists()
    ckpt = _state(tiny['straight'] / 'iter_4.pth')
    assert ckpt['meta']['iter'] == 4
    assert any('conv_offset' in k for k in ckpt['state_dict'])  # the DCN model was trained


@pytest.mark.slow
def test_test_prints_and_saves_coco_metrics_and_draws(tiny):
    wd = tiny['base'] / 'test_wd'
    out = _run([PY, 'tools/test.py', tiny['cfg'], str(tiny['straight'] / 'iter_4.pth'), '--work-dir', str(wd),
                '--show-dir', 'vis'])
    assert 'Average Precision  (AP) @[ IoU=0.50:0.95 | area=   all | maxDets=100 ]' in out  # pycocotools
    assert 'bbox_mAP' in out
    with open(wd / 'test_metrics.json') as f:
        record = json.load(f)
    assert 0.0 <= record['metrics']['coco/bbox_mAP'] <= 1.0
    assert record['checkpoint'].endswith('iter_4.pth')
    drawn = [p for p in wd.rglob('vis/*') if p.suffix in ('.png', '.jpg')]
    assert len(drawn) == 4


@pytest.mark.slow
def test_resume_continues_exactly(tiny):
    wd = tiny['base'] / 'interrupted'
    _run([PY, 'tools/train.py', tiny['cfg'], '--work-dir', str(wd), '--cfg-options', 'train_cfg.max_iters=2'])
    assert (wd / 'iter_2.pth').exists() and not (wd / 'iter_4.pth').exists()
    out = _run([PY, 'tools/train.py', tiny['cfg'], '--work-dir', str(wd), '--resume'])
    assert 'resumed' in out.lower() and 'iter_2.pth' in out
    a, b = _state(tiny['straight'] / 'iter_4.pth'), _state(wd / 'iter_4.pth')
    assert a['meta']['iter'] == 4
    assert_same_training_state(a, b)


@pytest.mark.slow
def test_visualize_offsets_writes_a_png(tiny):
    out_png = tiny['base'] / 'offsets.png'
    _run([PY, 'tools/visualize_offsets.py', tiny['cfg'], str(tiny['straight'] / 'iter_4.pth'),
          osp.join(tiny['root'], 'val', '000000.png'), '--points', '48,48', '30,60', '--out', str(out_png)])
    import cv2
    pic = cv2.imread(str(out_png))
    assert pic is not None and pic.shape[1] == 2 * 96 * 2  # two panels, upscaled 2x


def _free_port():
    import socket
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return str(s.getsockname()[1])


@pytest.mark.slow
def test_two_process_cpu_distributed_train_and_test(tiny):
    wd = tiny['base'] / 'dist'
    env = {'PORT': _free_port(), 'PYTHON': PY, 'OMP_NUM_THREADS': '1'}
    out = _run(['bash', 'tools/dist_train.sh', tiny['cfg'], '2', '--work-dir', str(wd),
                '--cfg-options', 'train_cfg.max_iters=2'], env=env)
    assert 'distributed on CPU: backend gloo, world size 2' in out, out[-4000:]
    assert 'Distributed training: True' in out, out[-4000:]
    assert (wd / 'iter_2.pth').exists()
    env['PORT'] = _free_port()
    out = _run(['bash', 'tools/dist_test.sh', tiny['cfg'], str(wd / 'iter_2.pth'), '2', '--work-dir', str(wd)],
               env=env)
    assert 'bbox_mAP' in out, out[-4000:]
    assert (wd / 'test_metrics.json').exists()


def test_package_lookup_without_pkg_resources():
    # mmengine resolves 'mmdet::' base configs through these; setuptools >= 81 has no pkg_resources
    from dcn_plugin.utils.compat import get_installed_path, is_installed
    assert is_installed('torch') and not is_installed('surely-not-installed-pkg')
    assert osp.isfile(osp.join(get_installed_path('torch'), '__init__.py'))
    if HAVE_MMDET:
        assert osp.isdir(osp.join(get_installed_path('mmdet'), '.mim', 'configs'))


# --------------------------------------------------------------------------- checkpoints that do not fit
def _plain_checkpoint(tiny, path):
    """An mmdet-format checkpoint of the tiny config's model with plain convs (no conv_offset)."""
    from mmdet.registry import MODELS
    from mmengine.config import Config
    from mmengine.registry import init_default_scope

    from tiny_detector import DEMO_PLAIN
    init_default_scope('mmdet')
    cfg = Config.fromfile(tiny['cfg'])
    cfg.model.backbone.type = 'ResNet'
    cfg.model.backbone.pop('dcn', None)
    cfg.model.backbone.pop('stage_with_dcn', None)
    assert osp.isfile(DEMO_PLAIN)
    model = MODELS.build(cfg.model)
    torch.save({'meta': {'epoch': 0, 'iter': 2}, 'state_dict': model.state_dict()}, path)
    return str(path)


@pytest.mark.slow
def test_test_refuses_a_checkpoint_of_another_architecture(tiny):
    wd = tiny['base'] / 'test_mismatch'
    plain = _plain_checkpoint(tiny, tiny['base'] / 'plain.pth')
    proc = run([PY, 'tools/test.py', tiny['cfg'], plain, '--work-dir', str(wd)], check=False)
    assert proc.returncode == 1, proc.out[-3000:]
    err = proc.stderr
    assert f'test.py: error: cannot load checkpoint {plain}: its weights do not fit the model' in err
    assert 'key(s) of the model are missing from the checkpoint: backbone.layer2.0.conv1.conv_offset.weight' in err
    assert 'comes from a model with plain convolutions where this one has DCN layers' in err
    assert '--allow-partial-load' in err and 'Traceback' not in err
    assert not (wd / 'test_metrics.json').exists()
    # the explicit opt-in evaluates what fits, with a warning that says what did not
    out = run([PY, 'tools/test.py', tiny['cfg'], plain, '--work-dir', str(wd), '--allow-partial-load']).out
    assert 'fits the model only partly' in out and 'bbox_mAP' in out
    assert (wd / 'test_metrics.json').exists()


@pytest.mark.slow
def test_test_refuses_mis_shaped_weights(tiny):
    proc = run([PY, 'tools/test.py', tiny['cfg'], str(tiny['straight'] / 'iter_4.pth'), '--work-dir',
                str(tiny['base'] / 'test_shape'), '--cfg-options', 'model.roi_head.bbox_head.num_classes=3'],
               check=False)
    assert proc.returncode == 1
    assert ('tensor(s) have another shape: roi_head.bbox_head.fc_cls.weight (checkpoint (6, 256), model (4, 256))'
            in proc.stderr), proc.stderr[-3000:]


@pytest.mark.slow
def test_resuming_a_dcn_run_from_a_plain_checkpoint_says_why_it_cannot(tiny):
    plain = _plain_checkpoint(tiny, tiny['base'] / 'plain_resume.pth')
    proc = run([PY, 'tools/train.py', tiny['cfg'], '--work-dir', str(tiny['base'] / 'resume_plain'),
                '--resume', plain], check=False)
    assert proc.returncode == 1, proc.out[-3000:]
    assert f'train.py: error: cannot resume from checkpoint {plain}: its weights do not fit the model' in proc.stderr
    assert 'plain convolutions where this one has DCN layers' in proc.stderr
    assert 'optimizer' not in proc.stderr.lower()


@needs_mmdet
def test_visualize_offsets_loads_checkpoints_strictly(tmp_path):
    from dcn_plugin import ModulatedDeformConv2dPack
    from dcn_plugin.utils.state_dict import CheckpointMismatchError, load_model_checkpoint
    model = nn.Sequential(ModulatedDeformConv2dPack(3, 4, 3, padding=1))
    plain = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1))
    torch.save({'state_dict': plain.state_dict()}, tmp_path / 'plain.pth')
    with pytest.raises(CheckpointMismatchError, match=r'0\.conv_offset\.weight.*\n.*plain convolutions'):
        load_model_checkpoint(model, str(tmp_path / 'plain.pth'), remedy='pass --allow-partial-load')
    load_model_checkpoint(model, str(tmp_path / 'plain.pth'), allow_partial_load=True)
    torch.testing.assert_close(model[0].weight.data, plain[0].weight.data)
    torch.save({'state_dict': model.state_dict()}, tmp_path / 'dcn.pth')
    load_model_checkpoint(model, str(tmp_path / 'dcn.pth'))


# --------------------------------------------------------------------------- tool arguments
@pytest.mark.parametrize('args,message', [  # a table of refused arguments: its rows are alike by design
    (['--num-layers', '0'], 'num_layers (--num-layers) must be a positive integer, got 0'),
    (['--num-layers', '-2'], 'num_layers (--num-layers) must be a positive integer, got -2'),
    (['--num-layers', '12'], 'use at most 5 layer(s)'),
    (['--group', '-1'], 'group (--group) must be a non-negative integer'),
    (['--topk', '0'], 'topk (--topk) must be an integer in [1, 16]'),
    (['--score-thr', 'nan'], 'score_thr (--score-thr) must be a number in [0, 1]'),
    (['--score-thr', '1.5'], 'score_thr (--score-thr) must be a number in [0, 1]'),
    (['--points'] + ['1,1'] * 17, 'points (--points) must list 1 to 16 positions'),
    (['--layers', '(unclosed'], 'layers (--layers) is not a valid regular expression'),
])
def test_visualize_offsets_rejects_bad_arguments_before_any_work(capsys, args, message):
    with pytest.raises(SystemExit) as e:
        _tool('visualize_offsets').main(['cfg.py', 'ckpt.pth', 'img.png'] + args)
    assert e.value.code == 2
    assert message in capsys.readouterr().err


def test_stacking_validates_layers_and_groups_against_the_model():
    from dcn_plugin.visualization.offsets import MAX_STACKED_POINTS, stack_sampling_locations
    recs = [_record(), _record(), _record()]
    with pytest.raises(ValueError, match='only 3 deformable layer'):
        stack_sampling_locations(recs, (4, 4), (8, 8), num_layers=4)
    with pytest.raises(ValueError, match='positive integer'):
        stack_sampling_locations(recs, (4, 4), (8, 8), num_layers=0)
    with pytest.raises(ValueError, match=r'group \(--group\) must be below 1: the stacked layers have 1 deform'):
        stack_sampling_locations(recs, (4, 4), (8, 8), num_layers=1, group=1)  # was clamped silently
    many = [_record() for _ in range(12)]
    with pytest.raises(ValueError, match=f'more than {MAX_STACKED_POINTS} sampling points'):
        stack_sampling_locations(many, (4, 4), (8, 8), num_layers=12)  # 9**12 points: refused, not allocated
    pts, _, _ = stack_sampling_locations(many, (4, 4), (8, 8), num_layers=5)
    assert pts.shape == (9 ** 5, 2)


@needs_mmdet
def test_visualize_offsets_refuses_points_outside_the_image(tiny):
    from dcn_plugin.visualization import visualize_offsets
    with pytest.raises(ValueError, match=r'points \(--points\): \(200.0, 5.0\) is outside the 96x96 image'):
        visualize_offsets(tiny['cfg'], None, osp.join(tiny['root'], 'val', '000000.png'), points=[(200.0, 5.0)])


@pytest.mark.parametrize('args,message', [  # a table of refused arguments: its rows are alike by design
    (['--size', '20'], 'image size (--size) must be an integer from 64 to 2048 pixels, got 20; smaller images'),
    (['--size', '0'], 'image size (--size) must be an integer from 64 to 2048 pixels, got 0'),
    (['--size', '100000'], 'from 64 to 2048 pixels, got 100000'),
    (['--train', '-3'], 'number of train images (--train) must be a positive integer, got -3'),
    (['--train', '0'], 'number of train images (--train) must be a positive integer, got 0'),
    (['--val', '0'], 'number of val images (--val) must be a positive integer, got 0'),
    (['--seed', '-1'], 'seed (--seed) must be a non-negative integer, got -1'),
])
def test_generate_demo_data_rejects_impossible_sizes_and_counts(tmp_path, capsys, args, message):
    out = tmp_path / 'demo'
    with pytest.raises(SystemExit) as e:
        _tool('generate_demo_data').main(['--out', str(out)] + args)
    assert e.value.code == 2
    assert message in capsys.readouterr().err
    assert not out.exists()  # nothing written


def test_generate_demo_data_accepts_the_smallest_size(tmp_path):
    from dcn_plugin.datasets import MIN_IMAGE_SIZE, demo_dataset_exists
    _tool('generate_demo_data').main(['--out', str(tmp_path), '--size', str(MIN_IMAGE_SIZE), '--train', '1',
                                      '--val', '1'])
    assert demo_dataset_exists(str(tmp_path))


def test_generate_demo_data_if_missing_leaves_a_complete_dataset_alone(tmp_path, capsys):
    """What run_demo.sh and mimic_study.sh call: generate once, then only report."""
    tool = _tool('generate_demo_data')
    tool.main(['--out', str(tmp_path), '--size', '64', '--train', '1', '--val', '1', '--if-missing'])
    image = tmp_path / 'train' / '000000.png'
    stamp = image.stat().st_mtime_ns
    tool.main(['--out', str(tmp_path), '--size', '64', '--train', '1', '--val', '1', '--if-missing'])
    assert f'demo data present in {tmp_path}' in capsys.readouterr().out
    assert image.stat().st_mtime_ns == stamp
