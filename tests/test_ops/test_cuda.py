"""CUDA kernels of the DCNv2 op: parity with the CPU kernels (both input-gradient paths: atomic, and the
sorted one of deterministic mode), several chunks, edge-case samples, low precision, TF32, autocast, edge
sizes, 64-bit indexing, streams, determinism, gradcheck, opcheck, torch.compile, device checks.

Every test is marked ``cuda``: it needs a CUDA GPU and dcn_plugin built with its CUDA kernels
(``FORCE_CUDA=1``), and is skipped without a GPU (tests/conftest.py). ``scripts/gpu_check.sh`` builds the
extension and runs them on a GPU machine, and again under compute-sanitizer less the tests marked
``slow``, gradcheck and opcheck.
"""
import os

import pytest
import torch
from op_cases import Case, Inputs, assert_rel_close, edge_case_offsets, forward_backward
from torch.profiler import ProfilerActivity, profile

from dcn_plugin.ops import has_cuda_kernels, modulated_deform_conv2d

os.environ.setdefault('CUBLAS_WORKSPACE_CONFIG', ':4096:8')  # read by cuBLAS when its handle is made

pytestmark = pytest.mark.cuda

DEVICE = 'cuda'
OP = modulated_deform_conv2d
BWD = torch.ops.dcn_plugin.modulated_deform_conv2d_backward

CASES = {
    'basic': Case(c=8, o=12, h=9, w=11),
    'strided-dilated-groups-dg2': Case(c=8, o=8, h=12, w=10, stride=(2, 2), padding=(0, 2), dilation=(2, 1),
                                      groups=2, deform_groups=2, bias=False),
    'nonsquare-kernel-dg4': Case(c=8, o=4, h=7, w=13, k=(1, 3), padding=(0, 1), deform_groups=4),
    'dcnv1-no-mask': Case(c=6, o=5, h=9, w=11, stride=(1, 2), mask=False),
    'wide-channels': Case(n=1, c=64, o=32, h=6, w=5, deform_groups=2),
    # conv groups of 4 channels, deform groups of 6: a deform group spans two conv groups, and the middle
    # conv group straddles both deform groups
    'groups3-crossing-dg2': Case(c=12, o=6, h=8, w=9, groups=3, deform_groups=2),
    # 256 and 64 channels per deform group: 8 and 2 passes of the warp's lane-strided channel loop
    'c256-dg1': Case(c=256, o=16, h=5, w=6),
    'c256-dg4': Case(c=256, o=16, h=5, w=6, deform_groups=4),
}

# Three images of 48 x 480 x 480: 99.5M column elements each, so the CUDA backend (2^28 elements per
# chunk) runs two chunks of 2 and 1 images: chunk-local and global image indices differ, the last chunk
# is partial. groups 3 crossing deform_groups 2, as above.
CHUNKED = Case(n=3, c=48, o=6, h=480, w=480, groups=3, deform_groups=2)


@pytest.fixture(params=['atomic', 'deterministic'])
def input_grad_path(request):
    """The CUDA input gradient: atomics by default, the sorted path in deterministic mode."""
    was = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(request.param == 'deterministic')
    yield request.param
    torch.use_deterministic_algorithms(was)


def _matmul_tf32(on: bool):
    """cuBLAS float32 GEMMs (the op's) in TF32 or not, for one test (the legacy flag: both torch APIs
    stay readable after it)."""
    was = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = on
    yield
    torch.backends.cuda.matmul.allow_tf32 = was


@pytest.fixture
def tf32_off():
    yield from _matmul_tf32(False)


@pytest.fixture
def tf32_on():
    yield from _matmul_tf32(True)


def _op_args(case: Case, t: Inputs):
    """Arguments of a direct torch.ops call."""
    return (*t, list(case.stride), list(case.padding), list(case.dilation), case.groups, case.deform_groups)


def _random_like(out: torch.Tensor, seed: int = 123) -> torch.Tensor:
    return torch.randn(out.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).to(out)


