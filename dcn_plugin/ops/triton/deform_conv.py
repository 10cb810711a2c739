"""Triton kernels of the modulated deformable convolution (``torch.ops.dcn_plugin.modulated_deform_conv2d``).

Implicit GEMMs: no columns buffer is written to memory; every column tile is sampled in registers.

* forward: a program owns a tile of (output positions) x (output channels of one conv group) and loops
  over the kernel points, the deform groups that meet its conv group, and blocks of their channels:
  it samples the column tile (bilinear, times the mask), and ``tl.dot`` adds it times the weight tile
  into a float32 accumulator; bias in the epilogue.
* backward, weight: a program owns a tile of (output channels) x (input channels of one deform group
  and conv group) at one kernel point and loops over all positions, recomputing the column tile:
  ``grad_weight += grad_out^T @ col`` in float32, stored once (deterministic).
* backward, the columns' gradient: a program owns a block of positions at one kernel point and one
  deform group, and loops over that deform group's channels; for each channel block it computes the
  columns' gradient ``grad_out @ weight`` (``tl.dot``), scatters it bilinearly into a float32 input
  gradient with ``tl.atomic_add`` (the one part whose summation order varies from run to run), and
  reduces it against the four taps for the offset and mask gradients, which are stored once.

Every load and store is masked. Indices are int32 where every tensor of the call spans fewer than 2^31
elements, int64 otherwise (the IDX_64 build), so tensors past 2^31 elements index correctly; grid
coordinates are int64 in both. Data in float16/bfloat16/float32, coordinates, weights and accumulation in
float32. The column tiles enter ``tl.dot`` in the data's dtype (as the C++ kernels' columns buffer
does); for float32 the dot follows ``torch.backends.cudnn.allow_tf32`` (TF32 on tensor cores when it is
on, as torch's convolutions).

The host functions here trust their arguments: the op's C++ validator has checked them
(:mod:`dcn_plugin.ops.triton` calls it).
"""
import contextlib
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import torch
import triton
import triton.language as tl
from torch import Tensor

from .sampling import bilinear_coord_grad, bilinear_taps_at

# dtypes the kernels are built for (float64 stays with the C++ kernels)
DTYPES = (torch.float16, torch.bfloat16, torch.float32)


@dataclass(frozen=True)
class LaunchConfig:
    """Tile sizes and launch parameters of one kernel (fixed: no autotuning, so what ships is what the
    ahead-of-time compile check sees)."""
    block_p: int
    block_o: int
    block_c: int
    num_warps: int
    num_stages: int
    # ptxas's register limit per thread (None: its own choice, which may cap at 128 with 8 warps and spill)
    maxnreg: Optional[int] = None


# Chosen so that no kernel spills registers on sm_80 or sm_90 in any dtype or index width, with room to
# spare (scripts/check_triton_build.py; docs/benchmarks.md has the figures). One pipeline stage: the
# loops' bodies are gathers, which software pipelining would only hold twice in registers. The column
# gradient needs up to about 190 registers in its int64 build: left to itself ptxas aims at 128 there
# and spills, so its limit is set.
FORWARD_CONFIG = LaunchConfig(block_p=32, block_o=64, block_c=16, num_warps=8, num_stages=1)
WEIGHT_GRAD_CONFIG = LaunchConfig(block_p=32, block_o=32, block_c=16, num_warps=8, num_stages=1)
COLUMN_GRAD_CONFIG = LaunchConfig(block_p=32, block_o=32, block_c=16, num_warps=8, num_stages=1, maxnreg=255)


def interpreted() -> bool:
    """Whether the kernels run in Triton's interpreter (``TRITON_INTERPRET=1`` when they were defined)."""
    return not isinstance(_conv_forward_kernel, triton.runtime.JITFunction)


def dot_precision() -> str:
    """``tl.dot``'s float32 precision: TF32 where torch's convolutions use it."""
    return 'tf32' if torch.backends.cudnn.allow_tf32 else 'ieee'


