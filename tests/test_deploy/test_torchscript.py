"""``torch.jit.script`` on the functional API and the modules, as it works for torchvision's op:
scripted results equal eager ones, argument conversion works inside scripts, bad pairs are refused."""
import io

import pytest
import torch

from dcn_plugin import ops

# torch 2.14 deprecates TorchScript (FutureWarning) but ships it; users of scripted models still rely on it
pytestmark = pytest.mark.filterwarnings('ignore:`torch.jit.script` is deprecated:FutureWarning',
                                        'ignore:`torch.jit.save` is deprecated:FutureWarning',
                                        'ignore:`torch.jit.load` is deprecated:FutureWarning')


def _inputs(seed=0, n=2, c=4, h=7, w=6, dg=2, k=9):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n, c, h, w, generator=g), torch.randn(n, 2 * dg * k, h, w, generator=g) * 2,
            torch.rand(n, dg * k, h, w, generator=g), torch.randn(6, c // 2, 3, 3, generator=g),
            torch.randn(6, generator=g))


def test_functions_script_and_equal_eager():
    x, offset, mask, weight, bias = _inputs()
    scripted = torch.jit.script(ops.modulated_deform_conv2d)
    for args in [(bias, 1, 1, 1, 2, 2), (None, (1, 1), [1, 1], 1, 2, 2)]:
        torch.testing.assert_close(scripted(x, offset, mask, weight, *args),
                                   ops.modulated_deform_conv2d(x, offset, mask, weight, *args), rtol=0, atol=0)
    torch.testing.assert_close(scripted(x, offset, None, weight, bias, 1, 1, 1, 2, 2),
                               ops.modulated_deform_conv2d(x, offset, None, weight, bias, 1, 1, 1, 2, 2),
                               rtol=0, atol=0)
    scripted_v1 = torch.jit.script(ops.deform_conv2d)
    for args, kwargs in [((1, 1, 1, 2, 2), {}), ((1, 1, 1, 2, 2, bias), {}), ((1, 1, 1, 2, 2, False, 32), {}),
                         ((), dict(padding=1, groups=2, deform_groups=2, bias=bias))]:
        torch.testing.assert_close(scripted_v1(x, offset, weight, *args, **kwargs),
                                   ops.deform_conv2d(x, offset, weight, *args, **kwargs), rtol=0, atol=0)


def test_scripted_gradients_equal_eager():
    x, offset, mask, weight, bias = _inputs()
    leaves = [t.requires_grad_() for t in (x, offset, mask, weight, bias)]
    scripted = torch.jit.script(ops.modulated_deform_conv2d)
    grads = []
    for fn in (scripted, ops.modulated_deform_conv2d):
        out = fn(x, offset, mask, weight, bias, 1, 1, 1, 2, 2)
        grads.append(torch.autograd.grad((out * out).sum(), leaves))
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_functions_called_from_scripted_code_take_ints_tuples_and_lists():
    @torch.jit.script
    def caller(x: torch.Tensor, offset: torch.Tensor, mask: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        a = ops.modulated_deform_conv2d(x, offset, mask, weight, None, 1, (1, 1), [1, 1], 2, 2)
        b = ops.deform_conv2d(x, offset, weight, [1, 1], 1, (1, 1), 2, 2)
        return a + b

    x, offset, mask, weight, _ = _inputs()
    expected = (ops.modulated_deform_conv2d(x, offset, mask, weight, None, 1, 1, 1, 2, 2)
                + ops.deform_conv2d(x, offset, weight, 1, 1, 1, 2, 2))
    torch.testing.assert_close(caller(x, offset, mask, weight), expected, rtol=0, atol=0)


def test_scripted_functions_refuse_bad_pairs_and_a_bias_flag():
    x, offset, mask, weight, _ = _inputs()
    with pytest.raises(torch.jit.Error, match=r'padding must be an int or a pair of ints, got \[1, 1, 1\]'):
        torch.jit.script(ops.modulated_deform_conv2d)(x, offset, mask, weight, None, 1, [1, 1, 1], 1, 2, 2)
    with pytest.raises(torch.jit.Error, match=r'bias must be a torch.Tensor of shape \(out_channels,\), None or '
                                              r'False \(no bias\), got True'):
        torch.jit.script(ops.deform_conv2d)(x, offset, weight, 1, 1, 1, 2, 2, True)


@pytest.mark.parametrize('cls', [ops.ModulatedDeformConv2dPack, ops.DeformConv2dPack])
@pytest.mark.parametrize('bias', [True, False])
def test_pack_modules_script_and_equal_eager(cls, bias):
    torch.manual_seed(0)
    layer = cls(4, 6, 3, stride=(2, 1), padding=1, dilation=(1, 2), groups=2, deform_groups=2, bias=bias).eval()
    with torch.no_grad():
        layer.conv_offset.weight.normal_(0, 0.3)
        layer.conv_offset.bias.normal_(0, 0.5)
    x = torch.randn(2, 4, 9, 8)
    scripted = torch.jit.script(layer)
    torch.testing.assert_close(scripted(x), layer(x), rtol=0, atol=0)
    buffer = io.BytesIO()
    torch.jit.save(scripted, buffer)
    buffer.seek(0)
    torch.testing.assert_close(torch.jit.load(buffer)(x), layer(x), rtol=0, atol=0)


def test_external_offset_modules_script_and_equal_eager():
    x, offset, mask, _, _ = _inputs(c=4, dg=2)
    torch.manual_seed(1)
    modulated = ops.ModulatedDeformConv2d(4, 6, 3, padding=1, groups=2, deform_groups=2)
    scripted = torch.jit.script(modulated)
    torch.testing.assert_close(scripted(x, offset, mask), modulated(x, offset, mask), rtol=0, atol=0)
    torch.testing.assert_close(scripted(x, offset, None), modulated(x, offset, None), rtol=0, atol=0)
    plain = ops.DeformConv2d(4, 6, 3, padding=1, deform_groups=2)
    torch.testing.assert_close(torch.jit.script(plain)(x, offset), plain(x, offset), rtol=0, atol=0)
