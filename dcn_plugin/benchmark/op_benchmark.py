"""Time and size our deformable convolution against torchvision, mmcv and ``F.conv2d``.

Method (``docs/benchmarks.md`` explains it for readers of the numbers):

* every implementation gets the same tensors: input ``N(0, 1)``, offsets ``N(0, 2)`` (pixels), mask
  ``sigmoid(N(0, 1))`` in (0, 1), weight ``N(0, 1/(C*k*k))``, upstream gradient ``N(0, 1)``, no bias;
  ``F.conv2d`` gets the input and weight only;
* before timing, each deformable implementation runs forward and backward once and its output and
  gradients are compared with a reference (ours, else torchvision): max abs difference per tensor;
* timing is interleaved: in each repetition every implementation runs its forward once in turn, then
  its forward+backward once in turn, so drift of the machine hits all of them alike; the first
  ``warmup`` repetitions are dropped and the median of the next ``repeat`` is reported. Forward runs
  under ``torch.no_grad()`` (inference); forward+backward is ``autograd.grad`` of the output with the
  fixed upstream gradient with respect to every input (input, offset, mask, weight);
* peak extra memory (beyond the inputs, output and gradients included) of one forward and one
  forward+backward: on CUDA, ``torch.cuda.max_memory_allocated`` minus the allocation before; on CPU,
  the running sum of the allocations and frees that PyTorch's CPU allocator reports to
  ``torch.profiler`` (``profile_memory=True``), and as a cross-check the rise of the process's peak
  resident set size (``VmHWM``, reset through ``/proc/self/clear_refs``), which also sees memory a
  kernel takes from ``malloc`` directly.
"""
from __future__ import annotations

import contextlib
import ctypes
import datetime
import gc
import importlib
import importlib.util
import math
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ['Shape', 'BenchConfig', 'PRESETS', 'SHAPE_GROUPS', 'DTYPES', 'IMPLS', 'parse_shapes',
           'default_shapes', 'run_benchmark']

#: implementations in the order they are run and shown
IMPLS: Tuple[str, ...] = ('ours', 'torchvision', 'mmcv', 'conv2d')
#: ``tf32`` is float32 tensors with TF32 tensor-core math allowed in matmul and cuDNN (CUDA only)
DTYPES: Tuple[str, ...] = ('float32', 'float64', 'tf32', 'float16', 'bfloat16')
_TORCH_DTYPE = {'float32': torch.float32, 'float64': torch.float64, 'tf32': torch.float32,
                'float16': torch.float16, 'bfloat16': torch.bfloat16}
#: relative tolerance (max abs diff / max abs of the reference) under which implementations "agree"
_AGREE_RTOL = {'float64': 1e-9, 'float32': 1e-4, 'tf32': 2e-2, 'float16': 2e-2, 'bfloat16': 5e-2}
_GRAD_NAMES = ('grad_input', 'grad_offset', 'grad_mask', 'grad_weight')


# ----------------------------------------------------------------------------- shapes
@dataclass(frozen=True)
class Shape:
    """One benchmark case: a ``k x k`` DCNv2 layer with ``C`` in and out channels on ``H x W``.

    Padding is ``k // 2``, dilation 1, groups 1; ``spec`` is the compact form ``C@HxW[/sS][/dgG][/kK]``.
    """
    channels: int
    height: int
    width: int
    stride: int = 1
    deform_groups: int = 1
    kernel: int = 3
    name: str = ''

    @property
    def padding(self) -> int:
        return self.kernel // 2

    @property
    def spec(self) -> str:
        s = f'{self.channels}@{self.height}x{self.width}'
        if self.stride != 1:
            s += f'/s{self.stride}'
        if self.deform_groups != 1:
            s += f'/dg{self.deform_groups}'
        if self.kernel != 3:
            s += f'/k{self.kernel}'
        return s

    @property
    def label(self) -> str:
        return f'{self.name} ({self.spec})' if self.name else self.spec

    def out_hw(self) -> Tuple[int, int]:
        k, p, s = self.kernel, self.padding, self.stride
        return (self.height + 2 * p - k) // s + 1, (self.width + 2 * p - k) // s + 1

    def gflop(self, batch: int) -> float:
        """Multiply-adds x 2 of the convolution (the GEMM every implementation does), in GFLOP."""
        ho, wo = self.out_hw()
        return 2.0 * batch * self.channels * self.channels * self.kernel ** 2 * ho * wo / 1e9


