"""mmcv._ext from compat/mmcv_ext (mmcv-lite without compiled operators): each operator mmcv's Python calls
gives mmcv's results, checked against torchvision, dcn_plugin's modules and plain-Python transcriptions of
mmcv's algorithms; every other name refuses clearly; mmdet's detectors train and predict through it."""
import ast
import glob
import importlib.machinery
import os.path as osp

import pytest
import torch
import torchvision

mmcv_ops = pytest.importorskip('mmcv.ops')
import mmcv._ext as ext  # noqa: E402

from dcn_plugin.utils.compat import mmcv_has_compiled_ops  # noqa: E402

pytestmark = pytest.mark.skipif(mmcv_has_compiled_ops() or not getattr(ext, 'IS_STANDIN', False),
                                reason='a compiled mmcv._ext is installed (it takes precedence over the stand-in)')


def _boxes(n, seed, ties=True):
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g) * 40
    boxes = torch.cat([xy, xy + torch.rand(n, 2, generator=g) * 25 + 0.5], dim=1)
    scores = torch.rand(n, generator=g)
    if ties:
        scores = (scores * 4).round() / 4  # few distinct scores: many ties
    return boxes, scores


def _iou(a, b, offset=0):
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]) + offset)
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]) + offset)
    inter = w * h
    area = lambda r: (r[2] - r[0] + offset) * (r[3] - r[1] + offset)  # noqa: E731
    return inter / (area(a) + area(b) - inter)


# ----------------------------------------------------------------------------- NMS family
@pytest.mark.parametrize('offset', [0, 1])
def test_nms_keeps_mmcvs_boxes_in_mmcvs_order_with_ties(offset):
    """mmcv's algorithm in plain Python: its own descending sort, then greedy suppression at IoU > thr."""
    for seed in range(60):
        boxes, scores = _boxes(40, seed)
        order = scores.sort(0, descending=True)[1].tolist()
        b = boxes.tolist()
        keep, dropped = [], set()
        for pos, i in enumerate(order):
            if i in dropped:
                continue
            keep.append(i)
            dropped.update(j for j in order[pos + 1:] if _iou(b[i], b[j], offset) > 0.4)
        got = ext.nms(boxes, scores, iou_threshold=0.4, offset=offset)
        assert got.tolist() == keep, seed
        if offset == 0:  # without ties: exactly torchvision's
            boxes, scores = _boxes(40, seed, ties=False)
            assert torch.equal(ext.nms(boxes, scores, 0.4, 0), torchvision.ops.nms(boxes, scores, 0.4))


def test_mmcv_nms_and_batched_nms_run_through_the_stand_in():
    boxes, scores = _boxes(30, 1)
    dets, inds = mmcv_ops.nms(boxes, scores, 0.5)
    assert torch.equal(inds, ext.nms(boxes, scores, 0.5, 0)) and torch.equal(dets[:, 4], scores[inds])
    dets, keep = mmcv_ops.batched_nms(boxes, scores, torch.arange(30) % 3, dict(type='nms', iou_threshold=0.5))
    assert len(keep) > 0 and torch.equal(dets[:, 4], scores[keep])
    empty = ext.nms(torch.zeros(0, 4), torch.zeros(0), 0.5, 0)
    assert empty.shape == (0,) and empty.dtype == torch.long


def _soft_nms_reference(boxes, scores, thr, sigma, min_score, method, offset):
    """mmcv's soft-NMS step for step on Python lists (selection by first maximum, swap, decay, drop by
    moving the last box into the dropped one's place)."""
    b, sc, inds = boxes.tolist(), scores.tolist(), list(range(len(scores)))
    n, dets = len(sc), []
    i = 0
    while i < n:
        m = max(range(i, n), key=lambda k: (sc[k], -k))
        for lst in (b, sc, inds):
            lst[i], lst[m] = lst[m], lst[i]
        dets.append(b[i] + [sc[i]])
        pos = i + 1
        while pos < n:
            ovr = _iou(b[i], b[pos], offset)
            if method == 0:
                w = 0.0 if ovr >= thr else 1.0
            elif method == 1:
                w = 1 - ovr if ovr >= thr else 1.0
            else:
                w = float(torch.exp(torch.tensor(-(ovr * ovr) / sigma)))
            sc[pos] *= w
            if sc[pos] < min_score:
                for lst in (b, sc, inds):
                    lst[pos] = lst[n - 1]
                n -= 1
                pos -= 1
            pos += 1
        i += 1
    return inds[:n], dets


