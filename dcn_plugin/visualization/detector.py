"""Run a detector on one image and draw the stacked sampling locations of its deformable layers."""
import math
import os
import os.path as osp
import re
from typing import List, Optional, Sequence, Tuple

import numpy as np

from ..utils.state_dict import init_detector_from_checkpoint
from . import offsets

__all__ = ['visualize_offsets', 'MAX_PANELS']

#: the most positions drawn in one picture (one panel each, side by side)
MAX_PANELS = 16


def _check_arguments(points: Optional[Sequence[Tuple[float, float]]], num_layers: int, group: int,
                     score_thr: float, topk: int, upscale: int, layers: str) -> None:
    offsets.check_num_layers(num_layers)
    offsets.check_group(group)
    if not isinstance(score_thr, (int, float)) or not 0.0 <= float(score_thr) <= 1.0:
        raise ValueError(f'score_thr (--score-thr) must be a number in [0, 1], got {score_thr!r}')
    if isinstance(topk, bool) or not isinstance(topk, (int, np.integer)) or not 1 <= topk <= MAX_PANELS:
        raise ValueError(f'topk (--topk) must be an integer in [1, {MAX_PANELS}] (one panel per detection), '
                         f'got {topk!r}')
    if isinstance(upscale, bool) or not isinstance(upscale, (int, np.integer)) or not 1 <= upscale <= 8:
        raise ValueError(f'upscale must be an integer in [1, 8], got {upscale!r}')
    if points is not None:
        if not 1 <= len(points) <= MAX_PANELS:
            raise ValueError(f'points (--points) must list 1 to {MAX_PANELS} positions (one panel each), '
                             f'got {len(points)}')
        for p in points:
            if len(p) != 2 or not all(isinstance(v, (int, float)) and math.isfinite(v) for v in p):
                raise ValueError(f'points (--points) must be finite (x, y) pairs, got {p!r}')
    try:
        re.compile(layers)
    except re.error as e:
        raise ValueError(f'layers (--layers) is not a valid regular expression ({e}): {layers!r}') from e


def visualize_offsets(config: str, checkpoint: Optional[str], image: str, out: Optional[str] = None,
                      points: Optional[Sequence[Tuple[float, float]]] = None, num_layers: int = 3,
                      layers: str = 'backbone', group: int = 0, score_thr: float = 0.3, topk: int = 3,
                      device: str = 'cpu', upscale: int = 2, cfg_options: Optional[dict] = None,
                      allow_partial_load: bool = False) -> str:
    """Draw where the last ``num_layers`` deformable layers sample for a few output positions.

    Args:
        config, checkpoint: the detector (``checkpoint=None``: the config's initial weights); the
            checkpoint (path or URL) must fit the model exactly unless ``allow_partial_load``.
        image: image file.
        out: PNG path (default ``work_dirs/visualize_offsets/<config name>/<image name>_offsets.png``).
        points: 1 to :data:`MAX_PANELS` ``(x, y)`` positions inside the image, in pixels; default: the
            centres of the ``topk`` best detections scoring at least ``score_thr``, leaving out a
            detection whose box overlaps a better chosen one by IoU >
            :data:`~dcn_plugin.visualization.PANEL_IOU` (one object detected twice, e.g. with two labels,
            gets one panel); each panel then outlines its detection's box in magenta, numbered as the
            panel (the image centre when there are no detections).
        num_layers: consecutive deformable layers to stack (``(kh*kw)**num_layers`` points), from 1 to
            the number of deformable layers matching ``layers``, and at most
            :data:`~dcn_plugin.visualization.MAX_STACKED_POINTS` points (5 layers of 3x3 kernels).
        layers: regular expression the layers' module names must match (default: the backbone's).
        group: deform group whose offsets are followed (below the layers' ``deform_groups``).
        score_thr: in [0, 1].
        topk: 1 to :data:`MAX_PANELS`.
        device: ``'cpu'`` or ``'cuda'``.
        upscale: magnification of the drawing, 1 to 8.
        cfg_options: config overrides.
        allow_partial_load: load a checkpoint that fits only partly (warning about the rest).

    Raises:
        ValueError: an argument out of range (the message names it).
        dcn_plugin.utils.CheckpointError: the checkpoint is unsafe, corrupt, or does not fit.

    Returns:
        The PNG's path.
    """
    import cv2
    from mmdet.apis import inference_detector

    _check_arguments(points, num_layers, group, score_thr, topk, upscale, layers)
    img = cv2.imread(image, cv2.IMREAD_COLOR)
    if img is None:
        raise FileNotFoundError(f'cannot read image {image}')
    if points is not None:
        for x, y in points:
            if not (0 <= x < img.shape[1] and 0 <= y < img.shape[0]):
                raise ValueError(f'points (--points): ({x}, {y}) is outside the {img.shape[1]}x{img.shape[0]} image')
    model = init_detector_from_checkpoint(
        config, checkpoint, cfg_options, device, allow_partial_load,
        remedy='To draw with the weights that fit anyway, pass --allow-partial-load.')
    with offsets.record_dcn_layers(model) as records:
        result = inference_detector(model, image)
    pattern = re.compile(layers)
    chosen = [r for r in records if pattern.search(r.name)]
    if not chosen:
        names = sorted({r.name for r in records})
        raise ValueError(f'layers (--layers): no deformable layer matches {layers!r}; deformable layers that ran: '
                         f'{names}')
    meta = result.metainfo
    scale = np.asarray(meta.get('scale_factor', (1.0, 1.0)), dtype=np.float64)[:2]  # (w, h) factors
    input_hw = tuple(meta.get('batch_input_shape', meta['img_shape']))
    inst = result.pred_instances
    confident = (inst.scores >= score_thr).nonzero().flatten().cpu().numpy()
    all_boxes = inst.bboxes[confident].cpu().numpy().reshape(-1, 4)
    # one panel per object: a detection overlapping a chosen one by IoU > PANEL_IOU gets none
    boxes = all_boxes[offsets.select_panel_boxes(all_boxes, inst.scores[confident].cpu().numpy(), topk)]
    panel_boxes = None
    if points is None:
        points = [((b[0] + b[2]) / 2, (b[1] + b[3]) / 2) for b in boxes] or [(img.shape[1] / 2, img.shape[0] / 2)]
        panel_boxes = list(boxes) or None
    panels: List[Tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    for x, y in points:
        pts, w, origin = offsets.stack_sampling_locations(chosen, (x * scale[0], y * scale[1]), input_hw,
                                                  num_layers=num_layers, group=group)
        panels.append((pts / scale, w, origin / scale))  # back to image pixels
    used = [r.name for r in chosen[-num_layers:]]
    title = f'{len(used)} DCN layers ({used[0]} .. {used[-1]})'
    pic = offsets.draw_sampling_locations(img, panels, modulated=chosen[-1].modulated, boxes=boxes, upscale=upscale,
                                  title=title, panel_boxes=panel_boxes)
    if out is None:
        name = osp.splitext(osp.basename(config))[0]
        out = osp.join('work_dirs', 'visualize_offsets', name, osp.splitext(osp.basename(image))[0] + '_offsets.png')
    os.makedirs(osp.dirname(osp.abspath(out)), exist_ok=True)
    if not cv2.imwrite(out, pic):
        raise OSError(f'could not write {out}')
    return out
