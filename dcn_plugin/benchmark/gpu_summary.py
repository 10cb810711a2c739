"""Summarise a ``tools/gpu_check.sh`` output folder: ``summary.json`` and a short text report.

Run by path (``python3 dcn_plugin/benchmark/gpu_summary.py OUTDIR``) by the check script. It uses the
standard library only and imports nothing from dcn_plugin, so it still reports when the build failed.

Reads ``OUTDIR/steps.tsv`` (one line per step: name, status, exit code, seconds, log file), the pytest
JUnit file ``tests.xml`` and the benchmark results ``op_benchmark_*.json``.
"""
import glob
import json
import os
import sys
import xml.etree.ElementTree as ET
from typing import Any, Dict, List, Optional

_MSG_LIMIT = 600


def _short(text: Optional[str], limit: int = _MSG_LIMIT) -> str:
    text = ' '.join((text or '').split())
    return text if len(text) <= limit else text[:limit - 3] + '...'


def read_steps(out_dir: str) -> List[Dict[str, Any]]:
    steps = []
    path = os.path.join(out_dir, 'steps.tsv')
    if not os.path.exists(path):
        return steps
    with open(path) as f:
        for line in f:
            parts = line.rstrip('\n').split('\t')
            if len(parts) >= 5:
                rc = int(parts[2]) if parts[2].lstrip('-').isdigit() else None
                steps.append({'name': parts[0], 'status': parts[1], 'rc': rc,
                              'seconds': float(parts[3]) if parts[3] else None, 'log': parts[4]})
    return steps


def read_junit(path: str) -> Optional[Dict[str, Any]]:
    """Counts and the failing / skipped tests of a pytest JUnit XML file (None if missing or unreadable)."""
    if not os.path.exists(path):
        return None
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as e:
        return {'error': f'unreadable JUnit file: {e}'}
    counts = {'passed': 0, 'failed': 0, 'error': 0, 'skipped': 0}
    failed, skipped = [], []
    for case in root.iter('testcase'):
        name = f'{case.get("classname", "")}::{case.get("name", "")}'.strip(':')
        kinds = {child.tag: child for child in case}
        if 'failure' in kinds or 'error' in kinds:
            tag = 'failure' if 'failure' in kinds else 'error'
            counts['failed' if tag == 'failure' else 'error'] += 1
            el = kinds[tag]
            failed.append({'test': name, 'kind': tag, 'message': _short(el.get('message') or el.text),
                           'time_s': float(case.get('time', 0) or 0)})
        elif 'skipped' in kinds:
            counts['skipped'] += 1
            skipped.append({'test': name, 'reason': _short(kinds['skipped'].get('message'), 200)})
        else:
            counts['passed'] += 1
    return {'counts': counts, 'failed': failed, 'skipped': skipped}


def read_benchmarks(out_dir: str) -> List[Dict[str, Any]]:
    """A compact form of every ``op_benchmark_*.json``: per shape the medians, memory, ratios, agreement."""
    out = []
    for path in sorted(glob.glob(os.path.join(out_dir, 'op_benchmark_*.json'))):
        try:
            with open(path) as f:
                data = json.load(f)
        except (OSError, ValueError) as e:
            out.append({'file': os.path.basename(path), 'error': str(e)})
            continue
        env, cfg = data.get('environment', {}), data.get('config', {})
        shapes = []
        for e in data.get('shapes', []):
            res = {name: {k: r.get(k) for k in ('fwd_ms', 'fwdbwd_ms', 'mem_fwd_bytes', 'mem_fwdbwd_bytes', 'error')
                          if r.get(k) is not None}
                   for name, r in e.get('results', {}).items()}
            shapes.append({'shape': e.get('shape', {}).get('label'), 'results': res, 'ratios': e.get('ratios', {}),
                           'agree': e.get('agreement', {}).get('ok')})
        out.append({'file': os.path.basename(path), 'device': cfg.get('device'), 'dtype': cfg.get('dtype'),
                    'gpu': env.get('gpu'), 'torch': env.get('torch'), 'skipped': data.get('skipped', {}),
                    'shapes': shapes,
                    'targets_missed': [f'{t["shape"]}: {t["target"]} = {t["value"]:.2f}'
                                       for t in data.get('targets', []) if t.get('verdict') == 'MISSED'],
                    })
    return out