# ----------------------------------------------------------------------------------------- helpers
@triton.jit
def _ix(x, IDX_64: tl.constexpr):
    """``x`` as an index: int64 where a tensor may pass 2^31 elements (IDX_64), else int32."""
    if IDX_64:
        return tl.cast(x, tl.int64)
    else:
        return tl.cast(x, tl.int32)


@triton.jit
def _positions(start, NP, HW, WO, BLOCK_P: tl.constexpr, IDX_64: tl.constexpr):
    """The flattened (n, ho, wo) positions ``start, ..., start + BLOCK_P - 1``: indices and the in-range
    mask."""
    pos = _ix(start, IDX_64) + _ix(tl.arange(0, BLOCK_P), IDX_64)
    pmask = pos < NP
    pos = tl.where(pmask, pos, 0)
    n = pos // HW
    r = pos - n * HW
    ho = r // WO
    wo = r - ho * WO
    return n, ho, wo, pmask


@triton.jit
def _offset_and_taps(off, msk, n, ho, wo, pmask, d, k, K, KW, H, W, stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,
                     s_off_n, s_off_c, s_off_h, s_off_w, s_m_n, s_m_c, s_m_h, s_m_w, HAS_MASK: tl.constexpr,
                     IDX_64: tl.constexpr):
    """Kernel point ``k`` of deform group ``d`` at the positions ``(n, ho, wo)``: the taps of its samples
    and the mask (1 without one)."""
    i = k // KW
    j = k - i * KW
    # grid positions in int64 whatever the index width (split_coord's exact path beyond 2^24)
    by = tl.cast(ho, tl.int64) * stride_h - pad_h + tl.cast(i, tl.int64) * dil_h
    bx = tl.cast(wo, tl.int64) * stride_w - pad_w + tl.cast(j, tl.int64) * dil_w
    ch = _ix(2 * (d * K + k), IDX_64)
    base = n * s_off_n + ho * s_off_h + wo * s_off_w
    dy = tl.load(off + base + ch * s_off_c, mask=pmask, other=0.0).to(tl.float32)
    dx = tl.load(off + base + (ch + 1) * s_off_c, mask=pmask, other=0.0).to(tl.float32)
    y0, x0, ly, lx, v00, v01, v10, v11, w00, w01, w10, w11 = bilinear_taps_at(by, bx, dy, dx, H, W, pmask)
    # the taps of a sample inside the image lie in [-1, H] x [-1, W]: indices of any width hold them
    inside = v00 | v01 | v10 | v11
    y0 = _ix(tl.where(inside, y0, 0), IDX_64)
    x0 = _ix(tl.where(inside, x0, 0), IDX_64)
    if HAS_MASK:
        mch = _ix(d * K + k, IDX_64)
        m = tl.load(msk + n * s_m_n + mch * s_m_c + ho * s_m_h + wo * s_m_w, mask=pmask, other=0.0).to(tl.float32)
    else:
        m = tl.full(dy.shape, 1.0, tl.float32)
    return i, j, y0, x0, ly, lx, v00, v01, v10, v11, w00, w01, w10, w11, m


@triton.jit
def _sample_tile(inp, row, cc, cmask, v00, v01, v10, v11, w00, w01, w10, w11, s_in_h, s_in_w):
    """The columns of the channels ``cc`` (indices, masked by ``cmask``; the input is channels-last, channel
    stride 1) of the samples whose top-left taps start at the element offsets ``row``: a float32
    (positions, channels) tile, the weights ``w`` being the bilinear weights (times the mask)."""
    base = row[:, None] + cc[None, :]
    cm = cmask[None, :]
    v = w00[:, None] * tl.load(inp + base, mask=v00[:, None] & cm, other=0.0).to(tl.float32)
    v += w01[:, None] * tl.load(inp + base + s_in_w, mask=v01[:, None] & cm, other=0.0).to(tl.float32)
    v += w10[:, None] * tl.load(inp + base + s_in_h, mask=v10[:, None] & cm, other=0.0).to(tl.float32)
    v += w11[:, None] * tl.load(inp + base + s_in_h + s_in_w, mask=v11[:, None] & cm, other=0.0).to(tl.float32)
    return v


