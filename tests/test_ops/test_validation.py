"""Every malformed input raises a Python exception naming the argument, expected and actual value,
before any kernel runs: through the function, through the raw op (the operator's one validator, in
C++) and under compile (the same validator in the op's Meta kernel)."""

import pytest
import torch
from op_cases import Case, assert_refused, assert_refused_when_compiled, malformed_cases

from dcn_plugin.ops import modulated_deform_conv2d

BASE = Case(n=2, c=4, o=6, h=7, w=6, groups=2, deform_groups=2)  # weight (6, 2, 3, 3), Ho=7, Wo=6


def _args():
    x, offset, mask, weight, bias = BASE.make()
    return dict(input=x, offset=offset, mask=mask, weight=weight, bias=bias, stride=1, padding=1, dilation=1,
                groups=2, deform_groups=2)


MALFORMED = [  # a table: one malformed input a row, so the rows are alike by design
    # (id, changes to the arguments, exception type, regex the message must match)
    ('offset channels', dict(offset=torch.zeros(2, 35, 7, 6, dtype=torch.float64)), ValueError,
     r'offset must have shape .*\(2, 36, 7, 6\).*got \(2, 35, 7, 6\)'),
    ('offset spatial size', dict(offset=torch.zeros(2, 36, 6, 6, dtype=torch.float64)), ValueError,
     r'offset must have shape .*\(2, 36, 7, 6\).*got \(2, 36, 6, 6\)'),
    ('offset batch', dict(offset=torch.zeros(3, 36, 7, 6, dtype=torch.float64)), ValueError,
     r'offset must have shape .*got \(3, 36, 7, 6\)'),
    ('mask channels', dict(mask=torch.zeros(2, 9, 7, 6, dtype=torch.float64)), ValueError,
     r'mask must have shape .*\(2, 18, 7, 6\).*got \(2, 9, 7, 6\)'),
    ('mask spatial size', dict(mask=torch.zeros(2, 18, 7, 5, dtype=torch.float64)), ValueError,
     r'mask must have shape .*got \(2, 18, 7, 5\)'),
    ('weight channels vs groups', dict(weight=torch.zeros(6, 4, 3, 3, dtype=torch.float64)), ValueError,
     r'weight must have input channels / groups = 4 / 2 = 2 .*got weight shape \(6, 4, 3, 3\)'),
    ('out channels vs groups', dict(weight=torch.zeros(5, 2, 3, 3, dtype=torch.float64),
                                    bias=torch.zeros(5, dtype=torch.float64)), ValueError,
     r'weight out channels \(5\) must be divisible by groups \(2\)'),
    ('input channels vs groups', dict(groups=3), ValueError, r'input channels \(4\) must be divisible by groups \(3\)'),
    ('input channels vs deform_groups', dict(deform_groups=3), ValueError,
     r'input channels \(4\) must be divisible by deform_groups \(3\)'),
    ('bias length', dict(bias=torch.zeros(5, dtype=torch.float64)), ValueError,
     r'bias must have shape \(out_channels,\) = \(6,\), got \(5,\)'),
    ('zero stride', dict(stride=0), ValueError, r'stride must be a pair of positive ints, got \(0, 0\)'),
    ('negative stride', dict(stride=(1, -2)), ValueError, r'stride must be a pair of positive ints, got \(1, -2\)'),
    ('zero dilation', dict(dilation=(0, 1)), ValueError, r'dilation must be a pair of positive ints, got \(0, 1\)'),
    ('negative padding', dict(padding=-1), ValueError, r'padding must be a pair of non-negative ints, got \(-1, -1\)'),
    ('zero groups', dict(groups=0), ValueError, r'groups must be a positive int, got 0'),
    ('zero deform_groups', dict(deform_groups=0), ValueError, r'deform_groups must be a positive int, got 0'),
    ('input rank', dict(input=torch.zeros(4, 7, 6, dtype=torch.float64)), ValueError,
     r'input must be a 4-D tensor.*\(4, 7, 6\)'),
    ('weight rank', dict(weight=torch.zeros(6, 2, 9, dtype=torch.float64)), ValueError,
     r'weight must be a 4-D tensor.*\(6, 2, 9\)'),
    ('offset rank', dict(offset=torch.zeros(2, 36, 42, dtype=torch.float64)), ValueError, r'offset must be a 4-D'),
    ('bias rank', dict(bias=torch.zeros(6, 1, dtype=torch.float64)), ValueError, r'bias must be a 1-D'),
    ('mixed dtypes', dict(offset=torch.zeros(2, 36, 7, 6, dtype=torch.float32)), TypeError,
     r'offset dtype must match input dtype \(torch.float64\), got torch.float32'),
    ('integer input', dict(input=torch.zeros(2, 4, 7, 6, dtype=torch.int64)), TypeError,
     r'input dtype must be float32 or float64 on cpu, got torch.int64'),
    ('half on CPU', dict(input=torch.zeros(2, 4, 7, 6, dtype=torch.float16)), TypeError,
     r'input dtype must be float32 or float64 on cpu, got torch.float16'),
    ('mixed devices', dict(weight=torch.zeros(6, 2, 3, 3, dtype=torch.float64, device='meta')), ValueError,
     r'weight must be on the same device as input \(cpu\), got meta'),
    ('kernel larger than padded input', dict(input=torch.zeros(2, 4, 1, 6, dtype=torch.float64), padding=0),
     ValueError, r'the dilated kernel \(3x3\) is larger than the padded input \(1x6\)'),
    ('stride not int', dict(stride=1.5), TypeError, r'stride must be an int or a pair of ints, got 1.5'),
    ('padding triple', dict(padding=(1, 1, 1)), TypeError, r'padding must be an int or a pair of ints'),
    ('input not a tensor', dict(input=[[1.0]]), TypeError, r'input must be a torch.Tensor, got list'),
]


