"""Indexing is 64-bit: an input of more than 2^31 elements is read and written at the right places."""
import pytest
import torch

from dcn_plugin.ops import modulated_deform_conv2d

SIDE = 46341  # SIDE**2 = 2_147_488_281 > 2**31 elements (8.6 GB of float32)


@pytest.mark.slow
def test_input_past_2_pow_31_elements_forward_and_input_gradient():
    x = torch.zeros(1, 1, SIDE, SIDE)
    assert x.numel() > 2**31
    # three marked pixels, the last one beyond element 2**31
    marks = {(0, 5): 1.0, (SIDE // 2, 7): 2.0, (SIDE - 1, SIDE - 3): 3.0}
    for (y, xx), v in marks.items():
        x[0, 0, y, xx] = v
    weight = torch.ones(1, 1, 1, 1)
    stride = SIDE - 1  # 2x2 output at the four corners of the image
    offset = torch.zeros(1, 2, 2, 2)
    # output (1, 1) sits at (SIDE-1, SIDE-1): move it to the last marked pixel (half-way between two
    # pixels horizontally, so both taps matter); output (0, 0) moves to (0, 5)
    offset[0, :, 1, 1] = torch.tensor([0.0, -2.5])
    offset[0, :, 0, 0] = torch.tensor([0.0, 5.0])
    mask = torch.ones(1, 1, 2, 2)
    x.requires_grad_()
    out = modulated_deform_conv2d(x, offset, mask, weight, None, stride)
    assert out.shape == (1, 1, 2, 2)
    torch.testing.assert_close(out[0, 0, 0, 0], torch.tensor(1.0))
    torch.testing.assert_close(out[0, 0, 1, 1], torch.tensor(1.5))  # half of pixel (SIDE-1, SIDE-3)
    out[0, 0, 1, 1].backward()
    g = x.grad
    assert g[0, 0, SIDE - 1, SIDE - 4] == 0.5 and g[0, 0, SIDE - 1, SIDE - 3] == 0.5
    assert g.sum() == 1.0
    del x, g
