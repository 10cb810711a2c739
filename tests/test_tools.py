"""Wiring of the tools and the library code under them: safe checkpoint loading, config handling,
offset visualisation maths, and (slow) train -> test round trip, resume, 2-process CPU run."""
import json
import os
import os.path as osp
import pickle
import subprocess
import sys

import numpy as np
import pytest
import torch
from torch import nn

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
PY = sys.executable
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
    from dcn_plugin.apis.offsets import DCNRecord
    off = torch.zeros(1, 9, 2, *hw)
    off[:, :, 0] = offset_dy
    off[:, :, 1] = offset_dx
    out_hw = (hw[0] // stride, hw[1] // stride)
    off = off[..., :out_hw[0], :out_hw[1]]
    return DCNRecord(name, off, torch.full((1, 9, *out_hw), mask), True, hw, out_hw, (3, 3), (stride, stride),
                     (1, 1), (1, 1))


def test_zero_offsets_give_the_regular_grid_stacked():
    from dcn_plugin.apis.offsets import stack_sampling_locations
    recs = [_record(), _record()]
    pts, w, origin = stack_sampling_locations(recs, (4, 4), (8, 8), num_layers=2)
    assert pts.shape == (81, 2) and w.shape == (81,)
    np.testing.assert_allclose(origin, (4, 4))
    # two stacked 3x3 layers reach a 5x5 neighbourhood
    assert set(map(tuple, pts.round(6).tolist())) == {(x, y) for x in range(2, 7) for y in range(2, 7)}
    np.testing.assert_allclose(w, 1.0)


def test_offsets_and_masks_move_and_weight_the_points():
    from dcn_plugin.apis.offsets import stack_sampling_locations
    pts, w, _ = stack_sampling_locations([_record(1.0, -2.0, mask=0.5)], (4, 4), (8, 8), num_layers=1)
    grid = {(x - 2.0, y + 1.0) for x in range(3, 6) for y in range(3, 6)}
    assert set(map(tuple, pts.tolist())) == grid
    np.testing.assert_allclose(w, 0.5)
    # two layers: weights multiply
    _, w2, _ = stack_sampling_locations([_record(mask=0.5), _record(mask=0.5)], (4, 4), (8, 8), num_layers=2)
    np.testing.assert_allclose(w2, 0.25)


def test_strided_maps_are_mapped_through_image_pixels():
    from dcn_plugin.apis.offsets import stack_sampling_locations
    # one layer on a stride-4 map (8x8 map of a 32x32 input): cells are 4 pixels apart
    pts, _, origin = stack_sampling_locations([_record()], (17.5, 17.5), (32, 32), num_layers=1)
    np.testing.assert_allclose(origin, (17.5, 17.5))
    xs = sorted(set(pts[:, 0].tolist()))
    np.testing.assert_allclose(np.diff(xs), 4.0)


def test_record_dcn_layers_sees_every_dcn_call():
    from dcn_plugin import DeformConv2dPack, ModulatedDeformConv2dPack
    from dcn_plugin.apis.offsets import draw_sampling_locations, record_dcn_layers, stack_sampling_locations
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
