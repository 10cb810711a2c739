"""Triton kernels of deformable RoI pooling (``torch.ops.dcn_plugin.deform_roi_pool``).

The geometry is ``ops/csrc/deform_roi_pool.h``'s, in the same float32 order of operations: corners at
``x * spatial_scale - 0.5``, bins of ``roi size / output size`` moved by ``gamma * roi size * offset``, a
``grid_h x grid_w`` grid of samples per bin (``sampling_ratio``, or ``ceil(bin size)``) of which only
those inside ``[-1, size]`` are visited (found by bisection, so a huge RoI costs what the map holds),
RoIAlign's border rule, and the mean over the whole grid.

* forward: a program per (bin, channel block) sums the bin's samples over a channel vector;
* backward: a program per bin (and channel block, when the offset gradient is not wanted) adds each
  sample's share into a float32 input gradient with ``tl.atomic_add`` and, for the offset gradient,
  reduces the coordinate gradient over all channels itself, storing it once.

Input and its gradient are read as channels-last rows (channel stride 1). The host functions trust
their arguments: the op's validator, including its checks on the RoIs' values, has run
(:mod:`dcn_plugin.ops.triton` calls it).
"""
from typing import Optional, Sequence, Tuple

import torch
import triton
import triton.language as tl
from torch import Tensor
from torch._prims_common import suggest_memory_format  # the Python twin of C++'s suggest_memory_format

from .deform_conv import LaunchConfig, _channel_block, _device_of, _ix, _needs_int64, _rows, interpreted
from .sampling import bilinear_coord_grad, bilinear_taps_at

# one channel per thread; no spills on sm_80 / sm_90 in any dtype (scripts/check_triton_build.py)
ROI_POOL_CONFIG = LaunchConfig(block_p=1, block_o=1, block_c=64, num_warps=2, num_stages=1)


@triton.jit
def _axis_at(start, bin_size, grid_f, i):
    """Sample ``i`` of a bin's axis: ``start + ((i + 0.5) * bin) / grid`` (mmcv's expression)."""
    return start + ((tl.cast(i, tl.float32) + 0.5) * bin_size) / grid_f


@triton.jit
def _bin_axis(start, bin_size, grid, size):
    """The samples ``[lo, hi)`` of a bin's axis that lie inside ``[-1, size]`` (none for NaN positions):
    the positions are non-decreasing in ``i``, so two bisections find them."""
    grid_f = tl.cast(grid, tl.float32)
    size_f = tl.cast(size, tl.float32)
    lo = tl.cast(0, tl.int32)
    hi = tl.cast(grid, tl.int32)
    while lo < hi:  # first i with at(i) >= -1
        mid = lo + (hi - lo) // 2
        if _axis_at(start, bin_size, grid_f, mid) >= -1.0:
            hi = mid
        else:
            lo = mid + 1
    first = lo
    hi = tl.cast(grid, tl.int32)
    while lo < hi:  # first i >= first with at(i) > size
        mid = lo + (hi - lo) // 2
        if _axis_at(start, bin_size, grid_f, mid) > size_f:
            hi = mid
        else:
            lo = mid + 1
    return first, lo


@triton.jit
def _roi_align_axis(v, size):
    """RoIAlign's border rule on one axis (deform_sampling.h's roi_align_axis): the top/left tap ``i0``,
    the fraction ``l``, whether the sample exists at all (``v`` in ``[-1, size]``, not NaN) and whether
    it follows ``v`` (``0 < v < size - 1``)."""
    valid = (v >= -1.0) & (v <= tl.cast(size, tl.float32))
    pos = valid & (v > 0.0)
    i0 = tl.cast(tl.where(pos, v, 0.0), tl.int64)  # v in (0, size]: truncation is floor
    top = i0 >= size - 1
    moves = pos & (i0 < size - 1)
    i0 = tl.where(pos & top, size - 1, tl.where(pos, i0, 0))
    frac = tl.where(moves, v - tl.cast(i0, tl.float32), 0.0)
    return i0, frac, valid, moves


