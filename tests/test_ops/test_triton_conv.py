"""The Triton kernels of the convolution compute the op's function: output and every gradient.

Without a GPU they run in Triton's interpreter on CPU tensors (tests/conftest.py sets TRITON_INTERPRET),
against the float64 reference and the C++ CPU op; with one, the same tests run the compiled kernels on
CUDA tensors, and the Triton and C++ CUDA kernels are compared with each other.
"""
import dataclasses

import pytest
import torch
from op_cases import PARITY_GRID, Case, Inputs, assert_rel_close, edge_case_offsets, forward_backward

from dcn_plugin.ops import backend, modulated_deform_conv2d
from dcn_plugin.ops import triton as triton_ops
from dcn_plugin.ops.triton import deform_conv
from reference_ops import modulated_deform_conv2d_reference

DEVICE = 'cuda' if torch.cuda.is_available() else 'cpu'
NAMES = ('output', 'grad input', 'grad offset', 'grad mask', 'grad weight', 'grad bias')

# the op's parity grid, tiny: the interpreter costs about a second per case (one image for the 5x5 kernel),
# and wider layers than the parity grid's last case, to cross several channel and output blocks
GRID = [dataclasses.replace(c, n=1) if c.tag == '5x5' else c for c in PARITY_GRID[:-1]] + [
    Case(n=2, c=40, o=70, h=6, w=5, tag='several channel and output blocks (C 40, O 70)')]


@pytest.fixture
def interpreter_tiles(monkeypatch):
    """Under the interpreter, 128 positions per program instead of the shipped 32: the interpreter's cost
    is per program, and the masks of partial tiles are exercised all the same (every case here has fewer
    positions). test_shipped_tile_sizes_* runs the shipped sizes over several blocks of every kind."""
    if triton_ops.interpreted():
        for name in ('FORWARD_CONFIG', 'WEIGHT_GRAD_CONFIG', 'COLUMN_GRAD_CONFIG'):
            monkeypatch.setattr(deform_conv, name, dataclasses.replace(getattr(deform_conv, name), block_p=128))


@pytest.fixture(autouse=True)
def _full_precision_dot():
    # float32 tl.dot in IEEE precision for the parity checks (TF32 has its own test)
    before = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32 = before


def _run(fn, case: Case, inputs: Inputs, seed: int = 1):
    return forward_backward(fn, case, inputs, grad_seed=seed)


def _check(case: Case, dtype=torch.float32, rtol=2e-5, inputs: Inputs = None):
    """Triton in ``dtype`` against the float64 reference (and, in float32, the C++ CPU op)."""
    inputs = case.make() if inputs is None else inputs
    out, grads = _run(triton_ops.modulated_deform_conv2d, case, inputs.leaves(dtype, DEVICE))
    ref_out, ref_grads = _run(modulated_deform_conv2d_reference, case, inputs.leaves(torch.float64))
    for name, a, b in zip(NAMES, [out, *grads], [ref_out, *ref_grads]):
        assert_rel_close(a, b, rtol, f'{name} vs float64 reference')
    if dtype == torch.float32:
        cpu_out, cpu_grads = _run(modulated_deform_conv2d, case, inputs.leaves(torch.float32))
        for name, a, b in zip(NAMES, [out, *grads], [cpu_out, *cpu_grads]):
            assert_rel_close(a, b, rtol, f'{name} vs the CPU op')
    return out, grads


@pytest.mark.parametrize('case', GRID, ids=lambda c: c.tag)
def test_float32_output_and_every_gradient_match_reference_and_cpu_op(case, interpreter_tiles):
    _check(case)


def test_shipped_tile_sizes_over_several_blocks_of_positions_channels_and_outputs():
    # 2 x 9 x 8 = 144 positions (5 blocks of 32, the last partial), 40 channels in 2 deform groups of 20
    # (blocks of 16: two full, one partial each), 70 outputs in 2 groups of 35 (partial output blocks)
    case = Case(n=2, c=40, o=70, h=9, w=8, groups=2, deform_groups=2)
    _check(case)


