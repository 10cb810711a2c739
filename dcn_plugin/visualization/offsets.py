"""Sampling locations of deformable conv layers, stacked through consecutive layers (as the DCN
papers' figures draw them), and their drawing.

For an output position ``p`` of the last deformable layer, its kernel samples ``kh*kw`` locations
``p*stride - pad + k*dilation + offset_k(p)`` of its input, weighted (DCNv2) by the modulation
``mask_k(p)``. Each of those locations is an output position of the previous deformable layer (after
mapping between the two maps' strides through image coordinates), whose kernel samples again:
``L`` layers give ``(kh*kw)**L`` points, each weighted by the product of the masks along its path.
Layers between two deformable layers (1x1 convs, the plain 3x3 conv of a BasicBlock, residual
connections) are not followed: this is the approximation the DCN papers' figures make.
Offsets and masks at fractional positions are interpolated bilinearly.
"""
import contextlib
from dataclasses import dataclass
from typing import Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..ops import DeformConv2dPack, ModulatedDeformConv2dPack

__all__ = ['DCNRecord', 'record_dcn_layers', 'stack_sampling_locations', 'draw_sampling_locations',
           'check_num_layers', 'check_group', 'select_panel_boxes', 'MAX_STACKED_POINTS', 'PANEL_IOU']

#: the most sampling points stacked for one position ((kh*kw)**num_layers): 9**5 for 3x3 kernels.
#: The count grows geometrically with the layers (9**12 points would need hundreds of GB).
MAX_STACKED_POINTS = 9 ** 5
#: detections whose boxes overlap a higher-scoring chosen one by more than this IoU get no panel of their own:
#: mmdet's NMS works per class, so one object can come out twice (two labels) and would give two near-identical
#: panels
PANEL_IOU = 0.5
#: the colour (BGR) of the detection a panel belongs to
PANEL_BOX_COLOUR = (255, 0, 255)


@dataclass
class DCNRecord:
    """What one deformable layer did in a forward pass (first sample of the batch).

    Attributes:
        name: module name in the model.
        offset: ``(dg, kh*kw, 2, Ho, Wo)`` (dy, dx) per group and kernel point.
        mask: ``(dg, kh*kw, Ho, Wo)``; ones for DCNv1.
        modulated: whether the layer is DCNv2.
        in_hw, out_hw: input and output map sizes.
        kernel_size, stride, padding, dilation: the layer's geometry (pairs).
    """
    name: str
    offset: Tensor
    mask: Tensor
    modulated: bool
    in_hw: Tuple[int, int]
    out_hw: Tuple[int, int]
    kernel_size: Tuple[int, int]
    stride: Tuple[int, int]
    padding: Tuple[int, int]
    dilation: Tuple[int, int]


def _offset_and_mask(module: nn.Module, x: Tensor) -> Tuple[Tensor, Tensor, bool]:
    """The layer's own offsets and mask for the first sample of ``x``, as ``(dg, kh*kw, 2, Ho, Wo)`` (dy, dx)
    and ``(dg, kh*kw, Ho, Wo)`` (ones for DCNv1), and whether it is DCNv2."""
    kh, kw = module.kernel_size
    dg = module.deform_groups
    offset, mask = module.offset_and_mask(x[:1])
    ho, wo = offset.shape[-2:]
    modulated = mask is not None
    mask = mask.float().reshape(dg, kh * kw, ho, wo) if modulated else offset.new_ones(dg, kh * kw, ho, wo).float()
    # channel layout: per group, per kernel point, interleaved (dy, dx)
    return offset.float().reshape(dg, kh * kw, 2, ho, wo), mask, modulated


@contextlib.contextmanager
def record_dcn_layers(model: nn.Module) -> Iterator[List[DCNRecord]]:
    """Context manager: the list it yields fills with one :class:`DCNRecord` per deformable layer
    call, in forward order, during forward passes run inside the block."""
    records: List[DCNRecord] = []
    handles = []

    def make_hook(name: str):
        def hook(module, inputs, output):
            with torch.no_grad():
                x = inputs[0]
                offset, mask, modulated = _offset_and_mask(module, x)
            records.append(DCNRecord(name, offset.cpu(), mask.cpu(), modulated, tuple(x.shape[-2:]),
                                     tuple(output.shape[-2:]), tuple(module.kernel_size), tuple(module.stride),
                                     tuple(module.padding), tuple(module.dilation)))
        return hook

    for name, module in model.named_modules():
        if isinstance(module, (ModulatedDeformConv2dPack, DeformConv2dPack)):
            handles.append(module.register_forward_hook(make_hook(name)))
    try:
        yield records
    finally:
        for h in handles:
            h.remove()


