"""The op computes the same function as the reference and as torchvision: output and all gradients."""
import math

import pytest
import torch
import torchvision
from op_cases import PARITY_GRID as GRID
from op_cases import Case, assert_close, edge_case_offsets, forward_backward, random_cases

from dcn_plugin.ops import deform_conv2d, modulated_deform_conv2d
from reference_ops import modulated_deform_conv2d_reference


def _grads(fn, case: Case, seed=0):
    out, grads = forward_backward(fn, case, case.make(requires_grad=True, seed=seed), grad_seed=seed + 1)
    return out, list(grads)


def _torchvision(x, offset, mask, weight, bias, stride, padding, dilation, groups, deform_groups):
    # torchvision infers groups / deform_groups from the shapes
    return torchvision.ops.deform_conv2d(x, offset, weight, bias, stride, padding, dilation, mask)


NAMES = ('output', 'grad input', 'grad offset', 'grad mask', 'grad weight', 'grad bias')


def _compare(case, other, rtol=1e-10, atol=1e-10):
    out, grads = _grads(modulated_deform_conv2d, case)
    ref_out, ref_grads = _grads(other, case)
    for name, a, b in zip(NAMES, [out] + grads, [ref_out] + ref_grads):
        assert_close(a, b, name, rtol, atol)


@pytest.mark.parametrize('case', GRID, ids=lambda c: c.tag)
def test_float64_output_and_every_gradient_match_reference(case):
    _compare(case, modulated_deform_conv2d_reference)


@pytest.mark.parametrize('case', GRID, ids=lambda c: c.tag)
def test_float64_output_and_every_gradient_match_torchvision(case):
    _compare(case, _torchvision)


@pytest.mark.parametrize('case', random_cases(24, seed=1234), ids=lambda c: c.tag)
def test_random_problems_match_reference(case):
    _compare(case, modulated_deform_conv2d_reference)


def test_float32_matches_float64_reference():
    case = Case(n=2, c=16, o=8, h=10, w=9, deform_groups=2)
    x, offset, mask, weight, bias = case.make(dtype=torch.float64)
    ref = modulated_deform_conv2d_reference(x, offset, mask, weight, bias, *case.conv_args())
    out = modulated_deform_conv2d(x.float(), offset.float(), mask.float(), weight.float(), bias.float(),
                                  *case.conv_args())
    assert out.dtype == torch.float32
    torch.testing.assert_close(out.double(), ref, rtol=1e-5, atol=1e-5)


def test_batch_of_zero_gives_empty_output_and_gradients():
    case = Case(n=0)
    x, offset, mask, weight, bias = case.make(requires_grad=True)
    out = modulated_deform_conv2d(x, offset, mask, weight, bias, *case.conv_args())
    assert out.shape == (0, case.o, *case.out_hw)
    out.sum().backward()
    assert x.grad.shape == x.shape and offset.grad.shape == offset.shape and mask.grad.shape == mask.shape
    assert torch.count_nonzero(weight.grad) == 0 and torch.count_nonzero(bias.grad) == 0


def test_batch_larger_than_32_matches_per_image_results():
    case = Case(n=35, c=4, h=6, w=5)
    x, offset, mask, weight, bias = case.make()
    out = modulated_deform_conv2d(x, offset, mask, weight, bias, *case.conv_args())
    for i in (0, 17, 34):
        one = modulated_deform_conv2d(x[i:i + 1], offset[i:i + 1], mask[i:i + 1], weight, bias, *case.conv_args())
        torch.testing.assert_close(out[i:i + 1], one, rtol=0, atol=1e-12)
    _compare(case, _torchvision)


def _strided(t):
    """Same values, non-contiguous storage (every other element of a larger buffer, transposed twice)."""
    big = torch.zeros(*t.shape[:-1], t.shape[-1] * 2, dtype=t.dtype)
    big[..., ::2] = t
    return big[..., ::2]


@pytest.mark.parametrize('layout', ['non-contiguous', 'channels_last'])
def test_any_memory_layout_gives_the_contiguous_result(layout):
    case = Case(n=2, c=8, o=6, h=9, w=8, deform_groups=2)
    tensors = case.make()
    ref_out, ref_grads = _grads(modulated_deform_conv2d, case)

    def convert(t):
        if t is None:
            return None
        if layout == 'channels_last' and t.dim() == 4:
            return t.contiguous(memory_format=torch.channels_last)
        return _strided(t)

    conv = [convert(t) for t in tensors]
    if layout == 'non-contiguous':
        assert not any(t.is_contiguous() for t in conv)
    conv = [t.detach().requires_grad_() if t is not None else None for t in conv]
    out = modulated_deform_conv2d(*conv, *case.conv_args())
    g = torch.randn(out.shape, generator=torch.Generator().manual_seed(1), dtype=out.dtype)
    grads = torch.autograd.grad(out, conv, g)
    torch.testing.assert_close(out, ref_out, rtol=1e-12, atol=1e-12)
    for name, a, b in zip(NAMES[1:], grads, ref_grads):
        assert_close(a, b, name, 1e-12, 1e-12)


