"""CUDA kernels of the DCNv2 op: parity with the CPU kernels, low precision, autocast, edge sizes, 64-bit
indexing, determinism, gradcheck.

Every test needs a CUDA GPU and dcn_plugin built with its CUDA kernels (``FORCE_CUDA=1``); without a GPU
the whole module is skipped. ``tools/gpu_check.sh`` builds the extension and runs this file on a GPU
machine (it sets ``CUBLAS_WORKSPACE_CONFIG`` for the deterministic test).
"""
import os
from typing import Dict, NamedTuple, Optional, Tuple

import pytest
import torch

os.environ.setdefault('CUBLAS_WORKSPACE_CONFIG', ':4096:8')  # read by cuBLAS when its handle is made

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a CUDA GPU'),
]

if torch.cuda.is_available():  # keep collection on a machine without GPU free of the extension
    from dcn_plugin.ops import has_cuda_kernels, modulated_deform_conv2d
else:  # pragma: no cover
    has_cuda_kernels = modulated_deform_conv2d = None

GRADS = ('input', 'offset', 'mask', 'weight', 'bias')


class Case(NamedTuple):
    n: int = 2
    c: int = 8
    o: int = 12
    h: int = 9
    w: int = 11
    k: Tuple[int, int] = (3, 3)
    stride: Tuple[int, int] = (1, 1)
    padding: Tuple[int, int] = (1, 1)
    dilation: Tuple[int, int] = (1, 1)
    groups: int = 1
    dg: int = 1
    mask: bool = True
    bias: bool = True

    def out_hw(self) -> Tuple[int, int]:
        return tuple((s + 2 * p - (d * (k - 1) + 1)) // st + 1
                     for s, p, d, k, st in zip((self.h, self.w), self.padding, self.dilation, self.k, self.stride))


CASES = {
    'basic': Case(),
    'strided-dilated-groups-dg2': Case(c=8, o=8, h=12, w=10, stride=(2, 2), padding=(0, 2), dilation=(2, 1),
                                      groups=2, dg=2, bias=False),
    'nonsquare-kernel-dg4': Case(c=8, o=4, h=7, w=13, k=(1, 3), padding=(0, 1), dg=4),
    'dcnv1-no-mask': Case(c=6, o=5, stride=(1, 2), mask=False),
    'wide-channels': Case(n=1, c=64, o=32, h=6, w=5, dg=2),
}


