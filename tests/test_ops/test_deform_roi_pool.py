"""Deformable RoI pooling (torch.ops.dcn_plugin.deform_roi_pool): known answers, reference parity,
gradients, custom-op machinery, layouts, edge sizes, bad inputs, determinism, modules."""
import re

import pytest
import torch
import torchvision
from op_cases import assert_refused, assert_refused_when_compiled, malformed_cases
from roi_pool_cases import HYPER, make_case

from dcn_plugin.ops import DeformRoIPool, DeformRoIPoolPack, ModulatedDeformRoIPoolPack, deform_roi_pool
from reference_ops import deform_roi_pool_reference

OP = torch.ops.dcn_plugin.deform_roi_pool
BWD = torch.ops.dcn_plugin.deform_roi_pool_backward


# ----------------------------------------------------------------------------- known answers
# mmcv's published unit-test values (tests/test_ops/test_deform_roi_pool.py): DeformRoIPoolPack,
# output 2x2, sampling_ratio 2, spatial_scale 1, a fresh layer (zero offsets), backward of ones.
MMCV_INPUTS = [([[[[1., 2.], [3., 4.]]]], [[0., 0., 0., 1., 1.]]),
               ([[[[1., 2.], [3., 4.]], [[4., 3.], [2., 1.]]]], [[0., 0., 0., 1., 1.]]),
               ([[[[1., 2., 5., 6.], [3., 4., 7., 8.], [9., 10., 13., 14.], [11., 12., 15., 16.]]]],
                [[0., 0., 0., 3., 3.]])]
MMCV_OUTPUTS = [([[[[1, 1.25], [1.5, 1.75]]]], [[[[3.0625, 0.4375], [0.4375, 0.0625]]]]),
                ([[[[1., 1.25], [1.5, 1.75]], [[4, 3.75], [3.5, 3.25]]]],
                 [[[[3.0625, 0.4375], [0.4375, 0.0625]], [[3.0625, 0.4375], [0.4375, 0.0625]]]]),
                ([[[[1.9375, 4.75], [7.5625, 10.375]]]],
                 [[[[0.47265625, 0.4296875, 0.4296875, 0.04296875], [0.4296875, 0.390625, 0.390625, 0.0390625],
                    [0.4296875, 0.390625, 0.390625, 0.0390625],
                    [0.04296875, 0.0390625, 0.0390625, 0.00390625]]]])]