@triton.jit
def _roi_bin(rois, off, kb, PH, PW, spatial_scale, gamma, sampling_ratio, s_off_k, s_off_c, s_off_h, s_off_w,
             HAS_OFFSET: tl.constexpr):
    """Geometry of bin ``kb`` of the (K, PH, PW) bins (deform_roi_pool.h's roi_bin)."""
    bins = PH * PW
    k = kb // bins
    b = kb - k * bins
    ph = b // PW
    pw = b - ph * PW
    r = rois + tl.cast(k, tl.int64) * 5
    batch = tl.cast(tl.load(r), tl.int64)
    x0 = tl.load(r + 1) * spatial_scale - 0.5
    y0 = tl.load(r + 2) * spatial_scale - 0.5
    roi_w = (tl.load(r + 3) * spatial_scale - 0.5) - x0
    roi_h = (tl.load(r + 4) * spatial_scale - 0.5) - y0
    bin_h = roi_h / tl.cast(PH, tl.float32)
    bin_w = roi_w / tl.cast(PW, tl.float32)
    grid_h = tl.where(sampling_ratio > 0, sampling_ratio, tl.cast(tl.ceil(bin_h), tl.int32))
    grid_w = tl.where(sampling_ratio > 0, sampling_ratio, tl.cast(tl.ceil(bin_w), tl.int32))
    dy_scale = gamma * roi_h
    dx_scale = gamma * roi_w
    if HAS_OFFSET:
        o = off + tl.cast(k, tl.int64) * s_off_k + tl.cast(ph, tl.int64) * s_off_h + tl.cast(pw, tl.int64) * s_off_w
        x0 += dx_scale * tl.load(o).to(tl.float32)
        y0 += dy_scale * tl.load(o + s_off_c).to(tl.float32)
    y_start = y0 + tl.cast(ph, tl.float32) * bin_h
    x_start = x0 + tl.cast(pw, tl.float32) * bin_w
    count = tl.cast(grid_h, tl.int64) * grid_w
    count_f = tl.cast(tl.where(count > 0, count, 1), tl.float32)
    return k, ph, pw, batch, y_start, bin_h, grid_h, x_start, bin_w, grid_w, count_f, dy_scale, dx_scale


@triton.jit
def _bin_bounds(ys, bin_h, gh, xs, bin_w, gw, H, W, batch, s_in_n, IDX_64: tl.constexpr):
    """The sample rows ``[y_lo, y_hi)`` and columns ``[x_lo, x_hi)`` of a bin that touch the map, the grid
    sizes as float32 and the offset of the RoI's image."""
    y_lo, y_hi = _bin_axis(ys, bin_h, gh, H)
    x_lo, x_hi = _bin_axis(xs, bin_w, gw, W)
    return (y_lo, y_hi, x_lo, x_hi, tl.cast(gh, tl.float32), tl.cast(gw, tl.float32),
            _ix(batch, IDX_64) * s_in_n)


@triton.jit
def _sample_taps(y0a, ly, y_valid, x, H, W, base_n, s_in_h, s_in_w, IDX_64: tl.constexpr):
    """A sample on a bin row (the row's ``_roi_align_axis``) at column position ``x``: whether it moves with
    ``x``, its bilinear fractions, taps and weights, and the input offset of its top-left tap (the
    image's first pixel for a sample that touches nothing, so every address stays inside)."""
    x0a, lx, x_valid, x_moves = _roi_align_axis(x, W)
    y0, x0, ty, tx, v00, v01, v10, v11, w00, w01, w10, w11 = bilinear_taps_at(y0a, x0a, ly, lx, H, W,
                                                                           y_valid & x_valid)
    inside = v00 | v01 | v10 | v11
    row = base_n + _ix(tl.where(inside, y0, 0), IDX_64) * s_in_h + _ix(tl.where(inside, x0, 0), IDX_64) * s_in_w
    return row, x_moves, ty, tx, v00, v01, v10, v11, w00, w01, w10, w11


@triton.jit
def _load_taps(p, cmask, v00, v01, v10, v11, s_in_h, s_in_w):
    """The four taps' channel vectors at ``p`` (top-left), as float32, zero where a tap is outside."""
    return (tl.load(p, mask=(cmask & (v00 != 0)), other=0.0).to(tl.float32),
            tl.load(p + s_in_w, mask=(cmask & (v01 != 0)), other=0.0).to(tl.float32),
            tl.load(p + s_in_h, mask=(cmask & (v10 != 0)), other=0.0).to(tl.float32),
            tl.load(p + s_in_h + s_in_w, mask=(cmask & (v11 != 0)), other=0.0).to(tl.float32))