@malformed_cases(MALFORMED)
def test_function_rejects_malformed_input(change, exc, pattern):
    assert_refused(modulated_deform_conv2d, _args(), change, exc, pattern)


def _pair(v):
    return [v, v] if isinstance(v, int) else list(v)


# the raw op says the same things (the function converts Python arguments only; the op checks them)
RAW = [m for m in MALFORMED if m[0] not in ('stride not int', 'padding triple', 'input not a tensor')]


@malformed_cases(RAW)
def test_raw_op_rejects_malformed_input_from_cpp(change, exc, pattern):
    args = _args()
    args.update(change)
    with pytest.raises(exc, match=pattern):
        torch.ops.dcn_plugin.modulated_deform_conv2d(
            args['input'], args['offset'], args['mask'], args['weight'], args['bias'], _pair(args['stride']),
            _pair(args['padding']), _pair(args['dilation']), args['groups'], args['deform_groups'])


def test_validation_also_runs_when_compiled():
    args = _args()
    args['offset'] = torch.zeros(2, 35, 7, 6, dtype=torch.float64)
    assert_refused_when_compiled(modulated_deform_conv2d, args, 'offset must have shape')


def test_backward_op_rejects_wrong_grad_output_shape():
    x, offset, mask, weight, bias = BASE.make()
    with pytest.raises(ValueError, match=r'grad_output must have the output.s shape'):
        torch.ops.dcn_plugin.modulated_deform_conv2d_backward(
            torch.zeros(2, 6, 7, 5, dtype=torch.float64), x, offset, mask, weight, [1, 1], [1, 1], [1, 1], 2, 2,
            [True] * 5)


# ----------------------------------------------------------------------------- edge sizes
def test_empty_spatial_input_is_refused_not_dereferenced():
    # (H = 0 with padding 2 makes a 2x8 output: the kernels would read a null data pointer)
    for shape in ((1, 4, 0, 6), (1, 4, 6, 0)):
        x = torch.randn(*shape)
        ho, wo = shape[2] + 4 - 2, shape[3] + 4 - 2
        with pytest.raises(ValueError, match=r'input height and width must be positive, got input shape'):
            modulated_deform_conv2d(x, torch.zeros(1, 18, ho, wo), torch.ones(1, 9, ho, wo),
                                    torch.randn(4, 4, 3, 3), None, 1, 2)
        with pytest.raises(ValueError, match=r'input height and width must be positive'):
            modulated_deform_conv2d(x.double(), torch.zeros(1, 18, ho, wo).double(), None,
                                    torch.randn(4, 4, 3, 3).double(), None, 1, 2)


