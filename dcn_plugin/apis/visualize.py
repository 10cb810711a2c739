"""Run a detector on one image and draw the stacked sampling locations of its deformable layers."""
import os
import os.path as osp
import re
from typing import List, Optional, Sequence, Tuple

import numpy as np

from .offsets import draw_sampling_locations, record_dcn_layers, stack_sampling_locations

__all__ = ['visualize_offsets']


def visualize_offsets(config: str, checkpoint: Optional[str], image: str, out: Optional[str] = None,
                      points: Optional[Sequence[Tuple[float, float]]] = None, num_layers: int = 3,
                      layers: str = 'backbone', group: int = 0, score_thr: float = 0.3, topk: int = 3,
                      device: str = 'cpu', upscale: int = 2, cfg_options: Optional[dict] = None) -> str:
    """Draw where the last ``num_layers`` deformable layers sample for a few output positions.

    Args:
        config, checkpoint: the detector (``checkpoint=None``: the config's initial weights).
        image: image file.
        out: PNG path (default ``work_dirs/visualize_offsets/<config name>/<image name>_offsets.png``).
        points: ``(x, y)`` positions in image pixels; default: the centres of the ``topk``
            detections scoring at least ``score_thr`` (the image centre when there are none).
        num_layers: consecutive deformable layers to stack (``(kh*kw)**num_layers`` points).
        layers: regular expression the layers' module names must match (default: the backbone's).
        group: deform group whose offsets are followed.
        device: ``'cpu'`` or ``'cuda'``.
        upscale: magnification of the drawing.
        cfg_options: config overrides.

    Returns:
        The PNG's path.
    """
    import cv2
    from mmengine.config import Config
    from mmdet.apis import inference_detector, init_detector

    from .runner import register_safe_checkpoint_globals
    register_safe_checkpoint_globals()
    cfg = Config.fromfile(config)
    if cfg_options:
        cfg.merge_from_dict(cfg_options)
    model = init_detector(cfg, checkpoint, device=device)
    with record_dcn_layers(model) as records:
        result = inference_detector(model, image)
    pattern = re.compile(layers)
    chosen = [r for r in records if pattern.search(r.name)]
    if not chosen:
        names = sorted({r.name for r in records})
        raise ValueError(f'no deformable layer matches {layers!r}; deformable layers that ran: {names}')
    meta = result.metainfo
    scale = np.asarray(meta.get('scale_factor', (1.0, 1.0)), dtype=np.float64)[:2]  # (w, h) factors
    input_hw = tuple(meta.get('batch_input_shape', meta['img_shape']))
    img = cv2.imread(image, cv2.IMREAD_COLOR)
    if img is None:
        raise FileNotFoundError(f'cannot read image {image}')
    inst = result.pred_instances
    keep = (inst.scores >= score_thr).nonzero().flatten()[:topk]
    boxes = inst.bboxes[keep].cpu().numpy() if len(keep) else np.zeros((0, 4))
    if points is None:
        points = [((b[0] + b[2]) / 2, (b[1] + b[3]) / 2) for b in boxes] or [(img.shape[1] / 2, img.shape[0] / 2)]
    panels: List[Tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    for x, y in points:
        pts, w, origin = stack_sampling_locations(chosen, (x * scale[0], y * scale[1]), input_hw,
                                                  num_layers=num_layers, group=group)
        panels.append((pts / scale, w, origin / scale))  # back to image pixels
    used = [r.name for r in chosen[-num_layers:]]
    title = f'{len(used)} DCN layers ({used[0]} .. {used[-1]})'
    pic = draw_sampling_locations(img, panels, modulated=chosen[-1].modulated, boxes=boxes, upscale=upscale,
                                  title=title)
    if out is None:
        name = osp.splitext(osp.basename(config))[0]
        out = osp.join('work_dirs', 'visualize_offsets', name, osp.splitext(osp.basename(image))[0] + '_offsets.png')
    os.makedirs(osp.dirname(osp.abspath(out)), exist_ok=True)
    if not cv2.imwrite(out, pic):
        raise OSError(f'could not write {out}')
    return out