@triton.jit
def _group_out_block(pid, OG, BLOCK_O: tl.constexpr, IDX_64: tl.constexpr):
    """Program ``pid`` of a (conv group, output-channel block) axis: the group ``g``, the block's channels
    within the group, their mask and their absolute output-channel indices."""
    n_ob = tl.cdiv(OG, BLOCK_O)
    g = pid // n_ob
    oc = (pid - g * n_ob) * BLOCK_O + tl.arange(0, BLOCK_O)
    return g, oc < OG, _ix(g * OG + oc, IDX_64)


@triton.jit
def _channel_block(c0, c_end, BLOCK_C: tl.constexpr, IDX_64: tl.constexpr):
    """The channels ``[c0, c0 + BLOCK_C)`` below ``c_end``: their indices and mask."""
    cc = c0 + tl.arange(0, BLOCK_C)
    return _ix(cc, IDX_64), cc < c_end


@triton.jit
def _dot(a, b, acc, DOT_FP32: tl.constexpr, PRECISION: tl.constexpr):
    """``acc + a @ b`` in float32. Under the interpreter (DOT_FP32) the tiles go in as float32: its
    ``tl.dot`` on bfloat16 tiles returns wrong numbers. The values are those of the 16-bit tiles, so the
    products are what tensor cores compute."""
    if DOT_FP32:
        return tl.dot(a.to(tl.float32), b.to(tl.float32), acc)
    return tl.dot(a, b, acc, input_precision=PRECISION)


