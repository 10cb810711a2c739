"""R-CNN feature mimicking (MimicRoIHead + MimicFasterRCNN): the loss, which RoIs are cropped, where the
gradients go, images without positives, inference unchanged, checkpoints across configs, autocast, DDP."""
import copy
import math
import os.path as osp

import pytest
import torch
import torchvision  # noqa: F401  (loads torchvision's operators, which mmcv's torchvision-based _ext calls)
from mmdet.registry import MODELS
from mmdet.structures import DetDataSample
from mmdet.structures.bbox import get_box_tensor
from mmengine.structures import InstanceData
from model_test_utils import randomize_  # noqa: F401  (first: skips without mmdet / mmcv.ops)

from dcn_plugin.models.roi_heads import MimicFasterRCNN, MimicRoIHead, crop_image_rois, mimic_cosine_loss

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
NUM_CLASSES = 3


def _model_cfg(mimic: bool = True, **head):
    """A tiny Faster R-CNN (ResNet-18 at 1/8 width, 16-channel FPN), from the shipped baseline config."""
    from mmengine.config import Config

    import dcn_plugin.apis  # noqa: F401  ('mmdet::' bases without pkg_resources)
    cfg = copy.deepcopy(Config.fromfile(osp.join(ROOT, 'configs', 'dcn', 'faster-rcnn_r50_fpn_1x_coco.py')).model)
    cfg.backbone.update(depth=18, base_channels=8, init_cfg=None)
    cfg.neck.update(in_channels=[8, 16, 32, 64], out_channels=16)
    cfg.rpn_head.update(in_channels=16, feat_channels=16)
    cfg.roi_head.bbox_roi_extractor.update(out_channels=16)
    cfg.roi_head.bbox_head.update(in_channels=16, fc_out_channels=32, num_classes=NUM_CLASSES)
    cfg.data_preprocessor.update(mean=[0.0, 0.0, 0.0], std=[1.0, 1.0, 1.0])
    if mimic:
        cfg.type = 'MimicFasterRCNN'
        cfg.roi_head.update(type='MimicRoIHead', mimic_crop_size=32, mimic_num_rois=4)
        cfg.roi_head.update(head)
    return cfg


def _model(mimic: bool = True, seed: int = 0, **head):
    from mmdet.utils import register_all_modules
    register_all_modules(init_default_scope=False)
    torch.manual_seed(seed)
    model = MODELS.build(_model_cfg(mimic, **head))
    model.init_weights()
    g = torch.Generator().manual_seed(seed)  # not the global stream, which the samplers draw from
    with torch.no_grad():  # mmdet's init zeroes the last norm of each block and leaves fc_cls / fc_reg
        for p in model.parameters():  # almost zero: give every parameter some weight (the branch's last)
            p.add_(torch.randn(p.shape, generator=g) * 0.05)
    return model.train()


def _sample(boxes, labels, img_shape=(64, 64), pad_shape=(64, 64)):
    s = DetDataSample(metainfo=dict(img_shape=img_shape, pad_shape=pad_shape, batch_input_shape=pad_shape,
                                    scale_factor=(1.0, 1.0), ori_shape=img_shape))
    s.gt_instances = InstanceData(bboxes=torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
                                  labels=torch.tensor(labels, dtype=torch.long))
    return s


def _proposals(boxes):
    boxes = torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4)
    return InstanceData(bboxes=boxes, scores=torch.ones(len(boxes)))


class _Recorder:
    """Wraps a detector's ``extract_feat``: records every call's input and output."""

    def __init__(self, model):
        self.model, self.inputs, self.outputs = model, [], []

    def __call__(self, x):
        out = self.model.extract_feat(x)
        self.inputs.append(x)
        self.outputs.append(out)
        return out


def _head_losses(model, images, samples, proposals, recorder=None):
    """The RoI head's losses for given proposals (the RPN is not involved)."""
    recorder = recorder or _Recorder(model)
    x = recorder(images)
    with model.roi_head.mimic_source(images, samples, recorder):
        return model.roi_head.loss(x, [p.clone() for p in proposals], samples)


# --------------------------------------------------------------------------- the loss
def test_cosine_loss_is_zero_for_parallel_features_and_positive_otherwise():
    g = torch.Generator().manual_seed(0)
    f = torch.randn(5, 16, generator=g).relu() + 0.01
    torch.testing.assert_close(mimic_cosine_loss(f, f), torch.tensor(0.0), atol=1e-6, rtol=0)
    torch.testing.assert_close(mimic_cosine_loss(f, 3 * f), torch.tensor(0.0), atol=1e-6, rtol=0)
    torch.testing.assert_close(mimic_cosine_loss(f, -f), torch.tensor(2.0))
    other = torch.randn(5, 16, generator=g)
    mean, total = mimic_cosine_loss(f, other), mimic_cosine_loss(f, other, reduction='sum')
    assert mean > 0 and mean.dtype == torch.float32
    torch.testing.assert_close(total, mean * 5)
    expected = (1 - torch.nn.functional.cosine_similarity(f, other, dim=1)).mean()
    torch.testing.assert_close(mean, expected)
    # half-precision features: computed in float32
    assert mimic_cosine_loss(f.bfloat16(), other.bfloat16()).dtype == torch.float32


def test_cosine_loss_of_no_rois_is_a_connected_zero():
    a = torch.zeros(0, 8, requires_grad=True)
    b = torch.zeros(0, 8, requires_grad=True)
    loss = mimic_cosine_loss(a, b)
    assert loss.item() == 0.0
    loss.backward()
    assert a.grad is not None and b.grad is not None


@pytest.mark.parametrize('args, match', [
    ((torch.zeros(3, 4), torch.zeros(3, 5)), 'same shape'),
    ((torch.zeros(3), torch.zeros(3)), r'\(K, D\)'),
    ((torch.zeros(3, 4), torch.zeros(3, 4), 'max'), 'reduction'),
])
def test_cosine_loss_rejects_bad_input(args, match):
    with pytest.raises(ValueError, match=match):
        mimic_cosine_loss(*args)


