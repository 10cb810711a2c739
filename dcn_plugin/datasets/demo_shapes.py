"""Deterministic generator of the embedded demo dataset ("deformed shapes"), in COCO format.

Each image holds a few objects of :data:`DEMO_CLASSES` on a cluttered background. Every object is
its class template put through a strong geometric deformation: a smooth non-rigid warp (random
low-frequency displacement field), then an affine map composed of rotation, anisotropic scale
(aspect) and shear. The clutter is made of the same ingredients as the objects (colours, strokes,
random polygons, arcs), so telling classes apart requires the object's shape, not its colour or
texture: the case deformable convolution is meant for.

Everything derives from one integer seed: image ``i`` of split ``s`` uses its own
``numpy.random.default_rng([seed, split_index, i])``, so the same seed gives byte-identical images
and annotation files, independent of the order or the number of worker processes.

Layout written by :func:`generate_demo_dataset` under ``out_dir``::

    annotations/instances_train.json   annotations/instances_val.json
    train/000000.png ...               val/000000.png ...
"""
import json
import os
import os.path as osp
from typing import Dict, List, Optional, Sequence, Tuple

import cv2
import numpy as np

from .checks import DatasetError, load_coco_json

__all__ = ['DEMO_CLASSES', 'DEMO_SPLITS', 'GENERATOR_VERSION', 'MIN_IMAGE_SIZE', 'MAX_IMAGE_SIZE', 'render_image',
           'generate_split', 'generate_demo_dataset', 'demo_dataset_exists', 'check_demo_arguments']

#: Object classes, in category-id order (ids start at 1).
DEMO_CLASSES: Tuple[str, ...] = ('arrow', 'cross', 'star', 'crescent', 'tee')
#: Default split sizes (number of images).
DEMO_SPLITS: Dict[str, int] = {'train': 400, 'val': 100}
#: Bumped whenever the generated pixels or annotations change for a given seed.
GENERATOR_VERSION = 1
#: Smallest image side: objects span 11-38% of the side, so below 64 px the smallest ones would be
#: under 7 px, too few pixels to tell the shapes apart.
MIN_IMAGE_SIZE = 64
#: Largest image side: the renderer holds a few float (H, W, 3) buffers per object.
MAX_IMAGE_SIZE = 2048


def _is_int(v) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


def check_demo_arguments(image_size: int = 256, splits: Optional[Dict[str, int]] = None, seed: int = 0) -> None:
    """Raise ``ValueError`` naming the argument unless the generator can honour it.

    Args:
        image_size: side of the square images, in [:data:`MIN_IMAGE_SIZE`, :data:`MAX_IMAGE_SIZE`].
        splits: ``{split name: number of images}``, each count at least 1, names usable as folders.
        seed: a non-negative integer.
    """
    if not _is_int(image_size) or not MIN_IMAGE_SIZE <= image_size <= MAX_IMAGE_SIZE:
        why = ('; smaller images cannot hold the shapes at a recognisable size' if _is_int(image_size)
               and image_size < MIN_IMAGE_SIZE else '')
        raise ValueError(f'image size (--size) must be an integer from {MIN_IMAGE_SIZE} to {MAX_IMAGE_SIZE} pixels, '
                         f'got {image_size!r}{why}')
    if not _is_int(seed) or seed < 0:
        raise ValueError(f'seed (--seed) must be a non-negative integer, got {seed!r}')
    for split, n in (splits or {}).items():
        if not isinstance(split, str) or not split or split in ('.', '..') or '/' in split or '\\' in split:
            raise ValueError(f'split names must be plain folder names, got {split!r}')
        if not _is_int(n) or n < 1:
            raise ValueError(f'number of {split} images (--{split}) must be a positive integer, got {n!r}')

_TEMPLATE = 128  # side of the canvas a class template is drawn on (object spans ~60% of it)


