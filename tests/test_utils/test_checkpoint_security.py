"""Every checkpoint path and URL scheme loads through the restricted unpickler.

A pickle whose ``__reduce__`` runs ``os.system`` is planted where a download would land (a temporary
``TORCH_HOME``; no network is used): every way of naming it must refuse it without running it,
whoever loads it (the tools, mmengine's ``load_checkpoint`` in a user's script that imports
dcn_plugin, a config with ``custom_imports``, ``init_cfg=dict(type='Pretrained', ...)``), while
genuine torchvision-format and mmdet-format checkpoints still load through the same paths.
"""
import ast
import hashlib
import importlib.util
import io
import os
import os.path as osp
import pickle
import re
import shutil
import sys
import types
import zipfile
from urllib.parse import urlparse

import numpy as np
import pytest
import torch
from torch import nn

from tiny_detector import PY, ROOT, run, write_tiny

HAVE_MMDET = all(importlib.util.find_spec(m) is not None for m in ('mmdet', 'mmcv'))
needs_mmdet = pytest.mark.skipif(not HAVE_MMDET, reason='needs mmdet and mmcv')
EVIL_URL = 'https://example.invalid/models/evil_detector.pth'  # no sha256 prefix in the name: nothing to check


class _RunsCode:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f'touch {self.marker}',))


def write_evil(path, marker) -> str:
    """A checkpoint that looks like mmdet's but runs ``touch marker`` when unpickled without restriction."""
    os.makedirs(osp.dirname(str(path)), exist_ok=True)
    torch.save({'state_dict': {'weight': torch.zeros(1, 2)}, 'meta': {'x': _RunsCode(marker)}}, str(path))
    return str(path)


def hub_file(torch_home, url: str) -> str:
    """Where torch.hub caches ``url``: ``TORCH_HOME/hub/checkpoints/<file name>``."""
    return osp.join(str(torch_home), 'hub', 'checkpoints', osp.basename(urlparse(url).path))


@pytest.fixture
def torch_home(tmp_path, monkeypatch):
    home = tmp_path / 'torch_home'
    monkeypatch.setenv('TORCH_HOME', str(home))
    monkeypatch.setenv('MMENGINE_HOME', str(tmp_path / 'mmengine_home'))
    return home


def _mmengine_scheme_prefixes():
    """The prefixes mmengine registers, read from its source."""
    import mmengine.runner.checkpoint as mod
    tree = ast.parse(open(mod.__file__).read())
    prefixes = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and getattr(node.func, 'attr', None) == 'register_scheme':
            for kw in node.keywords:
                if kw.arg == 'prefixes':
                    value = ast.literal_eval(kw.value)
                    prefixes.update([value] if isinstance(value, str) else value)
    return prefixes


# --------------------------------------------------------------------------- the scheme table
def test_every_scheme_mmengine_registers_has_a_restricted_loader():
    import dcn_plugin  # noqa: F401  (installs the loaders)
    from dcn_plugin.utils.checkpoint import SCHEME_PREFIXES, checkpoint_scheme_loaders
    from_source = _mmengine_scheme_prefixes()
    assert len(from_source) == 11 and {'', 'https://', 'torchvision://', 'mmcls://'} <= from_source
    assert {p for p, _ in SCHEME_PREFIXES} == from_source
    ours = dict(SCHEME_PREFIXES)
    loaders = checkpoint_scheme_loaders()
    for prefix in from_source:
        assert loaders[prefix] is ours[prefix], prefix
    for prefix, loader in loaders.items():  # whatever else is registered is guarded
        assert loader in ours.values() or getattr(loader, '_dcn_plugin_guarded', False), prefix


def test_installing_twice_changes_nothing():
    from dcn_plugin.utils.checkpoint import checkpoint_scheme_loaders, install_checkpoint_loaders
    install_checkpoint_loaders()
    before = checkpoint_scheme_loaders()
    install_checkpoint_loaders()
    assert checkpoint_scheme_loaders() == before


# --------------------------------------------------------------------------- every scheme refuses the payload
def _scheme_urls():
    from mmengine.runner.checkpoint import get_external_models, get_mmcls_models, get_torchvision_models
    tv = get_torchvision_models()['resnet50']
    mm = get_external_models()['detectron/resnet50_caffe']
    cls = get_mmcls_models()['vgg11']
    return [(EVIL_URL, EVIL_URL), (EVIL_URL.replace('https://', 'http://'), EVIL_URL),
            ('torchvision://resnet50', tv), ('modelzoo://resnet50', tv),
            ('open-mmlab://detectron/resnet50_caffe', mm), ('openmmlab://detectron/resnet50_caffe', mm),
            ('mmcls://vgg11', cls)]


def sha256_of(path) -> str:
    return hashlib.sha256(open(path, 'rb').read()).hexdigest()


def name_tables_by_hash(monkeypatch, path):
    """Rename the files of mmengine's model tables (``name-<sha256 prefix>.ext``) to carry the sha256 of
    ``path``, so that a file planted in their cache passes the hash check and reaches the unpickler."""
    import mmengine.runner.checkpoint as mmengine_checkpoint
    digest = sha256_of(path)[:8]
    for getter in ('get_torchvision_models', 'get_external_models', 'get_mmcls_models'):
        original = getattr(mmengine_checkpoint, getter)
        monkeypatch.setattr(mmengine_checkpoint, getter, lambda original=original: {
            k: re.sub(r'-[0-9a-f]{8,}\.', f'-{digest}.', v) if isinstance(v, str) else v
            for k, v in original().items()})