_SPEC_RE = re.compile(r'^(\d+)@(\d+)x(\d+)((?:/(?:s|dg|k)\d+)*)$')


def _shape_from_spec(spec: str, name: str = '') -> Shape:
    m = _SPEC_RE.match(spec)
    if m is None:
        raise ValueError(spec)
    opts = dict(re.findall(r'/(s|dg|k)(\d+)', m.group(4)))
    shape = Shape(int(m.group(1)), int(m.group(2)), int(m.group(3)), stride=int(opts.get('s', 1)),
                  deform_groups=int(opts.get('dg', 1)), kernel=int(opts.get('k', 3)), name=name)
    if min(shape.channels, shape.height, shape.width, shape.stride, shape.deform_groups, shape.kernel) < 1:
        raise ValueError(f'{spec}: every number must be positive')
    if shape.channels % shape.deform_groups:
        raise ValueError(f'{spec}: channels must be divisible by deform_groups')
    return shape


# ResNet-50 3x3 convs of c3-c5 (conv2 of the Bottleneck: planes channels in and out). 640x640 input:
# c3 80x80, c4 40x40, c5 20x20; the first block of each stage is strided (pytorch style), its conv2
# reads the previous stage's resolution. 1333x800 is padded to 1344x800 (mmdet pads to 32):
# c3 100x168, c4 50x84, c5 25x42.
PRESETS: Dict[str, Shape] = {
    'tiny': _shape_from_spec('8@8x8/dg2', 'tiny'),
    'r50-640-c3': _shape_from_spec('128@80x80', 'r50-640-c3'),
    'r50-640-c4': _shape_from_spec('256@40x40', 'r50-640-c4'),
    'r50-640-c5': _shape_from_spec('512@20x20', 'r50-640-c5'),
    'r50-640-c3s2': _shape_from_spec('128@160x160/s2', 'r50-640-c3s2'),
    'r50-640-c4s2': _shape_from_spec('256@80x80/s2', 'r50-640-c4s2'),
    'r50-640-c5s2': _shape_from_spec('512@40x40/s2', 'r50-640-c5s2'),
    'r50-640-c4-dg4': _shape_from_spec('256@40x40/dg4', 'r50-640-c4-dg4'),
    'r50-1333-c3': _shape_from_spec('128@100x168', 'r50-1333-c3'),
    'r50-1333-c4': _shape_from_spec('256@50x84', 'r50-1333-c4'),
    'r50-1333-c5': _shape_from_spec('512@25x42', 'r50-1333-c5'),
    'r50-1333-c4-dg4': _shape_from_spec('256@50x84/dg4', 'r50-1333-c4-dg4'),
}
SHAPE_GROUPS: Dict[str, List[str]] = {
    # the four shapes of issue 4's table (C = O, input, stride)
    'issue': ['128@64x64', '256@32x32', '512@16x16', '128@128x128/s2'],
    'r50-640': ['r50-640-c3', 'r50-640-c4', 'r50-640-c5'],
    'r50-640-s2': ['r50-640-c3s2', 'r50-640-c4s2', 'r50-640-c5s2'],
    'r50-1333': ['r50-1333-c3', 'r50-1333-c4', 'r50-1333-c5'],
    'quick': ['32@16x16', '32@16x16/s2/dg4'],
    # the defaults per device
    'cpu': ['issue', 'r50-640', 'r50-640-c4-dg4'],
    'cuda': ['r50-1333', 'r50-1333-c4-dg4'],
}


