"""A slow, readable pure-PyTorch modulated deformable convolution: the specification of the op.

Used by the tests (float64 parity for the output and, through autograd, every gradient) and by the
benchmark's agreement check. Same arguments and semantics as :func:`modulated_deform_conv2d`.
"""
from typing import Optional

import torch
from torch import Tensor

from dcn_plugin.ops.pair import IntPair, to_pair


def bilinear_sample(img: Tensor, y: Tensor, x: Tensor) -> Tensor:
    """Sample ``img (N, C, H, W)`` at ``y, x (N, Ho, Wo)``; zero outside, as the op does.

    A sample with ``y <= -1``, ``y >= H``, ``x <= -1``, ``x >= W`` or NaN is zero; otherwise each of the
    four taps outside the image counts as zero.
    """
    n, c, h, w = img.shape
    valid = (y > -1) & (y < h) & (x > -1) & (x < w)
    y = torch.where(valid, y, torch.zeros_like(y))
    x = torch.where(valid, x, torch.zeros_like(x))
    y0, x0 = torch.floor(y), torch.floor(x)
    ly, lx = y - y0, x - x0
    flat = img.reshape(n, c, h * w)
    out = img.new_zeros(n, c, *y.shape[1:])
    for dy in (0, 1):
        for dx in (0, 1):
            yy, xx = y0 + dy, x0 + dx
            inside = valid & (yy >= 0) & (yy <= h - 1) & (xx >= 0) & (xx <= w - 1)
            wgt = (ly if dy else 1 - ly) * (lx if dx else 1 - lx)
            wgt = torch.where(inside, wgt, torch.zeros_like(wgt))
            idx = (yy.clamp(0, h - 1) * w + xx.clamp(0, w - 1)).long().reshape(n, 1, -1).expand(n, c, -1)
            out = out + wgt.unsqueeze(1) * flat.gather(2, idx).reshape(out.shape)
    return out


def modulated_deform_conv2d_reference(input: Tensor, offset: Tensor, mask: Optional[Tensor], weight: Tensor,
                                      bias: Optional[Tensor] = None, stride: IntPair = 1, padding: IntPair = 0,
                                      dilation: IntPair = 1, groups: int = 1, deform_groups: int = 1) -> Tensor:
    """Reference DCNv2 (DCNv1 with ``mask=None``); shapes as in :func:`modulated_deform_conv2d`."""
    sh, sw = to_pair(stride, 'stride')
    ph, pw = to_pair(padding, 'padding')
    dh, dw = to_pair(dilation, 'dilation')
    n, c, h, w = input.shape
    o, cg, kh, kw = weight.shape
    ho = (h + 2 * ph - (dh * (kh - 1) + 1)) // sh + 1
    wo = (w + 2 * pw - (dw * (kw - 1) + 1)) // sw + 1
    kk, cd = kh * kw, c // deform_groups
    base_y = (torch.arange(ho, dtype=input.dtype, device=input.device) * sh - ph).view(1, ho, 1)
    base_x = (torch.arange(wo, dtype=input.dtype, device=input.device) * sw - pw).view(1, 1, wo)
    cols = []  # per channel block, (N, Cd, K, Ho, Wo)
    for g in range(deform_groups):
        per_k = []
        for i in range(kh):
            for j in range(kw):
                k = i * kw + j
                y = base_y + i * dh + offset[:, 2 * (g * kk + k)]
                x = base_x + j * dw + offset[:, 2 * (g * kk + k) + 1]
                v = bilinear_sample(input[:, g * cd:(g + 1) * cd], y, x)
                if mask is not None:
                    v = v * mask[:, g * kk + k].unsqueeze(1)
                per_k.append(v)
        cols.append(torch.stack(per_k, dim=2))
    col = torch.cat(cols, dim=1).reshape(n, groups, cg * kk, ho * wo)
    out = torch.einsum('gok,ngkp->ngop', weight.reshape(groups, o // groups, cg * kk), col)
    out = out.reshape(n, o, ho, wo)
    if bias is not None:
        out = out + bias.view(1, o, 1, 1)
    return out


def deform_roi_pool_reference(input: Tensor, rois: Tensor, offset: Optional[Tensor], output_size: IntPair,
                              spatial_scale: float = 1.0, sampling_ratio: int = 0, gamma: float = 0.1) -> Tensor:
    """Reference deformable RoI pooling (mmcv's semantics; shapes as in :func:`deform_roi_pool`).

    Written from the definition, one RoI at a time: every sample of every bin is drawn explicitly and
    averaged, RoIAlign's border rule being bilinear sampling at coordinates clamped into the map, with
    samples outside ``[-1, size]`` set to zero. Differentiable in ``input`` and ``offset``.
    """
    ph, pw = to_pair(output_size, 'output_size')
    h, w = input.shape[2:]
    outs = []
    for k in range(rois.shape[0]):
        b = int(rois[k, 0])
        x1, y1, x2, y2 = (rois[k, j].to(input.dtype) * spatial_scale - 0.5 for j in range(1, 5))
        roi_w, roi_h = x2 - x1, y2 - y1
        bin_h, bin_w = roi_h / ph, roi_w / pw
        gh = sampling_ratio if sampling_ratio > 0 else int(torch.ceil(bin_h))
        gw = sampling_ratio if sampling_ratio > 0 else int(torch.ceil(bin_w))
        if offset is None:
            shift_x = shift_y = input.new_zeros(ph, pw)
        else:
            shift_x, shift_y = gamma * roi_w * offset[k, 0], gamma * roi_h * offset[k, 1]
        # sample coordinates (PH, PW, gh, gw)
        iy = (torch.arange(gh, dtype=input.dtype) + 0.5) * bin_h / max(gh, 1)
        ix = (torch.arange(gw, dtype=input.dtype) + 0.5) * bin_w / max(gw, 1)
        py = torch.arange(ph, dtype=input.dtype) * bin_h
        px = torch.arange(pw, dtype=input.dtype) * bin_w
        y = (y1 + shift_y)[:, :, None, None] + py[:, None, None, None] + iy[None, None, :, None]
        x = (x1 + shift_x)[:, :, None, None] + px[None, :, None, None] + ix[None, None, None, :]
        y, x = torch.broadcast_tensors(y, x)
        inside = ((y >= -1) & (y <= h) & (x >= -1) & (x <= w)).to(input.dtype)
        v = bilinear_sample(input[b:b + 1], y.clamp(0, h - 1).reshape(1, ph * pw, gh * gw),
                            x.clamp(0, w - 1).reshape(1, ph * pw, gh * gw))[0]  # (C, PH*PW, gh*gw)
        v = v * inside.reshape(1, ph * pw, gh * gw)
        outs.append(v.sum(-1).reshape(-1, ph, pw) / max(gh * gw, 1))
    if not outs:
        return input.new_zeros(0, input.shape[1], ph, pw)
    return torch.stack(outs)
