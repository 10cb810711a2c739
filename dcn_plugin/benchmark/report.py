"""Tables, JSON and a bar chart from :func:`~dcn_plugin.benchmark.op_benchmark.run_benchmark` results."""
from __future__ import annotations

import json
import math
import os
from typing import Any, Dict, List, Optional, Tuple

__all__ = ['TARGETS', 'format_report', 'write_reports', 'check_targets']

#: issue 4's targets for our op: (ratio key, 'min' or 'max', required, aim, description)
TARGETS: List[Tuple[str, str, float, float, str]] = [
    ('torchvision_over_ours_fwdbwd', 'min', 3.0, 10.0, 'fwd+bwd speed-up over torchvision'),
    ('ours_over_conv2d_fwd', 'max', 2.0, 1.5, 'fwd time / conv2d fwd time'),
    ('ours_over_conv2d_fwdbwd', 'max', 4.0, 3.0, 'fwd+bwd time / conv2d fwd+bwd time'),
    ('ours_over_torchvision_mem_fwd', 'max', 1.0, 1.0, 'peak extra memory (fwd) / torchvision\'s'),
    ('ours_over_torchvision_mem_fwdbwd', 'max', 1.0, 1.0, 'peak extra memory (fwd+bwd) / torchvision\'s'),
]
_IMPL_ORDER = ('ours', 'torchvision', 'mmcv', 'conv2d')
_COLOURS = {'ours': '#d62728', 'torchvision': '#1f77b4', 'mmcv': '#2ca02c', 'conv2d': '#7f7f7f'}


def _ms(v: Optional[float]) -> str:
    if v is None:
        return '–'
    return f'{v:.0f}' if v >= 100 else f'{v:.1f}' if v >= 10 else f'{v:.2f}' if v >= 0.1 else f'{v:.3f}'


def _x(v: Optional[float]) -> str:
    return '–' if v is None else f'{v:.2f}x' if v < 10 else f'{v:.1f}x'


def _mib(v: Optional[float]) -> str:
    return '–' if v is None else f'{v / 2 ** 20:.1f}'


def _impls(results: Dict[str, Any]) -> List[str]:
    names = set(results['config']['impls'])
    return [n for n in _IMPL_ORDER if n in names]


def _cell(r: Dict[str, Any], a: str, b: str, fmt=_ms) -> str:
    if 'error' in r:
        return 'error'
    return f'{fmt(r.get(a))} / {fmt(r.get(b))}'


def check_targets(results: Dict[str, Any]) -> List[Dict[str, Any]]:
    """One row per (shape, target): the value, and whether it meets the requirement and the aim."""
    rows = []
    for entry in results['shapes']:
        for key, kind, need, aim, what in TARGETS:
            v = entry['ratios'].get(key)
            if v is None:
                verdict = 'n/a'
            else:
                ok = v >= need if kind == 'min' else v <= need
                good = v >= aim if kind == 'min' else v <= aim
                verdict = 'aim met' if ok and good else 'met' if ok else 'MISSED'
            rows.append({'shape': entry['shape']['label'], 'target': key, 'what': what, 'value': v,
                         'required': f'{"≥" if kind == "min" else "≤"} {need:g}',
                         'aim': f'{"≥" if kind == "min" else "≤"} {aim:g}', 'verdict': verdict})
    return rows


