"""Runs survive crashes: a SIGKILL during training or in the middle of a checkpoint write, or a
truncated checkpoint (what a kill during mmengine's own non-atomic write leaves), never costs more
than the iterations since the last complete checkpoint, and the resumed run ends exactly where an
uninterrupted one does. Damaged checkpoints are named, never evaluated or silently skipped.

Every run is ``tools/train.py`` / ``tools/test.py`` / ``tools/run_demo.sh`` on the tiny detector
(4 iterations, a checkpoint every 2); the faults come from ``tests/fault_injection.py``.
"""
import os
import os.path as osp
import shutil
import signal
import stat

import pytest

from tiny_detector import PY, ROOT, TESTS, assert_same_training_state, load, run, write_tiny

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not all(__import__('importlib').util.find_spec(m) for m in ('mmdet', 'mmcv')),
                                 reason='needs mmdet and mmcv')]

FAULTS = "\ncustom_imports = dict(imports=['dcn_plugin', 'fault_injection'], allow_failed_imports=False)\n"
ENV = {'PYTHONPATH': TESTS}


@pytest.fixture(scope='module')
def tiny(tmp_path_factory):
    base = tmp_path_factory.mktemp('faults')
    tiny = write_tiny(base, train=8, val=2, seed=3)
    straight = base / 'straight'
    run([PY, 'tools/train.py', tiny['cfg'], '--work-dir', str(straight)])
    return dict(base=base, straight=straight, **tiny)


def _faulty_cfg(tiny, name, hook, max_keep=-1):
    path = osp.join(str(tiny['base']), name)
    with open(tiny['cfg']) as f:
        text = f.read()
    with open(path, 'w') as f:
        f.write(text + FAULTS + f'custom_hooks = [{hook}]\n'
                f'default_hooks = dict(checkpoint=dict(interval=2, max_keep_ckpts={max_keep}))\n')
    return path


def _resume_and_compare(tiny, cfg, wd):
    proc = run([PY, 'tools/train.py', cfg, '--work-dir', str(wd), '--resume'], env=ENV)
    assert_same_training_state(load(str(tiny['straight'] / 'iter_4.pth')), load(str(wd / 'iter_4.pth')))
    return proc.out


def test_sigkill_during_training_then_resume_is_exact(tiny):
    wd = tiny['base'] / 'killed_training'
    cfg = _faulty_cfg(tiny, 'kill_at_3.py', "dict(type='KillAfterIter', iter=3)")
    proc = run([PY, 'tools/train.py', cfg, '--work-dir', str(wd)], env=ENV, check=False)
    assert proc.returncode == -signal.SIGKILL, proc.out[-3000:]
    assert (wd / 'iter_2.pth').exists() and not (wd / 'iter_4.pth').exists()
    # the resumed process must not die again at iteration 3
    plain = _faulty_cfg(tiny, 'no_fault.py', "dict(type='KillAfterIter', iter=0)")
    out = _resume_and_compare(tiny, plain, wd)
    assert 'resumed epoch: 0, iter: 2' in out


def test_sigkill_during_the_checkpoint_write_keeps_the_previous_checkpoint(tiny):
    """With max_keep_ckpts=1, mmengine's own hook deletes iter_2.pth before writing iter_4.pth, so a kill in
    the write would leave nothing to resume from; here iter_2.pth stays until iter_4.pth is complete."""
    wd = tiny['base'] / 'killed_write'
    cfg = _faulty_cfg(tiny, 'kill_in_write.py', "dict(type='KillDuringCheckpointWrite', name='iter_4.pth')",
                      max_keep=1)
    proc = run([PY, 'tools/train.py', cfg, '--work-dir', str(wd)], env=ENV, check=False)
    assert proc.returncode == -signal.SIGKILL, proc.out[-3000:]
    assert not (wd / 'iter_4.pth').exists()  # never renamed into place
    partial = [n for n in os.listdir(wd) if n.startswith('.iter_4.pth.') and n.endswith('.partial')]
    assert len(partial) == 1
    assert (wd / 'last_checkpoint').read_text() == str(wd / 'iter_2.pth')
    assert load(str(wd / 'iter_2.pth'))['meta']['iter'] == 2  # intact
    plain = _faulty_cfg(tiny, 'no_fault_keep1.py', "dict(type='KillAfterIter', iter=0)", max_keep=1)
    out = _resume_and_compare(tiny, plain, wd)
    assert 'resumed epoch: 0, iter: 2' in out and 'removed' in out and partial[0] in out
    assert sorted(n for n in os.listdir(wd) if n.endswith('.pth') or n.endswith('.partial')) == ['iter_4.pth']
    assert (wd / 'last_checkpoint').read_text() == str(wd / 'iter_4.pth')