@pytest.mark.parametrize('dtype,rtol', [(torch.float16, 4e-3), (torch.bfloat16, 3e-2)], ids=['float16', 'bfloat16'])
@pytest.mark.parametrize('case', [Case(tag='3x3'), Case(c=6, o=6, groups=3, deform_groups=2, mask=False,
                                                        tag='groups crossing deform_groups, DCNv1')],
                         ids=lambda c: c.tag)
def test_half_precision_matches_float64_reference(case, dtype, rtol, interpreter_tiles):
    # the kernels themselves (the op's validator allows 16-bit tensors on CUDA only, and the interpreter
    # runs on CPU tensors); inputs drawn exactly representable in the dtype, so only the kernels'
    # rounding differs
    inputs = case.make().map(lambda t: t.to(dtype).double())
    t = inputs.map(lambda v: v.to(dtype=dtype, device=DEVICE))
    out = deform_conv.conv_forward(*t, *case.conv_args())
    grad_out = torch.randn(out.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    grads = deform_conv.conv_backward(grad_out.to(dtype=dtype, device=DEVICE), t.input, t.offset, t.mask, t.weight,
                                      *case.conv_args(), [True, True, case.mask, True, case.bias])
    ref_out, ref_grads = forward_backward(modulated_deform_conv2d_reference, case, inputs.leaves(), grad_out)
    assert out.dtype == dtype and all(g.dtype == dtype for g in grads)
    for name, a, b in zip(NAMES, [out, *grads], [ref_out, *ref_grads]):
        assert_rel_close(None if b is None else a, b, rtol, name)


def test_int64_index_build_matches_int32_build(monkeypatch, interpreter_tiles):
    # the IDX_64 build runs where a tensor passes 2^31 elements; forced here on a small problem
    case = Case(c=6, o=4, groups=2, deform_groups=3, stride=(2, 1), dilation=(1, 2), padding=(1, 2))
    small = _run(triton_ops.modulated_deform_conv2d, case, case.make().leaves(torch.float32, DEVICE))
    monkeypatch.setattr(deform_conv, '_needs_int64', lambda *tensors: True)
    large = _run(triton_ops.modulated_deform_conv2d, case, case.make().leaves(torch.float32, DEVICE))
    for name, a, b in zip(NAMES, [small[0], *small[1]], [large[0], *large[1]]):
        assert_rel_close(a, b, 1e-6, name)


def test_samples_on_the_edges_of_bilinear_sampling_match_reference(interpreter_tiles):
    # NaN/inf/huge offsets (zero samples), samples exactly on pixels, at -1 / H / W and just inside them
    case = Case(n=2, c=6, o=6, h=6, w=7, groups=3, deform_groups=2)
    inputs = case.make()._replace(offset=edge_case_offsets(case))
    out, grads = _check(case, inputs=inputs)
    assert torch.isfinite(out).all() and all(torch.isfinite(g).all() for g in grads if g is not None)


def test_batch_of_zero_gives_empty_output_and_zero_gradients():
    case = Case(n=0)
    out, grads = _run(triton_ops.modulated_deform_conv2d, case, case.make().leaves(torch.float32, DEVICE))
    assert out.shape == (0, case.o, *case.out_hw)
    assert grads.input.shape == (0, case.c, case.h, case.w)
    assert torch.count_nonzero(grads.weight) == 0 and torch.count_nonzero(grads.bias) == 0


@pytest.mark.parametrize('layout', ['non-contiguous', 'channels_last'])
def test_any_memory_layout_gives_the_contiguous_result(layout, interpreter_tiles):
    case = Case(n=2, c=8, o=6, h=7, w=6, deform_groups=2)
    inputs = case.make(dtype=torch.float32, device=DEVICE)

    def convert(t):
        if layout == 'channels_last' and t.dim() == 4:
            return t.contiguous(memory_format=torch.channels_last)
        big = torch.zeros(*t.shape[:-1], t.shape[-1] * 2, dtype=t.dtype, device=t.device)
        big[..., ::2] = t
        return big[..., ::2]

    ref = _run(triton_ops.modulated_deform_conv2d, case, inputs.leaves())
    converted = inputs.map(convert)
    if layout == 'non-contiguous':
        assert not any(t.is_contiguous() for t in converted)
    got = _run(triton_ops.modulated_deform_conv2d, case, Inputs(*(t.detach().requires_grad_() for t in converted)))
    for name, a, b in zip(NAMES, [got[0], *got[1]], [ref[0], *ref[1]]):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=lambda m: f'{name}: {m}')


