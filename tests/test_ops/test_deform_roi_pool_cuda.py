"""CUDA kernels of the deformable RoI pooling: parity with the CPU kernels (forward and both gradients),
low precision, autocast, layouts, edge sizes, data checks without a device assert, determinism,
gradcheck and opcheck.

Every test needs a CUDA GPU and dcn_plugin built with its CUDA kernels (``FORCE_CUDA=1``); without a GPU
the module is skipped.
"""
import pytest
import roi_pool_cases
import torch

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a CUDA GPU'),
]

if torch.cuda.is_available():  # keep collection on a machine without GPU free of the extension
    from dcn_plugin.ops import ModulatedDeformRoIPoolPack, deform_roi_pool, has_cuda_kernels
    from reference_ops import deform_roi_pool_reference
else:  # pragma: no cover
    ModulatedDeformRoIPoolPack = deform_roi_pool = has_cuda_kernels = deform_roi_pool_reference = None

OP = 'dcn_plugin::deform_roi_pool'


@pytest.fixture(autouse=True)
def _needs_cuda_kernels():
    if not has_cuda_kernels():
        pytest.fail('dcn_plugin was built without its CUDA kernels: rebuild with FORCE_CUDA=1')


def make_case(n=2, c=19, h=13, w=17, k=33, out=(4, 3), seed=0):
    """CPU float64 input, RoIs (some over the borders, one a point) and offsets."""
    return roi_pool_cases.make_case(n=n, c=c, h=h, w=w, k=k, out=out, seed=seed, spread=1.2, point=True)


def _run(x, rois, off, device, dtype=torch.float64, rois_dtype=None, **params):
    xd = x.to(device, dtype).requires_grad_()
    od = None if off is None else off.to(device, dtype).requires_grad_()
    out = deform_roi_pool(xd, rois.to(device, rois_dtype or dtype), od, params.pop('output_size', (4, 3)), **params)
    go = torch.linspace(-1, 1, out.numel(), dtype=torch.float64).view(out.shape).to(device, dtype)
    grads = torch.autograd.grad(out, (xd,) if od is None else (xd, od), go)
    return (out,) + grads


@pytest.mark.parametrize('params', roi_pool_cases.HYPER.values(), ids=roi_pool_cases.HYPER.keys())
@pytest.mark.parametrize('with_offset', [True, False])
def test_cuda_matches_cpu_in_float64(params, with_offset):
    x, rois, off = make_case()
    off = off if with_offset else None
    cpu = _run(x, rois, off, 'cpu', **dict(params))
    gpu = _run(x, rois, off, 'cuda', **dict(params))
    for a, b in zip(gpu, cpu):
        torch.testing.assert_close(a.cpu(), b, rtol=1e-10, atol=1e-10)


