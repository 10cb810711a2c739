"""Shared helpers of the operator tests (they import only pytest, torch, torchvision and dcn_plugin.ops)."""
import dataclasses
import re
from dataclasses import dataclass, field
from typing import Callable, NamedTuple, Optional, Tuple

import pytest
import torch


class Inputs(NamedTuple):
    """The op's tensor arguments in its order (also used for their gradients; ``None`` where absent)."""
    input: torch.Tensor
    offset: torch.Tensor
    mask: Optional[torch.Tensor]
    weight: torch.Tensor
    bias: Optional[torch.Tensor]

    def map(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> 'Inputs':
        """``fn`` applied to every tensor present."""
        return Inputs(*(None if t is None else fn(t) for t in self))

    def leaves(self, dtype: Optional[torch.dtype] = None, device=None) -> 'Inputs':
        """Detached copies (converted to ``dtype`` / ``device`` when given) that require grad."""
        return self.map(lambda t: t.detach().to(dtype=dtype, device=device).clone().requires_grad_(True))


@dataclass(frozen=True)
class Case:
    """One deformable convolution problem."""
    n: int = 2
    c: int = 4
    h: int = 7
    w: int = 6
    o: int = 4
    k: Tuple[int, int] = (3, 3)
    stride: Tuple[int, int] = (1, 1)
    padding: Tuple[int, int] = (1, 1)
    dilation: Tuple[int, int] = (1, 1)
    groups: int = 1
    deform_groups: int = 1
    mask: bool = True
    bias: bool = True
    offset_scale: float = 2.0  # standard deviation of the random offsets, in pixels
    tag: str = field(default='', compare=False)

    @property
    def out_hw(self) -> Tuple[int, int]:
        ho = (self.h + 2 * self.padding[0] - (self.dilation[0] * (self.k[0] - 1) + 1)) // self.stride[0] + 1
        wo = (self.w + 2 * self.padding[1] - (self.dilation[1] * (self.k[1] - 1) + 1)) // self.stride[1] + 1
        return ho, wo

    def replace(self, **changes) -> 'Case':
        return dataclasses.replace(self, **changes)

    def make(self, dtype=torch.float64, device='cpu', requires_grad=False, seed=0) -> Inputs:
        """Random (input, offset, mask, weight, bias) for this case.

        The values are drawn in float32 on the CPU from ``seed``, then converted: the same numbers on
        every device, exact in float64 (rounded for float16/bfloat16).
        """
        g = torch.Generator().manual_seed(seed)
        ho, wo = self.out_hw
        kk = self.k[0] * self.k[1]

        def rnd(*shape, scale=1.0, uniform=False):
            t = (torch.rand(*shape, generator=g) if uniform else torch.randn(*shape, generator=g) * scale)
            return t.to(dtype=dtype, device=device).requires_grad_(requires_grad)

        x = rnd(self.n, self.c, self.h, self.w)
        offset = rnd(self.n, 2 * self.deform_groups * kk, ho, wo, scale=self.offset_scale)
        mask = rnd(self.n, self.deform_groups * kk, ho, wo, uniform=True) if self.mask else None
        weight = rnd(self.o, self.c // self.groups, *self.k, scale=0.5)
        bias = rnd(self.o) if self.bias else None
        return Inputs(x, offset, mask, weight, bias)

    def conv_args(self):
        return self.stride, self.padding, self.dilation, self.groups, self.deform_groups


def forward_backward(fn: Callable, case: Case, inputs: Inputs, grad_out: Optional[torch.Tensor] = None,
                     grad_seed: int = 123) -> Tuple[torch.Tensor, Inputs]:
    """The output of ``fn(*inputs, *case.conv_args())`` (detached) and the gradients of every input that
    requires grad (``None`` for the others), backpropagating ``grad_out`` or, without it, a random output
    gradient drawn in float64 on the CPU from ``grad_seed`` (the same numbers on every device)."""
    out = fn(*inputs, *case.conv_args())
    if grad_out is None:
        grad_out = torch.randn(out.shape, generator=torch.Generator().manual_seed(grad_seed), dtype=torch.float64)
    wanted = [t is not None and t.requires_grad for t in inputs]
    grads = iter(torch.autograd.grad(out, [t for t, want in zip(inputs, wanted) if want], grad_out.to(out)))
    return out.detach(), Inputs(*(next(grads) if want else None for want in wanted))


# (dy, dx) kinds of edge_case_offsets, cycled over the samples
EDGE_KINDS = ('nan', '+inf', '-inf', 'huge', '2^40', 'integer', 'y=-1', 'y=H', 'x=-1', 'x=W', 'just inside -1/W',
              'just inside H/-1', 'random')


def edge_case_offsets(case: Case, seed: int = 0) -> torch.Tensor:
    """Offsets (float64, CPU; every finite value exact in float32) that put the samples of ``case`` on the
    edge cases of bilinear sampling, cycling over images, deform groups, kernel points and positions:
    NaN, +-inf and huge offsets (1e30; 2^40, the largest a kernel refuses), samples exactly on a pixel,
    exactly at y = -1, y = H, x = -1, x = W (zero: outside), 2^-8 inside those bounds (one row or column
    of taps inside), and plain random ones."""
    g = torch.Generator().manual_seed(seed)
    ho, wo = case.out_hw
    kh, kw = case.k
    shape = (case.n, case.deform_groups, kh * kw, ho, wo)
    by = ((torch.arange(ho) * case.stride[0] - case.padding[0]).view(1, 1, 1, ho, 1)
          + (torch.arange(kh) * case.dilation[0]).repeat_interleave(kw).view(1, 1, -1, 1, 1)).double()
    bx = ((torch.arange(wo) * case.stride[1] - case.padding[1]).view(1, 1, 1, 1, wo)
          + (torch.arange(kw) * case.dilation[1]).repeat(kh).view(1, 1, -1, 1, 1)).double()
    by, bx = by.expand(shape), bx.expand(shape)
    dy, dx = (torch.randn(2, *shape, generator=g, dtype=torch.float64) * case.offset_scale).float().double()
    kind = torch.arange(dy.numel()).view(shape) % len(EDGE_KINDS)
    eps = 2.0 ** -8
    h, w = float(case.h), float(case.w)
    rules = {
        'nan': (torch.full_like(dy, float('nan')), dx),
        '+inf': (dy, torch.full_like(dx, float('inf'))),
        '-inf': (torch.full_like(dy, -float('inf')), dx),
        'huge': (dy, torch.full_like(dx, 1e30)),
        '2^40': (torch.full_like(dy, -2.0 ** 40), dx),
        'integer': (dy.round(), dx.round()),
        'y=-1': (-1 - by, dx),
        'y=H': (h - by, dx),
        'x=-1': (dy, -1 - bx),
        'x=W': (dy, w - bx),
        'just inside -1/W': (-1 + eps - by, w - eps - bx),
        'just inside H/-1': (h - eps - by, -1 + eps - bx),
        'random': (dy, dx),
    }
    out_y, out_x = dy.clone(), dx.clone()
    for i, name in enumerate(EDGE_KINDS):
        ry, rx = rules[name]
        out_y = torch.where(kind == i, ry, out_y)
        out_x = torch.where(kind == i, rx, out_x)
    # channel 2 * (g * K + k) is dy, the next one dx
    return torch.stack([out_y, out_x], dim=3).reshape(case.n, 2 * case.deform_groups * kh * kw, ho, wo)


def random_cases(count: int, seed: int):
    """Property-style random problems: every hyper-parameter drawn independently."""
    rng = torch.Generator().manual_seed(seed)

    def pick(*options):
        return options[int(torch.randint(len(options), (1,), generator=rng))]

    cases = []
    while len(cases) < count:
        groups, dg = pick(1, 1, 2, 3), pick(1, 1, 2, 4)
        c = groups * dg * pick(1, 2)
        case = Case(n=pick(1, 2, 3), c=c, h=pick(3, 5, 8, 11), w=pick(3, 4, 9, 12), o=groups * pick(1, 2, 3),
                    k=(pick(1, 2, 3, 5), pick(1, 2, 3)), stride=(pick(1, 2, 3), pick(1, 2)),
                    padding=(pick(0, 1, 2), pick(0, 1, 3)), dilation=(pick(1, 2), pick(1, 3)), groups=groups,
                    deform_groups=dg, mask=pick(True, False), bias=pick(True, False),
                    offset_scale=pick(0.5, 2.0, 6.0), tag=f'random{len(cases)}')
        eff_h = case.dilation[0] * (case.k[0] - 1) + 1
        eff_w = case.dilation[1] * (case.k[1] - 1) + 1
        if eff_h <= case.h + 2 * case.padding[0] and eff_w <= case.w + 2 * case.padding[1]:
            cases.append(case)
    return cases


def assert_close(actual: Optional[torch.Tensor], expected: Optional[torch.Tensor], name: str, rtol: float,
                 atol: float):
    assert (actual is None) == (expected is None), f'{name}: one gradient is None'
    if actual is None:
        return
    torch.testing.assert_close(actual, expected, rtol=rtol, atol=atol, msg=lambda m: f'{name}: {m}')


def assert_rel_close(actual: Optional[torch.Tensor], expected: Optional[torch.Tensor], rtol: float,
                     what: str) -> None:
    """max |actual - expected| <= rtol * max |expected| (a scale-aware check for sums of many terms);
    both on any device, ``None`` only together."""
    assert (actual is None) == (expected is None), f'{what}: one of the two is None'
    if actual is None:
        return
    assert actual.shape == expected.shape, f'{what}: shape {tuple(actual.shape)} != {tuple(expected.shape)}'
    a, e = actual.detach().double().cpu(), expected.detach().double().cpu()
    assert torch.isfinite(a).all(), f'{what}: non-finite values'
    if e.numel() == 0:
        return
    err, scale = float((a - e).abs().max()), float(e.abs().max())
    assert err <= rtol * max(scale, 1e-30), f'{what}: max abs diff {err:.3e} > {rtol:g} x max abs {scale:.3e}'


#: the op's parity grid (test_parity.py; the Triton tests run it too)
PARITY_GRID = [
    Case(tag='3x3 basic'),
    Case(k=(1, 1), padding=(0, 0), tag='1x1'),
    Case(k=(2, 3), padding=(0, 1), tag='non-square 2x3'),
    Case(k=(5, 5), padding=(2, 2), h=9, w=8, tag='5x5'),
    Case(stride=(2, 2), h=9, w=10, tag='stride 2'),
    Case(stride=(2, 1), padding=(0, 2), tag='stride (2,1) padding (0,2)'),
    Case(dilation=(2, 2), padding=(2, 2), tag='dilation 2'),
    Case(dilation=(1, 3), padding=(0, 3), h=8, w=9, tag='dilation (1,3)'),
    Case(c=6, o=4, groups=2, tag='groups 2'),
    Case(c=8, o=8, groups=4, deform_groups=2, tag='groups 4 deform_groups 2'),
    Case(c=8, deform_groups=4, tag='deform_groups 4'),
    Case(c=6, o=6, groups=3, deform_groups=2, tag='groups 3 crossing deform_groups 2'),
    Case(mask=False, tag='DCNv1 (no mask)'),
    Case(bias=False, tag='no bias'),
    Case(mask=False, bias=False, c=6, deform_groups=3, tag='DCNv1 deform_groups 3 no bias'),
    Case(offset_scale=20.0, tag='large offsets (many samples outside)'),
    Case(n=1, c=3, h=3, w=3, padding=(0, 0), tag='kernel = input size'),
    Case(n=3, c=16, o=8, h=12, w=11, tag='wider channels (vector loop + tail)'),
]


def assert_refused_when_compiled(fn, kwargs, message):
    """``fn(**kwargs)`` under ``torch.compile`` (aot_eager, one graph) raises an error containing ``message``:
    the op's Meta kernel runs the same validator as its real kernels."""
    compiled = torch.compile(lambda a: fn(**a), backend='aot_eager', fullgraph=True)
    with pytest.raises(Exception, match=re.escape(message)):
        compiled(kwargs)


def malformed_cases(table):
    """Parametrize a test by a table of ``(id, changes to the arguments, exception type, message regex)``."""
    return pytest.mark.parametrize('change,exc,pattern', [m[1:] for m in table], ids=[m[0] for m in table])


def assert_refused(fn, kwargs, change, exc, pattern):
    """``fn(**kwargs)`` with ``change`` applied raises ``exc`` with a message matching ``pattern``."""
    with pytest.raises(exc, match=pattern):
        fn(**{**kwargs, **change})