def test_crop_of_the_whole_image_at_its_size_is_the_image():
    img = torch.randn(2, 3, 24, 20)
    rois = torch.tensor([[1, 0, 0, 20, 24], [0, 0, 0, 20, 24]], dtype=torch.float32)
    crops = crop_image_rois(img, rois, (24, 20), sampling_ratio=1)
    torch.testing.assert_close(crops, img.flip(0), rtol=0, atol=1e-6)
    # a 2x enlargement of a 10x12 box is bilinear interpolation (pixel centres, aligned)
    crop = crop_image_rois(img, torch.tensor([[0, 0.0, 0.0, 10.0, 12.0]]), (24, 20))
    expected = torch.nn.functional.interpolate(img[:1, :, :12, :10], size=(24, 20), mode='bilinear',
                                               align_corners=False)
    torch.testing.assert_close(crop[:, :, 1:-1, 1:-1], expected[:, :, 1:-1, 1:-1], rtol=0, atol=1e-5)
    assert crop_image_rois(img, torch.zeros(0, 5), 8).shape == (0, 3, 8, 8)
    with pytest.raises(ValueError, match='rois'):
        crop_image_rois(img, torch.zeros(3, 4), 8)
    with pytest.raises(ValueError, match='size'):
        crop_image_rois(img, rois, 0)


# --------------------------------------------------------------------------- the branch in the RoI head
def test_mimic_loss_is_zero_when_the_crop_equals_the_image_and_positive_otherwise():
    # the only RoI covers the whole 32x32 image and the crop size is 32: the crop is the image itself,
    # so both passes compute the same features
    model = _model(mimic_crop_size=32, mimic_crop_sampling_ratio=1)
    images = torch.randn(1, 3, 32, 32)
    samples = [_sample([[0, 0, 32, 32]], [1], (32, 32), (32, 32))]
    losses = _head_losses(model, images, samples, [_proposals([[0, 0, 32, 32]])])
    assert losses['mimic_num_rois'].item() == 2  # the proposal and the ground truth added as a proposal
    torch.testing.assert_close(losses['loss_mimic'], torch.tensor(0.0), atol=1e-6, rtol=0)
    assert losses['loss_mimic_cls'] > 0
    # an RoI on part of the image: different features
    samples = [_sample([[2, 3, 20, 22]], [1], (32, 32), (32, 32))]
    losses = _head_losses(model, images, samples, [_proposals([[2, 3, 20, 22]])])
    assert losses['loss_mimic'] > 1e-4
    assert torch.isfinite(losses['loss_mimic_cls'])


def test_loss_weights_and_reduction_scale_the_losses():
    images = torch.randn(1, 3, 64, 64)
    samples = [_sample([[2, 3, 30, 40], [30, 20, 60, 60]], [0, 2])]
    props = [_proposals([[3, 3, 31, 41], [31, 22, 60, 58], [1, 1, 20, 20]])]
    out = {}
    for name, kw in {'base': dict(), 'heavy': dict(loss_mimic_weight=1.0,
                                                   loss_mimic_cls=dict(type='CrossEntropyLoss', loss_weight=1.0)),
                     'sum': dict(mimic_reduction='sum')}.items():
        model = _model(mimic_num_rois=32, **kw)
        torch.manual_seed(1)
        out[name] = _head_losses(model, images, samples, props)
    n = out['base']['mimic_num_rois']
    torch.testing.assert_close(out['heavy']['loss_mimic'], out['base']['loss_mimic'] * 10)
    torch.testing.assert_close(out['heavy']['loss_mimic_cls'], out['base']['loss_mimic_cls'] * 10)
    torch.testing.assert_close(out['sum']['loss_mimic'], out['base']['loss_mimic'] * n)
    # the Faster R-CNN losses do not depend on the branch
    for key in ('loss_cls', 'loss_bbox'):
        torch.testing.assert_close(out['heavy'][key], out['base'][key])


def test_gradients_reach_the_backbone_through_both_branches():
    images = torch.randn(2, 3, 64, 64)
    samples = [_sample([[4, 4, 40, 36]], [1]), _sample([[10, 20, 50, 60], [0, 0, 20, 16]], [0, 2])]
    props = [_proposals([[5, 5, 41, 35], [0, 0, 64, 64]]), _proposals([[11, 19, 49, 61], [30, 30, 60, 60]])]
    weight = lambda m: m.backbone.layer3[0].conv1.weight  # noqa: E731  (the stem is frozen)
    for detach in (True, False):
        model = _model(mimic_detach_rcnn=detach)
        rec = _Recorder(model)
        losses = _head_losses(model, images, samples, props, rec)
        assert len(rec.outputs) == 2  # whole images, then the crops
        (main, crops) = rec.outputs
        assert rec.inputs[1].shape == (int(losses['mimic_num_rois']), 3, 32, 32)

        def grads(loss, feats):
            g = torch.autograd.grad(loss, list(feats), retain_graph=True, allow_unused=True)
            return sum(0.0 if t is None else t.abs().sum().item() for t in g)

        # the mimic loss reaches the backbone through the whole-image (Faster R-CNN) pass, and through the
        # crops (R-CNN pass) only without the stop-gradient
        assert grads(losses['loss_mimic'], main) > 0
        assert (grads(losses['loss_mimic'], crops) > 0) is not detach
        # the crop classifier's loss reaches it through the crops only
        assert grads(losses['loss_mimic_cls'], crops) > 0
        assert grads(losses['loss_mimic_cls'], main) == 0
        for key in ('loss_mimic', 'loss_mimic_cls'):
            (g,) = torch.autograd.grad(losses[key], [weight(model)], retain_graph=True)
            assert g.abs().sum() > 0, key
        # the unshared classifier learns from its own loss only
        cls_w = model.roi_head.mimic_cls.weight
        assert torch.autograd.grad(losses['loss_mimic_cls'], [cls_w], retain_graph=True)[0].abs().sum() > 0
        assert torch.autograd.grad(losses['loss_mimic'], [cls_w], allow_unused=True)[0] is None


