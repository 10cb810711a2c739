"""The core package needs neither onnx, onnxscript nor onnxruntime; dcn_plugin.deploy imports without
them and names the extra to install where a function needs one (checked in a Python where importing
those packages fails)."""
import json
import os.path as osp
import subprocess
import sys
import textwrap

import pytest

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))

SCRIPT = textwrap.dedent('''
    import importlib.abc, importlib.util, json, sys
    HIDDEN = ('onnx', 'onnxscript', 'onnxruntime', 'onnx_ir')

    class Hide(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split('.')[0] in HIDDEN:
                raise ModuleNotFoundError(f'No module named {name!r} (hidden by the test)', name=name)
            return None

    sys.meta_path.insert(0, Hide())
    import torch
    report = {}
    import dcn_plugin
    from dcn_plugin.ops import ModulatedDeformConv2dPack
    if importlib.util.find_spec('mmdet') is not None:
        import dcn_plugin.models  # backbones, necks, layers
    layer = ModulatedDeformConv2dPack(4, 4, 3, padding=1)
    report['core_output_shape'] = list(layer(torch.randn(1, 4, 5, 5)).shape)
    report['loaded_after_core'] = sorted(m for m in sys.modules if m.split('.')[0] in HIDDEN)

    import dcn_plugin.deploy as deploy
    report['errors'] = []
    for call in (lambda: deploy.onnx_translation_table(),
                 lambda: deploy.export_onnx(layer, (torch.randn(2, 4, 5, 5),)),
                 lambda: deploy.onnxruntime_session('model.onnx')):
        try:
            call()
            report['errors'].append(None)
        except ImportError as e:
            report['errors'].append(str(e))
    print(json.dumps(report))
''')


@pytest.fixture(scope='module')
def report():
    result = subprocess.run([sys.executable, '-c', SCRIPT], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_core_package_imports_and_runs_without_the_onnx_packages(report):
    assert report['core_output_shape'] == [1, 4, 5, 5]
    assert report['loaded_after_core'] == []


def test_deploy_imports_without_them_and_says_which_extra_to_install(report):
    assert len(report['errors']) == 3
    for message in report['errors']:
        assert message is not None and "pip install 'dcn_plugin[deploy]'" in message, message