@pytest.mark.parametrize('bad', [math.inf, -math.inf, math.nan, 1e30, -1e30, 1e10])
def test_huge_inf_and_nan_offsets_sample_zero_without_crashing(bad):
    case = Case(n=1, c=3, h=5, w=5)
    x, offset, mask, weight, bias = case.make()
    offset = offset.clone()
    offset[:, :, 1, 2] = bad  # every kernel point of one output position
    x.requires_grad_()
    offset.requires_grad_()
    out = modulated_deform_conv2d(x, offset, mask, weight, bias, *case.conv_args())
    # the affected position sees only zeros: the output there is the bias
    torch.testing.assert_close(out[0, :, 1, 2], bias, rtol=0, atol=0)
    finite = torch.ones_like(out, dtype=torch.bool)
    finite[0, :, 1, 2] = False
    ref = modulated_deform_conv2d_reference(x.detach(), offset.detach().nan_to_num(0, 0, 0), mask, weight, bias,
                                            *case.conv_args())
    torch.testing.assert_close(out[finite], ref[finite])
    out.sum().backward()
    assert torch.isfinite(x.grad).all() and torch.isfinite(offset.grad).all()
    assert torch.count_nonzero(offset.grad[0, :, 1, 2]) == 0


def test_samples_on_the_edges_of_bilinear_sampling_match_reference():
    # NaN/inf/huge offsets, samples exactly on pixels, exactly at -1 / H / W and just inside them
    case = Case(n=2, c=6, o=6, h=6, w=7, groups=3, deform_groups=2)
    inputs = case.make()._replace(offset=edge_case_offsets(case)).leaves()
    out, grads = forward_backward(modulated_deform_conv2d, case, inputs)
    ref_out, ref_grads = forward_backward(modulated_deform_conv2d_reference, case, inputs.leaves())
    assert torch.isfinite(out).all()
    for name, a, b in zip(NAMES, [out, *grads], [ref_out, *ref_grads]):
        assert_close(a, b, name, 1e-10, 1e-10)


def test_dcnv1_function_equals_modulated_op_with_unit_mask():
    case = Case(mask=True)
    x, offset, mask, weight, bias = case.make()
    ones = torch.ones_like(mask)
    torch.testing.assert_close(deform_conv2d(x, offset, weight, *case.conv_args(), bias=bias),
                               modulated_deform_conv2d(x, offset, ones, weight, bias, *case.conv_args()))


def test_zero_offsets_and_unit_mask_reduce_to_conv2d():
    case = Case(n=2, c=6, o=4, h=8, w=7, groups=2, stride=(2, 1), dilation=(1, 2), padding=(1, 2))
    x, offset, mask, weight, bias = case.make()
    out = modulated_deform_conv2d(x, torch.zeros_like(offset), torch.ones_like(mask), weight, bias, *case.conv_args())
    ref = torch.nn.functional.conv2d(x, weight, bias, case.stride, case.padding, case.dilation, case.groups)
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)


def test_backward_is_bitwise_reproducible_and_thread_count_independent():
    case = Case(n=2, c=32, o=8, h=12, w=12, deform_groups=2, offset_scale=3.0)

    def run(threads):
        old = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            return _grads(modulated_deform_conv2d, case)[1]
        finally:
            torch.set_num_threads(old)

    first, second, single = run(2), run(2), run(1)
    for name, a, b, c in zip(NAMES[1:], first, second, single):
        assert torch.equal(a, b), f'{name} differs between two identical runs'
        if name in ('grad input', 'grad offset', 'grad mask'):  # the op's own kernels (GEMMs are BLAS's)
            assert torch.equal(a, c), f'{name} depends on the number of threads'


# Maps whose columns exceed the CPU backend's budget (2^20 elements per chunk) are processed in blocks of
# positions of one image: the blocks' boundaries must not show in the output or any gradient.
BLOCKED = [Case(n=2, c=64, o=8, h=48, w=48, tag='2 position blocks per image'),
           Case(n=1, c=48, o=12, h=64, w=64, groups=2, deform_groups=3, stride=(1, 1), mask=False,
                tag='position blocks, groups 2 crossing deform_groups 3, DCNv1')]


@pytest.mark.parametrize('case', BLOCKED, ids=lambda c: c.tag)
def test_position_blocks_match_torchvision(case):
    assert case.h * case.w * case.c * 9 > 2 ** 20
    _compare(case, _torchvision)


def test_float32_samples_rounding_onto_a_pixel_take_the_cell_torchvision_and_reference_take():
    # y = row + dy is rounded to float32 once, as torchvision, mmcv and the reference compute it: with dy
    # just below zero, rows from 8 up round onto the row itself (cell [row, row + 1]) while the rows
    # below 4 do not (cell [row - 1, row]). The cell decides the offset gradient there: it must be theirs.
    case = Case(n=1, c=3, o=2, h=24, w=24, k=(1, 1), padding=(0, 0), bias=False)
    x, offset, mask, weight, _ = case.make(dtype=torch.float32)
    tiny = -2.0 ** -22
    offset = torch.full_like(offset, tiny)
    offset[0, 1, :, ::2] = 0.0  # every other column moves along y only
    assert float(torch.tensor(12.0) + torch.tensor(tiny)) == 12.0 and float(torch.tensor(2.0) + tiny) < 2.0
    inputs = case.make(dtype=torch.float32)._replace(offset=offset, mask=mask).leaves()
    out, grads = forward_backward(modulated_deform_conv2d, case, inputs)
    for other in (_torchvision, modulated_deform_conv2d_reference):
        ref_out, ref_grads = forward_backward(other, case, inputs.leaves())
        for name, a, b in zip(NAMES, [out, *grads], [ref_out, *ref_grads]):
            assert_close(a, b, name, 1e-5, 1e-5)
    # the rounding is what decides: unrounded (float64), the rows from 8 up take the cell below instead
    _, exact = forward_backward(modulated_deform_conv2d_reference, case, inputs.leaves(torch.float64))
    moved = (grads.offset.double() - exact.offset).abs()[0, 0]
    assert moved[8:].amax(1).min() > 1e-2 and moved[:4].max() < 1e-4