def _sample_maps(maps: Tensor, yx: Tensor) -> Tensor:
    """Bilinear values of ``maps (C, H, W)`` at ``yx (P, 2)`` map coordinates (border-clamped) -> ``(P, C)``."""
    c, h, w = maps.shape
    y = yx[:, 0].clamp(0, h - 1)
    x = yx[:, 1].clamp(0, w - 1)
    gx = x / max(w - 1, 1) * 2 - 1
    gy = y / max(h - 1, 1) * 2 - 1
    grid = torch.stack((gx, gy), dim=-1).view(1, 1, -1, 2)
    out = F.grid_sample(maps[None], grid, mode='bilinear', padding_mode='border', align_corners=True)
    return out[0, :, 0].t()


def check_num_layers(num_layers: int, available: Optional[int] = None,
                     points_per_layer: Sequence[int] = (9,)) -> None:
    """Raise ``ValueError`` unless ``num_layers`` is a positive integer, at most ``available`` (the
    deformable layers found) and stacks at most :data:`MAX_STACKED_POINTS` points.

    Args:
        num_layers: layers to stack.
        available: how many deformable layers there are (None: not known yet).
        points_per_layer: ``kh*kw`` of the layers, last first (one value: the same for all).
    """
    if isinstance(num_layers, bool) or not isinstance(num_layers, (int, np.integer)) or num_layers < 1:
        raise ValueError(f'num_layers (--num-layers) must be a positive integer, got {num_layers!r}')
    if available is not None and num_layers > available:
        raise ValueError(f'num_layers (--num-layers) is {num_layers}, but only {available} deformable layer(s) '
                         'were found; use at most that many')
    per = list(points_per_layer) or [9]
    total = 1
    for i in range(num_layers):
        total *= per[i] if i < len(per) else per[-1]
        if total > MAX_STACKED_POINTS:
            raise ValueError(f'num_layers (--num-layers) {num_layers} would stack more than {MAX_STACKED_POINTS} '
                             f'sampling points per position ({per[0]} per layer, multiplied through the layers); use '
                             f'at most {i} layer(s)')


def check_group(group: int, groups: Optional[int] = None) -> None:
    """Raise ``ValueError`` unless ``group`` is a deform group index: a non-negative integer, below
    ``groups`` (the stacked layers' ``deform_groups``) when that is known."""
    if isinstance(group, bool) or not isinstance(group, (int, np.integer)) or group < 0:
        raise ValueError(f'group (--group) must be a non-negative integer, got {group!r}')
    if groups is not None and group >= groups:
        raise ValueError(f'group (--group) must be below {groups}: the stacked layers have {groups} deform group(s); '
                         f'got {group!r}')