def _assert_all_close(out, grads: Inputs, ref_out, ref_grads: Inputs, rtol: float, what: str = ''):
    assert_rel_close(out, ref_out, rtol, f'output{what}')
    for name, g, ref in zip(Inputs._fields, grads, ref_grads):
        assert_rel_close(g, ref, rtol, f'grad {name}{what}')


def test_cuda_kernels_are_built():
    assert has_cuda_kernels(), 'dcn_plugin._C has no CUDA kernels: rebuild with FORCE_CUDA=1'


# ----------------------------------------------------------------------------- CPU / CUDA parity
@pytest.mark.parametrize('dtype,rtol', [(torch.float64, 1e-10), (torch.float32, 2e-5)], ids=['float64', 'float32'])
@pytest.mark.parametrize('name', list(CASES))
def test_output_and_all_gradients_match_the_cpu_kernels(name, dtype, rtol, input_grad_path, tf32_off):
    case = CASES[name]
    out_cpu, g_cpu = forward_backward(OP, case, case.make(dtype, 'cpu', requires_grad=True))
    out_cuda, g_cuda = forward_backward(OP, case, case.make(dtype, DEVICE, requires_grad=True))
    assert out_cuda.device.type == DEVICE and out_cuda.dtype == dtype
    for g in g_cuda:
        assert g is None or (g.device.type == DEVICE and g.dtype == dtype)
    _assert_all_close(out_cuda, g_cuda, out_cpu, g_cpu, rtol)


@pytest.mark.parametrize('dtype,rtol', [(torch.float64, 1e-10), (torch.float32, 2e-5)], ids=['float64', 'float32'])
def test_samples_on_the_edges_of_bilinear_sampling_match_the_cpu_kernels(dtype, rtol, input_grad_path, tf32_off):
    # NaN/inf/huge offsets, samples exactly on pixels, exactly at -1 / H / W and just inside them
    case = CASES['groups3-crossing-dg2']
    t = case.make(dtype)._replace(offset=edge_case_offsets(case).to(dtype))
    out_cpu, g_cpu = forward_backward(OP, case, t.leaves())
    out_cuda, g_cuda = forward_backward(OP, case, t.leaves(device=DEVICE))
    _assert_all_close(out_cuda, g_cuda, out_cpu, g_cpu, rtol)  # finite values included


@pytest.fixture(scope='module')
def chunked_cpu_result():
    return forward_backward(OP, CHUNKED, CHUNKED.make(torch.float64, 'cpu', requires_grad=True))


@pytest.mark.slow
def test_several_chunks_match_the_cpu_kernels_in_forward_and_backward(input_grad_path, chunked_cpu_result):
    case = CHUNKED
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        out, grads = forward_backward(OP, case, case.make(torch.float64, DEVICE, requires_grad=True))
    calls = {e.key: e.count for e in prof.key_averages()}
    chunks = calls.get('dcn_plugin::input_grad', 0)
    assert chunks >= 2, f'the problem ran in {chunks} chunk(s): it no longer tests chunking'
    assert calls.get('dcn_plugin::offset_mask_grad') == chunks
    assert calls.get('dcn_plugin::im2col') == 2 * chunks  # the forward's and the weight gradient's
    _assert_all_close(out, grads, *chunked_cpu_result, 1e-10)


@pytest.mark.parametrize('name', ['basic', 'strided-dilated-groups-dg2'])
def test_matches_torchvision_on_cuda_in_float64(name):
    tv_ops = pytest.importorskip('torchvision.ops')
    case = CASES[name]
    t = case.make(torch.float64, DEVICE, requires_grad=True)
    out, grads = forward_backward(OP, case, t)
    tv = tv_ops.deform_conv2d(t.input, t.offset, t.weight, t.bias, stride=case.stride, padding=case.padding,
                              dilation=case.dilation, mask=t.mask)
    assert_rel_close(out, tv, 1e-10, 'output vs torchvision')
    names = [k for k, g in zip(Inputs._fields, grads) if g is not None]
    tv_grads = torch.autograd.grad(tv, [getattr(t, k) for k in names], _random_like(tv))
    for k, g in zip(names, tv_grads):
        assert_rel_close(getattr(grads, k), g, 1e-9, f'grad {k} vs torchvision')


