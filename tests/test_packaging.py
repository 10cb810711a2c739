"""Packaging: one version, the package metadata, and configs shipped mim-style so that a user's config
outside the repository inherits ours by package scope (``_base_ = 'dcn_plugin::...'``)."""
import json
import os
import os.path as osp
import shutil
import subprocess
import sys
import sysconfig
import textwrap

import pytest

import dcn_plugin
from dcn_plugin.version import __version__, parse_version_info, version_info

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
PY = sys.executable
HAVE_MMDET = all(__import__('importlib').util.find_spec(m) is not None for m in ('mmdet', 'mmcv', 'mmengine'))
DEMO_CONFIG = 'demo/faster-rcnn_r18-mdconv-c3-c5_fpn_gn-all_demo-shapes.py'
#: a user's config: ours as its base, by package scope, with one override
USER_CONFIG = f"""
_base_ = 'dcn_plugin::{DEMO_CONFIG}'
model = dict(roi_head=dict(bbox_head=dict(num_classes=3)))
"""
#: builds the user's config's model and runs a forward; prints what the test checks, as JSON
USER_SCRIPT = """
import json, os, sys
import torch
import mmcv.ops, mmdet.models, mmdet.evaluation, mmdet.datasets  # the default set-up: mmcv-lite + compat/mmcv_ext
import dcn_plugin
from mmengine.config import Config
from mmengine.registry import init_default_scope
from mmdet.registry import MODELS
from mmdet.structures import DetDataSample

cfg = Config.fromfile(sys.argv[1])
init_default_scope(cfg.get('default_scope', 'mmdet'))
model = MODELS.build(cfg.model)
model.init_weights()
model.eval()
meta = dict(img_shape=(96, 128), ori_shape=(96, 128), scale_factor=(1.0, 1.0), pad_shape=(96, 128),
            batch_input_shape=(96, 128))
with torch.no_grad():
    out = model.test_step(dict(inputs=[torch.randint(0, 256, (3, 96, 128), dtype=torch.uint8)],
                               data_samples=[DetDataSample(metainfo=meta)]))
mim = os.path.join(os.path.dirname(dcn_plugin.__file__), '.mim', 'configs')
deformable = sum(isinstance(m, dcn_plugin.ModulatedDeformConv2dPack) for m in model.modules())
print(json.dumps(dict(package=dcn_plugin.__file__, version=dcn_plugin.__version__, mim_is_link=os.path.islink(mim),
                      backbone=type(model.backbone).__name__, deformable=deformable,
                      num_classes=model.roi_head.bbox_head.num_classes, boxes=list(out[0].pred_instances.bboxes.shape),
                      hook=cfg.default_hooks.checkpoint.type, mmcv_ext=mmcv._ext.__file__)))
"""


def test_the_version_is_written_once_and_read_by_the_package_and_its_metadata():
    assert dcn_plugin.__version__ == __version__ and dcn_plugin.version_info == version_info
    assert version_info == parse_version_info(__version__) and all(isinstance(v, int) for v in version_info[:3])
    assert parse_version_info('1.0.0rc1') == (1, 0, 0, 'rc1')
    pyproject = open(osp.join(ROOT, 'pyproject.toml')).read()
    assert 'dynamic = ["version"]' in pyproject
    assert 'version = {attr = "dcn_plugin.version.__version__"}' in pyproject
    for path in ('setup.py', 'dcn_plugin/__init__.py'):  # nobody else writes it
        assert __version__ not in open(osp.join(ROOT, path)).read(), path


def test_pyproject_declares_the_package_and_its_extras():
    tomllib = pytest.importorskip('tomllib')
    with open(osp.join(ROOT, 'pyproject.toml'), 'rb') as f:
        meta = tomllib.load(f)
    project = meta['project']
    assert project['name'] == 'dcn_plugin' and project['readme'] == 'README.md'
    assert any(d.startswith('torch') for d in project['dependencies'])
    extras = project['optional-dependencies']
    assert set(extras) >= {'mmdet', 'tests', 'deploy', 'all'}
    # the mmdet extra pins what scripts/setup_env.sh installs
    setup_env = open(osp.join(ROOT, 'scripts', 'setup_env.sh')).read()
    pins = dict(line.split('=', 1) for line in setup_env.splitlines()
                if line.startswith(('MMCV_VER=', 'MMDET_VER=', 'MMENGINE_SPEC=', 'RUFF_SPEC=')))
    assert f'mmcv-lite=={pins["MMCV_VER"]}' in extras['mmdet'] and f'mmdet=={pins["MMDET_VER"]}' in extras['mmdet']
    assert pins['MMENGINE_SPEC'].strip('"') in extras['mmdet']
    assert pins['RUFF_SPEC'].strip('"') in extras['tests']  # the lint's version: the same in CI and for users