@triton.jit
def _roi_pool_forward_kernel(
        inp, rois, off, out, H, W, C, PH, PW, spatial_scale, gamma, sampling_ratio,
        s_in_n, s_in_h, s_in_w, s_off_k, s_off_c, s_off_h, s_off_w, s_out_k, s_out_c, s_out_h, s_out_w,
        HAS_OFFSET: tl.constexpr, IDX_64: tl.constexpr, BLOCK_C: tl.constexpr):
    kb = tl.program_id(0)
    cc, cmask = _channel_block(tl.program_id(1) * BLOCK_C, C, BLOCK_C, IDX_64)
    k, ph, pw, batch, ys, bin_h, gh, xs, bin_w, gw, count, dy_scale, dx_scale = _roi_bin(
        rois, off, kb, PH, PW, spatial_scale, gamma, sampling_ratio, s_off_k, s_off_c, s_off_h, s_off_w, HAS_OFFSET)
    y_lo, y_hi, x_lo, x_hi, gh_f, gw_f, base_n = _bin_bounds(ys, bin_h, gh, xs, bin_w, gw, H, W, batch, s_in_n,
                                                             IDX_64)
    acc = tl.zeros((BLOCK_C,), dtype=tl.float32)
    for iy in range(y_lo, y_hi):
        y0a, ly, y_valid, y_moves = _roi_align_axis(_axis_at(ys, bin_h, gh_f, iy), H)
        for ix in range(x_lo, x_hi):
            row, x_moves, ty, tx, v00, v01, v10, v11, w00, w01, w10, w11 = _sample_taps(
                y0a, ly, y_valid, _axis_at(xs, bin_w, gw_f, ix), H, W, base_n, s_in_h, s_in_w, IDX_64)
            t00, t01, t10, t11 = _load_taps(inp + row + cc, cmask, v00, v01, v10, v11, s_in_h, s_in_w)
            acc += w00 * t00 + w01 * t01 + w10 * t10 + w11 * t11
    o_ptr = (out + _ix(k, IDX_64) * s_out_k + cc * s_out_c + _ix(ph, IDX_64) * s_out_h
             + _ix(pw, IDX_64) * s_out_w)
    tl.store(o_ptr, (acc / count).to(out.dtype.element_ty), mask=cmask)


@triton.jit
def _roi_pool_backward_kernel(
        gout, inp, rois, off, gin, goff, H, W, C, PH, PW, spatial_scale, gamma, sampling_ratio,
        s_go_k, s_go_c, s_go_h, s_go_w, s_in_n, s_in_h, s_in_w, s_off_k, s_off_c, s_off_h, s_off_w,
        s_goff_k, s_goff_c, s_goff_h, s_goff_w,
        HAS_OFFSET: tl.constexpr, NEED_INPUT: tl.constexpr, NEED_OFFSET: tl.constexpr, IDX_64: tl.constexpr,
        BLOCK_C: tl.constexpr):
    # the input gradient buffer has the input rows' layout: one set of strides for both
    kb = tl.program_id(0)
    k, ph, pw, batch, ys, bin_h, gh, xs, bin_w, gw, count, dy_scale, dx_scale = _roi_bin(
        rois, off, kb, PH, PW, spatial_scale, gamma, sampling_ratio, s_off_k, s_off_c, s_off_h, s_off_w, HAS_OFFSET)
    # with the offset gradient a program reduces over every channel; without it, one block each
    c_first = tl.program_id(1) * BLOCK_C
    if NEED_OFFSET:
        c_last = C
    else:
        c_last = tl.minimum(C, c_first + BLOCK_C)
    y_lo, y_hi, x_lo, x_hi, gh_f, gw_f, base_n = _bin_bounds(ys, bin_h, gh, xs, bin_w, gw, H, W, batch, s_in_n,
                                                             IDX_64)
    go_base = gout + _ix(k, IDX_64) * s_go_k + _ix(ph, IDX_64) * s_go_h + _ix(pw, IDX_64) * s_go_w
    sy = tl.zeros((BLOCK_C,), dtype=tl.float32)
    sx = tl.zeros((BLOCK_C,), dtype=tl.float32)
    # the forward kernel's walk over the bin's samples (a Triton function cannot hold a loop body for both)
    for iy in range(y_lo, y_hi):
        y0a, ly, y_valid, y_moves = _roi_align_axis(_axis_at(ys, bin_h, gh_f, iy), H)
        for ix in range(x_lo, x_hi):
            row, x_moves, ty, tx, v00, v01, v10, v11, w00, w01, w10, w11 = _sample_taps(
                y0a, ly, y_valid, _axis_at(xs, bin_w, gw_f, ix), H, W, base_n, s_in_h, s_in_w, IDX_64)
            for c0 in range(c_first, c_last, BLOCK_C):
                cc, cmask = _channel_block(c0, c_last, BLOCK_C, IDX_64)
                gv = tl.load(go_base + cc * s_go_c, mask=cmask, other=0.0).to(tl.float32)
                if NEED_INPUT:
                    g = gv / count
                    p = gin + row + cc
                    tl.atomic_add(p, w00 * g, mask=(cmask & (v00 != 0)), sem='relaxed')
                    tl.atomic_add(p + s_in_w, w01 * g, mask=(cmask & (v01 != 0)), sem='relaxed')
                    tl.atomic_add(p + s_in_h, w10 * g, mask=(cmask & (v10 != 0)), sem='relaxed')
                    tl.atomic_add(p + s_in_h + s_in_w, w11 * g, mask=(cmask & (v11 != 0)), sem='relaxed')
                if NEED_OFFSET:
                    t00, t01, t10, t11 = _load_taps(inp + row + cc, cmask, v00, v01, v10, v11, s_in_h, s_in_w)
                    d_dy, d_dx = bilinear_coord_grad(ty, tx, t00, t01, t10, t11)
                    # the clamp holds a sample still along an axis where it does not move
                    sy += tl.where(y_moves, gv * d_dy, 0.0)
                    sx += tl.where(x_moves, gv * d_dx, 0.0)
    if NEED_OFFSET:
        o = goff + _ix(k, IDX_64) * s_goff_k + _ix(ph, IDX_64) * s_goff_h + _ix(pw, IDX_64) * s_goff_w
        tl.store(o, (dx_scale * tl.sum(sx, axis=0) / count).to(goff.dtype.element_ty))
        tl.store(o + s_goff_c, (dy_scale * tl.sum(sy, axis=0) / count).to(goff.dtype.element_ty))


