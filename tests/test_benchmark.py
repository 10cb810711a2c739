"""The op benchmark (dcn_plugin.benchmark, tools/benchmark_op.py) on a tiny shape: seconds, no mmcv needed."""
import importlib.util
import json
import os

import pytest
import torch

from dcn_plugin.benchmark import (BenchConfig, PRESETS, Shape, format_report, parse_shapes, run_benchmark,
                                  write_reports)
from dcn_plugin.benchmark.op_benchmark import _peak_cpu_alloc, make_inputs

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HAS_MMCV = importlib.util.find_spec('mmcv') is not None


def _tool():
    spec = importlib.util.spec_from_file_location('benchmark_op_tool', os.path.join(ROOT, 'tools', 'benchmark_op.py'))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _tiny_config(**kw):
    kw = {'shapes': [PRESETS['tiny']], 'repeat': 2, 'warmup': 1, 'impls': ('ours', 'torchvision', 'conv2d'),
          'progress': False, 'threads': 1, **kw}  # 1 thread: no OpenMP stalls on a loaded machine
    return BenchConfig(**kw)


@pytest.fixture(scope='module')
def tiny_results():
    return run_benchmark(_tiny_config())


def test_parse_shapes_resolves_groups_presets_and_specs_in_order_without_duplicates():
    shapes = parse_shapes(['r50-640', '256@40x40', '128@128x128/s2/dg4,tiny'])
    assert [s.spec for s in shapes] == ['128@80x80', '256@40x40', '512@20x20', '128@128x128/s2/dg4', '8@8x8/dg2']
    assert shapes[0].name == 'r50-640-c3' and shapes[0].out_hw() == (80, 80)
    assert parse_shapes(['128@128x128/s2'])[0].out_hw() == (64, 64)
    issue = parse_shapes(['issue'])
    assert [(s.channels, s.height, s.stride) for s in issue] == [(128, 64, 1), (256, 32, 1), (512, 16, 1),
                                                                 (128, 128, 2)]
    assert [s.out_hw() for s in parse_shapes(['r50-1333'])] == [(100, 168), (50, 84), (25, 42)]


@pytest.mark.parametrize('bad', ['nonsense', '12@8', '10@8x8/dg4', '0@8x8'])
def test_parse_shapes_rejects_unknown_names_and_bad_specs_with_the_known_names(bad):
    with pytest.raises(ValueError, match='shape'):
        parse_shapes([bad])


def test_inputs_are_the_same_for_every_device_and_dtype_and_realistic():
    s = Shape(16, 12, 10, stride=2, deform_groups=2)
    a = make_inputs(s, 2, torch.float32, torch.device('cpu'), seed=3)
    b = make_inputs(s, 2, torch.float64, torch.device('cpu'), seed=3)
    assert torch.equal(a.offset.double(), b.offset) and torch.equal(a.x.double(), b.x)
    assert a.offset.shape == (2, 2 * 2 * 9, 6, 5) and a.mask.shape == (2, 2 * 9, 6, 5)
    off, mask = a.offset.detach(), a.mask.detach()
    assert 1.5 < float(off.std()) < 2.5 and 0 < float(mask.min()) and float(mask.max()) < 1
    assert all(t.requires_grad and t.is_contiguous() for t in (a.x, a.offset, a.mask, a.weight))


def test_cpu_peak_memory_counts_a_known_allocation():
    peak = _peak_cpu_alloc(lambda: torch.empty(1 << 20, dtype=torch.float32).fill_(1.0))
    assert peak is not None and peak >= 4 << 20


def test_benchmark_times_every_implementation_and_records_memory(tiny_results):
    entry = tiny_results['shapes'][0]
    assert entry['shape']['spec'] == '8@8x8/dg2'
    for name in ('torchvision', 'conv2d', 'ours'):
        r = entry['results'][name]
        assert 'error' not in r, r.get('error')
        assert r['fwd_ms'] > 0 and r['fwdbwd_ms'] > 0 and len(r['fwdbwd_samples_ms']) == 2
        assert r['mem_fwd_bytes'] > 0 and r['mem_fwdbwd_bytes'] >= r['mem_fwd_bytes'] * 0.5
    ratios = entry['ratios']
    assert ratios['ours_over_conv2d_fwd'] > 0 and ratios['torchvision_over_ours_fwdbwd'] > 0


def test_benchmark_checks_that_ours_agrees_with_torchvision(tiny_results):
    agreement = tiny_results['shapes'][0]['agreement']
    assert agreement['reference'] == 'ours'
    assert agreement['ok']['torchvision'], agreement['max_abs_diff']


def test_reports_hold_tables_json_and_chart(tiny_results, tmp_path):
    text = format_report(tiny_results)
    for heading in ('## Time (ms, median)', '## Ratios', '## Peak extra memory', '## Agreement', '## Targets'):
        assert heading in text
    paths = write_reports(tiny_results, str(tmp_path))
    data = json.loads(open(paths['json']).read())
    assert data['config']['dtype'] == 'float32' and data['shapes'][0]['results']['conv2d']['fwd_ms'] > 0
    assert len(data['targets']) == 5
    assert os.path.getsize(paths['png']) > 1000


