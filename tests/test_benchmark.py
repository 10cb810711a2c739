"""tools/benchmark.py and its modes in tools/benchmarks (op, model, roi-pool), on tiny cases: one
thread, a few hundredths of a second of timing per implementation, no GPU needed."""
import argparse
import importlib.util
import json
import os

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HAS_MMCV = importlib.util.find_spec('mmcv') is not None
HAS_MMDET = importlib.util.find_spec('mmdet') is not None
FAST = ['--threads', '1', '--min-run-time', '0.02', '--rounds', '2']
DEMO_DCN = os.path.join(ROOT, 'configs', 'demo', 'faster-rcnn_r18-mdconv-c3-c5_fpn_gn-all_demo-shapes.py')
DEMO_PLAIN = os.path.join(ROOT, 'configs', 'demo', 'faster-rcnn_r18_fpn_gn-all_demo-shapes.py')


def _load(name):
    spec = importlib.util.spec_from_file_location(f'tool_{name[:-3]}', os.path.join(ROOT, 'tools', name))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


tool = _load('benchmark.py')  # puts tools/ on sys.path: the modes are the package tools/benchmarks
from benchmarks.common import agreement, peak_memory, precision_flags, set_flags  # noqa: E402
from benchmarks.model import PARTS, _no_pretrained, breakdown  # noqa: E402
from benchmarks.op import OpMode, parse_shapes  # noqa: E402
from benchmarks.roi_pool import RoIPoolMode  # noqa: E402


def _outputs(folder, stem):
    return sorted(os.listdir(folder)) == [f'{stem}.{ext}' for ext in ('json', 'md', 'png')]


@pytest.fixture(scope='module')
def op_run(tmp_path_factory):
    out = tmp_path_factory.mktemp('op')
    rc = tool.main(['op', '--shapes', 'tiny', '--impls', 'ours', 'torchvision', 'conv2d', *FAST, '--out-dir', str(out)])
    return rc, out, json.loads((out / 'op_benchmark_cpu_float32.json').read_text())


def test_parse_shapes_resolves_sets_and_specs_in_order_without_duplicates():
    cases = parse_shapes(['r50-640x640', '256@40x40', '128@128x128/s2/dg4,tiny', 'mine=16@8x12/k5'], batch=2)
    assert [c['spec'] for c in cases] == ['128@80x80', '256@40x40', '512@20x20', '128@128x128/s2/dg4', '8@8x8/dg2',
                                          '16@8x12/k5']
    assert cases[0]['label'] == 'r50-640-c3 (128@80x80)' and cases[0]['out_hw'] == [80, 80]
    assert cases[-1]['label'] == 'mine (16@8x12/k5)' and (cases[-1]['kernel'], cases[-1]['padding']) == (5, 2)
    assert parse_shapes(['128@128x128/s2'], 2)[0]['out_hw'] == [64, 64]
    assert [(c['channels'], c['height'], c['stride'], c['gflop']) for c in parse_shapes(['equal-gflop'], 2)] == [
        (128, 64, 1, 2.42), (256, 32, 1, 2.42), (512, 16, 1, 2.42), (128, 128, 2, 2.42)]
    assert [c['out_hw'] for c in parse_shapes(['r50-1333x800'], 2)] == [[100, 168], [50, 84], [25, 42]]
    cpu = parse_shapes(['cpu'], 2)  # the default CPU set: the 8 shapes of docs/benchmarks.md
    assert len(cpu) == 8 and cpu[-1]['spec'] == '256@40x40/dg4'


@pytest.mark.parametrize('bad', ['nonsense', '12@8', '10@8x8/dg4', '0@8x8', '8@8x8/s0'])
def test_parse_shapes_rejects_unknown_names_and_bad_specs_naming_the_syntax(bad):
    with pytest.raises(ValueError, match='shape'):
        parse_shapes([bad], 2)