def _launch(cfg: LaunchConfig, *tensors: Optional[Tensor]) -> dict:
    return dict(IDX_64=_needs_int64(*tensors), BLOCK_C=cfg.block_c, num_warps=cfg.num_warps,
                num_stages=cfg.num_stages)


def _offset_args(offset: Optional[Tensor], rois: Tensor) -> Tuple[Tensor, Sequence[int]]:
    return (rois, (0, 0, 0, 0)) if offset is None else (offset, offset.stride())


def roi_pool_forward(input: Tensor, rois: Tensor, offset: Optional[Tensor], output_size: Sequence[int],
                     spatial_scale: float, sampling_ratio: int, gamma: float) -> Tensor:
    """The op's forward on validated arguments: ``(K, C, PH, PW)``, contiguous (as the C++ kernels)."""
    n, c, h, w = input.shape
    k = rois.shape[0]
    ph, pw = output_size
    out = torch.empty((k, c, ph, pw), dtype=input.dtype, device=input.device)
    if k == 0 or c == 0:
        return out
    cfg = ROI_POOL_CONFIG
    inp = _rows(input)
    rois_acc = rois.to(torch.float32).contiguous()
    off, s_off = _offset_args(offset, rois_acc)
    with _device_of(input):
        _roi_pool_forward_kernel[(k * ph * pw, triton.cdiv(c, cfg.block_c))](
            inp, rois_acc, off, out, h, w, c, ph, pw, float(spatial_scale), float(gamma), int(sampling_ratio),
            inp.stride(0), inp.stride(2), inp.stride(3), *s_off, *out.stride(),
            HAS_OFFSET=offset is not None, **_launch(cfg, inp, off, out))
    return out


def roi_pool_backward(grad_output: Tensor, input: Tensor, rois: Tensor, offset: Optional[Tensor],
                      output_size: Sequence[int], spatial_scale: float, sampling_ratio: int, gamma: float,
                      output_mask: Sequence[bool]) -> Tuple[Tensor, Tensor]:
    """The op's backward on validated arguments: the gradients of (input, offset) in the C++ kernels'
    layouts (the input's own, channels-last or contiguous; offset contiguous); an empty tensor for one
    not asked for."""
    n, c, h, w = input.shape
    k = rois.shape[0]
    ph, pw = output_size
    want_in, want_off = output_mask[0], output_mask[1] and offset is not None
    rows = torch.zeros((n, h, w, c), dtype=torch.float32, device=input.device) if want_in else None
    g_off = torch.zeros(offset.shape, dtype=input.dtype, device=input.device) if want_off else None
    if k > 0 and c > 0 and (want_in or want_off):
        cfg = ROI_POOL_CONFIG
        inp = _rows(input)
        rois_acc = rois.to(torch.float32).contiguous()
        off, s_off = _offset_args(offset, rois_acc)
        gin = rows.permute(0, 3, 1, 2) if want_in else inp  # the input rows' layout
        goff = g_off if want_off else off
        grid = (k * ph * pw, 1 if want_off else triton.cdiv(c, cfg.block_c))
        with _device_of(input):
            _roi_pool_backward_kernel[grid](
                grad_output, inp, rois_acc, off, gin, goff, h, w, c, ph, pw, float(spatial_scale), float(gamma),
                int(sampling_ratio), *grad_output.stride(), inp.stride(0), inp.stride(2), inp.stride(3), *s_off,
                *(g_off.stride() if want_off else (0,) * 4),
                HAS_OFFSET=offset is not None, NEED_INPUT=want_in, NEED_OFFSET=want_off,
                **_launch(cfg, grad_output, inp, off, gin, goff))
    if want_in:  # in the input's layout, as the C++ kernels return it
        g_in = rows.permute(0, 3, 1, 2)
        if suggest_memory_format(input) != torch.channels_last:
            g_in = g_in.contiguous()
        g_in = g_in.to(input.dtype)
    else:
        g_in = input.new_empty(0)
    return g_in, g_off if want_off else input.new_empty(0)


__all__ = ['roi_pool_forward', 'roi_pool_backward', 'interpreted']
