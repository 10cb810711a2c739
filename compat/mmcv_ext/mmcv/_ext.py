"""``mmcv._ext`` for an mmcv installed without its compiled operators (``mmcv-lite``).

mmcv's Python (``mmcv/ops/*.py``) calls ``mmcv._ext.<name>(...)`` with in-place output buffers. This
module answers those calls with operators that are already compiled elsewhere:

* torchvision: ``nms``, ``roi_align_forward`` / ``roi_align_backward`` (``pool_mode='avg'``);
* dcn_plugin's own operators (``torch.ops.dcn_plugin``): ``modulated_deform_conv_forward`` /
  ``_backward``, ``deform_conv_forward`` / ``_backward_input`` / ``_backward_parameters``,
  ``deform_roi_pool_forward`` / ``_backward``; so mmcv's own layers (``DCNv2`` in mmdet's ``ResNet``,
  ``DeformRoIPoolPack``, ...) run on CPU and CUDA on dcn_plugin's kernels;
* a few lines of PyTorch where torchvision has no operator with mmcv's semantics: ``softnms``,
  ``nms_match``, ``roi_pool_forward`` / ``_backward`` (mmcv's bin rule, not torchvision's),
  ``sigmoid_focal_loss_forward`` / ``_backward``, ``bbox_overlaps``.

Every other name mmcv 2.1.0 asks for at import exists and raises ``NotImplementedError`` naming the
operator, the mmcv module that called it and how to get the full build. A compiled ``mmcv/_ext*.so`` in
the same folder (a full mmcv build) takes precedence over this file: Python imports an extension module
before a ``.py`` module of the same name.

This file is the whole of the ``dcn-plugin-mmcv-ext`` distribution (``compat/mmcv_ext`` in the
dcn_plugin repository), so pip records it and removes it cleanly.
"""
from typing import Callable, Dict, List, Optional

import torch
from torch import Tensor

#: tells this module from another pure-Python mmcv._ext (the stand-in tests run only against this one)
IS_STANDIN = True

_FULL_BUILD = ('install the full mmcv 2.1.0 with its compiled operators instead of mmcv-lite (in the dcn_plugin '
               'repository: `bash scripts/setup_env.sh --full-mmcv`)')
_FLT_MAX = torch.finfo(torch.float32).max
_FLT_MIN = torch.finfo(torch.float32).tiny


def _plugin_ops():
    """``torch.ops.dcn_plugin``, loaded on first use (importing dcn_plugin at mmcv's import would be a cycle)."""
    try:
        import dcn_plugin.ops  # noqa: F401  (loads the operator library)
    except ImportError as e:
        raise NotImplementedError(
            f'mmcv._ext (dcn_plugin stand-in): mmcv\'s deformable layers run on dcn_plugin\'s operators, and '
            f'dcn_plugin cannot be imported ({e}); install dcn_plugin, or {_FULL_BUILD}') from e
    return torch.ops.dcn_plugin


def _torchvision_ops():
    """``torch.ops.torchvision``, whose operators exist once torchvision is imported (on first use: importing it
    with ``mmcv.ops`` would make every mmdet import pay for it)."""
    import torchvision  # noqa: F401
    return torch.ops.torchvision


def _none_if_empty(t: Optional[Tensor]) -> Optional[Tensor]:
    return None if t is None or t.numel() == 0 else t


# ----------------------------------------------------------------------------- NMS family
def _boxes_with_offset(boxes: Tensor, offset: int) -> Tensor:
    """mmcv's ``offset`` (widths are ``x2 - x1 + offset``) as plain boxes: ``(x2, y2) + offset``. Overlaps and
    areas of the shifted boxes are mmcv's with the offset."""
    if offset not in (0, 1):
        raise ValueError(f'offset must be 0 or 1, got {offset}')
    boxes = boxes[:, :4] if boxes.dtype == torch.float64 else boxes[:, :4].float()
    return boxes if offset == 0 else torch.cat([boxes[:, :2], boxes[:, 2:] + offset], dim=1)