@pytest.mark.parametrize('dtype', [torch.float32, torch.float64])
def test_zero_input_channels_give_the_bias(dtype):
    x = torch.randn(2, 0, 5, 5, dtype=dtype, requires_grad=True)
    offset = torch.randn(2, 18, 5, 5, dtype=dtype, requires_grad=True)
    mask = torch.rand(2, 9, 5, 5, dtype=dtype, requires_grad=True)
    weight = torch.randn(3, 0, 3, 3, dtype=dtype, requires_grad=True)
    bias = torch.randn(3, dtype=dtype, requires_grad=True)
    out = modulated_deform_conv2d(x, offset, mask, weight, bias, 1, 1)
    torch.testing.assert_close(out, bias.detach().view(1, 3, 1, 1).expand(2, 3, 5, 5))
    out.sum().backward()
    assert x.grad.shape == x.shape and weight.grad.shape == weight.shape
    assert offset.grad.abs().sum() == 0 and mask.grad.abs().sum() == 0
    torch.testing.assert_close(bias.grad, torch.full((3,), 50.0, dtype=dtype))


@pytest.mark.parametrize('dtype', [torch.float32, torch.float64])
def test_zero_output_channels_forward_and_backward(dtype):
    x = torch.randn(2, 4, 5, 5, dtype=dtype, requires_grad=True)
    offset = torch.randn(2, 18, 5, 5, dtype=dtype, requires_grad=True)
    weight = torch.randn(0, 4, 3, 3, dtype=dtype, requires_grad=True)
    out = modulated_deform_conv2d(x, offset, None, weight, None, 1, 1)
    assert out.shape == (2, 0, 5, 5)
    out.sum().backward()
    assert x.grad.abs().sum() == 0 and offset.grad.abs().sum() == 0 and weight.grad.shape == (0, 4, 3, 3)


def test_raw_op_refuses_hyper_parameters_that_would_overflow():
    x, offset, mask, weight, bias = BASE.make()
    for name, value in (('dilation', [2 ** 62, 1]), ('padding', [1, 2 ** 62]), ('stride', [2 ** 40, 1])):
        args = dict(stride=[1, 1], padding=[1, 1], dilation=[1, 1])
        args[name] = value
        with pytest.raises(ValueError, match=f'{name} must be at most 2147483647'):
            torch.ops.dcn_plugin.modulated_deform_conv2d(x, offset, mask, weight, bias, args['stride'],
                                                         args['padding'], args['dilation'], 2, 2)
    # the largest accepted dilation: the kernel is then larger than the input, said as such
    with pytest.raises(ValueError, match=r'the dilated kernel .* is larger than the padded input'):
        torch.ops.dcn_plugin.modulated_deform_conv2d(x, offset, mask, weight, bias, [1, 1], [1, 1],
                                                     [2 ** 31 - 1, 1], 2, 2)


def test_raw_backward_refuses_grad_output_on_another_device():
    x, offset, mask, weight, bias = BASE.make()
    with pytest.raises(ValueError, match=r'grad_output must be on the same device as input \(cpu\), got meta'):
        torch.ops.dcn_plugin.modulated_deform_conv2d_backward(
            torch.zeros(2, 6, 7, 6, dtype=torch.float64, device='meta'), x, offset, mask, weight, [1, 1], [1, 1],
            [1, 1], 2, 2, [True] * 5)


def test_double_backward_raises_instead_of_returning_zeros():
    x, offset, mask, weight, bias = (t.requires_grad_() for t in BASE.make())
    out = modulated_deform_conv2d(x, offset, mask, weight, bias, 1, 1, 1, 2, 2)
    (gx,) = torch.autograd.grad(out.square().sum(), (x,), create_graph=True)
    with pytest.raises(NotImplementedError, match='double backward'):
        torch.autograd.grad(gx.sum(), (weight,))


@pytest.mark.slow
def test_float32_rows_past_two_to_the_24_sample_the_right_pixel():
    # float32 holds integers exactly only up to 2^24: a sampling row computed as float(y) + dy would read
    # a neighbour of the right pixel beyond it; the kernels keep the integer grid position exact
    h = 2 ** 24 + 40
    x = (torch.arange(h, dtype=torch.float64) % 1000).to(torch.float32).view(1, 1, h, 1)
    offset = torch.zeros(1, 2, h, 1)
    offset[0, 0] = 0.25  # a quarter row down
    out = modulated_deform_conv2d(x, offset, None, torch.ones(1, 1, 1, 1), None)
    rows = torch.arange(h - 40, h - 1)
    expected = 0.75 * (rows % 1000).double() + 0.25 * ((rows + 1) % 1000).double()
    torch.testing.assert_close(out[0, 0, h - 40:h - 1, 0].double(), expected, rtol=0, atol=1e-4)