def test_op_inputs_are_the_same_for_every_dtype_and_realistic():
    def inputs(dtype):
        args = argparse.Namespace(device='cpu', dtype=dtype, seed=3)
        return OpMode(args).inputs(parse_shapes(['16@12x10/s2/dg2'], 2)[0])
    a, b = inputs('float32'), inputs('float64')
    assert all(torch.equal(x.double(), y) for x, y in zip(a[:5], b[:5]))
    x, offset, mask, weight, grad_out, case = a
    assert offset.shape == (2, 2 * 2 * 9, 6, 5) and mask.shape == (2, 2 * 9, 6, 5) and grad_out.shape == (2, 16, 6, 5)
    assert all(t.requires_grad and t.is_contiguous() for t in (x, offset, mask, weight)) and not grad_out.requires_grad
    offset, mask = offset.detach(), mask.detach()
    assert 1.5 < float(offset.std()) < 2.5 and 0 < float(mask.min()) and float(mask.max()) < 1


def test_cpu_peak_memory_counts_allocations_and_their_peak():
    cpu = torch.device('cpu')
    assert peak_memory(lambda: None, cpu) == 0
    assert peak_memory(lambda: torch.empty(1 << 20).fill_(1.0), cpu) == 4 << 20  # the result counts

    def temporary_then_small():
        t = torch.ones(2 << 20)
        del t
        return torch.ones(1 << 18)
    assert peak_memory(temporary_then_small, cpu) == 8 << 20  # the peak, not the end


def test_op_mode_times_checks_and_sizes_every_implementation_and_writes_its_files(op_run):
    rc, out, data = op_run
    assert rc == 0 and _outputs(out, 'op_benchmark_cpu_float32')
    entry = data['cases'][0]
    assert entry['case']['spec'] == '8@8x8/dg2' and data['skipped'] == {} and data['failures'] == []
    for name in ('ours', 'torchvision', 'conv2d'):
        r = entry['results'][name]
        assert 'error' not in r, r.get('error')
        assert r['fwd_ms'] > 0 and r['fwdbwd_ms'] > 0 and len(r['fwdbwd_samples_ms']) >= 2
        assert r['mem_fwd_bytes'] > 0 and r['mem_fwdbwd_bytes'] >= r['mem_fwd_bytes'] * 0.5
    ratios = entry['ratios']
    assert ratios['ours_over_conv2d_fwd'] == pytest.approx(entry['results']['ours']['fwd_ms']
                                                           / entry['results']['conv2d']['fwd_ms'])
    assert ratios['torchvision_over_ours_fwdbwd'] > 0 and ratios['ours_over_torchvision_mem_fwdbwd'] > 0
    assert not any(k.startswith('mmcv') for k in ratios)  # not asked for: no ratio
    agreement = entry['agreement']
    assert agreement['reference'] == 'ours' and agreement['ok'] == {'torchvision': True}, agreement['max_abs_diff']
    assert set(agreement['max_abs_diff']['torchvision']) == {'output', 'grad_input', 'grad_offset', 'grad_mask',
                                                             'grad_weight'}
    text = (out / 'op_benchmark_cpu_float32.md').read_text()
    for heading in ('## Time (ms, median)', '## Ratios', '## Peak extra memory', '## Agreement with ours',
                    '- git commit'):
        assert heading in text
    assert os.path.getsize(out / 'op_benchmark_cpu_float32.png') > 1000


def test_agreement_check_catches_a_wrong_implementation_loudly(monkeypatch, tmp_path, capsys):
    ours, leaves = OpMode.impls['ours'](argparse.Namespace(device='cpu'))
    wrong = lambda x, o, m, w, c: ours(x, o, m, w, c) * 1.001  # noqa: E731  (0.1% off: far above 1e-4)
    monkeypatch.setitem(OpMode.impls, 'torchvision', lambda args: (wrong, leaves))
    rc = tool.main(['--shapes', 'tiny', '--impls', 'ours', 'torchvision', '--no-memory', *FAST,
                    '--out-dir', str(tmp_path)])
    assert rc == 1
    assert 'torchvision DISAGREES with ours' in capsys.readouterr().err
    data = json.loads((tmp_path / 'op_benchmark_cpu_float32.json').read_text())
    assert data['cases'][0]['agreement']['ok'] == {'torchvision': False}
    text = (tmp_path / 'op_benchmark_cpu_float32.md').read_text()
    assert '**NO**' in text and '**tiny (8@8x8/dg2): torchvision DISAGREES with ours' in text


