"""The embedded demo data: deterministic from its seed, valid COCO, and what it claims to contain."""
import hashlib
import json
import os
import os.path as osp

import numpy as np
import pytest

from dcn_plugin.datasets import DEMO_CLASSES, demo_dataset_exists, generate_demo_dataset, render_image


def _digest(root):
    h = hashlib.sha256()
    for dirpath, _, files in sorted(os.walk(root)):
        for name in sorted(files):
            path = osp.join(dirpath, name)
            h.update(osp.relpath(path, root).encode())
            with open(path, 'rb') as f:
                h.update(f.read())
    return h.hexdigest()


@pytest.fixture(scope='module')
def small_demo(tmp_path_factory):
    root = str(tmp_path_factory.mktemp('demo'))
    files = generate_demo_dataset(root, seed=3, splits={'train': 6, 'val': 3}, image_size=128)
    return root, files


def test_same_seed_gives_identical_bytes(small_demo, tmp_path):
    root, _ = small_demo
    again = str(tmp_path / 'again')
    generate_demo_dataset(again, seed=3, splits={'train': 6, 'val': 3}, image_size=128)
    assert _digest(root) == _digest(again)


def test_other_seed_gives_other_images(small_demo, tmp_path):
    root, _ = small_demo
    other = str(tmp_path / 'other')
    generate_demo_dataset(other, seed=4, splits={'train': 6, 'val': 3}, image_size=128)
    assert _digest(root) != _digest(other)


def test_splits_differ_and_do_not_depend_on_their_size(tmp_path):
    a, b = str(tmp_path / 'a'), str(tmp_path / 'b')
    generate_demo_dataset(a, seed=0, splits={'train': 2, 'val': 2}, image_size=96)
    generate_demo_dataset(b, seed=0, splits={'train': 5}, image_size=96)
    for i in range(2):  # image i of a split is the same whatever the split's length
        name = f'{i:06d}.png'
        with open(osp.join(a, 'train', name), 'rb') as fa, open(osp.join(b, 'train', name), 'rb') as fb:
            assert fa.read() == fb.read()
    with open(osp.join(a, 'train', '000000.png'), 'rb') as ft, open(osp.join(a, 'val', '000000.png'), 'rb') as fv:
        assert ft.read() != fv.read()


def test_pycocotools_loads_it_and_boxes_are_valid(small_demo):
    from pycocotools.coco import COCO
    root, files = small_demo
    for split, path in files.items():
        coco = COCO(path)
        assert [c['name'] for c in coco.loadCats(coco.getCatIds())] == list(DEMO_CLASSES)
        assert len(coco.getImgIds()) == {'train': 6, 'val': 3}[split]
        for ann in coco.loadAnns(coco.getAnnIds()):
            x, y, w, h = ann['bbox']
            img = coco.loadImgs(ann['image_id'])[0]
            assert w > 0 and h > 0 and x >= 0 and y >= 0
            assert x + w <= img['width'] and y + h <= img['height']
            assert 0 < ann['area'] <= w * h
            assert ann['iscrowd'] == 0 and ann['segmentation']
        # every image listed exists on disk with the listed size
        import cv2
        for img in coco.loadImgs(coco.getImgIds()):
            arr = cv2.imread(osp.join(root, split, img['file_name']))
            assert arr.shape == (img['height'], img['width'], 3)
    assert demo_dataset_exists(root)


def test_exists_is_false_when_something_is_missing(small_demo, tmp_path):
    assert not demo_dataset_exists(str(tmp_path / 'nothing'))
    root, files = small_demo
    with open(files['val']) as f:
        coco = json.load(f)
    coco['images'].append({'id': 99, 'file_name': 'missing.png', 'width': 128, 'height': 128})
    broken = tmp_path / 'broken'
    (broken / 'annotations').mkdir(parents=True)
    for split in ('train', 'val'):
        os.symlink(osp.join(root, split), broken / split)
    os.symlink(files['train'], broken / 'annotations' / 'instances_train.json')
    (broken / 'annotations' / 'instances_val.json').write_text(json.dumps(coco))
    assert not demo_dataset_exists(str(broken))


def test_objects_are_deformed_class_shapes_inside_the_image():
    # over many renders: every class appears, objects have varied aspect ratios (deformation) and
    # boxes tightly enclose the drawn shape
    rng = np.random.default_rng(0)
    seen, aspects = set(), []
    for _ in range(40):
        img, objs = render_image(rng, 160, 160)
        assert img.shape == (160, 160, 3) and img.dtype == np.uint8
        assert 1 <= len(objs) <= 5
        for o in objs:
            seen.add(o['category_id'])
            x, y, w, h = o['bbox']
            aspects.append(w / h)
            assert o['area'] >= 0.15 * w * h  # a filled shape, not a stray pixel
    assert seen == set(range(1, len(DEMO_CLASSES) + 1))
    assert min(aspects) < 0.7 and max(aspects) > 1.4
