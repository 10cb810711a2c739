"""Benchmark DCNv2: the op against torchvision, mmcv and conv2d, a DCN model against its plain baseline, or
deformable RoI pooling against RoIAlign.

    python tools/benchmark.py [op] [--device cuda] [--dtype bfloat16] [--tf32] [--shapes r50-1333x800]
    python tools/benchmark.py model CONFIG --baseline CONFIG [--part detector|backbone|backbone+neck]
        [--mode infer|train|both] [--image-size H W] [--batch N] [--breakdown]
    python tools/benchmark.py roi-pool [--rois 512] [--channels 256] [--levels P2 ...] [--sampling-ratio N]

A mode (a :class:`Mode`) names its implementations and cases and says how a case runs; the timing
(torch.utils.benchmark, interleaved, medians), peak memory, ratios and the reports (Markdown, JSON, PNG)
are shared by all modes. docs/benchmarks.md explains the method.
"""
import argparse
import datetime
import importlib
import importlib.util
import json
import logging
import math
import os
import platform
import re
import subprocess
import sys
import tempfile
import textwrap
from functools import partial
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
from torch.profiler import ProfilerActivity, profile, record_function
from torch.utils.benchmark import Measurement, Timer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)  # this checkout's dcn_plugin, also from a fresh clone
os.environ.setdefault('KINETO_LOG_LEVEL', '6')  # no profiler chatter on stderr at every start and stop
Runners = Dict[str, Callable[[], Any]]  # phase -> one run of it


class Skip(Exception):
    """An implementation that cannot run here (not installed, no CUDA kernels): a note, not a failure."""


class Mode:
    """A benchmark mode; :func:`run` times, sizes, checks and reports whatever it binds. A mode defines
    ``impls`` (name -> loader of an implementation from the arguments; raises :class:`Skip`), ``ratios``
    ((numerator, denominator, 'time' | 'mem') pairs), ``must_run`` (implementations whose failure fails the
    run) and ``title()``, ``phases()`` (key -> title, in order), ``cases(impls)`` (JSON-ready dicts with a
    'label'), ``inputs(case)`` (shared by the implementations of a case), ``bind(impl, inputs)`` (phase ->
    one run); ``check(first results)`` (-> :func:`agreement` or None) and ``extra(impls, runners)`` (more
    results for a case) are optional."""
    impls: Dict[str, Callable[[argparse.Namespace], Any]] = {}
    ratios: Sequence[Tuple[str, str, str]] = ()
    must_run: Sequence[str] = ()
    columns: Sequence[Tuple[str, str]] = ()  # (title, case key) columns of the time table

    def __init__(self, args: argparse.Namespace) -> None:
        self.args, self.device = args, torch.device(args.device)

    def check(self, first: Dict[str, Dict[str, Any]]) -> Optional[Dict[str, Any]]:
        return None

    def extra(self, impls: Dict[str, Any], runners: Dict[str, Runners]) -> Dict[str, Any]:
        return {}


def one_line(e: BaseException, limit: int = 300) -> str:
    text = f'{type(e).__name__}: {" ".join(str(e).split())}'
    return text if len(text) <= limit else text[:limit - 3] + '...'


def log(msg: str) -> None:
    print(f'benchmark: {msg}', file=sys.stderr, flush=True)


def sync(device: torch.device) -> None:
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


def set_flags(flags: Sequence[Tuple[Any, str, Any]]) -> List[Tuple[Any, str, Any]]:
    """Set each ``(object, attribute, value)``; return the previous values in the same form."""
    saved = [(obj, name, getattr(obj, name)) for obj, name, _ in flags]
    for obj, name, value in flags:
        setattr(obj, name, value)
    return saved


def precision_flags(device: torch.device, tf32: bool) -> List[Tuple[Any, str, Any]]:
    """On CUDA: TF32 in cuBLAS and cuDNN as asked (off: true float32), cuDNN autotuning on."""
    mm, dnn, mode = torch.backends.cuda.matmul, torch.backends.cudnn, 'tf32' if tf32 else 'ieee'
    if device.type != 'cuda':
        return []
    if hasattr(mm, 'fp32_precision'):  # torch >= 2.9, where mixing in the legacy flags is an error
        return [(mm, 'fp32_precision', mode), (dnn.conv, 'fp32_precision', mode), (dnn, 'benchmark', True)]
    return [(mm, 'allow_tf32', tf32), (dnn, 'allow_tf32', tf32), (dnn, 'benchmark', True)]


def measure(fns: Dict[Any, Callable[[], Any]], rounds: int, min_run_time: float) -> Dict[Any, Measurement]:
    """``Timer.blocked_autorange`` of every function, ``rounds`` times in turn (the order reversed every
    other round) so that drifting machine load hits all alike; each one's rounds merged."""
    timers = {k: Timer('fn()', globals={'fn': fn}, description=str(k), num_threads=torch.get_num_threads())
              for k, fn in fns.items()}
    got: Dict[Any, List[Measurement]] = {k: [] for k in fns}
    for r in range(rounds):
        for k in (list(fns) if r % 2 == 0 else list(fns)[::-1]):
            got[k].append(timers[k].blocked_autorange(min_run_time=min_run_time / rounds))
    return {k: Measurement.merge(ms)[0] for k, ms in got.items()}