def test_channels_last_and_non_contiguous_inputs_give_the_same_results():
    case = CASES['basic']
    t = case.make(torch.float32, DEVICE, requires_grad=True)
    out, grads = forward_backward(OP, case, t)
    t2 = t.map(lambda v: v.detach())
    t2 = t2._replace(input=t2.input.contiguous(memory_format=torch.channels_last),
                     offset=t2.offset.transpose(2, 3).contiguous().transpose(2, 3),  # same values, other strides
                     weight=t2.weight.contiguous(memory_format=torch.channels_last))
    t2 = t2.map(lambda v: v.requires_grad_(True))
    assert not t2.offset.is_contiguous()
    out2, grads2 = forward_backward(OP, case, t2)
    _assert_all_close(out2, grads2, out, grads, 1e-5)


@pytest.mark.parametrize('default_stream', ['idle', 'busy'])
def test_forward_and_backward_run_on_the_current_stream(default_stream, input_grad_path):
    """The inputs and the output gradient are written on a side stream only after a sleep there: a kernel
    launched on another stream would read them before they exist (default stream idle); a kernel or memset
    queued on a default stream kept busy past the side stream's work would write after it (default stream
    busy): the results the side stream finished with, and the final ones, must both be right."""
    case = CASES['groups3-crossing-dg2']
    t = case.make(torch.float64, DEVICE, requires_grad=True)
    ref_out, ref_grads = forward_backward(OP, case, t)
    grad_out = _random_like(ref_out)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    if default_stream == 'busy':
        torch.cuda._sleep(400_000_000)  # about 0.2 s: well past the side stream's sleep and work
    with torch.cuda.stream(side):
        torch.cuda._sleep(50_000_000)
        late = t.map(lambda v: (v.detach() * 1).requires_grad_(True))
        out, grads = forward_backward(OP, case, late, grad_out=grad_out * 1)  # autograd keeps the side stream
        snapshot = (out.clone(), grads.map(torch.clone))  # what the side stream finished with
        done = side.record_event()
    done.synchronize()
    _assert_all_close(*snapshot, ref_out, ref_grads, 1e-12, ' computed on a side stream')
    torch.cuda.synchronize()
    _assert_all_close(out, grads, ref_out, ref_grads, 1e-12, ' after the default stream finished too')


# ----------------------------------------------------------------------------- low precision, TF32, autocast
@pytest.mark.parametrize('dtype,rtol', [(torch.float16, 1e-2), (torch.bfloat16, 4e-2)], ids=['float16', 'bfloat16'])
@pytest.mark.parametrize('name', ['basic', 'strided-dilated-groups-dg2', 'wide-channels'])
def test_half_precision_matches_a_float32_reference(name, dtype, rtol):
    case = CASES[name]
    low = case.make(dtype, DEVICE, requires_grad=True)
    out, grads = forward_backward(OP, case, low)
    ref_out, ref_grads = forward_backward(OP, case, low.leaves(torch.float32))
    assert out.dtype == dtype
    for name_, g in zip(Inputs._fields, grads):
        assert g is None or g.dtype == dtype, f'grad {name_} dtype {g.dtype}'
    _assert_all_close(out, grads, ref_out, ref_grads, rtol)


def test_float32_with_tf32_stays_within_tf32_tolerance(tf32_on):
    # TF32 GEMMs round their operands to 10 mantissa bits (2^-11 relative): about 1e-3 of the largest
    # value over these 576-term sums; plain float32 parity is the test above, with TF32 off
    case = CASES['wide-channels']
    ref_out, ref_grads = forward_backward(OP, case, case.make(torch.float64, 'cpu', requires_grad=True))
    out, grads = forward_backward(OP, case, case.make(torch.float32, DEVICE, requires_grad=True))
    _assert_all_close(out, grads, ref_out, ref_grads, 5e-3)


