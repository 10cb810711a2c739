"""The Triton kernels of deformable RoI pooling compute the op's function: output and both gradients.

Without a GPU they run in Triton's interpreter on CPU tensors (tests/conftest.py sets TRITON_INTERPRET),
against the float64 reference and the C++ CPU op; with one, compiled on CUDA tensors, and the Triton
and C++ CUDA kernels are compared with each other.
"""
import pytest
import torch
from op_cases import assert_rel_close
from roi_pool_cases import HYPER, make_case

from dcn_plugin.ops import backend, deform_roi_pool
from dcn_plugin.ops import triton as triton_ops
from dcn_plugin.ops.triton import roi_pool as roi_pool_kernels
from reference_ops import deform_roi_pool_reference

DEVICE = 'cuda' if torch.cuda.is_available() else 'cpu'


def _run(fn, x, rois, off, out_size, params, grad_out):
    """Output and the gradients of (input, offset) of ``fn`` on leaf copies of the tensors."""
    x = x.detach().clone().requires_grad_()
    off = None if off is None else off.detach().clone().requires_grad_()
    out = fn(x, rois, off, out_size, **params)
    wrt = [x] if off is None else [x, off]
    grads = torch.autograd.grad(out, wrt, grad_out.to(out))
    return out.detach(), list(grads)


def _check(x, rois, off, out_size, params, dtype=torch.float32, rtol=2e-5):
    """Triton in ``dtype`` against the float64 reference and (float32) the CPU op."""
    grad_out = torch.randn(rois.shape[0], x.shape[1], *out_size, generator=torch.Generator().manual_seed(7),
                           dtype=torch.float64)
    conv = lambda t: None if t is None else t.to(dtype=dtype, device=DEVICE)  # noqa: E731
    got = _run(triton_ops.deform_roi_pool, conv(x), conv(rois), conv(off), out_size, params, grad_out.to(DEVICE))
    ref = _run(deform_roi_pool_reference, x.double(), rois.double(), None if off is None else off.double(),
               out_size, params, grad_out)
    names = ('output', 'grad input', 'grad offset')
    for name, a, b in zip(names, [got[0], *got[1]], [ref[0], *ref[1]]):
        assert_rel_close(a, b, rtol, f'{name} vs float64 reference')
    if dtype == torch.float32:
        cpu = _run(deform_roi_pool, x.float(), rois.float(), None if off is None else off.float(), out_size, params,
                   grad_out)
        for name, a, b in zip(names, [got[0], *got[1]], [cpu[0], *cpu[1]]):
            assert_rel_close(a, b, rtol, f'{name} vs the CPU op')
    return got


@pytest.mark.parametrize('params', HYPER.values(), ids=HYPER.keys())
def test_float32_output_and_gradients_match_reference_and_cpu_op(params):
    x, rois, off = make_case(k=4, spread=1.2)
    _check(x, rois, off, (3, 2), params)


@pytest.mark.parametrize('seed', range(3))
def test_random_problems_match_the_reference(seed):
    g = torch.Generator().manual_seed(100 + seed)
    pick = lambda *o: o[int(torch.randint(len(o), (1,), generator=g))]  # noqa: E731
    out = (pick(1, 2, 3), pick(1, 3))
    x, rois, off = make_case(n=pick(1, 3), c=pick(1, 4, 70), h=pick(1, 2, 7), w=pick(1, 5, 10), k=pick(1, 4),
                             out=out, offset=pick(True, False), seed=seed, spread=pick(0.5, 1.5))
    params = dict(spatial_scale=pick(0.25, 0.5, 1.0), sampling_ratio=pick(0, 1, 2), gamma=pick(0.1, 0.7))
    _check(x, rois, off, out, params)


def test_int64_index_build_matches_the_reference(monkeypatch):
    # the IDX_64 build runs where a tensor passes 2^31 elements; forced here on a small problem
    monkeypatch.setattr(roi_pool_kernels, '_needs_int64', lambda *tensors: True)
    x, rois, off = make_case(k=4, spread=1.2)
    _check(x, rois, off, (3, 2), HYPER['fixed 2x2 grid'])


