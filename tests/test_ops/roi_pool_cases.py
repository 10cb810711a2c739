"""Shared problems of the deformable RoI pooling tests (CPU and CUDA)."""
import torch

# hyper-parameter sets: (name, spatial_scale / sampling_ratio / gamma)
HYPER = {
    'adaptive grid': dict(sampling_ratio=0, spatial_scale=0.5, gamma=0.1),
    'fixed 2x2 grid': dict(sampling_ratio=2, spatial_scale=0.5, gamma=0.1),
    'large gamma (samples leave the map)': dict(sampling_ratio=3, spatial_scale=0.5, gamma=1.5),
    'scale 1, 1x1 grid': dict(sampling_ratio=1, spatial_scale=1.0, gamma=0.3),
}


def make_case(n=2, c=3, h=9, w=11, k=6, out=(3, 2), offset=True, dtype=torch.float64, seed=0, spread=1.0,
              point=False, requires_grad=False):
    """Random input ``(n, c, h, w)``, RoIs ``(k, 5)`` in image coordinates at stride 2 (spatial_scale 0.5:
    some hang over the borders, more so with ``spread`` > 1; ``point``: RoI 0 is a single point) and
    offsets ``(k, 2, *out)`` (or ``None``)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, c, h, w, generator=g, dtype=torch.float64)
    x1 = torch.rand(k, generator=g, dtype=torch.float64) * 2 * w * spread - 3
    y1 = torch.rand(k, generator=g, dtype=torch.float64) * 2 * h * spread - 3
    rw = torch.rand(k, generator=g, dtype=torch.float64) * 2 * w * 0.8 + 0.3
    rh = torch.rand(k, generator=g, dtype=torch.float64) * 2 * h * 0.8 + 0.3
    b = torch.randint(n, (k,), generator=g).to(torch.float64)
    rois = torch.stack([b, x1, y1, x1 + rw, y1 + rh], 1)
    if point:
        rois[0, 3], rois[0, 4] = rois[0, 1], rois[0, 2]
    off = torch.randn(k, 2, *out, generator=g, dtype=torch.float64) * 0.4 if offset else None
    tensors = [x.to(dtype), rois.to(dtype), None if off is None else off.to(dtype)]
    if requires_grad:
        tensors[0].requires_grad_()
        if tensors[2] is not None:
            tensors[2].requires_grad_()
    return tensors