@needs_mmdet
@pytest.mark.parametrize('index', range(7))
def test_url_schemes_refuse_a_cached_payload(torch_home, tmp_path, monkeypatch, index):
    from mmengine.runner import load_checkpoint

    from dcn_plugin.utils import UnsafeCheckpointError
    marker = tmp_path / 'pwned'
    payload = write_evil(tmp_path / 'payload.pth', marker)
    name_tables_by_hash(monkeypatch, payload)
    name, url = _scheme_urls()[index]
    os.makedirs(osp.dirname(hub_file(torch_home, url)), exist_ok=True)
    shutil.copy(payload, hub_file(torch_home, url))
    with pytest.raises(UnsafeCheckpointError, match='refusing to load checkpoint') as e:
        load_checkpoint(nn.Linear(2, 1), name, map_location='cpu')
    assert hub_file(torch_home, url) in str(e.value)
    assert isinstance(e.value, pickle.UnpicklingError)
    assert not marker.exists()


def test_local_files_and_open_mmlab_local_entries_refuse_the_payload(torch_home, tmp_path):
    from mmengine.runner import load_checkpoint

    from dcn_plugin.utils import UnsafeCheckpointError
    marker = tmp_path / 'pwned'
    with pytest.raises(UnsafeCheckpointError):
        load_checkpoint(nn.Linear(2, 1), write_evil(tmp_path / 'evil.pth', marker))
    # an open_mmlab.json entry that names a file under MMENGINE_HOME
    home = os.environ['MMENGINE_HOME']
    os.makedirs(home, exist_ok=True)
    with open(osp.join(home, 'open_mmlab.json'), 'w') as f:
        f.write('{"team/evil": "weights/evil.pth"}')
    write_evil(osp.join(home, 'weights', 'evil.pth'), marker)
    with pytest.raises(UnsafeCheckpointError):
        load_checkpoint(nn.Linear(2, 1), 'open-mmlab://team/evil')
    assert not marker.exists()


@pytest.mark.parametrize('name', ['s3://bucket/evil.pth', 'cluster1:s3://bucket/evil.pth',
                                  'petrel://bucket/evil.pth'])
def test_object_storage_schemes_refuse_the_payload(tmp_path, monkeypatch, name):
    import mmengine.fileio
    from mmengine.runner import load_checkpoint

    from dcn_plugin.utils import UnsafeCheckpointError
    marker = tmp_path / 'pwned'
    data = open(write_evil(tmp_path / 'evil.pth', marker), 'rb').read()
    requested = []

    class FakePetrel:
        def get(self, filename):
            requested.append(filename)
            return data

    monkeypatch.setattr(mmengine.fileio, 'get_file_backend', lambda *a, **k: FakePetrel())
    with pytest.raises(UnsafeCheckpointError):
        load_checkpoint(nn.Linear(2, 1), name)
    assert requested == [name] and not marker.exists()


def test_pavi_refuses_the_payload(tmp_path, monkeypatch):
    from mmengine.runner import load_checkpoint

    from dcn_plugin.utils import UnsafeCheckpointError
    marker = tmp_path / 'pwned'
    evil = write_evil(tmp_path / 'evil.pth', marker)

    class Model:
        name = 'evil.pth'

        def download(self, path):
            shutil.copy(evil, path)

    pavi = types.ModuleType('pavi')
    pavi.modelcloud = types.SimpleNamespace(get=lambda path: Model())
    monkeypatch.setitem(sys.modules, 'pavi', pavi)
    with pytest.raises(UnsafeCheckpointError):
        load_checkpoint(nn.Linear(2, 1), 'pavi://project/evil.pth')
    assert not marker.exists()


def test_a_scheme_registered_by_another_package_is_forced_to_weights_only(tmp_path):
    from mmengine.runner.checkpoint import CheckpointLoader, load_checkpoint

    from dcn_plugin.utils import install_checkpoint_loaders
    marker = tmp_path / 'pwned'
    evil = write_evil(tmp_path / 'evil.pth', marker)

    def load_from_elsewhere(filename, map_location=None):
        return torch.load(evil, map_location=map_location)  # weights_only left to torch's default

    def load_from_careless(filename, map_location=None):
        return torch.load(evil, map_location=map_location, weights_only=False)

    CheckpointLoader.register_scheme('elsewhere://', load_from_elsewhere)
    CheckpointLoader.register_scheme('careless://', load_from_careless)
    try:
        install_checkpoint_loaders()
        for name in ('elsewhere://x', 'careless://x'):
            with pytest.raises(pickle.UnpicklingError):
                load_checkpoint(nn.Linear(2, 1), name)
        assert not marker.exists()
        assert 'TORCH_FORCE_WEIGHTS_ONLY_LOAD' not in os.environ  # restored afterwards
    finally:
        for prefix in ('elsewhere://', 'careless://'):
            CheckpointLoader._schemes.pop(prefix, None)