def _iou_one_to_many(box: Tensor, boxes: Tensor) -> Tensor:
    """IoU of one ``(4,)`` box with ``(K, 4)`` boxes, in float32, as mmcv computes it."""
    w = (torch.minimum(box[2], boxes[:, 2]) - torch.maximum(box[0], boxes[:, 0])).clamp_min(0)
    h = (torch.minimum(box[3], boxes[:, 3]) - torch.maximum(box[1], boxes[:, 1])).clamp_min(0)
    inter = w * h
    area = (box[2] - box[0]) * (box[3] - box[1])
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    return inter / (area + areas - inter)


def nms(boxes: Tensor, scores: Tensor, iou_threshold: float, offset: int = 0) -> Tensor:
    """Indices of the kept boxes, highest score first; a box is dropped when its IoU with a kept one is
    ``> iou_threshold``. Ties in score keep mmcv's order: the boxes are ordered by mmcv's own sort call,
    then torchvision runs on strictly decreasing rank scores, so no second sort can reorder them."""
    if boxes.numel() == 0:
        return boxes.new_empty((0,), dtype=torch.long)
    order = scores.sort(0, descending=True)[1]
    sorted_boxes = _boxes_with_offset(boxes[order], offset)
    ranks = torch.arange(order.numel(), 0, -1, device=boxes.device, dtype=sorted_boxes.dtype)  # exact below 2^24
    kept = _torchvision_ops().nms(sorted_boxes, ranks, float(iou_threshold))
    return order[kept]


def softnms(boxes: Tensor, scores: Tensor, dets: Tensor, iou_threshold: float, sigma: float, min_score: float,
            method: int, offset: int) -> Tensor:
    """Soft-NMS (``method`` 0 naive, 1 linear, 2 gaussian) on CPU tensors, mmcv's algorithm step for step:
    take the highest remaining score (the first such box on ties), decay the others' scores by their IoU
    with it, drop those below ``min_score`` by moving the last remaining box into their place. Writes the
    chosen boxes and their decayed scores into ``dets`` ``(N, 5)`` row by row; returns their indices."""
    if method not in (0, 1, 2):
        raise ValueError(f'method must be 0 (naive), 1 (linear) or 2 (gaussian), got {method}')
    n = boxes.size(0)
    if n == 0:
        return boxes.new_empty((0,), dtype=torch.long)
    b = _boxes_with_offset(boxes, offset).clone()
    sc = scores.float().clone()
    inds = torch.arange(n)
    i = 0
    while i < n:
        m = i + int(torch.argmax(sc[i:n]))  # the first maximum, as mmcv's strict '<' scan
        for t in (b, sc, inds):
            t[[i, m]] = t[[m, i]]
        dets[i, :4] = boxes[inds[i], :4]
        dets[i, 4] = sc[i]
        if i + 1 < n:
            ovr = _iou_one_to_many(b[i], b[i + 1:n])
            if method == 0:
                weight = torch.where(ovr >= iou_threshold, 0.0, 1.0)
            elif method == 1:
                weight = torch.where(ovr >= iou_threshold, 1 - ovr, 1.0)
            else:
                weight = torch.exp(-(ovr * ovr) / sigma)
            sc[i + 1:n] *= weight
            # drop the boxes below min_score: each dropped slot takes the last remaining box
            keep = (sc[i + 1:n] >= min_score).tolist()
            slots = list(range(i + 1, n))
            front, back = 0, len(slots) - 1
            order = []
            while front <= back:
                if keep[front]:
                    order.append(slots[front])
                    front += 1
                else:
                    while back > front and not keep[back]:
                        back -= 1
                    if back > front:
                        order.append(slots[back])
                        back -= 1
                    front += 1
            if order != slots[:len(order)]:
                idx = torch.tensor(order)
                for t in (b, sc, inds):
                    t[i + 1:i + 1 + len(order)] = t[idx].clone()
            n = i + 1 + len(order)
        i += 1
    return inds[:n]