@pytest.mark.parametrize('method,offset', [(0, 0), (1, 0), (2, 0), (1, 1)])
def test_soft_nms_follows_mmcvs_algorithm(method, offset):
    for seed in range(8):
        boxes, scores = _boxes(25, seed)
        scores = scores + 0.05
        dets = boxes.new_empty((25, 5))
        inds = ext.softnms(boxes, scores, dets, 0.3, 0.5, 0.1, method, offset)
        ref_inds, ref_dets = _soft_nms_reference(boxes, scores, 0.3, 0.5, 0.1, method, offset)
        assert inds.tolist() == ref_inds, (seed, method)
        torch.testing.assert_close(dets[:len(ref_inds)], torch.tensor(ref_dets), rtol=1e-5, atol=1e-5)
    out, keep = mmcv_ops.soft_nms(boxes, scores, 0.3, 0.5, 0.1, 'linear')
    assert torch.equal(out[:, :4], boxes[keep])


def test_nms_match_groups_each_kept_box_with_what_it_suppressed():
    boxes, scores = _boxes(30, 3)
    groups = ext.nms_match(torch.cat([boxes, scores[:, None]], 1), 0.3)
    order = scores.sort(0, descending=True)[1].tolist()
    b, seen, ref = boxes.tolist(), set(), []
    for pos, i in enumerate(order):
        if i in seen:
            continue
        hit = [j for j in order[pos + 1:] if j not in seen and _iou(b[i], b[j]) >= 0.3]
        seen.update(hit)
        ref.append([i] + hit)
    assert groups == ref
    assert sorted(sum(groups, [])) == list(range(30))
    assert [g.tolist() for g in mmcv_ops.nms_match(torch.cat([boxes, scores[:, None]], 1), 0.3)] == ref


@pytest.mark.parametrize('mode,aligned,offset', [('iou', False, 0), ('iof', False, 0), ('iou', True, 1)])
def test_bbox_overlaps_matches_mmdets_python_version(mode, aligned, offset):
    from mmdet.structures.bbox import bbox_overlaps as mmdet_overlaps
    a, _ = _boxes(6, 0)
    b = a.flip(0) if aligned else _boxes(9, 1)[0]
    got = mmcv_ops.bbox_overlaps(a, b, mode=mode, aligned=aligned, offset=offset)
    if offset:
        a, b = a + torch.tensor([0, 0, 1.0, 1.0]), b + torch.tensor([0, 0, 1.0, 1.0])
    torch.testing.assert_close(got, mmdet_overlaps(a, b, mode=mode, is_aligned=aligned, eps=1e-12))


# ----------------------------------------------------------------------------- RoI layers
def _rois(n, seed, size=20, batch=2):
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g) * size * 0.8 - 2
    wh = torch.rand(n, 2, generator=g) * size * 0.6
    idx = torch.randint(0, batch, (n, 1), generator=g).float()
    return torch.cat([idx, xy, xy + wh], 1)


@pytest.mark.parametrize('aligned,sampling_ratio,scale', [(True, 0, 1.0), (False, 2, 0.5), (True, 2, 0.25)])
def test_roi_align_forward_and_backward_are_torchvisions(aligned, sampling_ratio, scale):
    x = torch.randn(2, 3, 20, 24, dtype=torch.float64, requires_grad=True)
    rois = _rois(9, 0, size=20 / scale).double()
    ours = mmcv_ops.roi_align(x, rois, (4, 3), scale, sampling_ratio, 'avg', aligned)
    g = torch.randn_like(ours)
    (gx,) = torch.autograd.grad(ours, x, g)
    ref = torchvision.ops.roi_align(x, rois, (4, 3), scale, sampling_ratio, aligned)
    (rx,) = torch.autograd.grad(ref, x, g)
    torch.testing.assert_close(ours, ref, rtol=0, atol=0)
    torch.testing.assert_close(gx, rx, rtol=1e-12, atol=1e-12)