@pytest.mark.parametrize('case', [Case(), Case(n=1, c=1, o=2, tag='size-1 dims')], ids=lambda c: c.tag or '3x3')
def test_gradients_have_the_op_layouts(case):
    # as the C++ kernels and the Meta kernel: input, offset, mask channels-last; weight contiguous
    x = case.make(dtype=torch.float32, device=DEVICE)
    go = torch.randn(x.input.shape[0], case.o, *case.out_hw, device=DEVICE)
    grads = triton_ops.backward(go, x.input, x.offset, x.mask, x.weight, *case.conv_args(), [True] * 5)
    meta = torch.ops.dcn_plugin.modulated_deform_conv2d_backward(
        go.to('meta'), *(t.to('meta') for t in x[:4]), *case.conv_args(), [True] * 5)
    for g, m in zip(grads, meta):
        assert g.shape == m.shape and g.stride() == m.stride() and g.dtype == m.dtype


def test_backward_twice_gives_identical_gradients(interpreter_tiles):
    # the input gradient adds with atomics; on the interpreter (and for these sizes) the order is fixed
    case = Case(c=8, o=8, groups=4, deform_groups=2)
    inputs = case.make(dtype=torch.float32, device=DEVICE)
    first = _run(triton_ops.modulated_deform_conv2d, case, inputs.leaves())
    second = _run(triton_ops.modulated_deform_conv2d, case, inputs.leaves())
    names = NAMES if DEVICE == 'cpu' else ('output', 'grad offset', 'grad mask', 'grad weight', 'grad bias')
    for name, a, b in zip(NAMES, [first[0], *first[1]], [second[0], *second[1]]):
        if name in names:
            assert torch.equal(a, b), name


def _in_sentinel_buffer(t: torch.Tensor, channels_last: bool = False) -> torch.Tensor:
    """``t``'s values in the middle of a larger buffer of NaNs: any read outside ``t`` makes NaNs."""
    pad = 4096
    shape = t.shape
    if channels_last and t.dim() == 4:
        strides = torch.empty(shape).contiguous(memory_format=torch.channels_last).stride()
    else:
        strides = torch.empty(shape).stride()
    buf = torch.full((t.numel() + 2 * pad,), float('nan'), dtype=t.dtype, device=t.device)
    view = buf.as_strided(shape, strides, pad)
    view.copy_(t)
    return view


@pytest.mark.parametrize('channels_last', [False, True], ids=['NCHW', 'channels_last'])
def test_no_read_outside_the_tensors(channels_last, interpreter_tiles):
    # Triton's interpreter reads memory past a tensor without complaint where a load is not masked;
    # every tensor here sits between NaNs, so such a read would show as a NaN in some result
    case = Case(n=2, c=6, o=5, h=5, w=6, groups=1, deform_groups=3, offset_scale=4.0)
    inputs = case.make()
    guarded = inputs.map(lambda t: _in_sentinel_buffer(t.float().to(DEVICE), channels_last))
    leaves = Inputs(*(None if t is None else t.requires_grad_() for t in guarded))
    go = _in_sentinel_buffer(torch.randn(case.n, case.o, *case.out_hw, dtype=torch.float32).to(DEVICE))
    out, grads = forward_backward(triton_ops.modulated_deform_conv2d, case, leaves, grad_out=go)
    ref_out, ref_grads = forward_backward(modulated_deform_conv2d_reference, case, inputs.leaves(torch.float64),
                                          grad_out=go.double().cpu())
    for name, a, b in zip(NAMES, [out, *grads], [ref_out, *ref_grads]):
        assert_rel_close(a, b, 2e-5, name)  # also: no NaN anywhere