def peak_memory(fn: Callable[[], Any], device: torch.device) -> int:
    """Peak bytes PyTorch allocates during ``fn()`` beyond what was allocated before (its result included).

    CUDA: ``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats`` minus the allocation before.
    CPU: the running sum of the allocations and frees of PyTorch's CPU allocator that ``torch.profiler``
    records (``profile_memory=True``, the ``[memory]`` events of its trace): tensors and ATen work buffers,
    not memory a kernel takes from ``malloc`` directly.
    """
    if device.type == 'cuda':
        sync(device)
        torch.cuda.reset_peak_memory_stats(device)
        base, result = torch.cuda.memory_allocated(device), fn()  # the result lives until the peak is read
        sync(device)
        return int(torch.cuda.max_memory_allocated(device) - base)
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        result = fn()  # noqa: F841
    with tempfile.TemporaryDirectory() as tmp:
        prof.export_chrome_trace(os.path.join(tmp, 'trace.json'))
        with open(os.path.join(tmp, 'trace.json')) as f:
            events = [e for e in json.load(f)['traceEvents'] if e.get('name') == '[memory]']
    current = peak = 0
    for e in sorted((e for e in events if e['args'].get('Device Type') == 0), key=lambda e: e['ts']):
        current += e['args']['Bytes']
        peak = max(peak, current)
    return peak


def agreement(outs: Dict[str, Sequence[torch.Tensor]], reference: str, rtol: float,
              names: Sequence[str]) -> Dict[str, Any]:
    """Max abs difference of each implementation's tensors to the reference's; they agree when every one is
    at most ``rtol`` x the reference tensor's max abs value (a wrong shape or count never agrees)."""
    ref = [t.detach().cpu().double() for t in outs[reference]]
    scale = [float(r.abs().max()) if r.numel() else 0.0 for r in ref]
    diffs = {n: [(float((t.detach().cpu().double() - r).abs().max()) if r.numel() else 0.0)
                 if t.shape == r.shape else math.inf for t, r in zip(ts, ref)] for n, ts in outs.items()}
    ok = {n: len(d) == len(ref) and all(v <= rtol * max(s, 1e-30) for v, s in zip(d, scale))
          for n, d in diffs.items() if n != reference}
    return {'reference': reference, 'rtol': rtol, 'ref_max_abs': dict(zip(names, scale)), 'ok': ok,
            'max_abs_diff': {n: dict(zip(names, diffs[n])) for n in ok}}


def environment(device: torch.device) -> Dict[str, Any]:
    """Date, command, commit, versions and machine, recorded with every result."""
    git = subprocess.run(['git', 'describe', '--always', '--dirty'], cwd=ROOT, capture_output=True, text=True)
    cpu = platform.processor() or platform.machine()
    if os.path.exists('/proc/cpuinfo'):
        with open('/proc/cpuinfo') as f:
            cpu = next((line.split(':', 1)[1].strip() for line in f if line.startswith('model name')), cpu)
    env = {'date': datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M UTC'),
           'command': ' '.join(['tools/' + os.path.basename(sys.argv[0])] + sys.argv[1:]),
           'git_commit': git.stdout.strip() or '?', 'python': platform.python_version(), 'cpu': cpu,
           'cpu_count': os.cpu_count(), 'torch_threads': torch.get_num_threads(),
           'load_avg_1m': round(os.getloadavg()[0], 2) if hasattr(os, 'getloadavg') else '?'}
    env.update({m: sys.modules[m].__version__ for m in ('torch', 'torchvision', 'mmcv', 'mmdet', 'dcn_plugin')
                if m in sys.modules})
    if device.type == 'cuda':
        p = torch.cuda.get_device_properties(device)
        env['gpu'] = (f'{p.name} (sm {p.major}.{p.minor}), CUDA {torch.version.cuda}, '
                      f'cuDNN {torch.backends.cudnn.version()}')
    return env