@pytest.mark.parametrize('dtype,rtol', [(torch.float16, 4e-3), (torch.bfloat16, 3e-2)], ids=['float16', 'bfloat16'])
def test_half_precision_matches_float64_reference(dtype, rtol):
    # the kernels themselves (the op's validator allows 16-bit tensors on CUDA only); float32 RoIs, as
    # autocast gives them; values exactly representable in the dtype
    x, rois, off = make_case(k=4)
    x, off = x.to(dtype).double(), off.to(dtype).double()
    params = HYPER['adaptive grid']
    grad_out = torch.randn(4, x.shape[1], 3, 2, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    t = lambda v, d=dtype: v.to(dtype=d, device=DEVICE)  # noqa: E731
    out = roi_pool_kernels.roi_pool_forward(t(x), t(rois, torch.float32), t(off), (3, 2), **params)
    grads = roi_pool_kernels.roi_pool_backward(t(grad_out), t(x), t(rois, torch.float32), t(off), (3, 2),
                                               **params, output_mask=[True, True])
    ref = _run(deform_roi_pool_reference, x, rois, off, (3, 2), params, grad_out)
    assert out.dtype == dtype and all(g.dtype == dtype for g in grads)
    for name, a, b in zip(('output', 'grad input', 'grad offset'), [out, *grads], [ref[0], *ref[1]]):
        assert_rel_close(a, b, rtol, name)


def test_huge_rois_and_nan_offsets_cost_the_map_and_sample_zero():
    x = torch.randn(1, 4, 6, 7, dtype=torch.float64)
    rois = torch.tensor([[0., -1e6, -1e6, 1e6, 1e6], [0., -3., -2., 20., 11.]], dtype=torch.float64)
    off = torch.tensor([0., 0., 0., 0.] + [1e30, -1e30, float('nan'), 3.], dtype=torch.float64).view(2, 2, 1, 2)
    out = triton_ops.deform_roi_pool(x.float().to(DEVICE), rois.float().to(DEVICE), off.float().to(DEVICE), (1, 2),
                                     1.0, 0, 0.1).cpu()
    assert torch.isfinite(out).all() and out[0].abs().max() < 1e-6
    assert (out[1, :, 0, 0] == 0).all() and (out[1, :, 0, 1] == 0).all()


def test_degenerate_rois_pool_a_point_or_nothing():
    x = torch.arange(20.).view(1, 1, 4, 5).to(DEVICE)
    point = torch.tensor([[0., 4.5, 2.5, 4.5, 2.5]], device=DEVICE)
    torch.testing.assert_close(triton_ops.deform_roi_pool(x, point, None, 2, sampling_ratio=2).cpu(),
                               torch.full((1, 1, 2, 2), 14.))
    torch.testing.assert_close(triton_ops.deform_roi_pool(x, point, None, 2, sampling_ratio=0).cpu(),
                               torch.zeros(1, 1, 2, 2))


@pytest.mark.parametrize('layout', ['contiguous', 'channels_last'])
def test_gradients_have_the_op_layouts(layout):
    x, rois, off = (t.float().to(DEVICE) for t in make_case(k=3))
    if layout == 'channels_last':
        x = x.contiguous(memory_format=torch.channels_last)
    go = torch.randn(3, x.shape[1], 3, 2, device=DEVICE)
    args = ((3, 2), 0.5, 0, 0.1)
    grads = triton_ops.roi_pool_backward(go, x, rois, off, *args, [True, True])
    meta = torch.ops.dcn_plugin.deform_roi_pool_backward(go.to('meta'), x.to('meta'), rois.to('meta'),
                                                         off.to('meta'), *args, [True, True])
    for g, m in zip(grads, meta):
        assert g.shape == m.shape and g.stride() == m.stride() and g.dtype == m.dtype


def test_zero_rois_and_zero_channels():
    x, rois, off = (t.float().to(DEVICE) for t in make_case(k=3))
    assert triton_ops.deform_roi_pool(x, rois[:0], off[:0], (3, 2), 0.5).shape == (0, 3, 3, 2)
    assert triton_ops.deform_roi_pool(x[:, :0], rois, off, (3, 2), 0.5).shape == (3, 0, 3, 2)


def test_bad_rois_raise_the_op_errors():
    x, rois, off = (t.float() for t in make_case(k=3))
    for bad_value, col in ((float('nan'), 2), (5.0, 0), (0.5, 0)):
        bad = rois.clone()
        bad[1, col] = bad_value
        with pytest.raises(ValueError) as op_error:
            deform_roi_pool(x, bad, off, (3, 2), 0.5)
        with pytest.raises(ValueError) as triton_error:
            triton_ops.deform_roi_pool(x.to(DEVICE), bad.to(DEVICE), off.to(DEVICE), (3, 2), 0.5)
        assert str(triton_error.value).splitlines()[0] == str(op_error.value).splitlines()[0]


def test_no_read_outside_the_tensors():
    # every tensor between NaNs: an unmasked read past one shows as a NaN (the interpreter reads it)
    x, rois, off = make_case(c=5, k=4, spread=1.3)

    def guarded(t):
        buf = torch.full((t.numel() + 8192,), float('nan'), dtype=torch.float32, device=DEVICE)
        view = buf[4096:4096 + t.numel()].view(t.shape)
        view.copy_(t)
        return view

    params = HYPER['large gamma (samples leave the map)']
    got = _run(triton_ops.deform_roi_pool, guarded(x), guarded(rois), guarded(off), (3, 2), params,
               guarded(torch.randn(4, 5, 3, 2, dtype=torch.float64)))
    assert all(torch.isfinite(t).all() for t in [got[0], *got[1]])


@pytest.mark.skipif(DEVICE != 'cpu', reason='the CUDA tests below run the real dispatch')
def test_public_op_cuda_kernels_follow_the_rule(monkeypatch):
    from dcn_plugin.ops import roi_pool
    x, rois, off = (t.float() for t in make_case(k=3))
    monkeypatch.setattr(roi_pool, 'cuda_backend_for', lambda dtype: 'triton')
    out = roi_pool._forward_cuda(x, rois, off, [3, 2], 0.5, 0, 0.1)
    assert_rel_close(out, deform_roi_pool(x, rois, off, (3, 2), 0.5), 2e-5, 'output')


@pytest.mark.cuda
def test_triton_and_cxx_cuda_kernels_agree():
    for params in HYPER.values():
        x, rois, off = (t.float().cuda() for t in make_case(c=40, k=8, spread=1.2))
        grad_out = torch.randn(8, 40, 3, 2, device='cuda')
        results = {}
        for name in ('cuda', 'triton'):
            backend.set_cuda_backend(name)
            try:
                results[name] = _run(deform_roi_pool, x, rois, off, (3, 2), params, grad_out)
            finally:
                backend.set_cuda_backend(None)
        for a, b in zip([results['cuda'][0], *results['cuda'][1]], [results['triton'][0], *results['triton'][1]]):
            assert_rel_close(a, b, 2e-5, 'triton vs C++ CUDA')