def test_a_truncated_newest_checkpoint_is_skipped_when_resuming(tiny):
    wd = tiny['base'] / 'truncated'
    wd.mkdir()
    shutil.copy(tiny['straight'] / 'iter_2.pth', wd / 'iter_2.pth')
    data = (tiny['straight'] / 'iter_4.pth').read_bytes()
    (wd / 'iter_4.pth').write_bytes(data[:len(data) // 3])
    (wd / 'last_checkpoint').write_text(str(wd / 'iter_4.pth'))
    out = _resume_and_compare(tiny, tiny['cfg'], wd)
    assert f'not resuming from checkpoint {wd / "iter_4.pth"}: it is truncated or corrupt' in out
    assert f'resuming from {wd / "iter_2.pth"}, the newest intact checkpoint' in out


def test_no_intact_checkpoint_means_a_fresh_start_with_a_warning(tmp_path):
    from dcn_plugin.utils.checkpoint import find_resume_checkpoint
    (tmp_path / 'iter_2.pth').write_bytes(b'PK\x03\x04 truncated')
    (tmp_path / 'last_checkpoint').write_text(str(tmp_path / 'iter_4.pth'))  # missing file
    path, skipped = find_resume_checkpoint(str(tmp_path))
    assert path is None
    assert [(osp.basename(p), why.split(' (')[0]) for p, why in skipped] == [
        ('iter_4.pth', 'does not exist'), ('iter_2.pth', 'is truncated or corrupt')]


def test_tools_test_names_a_truncated_checkpoint_and_fails(tiny):
    bad = tiny['base'] / 'cut.pth'
    data = (tiny['straight'] / 'iter_4.pth').read_bytes()
    bad.write_bytes(data[:len(data) - 100])
    wd = tiny['base'] / 'test_cut'
    proc = run([PY, 'tools/test.py', tiny['cfg'], str(bad), '--work-dir', str(wd)], check=False)
    assert proc.returncode == 1
    assert f'test.py: error: checkpoint {bad} is truncated or corrupt' in proc.stderr
    assert 'Traceback' not in proc.stderr
    assert not (wd / 'test_metrics.json').exists()


def test_run_demo_resumes_instead_of_calling_a_truncated_final_checkpoint_done(tiny, tmp_path):
    """``tools/run_demo.sh`` in a copy of the repository layout whose demo config is the tiny one."""
    sandbox = tmp_path / 'repo'
    name = 'faster-rcnn_r18-mdconv-c3-c5_fpn_gn-all_demo-shapes'
    (sandbox / 'tools').mkdir(parents=True)
    shutil.copy(osp.join(ROOT, 'tools', 'run_demo.sh'), sandbox / 'tools')
    for tool in ('train.py', 'test.py', 'visualize_offsets.py', 'generate_demo_data.py', 'collect_metrics.py'):
        os.symlink(osp.join(ROOT, 'tools', tool), sandbox / 'tools' / tool)
    os.symlink(osp.join(ROOT, 'dcn_plugin'), sandbox / 'dcn_plugin')
    (sandbox / 'configs' / 'demo').mkdir(parents=True)
    shutil.copy(tiny['cfg'], sandbox / 'configs' / 'demo' / f'{name}.py')
    (sandbox / 'data').mkdir()
    os.symlink(tiny['root'], sandbox / 'data' / 'demo')
    (sandbox / '.venv' / 'bin').mkdir(parents=True)
    python = sandbox / '.venv' / 'bin' / 'python'
    python.write_text(f'#!/bin/sh\nexec {PY} "$@"\n')
    python.chmod(python.stat().st_mode | stat.S_IEXEC)
    wd = sandbox / 'work_dirs' / name
    wd.mkdir(parents=True)
    shutil.copy(tiny['straight'] / 'iter_2.pth', wd / 'iter_2.pth')
    data = (tiny['straight'] / 'iter_4.pth').read_bytes()
    (wd / 'iter_4.pth').write_bytes(data[:len(data) // 2])  # the final checkpoint, cut by a kill
    (wd / 'last_checkpoint').write_text(f'work_dirs/{name}/iter_4.pth')
    proc = run(['bash', str(sandbox / 'tools' / 'run_demo.sh'), '--no-setup'], cwd=str(sandbox))
    assert 'already done' not in proc.out
    assert f'the final checkpoint work_dirs/{name}/iter_4.pth is truncated or corrupt' in proc.out
    assert 'resuming from' in proc.out and 'bbox mAP' in proc.out
    assert_same_training_state(load(str(tiny['straight'] / 'iter_4.pth')), load(str(wd / 'iter_4.pth')))
    from dcn_plugin.utils import checkpoint_problem
    assert checkpoint_problem(wd / 'iter_4.pth') is None  # what the next run_demo.sh counts as done


def test_checkpoints_and_last_checkpoint_are_written_atomically(tmp_path):
    """The writes the hook makes go through a temporary file renamed into place, readable by all."""
    from dcn_plugin.utils.atomic import AtomicLocalBackend, atomic_write, remove_partial_files
    target = tmp_path / 'sub' / 'iter_8.pth'
    AtomicLocalBackend().put(b'payload', str(target))
    assert target.read_bytes() == b'payload'
    assert os.listdir(target.parent) == ['iter_8.pth']
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(target.stat().st_mode) == 0o666 & ~umask
    atomic_write(tmp_path / 'last_checkpoint', 'work_dirs/x/iter_8.pth')
    assert (tmp_path / 'last_checkpoint').read_text() == 'work_dirs/x/iter_8.pth'
    # a failing write leaves the old file and no temporary
    with pytest.raises(TypeError):
        atomic_write(target, 12345)  # not bytes
    assert target.read_bytes() == b'payload' and os.listdir(target.parent) == ['iter_8.pth']
    (tmp_path / 'sub' / '.iter_9.pth.k2j3h4.partial').write_bytes(b'x')
    (tmp_path / 'sub' / 'notes.partial').write_bytes(b'keep')  # not ours
    assert [osp.basename(p) for p in remove_partial_files(tmp_path / 'sub')] == ['.iter_9.pth.k2j3h4.partial']
    assert sorted(os.listdir(tmp_path / 'sub')) == ['iter_8.pth', 'notes.partial']


def test_the_tools_add_the_hook_set_and_keep_what_the_config_chose():
    from mmengine.config import Config

    from dcn_plugin.engine import add_training_hooks
    cfg = Config(dict(default_hooks=dict(checkpoint=dict(type='CheckpointHook', interval=3, max_keep_ckpts=2))))
    add_training_hooks(cfg)
    assert cfg.default_hooks.checkpoint == dict(type='AtomicCheckpointHook', interval=3, max_keep_ckpts=2)
    assert [h['type'] for h in cfg.custom_hooks] == ['TorchRNGStateHook', 'CheckpointMatchHook']
    cfg = Config(dict(default_hooks=dict(checkpoint=dict(type='MyCheckpointHook')),
                      custom_hooks=[dict(type='CheckpointMatchHook', strict_load=True), dict(type='Other')]))
    add_training_hooks(cfg, strict_load=False, remedy='use --allow-partial-load')
    assert cfg.default_hooks.checkpoint.type == 'MyCheckpointHook'
    assert [h['type'] for h in cfg.custom_hooks] == ['CheckpointMatchHook', 'Other', 'TorchRNGStateHook']
    assert cfg.custom_hooks[0]['strict_load'] is True and cfg.custom_hooks[0]['remedy'] == 'use --allow-partial-load'
    assert add_training_hooks(Config(dict())).get('default_hooks') is None


def test_the_shipped_base_configs_name_the_hook_set_the_tools_add():
    """The configs carry the set for mmdet's own tools; adding it to them changes nothing."""
    import copy

    from mmengine.config import Config

    from dcn_plugin.engine import add_training_hooks
    for name in ('dcn/faster-rcnn_r50_fpn_1x_coco.py', 'demo/faster-rcnn_r18_fpn_gn-all_demo-shapes.py'):
        cfg = Config.fromfile(osp.join(ROOT, 'configs', name))
        before = (copy.deepcopy(cfg.default_hooks.checkpoint.to_dict()), [dict(h) for h in cfg.custom_hooks])
        add_training_hooks(cfg)
        after = (cfg.default_hooks.checkpoint.to_dict(), [{k: v for k, v in h.items() if k != 'strict_load'}
                                                          for h in cfg.custom_hooks])
        assert after == before, name


def test_a_config_can_name_the_hooks_itself():
    from mmengine.registry import HOOKS

    import dcn_plugin  # noqa: F401
    for name in ('AtomicCheckpointHook', 'TorchRNGStateHook', 'CheckpointMatchHook'):
        assert HOOKS.get(name) is not None
    hook = HOOKS.build(dict(type='AtomicCheckpointHook', interval=5, max_keep_ckpts=3, by_epoch=False))
    assert hook.interval == 5 and hook.max_keep_ckpts == 3



def test_shipped_configs_name_the_crash_safe_hooks():
    """Run by mmdet's own tools/train.py, the shipped configs get the same hooks as through ours."""
    import glob

    from mmengine.config import Config

    import dcn_plugin.apis  # noqa: F401  ('mmdet::' bases without pkg_resources)
    paths = sorted(glob.glob(osp.join(ROOT, 'configs', '**', '*.py'), recursive=True))
    assert paths
    for path in paths:
        cfg = Config.fromfile(path)
        assert cfg.default_hooks.checkpoint.type == 'AtomicCheckpointHook', path
        assert {h['type'] for h in cfg.custom_hooks} >= {'TorchRNGStateHook', 'CheckpointMatchHook'}, path
