"""Collect the results of several training runs into a table: mean and spread of each arm.

A *run* is a work dir where ``tools/train.py`` trained a model and ``tools/test.py`` saved
``test_metrics.json``. Runs are grouped into *arms* by the config they were tested with (its file name
without ``.py``), so several seeds of one config form one arm. For each run this reads

- the test metrics (``test_metrics.json``: mmdet's ``coco/bbox_mAP``, ``coco/bbox_mAP_50``, ...),
- the seed and the number of training iterations (``randomness.seed``, ``train_cfg.max_iters``) of the
  config the run dumped when it trained,
- the seconds per training iteration: the median of the ``time`` values mmengine logged during training
  (each one the mean over a logging window), without each session's first window, which includes
  start-up.

:func:`summarize_runs` gives per arm the number of runs, the mean, the sample standard deviation (n - 1)
and the range of each metric; :func:`format_markdown` prints it, :func:`format_brief` prints one line per
run. :func:`compare_arms` sets each arm against a baseline arm (difference of the means, its standard
error and Welch's t-test, which does not assume equal spreads, or a paired t-test over the seeds both arms
ran); :func:`format_comparison` prints it.
``tools/collect_metrics.py`` is the command line.

:func:`loss_gradient_norms` measures, on one training batch, how large each loss term's gradient is in
each part of a model (how hard the feature-mimicking losses pull against the detection losses).
"""
import glob
import json
import math
import os.path as osp
import statistics
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence

__all__ = ['Run', 'ArmSummary', 'Comparison', 'load_run', 'summarize_runs', 'compare_arms', 'format_markdown',
           'format_comparison', 'format_brief', 'DEFAULT_METRICS', 'loss_gradient_norms']

DEFAULT_METRICS = ('coco/bbox_mAP', 'coco/bbox_mAP_50', 'coco/bbox_mAP_75')
#: how :func:`format_brief` names the COCO metrics (others: their key without the prefix)
_BRIEF_NAMES = {'coco/bbox_mAP': 'bbox mAP', 'coco/bbox_mAP_50': 'mAP@0.5', 'coco/bbox_mAP_75': 'mAP@0.75'}


@dataclass
class Run:
    """One trained and tested model."""
    arm: str
    work_dir: str
    metrics: Dict[str, float]
    seed: Optional[int] = None
    iters: Optional[int] = None
    sec_per_iter: Optional[float] = None


@dataclass
class ArmSummary:
    """Statistics of the runs of one arm; ``std`` is ``None`` for a single run."""
    arm: str
    runs: List[Run]
    mean: Dict[str, float] = field(default_factory=dict)
    std: Dict[str, Optional[float]] = field(default_factory=dict)
    low: Dict[str, float] = field(default_factory=dict)
    high: Dict[str, float] = field(default_factory=dict)


def _training_logs(work_dir: str) -> List[str]:
    """The ``scalars.json`` of every training session in ``work_dir`` (those with logged losses), oldest
    first; a resumed run has several."""
    found = []
    for path in sorted(glob.glob(osp.join(work_dir, '*', 'vis_data', 'scalars.json'))):
        with open(path) as f:
            if any('loss' in json.loads(line) for line in f if line.strip()):
                found.append(path)
    return found


def _seconds_per_iter(logs: Sequence[str]) -> Optional[float]:
    """Median of the logged training ``time`` values, without each session's first window (start-up)."""
    times = []
    for path in logs:
        with open(path) as f:
            rows = [r for r in (json.loads(line) for line in f if line.strip()) if 'time' in r and 'loss' in r]
        times += [float(r['time']) for r in (rows[1:] or rows)]
    return statistics.median(times) if times else None


def _schedule(dumped_config: str) -> tuple:
    """(seed, training iterations) of a config dumped by a training session."""
    from mmengine.config import Config
    cfg = Config.fromfile(dumped_config, import_custom_modules=False)
    seed = (cfg.get('randomness', None) or {}).get('seed', None)
    iters = (cfg.get('train_cfg', None) or {}).get('max_iters', None)
    return (None if seed is None else int(seed)), (None if iters is None else int(iters))


