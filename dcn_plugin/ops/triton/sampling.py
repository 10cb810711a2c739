"""Bilinear sampling maths of the Triton kernels: the twin of ``ops/csrc/deform_sampling.h``.

The same rules, written for tiles of samples (every argument a tensor of one shape, float32 / int64):

* the sample of grid position ``p`` (an integer) moved by the offset ``d`` lies at ``float32(p) + d``,
  rounded once, as torchvision and mmcv compute it; beyond ``2**24`` (where ``float32(p)`` is no longer
  exact) the integer part ``p + floor(d)`` and the fraction ``d - floor(d)`` are kept apart;
* a sample with ``y <= -1``, ``y >= H``, ``x <= -1``, ``x >= W`` is zero altogether, and so is one whose
  offset is NaN, infinite or beyond ``2**40`` in magnitude; of the others, each of the four taps
  outside the image counts as zero;
* weights and coordinates in float32 whatever the data's dtype; ``floor`` is a real floor.
"""
import triton
import triton.language as tl

# Offsets beyond this magnitude (and NaN/inf) put a sample far outside any image (deform_sampling.h's
# max_sampling_offset); the grid positions below it are exact in float32 (exact_grid_limit).
MAX_SAMPLING_OFFSET = tl.constexpr(1099511627776.0)  # 2**40
EXACT_GRID_LIMIT = tl.constexpr(16777216)  # 2**24


@triton.jit
def split_coord(p, d):
    """One axis of a sample: grid position ``p`` (int64) moved by ``d`` (float32, finite and below
    2**40 in magnitude) -> the floor row ``i0`` (int64) and the fraction ``l`` in [0, 1) (float32)."""
    near = (p < EXACT_GRID_LIMIT) & (p > -EXACT_GRID_LIMIT)
    v = p.to(tl.float32) + d
    f_near = tl.floor(v)
    f_far = tl.floor(d)
    i0 = tl.where(near, f_near.to(tl.int64), p + f_far.to(tl.int64))
    frac = tl.where(near, v - f_near, d - f_far)
    return i0, frac


@triton.jit
def bilinear_taps_at(by, bx, dy, dx, height, width, valid):
    """The taps of the samples at the integer grid positions ``(by, bx)`` (int64) moved by ``(dy, dx)``
    (float32), in an image of ``height x width``; ``valid`` masks the samples that exist at all.

    Returns ``(y0, x0, ly, lx, v00, v01, v10, v11, w00, w01, w10, w11)``: the top-left tap, the
    fractional parts, which taps lie inside the image (False everywhere for a zero sample), and the
    bilinear weights (0 for the taps outside).
    """
    # written so that NaN fails the test
    ok = (valid & (dy > -MAX_SAMPLING_OFFSET) & (dy < MAX_SAMPLING_OFFSET) & (dx > -MAX_SAMPLING_OFFSET)
          & (dx < MAX_SAMPLING_OFFSET))
    dy = tl.where(ok, dy, 0.0)
    dx = tl.where(ok, dx, 0.0)
    y0, ly = split_coord(by, dy)
    x0, lx = split_coord(bx, dx)
    # y = y0 + ly lies in (-1, height) and x = x0 + lx in (-1, width)
    in_range = (ok & ((y0 > -1) | ((y0 == -1) & (ly > 0.0))) & (y0 < height)
                & ((x0 > -1) | ((x0 == -1) & (lx > 0.0))) & (x0 < width))
    hy = 1.0 - ly
    hx = 1.0 - lx
    y0_in = in_range & (y0 >= 0)
    y1_in = in_range & (y0 + 1 <= height - 1)
    x0_in = x0 >= 0
    x1_in = x0 + 1 <= width - 1
    v00 = y0_in & x0_in
    v01 = y0_in & x1_in
    v10 = y1_in & x0_in
    v11 = y1_in & x1_in
    w00 = tl.where(v00, hy * hx, 0.0)
    w01 = tl.where(v01, hy * lx, 0.0)
    w10 = tl.where(v10, ly * hx, 0.0)
    w11 = tl.where(v11, ly * lx, 0.0)
    return y0, x0, ly, lx, v00, v01, v10, v11, w00, w01, w10, w11


@triton.jit
def bilinear_coord_grad(ly, lx, s00, s01, s10, s11):
    """d/dy and d/dx of ``(1-ly)(1-lx) s00 + (1-ly) lx s01 + ly (1-lx) s10 + ly lx s11``, given the four
    tap values (or sums of them times a gradient; zero for taps outside the image)."""
    hy = 1.0 - ly
    hx = 1.0 - lx
    d_dy = hx * (s10 - s00) + lx * (s11 - s01)
    d_dx = hy * (s01 - s00) + ly * (s11 - s10)
    return d_dy, d_dx
