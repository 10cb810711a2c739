"""The op is a real PyTorch custom op: gradcheck, opcheck, torch.compile, autocast, dtype rules."""
import pytest
import torch
from op_cases import Case

from dcn_plugin.ops import modulated_deform_conv2d
from reference_ops import modulated_deform_conv2d_reference

OP = torch.ops.dcn_plugin.modulated_deform_conv2d
BWD = torch.ops.dcn_plugin.modulated_deform_conv2d_backward
CASES = [Case(n=2, c=4, o=3, h=5, w=4, deform_groups=2, offset_scale=1.5),
         Case(n=1, c=4, o=4, h=5, w=6, k=(2, 3), stride=(2, 1), padding=(1, 0), dilation=(1, 2), groups=2,
              mask=False, bias=False)]


@pytest.mark.parametrize('case', CASES, ids=['dcnv2 deform_groups 2', 'dcnv1 groups 2 no bias'])
def test_gradcheck_all_inputs(case):
    x, offset, mask, weight, bias = case.make(requires_grad=True)
    # keep samples away from pixel edges, where the bilinear kernel is not differentiable
    with torch.no_grad():
        offset.copy_(torch.round(offset) + 0.3)
    fn = lambda *t: modulated_deform_conv2d(*t, *case.conv_args())  # noqa: E731
    assert torch.autograd.gradcheck(fn, (x, offset, mask, weight, bias), eps=1e-6, atol=1e-6, rtol=1e-4)


def _op_args(case, requires_grad):
    x, offset, mask, weight, bias = case.make(requires_grad=requires_grad)
    stride, padding, dilation, groups, dg = case.conv_args()
    return (x, offset, mask, weight, bias, list(stride), list(padding), list(dilation), groups, dg)


@pytest.mark.parametrize('case', CASES + [Case(n=0)], ids=['dcnv2', 'dcnv1', 'batch 0'])
def test_opcheck_forward(case):
    torch.library.opcheck(OP, _op_args(case, requires_grad=True))


def test_opcheck_backward():
    case = CASES[0]
    x, offset, mask, weight, bias, stride, padding, dilation, groups, dg = _op_args(case, requires_grad=False)
    grad = torch.randn(case.n, case.o, *case.out_hw, dtype=torch.float64)
    for output_mask in ([True] * 5, [True, False, True, False, False], [False, True, False, True, True]):
        torch.library.opcheck(BWD, (grad, x, offset, mask, weight, stride, padding, dilation, groups, dg,
                                    output_mask))


@pytest.mark.slow
@pytest.mark.parametrize('backend', ['aot_eager', 'inductor'])
def test_torch_compile_fullgraph_forward_and_backward(backend):
    torch._dynamo.reset()
    case = Case(n=2, c=4, o=4, h=6, w=6)
    x, offset, mask, weight, bias = case.make(dtype=torch.float32, requires_grad=True)

    def fn(x, offset, mask, weight, bias):
        y = modulated_deform_conv2d(x, offset, mask, weight, bias, 1, 1)
        return torch.relu(y).sum()

    compiled = torch.compile(fn, backend=backend, fullgraph=True)
    loss = compiled(x, offset, mask, weight, bias)
    grads = torch.autograd.grad(loss, (x, offset, mask, weight, bias))
    ref_loss = fn(x, offset, mask, weight, bias)
    ref_grads = torch.autograd.grad(ref_loss, (x, offset, mask, weight, bias))
    torch.testing.assert_close(loss, ref_loss)
    for a, b in zip(grads, ref_grads):
        torch.testing.assert_close(a, b)


def test_cpu_autocast_runs_the_op_in_float32():
    case = Case(n=2, c=4, o=4, h=6, w=6)
    x, offset, mask, weight, bias = case.make(dtype=torch.float32)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        # the kind of mixture autocast produces upstream: bf16 offsets/mask from an autocast conv
        out = modulated_deform_conv2d(x.bfloat16(), offset.bfloat16(), mask, weight, bias, 1, 1)
    assert out.dtype == torch.float32
    ref = modulated_deform_conv2d_reference(x.bfloat16().double(), offset.bfloat16().double(), mask.double(),
                                            weight.double(), bias.double(), 1, 1)
    torch.testing.assert_close(out.double(), ref, rtol=1e-5, atol=1e-5)


def test_cpu_autocast_backward_reaches_low_precision_leaves():
    case = Case(n=1, c=4, o=4, h=5, w=5)
    x, offset, mask, weight, bias = case.make(dtype=torch.float32)
    offset = offset.bfloat16().requires_grad_()
    weight.requires_grad_()
    with torch.autocast('cpu', dtype=torch.bfloat16):
        out = modulated_deform_conv2d(x, offset, mask, weight, bias, 1, 1)
    out.sum().backward()
    assert offset.grad.dtype == torch.bfloat16 and weight.grad.dtype == torch.float32
    assert torch.isfinite(offset.grad.float()).all()


def test_float64_is_kept_under_autocast():
    case = Case()
    tensors = case.make(dtype=torch.float64)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        out = modulated_deform_conv2d(*tensors, *case.conv_args())
    assert out.dtype == torch.float64


def test_meta_tensors_give_shapes_without_computing():
    case = Case(n=3, c=6, o=4, h=9, w=8, groups=2, deform_groups=3, stride=(2, 1))
    x, offset, mask, weight, bias = (t.to('meta') for t in case.make())
    out = modulated_deform_conv2d(x, offset, mask, weight, bias, *case.conv_args())
    assert out.device.type == 'meta' and out.shape == (3, 4, *case.out_hw)


def test_backward_returns_only_requested_gradients():
    case = Case()
    x, offset, mask, weight, bias = case.make()
    x.requires_grad_()
    out = modulated_deform_conv2d(x, offset, mask, weight, bias, *case.conv_args())
    (gx,) = torch.autograd.grad(out.sum(), (x,))
    ref = modulated_deform_conv2d_reference(x, offset, mask, weight, bias, *case.conv_args())
    (gref,) = torch.autograd.grad(ref.sum(), (x,))
    torch.testing.assert_close(gx, gref)
