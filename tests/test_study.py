"""Collecting several runs into a table (dcn_plugin.apis.study, tools/collect_metrics.py, tools/mimic_study.sh),
and the user's round trip with R-CNN feature mimicking: train with the branch, test with and without it."""
import json
import os
import os.path as osp
import statistics
import subprocess
import sys

import pytest

from dcn_plugin.apis.study import format_brief, format_markdown, load_run, summarize_runs

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
PY = sys.executable


def _fake_run(base, name, config, seed, maps, times=(9.0, 0.5, 0.7, 0.6), iters=80):
    """A work dir as tools/train.py + tools/test.py leave it (only the files the collector reads)."""
    wd = base / name
    train = wd / '20260101_000000' / 'vis_data'
    train.mkdir(parents=True)
    (train / 'config.py').write_text(f"train_cfg = dict(type='IterBasedTrainLoop', max_iters={iters})\n"
                                     f"randomness = dict(seed={seed})\n")
    step = iters // len(times)
    rows = [dict(lr=0.001, loss=1.0, time=t, iter=step * (i + 1), step=step * (i + 1)) for i, t in enumerate(times)]
    (train / 'scalars.json').write_text(''.join(json.dumps(r) + '\n' for r in rows))
    test = wd / '20260101_010000' / 'vis_data'  # the test session's log: metrics, no losses
    test.mkdir(parents=True)
    (test / 'scalars.json').write_text(json.dumps({'coco/bbox_mAP': maps[0], 'step': 0}) + '\n')
    metrics = {'coco/bbox_mAP': maps[0], 'coco/bbox_mAP_50': maps[1], 'coco/bbox_mAP_75': maps[2],
               'coco/bbox_mAP_s': -1.0}
    (wd / 'test_metrics.json').write_text(json.dumps(
        dict(config=f'configs/demo/{config}.py', checkpoint=str(wd / f'iter_{iters}.pth'), metrics=metrics)))
    return str(wd)


def test_runs_are_grouped_by_config_with_mean_sample_std_and_range(tmp_path):
    a0 = _fake_run(tmp_path, 'a0', 'plain', 0, (0.30, 0.50, 0.35))
    a1 = _fake_run(tmp_path, 'a1', 'plain', 1, (0.32, 0.54, 0.33), times=(9.0, 0.9, 0.8, 1.0))
    b0 = _fake_run(tmp_path, 'b0', 'mimic', 0, (0.40, 0.60, 0.45))
    runs = [load_run(a0), load_run(b0), load_run(osp.join(a1, 'test_metrics.json'))]
    assert [r.arm for r in runs] == ['plain', 'mimic', 'plain']
    assert runs[0].seed == 0 and runs[2].seed == 1
    assert runs[0].iters == 80
    assert runs[0].sec_per_iter == pytest.approx(0.6)  # median without the first (start-up) window
    plain, mimic = summarize_runs(runs)
    assert (plain.arm, len(plain.runs), mimic.arm, len(mimic.runs)) == ('plain', 2, 'mimic', 1)
    assert plain.mean['coco/bbox_mAP'] == pytest.approx(0.31)
    assert plain.std['coco/bbox_mAP'] == pytest.approx(0.0141421, abs=1e-6)  # sample std (n - 1)
    assert (plain.low['coco/bbox_mAP_75'], plain.high['coco/bbox_mAP_75']) == (0.33, 0.35)
    assert plain.mean['sec_per_iter'] == pytest.approx(0.75)
    assert mimic.std['coco/bbox_mAP'] is None  # one run: no spread
    text = format_markdown([plain, mimic])
    assert '| plain | 2 | 0, 1 | 80 | 0.310 ± 0.014 (0.300–0.320) |' in text
    assert '| mimic | 1 | 0 | 80 | 0.400 | 0.600 | 0.450 | 0.60 |' in text
    assert text.count('\n') == 2 + 2 + 1 + 2 + 3


