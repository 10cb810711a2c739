"""Shared helpers of the operator tests (they import only torch, torchvision and dcn_plugin.ops)."""
from dataclasses import dataclass, field
from typing import Optional, Tuple

import torch


@dataclass
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
    offset_scale: float = 2.0
    tag: str = field(default='', compare=False)

    @property
    def out_hw(self) -> Tuple[int, int]:
        ho = (self.h + 2 * self.padding[0] - (self.dilation[0] * (self.k[0] - 1) + 1)) // self.stride[0] + 1
        wo = (self.w + 2 * self.padding[1] - (self.dilation[1] * (self.k[1] - 1) + 1)) // self.stride[1] + 1
        return ho, wo

    def make(self, dtype=torch.float64, device='cpu', requires_grad=False, seed=0):
        """Random (input, offset, mask, weight, bias) for this case."""
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
        return x, offset, mask, weight, bias

    def conv_args(self):
        return self.stride, self.padding, self.dilation, self.groups, self.deform_groups


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