# ----------------------------------------------------------------------------------------- forward
@triton.jit
def _conv_forward_kernel(
        inp, off, msk, wgt, bias, out,
        NP, HW, WO, H, W, CG, OG, CD, KH, KW,
        stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,
        s_in_n, s_in_h, s_in_w, s_off_n, s_off_c, s_off_h, s_off_w, s_m_n, s_m_c, s_m_h, s_m_w,
        s_w_o, s_w_c, s_w_h, s_w_w, s_out_n, s_out_c, s_out_h, s_out_w,
        HAS_MASK: tl.constexpr, HAS_BIAS: tl.constexpr, IDX_64: tl.constexpr, DOT_FP32: tl.constexpr,
        PRECISION: tl.constexpr,
        BLOCK_P: tl.constexpr, BLOCK_O: tl.constexpr, BLOCK_C: tl.constexpr):
    pid_p = tl.program_id(0)
    g, omask, o_abs = _group_out_block(tl.program_id(1), OG, BLOCK_O, IDX_64)
    n, ho, wo, pmask = _positions(_ix(pid_p, IDX_64) * BLOCK_P, NP, HW, WO, BLOCK_P, IDX_64)
    K = KH * KW
    c_lo = g * CG
    c_hi = c_lo + CG
    acc = tl.zeros((BLOCK_P, BLOCK_O), dtype=tl.float32)
    for k in range(0, K):
        for d in range(c_lo // CD, (c_hi - 1) // CD + 1):  # the deform groups meeting conv group g
            i, j, y0, x0, ly, lx, v00, v01, v10, v11, w00, w01, w10, w11, m = _offset_and_taps(
                off, msk, n, ho, wo, pmask, d, k, K, KW, H, W, stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,
                s_off_n, s_off_c, s_off_h, s_off_w, s_m_n, s_m_c, s_m_h, s_m_w, HAS_MASK, IDX_64)
            row = n * s_in_n + y0 * s_in_h + x0 * s_in_w
            w00, w01, w10, w11 = w00 * m, w01 * m, w10 * m, w11 * m
            c_start = tl.maximum(c_lo, d * CD)
            c_end = tl.minimum(c_hi, d * CD + CD)
            for c0 in range(c_start, c_end, BLOCK_C):
                cc, cmask = _channel_block(c0, c_end, BLOCK_C, IDX_64)
                col = _sample_tile(inp, row, cc, cmask, v00, v01, v10, v11, w00, w01, w10, w11, s_in_h, s_in_w)
                w_ptr = (wgt + (o_abs * s_w_o)[None, :] + ((cc - c_lo) * s_w_c)[:, None] + _ix(i, IDX_64) * s_w_h
                         + _ix(j, IDX_64) * s_w_w)
                wt = tl.load(w_ptr, mask=cmask[:, None] & omask[None, :], other=0.0)  # (C block, O block)
                acc = _dot(col.to(inp.dtype.element_ty), wt, acc, DOT_FP32, PRECISION)
    if HAS_BIAS:
        acc += tl.load(bias + o_abs, mask=omask, other=0.0).to(tl.float32)[None, :]
    o_ptr = out + (n * s_out_n + ho * s_out_h + wo * s_out_w)[:, None] + (o_abs * s_out_c)[None, :]
    tl.store(o_ptr, acc.to(out.dtype.element_ty), mask=pmask[:, None] & omask[None, :])


# ----------------------------------------------------------------------------------------- backward
@triton.jit
def _conv_weight_grad_kernel(
        gout, inp, off, msk, gw,
        NP, HW, WO, H, W, CG, OG, CD, KH, KW, NSEG, NCB,
        stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,
        s_go_n, s_go_c, s_go_h, s_go_w, s_in_n, s_in_h, s_in_w, s_off_n, s_off_c, s_off_h, s_off_w,
        s_m_n, s_m_c, s_m_h, s_m_w, s_gw_o, s_gw_c, s_gw_h, s_gw_w,
        HAS_MASK: tl.constexpr, IDX_64: tl.constexpr, DOT_FP32: tl.constexpr, PRECISION: tl.constexpr,
        BLOCK_P: tl.constexpr, BLOCK_O: tl.constexpr, BLOCK_C: tl.constexpr):
    # program (g, output block) x (kernel point, segment of a deform group inside conv group g, channel block)
    g, omask, o_abs = _group_out_block(tl.program_id(0), OG, BLOCK_O, IDX_64)
    pid_c = tl.program_id(1)
    cb = pid_c % NCB
    t = pid_c // NCB
    s = t % NSEG
    k = t // NSEG
    K = KH * KW
    c_lo = g * CG
    c_hi = c_lo + CG
    d = c_lo // CD + s
    c_start = tl.maximum(c_lo, d * CD) + cb * BLOCK_C
    c_end = tl.minimum(c_hi, d * CD + CD)
    cc, cmask = _channel_block(c_start, c_end, BLOCK_C, IDX_64)
    np_end = tl.where(c_start < c_end, NP, 0)  # a program past its group's segments does nothing
    acc = tl.zeros((BLOCK_O, BLOCK_C), dtype=tl.float32)
    for p0 in range(0, np_end, BLOCK_P):
        n, ho, wo, pmask = _positions(p0, NP, HW, WO, BLOCK_P, IDX_64)
        i, j, y0, x0, ly, lx, v00, v01, v10, v11, w00, w01, w10, w11, m = _offset_and_taps(
            off, msk, n, ho, wo, pmask, d, k, K, KW, H, W, stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,
            s_off_n, s_off_c, s_off_h, s_off_w, s_m_n, s_m_c, s_m_h, s_m_w, HAS_MASK, IDX_64)
        row = n * s_in_n + y0 * s_in_h + x0 * s_in_w
        col = _sample_tile(inp, row, cc, cmask, v00, v01, v10, v11, w00 * m, w01 * m, w10 * m, w11 * m, s_in_h,
                           s_in_w)
        go_ptr = gout + (o_abs * s_go_c)[:, None] + (n * s_go_n + ho * s_go_h + wo * s_go_w)[None, :]
        go_t = tl.load(go_ptr, mask=omask[:, None] & pmask[None, :], other=0.0)  # (O block, positions)
        acc = _dot(go_t, col.to(inp.dtype.element_ty), acc, DOT_FP32, PRECISION)
    i = k // KW
    j = k - i * KW
    gw_ptr = (gw + (o_abs * s_gw_o)[:, None] + ((cc - c_lo) * s_gw_c)[None, :] + _ix(i, IDX_64) * s_gw_h
              + _ix(j, IDX_64) * s_gw_w)
    tl.store(gw_ptr, acc.to(gw.dtype.element_ty), mask=omask[:, None] & cmask[None, :] & (c_start < c_end))


@triton.jit
def _scatter_reduce_tap(inp, gin, gcol, base, tmask, coef, NEED_INPUT: tl.constexpr, NEED_TAPS: tl.constexpr):
    """One tap of a channel block: adds ``gcol * coef`` into the input gradient (atomically) and returns
    ``sum over channels of gcol * tap value`` per position (0 when the tap sums are not needed)."""
    if NEED_INPUT:
        tl.atomic_add(gin + base, gcol * coef[:, None], mask=tmask, sem='relaxed')
    if NEED_TAPS:
        v = tl.load(inp + base, mask=tmask, other=0.0).to(tl.float32)
        return tl.sum(gcol * v, axis=1)
    else:
        return tl.zeros((gcol.shape[0],), dtype=tl.float32)


@triton.jit
def _conv_column_grad_kernel(
        gout, inp, off, msk, wgt, gin, goff, gmsk,
        NP, HW, WO, H, W, CG, OG, CD, KH, KW,
        stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,
        s_go_n, s_go_c, s_go_h, s_go_w, s_in_n, s_in_h, s_in_w, s_off_n, s_off_c, s_off_h, s_off_w,
        s_m_n, s_m_c, s_m_h, s_m_w, s_w_o, s_w_c, s_w_h, s_w_w,
        s_goff_n, s_goff_c, s_goff_h, s_goff_w, s_gm_n, s_gm_c, s_gm_h, s_gm_w,
        HAS_MASK: tl.constexpr, NEED_INPUT: tl.constexpr, NEED_OFFSET: tl.constexpr, NEED_MASK: tl.constexpr,
        IDX_64: tl.constexpr, DOT_FP32: tl.constexpr, PRECISION: tl.constexpr,
        BLOCK_P: tl.constexpr, BLOCK_O: tl.constexpr, BLOCK_C: tl.constexpr):
    # program (position block) x (kernel point k, deform group d)
    pid_p = tl.program_id(0)
    pid_kd = tl.program_id(1)
    K = KH * KW
    d = pid_kd // K
    k = pid_kd - d * K
    n, ho, wo, pmask = _positions(_ix(pid_p, IDX_64) * BLOCK_P, NP, HW, WO, BLOCK_P, IDX_64)
    i, j, y0, x0, ly, lx, v00, v01, v10, v11, w00, w01, w10, w11, m = _offset_and_taps(
        off, msk, n, ho, wo, pmask, d, k, K, KW, H, W, stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,
        s_off_n, s_off_c, s_off_h, s_off_w, s_m_n, s_m_c, s_m_h, s_m_w, HAS_MASK, IDX_64)
    NEED_TAPS: tl.constexpr = NEED_OFFSET or NEED_MASK
    s00 = tl.zeros((BLOCK_P,), dtype=tl.float32)
    s01 = tl.zeros((BLOCK_P,), dtype=tl.float32)
    s10 = tl.zeros((BLOCK_P,), dtype=tl.float32)
    s11 = tl.zeros((BLOCK_P,), dtype=tl.float32)
    go_base = n * s_go_n + ho * s_go_h + wo * s_go_w
    in_base = n * s_in_n + y0 * s_in_h + x0 * s_in_w
    # the input gradient's coefficients; the rest (fractions, weights, mask) is recomputed after the loop,
    # which keeps fewer values alive through it
    c00, c01, c10, c11 = w00 * m, w01 * m, w10 * m, w11 * m
    d_lo = d * CD
    d_hi = d_lo + CD
    for g in range(d_lo // CG, (d_hi - 1) // CG + 1):  # the conv groups meeting deform group d
        c_start = tl.maximum(d_lo, g * CG)
        c_end = tl.minimum(d_hi, g * CG + CG)
        for c0 in range(c_start, c_end, BLOCK_C):
            cc, cmask = _channel_block(c0, c_end, BLOCK_C, IDX_64)
            # the columns' gradient of this channel block: grad_out (positions, O/g) @ weight (O/g, channels)
            gcol = tl.zeros((BLOCK_P, BLOCK_C), dtype=tl.float32)
            for o0 in range(0, OG, BLOCK_O):
                oc = o0 + tl.arange(0, BLOCK_O)
                omask = oc < OG
                o_abs = _ix(g * OG + oc, IDX_64)
                go = tl.load(gout + go_base[:, None] + (o_abs * s_go_c)[None, :],
                             mask=pmask[:, None] & omask[None, :], other=0.0)
                w_ptr = (wgt + (o_abs * s_w_o)[:, None] + ((cc - g * CG) * s_w_c)[None, :]
                         + _ix(i, IDX_64) * s_w_h + _ix(j, IDX_64) * s_w_w)
                wt = tl.load(w_ptr, mask=omask[:, None] & cmask[None, :], other=0.0)
                gcol = _dot(go, wt, gcol, DOT_FP32, PRECISION)
            cm = cmask[None, :]
            # the input gradient buffer has the input rows' layout: one offset tile serves both
            b = in_base[:, None] + cc[None, :]
            s00 += _scatter_reduce_tap(inp, gin, gcol, b, v00[:, None] & cm, c00, NEED_INPUT, NEED_TAPS)
            s01 += _scatter_reduce_tap(inp, gin, gcol, b + s_in_w, v01[:, None] & cm, c01, NEED_INPUT, NEED_TAPS)
            s10 += _scatter_reduce_tap(inp, gin, gcol, b + s_in_h, v10[:, None] & cm, c10, NEED_INPUT, NEED_TAPS)
            s11 += _scatter_reduce_tap(inp, gin, gcol, b + s_in_h + s_in_w, v11[:, None] & cm, c11, NEED_INPUT,
                                       NEED_TAPS)
    n, ho, wo, pmask = _positions(_ix(pid_p, IDX_64) * BLOCK_P, NP, HW, WO, BLOCK_P, IDX_64)
    i, j, y0, x0, ly, lx, v00, v01, v10, v11, w00, w01, w10, w11, m = _offset_and_taps(
        off, msk, n, ho, wo, pmask, d, k, K, KW, H, W, stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,
        s_off_n, s_off_c, s_off_h, s_off_w, s_m_n, s_m_c, s_m_h, s_m_w, HAS_MASK, IDX_64)
    if NEED_OFFSET:
        d_dy, d_dx = bilinear_coord_grad(ly, lx, s00, s01, s10, s11)
        ch = _ix(2 * (d * K + k), IDX_64)
        o_ptr = goff + n * s_goff_n + ho * s_goff_h + wo * s_goff_w + ch * s_goff_c
        tl.store(o_ptr, (d_dy * m).to(goff.dtype.element_ty), mask=pmask)
        tl.store(o_ptr + s_goff_c, (d_dx * m).to(goff.dtype.element_ty), mask=pmask)
    if NEED_MASK:
        gm = w00 * s00 + w01 * s01 + w10 * s10 + w11 * s11
        mch = _ix(d * K + k, IDX_64)
        tl.store(gmsk + n * s_gm_n + ho * s_gm_h + wo * s_gm_w + mch * s_gm_c, gm.to(gmsk.dtype.element_ty),
                 mask=pmask)


# ----------------------------------------------------------------------------------------- host side
@dataclass(frozen=True)
class _Geometry:
    n: int
    c: int
    h: int
    w: int
    o: int
    kh: int
    kw: int
    ho: int
    wo: int
    groups: int
    deform_groups: int

    @property
    def cg(self) -> int:
        return self.c // self.groups

    @property
    def og(self) -> int:
        return self.o // self.groups

    @property
    def cd(self) -> int:
        return self.c // self.deform_groups

    @property
    def np(self) -> int:
        return self.n * self.ho * self.wo


def _geometry(input: Tensor, weight: Tensor, stride: Sequence[int], padding: Sequence[int],
              dilation: Sequence[int], groups: int, deform_groups: int) -> _Geometry:
    n, c, h, w = input.shape
    o, _, kh, kw = weight.shape
    ho = (h + 2 * padding[0] - (dilation[0] * (kh - 1) + 1)) // stride[0] + 1
    wo = (w + 2 * padding[1] - (dilation[1] * (kw - 1) + 1)) // stride[1] + 1
    return _Geometry(n, c, h, w, o, kh, kw, ho, wo, groups, deform_groups)


def _rows(t: Tensor) -> Tensor:
    """``t`` as channels-last rows with the standard strides (channel stride 1, as the kernels read the
    input, and the strides of the input gradient buffer): ``t`` itself when it has them, else one copy
    (the C++ drivers make the same one)."""
    n, c, h, w = t.shape
    if t.stride() == (h * w * c, 1, w * c, c):
        return t
    return torch.empty_like(t, memory_format=torch.channels_last).copy_(t)


def _nhw_strides(t: Tensor) -> List[int]:
    return [t.stride(0), t.stride(2), t.stride(3)]


def _mask_args(mask: Optional[Tensor], offset: Tensor) -> Tuple[Tensor, List[int]]:
    # without a mask the kernels read none: any pointer and zero strides
    return (offset, [0, 0, 0, 0]) if mask is None else (mask, list(mask.stride()))


def _common_args(geo: _Geometry, stride, padding, dilation) -> list:
    return [geo.np, geo.ho * geo.wo, geo.wo, geo.h, geo.w, geo.cg, geo.og, geo.cd, geo.kh, geo.kw,
            stride[0], stride[1], padding[0], padding[1], dilation[0], dilation[1]]


def _needs_int64(*tensors: Optional[Tensor]) -> bool:
    """Whether an element offset in one of the tensors can pass int32 (its extent through its strides)."""
    limit = 2 ** 31 - 1
    for t in tensors:
        if t is not None and 1 + sum((s - 1) * abs(st) for s, st in zip(t.shape, t.stride()) if s > 0) > limit:
            return True
    return False


def _launch_flags(cfg: LaunchConfig, *tensors: Optional[Tensor]) -> dict:
    return dict(IDX_64=_needs_int64(*tensors), DOT_FP32=interpreted(), PRECISION=dot_precision(),
                BLOCK_P=cfg.block_p, BLOCK_O=cfg.block_o, BLOCK_C=cfg.block_c, num_warps=cfg.num_warps,
                num_stages=cfg.num_stages, **({} if cfg.maxnreg is None else {'maxnreg': cfg.maxnreg}))


def _device_of(t: Tensor):
    # the launch goes to the tensors' GPU; the interpreter runs on the CPU
    return torch.cuda.device(t.device) if t.is_cuda else contextlib.nullcontext()


def conv_forward(input: Tensor, offset: Tensor, mask: Optional[Tensor], weight: Tensor, bias: Optional[Tensor],
                 stride: Sequence[int], padding: Sequence[int], dilation: Sequence[int], groups: int,
                 deform_groups: int) -> Tensor:
    """The op's forward on validated arguments: ``(N, O, Ho, Wo)``, contiguous (as the C++ kernels)."""
    geo = _geometry(input, weight, stride, padding, dilation, groups, deform_groups)
    out = torch.empty((geo.n, geo.o, geo.ho, geo.wo), dtype=input.dtype, device=input.device)
    if geo.np == 0 or geo.o == 0:
        return out
    if geo.c == 0:  # no input channels: the convolution sums nothing
        out.zero_()
        return out if bias is None else out.add_(bias.view(1, -1, 1, 1))
    cfg = FORWARD_CONFIG
    msk, s_m = _mask_args(mask, offset)
    grid = (triton.cdiv(geo.np, cfg.block_p), geo.groups * triton.cdiv(geo.og, cfg.block_o))
    inp = _rows(input)
    with _device_of(input):
        _conv_forward_kernel[grid](
            inp, offset, msk, weight, offset if bias is None else bias.contiguous(), out,  # bias: unit stride
            *_common_args(geo, stride, padding, dilation),
            *_nhw_strides(inp), *offset.stride(), *s_m, *weight.stride(), *out.stride(),
            HAS_MASK=mask is not None, HAS_BIAS=bias is not None,
            **_launch_flags(cfg, inp, offset, mask, weight, out))
    return out


def conv_backward(grad_output: Tensor, input: Tensor, offset: Tensor, mask: Optional[Tensor], weight: Tensor,
                  stride: Sequence[int], padding: Sequence[int], dilation: Sequence[int], groups: int,
                  deform_groups: int, output_mask: Sequence[bool]) -> Tuple[Tensor, ...]:
    """The op's backward on validated arguments: the gradients of (input, offset, mask, weight, bias) in
    the C++ kernels' layouts (input, offset and mask channels-last, weight contiguous); an empty tensor
    for each one not asked for."""
    geo = _geometry(input, weight, stride, padding, dilation, groups, deform_groups)
    want_in, want_off, want_w, want_b = output_mask[0], output_mask[1], output_mask[3], output_mask[4]
    want_msk = output_mask[2] and mask is not None
    cl = torch.channels_last

    def none() -> Tensor:
        return input.new_empty(0)

    acc_dtype = torch.float32
    inp = _rows(input)
    # float32 accumulation, in the input rows' layout (channels-last, the strides the kernel reads)
    g_in_acc = torch.zeros_like(inp, dtype=acc_dtype) if want_in else None
    g_off = torch.empty(offset.shape, dtype=offset.dtype, device=offset.device, memory_format=cl) \
        if want_off else none()
    g_msk = torch.empty(mask.shape, dtype=mask.dtype, device=mask.device, memory_format=cl) \
        if want_msk else none()
    g_w = torch.empty(weight.shape, dtype=weight.dtype, device=weight.device) if want_w else none()
    g_b = grad_output.sum((0, 2, 3)) if want_b else none()

    if geo.np == 0 or geo.c == 0 or geo.o == 0:  # nothing to sum: the gradients are zeros
        for t in (g_off, g_msk, g_w):
            t.zero_()
    else:
        msk, s_m = _mask_args(mask, offset)
        common = _common_args(geo, stride, padding, dilation)
        with _device_of(input):
            if want_w:
                cfg = WEIGHT_GRAD_CONFIG
                d_first = [g * geo.cg // geo.cd for g in range(geo.groups)]
                d_last = [((g + 1) * geo.cg - 1) // geo.cd for g in range(geo.groups)]
                nseg = max(b - a + 1 for a, b in zip(d_first, d_last))
                ncb = triton.cdiv(min(geo.cg, geo.cd), cfg.block_c)
                grid = (geo.groups * triton.cdiv(geo.og, cfg.block_o), geo.kh * geo.kw * nseg * ncb)
                _conv_weight_grad_kernel[grid](
                    grad_output, inp, offset, msk, g_w, *common[:10], nseg, ncb, *common[10:],
                    *grad_output.stride(), *_nhw_strides(inp), *offset.stride(), *s_m, *g_w.stride(),
                    HAS_MASK=mask is not None, **_launch_flags(cfg, grad_output, inp, offset, mask, g_w))
            if want_in or want_off or want_msk:
                cfg = COLUMN_GRAD_CONFIG
                grid = (triton.cdiv(geo.np, cfg.block_p), geo.kh * geo.kw * geo.deform_groups)
                # the input gradient buffer and the input rows share one layout: the kernel reads one set
                # of strides for both
                gi = g_in_acc if want_in else offset
                goff = g_off if want_off else offset
                gm = g_msk if want_msk else offset
                _conv_column_grad_kernel[grid](
                    grad_output, inp, offset, msk, weight, gi, goff, gm, *common,
                    *grad_output.stride(), *_nhw_strides(inp), *offset.stride(), *s_m, *weight.stride(),
                    *(goff.stride() if want_off else (0,) * 4),
                    *(gm.stride() if want_msk else (0,) * 4),
                    HAS_MASK=mask is not None, NEED_INPUT=want_in, NEED_OFFSET=want_off, NEED_MASK=want_msk,
                    **_launch_flags(cfg, grad_output, inp, offset, mask, weight, g_in_acc, g_off, g_msk))
    if want_in:
        g_in = g_in_acc if input.dtype == acc_dtype else g_in_acc.to(input.dtype)
    else:
        g_in = none()
    return g_in, g_off, g_msk, g_w, g_b