def test_the_environment_cannot_turn_weights_only_off(tmp_path, monkeypatch):
    from mmengine.runner import load_checkpoint

    from dcn_plugin.utils import UnsafeCheckpointError
    monkeypatch.setenv('TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD', '1')
    marker = tmp_path / 'pwned'
    with pytest.raises(UnsafeCheckpointError):
        load_checkpoint(nn.Linear(2, 1), write_evil(tmp_path / 'evil.pth', marker))
    assert not marker.exists()


class _GetattrEscape:
    def __reduce__(self):
        from mmengine.logging import HistoryBuffer
        return (getattr, (HistoryBuffer, '__init__'))


@pytest.mark.parametrize('payload', ['getattr', 'os.system'])
def test_a_refusal_names_the_file_and_the_reason(tmp_path, payload):
    from dcn_plugin.utils import UnsafeCheckpointError, load_checkpoint_file
    path = tmp_path / 'evil.pth'
    evil = _GetattrEscape() if payload == 'getattr' else _RunsCode(tmp_path / 'pwned')
    torch.save({'state_dict': {'w': torch.zeros(1)}, 'meta': {'x': evil}}, path)
    with pytest.raises(UnsafeCheckpointError) as e:
        load_checkpoint_file(path)
    message = str(e.value)
    assert message.startswith(f'refusing to load checkpoint {path}: ')
    reason = ("refusing getattr(HistoryBuffer, '__init__') in a checkpoint: only public methods of "
              'mmengine.logging.HistoryBuffer may be looked up' if payload == 'getattr' else
              'GLOBAL posix.system')
    assert reason in message, message
    assert 'WeightsUnpickler error' not in message and 'Please file an issue' not in message, message


# --------------------------------------------------------------------------- genuine checkpoints still load
def _mmdet_style_checkpoint(state_dict):
    """What mmengine's Runner writes: meta with numpy values, a message hub with HistoryBuffers."""
    from mmengine.logging import MessageHub
    hub = MessageHub.get_instance('dcn_plugin_security_test')
    hub.update_scalar('train/loss', np.float32(0.5))
    hub.update_info('np_int', np.int64(3))
    return {'meta': {'iter': 4, 'np_best': np.float64(0.25), 'dataset_meta': {'classes': ('a', 'b')}},
            'state_dict': state_dict, 'message_hub': hub.state_dict(),
            'optimizer': {'state': {}, 'param_groups': []}}


def test_genuine_mmdet_checkpoint_loads_from_a_url_and_a_file(torch_home, tmp_path):
    from mmengine.runner import load_checkpoint
    model = nn.Linear(2, 1)
    ckpt = _mmdet_style_checkpoint({'weight': torch.arange(2.).view(1, 2), 'bias': torch.ones(1)})
    os.makedirs(osp.dirname(hub_file(torch_home, EVIL_URL)))
    torch.save(ckpt, hub_file(torch_home, EVIL_URL))
    loaded = load_checkpoint(model, EVIL_URL, map_location='cpu')
    assert loaded['meta']['np_best'] == np.float64(0.25)
    assert loaded['message_hub']['log_scalars']['train/loss'].mean() == pytest.approx(0.5)
    torch.testing.assert_close(model.weight.data, torch.arange(2.).view(1, 2))
    torch.save(ckpt, tmp_path / 'local.pth')
    assert load_checkpoint(nn.Linear(2, 1), str(tmp_path / 'local.pth'))['meta']['iter'] == 4


@needs_mmdet
def test_pretrained_torchvision_resnet50_of_the_coco_configs(torch_home, tmp_path, monkeypatch):
    """``init_cfg=dict(type='Pretrained', checkpoint='torchvision://resnet50')`` as configs/dcn/ use it:
    the payload is refused; a torchvision-format state dict loads into the DCN backbone."""
    import torchvision
    from mmdet.registry import MODELS
    from mmengine.config import Config
    from mmengine.registry import init_default_scope
    from mmengine.runner import checkpoint as mmengine_checkpoint

    from dcn_plugin.utils import UnsafeCheckpointError
    cfg = Config.fromfile(osp.join(ROOT, 'configs', 'dcn', 'faster-rcnn_r50-mdconv-c3-c5_fpn_1x_coco.py'))
    assert cfg.model.backbone.init_cfg.checkpoint == 'torchvision://resnet50'
    init_default_scope('mmdet')
    marker = tmp_path / 'pwned'
    payload = write_evil(tmp_path / 'payload.pth', marker)
    name_tables_by_hash(monkeypatch, payload)  # so that the unpickler, not the hash check, refuses it
    cached = hub_file(torch_home, mmengine_checkpoint.get_torchvision_models()['resnet50'])
    os.makedirs(osp.dirname(cached))
    shutil.copy(payload, cached)
    backbone = MODELS.build(cfg.model.backbone)
    with pytest.raises(UnsafeCheckpointError):
        backbone.init_weights()
    assert not marker.exists()
    genuine = torchvision.models.resnet50().state_dict()
    torch.save(genuine, tmp_path / 'genuine.pth')
    name_tables_by_hash(monkeypatch, tmp_path / 'genuine.pth')
    cached = hub_file(torch_home, mmengine_checkpoint.get_torchvision_models()['resnet50'])
    shutil.copy(tmp_path / 'genuine.pth', cached)
    backbone = MODELS.build(cfg.model.backbone)
    backbone.init_weights()
    torch.testing.assert_close(backbone.conv1.weight.data, genuine['conv1.weight'])
    torch.testing.assert_close(backbone.layer3[2].conv2.weight.data, genuine['layer3.2.conv2.weight'])