def test_a_resumed_run_counts_the_speed_of_every_training_session(tmp_path):
    wd = _fake_run(tmp_path, 'resumed', 'dcn', 2, (0.3, 0.5, 0.4), times=(9.0, 1.0, 1.0))
    second = osp.join(wd, '20260101_000500', 'vis_data')  # resumed before the test session
    os.makedirs(second)
    with open(osp.join(second, 'config.py'), 'w') as f:
        f.write("train_cfg = dict(type='IterBasedTrainLoop', max_iters=120)\nrandomness = dict(seed=2)\n")
    with open(osp.join(second, 'scalars.json'), 'w') as f:
        for i, t in enumerate((7.0, 3.0, 3.0, 3.0)):
            f.write(json.dumps(dict(loss=1.0, time=t, iter=60 + 20 * i)) + '\n')
    run = load_run(wd)
    assert (run.seed, run.iters) == (2, 120)
    assert run.sec_per_iter == 3.0  # median of 1, 1, 3, 3, 3: start-up windows (9, 7) left out


def test_collector_refuses_what_it_cannot_read(tmp_path):
    with pytest.raises(FileNotFoundError, match='tools/test.py'):
        load_run(str(tmp_path))
    (tmp_path / 'test_metrics.json').write_text('[1, 2]')
    with pytest.raises(ValueError, match='not a test_metrics.json'):
        load_run(str(tmp_path))
    run = load_run(_fake_run(tmp_path, 'r', 'plain', 0, (0.1, 0.2, 0.3)))
    with pytest.raises(KeyError, match='coco/segm_mAP'):
        summarize_runs([run], ['coco/segm_mAP'])