def run(mode: Mode) -> Dict[str, Any]:
    """Load the implementations; per case run each phase once (what fails, the agreement check, warm-up),
    time all phases of all implementations interleaved, measure their peak memory, compute the ratios.
    ``failures`` lists what fails the run: a disagreement, or a failure of an implementation that must run."""
    args, device, phases, impls, skipped = mode.args, mode.device, mode.phases(), {}, {}
    for name in args.impls:
        try:
            impls[name] = mode.impls[name](args)
        except Skip as e:
            skipped[name] = str(e)
            log(f'{name} skipped: {e}')
    if not impls:
        raise SystemExit(f'benchmark: no implementation could be loaded: {skipped}')
    results = {'mode': args.command, 'title': mode.title(), 'phases': phases, 'impls': list(impls), 'cases': [],
               'ratios': mode.ratios, 'columns': mode.columns, 'skipped': skipped, 'failures': [],
               'config': {k: v for k, v in vars(args).items() if k != 'impls'}}
    cases = mode.cases(impls)
    for i, case in enumerate(cases):
        log(f'case {i + 1}/{len(cases)}: {case["label"]}')
        inputs, res, runners, first = mode.inputs(case), {n: {} for n in impls}, {}, {}
        for name, impl in impls.items():
            try:
                runners[name] = {p: fn for p, fn in mode.bind(impl, inputs).items() if p in phases}
                first[name] = {p: fn() for p, fn in runners[name].items()}
                sync(device)
            except Exception as e:  # noqa: BLE001  (recorded for this case; the others go on)
                runners.pop(name, None)
                res[name]['error'] = one_line(e)
                log(f'{case["label"]}: {name} failed: {res[name]["error"]}')
                if name in mode.must_run:
                    results['failures'].append(f'{case["label"]}: {name} failed: {res[name]["error"]}')
        entry: Dict[str, Any] = {'case': case, 'results': res, 'agreement': mode.check(first)}
        del first
        agree = entry['agreement'] or {'ok': {}}
        results['failures'] += [f'{case["label"]}: {n} DISAGREES with {agree["reference"]}: max abs differences '
                                f'{agree["max_abs_diff"][n]}' for n, ok in agree['ok'].items() if not ok]
        timed = measure({(n, p): fn for n, r in runners.items() for p, fn in r.items()}, args.rounds,
                        args.min_run_time)
        for (name, phase), m in timed.items():
            res[name].update({f'{phase}_ms': m.median * 1e3, f'{phase}_iqr_ms': m.iqr * 1e3,
                              f'{phase}_samples_ms': [round(t * 1e3, 4) for t in m.times]})
            if not args.no_memory:
                res[name][f'mem_{phase}_bytes'] = peak_memory(runners[name][phase], device)
        entry.update(mode.extra(impls, runners))
        entry['ratios'] = {f'{a}_over_{b}_{key.replace("_bytes", "").replace("_ms", "")}': res[a][key] / res[b][key]
                           for a, b, kind in mode.ratios for p in phases
                           for key in [f'mem_{p}_bytes' if kind == 'mem' else f'{p}_ms']
                           if res.get(a, {}).get(key) and res.get(b, {}).get(key)}  # none where 0 or missing
        results['cases'].append(entry)
        del inputs, runners
        if device.type == 'cuda':
            torch.cuda.empty_cache()
    results['environment'] = environment(device)
    return results


# ----------------------------------------------------------------------------- reports
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


# ----------------------------------------------------------------------------- op mode
RTOL = {'float32': 1e-4, 'float64': 1e-9, 'float16': 2e-2, 'bfloat16': 5e-2}  # agreement (TF32: 2e-2)
SHAPE_SETS = {  # DCNv2 layers, C = O, padding k // 2: [NAME=]C@HxW[/sS][/dgG][/kK] (kernel k = 3 by default)
    'equal-gflop': '128@64x64 256@32x32 512@16x16 128@128x128/s2',  # 2.42 GFLOP each at batch 2
    # ResNet-50's 3x3 convs of c3-c5 (the Bottleneck's conv2), and those of the strided first blocks
    'r50-640x640': 'r50-640-c3=128@80x80 r50-640-c4=256@40x40 r50-640-c5=512@20x20',
    'r50-640x640-s2': 'r50-640-c3s2=128@160x160/s2 r50-640-c4s2=256@80x80/s2 r50-640-c5s2=512@40x40/s2',
    'r50-1333x800': 'r50-1333-c3=128@100x168 r50-1333-c4=256@50x84 r50-1333-c5=512@25x42',  # padded: 1344x800
    'cpu': 'equal-gflop r50-640x640 r50-640-c4-dg4=256@40x40/dg4',  # the default on CPU
    'cuda': 'r50-1333x800 r50-1333-c4-dg4=256@50x84/dg4',  # the default on CUDA
    'quick': '32@16x16 32@16x16/s2/dg4', 'tiny': 'tiny=8@8x8/dg2'}