@pytest.mark.skipif(not HAVE_MMDET, reason='needs mmengine, mmcv and mmdet')
def test_a_config_outside_the_repository_inherits_ours_by_package_scope(tmp_path):
    """In this environment (the checkout installed editable: its configs are linked under
    dcn_plugin/.mim), from a folder outside the repository."""
    from mmengine.config import Config
    mim = osp.join(osp.dirname(dcn_plugin.__file__), '.mim', 'configs')
    assert osp.isdir(mim), (f'{mim} is missing: install the package (`pip install --no-build-isolation -e .`, '
                            'which scripts/setup_env.sh runs) to link the configs there')
    user = tmp_path / 'my_config.py'
    user.write_text(USER_CONFIG)
    cfg = Config.fromfile(str(user))
    assert cfg.model.backbone.type == 'DCNResNet' and cfg.model.roi_head.bbox_head.num_classes == 3
    assert cfg.train_cfg.max_iters == Config.fromfile(osp.join(ROOT, 'configs', DEMO_CONFIG)).train_cfg.max_iters
    # the base's own dicts get the package's scope, which has registries (no fallback warnings)
    assert cfg.custom_hooks[0]['_scope_'] == 'dcn_plugin'
    from mmengine.registry import HOOKS, init_default_scope
    init_default_scope('mmdet')
    assert type(HOOKS.build(cfg.custom_hooks[0])).__name__ == 'TorchRNGStateHook'


def _isolated_venv(path) -> str:
    """A virtual environment that sees this environment's packages (torch, mmdet, pip, ...) through a
    ``.pth`` line, but not the packages that ``.pth`` files install here (the project's own editable
    install of dcn_plugin): python -m venv copies nothing, the test downloads nothing."""
    subprocess.run([PY, '-m', 'venv', '--without-pip', str(path)], check=True)
    python = osp.join(str(path), 'bin', 'python')
    site = subprocess.run([python, '-c', 'import sysconfig; print(sysconfig.get_paths()["purelib"])'],
                          check=True, capture_output=True, text=True).stdout.strip()
    with open(osp.join(site, 'project_packages.pth'), 'w') as f:
        f.write(sysconfig.get_paths()['purelib'] + '\n')
    return python


def _copy_sources(dst) -> None:
    """The repository as a clone has it (no build products, runs, data or linked configs)."""
    shutil.copytree(ROOT, dst, ignore=shutil.ignore_patterns(
        '.git', '.venv', 'build', 'dist', '*.egg-info', '__pycache__', '*.so', '.mim', 'work_dirs', 'data'))


@pytest.mark.slow
@pytest.mark.skipif(not HAVE_MMDET, reason='needs mmengine, mmcv and mmdet')
@pytest.mark.timeout(900)
def test_pip_install_builds_the_extension_and_user_configs_inherit_the_installed_configs(tmp_path):
    """``pip install --no-build-isolation --no-deps .`` (a real install: the extension is compiled, about
    2 minutes on 2 cores) into a fresh virtual environment, then a user's config outside the repository
    whose ``_base_`` is ``dcn_plugin::...`` builds its model, which runs a forward."""
    python = _isolated_venv(tmp_path / 'venv')
    src = tmp_path / 'src'
    _copy_sources(src)
    env = {k: v for k, v in os.environ.items() if k not in ('PYTHONPATH', 'PYTHONHOME')}
    env['PATH'] = os.pathsep.join([osp.dirname(python), osp.dirname(PY), env.get('PATH', '')])  # ninja
    env.setdefault('MAX_JOBS', '2')
    build = subprocess.run([python, '-m', 'pip', 'install', '-q', '--disable-pip-version-check',
                            '--no-build-isolation', '--no-deps', '.'], cwd=str(src), env=env,
                           capture_output=True, text=True)
    assert build.returncode == 0, build.stdout[-3000:] + build.stderr[-6000:]
    user = tmp_path / 'user'
    user.mkdir()
    (user / 'my_config.py').write_text(USER_CONFIG)
    (user / 'run.py').write_text(textwrap.dedent(USER_SCRIPT))
    proc = subprocess.run([python, 'run.py', 'my_config.py'], cwd=str(user), env=dict(env, OMP_NUM_THREADS='1'),
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-6000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    site = str(tmp_path / 'venv')
    assert result['package'].startswith(site), result  # the installed copy, not the repository's
    assert result['version'] == __version__
    assert result['mim_is_link'] is False  # copied into the installation
    assert result['backbone'] == 'DCNResNet' and result['deformable'] > 0 and result['num_classes'] == 3
    assert result['boxes'][1] == 4 and result['hook'] == 'AtomicCheckpointHook'
    import mmcv._ext
    assert result['mmcv_ext'] == mmcv._ext.__file__  # the environment's (the stand-in, where set up the default way)
    assert 'Failed to search registry' not in proc.stderr and 'Failed to import' not in proc.stderr