def test_collect_metrics_cli_writes_markdown_and_json(tmp_path):
    runs = [_fake_run(tmp_path, f'r{s}', 'dcn', s, (0.3 + s / 100, 0.5, 0.4)) for s in range(3)]
    out, js = tmp_path / 'table.md', tmp_path / 'table.json'
    proc = subprocess.run([PY, 'tools/collect_metrics.py', *runs, '--metrics', 'coco/bbox_mAP', '--out', str(out),
                           '--json', str(js)], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert '| dcn | 3 | 0, 1, 2 | 80 | 0.310 ± 0.010 (0.300–0.320) | 0.60 ± 0.00 (0.60–0.60) |' in proc.stdout
    assert out.read_text() == proc.stdout
    (summary,) = json.loads(js.read_text())
    assert summary['arm'] == 'dcn' and len(summary['runs']) == 3


def test_arms_are_compared_with_a_baseline_by_welch_t_test(tmp_path):
    from scipy import stats

    from dcn_plugin.apis.study import compare_arms, format_comparison
    plain = [0.30, 0.34, 0.31]
    dcn = [0.33, 0.36, 0.35, 0.37]
    runs = [load_run(_fake_run(tmp_path, f'p{i}', 'plain', i, (v, 0.5, 0.4))) for i, v in enumerate(plain)]
    runs += [load_run(_fake_run(tmp_path, f'd{i}', 'dcn', i, (v, 0.5, 0.4))) for i, v in enumerate(dcn)]
    runs += [load_run(_fake_run(tmp_path, 'one', 'single', 0, (0.2, 0.5, 0.4)))]
    (c, single) = compare_arms(summarize_runs(runs), 'plain')
    want = stats.ttest_ind(dcn, plain, equal_var=False)
    assert (c.arm, c.baseline, c.n, c.n_baseline, c.paired) == ('dcn', 'plain', 4, 3, False)
    assert c.diff == pytest.approx(sum(dcn) / 4 - sum(plain) / 3)
    assert (c.t, c.p) == (pytest.approx(want.statistic), pytest.approx(want.pvalue))
    v1, v2 = statistics.variance(dcn) / 4, statistics.variance(plain) / 3
    assert c.se == pytest.approx((v1 + v2) ** 0.5)
    assert c.df == pytest.approx((v1 + v2) ** 2 / (v1 ** 2 / 3 + v2 ** 2 / 2))
    assert single.n == 1 and single.diff == pytest.approx(0.2 - sum(plain) / 3) and single.p is None
    text = format_comparison([c, single])
    assert f'| dcn | 4 | +{c.diff:.3f} | {c.se:.3f} | {c.t:.2f} | {c.df:.1f} | {c.p:.2f} |' in text
    assert '| single | 1 | -0.117 | — | — | — | — |' in text
    with pytest.raises(KeyError, match="baseline arm 'nope' is not among the arms"):
        compare_arms(summarize_runs(runs), 'nope')
    folders = [r.work_dir for r in runs]
    proc = subprocess.run([PY, 'tools/collect_metrics.py', *folders, '--baseline', 'plain'], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert f'| dcn | 4 | +{c.diff:.3f} | {c.se:.3f} | {c.t:.2f} |' in proc.stdout
    proc = subprocess.run([PY, 'tools/collect_metrics.py', *folders, '--baseline', 'nope'], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and "--baseline: baseline arm 'nope' is not among the arms" in proc.stderr


def test_arms_are_compared_seed_by_seed_when_paired(tmp_path):
    from scipy import stats

    from dcn_plugin.apis.study import compare_arms, format_comparison
    base = {0: 0.30, 1: 0.36, 2: 0.31, 5: 0.33}
    arm = {0: 0.29, 1: 0.34, 2: 0.30, 3: 0.50}  # seed 3 has no partner, seed 5 none here
    runs = [load_run(_fake_run(tmp_path, f'b{s}', 'base', s, (v, 0.5, 0.4))) for s, v in base.items()]
    runs += [load_run(_fake_run(tmp_path, f'a{s}', 'arm', s, (v, 0.5, 0.4))) for s, v in arm.items()]
    (c,) = compare_arms(summarize_runs(runs), 'base', paired=True)
    want = stats.ttest_rel([arm[s] for s in (0, 1, 2)], [base[s] for s in (0, 1, 2)])
    assert (c.n, c.n_baseline, c.df, c.paired) == (3, 3, 2.0, True)
    assert c.diff == pytest.approx(-0.04 / 3)
    assert list(c.by_seed) == [0, 1, 2] and c.by_seed[1] == pytest.approx(-0.02)
    assert (c.t, c.p) == (pytest.approx(want.statistic), pytest.approx(want.pvalue))
    assert '| arm | 3 | -0.013 |' in format_comparison([c])
    assert 'paired t' in format_comparison([c])
    same = [load_run(_fake_run(tmp_path, f'c{s}', 'shifted', s, (base[s] + 0.01, 0.5, 0.4))) for s in (0, 1)]
    (flat, _) = compare_arms(summarize_runs(runs[:4] + same + runs[4:]), 'base', paired=True)
    assert flat.diff == pytest.approx(0.01) and flat.se is None and flat.p is None  # no spread in the differences
    folders = [r.work_dir for r in runs]
    proc = subprocess.run([PY, 'tools/collect_metrics.py', *folders, '--paired'], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and '--paired needs --baseline ARM' in proc.stderr
    proc = subprocess.run([PY, 'tools/collect_metrics.py', *folders, '--baseline', 'base', '--paired'], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert (f'| arm | 3 | -0.013 | {c.se:.3f} | {c.t:.2f} | 2.0 | {c.p:.2f} | 0: -0.010, 1: -0.020, 2: -0.010 |'
            in proc.stdout)


def test_collect_metrics_brief_prints_one_line_per_run(tmp_path):
    runs = [_fake_run(tmp_path, f'r{s}', 'dcn', s, (0.3 + s / 100, 0.5, 0.4)) for s in range(2)]
    assert format_brief([load_run(r) for r in runs]) == ('dcn: bbox mAP 0.300  mAP@0.5 0.500  mAP@0.75 0.400\n'
                                                         'dcn: bbox mAP 0.310  mAP@0.5 0.500  mAP@0.75 0.400\n')
    proc = subprocess.run([PY, 'tools/collect_metrics.py', runs[0], '--brief', '--metrics', 'coco/bbox_mAP',
                           'coco/segm_mAP'], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == 'dcn: bbox mAP 0.300  segm_mAP nan\n'


def test_study_script_is_valid_bash_and_checks_its_arguments():
    script = osp.join(ROOT, 'tools', 'mimic_study.sh')
    subprocess.run(['bash', '-n', script], check=True)
    help_text = subprocess.run(['bash', script, '--help'], capture_output=True, text=True, check=True).stdout
    assert '--seeds' in help_text and 'randomness.seed' in help_text
    for args, message in ((['--iters', '0'], '--iters'), (['--seeds', 'x'], '--seeds'),
                          (['--arms', 'no-such-config'], 'no config'), (['--bogus'], 'unknown argument')):
        proc = subprocess.run(['bash', script, *args], capture_output=True, text=True)
        assert proc.returncode == 2 and message in proc.stderr, (args, proc.stderr)
    # the default arms are shipped configs
    text = open(script).read()
    arms = text.split('ARMS="', 1)[1].split('"', 1)[0].split()
    assert len(arms) == 4 and sum('_mimic_' in a for a in arms) == 2
    assert all(osp.isfile(osp.join(ROOT, 'configs', 'demo', a + '.py')) for a in arms)


@pytest.mark.slow
def test_train_with_mimicking_then_test_with_and_without_the_branch(tmp_path):
    """What a user does: train the mimic config, test the checkpoint with it and with the plain config
    (same predictions, so the same metrics), then collect both runs."""
    pytest.importorskip('mmdet')
    from dcn_plugin.datasets import generate_demo_dataset
    root = str(tmp_path / 'data') + '/'
    generate_demo_dataset(root, seed=1, splits={'train': 8, 'val': 4}, image_size=96)
    loaders = ['train_dataloader.num_workers=0', 'train_dataloader.persistent_workers=False',
               'test_dataloader.num_workers=0', 'test_dataloader.persistent_workers=False']
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get('OMP_NUM_THREADS', '1'))
    mimic = osp.join('configs', 'demo', 'faster-rcnn_r18_fpn_gn-all_mimic_demo-shapes.py')
    plain = osp.join('configs', 'demo', 'faster-rcnn_r18_fpn_gn-all_demo-shapes.py')

    def run(*args):
        proc = subprocess.run([PY, *args], cwd=ROOT, capture_output=True, text=True, timeout=600, env=env)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        return proc.stdout + proc.stderr

    trained = tmp_path / 'mimic'
    log = run('tools/train.py', mimic, '--work-dir', str(trained), '--cfg-options', f'data_root={root}',
              'train_cfg.max_iters=3', 'randomness.seed=3', *loaders)
    assert 'loss_mimic' in log and 'mimic_num_rois' in log
    ckpt = str(trained / 'iter_3.pth')
    keep = ['model.test_cfg.rcnn.score_thr=0.0']  # 3 iterations: keep low scores so COCO eval has results
    run('tools/test.py', mimic, ckpt, '--work-dir', str(trained), '--cfg-options', f'data_root={root}', *keep,
        *loaders)
    other = tmp_path / 'plain_test'
    log = run('tools/test.py', plain, ckpt, '--work-dir', str(other), '--cfg-options', f'data_root={root}', *keep,
              *loaders)
    assert 'roi_head.mimic_cls' in log  # reported as unexpected keys, not loaded
    a, b = (json.loads((d / 'test_metrics.json').read_text())['metrics'] for d in (trained, other))
    assert a == b
    out = run('tools/collect_metrics.py', str(trained), str(other))
    assert '| faster-rcnn_r18_fpn_gn-all_mimic_demo-shapes | 1 | 3 | 3 |' in out
    assert '| faster-rcnn_r18_fpn_gn-all_demo-shapes | 1 | ? | ? |' in out  # tested only: no training log