def parse_shapes(tokens: Sequence[str]) -> List[Shape]:
    """Resolve shape tokens (comma- or space-separated) to shapes, in order, without duplicates.

    A token is a group (``issue``, ``r50-640``, ``cpu``, ...: :data:`SHAPE_GROUPS`), a preset
    (``r50-640-c3``, ``tiny``, ...: :data:`PRESETS`) or a spec ``C@HxW[/sS][/dgG][/kK]`` such as
    ``256@40x40/dg4`` or ``128@128x128/s2``.

    Raises:
        ValueError: a token is none of these; the message lists the known names.
    """
    out: List[Shape] = []

    def add(tok: str, depth: int = 0) -> None:
        if depth > 4:
            raise ValueError(f'shape group nesting too deep at {tok!r}')
        if tok in SHAPE_GROUPS:
            for sub in SHAPE_GROUPS[tok]:
                add(sub, depth + 1)
            return
        if tok in PRESETS:
            shape = PRESETS[tok]
        else:
            try:
                shape = _shape_from_spec(tok)
            except ValueError as e:
                detail = '' if str(e) == tok else f' ({e})'
                raise ValueError(f'unknown shape {tok!r}{detail}: use a group ({", ".join(SHAPE_GROUPS)}), '
                                 f'a preset ({", ".join(PRESETS)}) or C@HxW[/sS][/dgG][/kK]') from None
        if all(shape.spec != s.spec for s in out):  # the same case under two names runs once
            out.append(shape)

    for token in tokens:
        for tok in str(token).replace(',', ' ').split():
            add(tok)
    if not out:
        raise ValueError('no shapes given')
    return out


def default_shapes(device: str, quick: bool = False) -> List[Shape]:
    """The shapes run when none are named: issue 4's + ResNet-50 c3-c5 at 640x640 + a deform_groups=4
    case on CPU, ResNet-50 c3-c5 at 1333x800 + deform_groups=4 on CUDA; a small pair for ``quick``."""
    return parse_shapes(['quick' if quick else ('cuda' if device.startswith('cuda') else 'cpu')])


# ----------------------------------------------------------------------------- configuration
@dataclass
class BenchConfig:
    """What to run. ``repeat`` timed repetitions follow ``warmup`` untimed ones."""
    shapes: List[Shape]
    device: str = 'cpu'
    dtype: str = 'float32'
    batch: int = 2
    repeat: int = 5
    warmup: int = 2
    threads: Optional[int] = None
    impls: Sequence[str] = IMPLS
    check: bool = True
    memory: bool = True
    seed: int = 0
    progress: bool = True

    def validate(self) -> None:
        if self.dtype not in DTYPES:
            raise ValueError(f'dtype must be one of {DTYPES}, got {self.dtype!r}')
        unknown = [i for i in self.impls if i not in IMPLS]
        if unknown or not self.impls:
            raise ValueError(f'impls must be a non-empty subset of {IMPLS}, got {list(self.impls)}')
        if self.repeat < 1 or self.warmup < 0 or self.batch < 1:
            raise ValueError(f'need repeat >= 1, warmup >= 0, batch >= 1; got repeat={self.repeat}, '
                             f'warmup={self.warmup}, batch={self.batch}')
        if self.threads is not None and self.threads < 1:
            raise ValueError(f'threads must be positive, got {self.threads}')
        dev = torch.device(self.device)
        if dev.type not in ('cpu', 'cuda'):
            raise ValueError(f'device must be cpu or cuda[:i], got {self.device!r}')
        if dev.type == 'cuda' and not torch.cuda.is_available():
            raise RuntimeError(f'device {self.device!r} asked for, but torch.cuda.is_available() is False '
                               f'(torch {torch.__version__}, CUDA build {torch.version.cuda})')
        if dev.type == 'cpu' and self.dtype == 'tf32':
            raise ValueError('dtype tf32 is a CUDA mode (float32 tensors, TF32 tensor-core math); use '
                             'float32 on CPU')


# ----------------------------------------------------------------------------- implementations
Fn = Callable[[Tensor, Tensor, Tensor, Tensor, Shape], Tensor]


@dataclass
class Impl:
    name: str
    fn: Fn
    deformable: bool = True  # takes offset and mask; False for conv2d
    version: str = ''


