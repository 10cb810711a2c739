"""The reports of a benchmark run: Markdown (the console prints its short part), JSON (all the results) and a
PNG chart."""
import json
import os
import textwrap
from typing import Any, Dict, List, Optional, Sequence


def _num(v: Optional[float], fmt: str = 'ms') -> str:
    if v is None:
        return '–'
    if fmt == 'x':
        return f'{v:.2f}x' if v < 10 else f'{v:.1f}x'
    v = v / 2 ** 20 if fmt == 'mib' else v
    return f'{v:.0f}' if v >= 100 else f'{v:.1f}' if v >= 10 else f'{v:.2f}' if v >= 0.1 else f'{v:.3f}'


def _table(title: str, head: Sequence[str], rows: Sequence[Sequence[str]], left: int = 1) -> List[str]:
    rule = ['---' if i < left else '---:' for i in range(len(head))]
    return [title, ''] + ['| ' + ' | '.join(r) + ' |' for r in [head, rule, *rows]] + ['']


def report(results: Dict[str, Any], short: bool = False) -> str:
    """The results as Markdown; ``short``: the console's part (times, ratios, breakdowns, notes)."""
    env, phases, impls, cases, cfg = (results[k] for k in ('environment', 'phases', 'impls', 'cases', 'config'))
    slash, label = ' / '.join(phases.values()), (lambda c: c['case']['label'])

    def cells(r: Dict[str, Any], key: str, fmt: str) -> str:
        return 'error' if 'error' in r else ' / '.join(_num(r.get(key.format(p)), fmt) for p in phases)
    lines = [f'# {results["title"]}', '']
    if not short:
        lines += [f'- {k.replace("_", " ")}: {v}' for k, v in env.items() if k != 'command'] + [
            f'- command: `{env["command"]}`', f'- method: torch.utils.benchmark blocked_autorange, {cfg["rounds"]} '
            f'interleaved rounds, {cfg["min_run_time"]:g} s per implementation and phase; medians', '']
    lines += _table(f'## Time (ms, median): {slash}', ['case'] + [t for t, _ in results['columns']] + impls,
                    [[label(c)] + [str(c['case'][k]) for _, k in results['columns']]
                     + [cells(c['results'][n], '{}_ms', 'ms') for n in impls] for c in cases])
    heads = [(a, b, 'mem_' * (kind == 'mem')) for a, b, kind in results['ratios'] if a in impls and b in impls]
    lines += _table(f'## Ratios: {slash}', ['case'] + [f'{a} / {b}' + ' memory' * bool(m) for a, b, m in heads],
                    [[label(c)] + [' / '.join(_num(c['ratios'].get(f'{a}_over_{b}_{m}{p}'), 'x') for p in phases)
                                   for a, b, m in heads] for c in cases])
    if not short and not cfg['no_memory']:
        how = 'torch.cuda.max_memory_allocated' if 'gpu' in env else "PyTorch's CPU allocator via torch.profiler"
        lines += _table(f'## Peak extra memory (MiB): {slash} ({how})', ['case'] + impls,
                        [[label(c)] + [cells(c['results'][n], 'mem_{}_bytes', 'mib') for n in impls] for c in cases])
    agree = [c for c in cases if c['agreement']]
    if agree and not short:
        a = agree[0]['agreement']
        lines += _table(f'## Agreement with {a["reference"]}: max abs difference (agree: each ≤ {a["rtol"]:g} x '
                        "the reference tensor's max abs value)",
                        ['case', 'implementation'] + [n.replace('_', ' ') for n in a['ref_max_abs']] + ['agree'],
                        [[label(c), n] + [f'{v:.1e}' for v in d.values()] + [('yes' if ok else '**NO**')]
                         for c in agree for n, d in c['agreement']['max_abs_diff'].items()
                         for ok in [c['agreement']['ok'][n]]], left=2)
    for c in cases:
        for phase, b in c.get('breakdown', {}).items():
            lines += _table(f'## Breakdown of {impls[0]}, {phases[phase]}, {label(c)}: one profiled run, '
                            f'{b["total_ms"]:.1f} ms {b["clock"]} (unprofiled median '
                            f'{_num(c["results"][impls[0]].get(phase + "_ms"))} ms)', ['part', 'ms', 'share'],
                            [[k, f'{v:.2f}', f'{100 * v / max(b["total_ms"], 1e-9):.1f}%']
                             for k, v in b['parts'].items()])
    notes = [f'- {n} skipped: {why}' for n, why in results['skipped'].items()]
    notes += [f'- {label(c)}: {n} failed: {r["error"]}' for c in cases for n, r in c['results'].items() if 'error' in r]
    notes += [f'- **{p}**' for p in results['failures'] if 'DISAGREES' in p]
    return '\n'.join(lines + (['## Notes', ''] + notes + [''] if notes else []))


def plot(results: Dict[str, Any], path: str) -> Optional[str]:
    """Bars per case and implementation, a panel per phase for time and for peak memory (unless skipped)."""
    try:
        import matplotlib
        matplotlib.use('Agg')
        import matplotlib.pyplot as plt
    except ImportError:
        return 'matplotlib is not installed: no chart'
    cases, impls, phases = results['cases'], results['impls'], results['phases']
    panels = [(f'{p}_ms', f'{t}: ms, median') for p, t in phases.items()] + [
        (f'mem_{p}_bytes', f'{t}: peak extra MiB') for p, t in phases.items() if not results['config']['no_memory']]
    fig, axes = plt.subplots(1, len(panels), figsize=(3 + len(panels) * (1 + 0.8 * len(cases)), 4.5), squeeze=False)
    for ax, (key, title) in zip(axes[0], panels):
        for i, name in enumerate(impls):
            bars = [(j + (i - (len(impls) - 1) / 2) * 0.8 / len(impls), v / 2 ** 20 if key.startswith('mem') else v)
                    for j, c in enumerate(cases) for v in [c['results'][name].get(key)] if v]
            ax.bar([x for x, _ in bars], [v for _, v in bars], 0.8 / len(impls), label=name)
        ax.set_title(title, fontsize=9)
        ax.set_yscale('log' if len(cases) > 1 else 'linear')
        ax.set_xticks(range(len(cases)), [c['case']['label'] for c in cases], rotation=30, ha='right', fontsize=7)
    axes[0, 0].legend(fontsize=8)
    fig.suptitle('\n'.join(textwrap.wrap(results['title'], 100)), fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return None


def write_reports(results: Dict[str, Any], out_dir: str, stem: str) -> Dict[str, str]:
    """``<stem>.md``, ``.json`` and ``.png`` in ``out_dir``; their paths (``note`` instead of ``png`` if no chart)."""
    os.makedirs(out_dir, exist_ok=True)
    paths = {ext: os.path.join(out_dir, f'{stem}.{ext}') for ext in ('md', 'json', 'png')}
    with open(paths['md'], 'w') as f:
        f.write(report(results) + '\n')
    with open(paths['json'], 'w') as f:
        f.write(json.dumps(results, indent=1, default=str) + '\n')
    note = plot(results, paths['png'])
    if note:
        paths['note'] = note
        del paths['png']
    return paths