def test_only_positives_are_cropped_and_at_most_num_rois_per_image():
    g = torch.Generator().manual_seed(0)
    gts = [[4, 4, 30, 30], [34, 34, 60, 62], [2, 36, 28, 60]]
    jitter = lambda b: [v + float(torch.randint(-2, 3, (1,), generator=g)) for v in b]  # noqa: E731
    pos_props = [jitter(b) for b in gts for _ in range(3)]  # 9 positives (IoU >= 0.5) + 3 gts
    neg_props = [[40, 2, 62, 20], [0, 0, 8, 8], [20, 20, 36, 36]]
    images = torch.randn(2, 3, 64, 64)
    samples = [_sample(gts, [0, 1, 2]), _sample(gts[:1], [2])]
    props = [_proposals(pos_props + neg_props), _proposals([jitter(gts[0])] + neg_props)]
    for positives_only in (True, False):
        model = _model(mimic_num_rois=5, mimic_positives_only=positives_only)
        seen = {}
        original = model.roi_head.select_mimic_rois

        def spy(sampling_results, img_shapes):
            out = original(sampling_results, img_shapes)
            seen.update(results=sampling_results, out=out)
            return out

        model.roi_head.select_mimic_rois = spy
        rec = _Recorder(model)
        losses = _head_losses(model, images, samples, props, rec)
        rois, rows, labels = seen['out']
        results = seen['results']
        offsets = [0, results[0].priors.shape[0]]
        assert losses['mimic_num_rois'].item() == len(rois) == rec.inputs[1].shape[0]
        for i, res in enumerate(results):
            mine = rois[:, 0] == i
            local = rows[mine] - offsets[i]
            num_pos, num_all = res.pos_priors.shape[0], res.priors.shape[0]
            candidates = num_pos if positives_only else num_all
            assert mine.sum() == min(5, candidates)
            assert len(set(local.tolist())) == len(local)  # drawn without replacement
            assert ((local >= 0) & (local < candidates)).all()
            torch.testing.assert_close(rois[mine, 1:], res.priors[local].clamp(0, 64))
            all_labels = torch.cat([res.pos_gt_labels, torch.full((num_all - num_pos,), NUM_CLASSES)])
            assert torch.equal(labels[mine], all_labels[local])
        if positives_only:
            assert (labels < NUM_CLASSES).all()
            # image 1 has 2 positives (its gt and one proposal): fewer than 5
            assert (rois[:, 0] == 1).sum() == 2


def test_crops_come_from_their_own_image_inside_its_img_shape():
    # image 1 is 40x48 inside the 64x64 padded batch (the padding is 0); boxes reaching into the padding
    # are clipped, so every crop holds only its own image's pixels
    images = torch.zeros(2, 3, 64, 64)
    images[0] = 1.0
    images[1, :, :40, :48] = 2.0
    samples = [_sample([[10, 10, 60, 60]], [0]), _sample([[20, 10, 48, 40]], [1], img_shape=(40, 48))]
    props = [_proposals([[10, 10, 64, 64]]), _proposals([[22, 12, 64, 64]])]
    model = _model(mimic_num_rois=8)
    rec = _Recorder(model)
    _head_losses(model, images, samples, props, rec)
    crops = rec.inputs[1]
    assert crops.shape[0] >= 3
    for crop in crops:
        assert torch.allclose(crop, torch.ones_like(crop)) or torch.allclose(crop, torch.full_like(crop, 2.0))
    assert (crops == 2.0).all(dim=(1, 2, 3)).sum() >= 1 and (crops == 1.0).all(dim=(1, 2, 3)).sum() >= 1


def _pipeline_sample(img, boxes, labels, transforms):
    """One image through mmdet's training transforms (from a BGR uint8 array, as LoadImageFromFile gives)."""
    import numpy as np
    from mmdet.datasets.transforms import PackDetInputs
    from mmdet.structures.bbox import HorizontalBoxes
    results = dict(img=img, img_shape=img.shape[:2], ori_shape=img.shape[:2], img_id=0, img_path='',
                   gt_bboxes=HorizontalBoxes(np.asarray(boxes, dtype=np.float32)),
                   gt_bboxes_labels=np.asarray(labels, dtype=np.int64),
                   gt_ignore_flags=np.zeros(len(labels), dtype=bool))
    for t in transforms:
        results = t(results)
    return PackDetInputs()(results)