def _load_impl(name: str, device: torch.device) -> Tuple[Optional[Impl], str]:
    """The implementation, or None and why it is skipped (imports happen here, lazily)."""
    if name == 'conv2d':
        def conv(x, offset, mask, weight, s):
            return F.conv2d(x, weight, None, s.stride, s.padding)
        return Impl('conv2d', conv, deformable=False, version=f'torch {torch.__version__}'), ''
    if name == 'ours':
        try:
            ops = importlib.import_module('dcn_plugin.ops')
        except Exception as e:  # noqa: BLE001  (a missing/stale _C raises ImportError; anything is a skip)
            return None, f'dcn_plugin.ops cannot be imported: {_one_line(e)}'
        if device.type == 'cuda' and not ops.has_cuda_kernels():
            return None, 'dcn_plugin._C was built without its CUDA kernels (rebuild with FORCE_CUDA=1)'
        op = ops.modulated_deform_conv2d

        def ours(x, offset, mask, weight, s):
            return op(x, offset, mask, weight, None, s.stride, s.padding, 1, 1, s.deform_groups)
        version = getattr(sys.modules.get('dcn_plugin'), '__version__', '')
        return Impl('ours', ours, version=f'dcn_plugin {version}'.strip()), ''
    if name == 'torchvision':
        if importlib.util.find_spec('torchvision') is None:
            return None, 'torchvision is not installed'
        try:
            tv = importlib.import_module('torchvision')
            tv_ops = importlib.import_module('torchvision.ops')
        except Exception as e:  # noqa: BLE001
            return None, f'torchvision.ops cannot be imported: {_one_line(e)}'

        def torchvision_fn(x, offset, mask, weight, s):
            return tv_ops.deform_conv2d(x, offset, weight, None, stride=(s.stride, s.stride),
                                        padding=(s.padding, s.padding), dilation=(1, 1), mask=mask)
        return Impl('torchvision', torchvision_fn, version=f'torchvision {tv.__version__}'), ''
    if name == 'mmcv':
        if importlib.util.find_spec('mmcv') is None:
            return None, 'mmcv is not installed'
        try:
            mmcv = importlib.import_module('mmcv')
            mmcv_op = importlib.import_module('mmcv.ops').modulated_deform_conv2d
        except Exception as e:  # noqa: BLE001  (mmcv without compiled ops, or an ABI mismatch)
            return None, f'mmcv.ops cannot be imported: {_one_line(e)}'

        def mmcv_fn(x, offset, mask, weight, s):
            # ModulatedDeformConv2dFunction.apply: positional (input, offset, mask, weight, bias, stride,
            # padding, dilation, groups, deform_groups); its CPU kernels need contiguous tensors.
            return mmcv_op(x, offset, mask, weight, None, s.stride, s.padding, 1, 1, s.deform_groups)
        return Impl('mmcv', mmcv_fn, version=f'mmcv {mmcv.__version__}'), ''
    raise ValueError(f'unknown implementation {name!r}; known: {IMPLS}')


def _one_line(e: BaseException, limit: int = 200) -> str:
    text = ' '.join(str(e).split()) or type(e).__name__
    text = f'{type(e).__name__}: {text}'
    return text if len(text) <= limit else text[:limit - 3] + '...'


# ----------------------------------------------------------------------------- inputs and runs
@dataclass
class Inputs:
    x: Tensor
    offset: Tensor
    mask: Tensor
    weight: Tensor
    grad_out: Tensor
    shape: Shape


