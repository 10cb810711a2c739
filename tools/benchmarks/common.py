"""What every benchmark mode shares: the :class:`Mode` a mode defines, and :func:`run`, which times
(torch.utils.benchmark, interleaved, medians), sizes (peak memory), checks (agreement) and collects the results
of whatever a mode binds; small helpers for the modes and the command line."""
import argparse
import datetime
import importlib
import importlib.util
import json
import math
import os
import platform
import re
import subprocess
import sys
import tempfile
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
from torch.profiler import ProfilerActivity, profile
from torch.utils.benchmark import Measurement, Timer

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the checkout
os.environ.setdefault('KINETO_LOG_LEVEL', '6')  # no profiler chatter on stderr at every start and stop
Runners = Dict[str, Callable[[], Any]]  # phase -> one run of it
RTOL = {'float32': 1e-4, 'float64': 1e-9, 'float16': 2e-2, 'bfloat16': 5e-2}  # agreement (TF32: 2e-2)


class Skip(Exception):
    """An implementation that cannot run here (not installed, no CUDA kernels): a note, not a failure."""


class Mode:
    """A benchmark mode; :func:`run` times, sizes, checks and reports whatever it binds. A mode defines
    ``impls`` (name -> loader of an implementation from the arguments; raises :class:`Skip`), ``ratios``
    ((numerator, denominator, 'time' | 'mem') pairs), ``must_run`` (implementations whose failure fails the
    run) and ``title()``, ``phases()`` (key -> title, in order), ``cases(impls)`` (JSON-ready dicts with a
    'label'), ``inputs(case)`` (shared by the implementations of a case), ``bind(impl, inputs)`` (phase ->
    one run); ``check(first results)`` (-> :func:`agreement` or None) and ``extra(impls, runners)`` (more
    results for a case) are optional. On the command line it is a subcommand: ``help``, its options
    (``add_arguments``) and their defaults and checks once parsed (``check_arguments``)."""
    help = ''
    impls: Dict[str, Callable[[argparse.Namespace], Any]] = {}
    ratios: Sequence[Tuple[str, str, str]] = ()
    must_run: Sequence[str] = ()
    columns: Sequence[Tuple[str, str]] = ()  # (title, case key) columns of the time table

    def __init__(self, args: argparse.Namespace) -> None:
        self.args, self.device = args, torch.device(args.device)

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        """The mode's own options (those of every mode are the entry point's)."""

    @classmethod
    def check_arguments(cls, args: argparse.Namespace, error: Callable[[str], None]) -> None:
        """Fill in the defaults that depend on other arguments; ``error`` (exits with status 2) what is wrong."""

    def check(self, first: Dict[str, Dict[str, Any]]) -> Optional[Dict[str, Any]]:
        return None

    def extra(self, impls: Dict[str, Any], runners: Dict[str, Runners]) -> Dict[str, Any]:
        return {}

    def file_stem(self, detail: str = '') -> str:
        """The report files' name: mode, device, dtype, TF32, a mode's ``detail``, ``--tag``; no odd characters."""
        a = self.args
        stem = f'{a.command}_benchmark_{a.device}_{a.dtype}' + '-tf32' * a.tf32 + detail + f'_{a.tag}' * bool(a.tag)
        return re.sub(r'[^\w.-]+', '-', stem)


def one_line(e: BaseException, limit: int = 300) -> str:
    text = f'{type(e).__name__}: {" ".join(str(e).split())}'
    return text if len(text) <= limit else text[:limit - 3] + '...'


def log(msg: str) -> None:
    print(f'benchmark: {msg}', file=sys.stderr, flush=True)


def sync(device: torch.device) -> None:
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


def positive(kind: type) -> Callable[[str], Any]:
    """An argparse type: ``kind`` of the text, refused unless positive."""
    def parse(text: str) -> Any:
        if kind(text) <= 0:
            raise argparse.ArgumentTypeError(f'must be positive, got {text}')
        return kind(text)
    parse.__name__ = kind.__name__  # argparse's "invalid int value" for what does not parse
    return parse


def add_dtype(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('--dtype', default='float32', choices=list(RTOL), help='float16, bfloat16: with --device cuda')


def load_module(name: str) -> Any:
    """Import ``name``; :class:`Skip` if its package is not installed or the import fails."""
    if importlib.util.find_spec(name.split('.')[0]) is None:
        raise Skip(f'{name.split(".")[0]} is not installed')
    try:
        return importlib.import_module(name)
    except Exception as e:  # noqa: BLE001  (no compiled ops, an ABI mismatch: a note, the others go on)
        raise Skip(f'{name} cannot be imported: {one_line(e)}') from None


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
