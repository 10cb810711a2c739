"""The RoI pooling mode: deformable RoI pooling against torchvision's RoIAlign, one FPN level per case."""
import argparse
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch

from .common import RTOL, Mode, Runners, add_dtype, agreement, load_module, positive

FPN_LEVELS = {'P2': 4, 'P3': 8, 'P4': 16, 'P5': 32}  # stride; mmdet maps RoIs of scale s to P(2 + log2(s/56))


def _roi_fn(offsets: bool) -> Callable[[argparse.Namespace], Any]:
    def load(args: argparse.Namespace) -> Callable[..., torch.Tensor]:
        pool = load_module('dcn_plugin.ops').deform_roi_pool
        return lambda x, r, o, c: pool(x, r, o if offsets else None, 7, 1 / c['stride'], args.sampling_ratio)
    return load


def _roi_align(args: argparse.Namespace) -> Callable[..., torch.Tensor]:
    op = load_module('torchvision.ops').roi_align
    return lambda x, r, o, c: op(x, r, 7, 1 / c['stride'], args.sampling_ratio or -1, aligned=True)


class RoIPoolMode(Mode):
    """Deformable RoI pooling (with learned offsets, and without: plain RoI pooling) against torchvision's
    ``roi_align(aligned=True)`` (the same sampling without offsets), 7x7 bins, forward and forward+backward
    (the gradient of the feature map, the one roi_align has too), on one FPN level of an image per case."""
    impls = {'ours': _roi_fn(True), 'ours-no-offset': _roi_fn(False), 'roi_align': _roi_align}
    ratios = [('ours', 'roi_align', 'time'), ('ours-no-offset', 'roi_align', 'time'), ('ours', 'roi_align', 'mem')]
    must_run, columns = ('ours',), [('map', 'map')]
    help = 'deformable RoI pooling against torchvision roi_align'

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        add = parser.add_argument
        add_dtype(parser)
        add('--rois', type=positive(int), default=512, help='RoIs per level (default 512)')
        add('--channels', type=positive(int), default=256, help='feature channels (default 256)')
        add('--image-size', nargs=2, type=positive(int), default=[800, 1333], metavar=('H', 'W'))
        add('--levels', nargs='+', default=list(FPN_LEVELS), choices=list(FPN_LEVELS), help='default: all')
        add('--sampling-ratio', type=int, default=0, help='samples per bin side; 0: adaptive (default)')
        add('--impls', nargs='+', default=list(cls.impls), choices=list(cls.impls))

    @classmethod
    def check_arguments(cls, args: argparse.Namespace, error: Callable[[str], None]) -> None:
        """Batch 1 unless given; the sampling ratio must be 0 or positive."""
        args.batch = args.batch or 1
        if args.sampling_ratio < 0:
            error(f'--sampling-ratio must be 0 (adaptive) or positive, got {args.sampling_ratio}')

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