def make_inputs(shape: Shape, batch: int, dtype: torch.dtype, device: torch.device, seed: int = 0) -> Inputs:
    """The shared random inputs (drawn on the CPU in float32, so every device and dtype sees the same
    numbers up to rounding); input, offset, mask and weight are leaves that require grad."""
    g = torch.Generator().manual_seed(seed)
    c, k, dg = shape.channels, shape.kernel, shape.deform_groups
    ho, wo = shape.out_hw()
    x = torch.randn(batch, c, shape.height, shape.width, generator=g)
    offset = torch.randn(batch, 2 * dg * k * k, ho, wo, generator=g) * 2.0
    mask = torch.sigmoid(torch.randn(batch, dg * k * k, ho, wo, generator=g))
    weight = torch.randn(c, c, k, k, generator=g) / math.sqrt(c * k * k)
    grad_out = torch.randn(batch, c, ho, wo, generator=g)

    def put(t: Tensor, leaf: bool = True) -> Tensor:
        t = t.to(device=device, dtype=dtype).contiguous()
        return t.requires_grad_(True) if leaf else t
    return Inputs(put(x), put(offset), put(mask), put(weight), put(grad_out, leaf=False), shape)


def _leaves(impl: Impl, t: Inputs) -> List[Tensor]:
    return [t.x, t.offset, t.mask, t.weight] if impl.deformable else [t.x, t.weight]


def run_forward(impl: Impl, t: Inputs) -> Tensor:
    with torch.no_grad():
        return impl.fn(t.x, t.offset, t.mask, t.weight, t.shape)


def run_forward_backward(impl: Impl, t: Inputs) -> Tuple[Tensor, Tuple[Tensor, ...]]:
    with torch.enable_grad():
        out = impl.fn(t.x, t.offset, t.mask, t.weight, t.shape)
        grads = torch.autograd.grad(out, _leaves(impl, t), t.grad_out)
    return out, grads


def _sync(device: torch.device) -> None:
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


def _time_ms(fn: Callable[[], Any], device: torch.device) -> float:
    if device.type == 'cuda':
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda.synchronize(device)
        start.record()
        fn()
        end.record()
        end.synchronize()
        return float(start.elapsed_time(end))
    t0 = time.perf_counter()
    fn()
    return (time.perf_counter() - t0) * 1e3