def parse_shapes(tokens: Sequence[str], batch: int) -> List[Dict[str, Any]]:
    """Shape sets (:data:`SHAPE_SETS`) and specs to op cases, in order, each once.

    Raises:
        ValueError: a token is neither; the message lists the sets and the spec syntax.
    """
    cases: List[Dict[str, Any]] = []
    for tok in ' '.join(tokens).replace(',', ' ').split():
        name, _, spec = tok.rpartition('=')
        m = re.fullmatch(r'(\d+)@(\d+)x(\d+)((?:/(?:s|dg|k)\d+)*)', spec)
        if tok in SHAPE_SETS:
            found = parse_shapes([SHAPE_SETS[tok]], batch)
        elif m:
            opt = {k: int(v) for k, v in re.findall(r'/(s|dg|k)(\d+)', m[4])}
            c, h, w, s, dg, k = int(m[1]), int(m[2]), int(m[3]), opt.get('s', 1), opt.get('dg', 1), opt.get('k', 3)
            if min(c, h, w, s, dg, k) < 1 or c % dg:
                raise ValueError(f'shape {tok!r}: every number must be positive and the channels divisible by dg')
            ho, wo = (h + 2 * (k // 2) - k) // s + 1, (w + 2 * (k // 2) - k) // s + 1
            found = [dict(label=f'{name} ({spec})' if name else spec, spec=spec, channels=c, height=h, width=w,
                          stride=s, deform_groups=dg, kernel=k, padding=k // 2, out_hw=[ho, wo], batch=batch,
                          gflop=float(f'{2 * batch * c * c * k * k * ho * wo / 1e9:.3g}'))]
        else:
            raise ValueError(f'unknown shape {tok!r}: use a set ({", ".join(SHAPE_SETS)}) or a spec '
                             '[NAME=]C@HxW[/sS][/dgG][/kK] such as 256@40x40/dg4')
        cases += [f for f in found if f['spec'] not in {c['spec'] for c in cases}]
    if not cases:
        raise ValueError('no shapes given')
    return cases


def _module(name: str) -> Any:
    if importlib.util.find_spec(name.split('.')[0]) is None:
        raise Skip(f'{name.split(".")[0]} is not installed')
    try:
        return importlib.import_module(name)
    except Exception as e:  # noqa: BLE001  (no compiled ops, an ABI mismatch: a note, the others go on)
        raise Skip(f'{name} cannot be imported: {one_line(e)}') from None


def _mmcv_order(fn: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
    """Ours and mmcv's take (input, offset, mask, weight, bias, stride, padding, dilation, groups, dg)."""
    return lambda x, o, m, w, c: fn(x, o, m, w, None, c['stride'], c['padding'], 1, 1, c['deform_groups'])


def _ours(args: argparse.Namespace) -> Tuple[Callable[..., torch.Tensor], Tuple[int, ...]]:
    ops = _module('dcn_plugin.ops')
    if args.device == 'cuda' and not ops.has_cuda_kernels():
        raise Skip('dcn_plugin._C was built without its CUDA kernels (rebuild with FORCE_CUDA=1)')
    return _mmcv_order(ops.modulated_deform_conv2d), (0, 1, 2, 3)


def _mmcv(args: argparse.Namespace) -> Tuple[Callable[..., torch.Tensor], Tuple[int, ...]]:
    ops = _module('mmcv.ops')
    if not _module('dcn_plugin.utils.compat').mmcv_has_compiled_ops():
        raise Skip('mmcv has no compiled operators (mmcv-lite: its deformable convolution runs on ours); '
                   'install the full mmcv with `bash scripts/setup_env.sh --full-mmcv` to compare')
    return _mmcv_order(ops.modulated_deform_conv2d), (0, 1, 2, 3)


def _torchvision(args: argparse.Namespace) -> Tuple[Callable[..., torch.Tensor], Tuple[int, ...]]:
    op = _module('torchvision.ops').deform_conv2d
    return (lambda x, o, m, w, c: op(x, o, w, None, c['stride'], c['padding'], mask=m)), (0, 1, 2, 3)


class OpMode(Mode):
    """Our op against torchvision's, mmcv's (when importable) and ``F.conv2d`` of the same shape (the GEMM every
    implementation does), forward and forward+backward on the same inputs."""
    # name -> loader of (function(input, offset, mask, weight, case), which of those four it differentiates)
    impls = {'ours': _ours, 'torchvision': _torchvision,
             'mmcv': _mmcv,
             'conv2d': lambda args: (lambda x, o, m, w, c: torch.nn.functional.conv2d(x, w, None, c['stride'],
                                                                                      c['padding']), (0, 3))}
    ratios = [('ours', 'conv2d', 'time'), ('torchvision', 'ours', 'time'), ('mmcv', 'ours', 'time'),
              ('ours', 'torchvision', 'mem')]
    must_run, columns = ('ours',), [('GFLOP', 'gflop')]

    def title(self) -> str:
        a = self.args
        return f'Op benchmark: {a.device}, {a.dtype}{" (TF32 on)" * a.tf32}, batch {a.batch}, DCNv2 with mask'

    def phases(self) -> Dict[str, str]:
        return {'fwd': 'fwd', 'fwdbwd': 'fwd+bwd'}

    def cases(self, impls: Dict[str, Any]) -> List[Dict[str, Any]]:
        return parse_shapes(self.args.shapes, self.args.batch)

    def inputs(self, case: Dict[str, Any]) -> List[Any]:
        """Input N(0, 1), offsets N(0, 2) pixels, mask sigmoid(N(0, 1)), weight N(0, 1/(C k k)), upstream
        gradient N(0, 1), drawn in float32 on the CPU (the same numbers on every device and dtype), NCHW."""
        n, c, k, (ho, wo), kk = (case[key] for key in ('batch', 'channels', 'kernel', 'out_hw', 'deform_groups'))
        randn, kk = partial(torch.randn, generator=torch.Generator().manual_seed(self.args.seed)), kk * k * k
        ts = [randn(n, c, case['height'], case['width']), 2 * randn(n, 2 * kk, ho, wo), randn(n, kk, ho, wo).sigmoid(),
              randn(c, c, k, k) / math.sqrt(c * k * k), randn(n, c, ho, wo)]
        dtype = getattr(torch, self.args.dtype)
        return [t.to(self.device, dtype).requires_grad_(i < 4) for i, t in enumerate(ts)] + [case]

    def bind(self, impl: Tuple[Callable[..., torch.Tensor], Tuple[int, ...]], inputs: List[Any]) -> Runners:
        """fwd: the output under no_grad (inference); fwdbwd: the output and its ``autograd.grad`` w.r.t. the inputs."""
        (fn, leaves), (*t, grad_out, case) = impl, inputs

        def fwd() -> torch.Tensor:
            with torch.no_grad():
                return fn(*t, case)

        def fwdbwd() -> Tuple[torch.Tensor, ...]:
            with torch.enable_grad():
                out = fn(*t, case)
                return (out,) + torch.autograd.grad(out, [t[i] for i in leaves], grad_out)
        return {'fwd': fwd, 'fwdbwd': fwdbwd}

    def check(self, first: Dict[str, Dict[str, Any]]) -> Optional[Dict[str, Any]]:
        """Each deformable implementation's output and gradients against ours (conv2d computes another function)."""
        outs = {n: r['fwdbwd'] for n, r in first.items() if n != 'conv2d'}
        rtol = 2e-2 if self.args.tf32 and self.args.dtype == 'float32' else RTOL[self.args.dtype]
        names = ('output', 'grad_input', 'grad_offset', 'grad_mask', 'grad_weight')
        return agreement(outs, 'ours', rtol, names) if 'ours' in outs and len(outs) > 1 else None


# ----------------------------------------------------------------------------- model mode
def _no_pretrained(node: Any) -> None:
    """Drop every ``Pretrained`` init and ``pretrained=`` from a model config, in place: nothing is loaded."""
    for key, value in node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ():
        if key in ('init_cfg', 'pretrained') and value:
            kept = [c for c in (value if isinstance(value, list) else [value]) if key == 'init_cfg' and
                    c.get('type') != 'Pretrained']
            node[key] = (kept or None) if isinstance(value, list) else (kept[0] if kept else None)
        else:
            _no_pretrained(value)


def build_model(path: str, args: argparse.Namespace) -> Tuple[torch.nn.Module, int]:
    """The ``--part`` of the config's model, initialised as a training from scratch starts (no weights are
    loaded or downloaded), and the divisor its data preprocessor pads images to."""
    from mmdet.registry import MODELS
    from mmdet.utils import register_all_modules
    from mmengine.logging import MMLogger

    from dcn_plugin.apis import load_config
    cfg = load_config(path)
    _no_pretrained(cfg.model)
    register_all_modules(init_default_scope=True)
    torch.manual_seed(args.seed)
    model, logger = MODELS.build(cfg.model), MMLogger.get_current_instance()
    level = logger.level
    logger.setLevel(logging.WARNING)  # init_weights() logs every parameter's init
    try:
        model.init_weights()
    finally:
        logger.setLevel(level)
    part = {'detector': lambda: model, 'backbone': lambda: model.backbone,
            'backbone+neck': lambda: torch.nn.Sequential(model.backbone, model.neck)}[args.part]()
    return part.to(args.device), cfg.model.get('data_preprocessor', {}).get('pad_size_divisor', 1)


PARTS = ('offset/mask convs (conv_offset)', 'DCN sampling (im2col, offset/mask grad, input grad)', 'DCN GEMMs',
         'DCN op, rest (layout copies, zero fills, autograd)', 'other convolutions', 'everything else')


def breakdown(fn: Callable[[], Any], net: torch.nn.Module, device: torch.device) -> Dict[str, Any]:
    """Where one run of ``fn`` spends its time (:data:`PARTS`), from one torch.profiler run: each event's self
    time (CPU; on CUDA its kernels' time) goes to the part of its innermost classified ancestor or itself.
    ``conv_offset`` modules are scoped through forward hooks, their backward nodes linked through autograd's
    sequence numbers; the op's phases are its own scopes (``dcn_plugin::im2col``, ``::gemm``, ...)."""
    stack, hooks, scope = [], [], 'benchmark::conv_offset'
    for m in [m.conv_offset for m in net.modules() if isinstance(getattr(m, 'conv_offset', None), torch.nn.Module)]:
        hooks += [m.register_forward_pre_hook(lambda *_: stack.append(record_function(scope).__enter__())),
                  m.register_forward_hook(lambda *_: stack.pop().__exit__(None, None, None))]
    try:
        with profile(activities=[ProfilerActivity.CPU] + [ProfilerActivity.CUDA] * (device.type == 'cuda')) as prof:
            with record_function('benchmark::step'):
                fn()
                sync(device)
    finally:
        for h in hooks:
            h.remove()
    events, linked, memo = prof.events(), set(), {}

    def part(e: Any) -> int:
        if id(e) not in memo:
            up, n = part(e.cpu_parent) if e.cpu_parent is not None else 5, e.name
            memo[id(e)] = 0 if up == 0 or n == scope or (
                n.startswith('autograd::engine') and (e.fwd_thread, e.sequence_nr) in linked) else \
                1 if n in ('dcn_plugin::im2col', 'dcn_plugin::offset_mask_grad', 'dcn_plugin::input_grad') else \
                2 if n == 'dcn_plugin::gemm' else 3 if 'dcn_plugin' in n else \
                4 if n.startswith('aten::conv') or 'ConvolutionBackward' in n else up
        return memo[id(e)]
    for _ in range(2):  # the second pass knows the backward nodes of conv_offset's forward ops
        memo.clear()
        parts = [part(e) for e in events]
        linked = {(e.thread, e.sequence_nr) for e, p in zip(events, parts) if p == 0 and e.sequence_nr >= 0}
    clock = 'self_device_time_total' if device.type == 'cuda' else 'self_cpu_time_total'
    ms = [sum(getattr(e, clock) for e, p in zip(events, parts) if p == i) / 1e3 for i in range(len(PARTS))]
    step = next(e for e in events if e.name == 'benchmark::step')
    return {'parts': dict(zip(PARTS, ms)), 'total_ms': sum(ms), 'step_ms': step.cpu_time_total / 1e3,
            'clock': 'of GPU kernel time' if device.type == 'cuda' else 'of CPU time'}


class ModelMode(Mode):
    """A model config with DCN ('dcn') against the same model with plain convolutions ('baseline'), built from
    the configs without weights, on the same random batch; optionally the DCN model's time by part."""
    impls = {'dcn': lambda args: build_model(args.config, args),
             'baseline': lambda args: build_model(args.baseline, args)}
    ratios = [('dcn', 'baseline', 'time'), ('dcn', 'baseline', 'mem')]
    must_run = ('dcn', 'baseline')

    def title(self) -> str:
        a = self.args
        return f'Model benchmark, {a.part}: dcn = {a.config}, baseline = {a.baseline}; {a.device}' + ', TF32' * a.tf32

    def phases(self) -> Dict[str, str]:
        return {p: t for p, t in (('infer', 'inference'), ('train', 'training step')) if self.args.mode in (p, 'both')}

    def cases(self, impls: Dict[str, Any]) -> List[Dict[str, Any]]:
        """One case: ``--image-size``, padded as the configs' data preprocessors pad it."""
        (h, w), div, n = self.args.image_size, max(d for _, d in impls.values()), self.args.batch
        hp, wp = -(-h // div) * div, -(-w // div) * div
        return [dict(label=f'{h}x{w} batch {n}' + f' (padded to {hp}x{wp})' * ((hp, wp) != (h, w)),
                     image_size=[h, w], input_size=[hp, wp], batch=n)]

    def inputs(self, case: Dict[str, Any]) -> Tuple[Any, ...]:
        """A batch of N(0, 1) images (as normalised) and 5 random ground-truth boxes and labels per image."""
        g, n, (h, w), (hp, wp) = torch.Generator().manual_seed(self.args.seed), *(case[key] for key in (
            'batch', 'image_size', 'input_size'))
        xy, wh = torch.rand(n, 5, 2, generator=g) * 0.7, torch.rand(n, 5, 2, generator=g) * 0.25 + 0.05
        boxes = torch.cat([xy, xy + wh], -1) * torch.tensor([w, h, w, h])
        return (torch.randn(n, 3, hp, wp, generator=g).to(self.device), boxes.to(self.device),
                torch.randint(1 << 16, (n, 5), generator=g).to(self.device), case)

    def bind(self, impl: Tuple[torch.nn.Module, int], inputs: Tuple[Any, ...]) -> Runners:
        """infer: forward in eval() under no_grad (a detector's predict); train: zero_grad, forward in train() (a
        detector's loss on the boxes, else the sum of the outputs x fixed random gradients), backward."""
        (net, _), (x, boxes, labels, case) = impl, inputs
        flat = lambda out: list(out) if isinstance(out, (list, tuple)) else [out]  # noqa: E731
        if self.args.part == 'detector':
            from mmdet.structures import DetDataSample
            from mmengine.structures import InstanceData
            classes = min([m.num_classes for m in net.modules() if isinstance(getattr(m, 'num_classes', None), int)]
                          or [1])
            meta = dict(img_shape=tuple(case['image_size']), ori_shape=tuple(case['image_size']),
                        pad_shape=tuple(case['input_size']), batch_input_shape=tuple(case['input_size']),
                        scale_factor=(1.0, 1.0))
            samples = [DetDataSample(metainfo=meta, gt_instances=InstanceData(bboxes=b, labels=lab % classes))
                       for b, lab in zip(boxes, labels)]
            forward, loss = (lambda: net.predict(x, samples)), (lambda: net.parse_losses(net.loss(x, samples))[0])
        else:
            g = torch.Generator().manual_seed(self.args.seed)
            net.eval()  # (mmdet's ResNet.train() returns None: no chaining)
            with torch.no_grad():
                grads = [torch.randn(o.shape, generator=g).to(o) for o in flat(net(x))]
            forward, loss = (lambda: net(x)), (lambda: sum((o * d).sum() for o, d in zip(flat(net(x)), grads)))

        def infer() -> Any:
            net.eval()
            with torch.no_grad():
                return forward()

        def train() -> None:
            net.train()
            net.zero_grad(set_to_none=True)
            loss().backward()
        return {'infer': infer, 'train': train}

    def extra(self, impls: Dict[str, Any], runners: Dict[str, Runners]) -> Dict[str, Any]:
        if not self.args.breakdown or 'dcn' not in runners:
            return {}
        return {'breakdown': {p: breakdown(fn, impls['dcn'][0], self.device) for p, fn in runners['dcn'].items()}}


# ----------------------------------------------------------------------------- RoI pooling mode
FPN_LEVELS = {'P2': 4, 'P3': 8, 'P4': 16, 'P5': 32}  # stride; mmdet maps RoIs of scale s to P(2 + log2(s/56))


def _roi_fn(offsets: bool) -> Callable[[argparse.Namespace], Any]:
    def load(args: argparse.Namespace) -> Callable[..., torch.Tensor]:
        pool = _module('dcn_plugin.ops').deform_roi_pool
        return lambda x, r, o, c: pool(x, r, o if offsets else None, 7, 1 / c['stride'], args.sampling_ratio)
    return load


def _roi_align(args: argparse.Namespace) -> Callable[..., torch.Tensor]:
    op = _module('torchvision.ops').roi_align
    return lambda x, r, o, c: op(x, r, 7, 1 / c['stride'], args.sampling_ratio or -1, aligned=True)


class RoIPoolMode(Mode):
    """Deformable RoI pooling (with learned offsets, and without: plain RoI pooling) against torchvision's
    ``roi_align(aligned=True)`` (the same sampling without offsets), 7x7 bins, forward and forward+backward
    (the gradient of the feature map, the one roi_align has too), on one FPN level of an image per case."""
    impls = {'ours': _roi_fn(True), 'ours-no-offset': _roi_fn(False), 'roi_align': _roi_align}
    ratios = [('ours', 'roi_align', 'time'), ('ours-no-offset', 'roi_align', 'time'), ('ours', 'roi_align', 'mem')]
    must_run, columns = ('ours',), [('map', 'map')]

    def title(self) -> str:
        a = self.args
        return (f'RoI pooling benchmark: {a.device}, {a.dtype}, {a.rois} RoIs per level of a {a.image_size[0]}x'
                f'{a.image_size[1]} image, {a.channels} channels, sampling ratio {a.sampling_ratio or "adaptive"}')

    def phases(self) -> Dict[str, str]:
        return {'fwd': 'fwd', 'fwdbwd': 'fwd+bwd'}

    def cases(self, impls: Dict[str, Any]) -> List[Dict[str, Any]]:
        (h, w), n = self.args.image_size, self.args.batch
        return [dict(label=level, level=level, stride=s, map=f'{n}x{self.args.channels}x{-(-h // s)}x{-(-w // s)}',
                     size=[-(-h // s), -(-w // s)]) for level, s in FPN_LEVELS.items() if level in self.args.levels]

    def inputs(self, case: Dict[str, Any]) -> List[Any]:
        """Feature map N(0, 1) (NCHW, as FPN outputs are), RoIs whose scale maps them to this level (mmdet's rule,
        finest scale 56), aspect ratios 1:2 to 2:1, inside the image; offsets N(0, 0.1); upstream gradient N(0, 1)."""
        a, g = self.args, torch.Generator().manual_seed(self.args.seed)
        (h, w), k, s = a.image_size, a.rois, case['stride']
        scale = 56 * s / 4 * (1 + torch.rand(k, generator=g))  # [56, 112) x stride / 4
        aspect = 2 ** (2 * torch.rand(k, generator=g) - 1)
        bw, bh = (scale * aspect.sqrt()).clamp(max=w), (scale / aspect.sqrt()).clamp(max=h)
        x1, y1 = torch.rand(k, generator=g) * (w - bw), torch.rand(k, generator=g) * (h - bh)
        rois = torch.stack([torch.randint(a.batch, (k,), generator=g).float(), x1, y1, x1 + bw, y1 + bh], 1)
        dt, dev = getattr(torch, a.dtype), self.device
        x = torch.randn(a.batch, a.channels, *case['size'], generator=g).to(dev, dt).requires_grad_()
        off = (0.1 * torch.randn(k, 2, 7, 7, generator=g)).to(dev, dt).requires_grad_()
        return [x, rois.to(dev, torch.float32 if dt in (torch.float16, torch.bfloat16) else dt), off,
                torch.randn(k, a.channels, 7, 7, generator=g).to(dev, dt), case]

    def bind(self, fn: Callable[..., torch.Tensor], inputs: List[Any]) -> Runners:
        """fwd: under no_grad; fwdbwd: the output and its ``autograd.grad`` w.r.t. the feature map (and offsets)."""
        x, rois, off, grad_out, case = inputs

        def fwd() -> torch.Tensor:
            with torch.no_grad():
                return fn(x, rois, off, case)

        def fwdbwd() -> Tuple[torch.Tensor, ...]:
            with torch.enable_grad():
                out = fn(x, rois, off, case)
                return (out,) + torch.autograd.grad(out, [x], grad_out)
        return {'fwd': fwd, 'fwdbwd': fwdbwd}

    def check(self, first: Dict[str, Dict[str, Any]]) -> Optional[Dict[str, Any]]:
        """Without offsets our pooling is roi_align(aligned=True): output and feature gradient must agree."""
        outs = {n: first[n]['fwdbwd'] for n in ('ours-no-offset', 'roi_align') if n in first}
        return agreement(outs, 'ours-no-offset', RTOL[self.args.dtype], ('output', 'grad_input')) \
            if len(outs) == 2 else None


MODES = {'op': OpMode, 'model': ModelMode, 'roi-pool': RoIPoolMode}


# ----------------------------------------------------------------------------- command line
def _positive(kind: type) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        if kind(text) <= 0:
            raise argparse.ArgumentTypeError(f'must be positive, got {text}')
        return kind(text)
    parse.__name__ = kind.__name__  # argparse's "invalid int value" for what does not parse
    return parse


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    """The command line, checked; ``op`` is the default subcommand. Errors exit with status 2."""
    common = argparse.ArgumentParser(add_help=False)
    add = common.add_argument
    add('--device', default='cpu', choices=('cpu', 'cuda'), help='default: cpu')
    add('--tf32', action='store_true', help='allow TF32 tensor cores in cuBLAS and cuDNN (CUDA; default off)')
    add('--batch', type=_positive(int), help='batch size (default: op 2, model 1)')
    add('--threads', type=_positive(int), help="torch's CPU threads (default: torch's default)")
    add('--min-run-time', type=_positive(float), default=1.0, help='timed seconds per implementation and phase')
    add('--rounds', type=_positive(int), default=5, help='interleaved rounds the run time is split into (5)')
    add('--no-memory', action='store_true', help='skip the peak memory measurement')
    add('--seed', type=int, default=0, help='seed of the random inputs and weights (default 0)')
    add('--out-dir', default='work_dirs/benchmarks', help='folder of the .md, .json, .png (work_dirs/benchmarks)')
    add('--tag', default='', help='suffix of the output file names')
    parser = argparse.ArgumentParser(prog='benchmark.py', description=__doc__.split('\n')[0])
    sub = parser.add_subparsers(dest='command')
    op = sub.add_parser('op', parents=[common], help='our op against torchvision, mmcv and conv2d (the default)')
    op.add_argument('--dtype', default='float32', choices=list(RTOL), help='float16, bfloat16: with --device cuda')
    op.add_argument('--shapes', nargs='+', help='shape sets or [NAME=]C@HxW[/sS][/dgG][/kK] specs (default: the '
                    'set named after the device): ' + '; '.join(f'{k}: {v}' for k, v in SHAPE_SETS.items()))
    op.add_argument('--impls', nargs='+', default=list(OpMode.impls), choices=list(OpMode.impls), help='default: all')
    model = sub.add_parser('model', parents=[common], help='a DCN model config against its baseline config')
    model.add_argument('config', help='the model with DCN')
    model.add_argument('--baseline', required=True, help='the same model with plain convolutions')
    model.add_argument('--part', default='detector', choices=('detector', 'backbone', 'backbone+neck'))
    model.add_argument('--mode', default='both', choices=('infer', 'train', 'both'), help='default: both')
    model.add_argument('--image-size', nargs=2, type=_positive(int), default=[800, 1333], metavar=('H', 'W'))
    model.add_argument('--breakdown', action='store_true', help="the DCN model's time by part, one profiled run")
    roi = sub.add_parser('roi-pool', parents=[common], help='deformable RoI pooling against torchvision roi_align')
    roi.add_argument('--dtype', default='float32', choices=list(RTOL), help='float16, bfloat16: with --device cuda')
    roi.add_argument('--rois', type=_positive(int), default=512, help='RoIs per level (default 512)')
    roi.add_argument('--channels', type=_positive(int), default=256, help='feature channels (default 256)')
    roi.add_argument('--image-size', nargs=2, type=_positive(int), default=[800, 1333], metavar=('H', 'W'))
    roi.add_argument('--levels', nargs='+', default=list(FPN_LEVELS), choices=list(FPN_LEVELS), help='default: all')
    roi.add_argument('--sampling-ratio', type=int, default=0, help='samples per bin side; 0: adaptive (default)')
    roi.add_argument('--impls', nargs='+', default=list(RoIPoolMode.impls), choices=list(RoIPoolMode.impls))
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv if argv[:1] in (['op'], ['model'], ['roi-pool'], ['-h'], ['--help'])
                             else ['op'] + argv)
    error = sub.choices[args.command].error
    if args.device == 'cuda' and not torch.cuda.is_available():
        error(f'--device cuda: no CUDA device here (torch {torch.__version__}, built for CUDA {torch.version.cuda})')
    if args.tf32 and args.device != 'cuda':
        error('--tf32 needs --device cuda (TF32 is a tensor-core mode of CUDA GPUs)')
    if args.command in ('op', 'roi-pool') and args.device == 'cpu' and args.dtype in ('float16', 'bfloat16'):
        error(f'--dtype {args.dtype} needs --device cuda (on the CPU, benchmark float32 or float64)')
    if args.command == 'roi-pool':
        args.batch = args.batch or 1
        if args.sampling_ratio < 0:
            error(f'--sampling-ratio must be 0 (adaptive) or positive, got {args.sampling_ratio}')
    elif args.command == 'op':
        args.batch, args.shapes = args.batch or 2, args.shapes or [args.device]
        try:
            parse_shapes(args.shapes, args.batch)
        except ValueError as e:
            error(str(e))
    else:
        args.batch, args.dtype, args.impls = args.batch or 1, 'float32', list(ModelMode.impls)
        for path in (args.config, args.baseline):
            if not os.path.isfile(path):
                error(f'config file not found: {path}')
        if importlib.util.find_spec('mmdet') is None:
            error('the model mode needs mmdet (with mmengine and mmcv) installed')
    return args


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run, print the short report, write the full one; 1 if an implementation disagrees or a must-run fails."""
    args = parse_args(argv)
    mode, threads = MODES[args.command](args), torch.get_num_threads()
    torch.set_num_threads(args.threads or threads)
    saved = set_flags(precision_flags(mode.device, args.tf32))
    try:
        results = run(mode)
    finally:
        set_flags(saved)
        torch.set_num_threads(threads)
    print(report(results, short=True))
    stem = f'{args.command}_benchmark_{args.device}_{args.dtype}' + '-tf32' * args.tf32 + (
        f'_{os.path.splitext(os.path.basename(args.config))[0]}_{args.part}_{"x".join(map(str, args.image_size))}'
        if args.command == 'model' else '') + f'_{args.tag}' * bool(args.tag)
    paths = write_reports(results, args.out_dir, re.sub(r'[^\w.-]+', '-', stem))
    log('wrote ' + ', '.join(paths.values()))
    for failure in results['failures']:
        log(f'FAILED: {failure}')
    return 1 if results['failures'] else 0


if __name__ == '__main__':
    sys.exit(main())