def load_run(path: str, arm: Optional[str] = None) -> Run:
    """Read one run.

    Args:
        path: the run's work dir, or its ``test_metrics.json``.
        arm: the arm's name; default: the test config's file name without ``.py``.

    Returns:
        The run; ``seed``, ``iters`` and ``sec_per_iter`` are ``None`` when the work dir holds no
        training log (a checkpoint tested elsewhere).
    """
    metrics_file = path if path.endswith('.json') else osp.join(path, 'test_metrics.json')
    if not osp.isfile(metrics_file):
        raise FileNotFoundError(f'no test metrics at {metrics_file}: run tools/test.py CONFIG CHECKPOINT '
                                f'--work-dir {osp.dirname(metrics_file) or "."} first')
    with open(metrics_file) as f:
        record = json.load(f)
    if not isinstance(record, dict) or not isinstance(record.get('metrics'), dict):
        raise ValueError(f'{metrics_file} is not a test_metrics.json written by tools/test.py')
    work_dir = osp.dirname(osp.abspath(metrics_file))
    if arm is None:
        config = record.get('config') or work_dir
        arm = osp.splitext(osp.basename(config.rstrip('/')))[0]
    metrics = {k: float(v) for k, v in record['metrics'].items() if isinstance(v, (int, float))}
    run = Run(arm=arm, work_dir=work_dir, metrics=metrics)
    logs = _training_logs(work_dir)
    if logs:
        run.sec_per_iter = _seconds_per_iter(logs)
        dumped = osp.join(osp.dirname(logs[-1]), 'config.py')
        if osp.isfile(dumped):
            run.seed, run.iters = _schedule(dumped)
    return run


def summarize_runs(runs: Sequence[Run], metrics: Sequence[str] = DEFAULT_METRICS) -> List[ArmSummary]:
    """Mean, sample standard deviation and range of ``metrics`` (and of ``sec_per_iter``) per arm.

    Arms keep the order in which they first appear in ``runs``. A metric missing from a run raises
    ``KeyError`` naming the run.
    """
    arms: Dict[str, List[Run]] = {}
    for run in runs:
        arms.setdefault(run.arm, []).append(run)
    summaries = []
    for arm, members in arms.items():
        s = ArmSummary(arm=arm, runs=members)
        for key in list(metrics) + ['sec_per_iter']:
            if key == 'sec_per_iter':
                values = [r.sec_per_iter for r in members if r.sec_per_iter is not None]
                if not values:
                    continue
            else:
                missing = [r.work_dir for r in members if key not in r.metrics]
                if missing:
                    raise KeyError(f'metric {key!r} is not in the test metrics of {missing}')
                values = [r.metrics[key] for r in members]
            s.mean[key] = statistics.fmean(values)
            s.std[key] = statistics.stdev(values) if len(values) > 1 else None
            s.low[key], s.high[key] = min(values), max(values)
        summaries.append(s)
    return summaries


@dataclass
class Comparison:
    """An arm against the baseline arm on one metric: ``diff`` = arm mean - baseline mean, ``se`` its standard
    error, ``t`` = diff / se on ``df`` degrees of freedom, and the two-sided ``p``. Unpaired (Welch): se =
    sqrt(s1^2/n1 + s2^2/n2) with the Welch-Satterthwaite ``df``; ``paired``: the mean and standard error of
    the per-seed differences (``by_seed``: seed -> difference), ``n`` = ``n_baseline`` = the number of seeds
    both arms ran, df = n - 1. ``se``, ``t``, ``df`` and ``p`` are ``None`` where an arm has fewer than two
    runs (pairs) or there is no spread."""
    arm: str
    baseline: str
    metric: str
    n: int
    n_baseline: int
    diff: float
    by_seed: Dict[int, float] = field(default_factory=dict)
    se: Optional[float] = None
    t: Optional[float] = None
    df: Optional[float] = None
    p: Optional[float] = None

    @property
    def paired(self) -> bool:
        """Whether this is the paired test (a paired comparison always has the seeds it paired)."""
        return bool(self.by_seed)