def _template(name: str) -> np.ndarray:
    """Binary float32 mask ``(T, T)`` of a class in its canonical pose."""
    t = _TEMPLATE
    c = t / 2
    m = np.zeros((t, t), np.uint8)
    s = t * 0.32  # half extent
    if name == 'arrow':
        pts = [(-1.0, -0.22), (0.15, -0.22), (0.15, -0.6), (1.0, 0.0), (0.15, 0.6), (0.15, 0.22),
               (-1.0, 0.22)]
    elif name == 'cross':
        a = 0.27
        pts = [(-a, -1), (a, -1), (a, -a), (1, -a), (1, a), (a, a), (a, 1), (-a, 1), (-a, a), (-1, a),
               (-1, -a), (-a, -a)]
    elif name == 'star':
        pts = []
        for k in range(10):
            r = 1.0 if k % 2 == 0 else 0.42
            ang = -np.pi / 2 + k * np.pi / 5
            pts.append((r * np.cos(ang), r * np.sin(ang)))
    elif name == 'tee':
        pts = [(-1, -1), (1, -1), (1, -0.5), (0.25, -0.5), (0.25, 1), (-0.25, 1), (-0.25, -0.5),
               (-1, -0.5)]
    elif name == 'crescent':
        cv2.circle(m, (int(c), int(c)), int(s), 1, -1, cv2.LINE_8)
        cv2.circle(m, (int(c + 0.45 * s), int(c - 0.1 * s)), int(0.8 * s), 0, -1, cv2.LINE_8)
        return m.astype(np.float32)
    else:
        raise ValueError(f'unknown demo class {name!r}; expected one of {DEMO_CLASSES}')
    poly = np.round(np.array([(c + s * x, c + s * y) for x, y in pts]) * 16).astype(np.int32)
    cv2.fillPoly(m, [poly], 1, cv2.LINE_8, shift=4)
    return m.astype(np.float32)


_TEMPLATES: Dict[str, np.ndarray] = {}


def _get_template(name: str) -> np.ndarray:
    if name not in _TEMPLATES:
        _TEMPLATES[name] = _template(name)
    return _TEMPLATES[name]


def _nonrigid_warp(mask: np.ndarray, rng: np.random.Generator, strength: float) -> np.ndarray:
    """Warp ``mask`` with a smooth random displacement field (sum of low-frequency sinusoids)."""
    t = mask.shape[0]
    yy, xx = np.mgrid[0:t, 0:t].astype(np.float32)
    dx = np.zeros_like(xx)
    dy = np.zeros_like(yy)
    for _ in range(3):
        fx, fy = rng.uniform(0.5, 2.0, size=2) * 2 * np.pi / t
        px, py = rng.uniform(0, 2 * np.pi, size=2)
        ax, ay = rng.uniform(-1, 1, size=2) * strength * t / 3
        dx += ax * np.sin(fy * yy + px)
        dy += ay * np.sin(fx * xx + py)
    return cv2.remap(mask, xx + dx, yy + dy, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0)


def _affine(rng: np.random.Generator, size: float, center: Tuple[float, float]) -> np.ndarray:
    """2x3 map from template pixels to image pixels: centre . rotate . shear . scale(aspect)."""
    theta = rng.uniform(-np.pi, np.pi)
    aspect = np.exp(rng.uniform(-0.5, 0.5))  # up to ~1.65 : 1
    shear = rng.uniform(-0.45, 0.45)
    scale = size / (_TEMPLATE * 0.64)
    s = np.diag([scale * np.sqrt(aspect), scale / np.sqrt(aspect)])
    sh = np.array([[1.0, shear], [0.0, 1.0]])
    r = np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
    a = r @ sh @ s
    t = np.array(center) - a @ np.array([_TEMPLATE / 2, _TEMPLATE / 2])
    return np.concatenate([a, t[:, None]], axis=1)