def test_unavailable_implementation_is_skipped_with_a_note(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, 'find_spec', lambda name, *a: None if name == 'mmcv' else real(name, *a))
    res = run_benchmark(_tiny_config(impls=('mmcv', 'conv2d'), memory=False, check=False, repeat=1, warmup=0))
    assert res['skipped'] == {'mmcv': 'mmcv is not installed'}
    assert res['shapes'][0]['results']['conv2d']['fwd_ms'] > 0
    assert 'mmcv skipped: mmcv is not installed' in format_report(res)


def test_tool_quick_run_writes_its_outputs(tmp_path, capsys):
    rc = _tool().main(['--quick', '--shapes', 'tiny', '--impls', 'torchvision', 'conv2d', '--no-progress',
                       '--repeat', '1', '--warmup', '0', '--threads', '1', '--out-dir', str(tmp_path), '--tag', 't'])
    assert rc == 0
    assert '## Time (ms, median)' in capsys.readouterr().out
    assert sorted(os.listdir(tmp_path)) == [f'op_benchmark_cpu_float32_t.{ext}' for ext in ('json', 'md', 'png')]


def test_tool_cuda_mode_parses_and_refuses_cleanly_without_a_gpu(tmp_path):
    tool = _tool()
    cfg = tool.build_config(tool.parse_args(['--device', 'cuda', '--dtype', 'tf32', '--threads', '2']))
    assert cfg.device == 'cuda' and cfg.dtype == 'tf32' and cfg.threads == 2
    assert [s.name for s in cfg.shapes] == ['r50-1333-c3', 'r50-1333-c4', 'r50-1333-c5', 'r50-1333-c4-dg4']
    if not torch.cuda.is_available():
        assert tool.main(['--device', 'cuda', '--out-dir', str(tmp_path)]) == 2
        assert not os.listdir(tmp_path)
    assert tool.main(['--dtype', 'tf32', '--out-dir', str(tmp_path)]) == 2  # tf32 is a CUDA mode


@pytest.mark.skipif(not HAS_MMCV, reason='mmcv is not installed')
def test_mmcv_runs_and_agrees_when_installed():
    res = run_benchmark(_tiny_config(impls=('torchvision', 'mmcv'), memory=False, repeat=1, warmup=0))
    entry = res['shapes'][0]
    if 'mmcv' in res['skipped']:
        pytest.skip(res['skipped']['mmcv'])
    assert 'error' not in entry['results']['mmcv'], entry['results']['mmcv']
    assert entry['agreement']['ok']['mmcv'], entry['agreement']['max_abs_diff']


def test_cuda_precision_modes_set_tf32_only_for_tf32_and_restore_the_flags():
    from dcn_plugin.benchmark.op_benchmark import _precision
    matmul, cudnn = torch.backends.cuda.matmul, torch.backends.cudnn
    if not hasattr(matmul, 'fp32_precision'):
        pytest.skip('torch < 2.9: legacy TF32 flags')
    before = (matmul.fp32_precision, cudnn.conv.fp32_precision, cudnn.benchmark)
    with _precision(torch.device('cuda'), 'tf32'):
        assert (matmul.fp32_precision, cudnn.conv.fp32_precision, cudnn.benchmark) == ('tf32', 'tf32', True)
    with _precision(torch.device('cuda'), 'float32'):  # true fp32: cuDNN's TF32 default switched off too
        assert (matmul.fp32_precision, cudnn.conv.fp32_precision) == ('ieee', 'ieee')
    assert (matmul.fp32_precision, cudnn.conv.fp32_precision, cudnn.benchmark) == before


def test_gpu_check_script_parses_and_its_summary_reads_a_result_folder(tmp_path, tiny_results):
    import subprocess
    script = os.path.join(ROOT, 'tools', 'gpu_check.sh')
    assert subprocess.run(['bash', '-n', script]).returncode == 0
    assert subprocess.run(['bash', script], capture_output=True).returncode == 2  # no OUTDIR: usage
    (tmp_path / 'steps.tsv').write_text('env\tok\t0\t3\tenv.log\nbuild\tok\t0\t95\tbuild.log\n'
                                        'tests\tfailed\t1\t40\ttests.log\n')
    (tmp_path / 'tests.xml').write_text(
        '<?xml version="1.0"?><testsuites><testsuite name="pytest">'
        '<testcase classname="tests.test_ops.test_cuda" name="test_a" time="0.1"/>'
        '<testcase classname="tests.test_ops.test_cuda" name="test_b" time="0.2"><failure message="boom">tb'
        '</failure></testcase><testcase classname="t" name="test_c"><skipped message="no GPU"/></testcase>'
        '</testsuite></testsuites>')
    write_reports(tiny_results, str(tmp_path), 'op_benchmark_cuda_tf32')
    spec = importlib.util.spec_from_file_location('gpu_summary', os.path.join(ROOT, 'dcn_plugin', 'benchmark',
                                                                              'gpu_summary.py'))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert mod.main([str(tmp_path)]) == 1  # a failed step and a failed test
    summary = json.loads((tmp_path / 'summary.json').read_text())
    assert summary['tests']['counts'] == {'passed': 1, 'failed': 1, 'error': 0, 'skipped': 1}
    failed = summary['tests']['failed'][0]
    assert failed['test'].endswith('test_b') and failed['message'] == 'boom'
    assert summary['benchmarks'][0]['shapes'][0]['results']['ours']['fwd_ms'] > 0
    text = (tmp_path / 'summary.txt').read_text()
    assert 'FAIL tests.test_ops.test_cuda::test_b: boom' in text and 'torchvision/ours' in text