def test_invalid_arguments_raise_the_op_errors():
    case = Case()
    x, offset, mask, weight, bias = case.make(dtype=torch.float32, device=DEVICE)
    bad = [
        dict(offset=offset[:, :-1]),
        dict(mask=mask[:, :, :-1]),
        dict(weight=weight[:, :-1]),
        dict(bias=bias[:-1]),
        dict(offset=offset.double()),
    ]
    args = dict(input=x, offset=offset, mask=mask, weight=weight, bias=bias)
    for change in bad:
        kwargs = {**args, **change}
        with pytest.raises((ValueError, TypeError)) as op_error:
            modulated_deform_conv2d(**kwargs, padding=1)
        with pytest.raises(type(op_error.value)) as triton_error:
            triton_ops.modulated_deform_conv2d(**kwargs, padding=1)
        assert str(triton_error.value).splitlines()[0] == str(op_error.value).splitlines()[0]
    with pytest.raises(TypeError, match='input dtype must be one of'):
        triton_ops.modulated_deform_conv2d(*(t.double() for t in (x, offset, mask, weight, bias)), padding=1)


@pytest.mark.skipif(DEVICE != 'cpu', reason='the CUDA tests below run the real dispatch')
def test_public_op_cuda_kernels_follow_the_rule(monkeypatch):
    # the public ops' CUDA kernels are Python functions: called directly on CPU tensors, the Triton path
    # runs in the interpreter, and the C++ path names what is missing where _C has no CUDA kernels
    from dcn_plugin.ops import functional
    case = Case(c=6, o=4, groups=2, mask=False)
    x = case.make(dtype=torch.float32)
    grad_out = torch.randn(case.n, case.o, *case.out_hw)
    monkeypatch.setattr(functional, 'cuda_backend_for', lambda dtype: 'triton')
    out = functional._forward_cuda(*x, *case.conv_args())
    grads = functional._backward_cuda(grad_out, *x[:4], *case.conv_args(), [True] * 5)
    ref_out = modulated_deform_conv2d(*x, *case.conv_args())
    ref_grads = torch.ops.dcn_plugin.modulated_deform_conv2d_backward(grad_out, *x[:4], *case.conv_args(), [True] * 5)
    for name, a, b in zip(NAMES, [out, *grads], [ref_out, *ref_grads]):
        assert_rel_close(a, b, 2e-5, name)
    monkeypatch.setattr(functional, 'cuda_backend_for', lambda dtype: 'cuda')
    if not functional._library.has_cuda_kernels():
        with pytest.raises(RuntimeError, match=r'needs the C\+\+ CUDA kernels'):
            functional._forward_cuda(*x, *case.conv_args())


@pytest.mark.cuda
def test_triton_and_cxx_cuda_kernels_agree():
    # the two CUDA backends of the public op, on the same problems, through the backend switch
    for case in GRID[:4] + GRID[8:13]:
        inputs = case.make()
        results = {}
        for name in ('cuda', 'triton'):
            backend.set_cuda_backend(name)
            try:
                results[name] = _run(modulated_deform_conv2d, case, inputs.leaves(torch.float32, 'cuda'))
            finally:
                backend.set_cuda_backend(None)
        (a_out, a_grads), (b_out, b_grads) = results['cuda'], results['triton']
        for label, a, b in zip(NAMES, [a_out, *a_grads], [b_out, *b_grads]):
            assert_rel_close(a, b, 2e-5, f'{case.tag}: {label}')


@pytest.mark.cuda
def test_tf32_stays_within_its_documented_tolerance():
    # with torch.backends.cudnn.allow_tf32 the float32 dot uses TF32 (10-bit mantissa inputs)
    torch.backends.cudnn.allow_tf32 = True
    case = Case(n=2, c=64, o=32, h=12, w=12)
    inputs = case.make()
    out, grads = _run(triton_ops.modulated_deform_conv2d, case, inputs.leaves(torch.float32, 'cuda'))
    ref_out, ref_grads = _run(modulated_deform_conv2d_reference, case, inputs.leaves(torch.float64))
    for name, a, b in zip(NAMES, [out, *grads], [ref_out, *ref_grads]):
        assert_rel_close(a, b, 5e-3, name)