def format_report(results: Dict[str, Any]) -> str:
    """The results as Markdown: environment, times, ratios, memory, agreement, targets, notes."""
    cfg, env = results['config'], results['environment']
    impls = _impls(results)
    on_cpu = cfg['device'].startswith('cpu')
    lines = [f'# Op benchmark: {cfg["device"]}, {cfg["dtype"]}, batch {cfg["batch"]}, 3x3 DCNv2 with mask', '']
    gpu = f'{env["gpu"]} ({env.get("gpu_memory_gib")} GiB, sm {env.get("gpu_capability")}); ' if 'gpu' in env else ''
    lines.append(f'- machine: {gpu}{env.get("cpu", "?")}, {env.get("cpu_count")} CPU cores; '
                 f'torch threads {env.get("torch_threads")}'
                 + (f'; 1-min load average at start {env["load_avg_1m"]}' if 'load_avg_1m' in env else ''))
    versions = [v for k, v in results.get('versions', {}).items() if v and k != 'conv2d']
    lines.append(f'- software: python {env.get("python")}, torch {env.get("torch")}'
                 + (f', CUDA {env["cuda"]}, cuDNN {env["cudnn"]}' if 'cuda' in env else '')
                 + ''.join(f', {v}' for v in versions)
                 + (f'; git {env["git_commit"]}' if env.get('git_commit') else ''))
    lines.append(f'- method: {cfg["warmup"]} warm-up + median of {cfg["repeat"]} interleaved repetitions; '
                 f'fwd under no_grad, fwd+bwd = autograd.grad w.r.t. input, offset, mask, weight; '
                 f'{env.get("date", "")}')
    if env.get('command'):
        lines.append(f'- command: `{env["command"]}`')
    lines.append('')

    lines += ['## Time (ms, median): fwd / fwd+bwd', '',
              '| shape (C=O @ HxW, stride, dg) | GFLOP | ' + ' | '.join(impls) + ' |',
              '| --- | ---: | ' + ' | '.join('---:' for _ in impls) + ' |']
    for e in results['shapes']:
        cells = [_cell(e['results'].get(n, {}), 'fwd_ms', 'fwdbwd_ms') for n in impls]
        lines.append(f'| {e["shape"]["label"]} | {e["gflop"]:.3g} | ' + ' | '.join(cells) + ' |')
    lines.append('')

    lines += ['## Ratios (fwd / fwd+bwd)', '',
              '| shape | ours / conv2d | torchvision / ours | mmcv / ours |', '| --- | ---: | ---: | ---: |']
    for e in results['shapes']:
        r = e['ratios']
        lines.append(f'| {e["shape"]["label"]} | '
                     + ' | '.join(f'{_x(r.get(f"{k}_fwd"))} / {_x(r.get(f"{k}_fwdbwd"))}'
                                  for k in ('ours_over_conv2d', 'torchvision_over_ours', 'mmcv_over_ours'))
                     + ' |')
    lines += ['', 'ours / conv2d: how many conv2d times our op takes (lower is better); '
              'torchvision / ours, mmcv / ours: our speed-up over them (higher is better).', '']

    has_mem = any('mem_fwd_bytes' in r for e in results['shapes'] for r in e['results'].values())
    if has_mem:
        how = ('PyTorch CPU allocator, via torch.profiler' if on_cpu else 'torch.cuda.max_memory_allocated delta')
        lines += [f'## Peak extra memory (MiB): fwd / fwd+bwd ({how})', '',
                  '| shape | ' + ' | '.join(impls) + ' |', '| --- | ' + ' | '.join('---:' for _ in impls) + ' |']
        for e in results['shapes']:
            lines.append(f'| {e["shape"]["label"]} | ' + ' | '.join(
                _cell(e['results'].get(n, {}), 'mem_fwd_bytes', 'mem_fwdbwd_bytes', _mib) for n in impls) + ' |')
        lines.append('')
        if on_cpu and any(r.get('rss_fwd_bytes') is not None for e in results['shapes'] for r in e['results'].values()):
            lines += ['Cross-check: rise of peak resident memory (VmHWM, MiB), fwd / fwd+bwd; also counts '
                      'memory taken outside PyTorch\'s allocator, undercounts memory reused from the heap:', '',
                      '| shape | ' + ' | '.join(impls) + ' |', '| --- | ' + ' | '.join('---:' for _ in impls) + ' |']
            for e in results['shapes']:
                lines.append(f'| {e["shape"]["label"]} | ' + ' | '.join(
                    _cell(e['results'].get(n, {}), 'rss_fwd_bytes', 'rss_fwdbwd_bytes', _mib) for n in impls) + ' |')
            lines.append('')

    agree = [e for e in results['shapes'] if 'agreement' in e]
    if agree:
        lines += ['## Agreement before timing (max abs difference to the reference)', '',
                  '| shape | impl vs reference | output | grad input | grad offset | grad mask | grad weight | agree |',
                  '| --- | --- | ---: | ---: | ---: | ---: | ---: | --- |']
        for e in agree:
            a = e['agreement']
            for name, d in a['max_abs_diff'].items():
                cells = ' | '.join(f'{d[k]:.1e}' for k in ('output', 'grad_input', 'grad_offset', 'grad_mask',
                                                           'grad_weight'))
                lines.append(f'| {e["shape"]["label"]} | {name} vs {a["reference"]} | {cells} | '
                             f'{"yes" if a["ok"][name] else "NO"} |')
        rtol = agree[0]['agreement']['rtol']
        lines += ['', f'"agree": every difference ≤ {rtol:g} x the reference tensor\'s max abs value.', '']

    if 'ours' in impls:
        rows = check_targets(results)
        lines += ['## Targets (issue 4) for our op', '', '| shape | target | value | required | aim | verdict |',
                  '| --- | --- | ---: | --- | --- | --- |']
        for row in rows:
            v = row['value']
            lines.append(f'| {row["shape"]} | {row["what"]} | {"–" if v is None else f"{v:.2f}"} | '
                         f'{row["required"]} | {row["aim"]} | {row["verdict"]} |')
        judged = [r for r in rows if r['verdict'] != 'n/a']
        missed = [r for r in judged if r['verdict'] == 'MISSED']
        lines += ['', f'{len(judged) - len(missed)} of {len(judged)} requirements met'
                  + (f'; missed: {", ".join(sorted({r["target"] for r in missed}))}' if missed else '') + '.', '']

    notes = [f'- {name} skipped: {why}' for name, why in results.get('skipped', {}).items()]
    notes += [f'- {e["shape"]["label"]}: {name} failed: {r["error"]}'
              for e in results['shapes'] for name, r in e['results'].items() if 'error' in r]
    notes += [f'- {e["shape"]["label"]}: {name} disagrees with {e["agreement"]["reference"]} (see agreement)'
              for e in agree for name, ok in e['agreement']['ok'].items() if not ok]
    if notes:
        lines += ['## Notes', ''] + notes + ['']
    return '\n'.join(lines)


