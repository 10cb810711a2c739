"""The op mode: our DCNv2 op against torchvision's, mmcv's and ``F.conv2d`` on shape sets or specs."""
import argparse
import math
import re
from functools import partial
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch

from .common import RTOL, Mode, Runners, Skip, add_dtype, agreement, load_module

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


def _mmcv_order(fn: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
    """Ours and mmcv's take (input, offset, mask, weight, bias, stride, padding, dilation, groups, dg)."""
    return lambda x, o, m, w, c: fn(x, o, m, w, None, c['stride'], c['padding'], 1, 1, c['deform_groups'])


def _ours(args: argparse.Namespace) -> Tuple[Callable[..., torch.Tensor], Tuple[int, ...]]:
    ops = load_module('dcn_plugin.ops')
    if args.device == 'cuda' and not ops.has_cuda_kernels():
        raise Skip('dcn_plugin._C was built without its CUDA kernels (rebuild with FORCE_CUDA=1)')
    return _mmcv_order(ops.modulated_deform_conv2d), (0, 1, 2, 3)


def _mmcv(args: argparse.Namespace) -> Tuple[Callable[..., torch.Tensor], Tuple[int, ...]]:
    ops = load_module('mmcv.ops')
    if not load_module('dcn_plugin.utils.compat').mmcv_has_compiled_ops():
        raise Skip('mmcv has no compiled operators (mmcv-lite: its deformable convolution runs on ours); '
                   'install the full mmcv with `bash scripts/setup_env.sh --full-mmcv` to compare')
    return _mmcv_order(ops.modulated_deform_conv2d), (0, 1, 2, 3)


def _torchvision(args: argparse.Namespace) -> Tuple[Callable[..., torch.Tensor], Tuple[int, ...]]:
    op = load_module('torchvision.ops').deform_conv2d
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
    help = 'our op against torchvision, mmcv and conv2d (the default)'

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        add_dtype(parser)
        parser.add_argument('--shapes', nargs='+', help='shape sets or [NAME=]C@HxW[/sS][/dgG][/kK] specs (default: '
                            'the set named after the device): ' + '; '.join(f'{k}: {v}' for k, v in SHAPE_SETS.items()))
        parser.add_argument('--impls', nargs='+', default=list(cls.impls), choices=list(cls.impls), help='default: all')

    @classmethod
    def check_arguments(cls, args: argparse.Namespace, error: Callable[[str], None]) -> None:
        """Batch 2 and the device's shape set unless given; the shapes must parse."""
        args.batch, args.shapes = args.batch or 2, args.shapes or [args.device]
        try:
            parse_shapes(args.shapes, args.batch)
        except ValueError as e:
            error(str(e))

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