def test_agreement_never_accepts_a_wrong_shape_or_a_missing_tensor():
    a = torch.randn(4, 3)
    check = agreement({'ours': [a, a], 'same': [a.clone(), a + 1e-9], 'cut': [a[:2], a], 'short': [a]},
                      'ours', 1e-4, ('output', 'grad'))
    assert check['ok'] == {'same': True, 'cut': False, 'short': False}


def test_unavailable_implementation_is_skipped_with_a_note(monkeypatch, tmp_path):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, 'find_spec', lambda name, *a: None if name == 'mmcv' else real(name, *a))
    rc = tool.main(['--shapes', 'tiny', '--impls', 'mmcv', 'ours', '--no-memory', *FAST, '--out-dir', str(tmp_path)])
    data = json.loads((tmp_path / 'op_benchmark_cpu_float32.json').read_text())
    assert rc == 0 and data['skipped'] == {'mmcv': 'mmcv is not installed'} and data['impls'] == ['ours']
    assert data['cases'][0]['results']['ours']['fwd_ms'] > 0
    assert '- mmcv skipped: mmcv is not installed' in (tmp_path / 'op_benchmark_cpu_float32.md').read_text()


@pytest.mark.parametrize('dtype', ['float16', 'bfloat16'])
def test_half_dtypes_on_the_cpu_are_refused_in_the_users_terms(dtype, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        tool.main(['--dtype', dtype, '--out-dir', str(tmp_path)])
    assert e.value.code == 2 and f'--dtype {dtype} needs --device cuda' in capsys.readouterr().err
    assert not os.listdir(tmp_path)


@pytest.mark.parametrize('argv, message', [(['--batch', '0'], '--batch: must be positive'),
                                           (['--min-run-time', 'x'], "--min-run-time: invalid float value: 'x'"),
                                           (['--shapes', '12@8'], "unknown shape '12@8'"),
                                           (['--impls', 'cudnn'], "invalid choice: 'cudnn'"),
                                           (['--tf32'], '--tf32 needs --device cuda'),
                                           (['model', 'missing.py', '--baseline', 'missing.py'],
                                            'config file not found: missing.py')])
def test_bad_arguments_are_refused_naming_the_argument(argv, message, capsys):
    with pytest.raises(SystemExit) as e:
        tool.parse_args(argv)
    assert e.value.code == 2 and message in capsys.readouterr().err


def test_op_is_the_default_subcommand_with_the_devices_shape_set():
    args = tool.parse_args([])
    assert (args.command, args.device, args.dtype, args.shapes, args.batch) == ('op', 'cpu', 'float32', ['cpu'], 2)
    assert args.impls == ['ours', 'torchvision', 'mmcv', 'conv2d'] and not args.tf32
    assert tool.parse_args(['op', '--shapes', 'quick']).shapes == ['quick']


@pytest.mark.skipif(torch.cuda.is_available(), reason='checks the refusal on a machine without a GPU')
def test_cuda_mode_is_refused_cleanly_without_a_gpu(tmp_path, capsys):
    for argv in (['--device', 'cuda'],
                 ['--device', 'cuda', '--dtype', 'bfloat16', '--tf32', '--shapes', 'r50-1333x800']):
        with pytest.raises(SystemExit) as e:
            tool.main([*argv, '--out-dir', str(tmp_path)])
        assert e.value.code == 2 and '--device cuda: no CUDA device here' in capsys.readouterr().err
    assert not os.listdir(tmp_path)


def test_cuda_precision_flags_set_tf32_only_when_asked_and_are_restored():
    matmul, cudnn = torch.backends.cuda.matmul, torch.backends.cudnn
    if not hasattr(matmul, 'fp32_precision'):
        pytest.skip('torch < 2.9: legacy TF32 flags')
    assert precision_flags(torch.device('cpu'), True) == []
    before = (matmul.fp32_precision, cudnn.conv.fp32_precision, cudnn.benchmark)
    saved = set_flags(precision_flags(torch.device('cuda'), True))
    assert (matmul.fp32_precision, cudnn.conv.fp32_precision, cudnn.benchmark) == ('tf32', 'tf32', True)
    set_flags(precision_flags(torch.device('cuda'), False))  # true fp32: cuDNN's TF32 default off too
    assert (matmul.fp32_precision, cudnn.conv.fp32_precision) == ('ieee', 'ieee')
    set_flags(saved)
    assert (matmul.fp32_precision, cudnn.conv.fp32_precision, cudnn.benchmark) == before


@pytest.mark.skipif(not HAS_MMCV, reason='mmcv is not installed')
def test_mmcv_runs_and_agrees_when_compiled_and_is_skipped_with_a_reason_on_mmcv_lite(tmp_path):
    assert tool.main(['--shapes', 'tiny', '--impls', 'ours', 'mmcv', '--no-memory', *FAST,
                      '--out-dir', str(tmp_path)]) == 0
    data = json.loads((tmp_path / 'op_benchmark_cpu_float32.json').read_text())
    from dcn_plugin.utils.compat import mmcv_has_compiled_ops
    if not mmcv_has_compiled_ops():  # timing mmcv-lite's layer would time our own op under mmcv's name
        assert data['skipped']['mmcv'].startswith('mmcv has no compiled operators') and data['impls'] == ['ours']
        return
    assert 'error' not in data['cases'][0]['results']['mmcv'] and data['cases'][0]['agreement']['ok'] == {'mmcv': True}


def test_model_configs_lose_every_pretrained_init_and_keep_the_others():
    cfg = {'backbone': {'init_cfg': {'type': 'Pretrained', 'checkpoint': 'torchvision://resnet50'}, 'depth': 50,
                        'plugins': [{'cfg': {'init_cfg': None}}]},
           'neck': {'init_cfg': [{'type': 'Xavier'}, {'type': 'Pretrained', 'checkpoint': 'x.pth'}]},
           'head': {'init_cfg': [{'type': 'Pretrained', 'checkpoint': 'y.pth'}], 'pretrained': 'z.pth'}}
    _no_pretrained(cfg)
    assert cfg == {'backbone': {'init_cfg': None, 'depth': 50, 'plugins': [{'cfg': {'init_cfg': None}}]},
                   'neck': {'init_cfg': [{'type': 'Xavier'}]}, 'head': {'init_cfg': None, 'pretrained': None}}


def _breakdown_of(net, x):
    def step():
        net.zero_grad(set_to_none=True)
        net(x).sum().backward()
    return breakdown(step, net, torch.device('cpu'))


def test_breakdown_gives_conv_offset_its_backward_and_sums_to_the_profiled_total():
    from dcn_plugin.ops import ModulatedDeformConv2dPack
    torch.manual_seed(0)
    x = torch.randn(2, 8, 12, 12)
    only_dcn = _breakdown_of(ModulatedDeformConv2dPack(8, 8, 3, padding=1), x)
    parts = only_dcn['parts']
    assert list(parts) == list(PARTS) and all(v >= 0 for v in parts.values())
    assert parts['other convolutions'] == 0  # conv_offset's forward and backward convolutions are its own
    assert min(parts[p] for p in PARTS[:4]) > 0
    assert sum(parts.values()) == pytest.approx(only_dcn['step_ms'], rel=0.01)
    mixed = _breakdown_of(torch.nn.Sequential(torch.nn.Conv2d(8, 8, 3, padding=1),
                                              ModulatedDeformConv2dPack(8, 8, 3, padding=1)), x)
    assert mixed['parts']['other convolutions'] > 0 and mixed['parts'][PARTS[0]] > 0
    assert mixed['total_ms'] == pytest.approx(mixed['step_ms'], rel=0.01)


@pytest.mark.skipif(not HAS_MMDET, reason='the model mode needs mmdet')
def test_model_mode_compares_the_demo_detectors_with_a_breakdown_and_writes_its_files(tmp_path, capsys):
    rc = tool.main(['model', DEMO_DCN, '--baseline', DEMO_PLAIN, '--image-size', '60', '64', '--batch', '1',
                    '--breakdown', *FAST, '--out-dir', str(tmp_path)])
    stem = 'model_benchmark_cpu_float32_faster-rcnn_r18-mdconv-c3-c5_fpn_gn-all_demo-shapes_detector_60x64'
    assert rc == 0 and _outputs(tmp_path, stem)
    data = json.loads((tmp_path / f'{stem}.json').read_text())
    entry = data['cases'][0]
    assert data['impls'] == ['dcn', 'baseline'] and data['failures'] == []
    assert entry['case']['input_size'] == [64, 64] and entry['agreement'] is None  # padded to 32 as mmdet does
    for name in ('dcn', 'baseline'):
        r = entry['results'][name]
        assert r['infer_ms'] > 0 and r['train_ms'] > 0 and r['mem_infer_bytes'] > 0 and r['mem_train_bytes'] > 0
    assert entry['ratios']['dcn_over_baseline_train'] == pytest.approx(entry['results']['dcn']['train_ms']
                                                                       / entry['results']['baseline']['train_ms'])
    ratios = {'dcn_over_baseline_infer', 'dcn_over_baseline_mem_infer', 'dcn_over_baseline_mem_train'}
    assert ratios < set(entry['ratios'])
    for phase in ('infer', 'train'):
        b = entry['breakdown'][phase]
        assert sum(b['parts'].values()) == pytest.approx(b['step_ms'], rel=0.01)
        assert min(b['parts'][p] for p in PARTS) > 0  # the demo model has every part
    printed = capsys.readouterr().out
    assert '| dcn / baseline | dcn / baseline memory |' in printed and '## Breakdown of dcn, training step' in printed


@pytest.mark.skipif(not HAS_MMDET, reason='the model mode needs mmdet')
@pytest.mark.parametrize('part', ['backbone', 'backbone+neck'])
def test_model_mode_runs_a_part_of_the_models(part, tmp_path):
    rc = tool.main(['model', DEMO_DCN, '--baseline', DEMO_PLAIN, '--part', part, '--mode', 'train', '--image-size',
                    '32', '32', '--no-memory', *FAST, '--out-dir', str(tmp_path)])
    data = json.loads(next(tmp_path.glob('*.json')).read_text())
    assert rc == 0 and list(data['phases']) == ['train'] and data['cases'][0]['ratios']['dcn_over_baseline_train'] > 0
    assert next(tmp_path.glob('*.json')).name.endswith(f'_{part.replace("+", "-")}_32x32.json')


def test_roi_pool_mode_times_ours_against_roi_align_and_they_agree_without_offsets(tmp_path, capsys):
    rc = tool.main(['roi-pool', '--rois', '16', '--channels', '8', '--image-size', '64', '96', '--levels', 'P3', 'P5',
                    *FAST, '--out-dir', str(tmp_path)])
    assert rc == 0 and _outputs(tmp_path, 'roi-pool_benchmark_cpu_float32')
    res = json.loads((tmp_path / 'roi-pool_benchmark_cpu_float32.json').read_text())
    assert [c['case']['label'] for c in res['cases']] == ['P3', 'P5'] and res['failures'] == []
    for case in res['cases']:
        assert all(case['results'][n][f'{p}_ms'] > 0 for n in ('ours', 'ours-no-offset', 'roi_align')
                   for p in ('fwd', 'fwdbwd'))
        assert case['agreement']['ok'] == {'roi_align': True}  # plain pooling is RoIAlign(aligned=True)
        assert 'ours_over_roi_align_fwd' in case['ratios']
    assert 'ours / roi_align' in capsys.readouterr().out


def test_roi_pool_inputs_map_every_roi_to_its_level():
    args = tool.parse_args(['roi-pool', '--rois', '200', '--levels', 'P2', 'P4'])
    mode = RoIPoolMode(args)
    for case in mode.cases({}):
        rois = mode.inputs(case)[1]
        w, h = rois[:, 3] - rois[:, 1], rois[:, 4] - rois[:, 2]
        scale = (w * h).sqrt()
        level = torch.floor(torch.log2(scale / 56 + 1e-6)).clamp(0, 3) + 2  # mmdet's map_roi_levels, finest 56
        clipped = (w >= 1333 - 1e-3) | (h >= 800 - 1e-3)  # RoIs cut by the image border map lower
        assert ((level == int(case['level'][1])) | clipped).float().mean() > 0.95
        assert (rois[:, 1:3] >= 0).all() and (rois[:, 3] <= 1333).all() and (rois[:, 4] <= 800).all()