@pytest.mark.parametrize('dtype', [torch.float16, torch.bfloat16], ids=['float16', 'bfloat16'])
def test_autocast_runs_the_op_in_the_autocast_dtype(dtype):
    """The reference is the float64 op (CPU kernels) on the leaves rounded to the autocast dtype, as autocast
    computes it. Rounding the offsets moves samples, some onto or across a pixel edge where the bilinear
    weights' derivative jumps: against unrounded leaves the offset gradient differs by O(|input|) there,
    which is the rounding's effect, not an error of the kernels."""
    case = CASES['basic']
    t = case.make(torch.float32, DEVICE, requires_grad=True)
    with torch.autocast('cuda', dtype=dtype):
        out = OP(*t, *case.conv_args())
    assert out.dtype == dtype
    cast = t.map(lambda v: v.detach().to(dtype))
    assert_rel_close(out, OP(*cast, *case.conv_args()), 1e-3, 'autocast output vs explicit cast')
    grad_out = _random_like(out)
    grads = torch.autograd.grad(out, list(t), grad_out)
    _, ref = forward_backward(OP, case, cast.leaves(torch.float64, 'cpu'), grad_out=grad_out)
    for k, g, r in zip(Inputs._fields, grads, ref):
        assert g.dtype == torch.float32, f'grad {k} of a float32 leaf must be float32, got {g.dtype}'
        assert_rel_close(g, r, 4e-2, f'autocast grad {k} vs float64 on the rounded leaves')


def test_autocast_leaves_float64_alone():
    case = CASES['basic']
    t = case.make(torch.float64, DEVICE)
    with torch.autocast('cuda', dtype=torch.float16):
        out = OP(*t, *case.conv_args())
    assert out.dtype == torch.float64


# ----------------------------------------------------------------------------- sizes
def test_batch_zero_gives_empty_output_and_zero_weight_gradients():
    case = CASES['basic'].replace(n=0)
    out, grads = forward_backward(OP, case, case.make(torch.float32, DEVICE, requires_grad=True))
    assert out.shape == (0, case.o, *case.out_hw)
    for g in (grads.input, grads.offset, grads.mask):
        assert g.shape[0] == 0
    assert float(grads.weight.abs().max()) == 0 and float(grads.bias.abs().max()) == 0


@pytest.mark.parametrize('n', [33, 65])
def test_batches_larger_than_32_match_the_cpu_kernels(n):
    case = Case(n=n, c=4, o=6, h=6, w=7, deform_groups=2)
    out_cpu, g_cpu = forward_backward(OP, case, case.make(torch.float64, 'cpu', requires_grad=True))
    out_cuda, g_cuda = forward_backward(OP, case, case.make(torch.float64, DEVICE, requires_grad=True))
    _assert_all_close(out_cuda, g_cuda, out_cpu, g_cpu, 1e-10)


def _free_gib() -> float:
    free, _ = torch.cuda.mem_get_info()
    return free / 2 ** 30