def test_roi_align_max_mode_is_refused_with_a_way_out():
    with pytest.raises(NotImplementedError, match=r"pool_mode='max'.*--full-mmcv"):
        mmcv_ops.roi_align(torch.randn(1, 2, 8, 8), _rois(2, 0, 8, 1), 2, 1.0, 2, 'max', True)


def _roi_pool_reference(x, rois, ph, pw, scale):
    """mmcv's RoIPool rule, element by element."""
    import math
    r, c = rois.size(0), x.size(1)
    h, w = x.shape[2:]
    out = torch.zeros(r, c, ph, pw, dtype=x.dtype)
    arg = torch.full((r, c, ph, pw), -1, dtype=torch.long)
    for k in range(r):
        b = int(rois[k, 0])
        x1, y1 = float(rois[k, 1]) * scale, float(rois[k, 2]) * scale
        x2, y2 = (float(rois[k, 3]) + 1) * scale, (float(rois[k, 4]) + 1) * scale
        if x2 - x1 <= 0 or y2 - y1 <= 0:
            continue
        bw, bh = (x2 - x1) / pw, (y2 - y1) / ph
        for i in range(ph):
            for j in range(pw):
                ys = min(max(math.floor(i * bh + y1), 0), h), min(max(math.ceil((i + 1) * bh + y1), 0), h)
                xs = min(max(math.floor(j * bw + x1), 0), w), min(max(math.ceil((j + 1) * bw + x1), 0), w)
                for ch in range(c):
                    if ys[1] <= ys[0] or xs[1] <= xs[0]:
                        continue
                    best, where = -3.4028234663852886e38, -1
                    for yy in range(*ys):
                        for xx in range(*xs):
                            if x[b, ch, yy, xx] > best:
                                best, where = float(x[b, ch, yy, xx]), yy * w + xx
                    out[k, ch, i, j], arg[k, ch, i, j] = best, where
    return out, arg


def test_roi_pool_forward_and_backward_follow_mmcvs_bin_rule():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 12, 14)
    x[0, 0, 3:6, 3:6] = 1.0  # ties: the first maximum in row-major order wins
    rois = torch.cat([_rois(12, 4, size=24, batch=2), torch.tensor([[1, 5.0, 5, 4, 9], [0, 30.0, 30, 40, 40]])])
    out = torch.empty(14, 3, 3, 2)
    arg = torch.zeros(14, 3, 3, 2, dtype=torch.int)
    ext.roi_pool_forward(x, rois, out, arg, pooled_height=3, pooled_width=2, spatial_scale=0.5)
    ref, ref_arg = _roi_pool_reference(x, rois, 3, 2, 0.5)
    valid = torch.ones(14, dtype=torch.bool)
    valid[12] = False  # degenerate (x2 < x1): mmcv leaves its output as it was
    torch.testing.assert_close(out[valid], ref[valid], rtol=0, atol=0)
    assert torch.equal(arg[valid].long(), ref_arg[valid])
    # backward: each bin's gradient lands on its argmax
    xg = x.clone().requires_grad_()
    y = mmcv_ops.roi_pool(xg, rois[valid], (3, 2), 0.5)
    gy = torch.randn_like(y)
    y.backward(gy)
    expect = torch.zeros_like(x).view(-1)
    for k, roi in enumerate(rois[valid]):
        for ch in range(3):
            for flat, g in zip(ref_arg[valid][k, ch].flatten().tolist(), gy[k, ch].flatten().tolist()):
                if flat >= 0:
                    expect[(int(roi[0]) * 3 + ch) * 12 * 14 + flat] += g
    torch.testing.assert_close(xg.grad.view(-1), expect)