def compare_arms(summaries: Sequence[ArmSummary], baseline: str, metric: str = DEFAULT_METRICS[0],
                 paired: bool = False) -> List[Comparison]:
    """Every other arm of ``summaries`` against the arm named ``baseline`` on ``metric``: Welch's t-test, or
    with ``paired`` a paired t-test over the seeds both arms ran (runs of one seed share their initial
    weights and data order whatever the arm, so their difference carries less seed noise; an arm sharing
    no seed with the baseline is left out)."""
    by_name = {s.arm: s for s in summaries}
    if baseline not in by_name:
        raise KeyError(f'baseline arm {baseline!r} is not among the arms {sorted(by_name)}')
    base = by_name[baseline]
    if metric not in base.mean:
        raise KeyError(f'metric {metric!r} was not summarised (pass it in --metrics)')
    from scipy import stats  # mmdet's dependency
    base_by_seed = {r.seed: r.metrics[metric] for r in base.runs if r.seed is not None}
    out = []
    for s in summaries:
        if s.arm == baseline:
            continue
        if paired:
            mine = {r.seed: r.metrics[metric] for r in s.runs if r.seed is not None}
            by_seed = {seed: mine[seed] - base_by_seed[seed] for seed in sorted(set(mine) & set(base_by_seed))}
            d = list(by_seed.values())
            if not d:
                continue
            c = Comparison(arm=s.arm, baseline=baseline, metric=metric, n=len(d), n_baseline=len(d),
                           diff=statistics.fmean(d), by_seed=by_seed)
            spread = statistics.stdev(d) if len(d) > 1 else 0.0
            if spread > 0:
                c.se, c.df = spread / math.sqrt(len(d)), float(len(d) - 1)
        else:
            c = Comparison(arm=s.arm, baseline=baseline, metric=metric, n=len(s.runs), n_baseline=len(base.runs),
                           diff=s.mean[metric] - base.mean[metric])
            if s.std[metric] is not None and base.std[metric] is not None:
                v1, v2 = s.std[metric] ** 2 / c.n, base.std[metric] ** 2 / c.n_baseline
                if v1 + v2 > 0:
                    c.se = math.sqrt(v1 + v2)
                    c.df = (v1 + v2) ** 2 / (v1 ** 2 / (c.n - 1) + v2 ** 2 / (c.n_baseline - 1))
        if c.se is not None:
            c.t = c.diff / c.se
            c.p = float(2 * stats.t.sf(abs(c.t), c.df))
        out.append(c)
    return out


def format_comparison(comparisons: Sequence[Comparison]) -> str:
    """A Markdown table of :func:`compare_arms`' result."""
    if not comparisons:
        return ''
    c0 = comparisons[0]
    name = c0.metric.split('/')[-1]
    if c0.paired:
        lines = [f'| Arm | seeds paired | {name} − {c0.baseline}, mean over the seeds | standard error | paired t '
                 '| df | p | by seed |']
    else:
        lines = [f'| Arm | runs | {name} − {c0.baseline} ({c0.n_baseline} runs) | standard error | Welch t | df | p |']
    lines.append('|---|---:|---:|---:|---:|---:|---:|' + ('---|' if c0.paired else ''))
    for c in comparisons:
        cells = ['—' if v is None else fmt.format(v)
                 for v, fmt in ((c.se, '{:.3f}'), (c.t, '{:.2f}'), (c.df, '{:.1f}'), (c.p, '{:.2f}'))]
        if c.paired:
            cells.append(', '.join(f'{seed}: {d:+.3f}' for seed, d in c.by_seed.items()))
        lines.append(f'| {c.arm} | {c.n} | {c.diff:+.3f} | ' + ' | '.join(cells) + ' |')
    return '\n'.join(lines) + '\n'


def _cell(s: ArmSummary, key: str, digits: int) -> str:
    if key not in s.mean:
        return '—'
    text = f'{s.mean[key]:.{digits}f}'
    if s.std[key] is not None:
        text += f' ± {s.std[key]:.{digits}f} ({s.low[key]:.{digits}f}–{s.high[key]:.{digits}f})'
    return text