@pytest.mark.parametrize('dtype', [torch.float32, torch.float64])
@pytest.mark.parametrize('case', range(3))
def test_deform_roi_pool_pack_gives_mmcv_published_answers(case, dtype):
    x = torch.tensor(MMCV_INPUTS[case][0], dtype=dtype, requires_grad=True)
    rois = torch.tensor(MMCV_INPUTS[case][1], dtype=dtype)
    layer = DeformRoIPoolPack((2, 2), x.size(1), spatial_scale=1.0, sampling_ratio=2).to(dtype)
    out = layer(x, rois)
    out.backward(torch.ones_like(out))
    torch.testing.assert_close(out, torch.tensor(MMCV_OUTPUTS[case][0], dtype=dtype), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(x.grad, torch.tensor(MMCV_OUTPUTS[case][1], dtype=dtype), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('branch', ['mmcv', 'paper'])
@pytest.mark.parametrize('case', range(3))
def test_modulated_pack_starts_at_half_the_deform_pack_answers(case, branch):
    # a fresh layer's mask is sigmoid(0) = 0.5 and its zero heads pass no gradient back to the input
    x = torch.tensor(MMCV_INPUTS[case][0], requires_grad=True)
    rois = torch.tensor(MMCV_INPUTS[case][1])
    layer = ModulatedDeformRoIPoolPack((2, 2), x.size(1), spatial_scale=1.0, sampling_ratio=2, branch=branch)
    out = layer(x, rois)
    out.backward(torch.ones_like(out))
    torch.testing.assert_close(out, 0.5 * torch.tensor(MMCV_OUTPUTS[case][0]), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(x.grad, 0.5 * torch.tensor(MMCV_OUTPUTS[case][1]), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('sampling_ratio', [0, 1, 2, 3])
@pytest.mark.parametrize('dtype', [torch.float32, torch.float64])
def test_without_offset_it_is_torchvision_roi_align_aligned(sampling_ratio, dtype):
    x, rois, _ = make_case(n=2, c=5, h=12, w=9, k=20, offset=False, dtype=dtype, seed=sampling_ratio, spread=1.3)
    out = deform_roi_pool(x, rois, None, (4, 3), 0.5, sampling_ratio)
    ref = torchvision.ops.roi_align(x, rois, (4, 3), 0.5, sampling_ratio, aligned=True)
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    torch.testing.assert_close(out, ref, rtol=tol, atol=tol)


# ----------------------------------------------------------------------------- reference parity
@pytest.mark.parametrize('params', HYPER.values(), ids=HYPER.keys())
def test_forward_and_gradients_match_the_reference_in_float64(params):
    x, rois, off = make_case(requires_grad=True, spread=1.2)
    out = deform_roi_pool(x, rois, off, (3, 2), **params)
    ref = deform_roi_pool_reference(x, rois, off, (3, 2), **params)
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
    go = torch.randn_like(out)
    grads = torch.autograd.grad(out, (x, off), go)
    ref_grads = torch.autograd.grad(ref, (x, off), go)
    for a, b in zip(grads, ref_grads):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


def test_float32_matches_the_float64_reference():
    x, rois, off = make_case(c=16, k=12, dtype=torch.float32, seed=3)
    out = deform_roi_pool(x, rois, off, (3, 2), 0.5, 0, 0.2)
    ref = deform_roi_pool_reference(x.double(), rois.double(), off.double(), (3, 2), 0.5, 0, 0.2)
    torch.testing.assert_close(out.double(), ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('seed', range(6))
def test_random_problems_match_the_reference(seed):
    # property-style: every size and hyper-parameter drawn independently
    g = torch.Generator().manual_seed(100 + seed)
    pick = lambda *o: o[int(torch.randint(len(o), (1,), generator=g))]  # noqa: E731
    out = (pick(1, 2, 5), pick(1, 3, 7))
    x, rois, off = make_case(n=pick(1, 3), c=pick(1, 4, 17), h=pick(1, 2, 7, 13), w=pick(1, 5, 10), k=pick(1, 4, 9),
                             out=out, offset=pick(True, False), seed=seed, spread=pick(0.5, 1.5), requires_grad=True)
    params = dict(spatial_scale=pick(0.25, 0.5, 1.0), sampling_ratio=pick(0, 1, 2, 4), gamma=pick(0.1, 0.7))
    got = deform_roi_pool(x, rois, off, out, **params)
    ref = deform_roi_pool_reference(x, rois, off, out, **params)
    torch.testing.assert_close(got, ref, rtol=1e-12, atol=1e-12)
    wrt = (x,) if off is None else (x, off)
    go = torch.randn_like(got)
    for a, b in zip(torch.autograd.grad(got, wrt, go), torch.autograd.grad(ref, wrt, go)):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


def test_gradcheck_input_and_offset():
    x, rois, off = make_case(n=1, c=2, h=6, w=7, k=3, out=(2, 3), requires_grad=True, seed=5)
    fn = lambda x, off: deform_roi_pool(x, rois, off, (2, 3), 0.5, 2, 0.2)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (x, off), eps=1e-6, atol=1e-6, rtol=1e-4)


def test_gradcheck_adaptive_grid_without_offset():
    x, rois, _ = make_case(n=2, c=2, h=5, w=6, k=4, out=(2, 2), offset=False, requires_grad=True, seed=6)
    assert torch.autograd.gradcheck(lambda x: deform_roi_pool(x, rois, None, 2, 0.5), (x,), eps=1e-6, atol=1e-6)


def test_offset_gradient_is_zero_where_the_border_clamp_holds_samples_still():
    # every sample of this RoI lies in [-1, 0] x [-1, 0]: it reads pixel (0, 0) whatever the offset
    x = torch.randn(1, 2, 4, 4, dtype=torch.float64)
    rois = torch.tensor([[0., -0.4, -0.4, 0.4, 0.4]], dtype=torch.float64)
    off = torch.zeros(1, 2, 1, 1, dtype=torch.float64, requires_grad=True)
    out = deform_roi_pool(x, rois, off, 1, 1.0, 2)
    torch.testing.assert_close(out[0, :, 0, 0], x[0, :, 0, 0])
    (g,) = torch.autograd.grad(out.sum(), off)
    assert g.abs().max() == 0


# ----------------------------------------------------------------------------- custom-op machinery
def test_opcheck_forward():
    x, rois, off = make_case(requires_grad=True)
    torch.library.opcheck(OP, (x, rois, off, [3, 2], 0.5, 2, 0.1))
    torch.library.opcheck(OP, (x, rois, None, [3, 2], 0.5, 0, 0.1))
    torch.library.opcheck(OP, (x, rois[:0], off[:0], [3, 2], 0.5, 0, 0.1))


def test_opcheck_backward():
    x, rois, off = make_case()
    grad = torch.randn(rois.shape[0], x.shape[1], 3, 2, dtype=torch.float64)
    for mask in ([True, True], [True, False], [False, True]):
        torch.library.opcheck(BWD, (grad, x, rois, off, [3, 2], 0.5, 0, 0.1, mask))
    torch.library.opcheck(BWD, (grad, x, rois, None, [3, 2], 0.5, 2, 0.1, [True, True]))


@pytest.mark.slow
@pytest.mark.parametrize('backend', ['aot_eager', 'inductor'])
def test_torch_compile_fullgraph_forward_and_backward(backend):
    torch._dynamo.reset()
    x, rois, off = make_case(dtype=torch.float32, requires_grad=True)
    layer = DeformRoIPool((3, 2), 0.5, 2)

    def fn(x, rois, off):
        return torch.relu(layer(x, rois, off) * 2).sum()

    compiled = torch.compile(fn, backend=backend, fullgraph=True)
    loss = compiled(x, rois, off)
    grads = torch.autograd.grad(loss, (x, off))
    ref_loss = fn(x, rois, off)
    ref_grads = torch.autograd.grad(ref_loss, (x, off))
    torch.testing.assert_close(loss, ref_loss)
    for a, b in zip(grads, ref_grads):
        torch.testing.assert_close(a, b)


@pytest.mark.slow
def test_torch_compile_of_the_modulated_pack_module():
    torch._dynamo.reset()
    x, rois, _ = make_case(c=4, dtype=torch.float32, requires_grad=True)
    layer = ModulatedDeformRoIPoolPack(2, 4, deform_fc_channels=8, spatial_scale=0.5)
    with torch.no_grad():
        layer.offset_fc[-1].weight.normal_(std=0.1)
    compiled = torch.compile(layer, backend='aot_eager', fullgraph=True)
    torch.testing.assert_close(compiled(x, rois), layer(x, rois))
    compiled(x, rois).sum().backward()
    assert x.grad is not None and layer.offset_fc[0].weight.grad is not None


def test_meta_tensors_give_shapes_without_computing():
    x, rois, off = (t.to('meta') for t in make_case())
    out = deform_roi_pool(x, rois, off, (3, 2), 0.5)
    assert out.device.type == 'meta' and out.shape == (6, 3, 3, 2)


def test_double_backward_raises_instead_of_returning_zeros():
    x, rois, off = make_case(requires_grad=True)
    out = deform_roi_pool(x, rois, off, (3, 2), 0.5)
    (gx,) = torch.autograd.grad(out.square().sum(), (x,), create_graph=True)
    with pytest.raises(NotImplementedError, match='double backward'):
        torch.autograd.grad(gx.sum(), (off,))


def test_rois_get_no_gradient_and_only_requested_gradients_are_computed():
    x, rois, off = make_case()
    rois.requires_grad_()
    off.requires_grad_()
    out = deform_roi_pool(x, rois, off, (3, 2), 0.5)
    (g_off,) = torch.autograd.grad(out.sum(), (off,))
    ref = deform_roi_pool_reference(x, rois.detach(), off, (3, 2), 0.5)
    torch.testing.assert_close(g_off, torch.autograd.grad(ref.sum(), (off,))[0])
    g_in, g_off = BWD(torch.ones_like(out), x, rois.detach(), off.detach(), [3, 2], 0.5, 0, 0.1, [False, True])
    assert g_in.numel() == 0 and g_off.shape == off.shape


def test_cpu_autocast_runs_in_float32():
    x, rois, off = make_case(dtype=torch.float32)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        out = deform_roi_pool(x.bfloat16(), rois.bfloat16(), off.bfloat16(), (3, 2), 0.5)
    assert out.dtype == torch.float32
    ref = deform_roi_pool_reference(x.bfloat16().double(), rois.bfloat16().double(), off.bfloat16().double(),
                                    (3, 2), 0.5)
    torch.testing.assert_close(out.double(), ref, rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------- layouts and edge sizes
def test_channels_last_and_non_contiguous_inputs_give_the_same_result():
    x, rois, off = make_case(c=6)
    ref = deform_roi_pool(x, rois, off, (3, 2), 0.5)
    x_cl = x.contiguous(memory_format=torch.channels_last)
    x_nc = torch.randn(2, 12, 9, 11, dtype=torch.float64)[:, ::2]
    x_nc.copy_(x)
    rois_nc = torch.cat([rois, rois], 1)[:, :5].clone()[:, [0, 1, 2, 3, 4]]
    rois_t = torch.empty(5, rois.shape[0], dtype=torch.float64).t()
    rois_t.copy_(rois)
    off_nc = torch.randn(rois.shape[0], 2, 2, 3, dtype=torch.float64).transpose(2, 3)
    off_nc.copy_(off)
    for xi, ri, oi in ((x_cl, rois, off), (x_nc, rois, off), (x, rois_t, off), (x, rois_nc, off_nc)):
        torch.testing.assert_close(deform_roi_pool(xi, ri, oi, (3, 2), 0.5), ref, rtol=0, atol=0)
    for xi in (x_cl, x_nc):
        xg = xi.detach().requires_grad_()
        (g,) = torch.autograd.grad(deform_roi_pool(xg, rois, off, (3, 2), 0.5).sum(), (xg,))
        (g_ref,) = torch.autograd.grad(deform_roi_pool(x.requires_grad_(), rois, off, (3, 2), 0.5).sum(), (x,))
        torch.testing.assert_close(g, g_ref, rtol=0, atol=0)
        x = x.detach()


def test_input_gradient_comes_back_in_the_input_layout():
    x, rois, off = make_case(c=6)
    grad = torch.randn(rois.shape[0], 6, 3, 2, dtype=torch.float64)
    for fmt in (torch.contiguous_format, torch.channels_last):
        xi = x.contiguous(memory_format=fmt)
        g_in, _ = BWD(grad, xi, rois, off, [3, 2], 0.5, 0, 0.1, [True, False])
        assert g_in.is_contiguous(memory_format=fmt)
        xi.requires_grad_()
        (g,) = torch.autograd.grad(deform_roi_pool(xi, rois, off, (3, 2), 0.5), (xi,), grad)
        assert g.is_contiguous(memory_format=fmt)
        torch.testing.assert_close(g, g_in, rtol=0, atol=0)


def test_zero_rois_forward_and_backward():
    x, rois, off = make_case(requires_grad=True)
    out = deform_roi_pool(x, rois[:0], off[:0], (3, 2), 0.5)
    assert out.shape == (0, 3, 3, 2)
    out.sum().backward()
    assert x.grad.shape == x.shape and x.grad.abs().sum() == 0
    layer = ModulatedDeformRoIPoolPack((3, 2), 3, deform_fc_channels=4, spatial_scale=0.5).double()
    assert layer(x, rois[:0]).shape == (0, 3, 3, 2)


def test_zero_channels_and_empty_batch():
    x = torch.zeros(2, 0, 5, 5, dtype=torch.float64, requires_grad=True)
    rois = torch.tensor([[1., 0., 0., 4., 4.]], dtype=torch.float64)
    off = torch.zeros(1, 2, 2, 2, dtype=torch.float64, requires_grad=True)
    out = deform_roi_pool(x, rois, off, 2)
    assert out.shape == (1, 0, 2, 2)
    out.sum().backward()
    assert off.grad.abs().sum() == 0 and x.grad.shape == x.shape
    # no images and no RoIs: nothing to pool
    assert deform_roi_pool(torch.zeros(0, 3, 5, 5), torch.zeros(0, 5), None, 2).shape == (0, 3, 2, 2)


def test_empty_feature_maps_are_refused():
    for shape in ((1, 3, 0, 5), (1, 3, 5, 0)):
        with pytest.raises(ValueError, match=r'input height and width must be positive, got input shape'):
            deform_roi_pool(torch.zeros(shape), torch.tensor([[0., 0., 0., 1., 1.]]), None, 2)


def test_degenerate_rois_pool_a_point_or_nothing():
    x = torch.arange(20.).view(1, 1, 4, 5)
    point = torch.tensor([[0., 4.5, 2.5, 4.5, 2.5]])  # x1 == x2, y1 == y2: pixel (2, 4)
    # fixed grid: every sample sits on the point; adaptive grid: ceil(0) = no samples, zero (as mmcv)
    torch.testing.assert_close(deform_roi_pool(x, point, None, 2, sampling_ratio=2), torch.full((1, 1, 2, 2), 14.))
    torch.testing.assert_close(deform_roi_pool(x, point, None, 2, sampling_ratio=0), torch.zeros(1, 1, 2, 2))


def test_huge_rois_and_offsets_cost_the_map_not_the_roi():
    # an adaptive grid of 2e6 / 2 samples per bin side: only the samples on the map are visited
    x = torch.randn(1, 4, 6, 7, dtype=torch.float64)
    rois = torch.tensor([[0., -1e6, -1e6, 1e6, 1e6], [0., -3., -2., 20., 11.]], dtype=torch.float64)
    off = torch.tensor([0., 0., 0., 0.] + [1e30, -1e30, float('nan'), 3.], dtype=torch.float64).view(2, 2, 1, 2)
    out = deform_roi_pool(x, rois, off, (1, 2), 1.0, 0, 0.1)
    assert torch.isfinite(out).all()
    # the map lies inside the RoI's bins: each bin averages its ~1e12 samples, almost all zero
    assert out[0].abs().max() < 1e-9
    # offsets far away or NaN move every sample of those bins off the map; the finite one matches
    assert (out[1, :, 0, 0] == 0).all() and (out[1, :, 0, 1] == 0).all()
    ok = deform_roi_pool_reference(x, rois[1:], torch.tensor([[[[0., 3.]], [[0., 0.]]]], dtype=torch.float64),
                                   (1, 2), 1.0, 0, 0.1)
    torch.testing.assert_close(deform_roi_pool(x, rois[1:], torch.tensor([[[[0., 3.]], [[0., 0.]]]],
                                                                          dtype=torch.float64), (1, 2), 1.0, 0, 0.1),
                               ok)


# ----------------------------------------------------------------------------- bad inputs
def _args():
    x, rois, off = make_case()
    return dict(input=x, rois=rois, offset=off, output_size=(3, 2), spatial_scale=0.5, sampling_ratio=0, gamma=0.1)


def _rois(row, value):
    x, rois, off = make_case()
    rois = rois.clone()
    rois[row[0], row[1]] = value
    return rois


MALFORMED = [
    ('rois not (K, 5)', dict(rois=torch.zeros(6, 4, dtype=torch.float64)), ValueError,
     r'rois must have shape \(K, 5\) of \(batch_index, x1, y1, x2, y2\), got \(6, 4\)'),
    ('rois 1-D', dict(rois=torch.zeros(5, dtype=torch.float64)), ValueError,
     r'rois must be a 2-D tensor .*got shape \(5,\)'),
    ('batch index out of range', dict(rois=_rois((2, 0), 2.0)), ValueError,
     r'rois\[:, 0\] must be batch indices: integers in \[0, N\) = \[0, 2\).*got rois\[2\] = \(2, '),
    ('negative batch index', dict(rois=_rois((0, 0), -1.0)), ValueError,
     r'integers in \[0, N\) = \[0, 2\).*rois\[0\] = \(-1,'),
    ('batch index not an integer', dict(rois=_rois((3, 0), 0.5)), ValueError,
     r'rois\[:, 0\] must be batch indices: integers .*got rois\[3\] = \(0.5,'),
    ('NaN coordinate', dict(rois=_rois((1, 2), float('nan'))), ValueError,
     r'rois must be finite .*got rois\[1\] = \(.*nan'),
    ('infinite coordinate', dict(rois=_rois((4, 3), float('inf'))), ValueError, r'rois must be finite .*rois\[4\]'),
    ('x2 < x1', dict(rois=torch.tensor([[0., 5., 1., 4., 3.]], dtype=torch.float64),
                     offset=torch.zeros(1, 2, 3, 2, dtype=torch.float64)), ValueError,
     r'rois must be \(batch_index, x1, y1, x2, y2\) with x2 >= x1 and y2 >= y1, got rois\[0\] = \(0, 5, 1, 4, 3\)'),
    ('y2 < y1', dict(rois=torch.tensor([[0., 1., 5., 4., 3.]], dtype=torch.float64),
                     offset=torch.zeros(1, 2, 3, 2, dtype=torch.float64)), ValueError, r'x2 >= x1 and y2 >= y1'),
    ('coordinates beyond 2^24 on the map', dict(rois=_rois((0, 3), 1e9)), ValueError,
     r'rois coordinates times spatial_scale \(0.5\) must lie within \+-16777216 feature-map units'),
    ('offset shape', dict(offset=torch.zeros(6, 2, 2, 3, dtype=torch.float64)), ValueError,
     r'offset must have shape \(K, 2, PH, PW\) = \(6, 2, 3, 2\) .*got \(6, 2, 2, 3\)'),
    ('offset rois count', dict(offset=torch.zeros(5, 2, 3, 2, dtype=torch.float64)), ValueError,
     r'offset must have shape .*\(6, 2, 3, 2\).*got \(5, 2, 3, 2\)'),
    ('offset rank', dict(offset=torch.zeros(6, 2, 6, dtype=torch.float64)), ValueError, r'offset must be a 4-D tensor'),
    ('output_size zero', dict(output_size=(0, 2)), ValueError,
     r'output_size must be a pair of positive ints, got \(0, 2\)'),
    ('output_size huge', dict(output_size=(7, 10 ** 6)), ValueError, r'output_size must be at most 65536 per side'),
    ('negative sampling_ratio', dict(sampling_ratio=-1), ValueError,
     r'sampling_ratio must be an int in \[0, 1024\].*got -1'),
    ('huge sampling_ratio', dict(sampling_ratio=10 ** 6), ValueError, r'sampling_ratio must be an int in \[0, 1024\]'),
    ('zero spatial_scale', dict(spatial_scale=0.0), ValueError,
     r'spatial_scale must be a positive finite number.*got 0'),
    ('NaN spatial_scale', dict(spatial_scale=float('nan')), ValueError, r'spatial_scale must be a positive finite'),
    ('infinite gamma', dict(gamma=float('inf')), ValueError, r'gamma must be a finite number, got inf'),
    ('input rank', dict(input=torch.zeros(3, 9, 11, dtype=torch.float64)), ValueError,
     r'input must be a 4-D tensor .*\(3, 9, 11\)'),
    ('offset dtype', dict(offset=torch.zeros(6, 2, 3, 2, dtype=torch.float32)), TypeError,
     r'offset dtype must match input dtype \(torch.float64\), got torch.float32'),
    ('rois dtype', dict(rois=torch.zeros(6, 5, dtype=torch.float32)), TypeError,
     r'rois dtype must match input dtype \(torch.float64\), got torch.float32'),
    ('integer rois', dict(rois=torch.zeros(6, 5, dtype=torch.int64)), TypeError, r'rois dtype must match input dtype'),
    ('half on CPU', dict(input=torch.zeros(2, 3, 9, 11, dtype=torch.float16),
                         rois=torch.zeros(6, 5, dtype=torch.float16), offset=None), TypeError,
     r'input dtype must be float32 or float64 on cpu, got torch.float16'),
    ('rois on another device', dict(rois=torch.zeros(6, 5, dtype=torch.float64, device='meta')), ValueError,
     r'rois must be on the same device as input \(cpu\), got meta'),
    ('offset on another device', dict(offset=torch.zeros(6, 2, 3, 2, dtype=torch.float64, device='meta')), ValueError,
     r'offset must be on the same device as input \(cpu\), got meta'),
    # Python-level argument types (the function converts; the op checks values)
    ('output_size float', dict(output_size=2.5), TypeError, r'output_size must be an int or a pair of ints, got 2.5'),
    ('sampling_ratio float', dict(sampling_ratio=1.5), TypeError, r'sampling_ratio must be an int, got 1.5'),
    ('spatial_scale string', dict(spatial_scale='0.5'), TypeError, r"spatial_scale must be a real number, got '0.5'"),
    ('rois not a tensor', dict(rois=[[0, 0, 0, 1, 1]]), TypeError, r'rois must be a torch.Tensor, got list'),
]
PYTHON_ONLY = ('output_size float', 'sampling_ratio float', 'spatial_scale string', 'rois not a tensor')


@malformed_cases(MALFORMED)
def test_function_rejects_malformed_input(change, exc, pattern):
    assert_refused(deform_roi_pool, _args(), change, exc, pattern)


RAW = [m for m in MALFORMED if m[0] not in PYTHON_ONLY]


@malformed_cases(RAW)
def test_raw_ops_reject_malformed_input_from_cpp(change, exc, pattern):
    a = _args()
    a.update(change)
    size = list(a['output_size'])
    with pytest.raises(exc, match=pattern):
        OP(a['input'], a['rois'], a['offset'], size, a['spatial_scale'], a['sampling_ratio'], a['gamma'])
    # the backward op checks the same rules (and the data) before reading anything
    k = a['rois'].shape[0] if a['rois'].dim() == 2 else 1
    c = a['input'].shape[1] if a['input'].dim() == 4 else 3
    grad = torch.zeros(k, c, *[max(s, 1) for s in size], dtype=a['input'].dtype)
    with pytest.raises(exc, match=pattern):
        BWD(grad, a['input'], a['rois'], a['offset'], size, a['spatial_scale'], a['sampling_ratio'], a['gamma'],
            [True, True])


def test_validation_also_runs_when_compiled():
    a = _args()
    a['offset'] = torch.zeros(6, 2, 2, 3, dtype=torch.float64)
    assert_refused_when_compiled(deform_roi_pool, a, 'offset must have shape (K, 2, PH, PW)')


def test_backward_op_rejects_wrong_grad_output():
    x, rois, off = make_case()
    with pytest.raises(ValueError,
                       match=r"grad_output must have the output's shape \(6, 3, 3, 2\), got \(6, 3, 2, 3\)"):
        BWD(torch.zeros(6, 3, 2, 3, dtype=torch.float64), x, rois, off, [3, 2], 0.5, 0, 0.1, [True, True])
    with pytest.raises(TypeError, match=r'grad_output dtype must match input dtype'):
        BWD(torch.zeros(6, 3, 3, 2), x, rois, off, [3, 2], 0.5, 0, 0.1, [True, True])


def test_half_input_accepts_float32_rois_on_meta():
    # the dtype rule (checked by the Meta kernel too): float16/bfloat16 inputs take float32 RoIs
    x, rois, off = (t.to('meta') for t in make_case(dtype=torch.float16))
    assert deform_roi_pool(x, rois.float(), off, (3, 2), 0.5).dtype == torch.float16
    with pytest.raises(TypeError, match=r'rois dtype must match input dtype \(torch.float16\) or be torch.float32'):
        deform_roi_pool(x, rois.double(), off, (3, 2), 0.5)


# ----------------------------------------------------------------------------- determinism
def test_cpu_backward_is_bit_reproducible_and_independent_of_the_thread_count():
    x, rois, off = make_case(n=2, c=40, h=20, w=24, k=40, out=(7, 7), dtype=torch.float32, seed=9, requires_grad=True)
    go = torch.randn(40, 40, 7, 7)
    before = torch.get_num_threads()
    results = []
    try:
        for threads in (1, 3, 1, 2):
            torch.set_num_threads(threads)
            out = deform_roi_pool(x, rois, off, 7, 0.5, 0, 0.3)
            results.append((out,) + torch.autograd.grad(out, (x, off), go))
    finally:
        torch.set_num_threads(before)
    for r in results[1:]:
        for a, b in zip(r, results[0]):
            assert torch.equal(a, b)


# ----------------------------------------------------------------------------- modules
def test_module_state_dicts_and_arguments_are_mmcv_s():
    mmcv_ops = pytest.importorskip('mmcv.ops')
    for ours, theirs in ((DeformRoIPoolPack(7, 16, 32, 0.25, 2, 0.2),
                          mmcv_ops.DeformRoIPoolPack(7, 16, 32, 0.25, 2, 0.2)),
                         (ModulatedDeformRoIPoolPack(7, 16, 32, 0.25, 2, 0.2),
                          mmcv_ops.ModulatedDeformRoIPoolPack(7, 16, 32, 0.25, 2, 0.2)),
                         (DeformRoIPool((3, 4), 0.5, 1, 0.3), mmcv_ops.DeformRoIPool((3, 4), 0.5, 1, 0.3))):
        sd = theirs.state_dict()
        assert {k: v.shape for k, v in ours.state_dict().items()} == {k: v.shape for k, v in sd.items()}
        ours.load_state_dict(sd, strict=True)
        for name in ('output_size', 'spatial_scale', 'sampling_ratio', 'gamma', 'output_channels',
                     'deform_fc_channels'):
            if hasattr(theirs, name):
                assert getattr(ours, name) == getattr(theirs, name), name
        # mmcv zero-initialises the last layers: so do we
        for key, value in theirs.state_dict().items():
            if value.abs().sum() == 0:
                assert ours.state_dict()[key].abs().sum() == 0, key


def test_paper_branch_shape_and_initialisation():
    layer = ModulatedDeformRoIPoolPack(7, 256, branch='paper')
    fc = layer.offset_mask_fc
    assert [tuple(m.weight.shape) for m in fc if isinstance(m, torch.nn.Linear)] == [(1024, 12544), (1024, 1024),
                                                                                     (147, 1024)]
    assert sum(p.numel() for p in layer.parameters()) == 14_046_355
    mmcv_form = ModulatedDeformRoIPoolPack(7, 256)
    assert sum(p.numel() for p in mmcv_form.parameters()) == 26_892_435
    assert abs(fc[0].weight.std().item() - 0.01) < 1e-3 and fc[0].bias.abs().sum() == 0
    assert fc[4].weight.abs().sum() == 0 and fc[4].bias.abs().sum() == 0
    assert not hasattr(layer, 'offset_fc') and not hasattr(layer, 'mask_fc')


def test_paper_branch_splits_offsets_and_mask_from_one_head():
    torch.manual_seed(0)
    layer = ModulatedDeformRoIPoolPack(2, 3, deform_fc_channels=8, spatial_scale=0.5, sampling_ratio=2, branch='paper')
    with torch.no_grad():
        layer.offset_mask_fc[-1].weight.normal_()
    x, rois, _ = make_case(c=3, out=(2, 2), dtype=torch.float32)
    pooled = deform_roi_pool(x, rois, None, 2, 0.5, 2)
    head = layer.offset_mask_fc(pooled.flatten(1))
    offset, mask = head[:, :8].view(-1, 2, 2, 2), torch.sigmoid(head[:, 8:]).view(-1, 1, 2, 2)
    torch.testing.assert_close(layer(x, rois), deform_roi_pool(x, rois, offset, 2, 0.5, 2) * mask)


def test_pack_modules_refuse_wrong_channels_and_bad_arguments():
    layer = DeformRoIPoolPack(2, 4, deform_fc_channels=8)
    x, rois, _ = make_case(c=3, dtype=torch.float32)
    with pytest.raises(ValueError, match=r'DeformRoIPoolPack was built for output_channels=4, but the input has 3'):
        layer(x, rois)
    with pytest.raises(ValueError, match=r"branch must be one of \('mmcv', 'paper'\)"):
        ModulatedDeformRoIPoolPack(2, 4, branch='shared')
    with pytest.raises(ValueError, match=r'output_channels must be a positive int, got 0'):
        DeformRoIPoolPack(2, 0)


MODULE_ARGUMENTS = [
    dict(output_size=-2), dict(output_size=(0, 2)), dict(output_size=(7, 10 ** 6)), dict(output_size=2.5),
    dict(sampling_ratio=2.7), dict(sampling_ratio=True), dict(sampling_ratio=-1), dict(sampling_ratio=10 ** 6),
    dict(spatial_scale='0.5'), dict(spatial_scale=0.0), dict(spatial_scale=float('nan')),
    dict(gamma=None), dict(gamma=float('inf')),
]


@pytest.mark.parametrize('module', ['DeformRoIPool', 'DeformRoIPoolPack', 'ModulatedDeformRoIPoolPack'])
@pytest.mark.parametrize('change', MODULE_ARGUMENTS, ids=[repr(c) for c in MODULE_ARGUMENTS])
def test_modules_refuse_what_the_function_refuses_when_built(module, change):
    """One rule: a module refuses at construction exactly what deform_roi_pool refuses, with its exception and
    message (no silent int() / float() conversion, no failure deferred to the first forward)."""
    args = _args()
    args.update(change)
    with pytest.raises((TypeError, ValueError)) as expected:
        deform_roi_pool(**args)
    pool = {k: args[k] for k in ('output_size', 'spatial_scale', 'sampling_ratio', 'gamma')}
    cls = {'DeformRoIPool': DeformRoIPool, 'DeformRoIPoolPack': DeformRoIPoolPack,
           'ModulatedDeformRoIPoolPack': ModulatedDeformRoIPoolPack}[module]
    extra = {} if module == 'DeformRoIPool' else dict(output_channels=2, deform_fc_channels=4)
    with pytest.raises(expected.type, match=re.escape(str(expected.value))):
        cls(**pool, **extra)


def test_learned_offsets_reach_the_offset_branch():
    torch.manual_seed(0)
    layer = DeformRoIPoolPack(2, 3, deform_fc_channels=8, spatial_scale=0.5)
    x, rois, _ = make_case(c=3, dtype=torch.float32)
    layer(x, rois).sum().backward()
    assert layer.offset_fc[-1].weight.grad.abs().sum() > 0


def test_dense_sampling_matches_the_reference():
    # 1024 x 1024 samples per bin: the kernels merge them into the few feature rows and columns they read
    x, rois, off = make_case(n=1, c=3, h=5, w=6, k=2, out=(1, 1), seed=11)
    out = deform_roi_pool(x, rois, off, 1, 0.5, 1024, 0.2)
    ref = deform_roi_pool_reference(x, rois, off, 1, 0.5, 1024, 0.2)
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10)