def test_downloads_land_in_the_torch_hub_cache_with_the_hash_checked(torch_home, tmp_path, monkeypatch):
    import torch.hub
    from mmengine.runner import load_checkpoint
    from mmengine.runner.checkpoint import get_torchvision_models

    from dcn_plugin.utils import CorruptCheckpointError
    source = tmp_path / 'served.pth'
    torch.save({'weight': torch.ones(1, 2), 'bias': torch.zeros(1)}, source)
    calls = []

    def fake_download(url, dst, hash_prefix=None, progress=True):
        calls.append((url, dst, hash_prefix))
        shutil.copy(source, dst)

    monkeypatch.setattr(torch.hub, 'download_url_to_file', fake_download)
    model = nn.Linear(2, 1)
    load_checkpoint(model, EVIL_URL)
    assert calls == [(EVIL_URL, hub_file(torch_home, EVIL_URL), None)]  # its name carries no hash
    torch.testing.assert_close(model.weight.data, torch.ones(1, 2))
    load_checkpoint(model, EVIL_URL)  # cached now: no second download
    assert len(calls) == 1
    url = get_torchvision_models()['resnet18']
    # torchvision's names carry their hash: it goes to the download, and the file is checked against it on use
    with pytest.raises(CorruptCheckpointError, match='is not the file its name names'):
        load_checkpoint(model, 'torchvision://resnet18')
    assert calls[-1] == (url, hub_file(torch_home, url), osp.basename(url).split('-')[-1].split('.')[0])


def test_a_legacy_zipped_hub_file_is_extracted_and_checked(torch_home, tmp_path):
    from mmengine.runner import load_checkpoint

    from dcn_plugin.utils import UnsafeCheckpointError
    marker = tmp_path / 'pwned'
    legacy = tmp_path / 'legacy.pth'
    torch.save({'x': _RunsCode(marker)}, legacy, _use_new_zipfile_serialization=False)
    cached = hub_file(torch_home, EVIL_URL)
    os.makedirs(osp.dirname(cached))
    with zipfile.ZipFile(cached, 'w') as z:
        z.write(legacy, 'legacy.pth')
    with pytest.raises(UnsafeCheckpointError):
        load_checkpoint(nn.Linear(2, 1), EVIL_URL)
    assert not marker.exists()


# --------------------------------------------------------------------------- damaged files
@pytest.fixture(scope='module')
def good_bytes(tmp_path_factory):
    buf = io.BytesIO()
    torch.save({'state_dict': {'w': torch.randn(64, 64)}, 'meta': {'iter': 1}}, buf)
    return buf.getvalue()


@pytest.mark.parametrize('damage', ['truncated-half', 'truncated-tail', 'header-only', 'empty', 'flipped-byte',
                                    'not-a-checkpoint', 'zip-without-data'])