@pytest.mark.slow
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
    ho, wo = case.out_hw
    g = torch.Generator(device=DEVICE).manual_seed(0)
    x = torch.randn(n, c, h, h, device=DEVICE, dtype=dtype, generator=g)
    # |offset| <= 2 in steps of 1/64: sampling coordinates are exact in float32 at any position, so the big
    # and the small run interpolate with the same weights and may differ only in summation order
    offset = (torch.randn(n, 18, ho, wo, device=DEVICE, generator=g) * 2).clamp_(-2, 2).mul_(64).round_().div_(64)
    offset = offset.to(dtype)
    mask = torch.rand(n, 9, ho, wo, device=DEVICE, dtype=dtype, generator=g)
    weight = (torch.randn(o, c, 3, 3, device=DEVICE, generator=g) / (c * 9) ** 0.5).to(dtype)
    bias = torch.randn(o, device=DEVICE, dtype=dtype, generator=g)
    rtol = 1e-5 if dtype == torch.float32 else 1e-2
    big = Inputs(x, offset, mask, weight, bias).map(lambda v: v.requires_grad_(True))
    if layout == 'one-image':
        # outputs from row/col r0 on read input rows >= s*r0 - 3 only (|offset| <= 2, pad 1): compare the
        # bottom-right corner with the op on a crop whose own first output row/col is dropped
        crop, r0 = 256, (h - 256) // s
        assert r0 * s == h - crop
        grad_out = torch.zeros(n, o, ho, wo, device=DEVICE, dtype=dtype)
        grad_out[:, :, r0 + 1:, r0 + 1:] = torch.randn(n, o, ho - r0 - 1, wo - r0 - 1, device=DEVICE, dtype=dtype,
                                                       generator=g)
        small = Inputs(x[:, :, h - crop:, h - crop:], offset[:, :, r0:, r0:], mask[:, :, r0:, r0:], weight,
                       bias).leaves()
        out_s, g_s = forward_backward(OP, case.replace(h=crop, w=crop), small, grad_out[:, :, r0:, r0:].clone())
        out_b, g_b = forward_backward(OP, case, big, grad_out)
        assert_rel_close(out_b[:, :, r0 + 1:, r0 + 1:], out_s[:, :, 1:, 1:], rtol, 'output at the far end')
        assert_rel_close(g_b.input[:, :, h - crop:, h - crop:], g_s.input, rtol, 'grad input at the far end')
        assert not bool(g_b.input[:, :, : h - crop].ne(0).any()), 'grad input written above the corner'
        assert not bool(g_b.input[:, :, :, : h - crop].ne(0).any()), 'grad input written left of the corner'
        assert_rel_close(g_b.offset[:, :, r0 + 1:, r0 + 1:], g_s.offset[:, :, 1:, 1:], rtol, 'grad offset')
        assert_rel_close(g_b.mask[:, :, r0 + 1:, r0 + 1:], g_s.mask[:, :, 1:, 1:], rtol, 'grad mask')
        assert_rel_close(g_b.weight, g_s.weight, 10 * rtol, 'grad weight')
    else:
        grad_out = torch.randn(n, o, ho, wo, device=DEVICE, dtype=dtype, generator=g)
        out_b, g_b = forward_backward(OP, case, big, grad_out)
        last = Inputs(x[-1:], offset[-1:], mask[-1:], weight, bias).leaves()
        out_l, g_l = forward_backward(OP, case.replace(n=1), last, grad_out[-1:].clone())
        assert_rel_close(out_b[-1:], out_l, rtol, 'output of the last image')
        for k in ('input', 'offset', 'mask'):
            assert_rel_close(getattr(g_b, k)[-1:], getattr(g_l, k), rtol, f'grad {k} of the last image')


# ----------------------------------------------------------------------------- determinism, gradcheck, opcheck
@pytest.mark.parametrize('dtype', [torch.float32, torch.float64, torch.float16, torch.bfloat16],
                         ids=['float32', 'float64', 'float16', 'bfloat16'])
def test_deterministic_mode_gives_bit_identical_gradients(dtype):
    # many samples land on the same input cells (small image, large offsets, 4 deform groups): an
    # order-dependent accumulation would show up as differing bits between runs
    case = Case(n=4, c=32, o=32, h=12, w=12, deform_groups=4, offset_scale=3.0)
    was = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        runs = []
        for _ in range(3):
            runs.append(forward_backward(OP, case, case.make(dtype, DEVICE, requires_grad=True, seed=5)))
            torch.cuda.synchronize()
    finally:
        torch.use_deterministic_algorithms(was)
    out0, g0 = runs[0]
    for out, g in runs[1:]:
        assert torch.equal(out, out0), 'output differs between runs'
        for k, a, b in zip(Inputs._fields, g, g0):
            assert torch.equal(a, b), f'grad {k} differs between runs in deterministic mode'


@pytest.mark.parametrize('name', ['basic', 'strided-dilated-groups-dg2', 'dcnv1-no-mask'])
def test_gradcheck_on_cuda(name):
    case = CASES[name].replace(n=1, h=6, w=5) if name != 'strided-dilated-groups-dg2' else CASES[name].replace(n=1)
    t = case.replace(offset_scale=1.5).make(torch.float64, DEVICE, requires_grad=True, seed=1)
    leaves = [v for v in t if v is not None]

    def fn(*args):
        it = iter(args)
        return OP(*(None if v is None else next(it) for v in t), *case.conv_args())
    assert torch.autograd.gradcheck(fn, leaves, eps=1e-6, atol=1e-5, rtol=1e-4, nondet_tol=1e-12)