def test_crops_are_the_rois_own_pixels_as_the_network_sees_them():
    # Two BGR images of different sizes, each with a known patch under its ground-truth box, through
    # mmdet's Resize (2x, nearest: exact pixel copies) and RandomFlip (always), then the detector's data
    # preprocessor with mmdet's ImageNet mean/std, BGR -> RGB and padding to a multiple of 32. The crop of
    # each ground-truth box (a positive: ground truths are added as proposals), at the box's own size, must
    # be the patch as the whole-image pass sees it: resized, flipped, RGB, normalised, from its own image.
    import numpy as np
    from mmdet.datasets.transforms import RandomFlip, Resize
    rng = np.random.default_rng(0)
    mean, std = np.array([123.675, 116.28, 103.53]), np.array([58.395, 57.12, 57.375])
    crop = (16, 20)  # (h, w) of both boxes after the 2x resize
    cfg = _model_cfg(mimic_num_rois=64, mimic_crop_size=crop, mimic_crop_sampling_ratio=1)
    cfg.data_preprocessor.update(mean=mean.tolist(), std=std.tolist(), bgr_to_rgb=True, pad_size_divisor=32)
    from mmdet.utils import register_all_modules
    register_all_modules(init_default_scope=False)
    torch.manual_seed(0)
    model = MODELS.build(cfg).train()
    transforms = [Resize(scale_factor=2.0, keep_ratio=True, interpolation='nearest'),
                  RandomFlip(prob=1.0, direction='horizontal')]
    images, boxes, expected = [], [], []
    for (h, w), (x1, y1) in (((30, 25), (3, 5)), ((20, 31), (9, 2))):
        img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        box = [x1, y1, x1 + crop[1] // 2, y1 + crop[0] // 2]
        patch = img[box[1]:box[3], box[0]:box[2]].repeat(2, 0).repeat(2, 1)  # resized
        patch = patch[:, ::-1, ::-1]  # flipped, then RGB
        expected.append(torch.from_numpy(((patch - mean) / std).transpose(2, 0, 1).copy()).float())
        images.append(img)
        boxes.append(box)
    data = [_pipeline_sample(img, [box], [1], transforms) for img, box in zip(images, boxes)]
    batch = model.data_preprocessor(dict(inputs=[d['inputs'] for d in data],
                                         data_samples=[d['data_samples'] for d in data]), True)
    assert batch['inputs'].shape[-2:] == (64, 64)  # padded
    inputs, selected = [], {}
    extract, select = model.extract_feat, model.roi_head.select_mimic_rois
    model.extract_feat = lambda x: (inputs.append(x), extract(x))[1]  # the detector hands this to the head
    model.roi_head.select_mimic_rois = lambda *a: selected.setdefault('out', select(*a))
    model.loss(batch['inputs'], batch['data_samples'])
    rois, crops = selected['out'][0], inputs[1]
    assert crops.shape[1:] == (3, *crop)
    for i, sample in enumerate(batch['data_samples']):
        gt = get_box_tensor(sample.gt_instances.bboxes)[0]
        # the flipped ground truth, in the frame of the resized image
        h, w = sample.img_shape
        x1, y1, x2, y2 = boxes[i]
        assert gt.tolist() == [w - 2 * x2, 2 * y1, w - 2 * x1, 2 * y2]
        mine = (rois[:, 0] == i) & (rois[:, 1:] == gt).all(1)
        assert mine.sum() == 1, 'the ground-truth box is among the cropped positives'
        torch.testing.assert_close(crops[mine][0], expected[i], rtol=0, atol=1e-5)
        # and it is where the whole-image pass sees it: the batch's own pixels under the box
        xa, ya, xb, yb = (int(v) for v in gt)
        torch.testing.assert_close(crops[mine][0], batch['inputs'][i, :, ya:yb, xa:xb], rtol=0, atol=1e-6)


def _trunk(model, feats, rois):
    """The 2fc box head's feature (the input of ``fc_cls``), computed without the branch's hook."""
    head = model.roi_head
    x = head.bbox_roi_extractor(feats[:head.bbox_roi_extractor.num_inputs], rois).flatten(1)
    for fc in head.bbox_head.shared_fcs:
        x = torch.relu(fc(x))
    return x


def test_mimicked_features_are_the_trunk_outputs_of_the_same_rois_in_both_passes(monkeypatch):
    # f_FRCNN must be the whole-image trunk's output for the RoI that was cropped, and f_RCNN the same
    # trunk's output on that RoI's crop, row for row; the labels those of the sampler's assignment
    import dcn_plugin.models.roi_heads.mimic_roi_head as mimic_module
    crop = (12, 16)
    model = _model(mimic_num_rois=6, mimic_crop_size=crop, mimic_crop_sampling_ratio=1,
                   mimic_positives_only=False)
    gts = [[4, 4, 20, 16], [30, 40, 46, 52]]
    props = [[x1 + dx, y1 + dy, x2 + dx, y2 + dy] for x1, y1, x2, y2 in gts for dx, dy in ((1, 0), (0, -1), (2, 1))]
    props += [[40, 2, 56, 14], [2, 44, 18, 56]]  # negatives, same size
    images = torch.randn(2, 3, 64, 64)
    samples = [_sample(gts, [2, 0]), _sample(gts[1:], [1])]
    seen = {}
    original_cos = mimic_module.mimic_cosine_loss
    monkeypatch.setattr(mimic_module, 'mimic_cosine_loss',
                        lambda a, b, r: seen.setdefault('f', (a, b)) and original_cos(a, b, r))
    original = model.roi_head.select_mimic_rois
    model.roi_head.select_mimic_rois = lambda *a: seen.setdefault('sel', (a[0], original(*a)))[1]
    rec = _Recorder(model)
    losses = _head_losses(model, images, samples, [_proposals(props), _proposals(props[3:])], rec)
    f_rcnn, f_frcnn = seen['f']
    results, (rois, rows, labels) = seen['sel']
    assert len(rois) == int(losses['mimic_num_rois']) >= 8
    with torch.no_grad():
        priors = torch.cat([torch.cat([r.priors.new_full((len(r.priors), 1), i), r.priors], 1)
                            for i, r in enumerate(results)])
        ref_frcnn = _trunk(model, rec.outputs[0], priors[rows])
        slices = torch.stack([images[int(i), :, int(y1):int(y2), int(x1):int(x2)] for i, x1, y1, x2, y2 in rois])
        assert slices.shape[-2:] == crop  # every box is inside its image and of the crop's size
        whole = torch.tensor([[k, 0, 0, crop[1], crop[0]] for k in range(len(rois))], dtype=torch.float32)
        ref_rcnn = _trunk(model, model.extract_feat(slices), whole)
    torch.testing.assert_close(f_frcnn, ref_frcnn, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(f_rcnn, ref_rcnn, rtol=1e-4, atol=1e-5)
    assert f_frcnn.shape[1] == model.roi_head.bbox_head.fc_cls.in_features
    # labels: the class of the assigned ground truth for positives, C (background, last) for the others
    for (i, *box), label in zip(rois.tolist(), labels.tolist()):
        gt = samples[int(i)].gt_instances
        from mmdet.structures.bbox import bbox_overlaps
        iou = bbox_overlaps(torch.tensor([box]), gt.bboxes)[0]
        assert label == (int(gt.labels[iou.argmax()]) if iou.max() >= 0.5 else NUM_CLASSES)
    assert (labels == NUM_CLASSES).any() and (labels < NUM_CLASSES).any()
    assert model.roi_head.mimic_cls.out_features == model.roi_head.bbox_head.fc_cls.out_features == NUM_CLASSES + 1


def test_the_branch_leaves_the_global_random_stream_alone():
    # mmdet's samplers draw from torch's global generator: the branch must not move it, or a model with
    # the branch samples other RoIs than the same model without it, from the same seed
    images = torch.randn(2, 3, 64, 64)
    samples = [_sample([[4, 4, 40, 36]], [1]), _sample([[10, 20, 50, 60], [0, 0, 20, 16]], [0, 2])]
    props = [_proposals([[5, 5, 41, 35], [0, 0, 64, 64]]), _proposals([[11, 19, 49, 61], [30, 30, 60, 60]])]
    states = {}
    for mimic in (False, True):
        model = _model(mimic=mimic, mimic_num_rois=2)
        torch.manual_seed(7)
        with torch.no_grad():
            x = model.extract_feat(images)
            if mimic:
                with model.roi_head.mimic_source(images, samples, model.extract_feat):
                    losses = model.roi_head.loss(x, [p.clone() for p in props], samples)
                assert losses['mimic_num_rois'] > 0
            else:
                model.roi_head.loss(x, [p.clone() for p in props], samples)
        states[mimic] = torch.get_rng_state()
    assert torch.equal(states[False], states[True])
    # the branch's own draws still change from step to step and follow the seed
    model = _model(mimic_num_rois=1, mimic_positives_only=False)
    picks = []
    for seed in (0, 1, 2, 3, 0):
        torch.manual_seed(seed)
        with model.roi_head.mimic_source(images, samples, model.extract_feat), torch.no_grad():
            x = model.extract_feat(images)
            sel = {}
            original = model.roi_head.select_mimic_rois
            model.roi_head.select_mimic_rois = lambda *a: sel.setdefault('out', original(*a))
            model.roi_head.loss(x, [p.clone() for p in props], samples)
            del model.roi_head.select_mimic_rois
        picks.append(sel['out'][0].tolist())
    assert picks[0] == picks[4]
    assert len({str(p) for p in picks[:4]}) > 1


def _built(mimic: bool, seed: int = 0, **head):
    from mmdet.utils import register_all_modules
    register_all_modules(init_default_scope=False)
    torch.manual_seed(seed)
    model = MODELS.build(_model_cfg(mimic, **head))
    model.init_weights()
    return model


def test_same_seed_gives_the_same_initial_weights_with_and_without_the_branch():
    plain = _built(False).state_dict()
    plain_state = torch.get_rng_state()
    mimic = _built(True).state_dict()
    assert set(mimic) - set(plain) == {'roi_head.mimic_cls.weight', 'roi_head.mimic_cls.bias'}
    for key, value in plain.items():
        assert torch.equal(value, mimic[key]), key
    assert torch.equal(torch.get_rng_state(), plain_state)  # training then draws the same numbers


def test_with_zero_loss_weights_the_detector_trains_bit_identically_to_the_plain_one():
    # the strongest check that the branch changes nothing it should not: same seed, same data, the demo's
    # optimiser (AdamW, gradient clipping); the full detector, so the RPN and R-CNN samplers draw
    # every step. With both branch losses weighted 0 every shared parameter must match bit for bit.
    from mmengine.optim import OptimWrapper
    zero = dict(loss_mimic_weight=0.0, loss_mimic_cls=dict(type='CrossEntropyLoss', loss_weight=0.0))
    params, logs = {}, {}
    for mimic in (False, True):
        model = _model(mimic, seed=3, mimic_num_rois=4, **(zero if mimic else {}))
        wrapper = OptimWrapper(torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.05),
                               clip_grad=dict(max_norm=10, norm_type=2))
        data = torch.Generator().manual_seed(0)  # the data's own stream
        logs[mimic] = []
        for _ in range(3):
            images = torch.randn(2, 3, 64, 64, generator=data)
            samples = [_sample([[4, 4, 40, 36]], [1]), _sample([[10, 20, 50, 60], [0, 0, 20, 16]], [0, 2])]
            losses = model(images, samples, mode='loss')
            if mimic:
                assert losses['mimic_num_rois'] > 0 and losses['loss_mimic'] == 0
            loss, log_vars = model.parse_losses(losses)
            wrapper.update_params(loss)
            logs[mimic].append({k: v for k, v in log_vars.items() if 'mimic' not in k and k != 'loss'})
        params[mimic] = dict(model.named_parameters())
    assert logs[False] == logs[True]
    assert set(params[True]) - set(params[False]) == {'roi_head.mimic_cls.weight', 'roi_head.mimic_cls.bias'}
    for name, p in params[False].items():
        assert torch.equal(p, params[True][name]), name


def test_loss_gradient_norms_measure_each_term_in_each_part():
    from dcn_plugin.apis.study import loss_gradient_norms
    model = _model(mimic_num_rois=4)
    batch = dict(inputs=[torch.randint(0, 256, (3, 64, 64), dtype=torch.uint8) for _ in range(2)],
                 data_samples=[_sample([[4, 4, 40, 36]], [1]), _sample([[10, 20, 50, 60]], [0])])
    groups = dict(backbone=model.backbone, rpn_head=model.rpn_head, mimic_cls=model.roi_head.mimic_cls)
    norms = loss_gradient_norms(model, batch, groups)
    assert set(norms) == {'detection', 'loss_mimic', 'loss_mimic_cls', 'total'}
    assert norms['loss_mimic']['rpn_head'] == 0 and norms['detection']['mimic_cls'] == 0
    assert min(norms['detection']['backbone'], norms['loss_mimic']['backbone'], norms['total']['rpn_head']) > 0
    # the norm of a group that only the detection losses reach is theirs
    assert math.isclose(norms['total']['rpn_head'], norms['detection']['rpn_head'], rel_tol=1e-6)
    assert math.isclose(norms['total']['mimic_cls'], norms['loss_mimic_cls']['mimic_cls'], rel_tol=1e-6)


def test_crops_do_not_enter_the_batchnorm_running_statistics():
    # BatchNorm in training mode (norm_eval=False): the whole images update the running statistics as in
    # the model without the branch; the crops, which inference never sees, leave them alone
    samples = [_sample([[4, 4, 40, 36]], [1]), _sample([[10, 20, 50, 60], [0, 0, 20, 16]], [0, 2])]
    images = torch.randn(2, 3, 64, 64) * 2 + 1
    stats = {}
    for mimic in (False, True):
        cfg = _model_cfg(mimic, mimic_num_rois=4)
        cfg.backbone.update(norm_eval=False)
        from mmdet.utils import register_all_modules
        register_all_modules(init_default_scope=False)
        torch.manual_seed(0)
        model = MODELS.build(cfg)
        model.init_weights()
        model.train()
        bn = model.backbone.layer3[0].bn1  # (the stem is frozen)
        assert bn.training and torch.equal(bn.running_mean, torch.zeros_like(bn.running_mean))
        with torch.no_grad():
            losses = model(images.clone(), samples, mode='loss')
        if mimic:
            assert losses['mimic_num_rois'] > 0
        stats[mimic] = {k: v.clone() for k, v in model.state_dict().items() if 'running' in k or 'batches' in k}
    assert stats[False] and stats[False].keys() == stats[True].keys()
    assert stats[False]['backbone.layer3.0.bn1.num_batches_tracked'] == 1
    for key, value in stats[False].items():
        assert torch.equal(value, stats[True][key]), key


def test_gradients_of_each_branch_loss_reach_the_trunk_but_not_the_rpn_or_the_predictors():
    model = _model(mimic_num_rois=4)
    samples = [_sample([[4, 4, 40, 36]], [1]), _sample([[10, 20, 50, 60], [0, 0, 20, 16]], [0, 2])]
    losses = model(torch.randn(2, 3, 64, 64), samples, mode='loss')
    groups = dict(backbone=model.backbone, neck=model.neck, rpn_head=model.rpn_head,
                  shared_fcs=model.roi_head.bbox_head.shared_fcs, fc_cls=model.roi_head.bbox_head.fc_cls,
                  fc_reg=model.roi_head.bbox_head.fc_reg, mimic_cls=model.roi_head.mimic_cls)
    reached = {}
    for key in ('loss_mimic', 'loss_mimic_cls'):
        for group, module in groups.items():
            ps = [p for p in module.parameters() if p.requires_grad]
            g = torch.autograd.grad(losses[key], ps, retain_graph=True, allow_unused=True)
            reached[key, group] = any(t is not None and t.abs().sum() > 0 for t in g)
    assert reached == {
        ('loss_mimic', 'backbone'): True, ('loss_mimic', 'neck'): True, ('loss_mimic', 'shared_fcs'): True,
        ('loss_mimic', 'rpn_head'): False, ('loss_mimic', 'fc_cls'): False, ('loss_mimic', 'fc_reg'): False,
        ('loss_mimic', 'mimic_cls'): False,
        ('loss_mimic_cls', 'backbone'): True, ('loss_mimic_cls', 'neck'): True,
        ('loss_mimic_cls', 'shared_fcs'): True, ('loss_mimic_cls', 'rpn_head'): False,
        ('loss_mimic_cls', 'fc_cls'): False, ('loss_mimic_cls', 'fc_reg'): False,
        ('loss_mimic_cls', 'mimic_cls'): True}


def test_images_without_positives_add_nothing_and_an_all_negative_batch_gives_zero_losses():
    images = torch.randn(2, 3, 64, 64)
    props = [_proposals([[0, 0, 20, 20], [30, 30, 60, 60]])] * 2
    # image 1 has no object: only image 0's positives are cropped
    model = _model(mimic_num_rois=8)
    samples = [_sample([[1, 1, 21, 20]], [1]), _sample([], [])]
    losses = _head_losses(model, images, samples, props)
    assert losses['mimic_num_rois'].item() == 2
    assert torch.isfinite(losses['loss_mimic']) and torch.isfinite(losses['loss_mimic_cls'])
    # no image has an object: no crops, zero losses that still reach the unshared classifier
    samples = [_sample([], []), _sample([], [])]
    rec = _Recorder(model)
    losses = _head_losses(model, images, samples, props, rec)
    assert len(rec.inputs) == 1  # the crop pass did not run
    assert losses['mimic_num_rois'].item() == 0
    assert losses['loss_mimic'].item() == 0 and losses['loss_mimic_cls'].item() == 0
    model.zero_grad()
    loss, _ = model.parse_losses(losses)
    assert torch.isfinite(loss)
    loss.backward()
    assert model.roi_head.mimic_cls.weight.grad is not None
    assert model.roi_head.mimic_cls.weight.grad.abs().sum() == 0


@pytest.mark.parametrize('bbox_head', [
    dict(type='Shared4Conv1FCBBoxHead', conv_out_channels=16, norm_cfg=dict(type='GN', num_groups=4)),
    dict(type='ConvFCBBoxHead', num_shared_fcs=1, num_cls_fcs=1, num_reg_fcs=1),  # separate branches
])
def test_other_mmdet_box_heads_give_their_classifier_feature(bbox_head):
    cfg = dict(in_channels=16, fc_out_channels=24, roi_feat_size=7, num_classes=NUM_CLASSES,
               bbox_coder=dict(type='DeltaXYWHBBoxCoder', target_means=[0.0] * 4, target_stds=[0.1, 0.1, 0.2, 0.2]),
               loss_cls=dict(type='CrossEntropyLoss', use_sigmoid=False, loss_weight=1.0),
               loss_bbox=dict(type='L1Loss', loss_weight=1.0), **bbox_head)
    model = _model(bbox_head=cfg)
    assert type(model.roi_head.bbox_head).__name__ == bbox_head['type']
    assert model.roi_head.mimic_cls.in_features == model.roi_head.bbox_head.fc_cls.in_features == 24
    samples = [_sample([[4, 4, 40, 36]], [1]), _sample([[10, 20, 50, 60]], [0])]
    losses = _head_losses(model, torch.randn(2, 3, 64, 64), samples,
                          [_proposals([[5, 5, 41, 35]]), _proposals([[11, 19, 49, 61]])])
    assert losses['mimic_num_rois'].item() == 4
    assert losses['loss_mimic'] > 0 and torch.isfinite(losses['loss_mimic_cls'])


def test_the_whole_detector_trains_with_batch_two_and_reports_the_branch_losses():
    model = _model(mimic_num_rois=3)
    samples = [_sample([[4, 4, 40, 36]], [1]), _sample([[10, 20, 50, 60], [0, 0, 20, 16]], [0, 2])]
    losses = model(torch.randn(2, 3, 64, 64), samples, mode='loss')
    assert {'loss_mimic', 'loss_mimic_cls', 'mimic_num_rois', 'loss_cls', 'loss_rpn_cls'} <= set(losses)
    assert 2 <= losses['mimic_num_rois'].item() <= 6
    loss, log_vars = model.parse_losses(losses)
    loss.backward()
    assert 'loss_mimic' in log_vars and 'mimic_num_rois' in log_vars
    for name, p in model.named_parameters():
        assert p.grad is not None or not p.requires_grad, name  # the stem is frozen (frozen_stages=1)


def test_cpu_autocast_bfloat16():
    # mmcv's CPU RoIAlign and NMS have no bfloat16 kernels, so the RoI layer here is torchvision's (through
    # mmcv's use_torchvision) and the proposals are given; on CUDA the whole detector runs under --amp
    model = _model(bbox_roi_extractor=dict(roi_layer=dict(use_torchvision=True)))
    images = torch.randn(2, 3, 64, 64)
    samples = [_sample([[4, 4, 40, 36]], [1]), _sample([[10, 20, 50, 60]], [0])]
    props = [_proposals([[5, 5, 41, 35]]), _proposals([[11, 19, 49, 61]])]
    rec = _Recorder(model)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        losses = _head_losses(model, images, samples, props, rec)
    assert rec.outputs[1][0].dtype == torch.bfloat16  # the crops ran under autocast
    assert losses['loss_mimic'].dtype == torch.float32
    assert losses['mimic_num_rois'].item() == 4
    for key in ('loss_mimic', 'loss_mimic_cls'):
        assert torch.isfinite(losses[key]) and losses[key] > 0
    loss, _ = model.parse_losses(losses)
    loss.backward()
    assert model.backbone.layer3[0].conv1.weight.grad.abs().sum() > 0


# --------------------------------------------------------------------------- inference and checkpoints
def _predict(model, images, samples):
    model.eval()
    with torch.no_grad():
        out = model.predict(images, copy.deepcopy(samples))
    return [(o.pred_instances.bboxes, o.pred_instances.scores, o.pred_instances.labels) for o in out]


def test_predictions_are_the_same_with_and_without_the_branch(tmp_path):
    from mmengine.runner import load_checkpoint, save_checkpoint

    from dcn_plugin.utils import register_safe_checkpoint_globals
    register_safe_checkpoint_globals()
    trained = _model(mimic=True)
    # a few training steps, so the unshared classifier and the trunk hold trained values
    opt = torch.optim.SGD(trained.parameters(), lr=0.01)
    samples = [_sample([[4, 4, 40, 36]], [1]), _sample([[10, 20, 50, 60], [0, 0, 20, 16]], [0, 2])]
    for _ in range(2):
        loss, _ = trained.parse_losses(trained(torch.randn(2, 3, 64, 64), samples, mode='loss'))
        opt.zero_grad()
        loss.backward()
        opt.step()
    path = str(tmp_path / 'mimic.pth')
    save_checkpoint(dict(state_dict=trained.state_dict(), meta=dict()), path)
    extra = {k for k in trained.state_dict() if k.startswith('roi_head.mimic_cls.')}
    assert extra == {'roi_head.mimic_cls.weight', 'roi_head.mimic_cls.bias'}

    # test with the mimic config: every key loads strictly
    with_branch = _model(mimic=True, seed=1)
    load_checkpoint(with_branch, path, map_location='cpu', strict=True)
    # test with the plain config: everything but the unshared classifier loads
    plain = _model(mimic=False, seed=2)
    assert type(plain).__name__ == 'FasterRCNN' and type(plain.roi_head).__name__ == 'StandardRoIHead'
    missing = plain.load_state_dict({k: v for k, v in trained.state_dict().items() if k not in extra}, strict=True)
    assert not missing.missing_keys and not missing.unexpected_keys
    plain = _model(mimic=False, seed=2)
    load_checkpoint(plain, path, map_location='cpu', strict=False)  # what the Runner does (load_from)

    images = torch.randn(2, 3, 64, 64)
    meta = [_sample([], []), _sample([], [])]
    ref = _predict(trained, images, meta)
    assert sum(len(r[0]) for r in ref) > 0
    for model in (with_branch, plain):
        for (b0, s0, l0), (b1, s1, l1) in zip(ref, _predict(model, images, meta)):
            assert torch.equal(b0, b1) and torch.equal(s0, s1) and torch.equal(l0, l1)


# --------------------------------------------------------------------------- configuration errors
@pytest.mark.parametrize('head, exc, match', [
    (dict(mimic_num_rois=0), ValueError, 'mimic_num_rois'),
    (dict(mimic_num_rois=2.5), ValueError, 'mimic_num_rois'),
    (dict(mimic_crop_size=(32, 0)), ValueError, 'mimic_crop_size'),
    (dict(mimic_crop_size='big'), TypeError, 'mimic_crop_size'),
    (dict(mimic_positives_only='yes'), TypeError, 'mimic_positives_only'),
    (dict(mimic_detach_rcnn=1), TypeError, 'mimic_detach_rcnn'),
    (dict(mimic_reduction='max'), ValueError, 'mimic_reduction'),
    (dict(mimic_crop_sampling_ratio=-1), ValueError, 'mimic_crop_sampling_ratio'),
    (dict(loss_mimic_weight=-0.1), ValueError, 'loss_mimic_weight'),
    (dict(loss_mimic_weight=float('nan')), ValueError, 'loss_mimic_weight'),
    (dict(loss_mimic_cls=dict(type='CrossEntropyLoss', use_sigmoid=True)), ValueError, 'loss_mimic_cls'),
    (dict(loss_mimic_cls=dict(type='L1Loss')), ValueError, r'loss_mimic_cls must be .*\(K, 4\).*L1Loss fails'),
    (dict(loss_mimic_cls=dict(type='CrossEntropyLoss', reduction='none')), ValueError,
     r'loss_mimic_cls .* returned \(2,\)'),
    (dict(loss_mimic_cls=dict(type='FocalLoss')), ValueError, 'loss_mimic_cls'),
    (dict(bbox_head=dict(type='BBoxHead', with_cls=False, with_avg_pool=True, in_channels=16,
                         roi_feat_size=7, num_classes=NUM_CLASSES)), ValueError, 'fc_cls'),
])
def test_bad_settings_are_refused_with_the_key_named(head, exc, match):
    cfg = _model_cfg(mimic=True)
    cfg.roi_head.update(head)
    if 'bbox_head' in head:
        cfg.roi_head.bbox_head = head['bbox_head']
    with pytest.raises(exc, match=match):
        MODELS.build(cfg)


def test_the_detector_and_the_head_need_each_other():
    cfg = _model_cfg(mimic=True)
    cfg.roi_head.type = 'StandardRoIHead'
    for key in [k for k in cfg.roi_head if k.startswith(('mimic_', 'loss_mimic'))]:
        cfg.roi_head.pop(key)
    with pytest.raises(TypeError, match="roi_head=dict\\(type='MimicRoIHead'"):
        MODELS.build(cfg)
    cfg = _model_cfg(mimic=True)
    cfg.type = 'FasterRCNN'
    model = MODELS.build(cfg)
    assert isinstance(model.roi_head, MimicRoIHead) and not isinstance(model, MimicFasterRCNN)
    with pytest.raises(RuntimeError, match="type='MimicFasterRCNN'"):
        model(torch.randn(1, 3, 64, 64), [_sample([[4, 4, 40, 36]], [1])], mode='loss')


def test_unshared_classifier_is_initialised_like_fc_cls():
    model = MODELS.build(_model_cfg(mimic=True))
    model.init_weights()
    cls = model.roi_head.mimic_cls
    assert cls.weight.shape == (NUM_CLASSES + 1, 32)
    assert cls.weight.std() < 0.02 and torch.all(cls.bias == 0)


# --------------------------------------------------------------------------- distributed training
def _ddp_worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    import torch.distributed as dist
    torch.set_num_threads(1)
    dist.init_process_group('gloo', init_method=f'file://{init_file}', rank=rank, world_size=world)
    try:
        model = _model(mimic_num_rois=4)
        ddp = torch.nn.parallel.DistributedDataParallel(model, find_unused_parameters=False)
        opt = torch.optim.SGD(model.parameters(), lr=0.01)
        counts = []
        for step in range(3):
            if rank == 0:  # objects in both images
                samples = [_sample([[4, 4, 40, 36]], [1]), _sample([[10, 20, 50, 60], [0, 0, 20, 16]], [0, 2])]
            else:  # no object in any image: no crops, the branch's losses are connected zeros
                samples = [_sample([], []), _sample([], [])]
            torch.manual_seed(100 * rank + step)
            losses = ddp(torch.randn(2, 3, 64, 64), samples, mode='loss')
            loss, _ = model.parse_losses(losses)
            opt.zero_grad()
            loss.backward()  # a parameter without gradient on one rank would stall the next step's reduction
            opt.step()
            counts.append(losses['mimic_num_rois'].item())
        flat = torch.cat([p.detach().flatten() for p in model.parameters()])
        torch.save(dict(counts=counts, params=flat), osp.join(out_dir, f'rank{rank}.pt'))
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_distributed_training_with_a_rank_without_positives_needs_no_unused_parameter_search(tmp_path):
    import torch.multiprocessing as mp
    mp.spawn(_ddp_worker, args=(2, str(tmp_path / 'init'), str(tmp_path)), nprocs=2, join=True)
    r0, r1 = (torch.load(tmp_path / f'rank{r}.pt') for r in (0, 1))
    assert all(c > 0 for c in r0['counts']) and all(c == 0 for c in r1['counts'])
    torch.testing.assert_close(r0['params'], r1['params'], rtol=0, atol=0)  # gradients were all-reduced