# ----------------------------------------------------------------------------- deformable layers
@pytest.mark.parametrize('name', ['ModulatedDeformConv2dPack', 'DeformConv2dPack'])
def test_mmcvs_deformable_conv_layers_run_on_our_kernels_forward_and_backward(name):
    """mmcv's own layer (its Python: offset/mask split, buffers) against torchvision's deform_conv2d."""
    torch.manual_seed(0)
    bias = name == 'ModulatedDeformConv2dPack'  # mmcv's DCNv1 layer has none
    layer = getattr(mmcv_ops, name)(8, 6, 3, padding=1, stride=2, deform_groups=2, bias=bias).double()
    with torch.no_grad():
        for p in layer.parameters():
            p.normal_(0, 0.3)
    x = torch.randn(2, 8, 9, 11, dtype=torch.float64, requires_grad=True)
    y = layer(x)
    g = torch.randn_like(y)
    grads = torch.autograd.grad(y, [x] + list(layer.parameters()), g)
    xr = x.detach().clone().requires_grad_()
    out = layer.conv_offset(xr)
    if name == 'ModulatedDeformConv2dPack':
        o1, o2, m = out.chunk(3, dim=1)
        offset, mask = torch.cat([o1, o2], 1), m.sigmoid()
    else:
        offset, mask = out, None
    ref = torchvision.ops.deform_conv2d(xr, offset, layer.weight, getattr(layer, 'bias', None), stride=2, padding=1,
                                        mask=mask)
    torch.testing.assert_close(y, ref)
    ref_grads = torch.autograd.grad(ref, [xr] + list(layer.parameters()), g)
    for a, b in zip(grads, ref_grads):
        torch.testing.assert_close(a, b)


def test_mmcvs_deformable_roi_pooling_runs_on_our_kernels():
    from dcn_plugin.ops import ModulatedDeformRoIPoolPack
    torch.manual_seed(0)
    theirs = mmcv_ops.ModulatedDeformRoIPoolPack(3, 4, 16, 0.5, 2, 0.1)
    with torch.no_grad():
        for p in theirs.parameters():
            p.normal_(0, 0.1)
    ours = ModulatedDeformRoIPoolPack(3, 4, 16, 0.5, 2, 0.1)
    ours.load_state_dict(theirs.state_dict(), strict=True)
    x = torch.randn(2, 4, 10, 12, requires_grad=True)
    rois = _rois(5, 0, size=20)
    a, b = theirs(x, rois), ours(x, rois)
    torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)
    ga = torch.autograd.grad(a.sum(), [x] + list(theirs.parameters()))
    gb = torch.autograd.grad(b.sum(), [x] + list(ours.parameters()))
    for u, v in zip(ga, gb):
        torch.testing.assert_close(u, v, rtol=1e-5, atol=1e-6)


def test_stock_mmdet_resnet_with_mmcvs_dcnv2_equals_dcnresnet_with_the_same_weights():
    from mmdet.models.backbones import ResNet

    from dcn_plugin.models.backbones import DCNResNet
    torch.manual_seed(0)
    dcn = dict(type='DCNv2', deform_groups=1, fallback_on_stride=False)
    stock = ResNet(50, base_channels=8, dcn=dcn, stage_with_dcn=(False, True, True, True), norm_eval=False)
    ours = DCNResNet(50, base_channels=8, norm_eval=False)
    stock.eval()
    ours.eval()
    with torch.no_grad():
        for p in stock.parameters():
            p.normal_(0, 0.1)
    ours.load_state_dict(stock.state_dict(), strict=True)
    x = torch.randn(1, 3, 64, 64)
    for a, b in zip(stock(x), ours(x)):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('weight', [False, True])
def test_sigmoid_focal_loss_matches_mmdets_pytorch_version(weight):
    from mmdet.models.losses.focal_loss import py_sigmoid_focal_loss
    torch.manual_seed(0)
    x = torch.randn(12, 5, dtype=torch.float64, requires_grad=True)
    target = torch.randint(0, 6, (12,))  # 5 = background
    w = torch.rand(5, dtype=torch.float64) if weight else None
    if weight:
        target = target.clamp(max=4)
    ours = mmcv_ops.sigmoid_focal_loss(x, target, 2.0, 0.25, w, 'sum')
    one_hot = torch.nn.functional.one_hot(target, 6)[:, :5].double()
    ref = py_sigmoid_focal_loss(x, one_hot, None, 2.0, 0.25, 'none')
    if weight:
        ref = ref * w[target][:, None]
    ref = ref.sum()
    torch.testing.assert_close(ours, ref)
    torch.testing.assert_close(torch.autograd.grad(ours, x)[0], torch.autograd.grad(ref, x)[0])


# ----------------------------------------------------------------------------- the names
def _names_mmcv_loads():
    folder = osp.dirname(mmcv_ops.__file__)
    names = {}
    for path in glob.glob(osp.join(folder, '*.py')):
        for node in ast.walk(ast.parse(open(path).read())):
            if (isinstance(node, ast.Call) and getattr(node.func, 'attr', None) == 'load_ext'
                    and len(node.args) > 1 and isinstance(node.args[1], (ast.List, ast.Tuple))):
                for e in node.args[1].elts:
                    names[e.value] = osp.basename(path)[:-3]
    return names