def test_cuda_float32_matches_the_float64_reference():
    x, rois, off = make_case(seed=1)
    out = deform_roi_pool(x.cuda().float(), rois.cuda().float(), off.cuda().float(), (4, 3), 0.5, 0, 0.2)
    ref = deform_roi_pool_reference(x, rois, off, (4, 3), 0.5, 0, 0.2)
    torch.testing.assert_close(out.cpu().double(), ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('dtype,tol', [(torch.float16, 1e-2), (torch.bfloat16, 5e-2)])
@pytest.mark.parametrize('rois_dtype', ['same', torch.float32])
def test_half_and_bfloat16_accumulate_in_float32(dtype, tol, rois_dtype):
    x, rois, off = make_case(seed=2)
    # the reference sees the same rounded values
    xr, offr = x.to(dtype).double(), off.to(dtype).double()
    rois_r = rois.to(dtype).double() if rois_dtype == 'same' else rois.float().double()
    got = _run(xr, rois_r, offr, 'cuda', dtype=dtype, rois_dtype=None if rois_dtype == 'same' else rois_dtype,
               spatial_scale=0.5, sampling_ratio=2, gamma=0.1)
    want = _run(xr, rois_r, offr, 'cpu', spatial_scale=0.5, sampling_ratio=2, gamma=0.1)
    assert all(t.dtype == dtype for t in got)
    for a, b in zip(got, want):
        torch.testing.assert_close(a.cpu().double(), b, rtol=tol, atol=tol)


def test_autocast_runs_in_half_with_float32_rois():
    x, rois, off = make_case(seed=3)
    xd, rd, od = x.cuda().float(), rois.cuda().float(), off.cuda().float()
    with torch.autocast('cuda', dtype=torch.float16):
        out = deform_roi_pool(xd, rd, od, (4, 3), 0.5, 2)
    assert out.dtype == torch.float16
    ref = deform_roi_pool(xd.half(), rd, od.half(), (4, 3), 0.5, 2)  # float32 RoIs: coordinates not rounded
    torch.testing.assert_close(out, ref)


def test_deterministic_mode_gives_the_same_bits_every_run():
    x, rois, off = make_case(n=1, c=64, h=20, w=20, k=200, out=(7, 7), seed=4)
    before = torch.are_deterministic_algorithms_enabled()
    try:
        torch.use_deterministic_algorithms(True)
        runs = [_run(x, rois, off, 'cuda', dtype=torch.float32, output_size=7, spatial_scale=0.5) for _ in range(3)]
    finally:
        torch.use_deterministic_algorithms(before)
    for r in runs[1:]:
        for a, b in zip(r, runs[0]):
            assert torch.equal(a, b)
    atomic = _run(x, rois, off, 'cuda', dtype=torch.float32, output_size=7, spatial_scale=0.5)
    for a, b in zip(atomic, runs[0]):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    want = _run(x, rois, off, 'cpu', output_size=7, spatial_scale=0.5)
    for a, b in zip(runs[0], want):
        torch.testing.assert_close(a.cpu().double(), b, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize('change,pattern', [
    ((3, 0, 5.0), r'rois\[:, 0\] must be batch indices: integers in \[0, N\) = \[0, 2\).*rois\[3\]'),
    ((4, 0, 0.5), r'rois\[:, 0\] must be batch indices'),
    ((5, 2, float('nan')), r'rois must be finite'),
    ((6, 3, -100.0), r'x2 >= x1 and y2 >= y1'),
], ids=['batch out of range', 'batch not integer', 'NaN', 'x2 < x1'])
def test_bad_rois_raise_without_a_device_assert(change, pattern):
    x, rois, off = make_case()
    rois[change[0], change[1]] = change[2]
    xd, rd, od = x.cuda(), rois.cuda(), off.cuda()
    with pytest.raises(ValueError, match=pattern):
        deform_roi_pool(xd, rd, od, (4, 3), 0.5)
    g = torch.zeros(rois.shape[0], x.shape[1], 4, 3, dtype=torch.float64, device='cuda')
    with pytest.raises(ValueError, match=pattern):
        torch.ops.dcn_plugin.deform_roi_pool_backward(g, xd, rd, od, [4, 3], 0.5, 0, 0.1, [True, True])
    # the context is intact
    torch.cuda.synchronize()
    good = torch.tensor([[1., 0., 0., 4., 4.]], dtype=torch.float64, device='cuda')
    assert deform_roi_pool(xd, good, None, 2).isfinite().all()


def test_mixed_devices_are_refused():
    x, rois, off = make_case()
    with pytest.raises(ValueError, match=r'rois must be on the same device as input \(cuda:0\), got cpu'):
        deform_roi_pool(x.cuda(), rois, None, 2)


def test_layouts_and_edge_sizes():
    x, rois, off = make_case(seed=5)
    base = _run(x, rois, off, 'cuda', spatial_scale=0.5)
    xd = x.cuda().contiguous(memory_format=torch.channels_last).requires_grad_()
    out = deform_roi_pool(xd, rois.cuda(), off.cuda(), (4, 3), 0.5)
    (g,) = torch.autograd.grad(out, (xd,), torch.linspace(-1, 1, out.numel(), dtype=torch.float64,
                                                              device='cuda').view(out.shape))
    torch.testing.assert_close(out, base[0], rtol=0, atol=0)
    torch.testing.assert_close(g, base[1])
    assert g.is_contiguous(memory_format=torch.channels_last) and base[1].is_contiguous()
    # no RoIs, no channels
    assert deform_roi_pool(x.cuda(), rois[:0].cuda(), off[:0].cuda(), (4, 3)).shape == (0, 19, 4, 3)
    assert deform_roi_pool(x[:, :0].cuda(), rois.cuda(), None, 2).shape == (33, 0, 2, 2)


def test_modulated_pack_module_matches_cpu():
    torch.manual_seed(0)
    x, rois, _ = make_case(c=8, seed=6)
    layer = ModulatedDeformRoIPoolPack(3, 8, deform_fc_channels=16, spatial_scale=0.5).double()
    with torch.no_grad():
        layer.offset_fc[-1].weight.normal_(std=0.05)
        layer.mask_fc[2].weight.normal_(std=0.05)
    cpu = layer(x, rois)
    gpu = layer.cuda()(x.cuda(), rois.cuda())
    torch.testing.assert_close(gpu.cpu(), cpu, rtol=1e-10, atol=1e-10)


def test_gradcheck_on_cuda():
    x, rois, off = make_case(n=1, c=3, h=6, w=7, k=4, out=(2, 3), seed=7)
    xd, od = x.cuda().requires_grad_(), off.cuda().requires_grad_()
    rd = rois.cuda()
    assert torch.autograd.gradcheck(lambda a, b: deform_roi_pool(a, rd, b, (2, 3), 0.5, 2, 0.2), (xd, od),
                                    eps=1e-6, atol=1e-6, rtol=1e-4, nondet_tol=1e-12)


def test_opcheck_on_cuda():
    x, rois, off = make_case(seed=8)
    args = (x.cuda().requires_grad_(), rois.cuda(), off.cuda().requires_grad_(), [4, 3], 0.5, 0, 0.1)
    torch.library.opcheck(OP, args)
    g = torch.randn(rois.shape[0], x.shape[1], 4, 3, dtype=torch.float64, device='cuda')
    torch.library.opcheck(torch.ops.dcn_plugin.deform_roi_pool_backward,
                          (g, args[0].detach(), args[1], args[2].detach(), [4, 3], 0.5, 0, 0.1, [True, True]))