def nms_match(dets: Tensor, iou_threshold: float) -> List[List[int]]:
    """Groups of indices: each kept box (score order) followed by the boxes it suppressed (IoU ``>=`` the
    threshold, no offset), as mmcv's ``nms_match``."""
    boxes = dets[:, :4].float()
    order = dets[:, 4].sort(0, descending=True)[1].tolist()
    suppressed = torch.zeros(dets.size(0), dtype=torch.bool)
    groups = []
    for pos, i in enumerate(order):
        if suppressed[i]:
            continue
        rest = torch.tensor(order[pos + 1:], dtype=torch.long)
        rest = rest[~suppressed[rest]]
        hit = rest[_iou_one_to_many(boxes[i], boxes[rest]) >= iou_threshold] if rest.numel() else rest
        suppressed[hit] = True
        groups.append([i] + hit.tolist())
    return groups


def bbox_overlaps(bboxes1: Tensor, bboxes2: Tensor, ious: Tensor, mode: int = 0, aligned: bool = False,
                  offset: int = 0) -> None:
    """IoU (``mode`` 0) or intersection over the first box's area (``mode`` 1) into ``ious``."""
    if mode not in (0, 1):
        raise ValueError(f'mode must be 0 (iou) or 1 (iof), got {mode}')
    a, b = bboxes1[:, :4], bboxes2[:, :4]
    if not aligned:
        a, b = a[:, None, :], b[None, :, :]
    w = (torch.minimum(a[..., 2], b[..., 2]) - torch.maximum(a[..., 0], b[..., 0]) + offset).clamp_min(0)
    h = (torch.minimum(a[..., 3], b[..., 3]) - torch.maximum(a[..., 1], b[..., 1]) + offset).clamp_min(0)
    inter = w * h
    area_a = (a[..., 2] - a[..., 0] + offset) * (a[..., 3] - a[..., 1] + offset)
    if mode == 0:
        area_b = (b[..., 2] - b[..., 0] + offset) * (b[..., 3] - b[..., 1] + offset)
        union = area_a + area_b - inter
    else:
        union = area_a
    ious.copy_(inter / union.clamp_min(offset))  # mmcv divides by max(union, offset)


# ----------------------------------------------------------------------------- RoI layers
def _avg_only(pool_mode: int) -> None:
    if pool_mode != 1:
        raise NotImplementedError(
            "mmcv._ext (dcn_plugin stand-in): roi_align with pool_mode='max' (mmcv.ops.roi_align) has no "
            f"implementation here; use pool_mode='avg' (what mmdet's RoIAlign uses), or {_FULL_BUILD}")


def roi_align_forward(input: Tensor, rois: Tensor, output: Tensor, argmax_y: Tensor, argmax_x: Tensor,
                      aligned_height: int, aligned_width: int, spatial_scale: float, sampling_ratio: int,
                      pool_mode: int, aligned: bool) -> None:
    """RoIAlign (average pooling) into ``output``: torchvision's operator, which has mmcv's semantics."""
    _avg_only(pool_mode)
    output.copy_(_torchvision_ops().roi_align(input, rois, float(spatial_scale), aligned_height, aligned_width,
                                                 sampling_ratio, bool(aligned)))


def roi_align_backward(grad_output: Tensor, rois: Tensor, argmax_y: Tensor, argmax_x: Tensor, grad_input: Tensor,
                       aligned_height: int, aligned_width: int, spatial_scale: float, sampling_ratio: int,
                       pool_mode: int, aligned: bool) -> None:
    """Adds RoIAlign's input gradient to ``grad_input`` (torchvision's backward operator)."""
    _avg_only(pool_mode)
    n, c, h, w = grad_input.shape
    grad_input.add_(_torchvision_ops()._roi_align_backward(
        grad_output, rois, float(spatial_scale), aligned_height, aligned_width, n, c, h, w, sampling_ratio,
        bool(aligned)))