def format_markdown(summaries: Sequence[ArmSummary], metrics: Sequence[str] = DEFAULT_METRICS) -> str:
    """Two Markdown tables: per arm (mean ± sample std (min–max)), then every run."""
    short = [m.split('/')[-1] for m in metrics]
    lines = ['| Arm | runs | seeds | iterations | ' + ' | '.join(short) + ' | s/iter (training) |',
             '|---|---:|---|---:|' + '---:|' * (len(metrics) + 1)]
    for s in summaries:
        seeds = ', '.join('?' if r.seed is None else str(r.seed) for r in s.runs)
        iters = sorted({r.iters for r in s.runs if r.iters is not None})
        cells = [_cell(s, m, 3) for m in metrics] + [_cell(s, 'sec_per_iter', 2)]
        lines.append(f'| {s.arm} | {len(s.runs)} | {seeds} | {"/".join(map(str, iters)) or "?"} | '
                     + ' | '.join(cells) + ' |')
    lines += ['', '| Arm | seed | work dir | iterations | ' + ' | '.join(short) + ' | s/iter (training) |',
              '|---|---:|---|---:|' + '---:|' * (len(metrics) + 1)]
    for s in summaries:
        for r in s.runs:
            values = [f'{r.metrics[m]:.3f}' if not math.isnan(r.metrics[m]) else 'nan' for m in metrics]
            speed = '—' if r.sec_per_iter is None else f'{r.sec_per_iter:.2f}'
            lines.append(f'| {s.arm} | {"?" if r.seed is None else r.seed} | {r.work_dir} | '
                         f'{"?" if r.iters is None else r.iters} | ' + ' | '.join(values) + f' | {speed} |')
    return '\n'.join(lines) + '\n'


def format_brief(runs: Sequence[Run], metrics: Sequence[str] = DEFAULT_METRICS) -> str:
    """One line per run: ``<arm>: bbox mAP 0.316  mAP@0.5 0.528  mAP@0.75 0.363`` (``nan`` for a metric the
    run lacks)."""
    lines = []
    for run in runs:
        values = [f'{_BRIEF_NAMES.get(m, m.split("/")[-1])} {run.metrics.get(m, math.nan):.3f}' for m in metrics]
        lines.append(f'{run.arm}: ' + '  '.join(values))
    return '\n'.join(lines) + '\n'


def loss_gradient_norms(model: Any, data_batch: dict, groups: Dict[str, Any]) -> Dict[str, Dict[str, float]]:
    """L2 norm of each loss term's gradient over each group of parameters, for one training batch.

    Args:
        model: an mmdet detector (its mode, train or eval, is used as it is).
        data_batch: a batch as the training dataloader yields it; the model's data preprocessor runs here.
        groups: group name -> ``nn.Module`` whose parameters that require a gradient form the group.

    Returns:
        ``{term: {group: norm}}`` for the terms ``'detection'`` (the sum of every loss whose key holds
        ``'loss'`` and not ``'mimic'``), each loss key holding ``'mimic'`` and ``'loss'``, and ``'total'``
        (what training optimises: mmdet's ``parse_losses``). A group no term reaches has norm 0.
    """
    import torch
    data = model.data_preprocessor(data_batch, True)
    losses = model(**data, mode='loss')
    total, _ = model.parse_losses(losses)

    def value(v):
        return v if isinstance(v, torch.Tensor) else sum(v)

    terms = {'detection': sum(value(v) for k, v in losses.items() if 'loss' in k and 'mimic' not in k)}
    terms.update({k: value(v) for k, v in losses.items() if 'loss' in k and 'mimic' in k})
    terms['total'] = total
    params = {g: [p for p in m.parameters() if p.requires_grad] for g, m in groups.items()}
    flat = [p for ps in params.values() for p in ps]
    out = {}
    for name, loss in terms.items():
        grads = torch.autograd.grad(loss, flat, retain_graph=True, allow_unused=True)
        by_param = {id(p): g for p, g in zip(flat, grads)}
        out[name] = {g: math.sqrt(sum(float(by_param[id(p)].double().square().sum()) for p in ps
                                      if by_param[id(p)] is not None)) for g, ps in params.items()}
    return out
