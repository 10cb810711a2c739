"""Resuming is exact: a run resumed from a checkpoint ends with the same weights, optimizer state and
schedulers as the uninterrupted run, whether the checkpoint was taken at an epoch boundary or in the
middle of an epoch, with 0 or 1 DataLoader workers, persistent or not, with the demo configs' endless
``InfiniteSampler`` (where the data order wraps around after iteration 2 instead of an epoch ending)
and with mmengine's ``DefaultSampler`` (epochs).

The detector draws from torch's global generator every iteration (RPN / RoI samplers); a DataLoader
draws from it whenever it creates an epoch's iterator. The tiny run has 4 training images in batches
of 2, so epochs end after iterations 2, 4, ...
"""
import os.path as osp

import pytest
import torch

from tiny_detector import assert_same_training_state, load, write_tiny

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not all(__import__('importlib').util.find_spec(m) for m in ('mmdet', 'mmcv')),
                                 reason='needs mmdet and mmcv')]

WORKERS = [pytest.param(0, False, id='0-workers'), pytest.param(1, False, id='1-worker'),
           pytest.param(1, True, id='1-persistent-worker')]
MAX_ITERS = 3
#: the demo configs' sampler, and the one mmdet's epoch-based configs use
SAMPLERS = ['InfiniteSampler', 'DefaultSampler']


@pytest.fixture(scope='module')
def tiny_cfg(tmp_path_factory):
    return write_tiny(tmp_path_factory.mktemp('resume'), train=4, val=2, seed=2)['cfg']


def train(cfg_path: str, work_dir: str, workers: int, persistent: bool, resume_from=None,
          sampler: str = 'InfiniteSampler'):
    """tools/train.py's wiring, in this process: checkpoint after every iteration."""
    from dcn_plugin.apis import build_runner, load_config, setup_train_cfg
    cfg = load_config(cfg_path, {'train_dataloader.sampler.type': sampler,
                                 'train_dataloader.num_workers': workers,
                                 'train_dataloader.persistent_workers': persistent,
                                 'train_cfg.max_iters': MAX_ITERS,
                                 'default_hooks.checkpoint.interval': 1,
                                 'default_hooks.logger.interval': 1}, work_dir=work_dir)
    cfg.experiment_name = osp.basename(work_dir)
    setup_train_cfg(cfg, resume=resume_from)
    runner = build_runner(cfg)
    runner.train()
    return runner


_straight = {}


def straight_run(tiny_cfg, tmp_path_factory, workers, persistent, sampler='InfiniteSampler'):
    key = (workers, persistent, sampler)
    if key not in _straight:
        wd = str(tmp_path_factory.mktemp(f'straight_{workers}_{int(persistent)}_{sampler}'))
        runner = train(tiny_cfg, wd, workers, persistent, sampler=sampler)
        assert type(runner.train_dataloader.batch_sampler.sampler).__name__ == sampler
        assert len(runner.train_dataloader) == 2, 'the tiny run needs epochs of 2 iterations'
        _straight[key] = wd
    return _straight[key]


@pytest.mark.parametrize('sampler', SAMPLERS)
@pytest.mark.parametrize('workers,persistent', WORKERS)
@pytest.mark.parametrize('resume_at', [pytest.param(2, id='epoch-boundary'), pytest.param(1, id='mid-epoch')])
def test_resumed_run_equals_the_uninterrupted_one(tiny_cfg, tmp_path_factory, workers, persistent, resume_at,
                                                  sampler):
    straight = straight_run(tiny_cfg, tmp_path_factory, workers, persistent, sampler)
    wd = str(tmp_path_factory.mktemp(f'resumed_{workers}_{int(persistent)}_{resume_at}_{sampler}'))
    runner = train(tiny_cfg, wd, workers, persistent, resume_from=osp.join(straight, f'iter_{resume_at}.pth'),
                   sampler=sampler)
    assert runner.iter == MAX_ITERS
    assert_same_training_state(load(osp.join(straight, f'iter_{MAX_ITERS}.pth')),
                               load(osp.join(wd, f'iter_{MAX_ITERS}.pth')))


def test_torch_rng_states_are_saved_and_a_plain_load_does_not_restore_them(tiny_cfg, tmp_path_factory):
    straight = straight_run(tiny_cfg, tmp_path_factory, 0, False)
    ckpt = load(osp.join(straight, 'iter_2.pth'))
    assert isinstance(ckpt['dcn_plugin_torch_rng_state']['cpu'], torch.Tensor)
    from dcn_plugin.engine.hooks import TorchRNGStateHook

    class FakeRunner:
        _resume = False

    hook = TorchRNGStateHook()
    hook.after_load_checkpoint(FakeRunner(), ckpt)  # load_from (fine-tuning): keep this run's generator
    assert hook._pending is None
    FakeRunner._resume = True
    hook.after_load_checkpoint(FakeRunner(), ckpt)
    assert hook._pending is not None


def test_validation_leaves_the_generator_as_it_found_it():
    from dcn_plugin.engine.hooks import TorchRNGStateHook
    hook = TorchRNGStateHook()
    torch.manual_seed(0)
    hook.before_val(None)
    expected = torch.rand(3)
    torch.manual_seed(0)
    hook.before_val(None)
    torch.rand(100)  # what a validation DataLoader / model might draw
    checkpoint = {}
    hook.before_save_checkpoint(None, checkpoint)  # save_best during validation: the training state
    hook.after_val(None)
    torch.testing.assert_close(torch.rand(3), expected)
    torch.set_rng_state(checkpoint['dcn_plugin_torch_rng_state']['cpu'])
    torch.testing.assert_close(torch.rand(3), expected)