def _roi_pool_bins(rois: Tensor, pooled: int, scale: float, lo: int, size: int):
    """mmcv's RoIPool bins along one axis: ``[floor(start + p * bin), ceil(start + (p + 1) * bin))`` with
    ``start = x1 * scale``, ``end = (x2 + 1) * scale`` (no rounding), clipped to ``[0, size]``. Returns the
    bins' first and last-plus-one index ``(R, pooled)`` and whether the RoI is degenerate ``(R,)``."""
    start = rois[:, lo] * scale
    extent = (rois[:, lo + 2] + 1) * scale - start
    bin_size = extent / pooled
    p = torch.arange(pooled, device=rois.device, dtype=rois.dtype)
    first = torch.floor(p * bin_size[:, None] + start[:, None]).clamp(0, size).long()
    last = torch.ceil((p + 1) * bin_size[:, None] + start[:, None]).clamp(0, size).long()
    return first, last, extent <= 0


def roi_pool_forward(input: Tensor, rois: Tensor, output: Tensor, argmax: Tensor, pooled_height: int,
                     pooled_width: int, spatial_scale: float) -> None:
    """RoI max pooling with mmcv's bin rule into ``output``, the flat ``h * W + w`` index of each bin's first
    maximum into ``argmax`` (``-1`` and output 0 for an empty bin; a degenerate RoI leaves its output alone).
    torchvision's ``roi_pool`` rounds the RoI to whole pixels and so pools other bins."""
    _, c, height, width = input.shape
    r = rois.size(0)
    if r == 0:
        return
    rois_f = rois.float()
    y0, y1, bad_y = _roi_pool_bins(rois_f, pooled_height, float(spatial_scale), 2, height)
    x0, x1, bad_x = _roi_pool_bins(rois_f, pooled_width, float(spatial_scale), 1, width)
    span_h = int((y1 - y0).max().clamp_min(1))
    span_w = int((x1 - x0).max().clamp_min(1))
    ys = y0[:, :, None] + torch.arange(span_h, device=rois.device)  # (R, ph, sh)
    xs = x0[:, :, None] + torch.arange(span_w, device=rois.device)  # (R, pw, sw)
    valid = (ys < y1[:, :, None])[:, :, None, :, None] & (xs < x1[:, :, None])[:, None, :, None, :]
    flat = (ys.clamp(max=height - 1)[:, :, None, :, None] * width
            + xs.clamp(max=width - 1)[:, None, :, None, :])  # (R, ph, pw, sh, sw)
    planes = (rois[:, 0].long()[:, None] * c + torch.arange(c, device=rois.device))[:, :, None] * (height * width)
    values = input.contiguous().view(-1)
    out = torch.empty((r, c, pooled_height, pooled_width), dtype=input.dtype, device=input.device)
    arg = torch.empty((r, c, pooled_height, pooled_width), dtype=torch.long, device=input.device)
    chunk = max(1, (1 << 24) // max(1, c * pooled_height * pooled_width * span_h * span_w))
    for s in range(0, r, chunk):
        sl = slice(s, s + chunk)
        idx = planes[sl] + flat[sl].flatten(1)[:, None, :]  # (r, C, ph*pw*sh*sw) into the whole input
        vals = values.take(idx).view(-1, c, pooled_height, pooled_width, span_h * span_w)
        ok = valid[sl].flatten(3)[:, None]  # (r, 1, ph, pw, sh*sw)
        vals = vals.masked_fill(~ok, float('-inf'))
        best, pos = vals.max(dim=-1)
        src = flat[sl].flatten(3)[:, None].expand(-1, c, -1, -1, -1).gather(-1, pos[..., None])[..., 0]
        empty = ~ok.any(dim=-1).expand_as(best)
        above = best > -_FLT_MAX  # mmcv starts each bin at -FLT_MAX and takes strictly greater values
        out[sl] = torch.where(empty, 0.0, torch.where(above, best, -_FLT_MAX)).to(input.dtype)
        arg[sl] = torch.where(empty | ~above, -1, src)
    degenerate = bad_x | bad_y
    output[~degenerate] = out[~degenerate]
    argmax[~degenerate] = arg[~degenerate].to(argmax.dtype)


def roi_pool_backward(grad_output: Tensor, rois: Tensor, argmax: Tensor, grad_input: Tensor, pooled_height: int,
                      pooled_width: int, spatial_scale: float) -> None:
    """Adds each bin's gradient to the input element its ``argmax`` names (nothing for ``-1``)."""
    r, c = grad_output.shape[:2]
    if r == 0:
        return
    n, _, height, width = grad_input.shape
    hit = argmax >= 0
    plane = (rois[:, 0].long()[:, None] * c + torch.arange(c, device=rois.device))  # (R, C): (n, c) planes
    target = plane[:, :, None, None].expand_as(argmax) * (height * width) + argmax.long()
    grad_input.view(-1).index_add_(0, target[hit], grad_output[hit].to(grad_input.dtype))


def deform_roi_pool_forward(input: Tensor, rois: Tensor, offset: Tensor, output: Tensor, pooled_height: int,
                            pooled_width: int, spatial_scale: float, sampling_ratio: int, gamma: float) -> None:
    """mmcv's deformable RoI pooling on dcn_plugin's operator (an empty ``offset`` means none)."""
    output.copy_(_plugin_ops().deform_roi_pool(input, rois, _none_if_empty(offset), [pooled_height, pooled_width],
                                               float(spatial_scale), int(sampling_ratio), float(gamma)))


def deform_roi_pool_backward(grad_output: Tensor, input: Tensor, rois: Tensor, offset: Tensor, grad_input: Tensor,
                             grad_offset: Tensor, pooled_height: int, pooled_width: int, spatial_scale: float,
                             sampling_ratio: int, gamma: float) -> None:
    """Adds the input and offset gradients of :func:`deform_roi_pool_forward` to the buffers."""
    off = _none_if_empty(offset)
    g_in, g_off = _plugin_ops().deform_roi_pool_backward(
        grad_output, input, rois, off, [pooled_height, pooled_width], float(spatial_scale), int(sampling_ratio),
        float(gamma), [True, off is not None and grad_offset.numel() > 0])
    grad_input.add_(g_in)
    if off is not None and grad_offset.numel() > 0:
        grad_offset.add_(g_off)


# ----------------------------------------------------------------------------- deformable convolution
def modulated_deform_conv_forward(input: Tensor, weight: Tensor, bias: Tensor, ones: Tensor, offset: Tensor,
                                  mask: Tensor, output: Tensor, columns: Tensor, kernel_h: int, kernel_w: int,
                                  stride_h: int, stride_w: int, pad_h: int, pad_w: int, dilation_h: int,
                                  dilation_w: int, group: int, deformable_group: int, with_bias: bool) -> None:
    """mmcv's DCNv2 forward on dcn_plugin's operator (the ``ones`` and ``columns`` buffers are unused)."""
    _check_kernel(weight, kernel_h, kernel_w)
    out = _plugin_ops().modulated_deform_conv2d(input, offset, mask, weight, bias if with_bias else None,
                                               [stride_h, stride_w], [pad_h, pad_w], [dilation_h, dilation_w],
                                               group, deformable_group)
    output.resize_(out.shape).copy_(out)


def modulated_deform_conv_backward(input: Tensor, weight: Tensor, bias: Tensor, ones: Tensor, offset: Tensor,
                                   mask: Tensor, columns: Tensor, grad_input: Tensor, grad_weight: Tensor,
                                   grad_bias: Tensor, grad_offset: Tensor, grad_mask: Tensor, grad_output: Tensor,
                                   kernel_h: int, kernel_w: int, stride_h: int, stride_w: int, pad_h: int,
                                   pad_w: int, dilation_h: int, dilation_w: int, group: int, deformable_group: int,
                                   with_bias: bool) -> None:
    """Adds every gradient of :func:`modulated_deform_conv_forward` to its buffer."""
    _check_kernel(weight, kernel_h, kernel_w)
    grads = _plugin_ops().modulated_deform_conv2d_backward(
        grad_output, input, offset, mask, weight, [stride_h, stride_w], [pad_h, pad_w], [dilation_h, dilation_w],
        group, deformable_group, [True, True, True, True, bool(with_bias)])
    for buf, g in zip((grad_input, grad_offset, grad_mask, grad_weight), grads[:4]):
        buf.add_(g.view_as(buf))
    if with_bias:
        grad_bias.add_(grads[4].view_as(grad_bias))


def deform_conv_forward(input: Tensor, weight: Tensor, offset: Tensor, output: Tensor, columns: Tensor,
                        ones: Tensor, kW: int, kH: int, dW: int, dH: int, padW: int, padH: int, dilationW: int,
                        dilationH: int, group: int, deformable_group: int, im2col_step: int) -> None:
    """mmcv's DCNv1 forward (no mask, no bias) on dcn_plugin's operator."""
    _check_kernel(weight, kH, kW)
    out = _plugin_ops().modulated_deform_conv2d(input, offset, None, weight, None, [dH, dW], [padH, padW],
                                               [dilationH, dilationW], group, deformable_group)
    output.resize_(out.shape).copy_(out)


def _deform_conv_grads(input, offset, grad_output, weight, kH, kW, dH, dW, padH, padW, dilationH, dilationW, group,
                       deformable_group, output_mask):
    _check_kernel(weight, kH, kW)
    return _plugin_ops().modulated_deform_conv2d_backward(
        grad_output, input, offset, None, weight, [dH, dW], [padH, padW], [dilationH, dilationW], group,
        deformable_group, output_mask)


def deform_conv_backward_input(input: Tensor, offset: Tensor, gradOutput: Tensor, gradInput: Tensor,
                               gradOffset: Tensor, weight: Tensor, columns: Tensor, kW: int, kH: int, dW: int,
                               dH: int, padW: int, padH: int, dilationW: int, dilationH: int, group: int,
                               deformable_group: int, im2col_step: int) -> None:
    """Adds DCNv1's input and offset gradients to ``gradInput`` and ``gradOffset``."""
    g = _deform_conv_grads(input, offset, gradOutput, weight, kH, kW, dH, dW, padH, padW, dilationH, dilationW,
                           group, deformable_group, [True, True, False, False, False])
    gradInput.add_(g[0].view_as(gradInput))
    gradOffset.add_(g[1].view_as(gradOffset))


def deform_conv_backward_parameters(input: Tensor, offset: Tensor, gradOutput: Tensor, gradWeight: Tensor,
                                    columns: Tensor, ones: Tensor, kW: int, kH: int, dW: int, dH: int, padW: int,
                                    padH: int, dilationW: int, dilationH: int, group: int, deformable_group: int,
                                    scale: float, im2col_step: int) -> None:
    """Adds ``scale`` times DCNv1's weight gradient to ``gradWeight``."""
    g = _deform_conv_grads(input, offset, gradOutput, gradWeight, kH, kW, dH, dW, padH, padW, dilationH, dilationW,
                           group, deformable_group, [False, False, False, True, False])
    gradWeight.add_(g[3].view_as(gradWeight), alpha=scale)


def _check_kernel(weight: Tensor, kernel_h: int, kernel_w: int) -> None:
    if tuple(weight.shape[2:]) != (kernel_h, kernel_w):
        raise ValueError(f'kernel size ({kernel_h}, {kernel_w}) does not match weight of shape {tuple(weight.shape)}')


# ----------------------------------------------------------------------------- losses
def _focal_terms(input: Tensor, target: Tensor, weight: Tensor):
    if input.dim() != 2 or target.shape != input.shape[:1]:
        raise ValueError(f'sigmoid focal loss needs input (N, C) and target (N,), got {tuple(input.shape)} '
                         f'and {tuple(target.shape)}')
    classes = torch.arange(input.size(1), device=input.device)
    pos = (target[:, None] == classes).to(input.dtype)
    p = torch.sigmoid(input)
    w = None
    if weight.numel() > 0:
        if bool(((target < 0) | (target >= weight.numel())).any()):
            raise ValueError(f'sigmoid focal loss: weight has {weight.numel()} entries (one per class) but a target '
                             f'is outside [0, {weight.numel()})')
        w = weight[target][:, None]
    return pos, p, w


def sigmoid_focal_loss_forward(input: Tensor, target: Tensor, weight: Tensor, output: Tensor, gamma: float,
                               alpha: float) -> None:
    """Per-element sigmoid focal loss into ``output`` (mmcv's formula: logs clamped at ``FLT_MIN``; a
    target outside ``[0, C)`` is background for every class)."""
    pos, p, w = _focal_terms(input, target, weight)
    term_p = (1 - p).pow(gamma) * torch.log(p.clamp_min(_FLT_MIN))
    term_n = p.pow(gamma) * torch.log((1 - p).clamp_min(_FLT_MIN))
    loss = -pos * alpha * term_p - (1 - pos) * (1 - alpha) * term_n
    output.copy_(loss if w is None else loss * w)


def sigmoid_focal_loss_backward(input: Tensor, target: Tensor, weight: Tensor, grad_input: Tensor, gamma: float,
                                alpha: float) -> None:
    """The derivative of :func:`sigmoid_focal_loss_forward` with respect to ``input``, into ``grad_input``."""
    pos, p, w = _focal_terms(input, target, weight)
    term_p = (1 - p).pow(gamma) * (1 - p - gamma * p * torch.log(p.clamp_min(_FLT_MIN)))
    term_n = p.pow(gamma) * (gamma * (1 - p) * torch.log((1 - p).clamp_min(_FLT_MIN)) - p)
    grad = -pos * alpha * term_p - (1 - pos) * (1 - alpha) * term_n
    grad_input.copy_(grad if w is None else grad * w)


# ----------------------------------------------------------------------------- information
def get_compiler_version() -> str:
    return 'none (mmcv._ext stand-in from dcn_plugin: pure Python on torchvision and dcn_plugin operators)'


def get_compiling_cuda_version() -> str:
    cuda = torch.version.cuda
    return 'not compiled' if cuda is None else f'not compiled (torch built with CUDA {cuda})'


# ----------------------------------------------------------------------------- what is not provided
#: mmcv 2.1.0's compiled operators without an implementation here, and the mmcv module that calls each
#: (a table, one line per module: its lines are alike by design)
_NOT_PROVIDED = {
    'active_rotated_filter': ['active_rotated_filter_forward', 'active_rotated_filter_backward'],
    'assign_score_withk': ['assign_score_withk_forward', 'assign_score_withk_backward'],
    'ball_query': ['ball_query_forward', 'stack_ball_query_forward'],
    'bezier_align': ['bezier_align_forward', 'bezier_align_backward'],
    'bias_act': ['bias_act'],
    'border_align': ['border_align_forward', 'border_align_backward'],
    'box_iou_quadri': ['box_iou_quadri'],
    'box_iou_rotated': ['box_iou_rotated'],
    'carafe': ['carafe_forward', 'carafe_backward', 'carafe_naive_forward', 'carafe_naive_backward'],
    'chamfer_distance': ['chamfer_distance_forward', 'chamfer_distance_backward'],
    'contour_expand': ['contour_expand'],
    'convex_iou': ['convex_iou', 'convex_giou'],
    'correlation': ['correlation_forward', 'correlation_backward'],
    'diff_iou_rotated': ['diff_iou_rotated_sort_vertices_forward'],
    'filtered_lrelu': ['filtered_lrelu', 'filtered_lrelu_act_'],
    'focal_loss': ['softmax_focal_loss_forward', 'softmax_focal_loss_backward'],
    'furthest_point_sample': ['furthest_point_sampling_forward', 'furthest_point_sampling_with_dist_forward'],
    'fused_bias_leakyrelu': ['fused_bias_leakyrelu'],
    'gather_points': ['gather_points_forward', 'gather_points_backward'],
    'group_points': ['group_points_forward', 'group_points_backward', 'stack_group_points_forward',
                     'stack_group_points_backward'],
    'iou3d': ['iou3d_boxes_overlap_bev_forward', 'iou3d_nms3d_forward', 'iou3d_nms3d_normal_forward'],
    'knn': ['knn_forward'],
    'masked_conv': ['masked_im2col_forward', 'masked_col2im_forward'],
    'min_area_polygons': ['min_area_polygons'],
    'multi_scale_deform_attn': ['ms_deform_attn_forward', 'ms_deform_attn_backward'],
    'nms': ['nms_rotated', 'nms_quadri'],
    'pixel_group': ['pixel_group'],
    'points_in_boxes': ['points_in_boxes_part_forward', 'points_in_boxes_all_forward',
                        'points_in_boxes_cpu_forward'],
    'points_in_polygons': ['points_in_polygons_forward'],
    'prroi_pool': ['prroi_pool_forward', 'prroi_pool_backward', 'prroi_pool_coor_backward'],
    'psa_mask': ['psamask_forward', 'psamask_backward'],
    'riroi_align_rotated': ['riroi_align_rotated_forward', 'riroi_align_rotated_backward'],
    'roi_align_rotated': ['roi_align_rotated_forward', 'roi_align_rotated_backward'],
    'roiaware_pool3d': ['roiaware_pool3d_forward', 'roiaware_pool3d_backward'],
    'roipoint_pool3d': ['roipoint_pool3d_forward'],
    'rotated_feature_align': ['rotated_feature_align_forward', 'rotated_feature_align_backward'],
    'scatter_points': ['dynamic_point_to_voxel_forward', 'dynamic_point_to_voxel_backward'],
    'sparse_ops': ['get_indice_pairs_2d_forward', 'get_indice_pairs_3d_forward', 'get_indice_pairs_4d_forward',
                   'get_indice_pairs_2d_backward', 'get_indice_pairs_3d_backward', 'indice_conv_forward',
                   'indice_conv_backward', 'fused_indice_conv_forward', 'indice_maxpool_forward',
                   'indice_maxpool_backward'],
    'sync_bn': ['sync_bn_forward_mean', 'sync_bn_forward_var', 'sync_bn_forward_output', 'sync_bn_backward_param',
                'sync_bn_backward_data'],
    'three_interpolate': ['three_interpolate_forward', 'three_interpolate_backward'],
    'three_nn': ['three_nn_forward'],
    'tin_shift': ['tin_shift_forward', 'tin_shift_backward'],
    'upfirdn2d': ['upfirdn2d'],
    'voxelize': ['dynamic_voxelize_forward', 'hard_voxelize_forward'],
}


def _not_provided(name: str, caller: str) -> Callable[..., None]:
    def refuse(*args, **kwargs):
        raise NotImplementedError(
            f'mmcv._ext.{name} (called by mmcv.ops.{caller}) is not available: this mmcv has no compiled '
            f'operators (mmcv-lite with the dcn_plugin stand-in, which provides nms, RoIAlign, RoIPool, the '
            f'deformable convolutions and RoI pooling and sigmoid focal loss). To use mmcv.ops.{caller}, '
            f'{_FULL_BUILD}.')
    refuse.__name__ = refuse.__qualname__ = name
    return refuse


def _install_refusals(namespace: Dict[str, object]) -> None:
    for caller, names in _NOT_PROVIDED.items():
        for name in names:
            if name in namespace:
                raise RuntimeError(f'mmcv._ext: {name} is both provided and refused')
            namespace[name] = _not_provided(name, caller)


_install_refusals(globals())