@pytest.mark.parametrize('dtype', [torch.float32, torch.float16, torch.bfloat16],
                         ids=['float32', 'float16', 'bfloat16'])
def test_opcheck_forward_and_backward_on_cuda(dtype):
    """Schema, autograd registration, fake (Meta) kernel against the CUDA kernels (shapes, dtypes and strides
    of every output: the backward's gradient layouts included) and AOT dispatch."""
    case = CASES['strided-dilated-groups-dg2']
    t = case.make(dtype, DEVICE, requires_grad=True)
    torch.library.opcheck(torch.ops.dcn_plugin.modulated_deform_conv2d.default, _op_args(case, t))
    t = t.map(lambda v: v.detach())
    grad = _random_like(OP(*t, *case.conv_args()))
    stride, padding, dilation, groups, dg = _op_args(case, t)[5:]
    for output_mask in ([True] * 5, [True, False, True, False, False], [False, True, False, True, True]):
        torch.library.opcheck(BWD, (grad, t.input, t.offset, t.mask, t.weight, stride, padding, dilation, groups, dg,
                                    output_mask))


@pytest.mark.slow
@pytest.mark.parametrize('backend', ['aot_eager', 'inductor'])
def test_torch_compile_fullgraph_forward_and_backward_on_cuda(backend):
    """Each gradient of the op also flows through a compiled elementwise kernel (the ``0.5 * v * v`` terms),
    which reads it with the strides the Meta kernel promised (inductor also asserts them on the op's
    outputs): a wrong promise fails or gives wrong gradients."""
    torch._dynamo.reset()
    case = CASES['groups3-crossing-dg2']
    t = case.make(torch.float32, DEVICE, requires_grad=True)

    def fn(*tensors):
        y = OP(*tensors, *case.conv_args())
        return torch.relu(y).sum() + sum(0.5 * (v * v).sum() for v in tensors)

    compiled = torch.compile(fn, backend=backend, fullgraph=True)
    loss = compiled(*t)
    grads = torch.autograd.grad(loss, list(t))
    ref_loss = fn(*t)
    ref_grads = torch.autograd.grad(ref_loss, list(t))
    assert_rel_close(loss, ref_loss, 1e-5, 'loss')
    for k, a, b in zip(Inputs._fields, grads, ref_grads):
        assert_rel_close(a, b, 1e-5, f'grad {k}')


# ----------------------------------------------------------------------------- argument checks
@pytest.mark.parametrize('misplaced', ['offset', 'mask', 'weight', 'bias'])
@pytest.mark.parametrize('input_device', ['cpu', DEVICE])
def test_a_tensor_on_another_device_than_input_raises_a_value_error_naming_it(misplaced, input_device):
    # a direct torch.ops call: the dispatcher picks the CUDA kernel, which validates before it takes a
    # device guard
    other = DEVICE if input_device == 'cpu' else 'cpu'
    case = CASES['basic']
    t = case.make(torch.float32, input_device)
    t = t._replace(**{misplaced: getattr(t, misplaced).to(other)})
    with pytest.raises(ValueError, match=rf'\b{misplaced} must be on the same device as input'):
        torch.ops.dcn_plugin.modulated_deform_conv2d(*_op_args(case, t))


def test_a_grad_output_on_another_device_than_input_raises_a_value_error_naming_it():
    case = CASES['basic']
    t = case.make(torch.float32, DEVICE)
    grad = torch.zeros(case.n, case.o, *case.out_hw)  # on the CPU
    stride, padding, dilation, groups, dg = _op_args(case, t)[5:]
    with pytest.raises(ValueError, match=r'\bgrad_output must be on the same device as input'):
        BWD(grad, t.input, t.offset, t.mask, t.weight, stride, padding, dilation, groups, dg, [True] * 5)