def make_inputs(case: Case, dtype: torch.dtype, device: str, seed: int = 0,
                offset_std: float = 2.0) -> Dict[str, Optional[torch.Tensor]]:
    """Leaves that require grad, drawn in float64 on the CPU: the same values on every device and dtype."""
    g = torch.Generator().manual_seed(seed)
    ho, wo = case.out_hw()
    kk = case.k[0] * case.k[1]
    t = {
        'input': torch.randn(case.n, case.c, case.h, case.w, generator=g, dtype=torch.float64),
        'offset': torch.randn(case.n, 2 * case.dg * kk, ho, wo, generator=g, dtype=torch.float64) * offset_std,
        'mask': torch.rand(case.n, case.dg * kk, ho, wo, generator=g, dtype=torch.float64) if case.mask else None,
        'weight': torch.randn(case.o, case.c // case.groups, *case.k, generator=g, dtype=torch.float64)
        / (case.c // case.groups * kk) ** 0.5,
        'bias': torch.randn(case.o, generator=g, dtype=torch.float64) if case.bias else None,
    }
    return {k: None if v is None else v.to(device=device, dtype=dtype).requires_grad_(True) for k, v in t.items()}


def run_op(case: Case, t: Dict[str, Optional[torch.Tensor]]) -> torch.Tensor:
    return modulated_deform_conv2d(t['input'], t['offset'], t['mask'], t['weight'], t['bias'], case.stride,
                                   case.padding, case.dilation, case.groups, case.dg)


def fwd_bwd(case: Case, t: Dict[str, Optional[torch.Tensor]],
            grad_out: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
    out = run_op(case, t)
    if grad_out is None:
        g = torch.Generator().manual_seed(123)
        grad_out = torch.randn(out.shape, generator=g, dtype=torch.float64)
    names = [k for k in GRADS if t[k] is not None]
    grads = torch.autograd.grad(out, [t[k] for k in names], grad_out.to(out), allow_unused=False)
    return out.detach(), dict(zip(names, grads))


def assert_rel_close(actual: torch.Tensor, expected: torch.Tensor, rtol: float, what: str) -> None:
    """max |actual - expected| <= rtol * max |expected| (a scale-aware check for sums of many terms)."""
    assert actual.shape == expected.shape, f'{what}: shape {tuple(actual.shape)} != {tuple(expected.shape)}'
    a, e = actual.detach().double().cpu(), expected.detach().double().cpu()
    assert torch.isfinite(a).all(), f'{what}: non-finite values'
    if e.numel() == 0:
        return
    err, scale = float((a - e).abs().max()), float(e.abs().max())
    assert err <= rtol * max(scale, 1e-30), f'{what}: max abs diff {err:.3e} > {rtol:g} x max abs {scale:.3e}'


def test_cuda_kernels_are_built():
    assert has_cuda_kernels(), 'dcn_plugin._C has no CUDA kernels: rebuild with FORCE_CUDA=1'


# ----------------------------------------------------------------------------- CPU / CUDA parity
@pytest.mark.parametrize('dtype,rtol', [(torch.float64, 1e-10), (torch.float32, 2e-5)], ids=['float64', 'float32'])
@pytest.mark.parametrize('name', list(CASES))
def test_output_and_all_gradients_match_the_cpu_kernels(name, dtype, rtol):
    case = CASES[name]
    out_cpu, g_cpu = fwd_bwd(case, make_inputs(case, dtype, 'cpu'))
    out_cuda, g_cuda = fwd_bwd(case, make_inputs(case, dtype, 'cuda'))
    assert out_cuda.device.type == 'cuda' and out_cuda.dtype == dtype
    assert_rel_close(out_cuda, out_cpu, rtol, 'output')
    assert set(g_cuda) == set(g_cpu)
    for k in g_cpu:
        assert g_cuda[k].dtype == dtype
        assert_rel_close(g_cuda[k], g_cpu[k], rtol, f'grad {k}')


@pytest.mark.parametrize('name', ['basic', 'strided-dilated-groups-dg2'])
def test_matches_torchvision_on_cuda_in_float64(name):
    tv_ops = pytest.importorskip('torchvision.ops')
    case = CASES[name]
    t = make_inputs(case, torch.float64, 'cuda')
    out, grads = fwd_bwd(case, t)
    tv = tv_ops.deform_conv2d(t['input'], t['offset'], t['weight'], t['bias'], stride=case.stride,
                              padding=case.padding, dilation=case.dilation, mask=t['mask'])
    assert_rel_close(out, tv, 1e-10, 'output vs torchvision')
    names = list(grads)
    tv_grads = torch.autograd.grad(tv, [t[k] for k in names], _grad_like(tv))
    for k, g in zip(names, tv_grads):
        assert_rel_close(grads[k], g, 1e-9, f'grad {k} vs torchvision')


def _grad_like(out: torch.Tensor) -> torch.Tensor:
    g = torch.Generator().manual_seed(123)
    return torch.randn(out.shape, generator=g, dtype=torch.float64).to(out)


def test_channels_last_and_non_contiguous_inputs_give_the_same_results():
    case = CASES['basic']
    t = make_inputs(case, torch.float32, 'cuda')
    out, grads = fwd_bwd(case, t)
    t2 = {k: None if v is None else v.detach() for k, v in t.items()}
    t2['input'] = t2['input'].contiguous(memory_format=torch.channels_last)
    t2['offset'] = t2['offset'].transpose(2, 3).contiguous().transpose(2, 3)  # same values, other strides
    t2['weight'] = t2['weight'].contiguous(memory_format=torch.channels_last)
    t2 = {k: None if v is None else v.requires_grad_(True) for k, v in t2.items()}
    assert not t2['offset'].is_contiguous()
    out2, grads2 = fwd_bwd(case, t2)
    assert_rel_close(out2, out, 1e-5, 'output')
    for k in grads:
        assert_rel_close(grads2[k], grads[k], 1e-5, f'grad {k}')


def test_runs_on_the_current_stream():
    case = CASES['basic']
    t = make_inputs(case, torch.float32, 'cuda')
    ref, _ = fwd_bwd(case, t)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        # the inputs are written on the side stream only after a long sleep there: a kernel launched
        # on another stream would read them before they exist
        torch.cuda._sleep(50_000_000)
        late = {k: None if v is None else v.detach() * 1 for k, v in t.items()}
        out = run_op(case, late)
    torch.cuda.current_stream().wait_stream(side)
    assert_rel_close(out, ref, 0, 'output computed on a side stream')


# ----------------------------------------------------------------------------- low precision, autocast
@pytest.mark.parametrize('dtype,rtol', [(torch.float16, 1e-2), (torch.bfloat16, 4e-2)], ids=['float16', 'bfloat16'])
@pytest.mark.parametrize('name', ['basic', 'strided-dilated-groups-dg2', 'wide-channels'])
def test_half_precision_matches_a_float32_reference(name, dtype, rtol):
    case = CASES[name]
    low = make_inputs(case, dtype, 'cuda')
    ref_in = {k: None if v is None else v.detach().float().requires_grad_(True) for k, v in low.items()}
    out, grads = fwd_bwd(case, low)
    ref_out, ref_grads = fwd_bwd(case, ref_in)
    assert out.dtype == dtype
    assert_rel_close(out, ref_out, rtol, 'output')
    for k in ref_grads:
        assert grads[k].dtype == dtype, f'grad {k} dtype {grads[k].dtype}'
        assert_rel_close(grads[k], ref_grads[k], rtol, f'grad {k}')


@pytest.mark.parametrize('dtype', [torch.float16, torch.bfloat16], ids=['float16', 'bfloat16'])
def test_autocast_runs_the_op_in_the_autocast_dtype(dtype):
    case = CASES['basic']
    t = make_inputs(case, torch.float32, 'cuda')
    with torch.autocast('cuda', dtype=dtype):
        out = run_op(case, t)
    assert out.dtype == dtype
    cast = {k: None if v is None else v.detach().to(dtype) for k, v in t.items()}
    assert_rel_close(out, run_op(case, cast), 1e-3, 'autocast output vs explicit cast')
    grads = torch.autograd.grad(out, [t[k] for k in GRADS], _grad_like(out))
    _, ref = fwd_bwd(case, {k: v.detach().requires_grad_(True) for k, v in t.items()})
    for k, g in zip(GRADS, grads):
        assert g.dtype == torch.float32, f'grad {k} of a float32 leaf must be float32, got {g.dtype}'
        assert_rel_close(g, ref[k], 4e-2, f'autocast grad {k} vs float32')


def test_autocast_leaves_float64_alone():
    case = CASES['basic']
    t = make_inputs(case, torch.float64, 'cuda')
    with torch.autocast('cuda', dtype=torch.float16):
        out = run_op(case, t)
    assert out.dtype == torch.float64


# ----------------------------------------------------------------------------- sizes
def test_batch_zero_gives_empty_output_and_zero_weight_gradients():
    case = CASES['basic']._replace(n=0)
    out, grads = fwd_bwd(case, make_inputs(case, torch.float32, 'cuda'))
    assert out.shape == (0, case.o, *case.out_hw())
    for k in ('input', 'offset', 'mask'):
        assert grads[k].shape[0] == 0
    assert float(grads['weight'].abs().max()) == 0 and float(grads['bias'].abs().max()) == 0


@pytest.mark.parametrize('n', [33, 65])
def test_batches_larger_than_32_match_the_cpu_kernels(n):
    case = Case(n=n, c=4, o=6, h=6, w=7, dg=2)
    out_cpu, g_cpu = fwd_bwd(case, make_inputs(case, torch.float64, 'cpu'))
    out_cuda, g_cuda = fwd_bwd(case, make_inputs(case, torch.float64, 'cuda'))
    assert_rel_close(out_cuda, out_cpu, 1e-10, 'output')
    for k in g_cpu:
        assert_rel_close(g_cuda[k], g_cpu[k], 1e-10, f'grad {k}')


def _free_gib() -> float:
    free, _ = torch.cuda.mem_get_info()
    return free / 2 ** 30


@pytest.mark.parametrize('layout', ['one-image', 'batch'])
def test_tensors_past_2_31_elements_are_indexed_correctly(layout):
    """An input of more than 2**31 elements: the far end of it gives what a small copy of that end gives."""
    dtype, need = (torch.float32, 48) if _free_gib() >= 48 else (torch.float16, 24)
    if _free_gib() < need:
        pytest.skip(f'needs about {need} GiB of free GPU memory, {_free_gib():.1f} GiB free')
    torch.cuda.empty_cache()
    c, o, s = 32, 8, 4  # stride 4 keeps offsets, mask and output small; the input is what is big
    if layout == 'one-image':
        n, h = 1, 8200   # 32 * 8200 * 8200 = 2.15e9 elements in one image
    else:
        n, h = 2, 5800   # 2 * 32 * 5800 * 5800 = 2.15e9: the second image starts past 2**30, ends past 2**31
    case = Case(n=n, c=c, o=o, h=h, w=h, stride=(s, s), padding=(1, 1), bias=True)
    assert n * c * h * h > 2 ** 31
    ho, wo = case.out_hw()
    g = torch.Generator(device='cuda').manual_seed(0)
    x = torch.randn(n, c, h, h, device='cuda', dtype=dtype, generator=g)
    # |offset| <= 2 in steps of 1/64: sampling coordinates are exact in float32 at any position, so the big
    # and the small run interpolate with the same weights and may differ only in summation order
    offset = (torch.randn(n, 18, ho, wo, device='cuda', generator=g) * 2).clamp_(-2, 2).mul_(64).round_().div_(64)
    offset = offset.to(dtype)
    mask = torch.rand(n, 9, ho, wo, device='cuda', dtype=dtype, generator=g)
    weight = (torch.randn(o, c, 3, 3, device='cuda', generator=g) / (c * 9) ** 0.5).to(dtype)
    bias = torch.randn(o, device='cuda', dtype=dtype, generator=g)
    if layout == 'one-image':
        # outputs from row/col r0 on read input rows >= s*r0 - 3 only (|offset| <= 2, pad 1): compare the
        # bottom-right corner with the op on a crop whose own first output row/col is dropped
        crop, r0 = 256, (h - 256) // s
        assert r0 * s == h - crop
        grad_out = torch.zeros(n, o, ho, wo, device='cuda', dtype=dtype)
        grad_out[:, :, r0 + 1:, r0 + 1:] = torch.randn(n, o, ho - r0 - 1, wo - r0 - 1, device='cuda', dtype=dtype,
                                                       generator=g)
        big = {'input': x, 'offset': offset, 'mask': mask, 'weight': weight, 'bias': bias}
        small = {'input': x[:, :, h - crop:, h - crop:], 'offset': offset[:, :, r0:, r0:],
                 'mask': mask[:, :, r0:, r0:], 'weight': weight, 'bias': bias}
        small = {k: v.detach().clone().requires_grad_(True) for k, v in small.items()}
        big = {k: v.requires_grad_(True) for k, v in big.items()}
        small_case = case._replace(h=crop, w=crop)
        out_s, g_s = fwd_bwd(small_case, small, grad_out[:, :, r0:, r0:].clone())
        out_b, g_b = fwd_bwd(case, big, grad_out)
        rtol = 1e-5 if dtype == torch.float32 else 1e-2
        assert_rel_close(out_b[:, :, r0 + 1:, r0 + 1:], out_s[:, :, 1:, 1:], rtol, 'output at the far end')
        assert_rel_close(g_b['input'][:, :, h - crop:, h - crop:], g_s['input'], rtol, 'grad input at the far end')
        assert not bool(g_b['input'][:, :, : h - crop].ne(0).any()), 'grad input written above the corner'
        assert not bool(g_b['input'][:, :, :, : h - crop].ne(0).any()), 'grad input written left of the corner'
        assert_rel_close(g_b['offset'][:, :, r0 + 1:, r0 + 1:], g_s['offset'][:, :, 1:, 1:], rtol, 'grad offset')
        assert_rel_close(g_b['mask'][:, :, r0 + 1:, r0 + 1:], g_s['mask'][:, :, 1:, 1:], rtol, 'grad mask')
        assert_rel_close(g_b['weight'], g_s['weight'], 10 * rtol, 'grad weight')
    else:
        grad_out = torch.randn(n, o, ho, wo, device='cuda', dtype=dtype, generator=g)
        big = {k: v.requires_grad_(True) for k, v in
               {'input': x, 'offset': offset, 'mask': mask, 'weight': weight, 'bias': bias}.items()}
        out_b, g_b = fwd_bwd(case, big, grad_out)
        last = {k: (v[-1:] if k in ('input', 'offset', 'mask') else v).detach().clone().requires_grad_(True)
                for k, v in big.items()}
        out_l, g_l = fwd_bwd(case._replace(n=1), last, grad_out[-1:].clone())
        rtol = 1e-5 if dtype == torch.float32 else 1e-2
        assert_rel_close(out_b[-1:], out_l, rtol, 'output of the last image')
        for k in ('input', 'offset', 'mask'):
            assert_rel_close(g_b[k][-1:], g_l[k], rtol, f'grad {k} of the last image')


# ----------------------------------------------------------------------------- determinism, gradcheck
@pytest.mark.parametrize('dtype', [torch.float32, torch.float64, torch.float16, torch.bfloat16],
                         ids=['float32', 'float64', 'float16', 'bfloat16'])
def test_deterministic_mode_gives_bit_identical_gradients(dtype):
    # many samples land on the same input cells (small image, large offsets, 4 deform groups): an
    # order-dependent accumulation would show up as differing bits between runs
    case = Case(n=4, c=32, o=32, h=12, w=12, dg=4)
    was = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        runs = []
        for _ in range(3):
            t = make_inputs(case, dtype, 'cuda', seed=5, offset_std=3.0)
            runs.append(fwd_bwd(case, t))
            torch.cuda.synchronize()
    finally:
        torch.use_deterministic_algorithms(was)
    out0, g0 = runs[0]
    for out, g in runs[1:]:
        assert torch.equal(out, out0), 'output differs between runs'
        for k in g0:
            assert torch.equal(g[k], g0[k]), f'grad {k} differs between runs in deterministic mode'


@pytest.mark.parametrize('name', ['basic', 'strided-dilated-groups-dg2', 'dcnv1-no-mask'])
def test_gradcheck_on_cuda(name):
    case = CASES[name]._replace(n=1, h=6, w=5) if name != 'strided-dilated-groups-dg2' else CASES[name]._replace(n=1)
    t = make_inputs(case, torch.float64, 'cuda', seed=1, offset_std=1.5)
    names = [k for k in GRADS if t[k] is not None]

    def fn(*args):
        return run_op(case, dict(t, **dict(zip(names, args))))
    assert torch.autograd.gradcheck(fn, [t[k] for k in names], eps=1e-6, atol=1e-5, rtol=1e-4, nondet_tol=1e-12)


def test_opcheck_on_cuda():
    if not hasattr(torch.library, 'opcheck'):
        pytest.skip('torch.library.opcheck needs torch >= 2.4')
    case = CASES['strided-dilated-groups-dg2']
    t = make_inputs(case, torch.float32, 'cuda')
    args = (t['input'], t['offset'], t['mask'], t['weight'], t['bias'], list(case.stride), list(case.padding),
            list(case.dilation), case.groups, case.dg)
    torch.library.opcheck(torch.ops.dcn_plugin.modulated_deform_conv2d.default, args)