def test_every_name_mmcv_loads_exists_and_the_missing_ones_say_what_to_install():
    names = _names_mmcv_loads()
    assert len(names) > 100
    for name, module in names.items():
        assert callable(getattr(ext, name)), name
    with pytest.raises(NotImplementedError, match=r'mmcv\._ext\.carafe_forward \(called by mmcv\.ops\.carafe\) '
                                                  r'is not available.*--full-mmcv'):
        mmcv_ops.carafe(torch.rand(1, 2, 4, 4), torch.rand(1, 9, 8, 8), 3, 1, 2)
    for name, module in names.items():  # the refusal names the module that calls it
        try:
            getattr(ext, name)()
        except NotImplementedError as e:
            assert f'mmcv.ops.{module}' in str(e), name
        except (TypeError, ValueError):
            pass  # an implemented one, called without its arguments


def test_the_stand_in_works_in_a_process_that_never_imported_torchvision():
    """torchvision's operators exist in torch.ops only once torchvision is imported: the stand-in imports it."""
    import subprocess
    import sys
    code = ('import torch, mmcv.ops; b = torch.tensor([[0., 0, 10, 10], [1, 1, 10, 10], [20, 20, 30, 30]]); '
            'print(mmcv.ops.nms(b, torch.tensor([0.9, 0.8, 0.7]), 0.5)[1].tolist())')
    out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and out.stdout.strip() == '[0, 2]', out.stderr[-2000:]


def test_a_compiled_ext_next_to_this_file_would_take_precedence():
    """Python's file finder tries extension modules before source files in the same folder."""
    import importlib._bootstrap_external as bootstrap
    kinds = [loader for loader, _ in bootstrap._get_supported_file_loaders()]
    assert kinds.index(importlib.machinery.ExtensionFileLoader) < kinds.index(importlib.machinery.SourceFileLoader)


def test_a_faster_rcnn_trains_and_predicts_through_the_stand_in(monkeypatch):
    """mmdet's training step and prediction call the stand-in's nms and RoIAlign (counted), and give finite
    losses, gradients and boxes."""
    from mmdet.registry import MODELS
    from mmdet.structures import DetDataSample
    from mmengine.config import Config
    from mmengine.registry import init_default_scope
    from mmengine.structures import InstanceData

    import dcn_plugin  # noqa: F401
    calls = {}
    for name in ('nms', 'roi_align_forward', 'roi_align_backward'):
        fn = getattr(ext, name)
        monkeypatch.setattr(ext, name, lambda *a, _fn=fn, _n=name, **k: (calls.__setitem__(_n, calls.get(_n, 0) + 1),
                                                                         _fn(*a, **k))[1])
    root = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
    cfg = Config.fromfile(osp.join(root, 'configs', 'demo', 'faster-rcnn_r18_fpn_gn-all_demo-shapes.py'))
    init_default_scope('mmdet')
    torch.manual_seed(0)
    model = MODELS.build(cfg.model)
    model.init_weights()
    meta = dict(img_shape=(96, 96), ori_shape=(96, 96), scale_factor=(1.0, 1.0), pad_shape=(96, 96),
                batch_input_shape=(96, 96))
    sample = DetDataSample(metainfo=meta)
    sample.gt_instances = InstanceData(bboxes=torch.tensor([[10.0, 12, 50, 60], [40, 30, 90, 70]]),
                                       labels=torch.tensor([0, 2]))
    data = dict(inputs=[torch.randint(0, 256, (3, 96, 96), dtype=torch.uint8)], data_samples=[sample])
    model.train()
    losses = model(**model.data_preprocessor(data, True), mode='loss')
    total, _ = model.parse_losses(losses)
    total.backward()
    assert torch.isfinite(total) and all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    model.eval()
    with torch.no_grad():
        out = model.test_step(data)
    assert out[0].pred_instances.bboxes.shape[1] == 4
    assert calls.get('nms', 0) > 0 and calls.get('roi_align_forward', 0) > 0 and calls.get('roi_align_backward', 0) > 0