def _background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Cluttered float32 ``(h, w, 3)`` background in [0, 255]."""
    # smooth colour gradient
    c0, c1 = rng.uniform(40, 215, size=(2, 3))
    ang = rng.uniform(0, 2 * np.pi)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    g = ((xx * np.cos(ang) + yy * np.sin(ang)) / max(h, w) + 1) / 2
    img = c0[None, None] * (1 - g[..., None]) + c1[None, None] * g[..., None]
    # low-frequency colour blotches
    small = rng.uniform(-40, 40, size=(6, 6, 3)).astype(np.float32)
    img += cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)
    img = np.ascontiguousarray(img.astype(np.float32))
    # clutter: strokes, arcs and random (non-class) polygons in random colours
    for _ in range(int(rng.integers(8, 16))):
        kind = rng.integers(0, 3)
        col = tuple(float(v) for v in rng.uniform(0, 255, size=3))
        if kind == 0:
            p1 = tuple(int(v) for v in rng.integers(0, (w, h)))
            p2 = tuple(int(v) for v in rng.integers(0, (w, h)))
            cv2.line(img, p1, p2, col, int(rng.integers(1, 4)), cv2.LINE_AA)
        elif kind == 1:
            ctr = tuple(int(v) for v in rng.integers(0, (w, h)))
            axes = tuple(int(v) for v in rng.integers(5, max(6, min(h, w) // 6), size=2))
            a0 = float(rng.uniform(0, 360))
            cv2.ellipse(img, ctr, axes, float(rng.uniform(0, 180)), a0, a0 + float(rng.uniform(60, 270)), col,
                        int(rng.integers(1, 4)), cv2.LINE_AA)
        else:
            ctr = rng.uniform(0, (w, h))
            n = int(rng.integers(3, 7))
            angs = np.sort(rng.uniform(0, 2 * np.pi, size=n))
            rad = rng.uniform(3, min(h, w) / 14, size=n)
            pts = np.stack([ctr[0] + rad * np.cos(angs), ctr[1] + rad * np.sin(angs)], 1)
            cv2.fillPoly(img, [np.round(pts).astype(np.int32)], col, cv2.LINE_AA)
    img += rng.normal(0, 6, size=img.shape).astype(np.float32)
    return img


def render_image(rng: np.random.Generator, height: int = 256, width: int = 256, max_objects: int = 5,
                 min_size: float = 28, max_size: float = 96, warp_strength: float = 0.12
                 ) -> Tuple[np.ndarray, List[dict]]:
    """Render one image and its objects.

    Args:
        rng: the random generator (its state fully determines the output).
        height, width: image size in pixels.
        max_objects: at most this many objects (at least 1).
        min_size, max_size: range of the object's size (template extent after scaling, pixels).
        warp_strength: amplitude of the non-rigid warp, as a fraction of the template size.

    Returns:
        ``(image, objects)``: ``image`` is uint8 ``(height, width, 3)`` BGR; each object is a dict with
        ``category_id`` (1-based), ``bbox`` ``[x, y, w, h]`` (tight box of the rendered shape),
        ``area`` (pixels of the shape) and ``segmentation`` (COCO polygons).
    """
    img = _background(rng, height, width)
    objects: List[dict] = []
    n_obj = int(rng.integers(1, max_objects + 1))
    tries = 0
    while len(objects) < n_obj and tries < 40:
        tries += 1
        cls = int(rng.integers(0, len(DEMO_CLASSES)))
        size = float(rng.uniform(min_size, max_size))
        margin = size * 0.35
        center = (float(rng.uniform(margin, width - margin)), float(rng.uniform(margin, height - margin)))
        tmpl = _nonrigid_warp(_get_template(DEMO_CLASSES[cls]), rng, warp_strength)
        mat = _affine(rng, size, center)
        alpha = cv2.warpAffine(tmpl, mat, (width, height), flags=cv2.INTER_LINEAR,
                               borderMode=cv2.BORDER_CONSTANT, borderValue=0)
        binary = alpha > 0.5
        area = int(binary.sum())
        if area < 0.08 * size * size:
            continue  # warped out of shape (rare)
        ys, xs = np.nonzero(binary)
        x0, x1, y0, y1 = int(xs.min()), int(xs.max()) + 1, int(ys.min()), int(ys.max()) + 1
        if x0 <= 0 or y0 <= 0 or x1 >= width or y1 >= height:
            continue  # keep every object entirely inside the image
        if any((binary & o['_mask']).any() for o in objects):
            continue  # objects do not overlap: every box is fully visible
        # colour: far enough from the local background so the shape is visible
        local = img[y0:y1, x0:x1].reshape(-1, 3).mean(0)
        for _ in range(10):
            col = rng.uniform(0, 255, size=3)
            if np.abs(col - local).sum() > 150:
                break
        tex = col[None, None] + rng.normal(0, 10, size=(height, width, 3))
        a = alpha[..., None]
        img = img * (1 - a) + tex.astype(np.float32) * a
        contours, _ = cv2.findContours(binary.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        segm = [c.reshape(-1).astype(float).tolist() for c in contours if len(c) >= 3]
        objects.append({'category_id': cls + 1, 'bbox': [x0, y0, x1 - x0, y1 - y0], 'area': area,
                        'segmentation': segm, '_mask': binary})
    for o in objects:
        del o['_mask']
    return np.clip(np.round(img), 0, 255).astype(np.uint8), objects


def generate_split(out_dir: str, split: str, num_images: int, seed: int = 0, image_size: int = 256,
                   split_index: Optional[int] = None) -> dict:
    """Write ``num_images`` images of ``split`` to ``out_dir/split/`` and return the COCO dict.

    ``split_index`` picks the split's random stream (default: 0 for ``'train'``, 1 for ``'val'``,
    a stable hash of the name otherwise).
    """
    check_demo_arguments(image_size, {split: num_images}, seed)
    if split_index is None:
        split_index = {'train': 0, 'val': 1, 'test': 2}.get(split, sum(map(ord, split)) + 3)
    os.makedirs(osp.join(out_dir, split), exist_ok=True)
    images, annotations = [], []
    ann_id = 1
    for i in range(num_images):
        rng = np.random.default_rng([seed, split_index, i])
        k = image_size / 256  # object sizes scale with the image
        img, objs = render_image(rng, image_size, image_size, min_size=28 * k, max_size=96 * k)
        name = f'{i:06d}.png'
        ok, buf = cv2.imencode('.png', img, [cv2.IMWRITE_PNG_COMPRESSION, 6])
        if not ok:
            raise RuntimeError(f'could not encode image {name}')
        with open(osp.join(out_dir, split, name), 'wb') as f:
            f.write(buf.tobytes())
        images.append({'id': i + 1, 'file_name': name, 'width': image_size, 'height': image_size})
        for o in objs:
            annotations.append({'id': ann_id, 'image_id': i + 1, 'iscrowd': 0, **o})
            ann_id += 1
    return {
        'info': {'description': 'dcn_plugin demo: deformed shapes on clutter', 'version': GENERATOR_VERSION,
                 'seed': seed, 'split': split},
        'licenses': [],
        'images': images,
        'annotations': annotations,
        'categories': [{'id': k + 1, 'name': n, 'supercategory': 'shape'} for k, n in enumerate(DEMO_CLASSES)],
    }


def generate_demo_dataset(out_dir: str = 'data/demo', seed: int = 0, splits: Optional[Dict[str, int]] = None,
                          image_size: int = 256) -> Dict[str, str]:
    """Generate the demo dataset; returns ``{split: annotation file}``.

    Args:
        out_dir: dataset root (``annotations/`` and one image folder per split go there).
        seed: the seed every pixel and box derives from (non-negative).
        splits: ``{split name: number of images}`` (default :data:`DEMO_SPLITS`); at least one image each.
        image_size: side of the square images, from :data:`MIN_IMAGE_SIZE` to :data:`MAX_IMAGE_SIZE`.

    Raises:
        ValueError: an argument the generator cannot honour (checked before anything is written).
    """
    splits = dict(DEMO_SPLITS if splits is None else splits)
    if not splits:
        raise ValueError('splits must name at least one split')
    check_demo_arguments(image_size, splits, seed)
    os.makedirs(osp.join(out_dir, 'annotations'), exist_ok=True)
    written = {}
    for split, n in splits.items():
        coco = generate_split(out_dir, split, n, seed=seed, image_size=image_size)
        path = osp.join(out_dir, 'annotations', f'instances_{split}.json')
        with open(path, 'w') as f:
            json.dump(coco, f, sort_keys=True, separators=(',', ':'))
        written[split] = path
    return written


def demo_dataset_exists(out_dir: str = 'data/demo', splits: Sequence[str] = ('train', 'val')) -> bool:
    """True when every split's annotation file and all the images it lists are present."""
    for split in splits:
        try:
            coco = load_coco_json(osp.join(out_dir, 'annotations', f'instances_{split}.json'))
        except DatasetError:  # unreadable or not JSON: generate it again
            return False
        if coco is None or not all(osp.isfile(osp.join(out_dir, split, im['file_name'])) for im in coco['images']):
            return False
    return True