def plot(results: Dict[str, Any], path: str) -> Optional[str]:
    """Bar chart (fwd, fwd+bwd time on log scales; peak extra memory) to ``path``; why not, if it can't."""
    try:
        import matplotlib
        matplotlib.use('Agg')
        import matplotlib.pyplot as plt
    except ImportError:
        return 'matplotlib is not installed: no chart'
    impls = _impls(results)
    shapes = results['shapes']
    labels = [e['shape']['name'] or e['shape']['spec'] for e in shapes]
    panels = [('fwd_ms', 'forward (ms, log)', True), ('fwdbwd_ms', 'forward + backward (ms, log)', True),
              ('mem_fwdbwd_bytes', 'peak extra memory, fwd+bwd (MiB)', False)]
    if not any('mem_fwdbwd_bytes' in r for e in shapes for r in e['results'].values()):
        panels = panels[:2]
    # only implementations with numbers (one that failed everywhere would get an empty, mis-coloured slot)
    impls = [n for n in impls if any(isinstance(e['results'].get(n, {}).get('fwd_ms'), float) for e in shapes)]
    width = 0.8 / max(len(impls), 1)
    fig, axes = plt.subplots(len(panels), 1, figsize=(max(6.0, 1.3 * len(shapes) + 2), 3.2 * len(panels)),
                             squeeze=False)
    for ax, (key, title, log) in zip(axes[:, 0], panels):
        for i, name in enumerate(impls):
            xs, ys = [], []
            for j, e in enumerate(shapes):
                v = e['results'].get(name, {}).get(key)
                if isinstance(v, (int, float)) and v > 0:
                    xs.append(j + (i - (len(impls) - 1) / 2) * width)
                    ys.append(v / 2 ** 20 if key.startswith('mem') else v)
            ax.bar(xs, ys, width, label=name, color=_COLOURS.get(name))
        ax.set_title(title, fontsize=10)
        if log:
            ax.set_yscale('log')
        ax.set_xticks(range(len(shapes)))
        ax.set_xticklabels(labels, rotation=20, ha='right', fontsize=8)
        ax.grid(axis='y', alpha=0.3, which='both')
    axes[0, 0].legend(fontsize=8, ncol=len(impls))
    cfg, env = results['config'], results['environment']
    fig.suptitle(f'DCNv2 3x3, batch {cfg["batch"]}, {cfg["dtype"]}, {env.get("gpu") or env.get("cpu", "")} '
                 f'({env.get("torch_threads")} torch threads)' if cfg['device'].startswith('cpu') else
                 f'DCNv2 3x3, batch {cfg["batch"]}, {cfg["dtype"]}, {env.get("gpu", "")}', fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return None


def _json_safe(obj: Any) -> Any:
    if isinstance(obj, float) and not math.isfinite(obj):
        return str(obj)
    if isinstance(obj, dict):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    return obj


def write_reports(results: Dict[str, Any], out_dir: str, stem: Optional[str] = None) -> Dict[str, str]:
    """Write ``<stem>.json``, ``<stem>.md`` and ``<stem>.png`` to ``out_dir``; return their paths (and
    ``'note'`` when the chart could not be drawn). Default stem: ``op_benchmark_<device>_<dtype>``."""
    os.makedirs(out_dir, exist_ok=True)
    cfg = results['config']
    stem = stem or f'op_benchmark_{cfg["device"].split(":")[0]}_{cfg["dtype"]}'
    paths = {'json': os.path.join(out_dir, stem + '.json'), 'md': os.path.join(out_dir, stem + '.md'),
             'png': os.path.join(out_dir, stem + '.png')}
    data = dict(results, targets=check_targets(results) if 'ours' in cfg['impls'] else [])
    with open(paths['json'], 'w') as f:
        json.dump(_json_safe(data), f, indent=1)
        f.write('\n')
    with open(paths['md'], 'w') as f:
        f.write(format_report(results) + '\n')
    note = plot(results, paths['png'])
    if note:
        del paths['png']
        paths['note'] = note
    return paths