def test_damaged_files_are_detected_and_named(tmp_path, good_bytes, damage):
    from dcn_plugin.utils import CorruptCheckpointError, checkpoint_problem, load_checkpoint_file
    path = tmp_path / f'{damage}.pth'
    if damage == 'zip-without-data':
        with zipfile.ZipFile(path, 'w') as z:
            z.writestr('readme.txt', 'hello')
    else:
        data = {'truncated-half': good_bytes[:len(good_bytes) // 2], 'truncated-tail': good_bytes[:-7],
                'header-only': good_bytes[:64], 'empty': b'', 'not-a-checkpoint': b'hello world' * 9,
                'flipped-byte': (good_bytes[:len(good_bytes) // 2] + bytes([good_bytes[len(good_bytes) // 2] ^ 0xFF])
                                 + good_bytes[len(good_bytes) // 2 + 1:])}[damage]
        path.write_bytes(data)
    assert checkpoint_problem(path) is not None
    with pytest.raises(CorruptCheckpointError, match=str(path)):
        load_checkpoint_file(path)
    with pytest.raises(CorruptCheckpointError):
        load_checkpoint_file(path.read_bytes())


def test_intact_and_legacy_files_pass_and_missing_ones_are_named(tmp_path, good_bytes):
    from dcn_plugin.utils import checkpoint_problem, load_checkpoint_file
    (tmp_path / 'good.pth').write_bytes(good_bytes)
    assert checkpoint_problem(tmp_path / 'good.pth') is None
    torch.save({'w': torch.ones(2)}, tmp_path / 'legacy.pth', _use_new_zipfile_serialization=False)
    assert checkpoint_problem(tmp_path / 'legacy.pth') is None
    torch.testing.assert_close(load_checkpoint_file(tmp_path / 'legacy.pth')['w'], torch.ones(2))
    assert checkpoint_problem(tmp_path / 'nothing.pth') == 'does not exist'
    assert 'directory' in checkpoint_problem(tmp_path)
    os.mkfifo(tmp_path / 'fifo.pth')  # reading it would block forever
    assert checkpoint_problem(tmp_path / 'fifo.pth') == 'is not a regular file'
    with pytest.raises(FileNotFoundError, match='is not a file'):
        load_checkpoint_file(tmp_path / 'fifo.pth')
    with pytest.raises(FileNotFoundError, match='nothing.pth does not exist'):
        load_checkpoint_file(tmp_path / 'nothing.pth')


def test_unknown_model_names_are_named_with_suggestions():
    from mmengine.runner import load_checkpoint
    with pytest.raises(KeyError, match="unknown model name 'resnet5' .*similar names: resnet50"):
        load_checkpoint(nn.Linear(2, 1), 'torchvision://resnet5')


# --------------------------------------------------------------------------- the five paths and user scripts
@pytest.fixture(scope='module')
def evil_env(tmp_path_factory):
    """A tiny config, a genuine checkpoint for it and a TORCH_HOME with the payload at EVIL_URL's cache."""
    if not HAVE_MMDET:
        pytest.skip('needs mmdet and mmcv')
    base = tmp_path_factory.mktemp('evil_env')
    tiny = write_tiny(base, train=4, val=2)
    home = base / 'torch_home'
    marker = base / 'pwned'
    write_evil(hub_file(home, EVIL_URL), marker)
    env = {'TORCH_HOME': str(home), 'PYTHONPATH': ROOT}
    return dict(base=base, env=env, marker=marker, **tiny)


def _assert_refused(proc, marker):
    assert proc.returncode != 0, proc.out[-3000:]
    assert 'refusing to load checkpoint' in proc.out, proc.out[-3000:]
    assert 'evil_detector.pth' in proc.out
    assert not marker.exists()


@pytest.mark.slow
def test_tools_test_refuses_a_url_checkpoint_payload(evil_env):
    proc = run([PY, 'tools/test.py', evil_env['cfg'], EVIL_URL, '--work-dir', str(evil_env['base'] / 'w_test')],
               env=evil_env['env'], check=False)
    _assert_refused(proc, evil_env['marker'])
    assert not (evil_env['base'] / 'w_test' / 'test_metrics.json').exists()


@pytest.mark.slow
def test_tools_train_refuses_load_from_a_url_payload(evil_env):
    proc = run([PY, 'tools/train.py', evil_env['cfg'], '--work-dir', str(evil_env['base'] / 'w_load'),
                '--cfg-options', f'load_from={EVIL_URL}', 'train_cfg.max_iters=1'], env=evil_env['env'], check=False)
    _assert_refused(proc, evil_env['marker'])


@pytest.mark.slow
def test_tools_train_resume_refuses_a_url_in_last_checkpoint(evil_env):
    wd = evil_env['base'] / 'w_resume'
    wd.mkdir()
    (wd / 'last_checkpoint').write_text(EVIL_URL)
    proc = run([PY, 'tools/train.py', evil_env['cfg'], '--work-dir', str(wd), '--resume',
                '--cfg-options', 'train_cfg.max_iters=1'], env=evil_env['env'], check=False)
    _assert_refused(proc, evil_env['marker'])


@pytest.mark.slow
def test_visualize_offsets_refuses_a_url_checkpoint_payload(evil_env):
    proc = run([PY, 'tools/visualize_offsets.py', evil_env['cfg'], EVIL_URL,
                osp.join(evil_env['root'], 'val', '000000.png'), '--out', str(evil_env['base'] / 'o.png')],
               env=evil_env['env'], check=False)
    _assert_refused(proc, evil_env['marker'])
    assert not (evil_env['base'] / 'o.png').exists()


USER_SCRIPT = '''
import sys, torch
{setup}
from mmengine.runner import load_checkpoint
from mmengine.runner.checkpoint import CheckpointLoader
for name in ({url!r}, 'torchvision://resnet50'):
    try:
        load_checkpoint(torch.nn.Linear(2, 1), name)
    except Exception as e:
        print('REFUSED', name, type(e).__name__, e)
    else:
        print('LOADED', name)
'''


@pytest.mark.slow
@pytest.mark.parametrize('setup', ['import dcn_plugin',
                                   'from mmengine.config import Config; Config.fromfile(sys.argv[1])'],
                         ids=['import-dcn_plugin', 'config-custom_imports'])
def test_a_user_script_that_imports_dcn_plugin_is_protected(evil_env, setup):
    from mmengine.runner.checkpoint import get_torchvision_models
    write_evil(hub_file(evil_env['env']['TORCH_HOME'], get_torchvision_models()['resnet50']), evil_env['marker'])
    proc = run([PY, '-c', USER_SCRIPT.format(setup=setup, url=EVIL_URL), evil_env['cfg']], env=evil_env['env'],
               check=False)
    assert proc.returncode == 0, proc.out[-3000:]
    assert proc.stdout.count('REFUSED') == 2 and 'UnsafeCheckpointError' in proc.stdout, proc.out[-3000:]
    assert not evil_env['marker'].exists()


@pytest.mark.slow
def test_tools_test_evaluates_a_genuine_checkpoint_from_a_url(evil_env, tmp_path):
    """The same URL path loads an mmdet-format checkpoint of the model (meta, message hub, numpy)."""
    from mmdet.registry import MODELS
    from mmengine.config import Config
    from mmengine.registry import init_default_scope
    init_default_scope('mmdet')
    model = MODELS.build(Config.fromfile(evil_env['cfg']).model)
    url = 'https://example.invalid/models/genuine_detector.pth'
    torch.save(_mmdet_style_checkpoint(model.state_dict()), hub_file(evil_env['env']['TORCH_HOME'], url))
    wd = tmp_path / 'w'
    proc = run([PY, 'tools/test.py', evil_env['cfg'], url, '--work-dir', str(wd)], env=evil_env['env'])
    assert 'bbox_mAP' in proc.out
    assert (wd / 'test_metrics.json').exists()


# --------------------------------------------------------------------------- numpy content
class _Reduce:
    """Pickles as ``func(*args)`` followed by ``__setstate__(state)``: a hand-made numpy pickle."""

    def __init__(self, *reduce):
        self.reduce = reduce

    def __reduce__(self):
        return self.reduce


def _multiarray():
    try:
        from numpy._core import multiarray
    except ImportError:  # numpy 1.x
        from numpy.core import multiarray
    return multiarray


def _forged_dtype(descr, state):
    return _Reduce(np.dtype, (descr, False, True), state)


def _forged_array(dtype, shape, data, fortran=False):
    return _Reduce(_multiarray()._reconstruct, (np.ndarray, (0,), b'b'), (1, shape, dtype, fortran, data))


_LIVE = 'an object the pickle points at'
_OBJECT_FIELD = {'a': (np.dtype('O'), 0)}
#: numpy pickles that corrupt memory, hand back arbitrary objects or allocate without bound when numpy
#: restores their state as stated; each with a word its refusal names
FORGED_NUMPY = {
    # the field holds objects but the flags say it does not: raw bytes are freed as a pointer
    'object-field-flags-cleared': (_forged_array(_forged_dtype('V8', (3, '|', None, ('a',), _OBJECT_FIELD, 8, 1, 0)),
                                                 (1,), b'\x41' * 8), "'V8'"),
    # a float64 whose flags claim it holds objects
    'float-flagged-as-objects': (_forged_array(_forged_dtype('f8', (3, '<', None, None, None, -1, -1, 63)), (2,),
                                               b'\x41' * 16), 'state'),
    # an object field read from raw bytes: an address (of a live object in the writing process)
    'object-field-at-a-live-address': (_forged_array(
        _forged_dtype('V8', (3, '|', None, ('a',), _OBJECT_FIELD, 8, 1, 61)), (1,),
        id(_LIVE).to_bytes(8, sys.byteorder)), "'V8'"),
    'field-offset-past-itemsize': (_forged_array(
        _forged_dtype('V8', (3, '|', None, ('a',), {'a': (np.dtype('f8'), 4096)}, 8, 1, 16)), (1,), b'\0' * 8), "'V8'"),
    'object-array': (_forged_array(np.dtype('O'), (1,), b'\x41' * 8), "'O8'"),
    'itemsize-shape-mismatch': (_forged_array(np.dtype('f8'), (4,), b'\0' * 8), 'needs 32 bytes'),
    'huge-shape': (_forged_array(np.dtype('f8'), (2 ** 40, 2 ** 40), b'\0' * 8), 'too large'),
    'huge-empty-shape': (_forged_array(np.dtype('f8'), (0, 2 ** 62), b''), 'too large'),
    'negative-shape': (_forged_array(np.dtype('f8'), (-1,), b''), 'non-negative'),
    'scalar-wrong-size': (_Reduce(_multiarray().scalar, (np.dtype('f8'), b'\0' * 3)), 'exactly 8 bytes'),
    'scalar-object': (_Reduce(_multiarray().scalar, (np.dtype('O'), 'x')), "'O8'"),
    'datetime': (np.array(['2020-01-01'], dtype='M8[D]'), "'M8'"),
}

NUMPY_LOADER = r'''
import gc, sys
import numpy as np
import torch
from dcn_plugin.utils.checkpoint import UnsafeCheckpointError, load_checkpoint_file
if sys.argv[1] == 'foreign':  # another package allow-lists numpy's own classes and functions
    from numpy._core import multiarray
    torch.serialization.add_safe_globals([np.ndarray, np.dtype, multiarray._reconstruct, multiarray.scalar]
                                         + [c for c in vars(np.dtypes).values() if isinstance(c, type)])
for path in sys.argv[2:]:
    try:
        loaded = load_checkpoint_file(path)
        print('LOADED', path, repr(loaded['meta'].get('x'))[:200], flush=True)
        del loaded
        gc.collect()
    except UnsafeCheckpointError as e:
        print('REFUSED', path, str(e).replace('\n', ' '), flush=True)
'''


def _load_in_a_subprocess(paths, mode='plain'):
    """Load each checkpoint in a fresh process (a crash must fail the test, not the test runner)."""
    proc = run([PY, '-c', NUMPY_LOADER, mode] + [str(p) for p in paths], env={'PYTHONPATH': ROOT}, check=False)
    assert proc.returncode == 0, f'the loader died ({proc.returncode}):\n{proc.out[-3000:]}'
    return {line.split(' ', 2)[1]: line for line in proc.stdout.splitlines() if line.startswith(('LOADED', 'REFUSED'))}


@pytest.mark.parametrize('mode', ['plain', 'foreign'])
def test_forged_numpy_state_is_refused_without_reaching_numpy(tmp_path, mode):
    """Forged dtype flags, object fields, out-of-range field offsets, size mismatches and huge shapes are
    refused with the file named, also when other code has allow-listed numpy's own classes."""
    paths = {}
    for case, (obj, _) in FORGED_NUMPY.items():
        paths[case] = str(tmp_path / f'{case}.pth')
        torch.save({'state_dict': {'w': torch.zeros(1)}, 'meta': {'x': obj}}, paths[case])
    results = _load_in_a_subprocess(paths.values(), mode)
    for case, (_, reason) in FORGED_NUMPY.items():
        line = results.get(paths[case], 'no result')
        assert line.startswith(f'REFUSED {paths[case]} refusing to load checkpoint {paths[case]}: '), (case, line)
        assert reason in line, (case, line)


def _numpy_content():
    """The numpy values mmengine / mmdet checkpoints carry (scalars of every plain kind, arrays in both byte
    orders and memory orders, 0-d and empty arrays)."""
    return {
        'f64': np.float64(0.5), 'f32': np.float32(-2.25), 'f16': np.float16(1.5), 'i64': np.int64(-3),
        'u8': np.uint8(200), 'bool': np.bool_(True), 'c128': np.complex128(1 - 2j),
        'little': np.arange(6, dtype='<f4').reshape(2, 3), 'big': np.arange(6, dtype='>i4').reshape(3, 2),
        'fortran': np.asfortranarray(np.arange(12.).reshape(3, 4)), 'zero_d': np.array(7.25),
        'empty': np.zeros((0, 4), np.float32), 'flags': np.array([True, False, True]),
        'nested': (np.arange(3, dtype=np.int16), [np.float64(2.5)]),
    }


def _assert_same_numpy(loaded, expected):
    if isinstance(expected, (tuple, list)):
        assert type(loaded) is type(expected) and len(loaded) == len(expected)
        for a, b in zip(loaded, expected):
            _assert_same_numpy(a, b)
        return
    assert type(loaded) is type(expected), (loaded, expected)
    if isinstance(expected, np.ndarray):
        assert loaded.dtype == expected.dtype and loaded.shape == expected.shape
        assert loaded.flags.f_contiguous == expected.flags.f_contiguous and loaded.flags.writeable
    np.testing.assert_array_equal(loaded, expected)


@pytest.fixture(scope='module')
def runner_checkpoint(tmp_path_factory):
    """A checkpoint written by a real mmengine Runner (message hub with HistoryBuffers, runtime info, meta),
    with the numpy values of :func:`_numpy_content` in its runtime info and meta."""
    from mmengine.hooks import Hook
    from mmengine.model import BaseModel
    from mmengine.runner import Runner

    class Toy(BaseModel):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(2, 1)

        def forward(self, x, y=None, mode='loss'):
            return dict(loss=((self.lin(x) - 1) ** 2).mean())

    class NumpyContent(Hook):
        def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):
            runner.message_hub.update_info('numpy', _numpy_content())
            runner.message_hub.update_scalar('train/np_metric', np.float32(0.25))

        def before_save_checkpoint(self, runner, checkpoint):
            checkpoint['meta']['numpy'] = _numpy_content()

    wd = tmp_path_factory.mktemp('numpy_runner')
    data = [dict(x=torch.full((2,), float(i)), y=0) for i in range(4)]
    Runner(model=Toy(), work_dir=str(wd), train_dataloader=dict(dataset=data, sampler=dict(type='DefaultSampler'),
                                                                 batch_size=2, collate_fn=dict(type='default_collate')),
           train_cfg=dict(by_epoch=False, max_iters=2), optim_wrapper=dict(optimizer=dict(type='SGD', lr=0.1)),
           default_hooks=dict(checkpoint=dict(type='CheckpointHook', interval=2, by_epoch=False)),
           custom_hooks=[NumpyContent()], experiment_name='numpy_runner').train()
    return str(wd / 'iter_2.pth')


def test_a_runner_checkpoint_with_numpy_content_loads_equal(runner_checkpoint):
    from mmengine.logging import HistoryBuffer
    from mmengine.runner import load_checkpoint

    from dcn_plugin.utils import load_checkpoint_file
    for loaded in (load_checkpoint_file(runner_checkpoint), load_checkpoint(nn.Linear(2, 1), runner_checkpoint)):
        for got in (loaded['meta']['numpy'], loaded['message_hub']['runtime_info']['numpy']):
            assert set(got) == set(_numpy_content())
            for key, expected in _numpy_content().items():
                _assert_same_numpy(got[key], expected)
        buffer = loaded['message_hub']['log_scalars']['train/np_metric']
        assert type(buffer) is HistoryBuffer and buffer.mean() == pytest.approx(0.25)
        assert type(buffer._log_history) is np.ndarray and buffer._log_history.dtype == np.float64
    # torch.load itself, after the allow-list is registered (what user code may do), gives numpy objects too
    loaded = torch.load(runner_checkpoint, weights_only=True)
    _assert_same_numpy(loaded['meta']['numpy']['big'], _numpy_content()['big'])


def test_a_runner_checkpoint_with_numpy_content_loads_in_a_fresh_process(runner_checkpoint):
    line = _load_in_a_subprocess([runner_checkpoint])[runner_checkpoint]
    assert line.startswith('LOADED'), line


# --------------------------------------------------------------------------- the hub cache
def _no_download(url, dst, hash_prefix=None, progress=True):
    raise AssertionError(f'no download expected, got {url}')


def test_a_cached_file_that_does_not_match_the_hash_its_name_carries_is_refused_on_every_use(
        torch_home, tmp_path, monkeypatch):
    """Whatever put a file into the cache under a hashed name (``name-<sha256 prefix>.ext``), it is checked
    each time it is used, not only when it is downloaded."""
    import torch.hub
    from mmengine.runner import load_checkpoint
    from mmengine.runner.checkpoint import get_torchvision_models

    from dcn_plugin.utils import CorruptCheckpointError
    monkeypatch.setattr(torch.hub, 'download_url_to_file', _no_download)
    cached = hub_file(torch_home, get_torchvision_models()['resnet50'])
    os.makedirs(osp.dirname(cached))
    torch.save({'weight': torch.full((1, 2), 66.), 'bias': torch.zeros(1)}, cached)  # someone else's weights
    model = nn.Linear(2, 1)
    with pytest.raises(CorruptCheckpointError, match='is not the file its name names') as e:
        load_checkpoint(model, 'torchvision://resnet50')
    assert cached in str(e.value) and not (model.weight == 66).any()
    # a file that carries its own sha256 prefix loads from the cache, every time; replaced, it is refused
    genuine = tmp_path / 'genuine.pth'
    torch.save({'weight': torch.ones(1, 2), 'bias': torch.zeros(1)}, genuine)
    url = f'https://example.invalid/models/genuine-{sha256_of(genuine)[:10]}.pth'
    shutil.copy(genuine, hub_file(torch_home, url))
    for _ in range(2):
        load_checkpoint(model, url)
        torch.testing.assert_close(model.weight.data, torch.ones(1, 2))
    torch.save({'weight': torch.full((1, 2), 66.), 'bias': torch.zeros(1)}, hub_file(torch_home, url))
    with pytest.raises(CorruptCheckpointError, match='is not the file its name names'):
        load_checkpoint(model, url)


@pytest.mark.parametrize('member', ['../../resnet50-0676ba61.pth', 'resnet50-0676ba61.pth', 'sub/resnet50-0676ba61.pth',
                                    '/tmp/resnet50-0676ba61.pth', '..\\resnet50-0676ba61.pth'])
def test_a_legacy_zipped_hub_file_is_never_unpacked_into_the_cache(torch_home, tmp_path, monkeypatch, member):
    """torch.hub's legacy format (a zip of one file): a member name with path parts is refused, and a plain one
    is read from the archive, so no download can plant a file under another URL's cache name."""
    import torch.hub
    from mmengine.runner import load_checkpoint

    from dcn_plugin.utils import CorruptCheckpointError
    monkeypatch.setattr(torch.hub, 'download_url_to_file', _no_download)
    legacy = tmp_path / 'legacy.pth'
    weights = {'weight': torch.full((1, 2), 66.), 'bias': torch.zeros(1)}
    torch.save(weights, legacy, _use_new_zipfile_serialization=False)
    cached = hub_file(torch_home, EVIL_URL)
    os.makedirs(osp.dirname(cached))
    with zipfile.ZipFile(cached, 'w') as z:
        z.writestr(zipfile.ZipInfo(member), legacy.read_bytes())
    model = nn.Linear(2, 1)
    if member == 'resnet50-0676ba61.pth':
        load_checkpoint(model, EVIL_URL)
        torch.testing.assert_close(model.weight.data, torch.full((1, 2), 66.))
    else:
        with pytest.raises(CorruptCheckpointError, match='is not a plain file name') as e:
            load_checkpoint(model, EVIL_URL)
        assert repr(member) in str(e.value) and cached in str(e.value)
    planted = [osp.join(d, f) for d, _, files in os.walk(torch_home) for f in files if f != osp.basename(cached)]
    assert planted == []


def test_the_readme_states_what_the_loader_checks():
    """The README's checkpoint-safety section says what is checked, with the loader's own numbers."""
    from dcn_plugin.utils import checkpoint
    readme = open(osp.join(ROOT, 'README.md')).read()
    section = readme.split('## Checkpoint safety', 1)[1].split('\n## ', 1)[0]
    text = ' '.join(section.split())
    for claim in (f'`name-<{checkpoint._MIN_HASH_DIGITS} or more hex digits>.ext`', 'on every use',
                  'never unpacked into the cache', 'No pickled state reaches numpy',
                  f'at most {checkpoint._NUMPY_MAX_DIMS} non-negative dimensions', 'exactly itemsize x size',
                  'no object, structured, string or datetime dtypes', 'names the file and the reason',
                  'CRCs', '`tools/export_onnx.py`'):
        assert claim in text, claim