def stack_sampling_locations(records: Sequence[DCNRecord], point_xy: Sequence[float],
                             input_hw: Tuple[int, int], num_layers: int = 3, group: int = 0
                             ) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sampling locations of the last ``num_layers`` deformable layers for one position.

    Args:
        records: from :func:`record_dcn_layers` (forward order).
        point_xy: ``(x, y)`` in network-input pixels (after resize, before padding).
        input_hw: ``(H, W)`` of the (padded) network input, which sets each map's stride.
        num_layers: how many consecutive deformable layers to stack, from the last one back; between 1
            and ``len(records)``, and at most :data:`MAX_STACKED_POINTS` points in all.
        group: the deform group whose offsets are followed; ``0 <= group < deform_groups`` of every
            stacked layer.

    Returns:
        ``(points, weights, origin)``: ``points (K, 2)`` as ``(x, y)`` network-input pixels with
        ``K = (kh*kw)**num_layers``, ``weights (K,)`` the product of the masks along each path (ones
        for DCNv1), ``origin (2,)`` the ``(x, y)`` of the output unit the points belong to.
    """
    if not records:
        raise ValueError('no deformable conv layer ran: the model has no DCN layers')
    records = list(records)
    check_num_layers(num_layers, len(records),
                     [r.kernel_size[0] * r.kernel_size[1] for r in records[::-1]])
    chain = records[-num_layers:][::-1]  # last layer first
    check_group(group, min(r.offset.shape[0] for r in chain))
    H, W = input_hw

    def stride_of(hw):  # pixels per map cell
        return H / hw[0], W / hw[1]

    # the output unit of the last layer nearest to the requested point
    sy, sx = stride_of(chain[0].out_hw)
    oy = min(max(round((point_xy[1] + 0.5) / sy - 0.5), 0), chain[0].out_hw[0] - 1)
    ox = min(max(round((point_xy[0] + 0.5) / sx - 0.5), 0), chain[0].out_hw[1] - 1)
    origin = np.array([(ox + 0.5) * sx - 0.5, (oy + 0.5) * sy - 0.5])
    pos = torch.tensor([[float(oy), float(ox)]])  # (P, 2) in the current layer's output map
    weights = torch.ones(1)
    for li, rec in enumerate(chain):
        kh, kw = rec.kernel_size
        ho, wo = rec.out_hw
        maps = torch.cat((rec.offset[group].reshape(kh * kw * 2, ho, wo), rec.mask[group]), dim=0)
        vals = _sample_maps(maps, pos)  # (P, kh*kw*3)
        off = vals[:, :kh * kw * 2].reshape(-1, kh * kw, 2)
        msk = vals[:, kh * kw * 2:]
        ky, kx = torch.meshgrid(torch.arange(kh, dtype=torch.float32), torch.arange(kw, dtype=torch.float32),
                                indexing='ij')
        base_y = pos[:, 0:1] * rec.stride[0] - rec.padding[0] + ky.reshape(1, -1) * rec.dilation[0]
        base_x = pos[:, 1:2] * rec.stride[1] - rec.padding[1] + kx.reshape(1, -1) * rec.dilation[1]
        in_y = base_y + off[..., 0]
        in_x = base_x + off[..., 1]
        weights = (weights[:, None] * msk).reshape(-1)
        # input-map cells -> image pixels -> the next (earlier) layer's output-map cells
        isy, isx = stride_of(rec.in_hw)
        img_y = (in_y.reshape(-1) + 0.5) * isy - 0.5
        img_x = (in_x.reshape(-1) + 0.5) * isx - 0.5
        if li + 1 < len(chain):
            nsy, nsx = stride_of(chain[li + 1].out_hw)
            pos = torch.stack(((img_y + 0.5) / nsy - 0.5, (img_x + 0.5) / nsx - 0.5), dim=1)
        else:
            pos = torch.stack((img_y, img_x), dim=1)
    points = pos[:, [1, 0]].numpy()
    return points, weights.numpy(), origin


def _iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """IoU of one x1y1x2y2 box with ``(M, 4)`` boxes."""
    x1 = np.maximum(box[0], boxes[:, 0])
    y1 = np.maximum(box[1], boxes[:, 1])
    x2 = np.minimum(box[2], boxes[:, 2])
    y2 = np.minimum(box[3], boxes[:, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area = lambda b: np.clip(b[..., 2] - b[..., 0], 0, None) * np.clip(b[..., 3] - b[..., 1], 0, None)  # noqa: E731
    union = area(box) + area(boxes) - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def select_panel_boxes(boxes: np.ndarray, scores: np.ndarray, topk: int, iou_thr: float = PANEL_IOU) -> List[int]:
    """The detections that get a panel: up to ``topk``, highest score first, leaving out each one whose box
    overlaps an already chosen box by more than ``iou_thr`` (IoU, whatever the labels).

    Args:
        boxes: ``(M, 4)`` x1y1x2y2. scores: ``(M,)``. topk: the most panels. iou_thr: in [0, 1].

    Returns:
        Indices into ``boxes``, in panel order.
    """
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    chosen: List[int] = []
    for i in np.argsort(-np.asarray(scores, np.float64), kind='stable'):
        if len(chosen) == topk:
            break
        if not chosen or _iou(boxes[i], boxes[chosen]).max() <= iou_thr:
            chosen.append(int(i))
    return chosen


def draw_sampling_locations(image: np.ndarray, panels: Sequence[Tuple[np.ndarray, np.ndarray, np.ndarray]],
                            modulated: bool, boxes: Optional[np.ndarray] = None, upscale: int = 2,
                            title: str = '', panel_boxes: Optional[Sequence[Optional[np.ndarray]]] = None
                            ) -> np.ndarray:
    """Draw one panel per output position: the image, the sampling points (coloured by modulation
    weight for DCNv2, yellow for DCNv1), the output unit (green cross) and, when the position is a
    detection's, that detection's box (thick, :data:`PANEL_BOX_COLOUR`, numbered as the panel).

    Args:
        image: ``(H, W, 3)`` uint8 BGR, in the same pixel frame as the points.
        panels: ``(points (K, 2) xy, weights (K,), origin (2,) xy)`` per position.
        modulated: colour by weight (DCNv2) or not (DCNv1).
        boxes: optional ``(M, 4)`` x1y1x2y2 boxes to outline thinly in white (e.g. the detections).
        upscale: magnification of the drawing.
        title: text written on the first panel.
        panel_boxes: optional, one x1y1x2y2 box (or None) per panel: the detection the panel belongs to.

    Returns:
        ``(H*upscale + legend, W*upscale*len(panels), 3)`` uint8 BGR picture (the legend says what the
        colours mean).
    """
    import cv2
    if panel_boxes is not None and len(panel_boxes) != len(panels):
        raise ValueError(f'panel_boxes must give one box (or None) per panel: {len(panels)} panels, '
                         f'{len(panel_boxes)} boxes')
    h, w = image.shape[:2]
    base = cv2.resize(image, (w * upscale, h * upscale), interpolation=cv2.INTER_NEAREST)
    gray = cv2.cvtColor(base, cv2.COLOR_BGR2GRAY)
    # dim grey: the colours stand out
    base = cv2.cvtColor((gray.astype(np.float32) * 0.55).astype(np.uint8), cv2.COLOR_GRAY2BGR)
    out = []
    for index, (points, weights, origin) in enumerate(panels):
        canvas = base.copy()
        if boxes is not None:
            for b in boxes:
                x1, y1, x2, y2 = (np.asarray(b[:4]) * upscale).astype(int)
                cv2.rectangle(canvas, (x1, y1), (x2, y2), (255, 255, 255), 1, cv2.LINE_AA)
        own = panel_boxes[index] if panel_boxes is not None else None
        if own is not None:  # the detection this panel belongs to
            x1, y1, x2, y2 = (np.asarray(own[:4]) * upscale).astype(int)
            cv2.rectangle(canvas, (x1, y1), (x2, y2), PANEL_BOX_COLOUR, max(2, upscale), cv2.LINE_8)
            cv2.putText(canvas, f'#{index + 1}', (x1 + 3, max(y1 - 4, 12)), cv2.FONT_HERSHEY_SIMPLEX, 0.45,
                        PANEL_BOX_COLOUR, 1, cv2.LINE_AA)
        # products of masks span decades: colour on a log scale, two decades below the 98th percentile
        top = float(np.percentile(weights, 98)) if len(weights) else 1.0
        order = np.argsort(weights)  # strongest drawn last (on top)
        if modulated:
            rel = np.log10(np.maximum(np.asarray(weights, np.float64), 1e-12) / max(top, 1e-12))
            levels = (np.clip((rel + 2) / 2, 0, 1) * 255).astype(np.uint8)
            colours = cv2.applyColorMap(levels.reshape(-1, 1), cv2.COLORMAP_JET)[:, 0].tolist()
        xy = np.rint(np.asarray(points, np.float64).reshape(-1, 2) * upscale + (upscale - 1) / 2).astype(int).tolist()
        for k in order:
            col = tuple(colours[k]) if modulated else (0, 255, 255)
            cv2.circle(canvas, tuple(xy[k]), upscale + 1, col, -1, cv2.LINE_AA)
        ox, oy = origin * upscale + (upscale - 1) / 2
        cv2.drawMarker(canvas, (int(round(ox)), int(round(oy))), (0, 255, 0), cv2.MARKER_CROSS, 6 * upscale,
                       2, cv2.LINE_AA)
        out.append(canvas)
    pic = np.concatenate(out, axis=1) if out else base
    legend = np.zeros((28 if panel_boxes is None else 46, pic.shape[1], 3), np.uint8)
    text = title + ('  colour: product of modulation weights, log scale (blue <= 1%, red >= 98th pct)'
                    if modulated else '')
    cv2.putText(legend, text, (6, 19), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (255, 255, 255), 1, cv2.LINE_AA)
    if panel_boxes is not None:
        cv2.putText(legend, 'magenta box #n: the detection of panel n', (6, 38), cv2.FONT_HERSHEY_SIMPLEX, 0.45,
                    PANEL_BOX_COLOUR, 1, cv2.LINE_AA)
    if modulated:
        bar = cv2.applyColorMap(np.linspace(0, 255, 120).astype(np.uint8)[None].repeat(10, 0), cv2.COLORMAP_JET)
        if pic.shape[1] > 140:
            legend[9:19, -130:-10] = bar
    return np.concatenate((pic, legend), axis=0)