def summarize(out_dir: str) -> Dict[str, Any]:
    steps = read_steps(out_dir)
    env = {}
    env_path = os.path.join(out_dir, 'env.json')
    if os.path.exists(env_path):
        try:
            with open(env_path) as f:
                env = json.load(f)
        except (OSError, ValueError):
            env = {}
    tests = read_junit(os.path.join(out_dir, 'tests.xml'))
    ok = bool(steps) and all(s['status'] in ('ok', 'skipped') for s in steps)
    if tests and (tests.get('error') or tests['counts']['failed'] or tests['counts']['error']):
        ok = False
    return {'ok': ok, 'dry_run': any(s['name'] == 'build' and s['log'].startswith('dry run') for s in steps),
            'environment': env, 'steps': steps, 'tests': tests, 'benchmarks': read_benchmarks(out_dir)}


def _ms(v: Optional[float]) -> str:
    return '-' if v is None else f'{v:.3g}' if v < 100 else f'{v:.0f}'


def format_summary(s: Dict[str, Any]) -> str:
    lines = [f'gpu_check: {"OK" if s["ok"] else "FAILED"}' + (' (dry run: no build, benchmark on CPU)'
                                                             if s['dry_run'] else '')]
    env = s.get('environment') or {}
    if env:
        lines.append('  ' + ', '.join(f'{k} {v}' for k, v in env.items() if v not in (None, '')))
    for st in s['steps']:
        secs = f'{st["seconds"]:.0f}s' if st['seconds'] is not None else ''
        lines.append(f'  {st["name"]:16s} {st["status"]:8s} rc={st["rc"]} {secs:>6s}  {st["log"]}')
    t = s.get('tests')
    if t and 'counts' in t:
        c = t['counts']
        lines.append(f'tests: {c["passed"]} passed, {c["failed"]} failed, {c["error"]} errors, {c["skipped"]} skipped')
        for f in t['failed']:
            lines.append(f'  FAIL {f["test"]}: {_short(f["message"], 300)}')
        reasons = sorted({k["reason"] for k in t['skipped']})
        for r in reasons[:5]:
            lines.append(f'  skip reason: {r}')
    elif t:
        lines.append(f'tests: {t.get("error")}')
    for b in s['benchmarks']:
        if 'error' in b:
            lines.append(f'benchmark {b["file"]}: {b["error"]}')
            continue
        lines.append(f'benchmark {b["dtype"]} on {b.get("gpu") or b["device"]} ({b["file"]}; ms fwd / fwd+bwd, '
                     f'ratios fwd / fwd+bwd):')
        for sh in b['shapes']:
            r = sh['results']
            cells = []
            for name in ('ours', 'torchvision', 'mmcv', 'conv2d'):
                if name in r:
                    x = r[name]
                    times = f'{_ms(x.get("fwd_ms"))}/{_ms(x.get("fwdbwd_ms"))}'
                    cells.append(f'{name} ' + ('error' if 'error' in x else times))
            q = sh['ratios']

            def rr(key: str) -> str:
                v1, v2 = q.get(f'{key}_fwd'), q.get(f'{key}_fwdbwd')
                return f'{"-" if v1 is None else f"{v1:.2f}"}/{"-" if v2 is None else f"{v2:.2f}"}'
            lines.append(f'  {sh["shape"]}: ' + ', '.join(cells)
                         + f'; ours/conv2d {rr("ours_over_conv2d")}, torchvision/ours {rr("torchvision_over_ours")}'
                         + ('' if not sh['agree'] or all(sh['agree'].values()) else f'; DISAGREE {sh["agree"]}'))
        for name, why in b['skipped'].items():
            lines.append(f'  {name} skipped: {why}')
    return '\n'.join(lines)


def main(argv: Optional[List[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print('usage: gpu_summary.py OUTDIR', file=sys.stderr)
        return 2
    out_dir = argv[0]
    summary = summarize(out_dir)
    with open(os.path.join(out_dir, 'summary.json'), 'w') as f:
        json.dump(summary, f, indent=1)
        f.write('\n')
    text = format_summary(summary)
    with open(os.path.join(out_dir, 'summary.txt'), 'w') as f:
        f.write(text + '\n')
    print(text)
    return 0 if summary['ok'] else 1


if __name__ == '__main__':
    sys.exit(main())