# ----------------------------------------------------------------------------- memory
@contextlib.contextmanager
def _quiet_stderr() -> Iterator[None]:
    """Silence file descriptor 2 (kineto prints a line at every profiler start and stop)."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError, AttributeError):
        yield
        return
    try:
        with open(os.devnull, 'w') as devnull:
            os.dup2(devnull.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _peak_cpu_alloc(fn: Callable[[], Any]) -> Optional[int]:
    """Peak of the running sum of PyTorch CPU-allocator allocations minus frees during ``fn``, in bytes."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile
    with _quiet_stderr(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    try:
        events = prof.profiler.kineto_results.events()
        deltas = sorted((e.start_ns(), e.nbytes()) for e in events
                        if e.name() == '[memory]' and e.device_type() == DeviceType.CPU)
    except AttributeError:  # private profiler API moved: report no number rather than a wrong one
        return None
    cur = peak = 0
    for _, nbytes in deltas:
        cur += nbytes
        peak = max(peak, cur)
    return peak


def _status_kb(key: str) -> int:
    with open('/proc/self/status') as f:
        for line in f:
            if line.startswith(key + ':'):
                return int(line.split()[1])
    raise KeyError(key)


_LIBC: Any = None


def _malloc_trim() -> None:
    global _LIBC
    try:
        if _LIBC is None:
            _LIBC = ctypes.CDLL(None)
        _LIBC.malloc_trim(0)
    except (OSError, AttributeError):
        _LIBC = False


def _peak_rss(fn: Callable[[], Any]) -> Optional[int]:
    """Rise of the peak resident set size during ``fn``, in bytes (Linux; None elsewhere)."""
    if not os.path.exists('/proc/self/clear_refs'):
        return None
    _malloc_trim()  # hand freed heap pages back, so that reusing them shows up as a rise again
    try:
        with open('/proc/self/clear_refs', 'w') as f:
            f.write('5')  # reset VmHWM to the current VmRSS
        base = _status_kb('VmRSS')
        fn()
        return max(0, _status_kb('VmHWM') - base) * 1024
    except (OSError, KeyError, ValueError):
        return None


def _peak_cuda(fn: Callable[[], Any], device: torch.device) -> int:
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    fn()
    torch.cuda.synchronize(device)
    return int(torch.cuda.max_memory_allocated(device) - base)


# ----------------------------------------------------------------------------- numeric agreement
def _agreement(outs: Dict[str, Tuple[Tensor, ...]], reference: str, dtype: str) -> Dict[str, Any]:
    names = ('output',) + _GRAD_NAMES
    ref = [t.detach().double() for t in outs[reference]]
    scale = {n: float(r.abs().max()) if r.numel() else 0.0 for n, r in zip(names, ref)}
    diffs: Dict[str, Dict[str, float]] = {}
    ok: Dict[str, bool] = {}
    for name, tensors in outs.items():
        if name == reference:
            continue
        d = {n: float((t.detach().double() - r).abs().max()) if r.numel() else 0.0
             for n, t, r in zip(names, tensors, ref)}
        diffs[name] = d
        ok[name] = all(math.isfinite(v) and v <= _AGREE_RTOL[dtype] * max(scale[n], 1e-30) for n, v in d.items())
    return {'reference': reference, 'rtol': _AGREE_RTOL[dtype], 'ref_max_abs': scale, 'max_abs_diff': diffs,
            'ok': ok}


# ----------------------------------------------------------------------------- precision modes
@contextlib.contextmanager
def _precision(device: torch.device, dtype: str) -> Iterator[None]:
    """On CUDA: TF32 on for ``tf32`` and off otherwise (matmul and cuDNN), cuDNN autotuning on."""
    if device.type != 'cuda':
        yield
        return
    cudnn = torch.backends.cudnn
    mode = 'tf32' if dtype == 'tf32' else 'ieee'
    new_api = hasattr(torch.backends.cuda.matmul, 'fp32_precision') and hasattr(cudnn, 'conv')
    if new_api:  # torch >= 2.9; mixing it with the legacy flags is an error there
        saved = (torch.backends.cuda.matmul.fp32_precision, cudnn.conv.fp32_precision, cudnn.benchmark)
        torch.backends.cuda.matmul.fp32_precision = mode
        cudnn.conv.fp32_precision = mode
    else:
        saved = (torch.backends.cuda.matmul.allow_tf32, cudnn.allow_tf32, cudnn.benchmark)
        torch.backends.cuda.matmul.allow_tf32 = cudnn.allow_tf32 = mode == 'tf32'
    cudnn.benchmark = True
    try:
        yield
    finally:
        if new_api:
            torch.backends.cuda.matmul.fp32_precision, cudnn.conv.fp32_precision, cudnn.benchmark = saved
        else:
            torch.backends.cuda.matmul.allow_tf32, cudnn.allow_tf32, cudnn.benchmark = saved


# ----------------------------------------------------------------------------- environment
def _git_commit() -> str:
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    try:
        out = subprocess.run(['git', 'rev-parse', '--short', 'HEAD'], cwd=root, capture_output=True, text=True,
                             timeout=5)
        dirty = subprocess.run(['git', 'status', '--porcelain', '--untracked-files=no'], cwd=root,
                               capture_output=True, text=True, timeout=5)
        return out.stdout.strip() + ('+dirty' if dirty.stdout.strip() else '') if out.returncode == 0 else ''
    except (OSError, subprocess.SubprocessError):
        return ''


def _cpu_model() -> str:
    try:
        with open('/proc/cpuinfo') as f:
            for line in f:
                if line.startswith('model name'):
                    return line.split(':', 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment(device: torch.device) -> Dict[str, Any]:
    """Versions and machine facts recorded with every result."""
    env: Dict[str, Any] = {
        'date': datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M UTC'),
        'command': ' '.join([os.path.basename(sys.argv[0])] + sys.argv[1:]) if sys.argv and sys.argv[0] else '',
        'git_commit': _git_commit(),
        'python': platform.python_version(),
        'torch': torch.__version__,
        'platform': platform.platform(),
        'cpu': _cpu_model(),
        'cpu_count': os.cpu_count(),
        'torch_threads': torch.get_num_threads(),
    }
    try:
        env['load_avg_1m'] = round(os.getloadavg()[0], 2)
    except (OSError, AttributeError):
        pass
    if device.type == 'cuda':
        props = torch.cuda.get_device_properties(device)
        env.update(gpu=props.name, gpu_memory_gib=round(props.total_memory / 2 ** 30, 1),
                   gpu_capability=f'{props.major}.{props.minor}', cuda=torch.version.cuda,
                   cudnn=torch.backends.cudnn.version())
    return env


# ----------------------------------------------------------------------------- the run
def _median(values: List[float]) -> Optional[float]:
    return float(statistics.median(values)) if values else None


def _ratios(res: Dict[str, Dict[str, Any]]) -> Dict[str, Optional[float]]:
    def t(impl: str, key: str) -> Optional[float]:
        v = res.get(impl, {}).get(key)
        return v if isinstance(v, (int, float)) and v > 0 else None

    def ratio(a: Optional[float], b: Optional[float]) -> Optional[float]:
        return a / b if a is not None and b is not None else None
    out: Dict[str, Optional[float]] = {}
    for phase in ('fwd', 'fwdbwd'):
        key = f'{phase}_ms'
        out[f'ours_over_conv2d_{phase}'] = ratio(t('ours', key), t('conv2d', key))
        out[f'torchvision_over_ours_{phase}'] = ratio(t('torchvision', key), t('ours', key))
        out[f'mmcv_over_ours_{phase}'] = ratio(t('mmcv', key), t('ours', key))
        mkey = f'mem_{phase}_bytes'
        out[f'ours_over_torchvision_mem_{phase}'] = ratio(t('ours', mkey), t('torchvision', mkey))
    return out


def run_benchmark(cfg: BenchConfig, log: Callable[[str], None] = lambda msg: None) -> Dict[str, Any]:
    """Run the benchmark described by ``cfg``; return the results as a JSON-ready dict.

    An implementation that cannot be imported is skipped with a note (``results['skipped']``); one
    that fails on a shape (an unsupported dtype, say) gets an ``error`` entry for that shape.
    """
    cfg.validate()
    device = torch.device(cfg.device)
    if device.type == 'cuda' and device.index is None:
        device = torch.device('cuda', torch.cuda.current_device())
    threads_before = torch.get_num_threads()
    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)
    try:
        return _run(cfg, device, log)
    finally:
        torch.set_num_threads(threads_before)


def _run(cfg: BenchConfig, device: torch.device, log: Callable[[str], None]) -> Dict[str, Any]:
    dtype = _TORCH_DTYPE[cfg.dtype]

    impls: List[Impl] = []
    skipped: Dict[str, str] = {}
    for name in cfg.impls:
        impl, why = _load_impl(name, device)
        if impl is None:
            skipped[name] = why
            log(f'skipping {name}: {why}')
        else:
            impls.append(impl)
    if not impls:
        raise RuntimeError(f'no implementation could be loaded: {skipped}')

    results: Dict[str, Any] = {
        'config': {**{k: v for k, v in asdict(cfg).items() if k not in ('shapes', 'progress')},
                   'impls': [i.name for i in impls], 'device': str(device)},
        'environment': environment(device),
        'versions': {i.name: i.version for i in impls},
        'skipped': skipped,
        'shapes': [],
    }
    reps = cfg.warmup + cfg.repeat
    steps_per_shape = (1 if cfg.check else 0) + reps * 2 * len(impls) + (2 * len(impls) if cfg.memory else 0)
    bar = _progress(total=len(cfg.shapes) * steps_per_shape, enabled=cfg.progress)
    try:
        with _precision(device, cfg.dtype):
            for shape in cfg.shapes:
                results['shapes'].append(_run_shape(cfg, shape, impls, device, dtype, bar))
    finally:
        bar.close()
    results['environment']['torch_threads'] = torch.get_num_threads()
    return results


def _run_shape(cfg: BenchConfig, shape: Shape, impls: List[Impl], device: torch.device, dtype: torch.dtype,
               bar: Any) -> Dict[str, Any]:
    bar.set_postfix_str(f'{shape.spec}: inputs')
    t = make_inputs(shape, cfg.batch, dtype, device, cfg.seed)
    res: Dict[str, Dict[str, Any]] = {i.name: {} for i in impls}
    active: List[Impl] = []
    outs: Dict[str, Tuple[Tensor, ...]] = {}
    # one forward+backward each: finds what fails here (an unsupported dtype, say) and feeds the check
    for impl in impls:
        bar.set_postfix_str(f'{shape.spec}: check {impl.name}')
        try:
            out, grads = run_forward_backward(impl, t)
            if impl.deformable and cfg.check:
                outs[impl.name] = (out,) + tuple(grads)
            active.append(impl)
        except Exception as e:  # noqa: BLE001  (recorded in the results, the others go on)
            res[impl.name]['error'] = _one_line(e)
        finally:
            _sync(device)
    if cfg.check:
        bar.update(1)
    failed = len(impls) - len(active)
    if failed:  # their timing and memory runs will not happen
        bar.shrink(failed * ((cfg.warmup + cfg.repeat) * 2 + (2 if cfg.memory else 0)))
    entry: Dict[str, Any] = {'shape': {**asdict(shape), 'spec': shape.spec, 'label': shape.label,
                                       'out_hw': list(shape.out_hw()), 'batch': cfg.batch},
                             'gflop': shape.gflop(cfg.batch), 'results': res}
    reference = next((n for n in ('ours', 'torchvision', 'mmcv') if n in outs), None)
    if cfg.check and reference is not None and len(outs) > 1:
        entry['agreement'] = _agreement(outs, reference, cfg.dtype)
    del outs

    samples: Dict[str, Dict[str, List[float]]] = {i.name: {'fwd': [], 'fwdbwd': []} for i in active}
    for rep in range(cfg.warmup + cfg.repeat):
        for phase, runner in (('fwd', run_forward), ('fwdbwd', run_forward_backward)):
            for impl in active:
                bar.set_postfix_str(f'{shape.spec}: {phase} {impl.name} '
                                    f'{"warm-up" if rep < cfg.warmup else "rep"} {rep + 1}/{cfg.warmup + cfg.repeat}')
                ms = _time_ms(lambda: runner(impl, t), device)
                if rep >= cfg.warmup:
                    samples[impl.name][phase].append(ms)
                bar.update(1)
    for impl in active:
        r = res[impl.name]
        for phase in ('fwd', 'fwdbwd'):
            r[f'{phase}_ms'] = _median(samples[impl.name][phase])
            r[f'{phase}_samples_ms'] = [round(v, 4) for v in samples[impl.name][phase]]

    if cfg.memory:
        for impl in active:
            r = res[impl.name]
            for phase, runner in (('fwd', run_forward), ('fwdbwd', run_forward_backward)):
                bar.set_postfix_str(f'{shape.spec}: memory {phase} {impl.name}')
                fn = lambda: runner(impl, t)  # noqa: E731
                if device.type == 'cuda':
                    r[f'mem_{phase}_bytes'] = _peak_cuda(fn, device)
                else:
                    r[f'mem_{phase}_bytes'] = _peak_cpu_alloc(fn)
                    r[f'rss_{phase}_bytes'] = _peak_rss(fn)
                bar.update(1)
    entry['ratios'] = _ratios(res)
    del t
    gc.collect()
    if device.type == 'cuda':
        torch.cuda.empty_cache()
    return entry


class _NoBar:
    def update(self, n: int = 1) -> None:
        pass

    def shrink(self, n: int) -> None:
        pass

    def set_postfix_str(self, s: str) -> None:
        pass

    def close(self) -> None:
        pass


def _progress(total: int, enabled: bool) -> Any:
    if not enabled:
        return _NoBar()
    try:
        from tqdm import tqdm
    except ImportError:
        return _NoBar()

    class _Bar(tqdm):
        def shrink(self, n: int) -> None:
            self.total = max(self.n, self.total - n)
            self.refresh()
    return _Bar(total=total, desc='benchmark', unit='run', dynamic_ncols=True, leave=False)
