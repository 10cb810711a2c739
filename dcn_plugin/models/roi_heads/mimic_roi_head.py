"""R-CNN feature mimicking: a training-time branch of the RoI head.

From Zhu et al., "Deformable ConvNets v2: More Deformable, Better Results" (CVPR 2019), section 3.3.
During training, up to ``N`` sampled RoIs per image are cropped from the input image, resized to a fixed
size and run through the *same* backbone, neck, RoI extractor and box head trunk as the whole image. The
trunk's feature of a crop, ``f_RCNN(b)``, is the feature an R-CNN would compute on the object alone; the
Faster R-CNN feature of the same RoI, ``f_FRCNN(b)``, comes from the normal pass over the whole image and
therefore also sees context. The branch adds

- a mimic loss ``1 - cos(f_RCNN(b), f_FRCNN(b))`` over the selected RoIs, which pulls the Faster R-CNN
  features towards the context-free ones, and
- a cross-entropy loss of an unshared (C+1)-way classifier on ``f_RCNN``, which keeps the crop features
  discriminative,

both weighted 0.1 by default. Inference (``predict``) is the parent's: the branch costs nothing at test time.

mmdet hands the RoI head only the features of the image, not the image itself, so the branch needs the
detector's help: :class:`~dcn_plugin.models.roi_heads.MimicFasterRCNN` passes its input batch and its
``extract_feat`` through :meth:`MimicRoIHead.mimic_source` while it computes the losses.
"""
import contextlib
import hashlib
from typing import Callable, Iterator, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from mmdet.models.roi_heads import StandardRoIHead
from mmdet.models.task_modules.samplers import SamplingResult
from mmdet.registry import MODELS
from mmdet.structures import DetDataSample
from mmdet.structures.bbox import get_box_tensor
from torch import Tensor, nn

from ...ops.pair import IntPair, to_pair
from ...utils.state_dict import register_training_only_keys

__all__ = ['MimicRoIHead', 'mimic_cosine_loss', 'crop_image_rois']

_REDUCTIONS = ('mean', 'sum')

# the unshared crop classifier is used by training only: a checkpoint trained with the branch tests with
# the same model configured without it (and the other way round)
register_training_only_keys(r'(^|\.)mimic_cls\.')


def _size(value: IntPair, name: str) -> Tuple[int, int]:
    """``(h, w)`` from an int or a pair of ints, each at least 1."""
    h, w = to_pair(value, name)
    if min(h, w) < 1:
        raise ValueError(f'{name} must be at least 1, got {(h, w)}')
    return h, w


def _own_generator(device: torch.device, salt: bytes) -> torch.Generator:
    """A CPU generator of the branch's own, seeded from the state of ``device``'s global generator and
    ``salt``, without drawing from it.

    The global stream is what mmdet's samplers and the parameter initialisers draw from: the branch must
    leave it as it finds it, so that a model with the branch samples the same RoIs and starts from the same
    weights as the model without it, for the same seed. Seeding from that state keeps the branch's own
    draws repeatable from the run's seed and exact on resume (the state is checkpointed), and new at every
    training step (the samplers move the state on).
    """
    if device.type == 'cuda':
        state = torch.cuda.get_rng_state(device)
    else:
        state = torch.random.get_rng_state()
    digest = hashlib.blake2b(state.numpy().tobytes(), digest_size=8, person=b'dcn-mimic', salt=salt).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest, 'little') >> 1)


def _check_cls_loss(loss: nn.Module, num_classes: int) -> None:
    """Refuse a ``loss_mimic_cls`` that cannot take ``(K, C + 1)`` logits and ``(K,)`` labels to a scalar."""
    expected = ('loss_mimic_cls must be a softmax classification loss called as loss(logits, labels) with '
                f'logits (K, C + 1) = (K, {num_classes + 1}) and labels (K,) in [0, C] (C = background), '
                "returning a scalar, e.g. dict(type='CrossEntropyLoss', use_sigmoid=False, loss_weight=0.1)")
    if getattr(loss, 'use_sigmoid', False):
        raise ValueError(f'{expected}; got use_sigmoid=True')
    logits = torch.zeros(2, num_classes + 1)
    labels = torch.tensor([0, num_classes])
    try:
        with torch.no_grad():
            out = loss(logits, labels)
    except Exception as exc:  # noqa: BLE001  (any failure means the config is wrong: say which key)
        raise ValueError(f'{expected}; {type(loss).__name__} fails on such input with '
                         f'{type(exc).__name__}: {exc}'.rstrip(': ')) from exc
    if not isinstance(out, Tensor) or out.dim() != 0 or not torch.isfinite(out):
        got = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
        raise ValueError(f'{expected}; {type(loss).__name__} returned {got}')


def mimic_cosine_loss(f_rcnn: Tensor, f_frcnn: Tensor, reduction: str = 'mean') -> Tensor:
    """Feature mimic loss ``1 - cos(f_RCNN(b), f_FRCNN(b))`` over the RoIs ``b``.

    Computed in float32 whatever the input dtype (cosines of half-precision features lose digits).

    Args:
        f_rcnn: ``(K, D)`` features of the K RoI crops (the R-CNN branch).
        f_frcnn: ``(K, D)`` features of the same RoIs in the whole-image pass (the Faster R-CNN branch).
        reduction: ``'mean'`` (average over the K RoIs) or ``'sum'``.

    Returns:
        A float32 scalar; 0 when the two features of every RoI point the same way, up to 2 when they are
        opposite. With ``K == 0`` it is a zero that is still connected to both inputs' graphs.
    """
    if reduction not in _REDUCTIONS:
        raise ValueError(f'reduction must be one of {_REDUCTIONS}, got {reduction!r}')
    if f_rcnn.dim() != 2 or f_rcnn.shape != f_frcnn.shape:
        raise ValueError(f'f_rcnn and f_frcnn must both be (K, D) with the same shape, got '
                         f'{tuple(f_rcnn.shape)} and {tuple(f_frcnn.shape)}')
    if f_rcnn.shape[0] == 0:
        return (f_rcnn.float().sum() + f_frcnn.float().sum()) * 0.0
    loss = 1.0 - F.cosine_similarity(f_rcnn.float(), f_frcnn.float(), dim=1)
    return loss.mean() if reduction == 'mean' else loss.sum()


def crop_image_rois(images: Tensor, rois: Tensor, size: IntPair,
                    sampling_ratio: int = 0) -> Tensor:
    """Crop RoIs from images and resize them bilinearly to one size (RoIAlign on the image tensor).

    Pixel ``i`` covers ``[i, i + 1)``, as mmdet's boxes (``aligned=True``): a box ``(0, 0, W, H)`` on a
    ``W x H`` image resized to ``(H, W)`` with ``sampling_ratio=1`` returns the image exactly.

    Args:
        images: ``(N, C, H, W)`` image batch (normally the data preprocessor's normalised, padded batch).
        rois: ``(K, 5)`` rows ``(image index, x1, y1, x2, y2)`` in pixels of ``images``.
        size: output ``h`` or ``(h, w)``.
        sampling_ratio: bilinear samples per output pixel and axis; 0 picks ``ceil(box / size)``, i.e.
            plain bilinear interpolation when the crop is enlarged and an average of bilinear samples
            (anti-aliasing) when it is shrunk.

    Returns:
        ``(K, C, h, w)`` crops, in the dtype of ``images``.
    """
    from torchvision.ops import roi_align
    h, w = _size(size, 'size')
    if images.dim() != 4:
        raise ValueError(f'images must be (N, C, H, W), got shape {tuple(images.shape)}')
    if rois.dim() != 2 or rois.shape[1] != 5:
        raise ValueError(f'rois must be (K, 5) rows (image index, x1, y1, x2, y2), got shape {tuple(rois.shape)}')
    if not isinstance(sampling_ratio, int) or isinstance(sampling_ratio, bool) or sampling_ratio < 0:
        raise ValueError(f'sampling_ratio must be an int >= 0, got {sampling_ratio!r}')
    if rois.shape[0] == 0:
        return images.new_zeros((0, images.shape[1], h, w))
    return roi_align(images, rois.to(images.dtype), (h, w), spatial_scale=1.0,
                     sampling_ratio=sampling_ratio, aligned=True)


@contextlib.contextmanager
def _inputs_of(module: nn.Module) -> Iterator[List[Tensor]]:
    """Record the first positional input of every call of ``module`` inside the block."""
    seen: List[Tensor] = []
    handle = module.register_forward_pre_hook(lambda _m, args: seen.append(args[0]))
    try:
        yield seen
    finally:
        handle.remove()


@contextlib.contextmanager
def _running_stats_kept(modules: Sequence[nn.Module]) -> Iterator[None]:
    """Leave the running statistics of the BatchNorm layers in ``modules`` as they were before the block.

    The crops are a second forward of the same layers. In training mode a BatchNorm layer normalises them
    with their own batch statistics, as it must, but it would also fold those statistics into the running
    ones that inference uses, and crops are not what the detector sees at inference.
    """
    saved = []
    for module in modules:
        for m in module.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training and m.running_mean is not None:
                saved.append((m, m.running_mean.clone(), m.running_var.clone(),
                              None if m.num_batches_tracked is None else m.num_batches_tracked.clone()))
    try:
        yield
    finally:
        with torch.no_grad():
            for m, mean, var, count in saved:
                m.running_mean.copy_(mean)
                m.running_var.copy_(var)
                if count is not None:
                    m.num_batches_tracked.copy_(count)


@MODELS.register_module()
class MimicRoIHead(StandardRoIHead):
    """mmdet's :class:`StandardRoIHead` plus DCNv2's R-CNN feature mimicking branch (training only).

    Every argument of ``StandardRoIHead`` keeps its meaning; the branch adds the keys below (defaults:
    the paper's settings). The feature that is mimicked is the one the box head feeds its classifier
    ``fc_cls`` (for mmdet's ``Shared2FCBBoxHead`` the output of the two shared fcs; for
    ``ConvFCBBoxHead`` variants the classification branch's last feature): it is read with a forward
    pre-hook, so the box head's own forward runs unchanged and the whole-image trunk runs only once.

    Args:
        mimic_num_rois: RoIs per image, drawn at random without replacement among the candidates
            (fewer if there are fewer candidates). Paper: 32. The draws come from a generator of the
            branch's own, so the global stream that mmdet's samplers draw from is left as it is.
        mimic_crop_size: side (or ``(h, w)``) of the crops, in input pixels. Paper: 224.
        mimic_positives_only: candidates are the positive RoIs of the R-CNN sampler (proposals the
            assigner matched to an object, ground-truth boxes added as proposals included); ``False``
            draws from all sampled RoIs, whose negatives get the background label in the classifier.
        mimic_detach_rcnn: stop the mimic loss's gradient at ``f_RCNN``, so that this loss moves only
            the Faster R-CNN features (the crop branch is still trained by its classification loss).
            ``False`` lets the mimic loss pull both features towards each other.
        mimic_reduction: ``'mean'`` or ``'sum'`` of the per-RoI mimic losses over the batch.
        mimic_crop_sampling_ratio: bilinear samples per crop pixel and axis (see :func:`crop_image_rois`).
        loss_mimic_weight: weight of the mimic loss. Paper: 0.1.
        loss_mimic_cls: config of the classification loss of the crop branch, given ``(K, C + 1)``
            logits and labels in ``[0, C]`` (``C`` = background), returning a scalar; checked on such an
            input when the head is built. Paper: cross-entropy, weight 0.1.
        init_cfg: mmengine init config of the head. ``None`` (default): the unshared classifier
            ``mimic_cls`` is initialised as mmdet initialises ``fc_cls`` (normal, std 0.01, zero bias) from
            a generator of its own, so that every other parameter starts as in the model without the
            branch (same seed, same weights).

    The unshared classifier ``mimic_cls`` (``Linear(D, C + 1)``, or the box head's
    ``cls_predictor_cfg``) is the head's only extra parameter: its keys (``roi_head.mimic_cls.*``) are
    training-only, and loading a checkpoint into the same model built with a ``StandardRoIHead`` skips
    them (mmengine reports them as unexpected keys).
    """

    def __init__(self,
                 *args,
                 mimic_num_rois: int = 32,
                 mimic_crop_size: IntPair = 224,
                 mimic_positives_only: bool = True,
                 mimic_detach_rcnn: bool = True,
                 mimic_reduction: str = 'mean',
                 mimic_crop_sampling_ratio: int = 0,
                 loss_mimic_weight: float = 0.1,
                 loss_mimic_cls: dict = dict(type='CrossEntropyLoss', use_sigmoid=False, loss_weight=0.1),
                 init_cfg: Optional[Union[dict, List[dict]]] = None,
                 **kwargs) -> None:
        if not isinstance(mimic_num_rois, int) or isinstance(mimic_num_rois, bool) or mimic_num_rois < 1:
            raise ValueError(f'mimic_num_rois must be an int >= 1 (RoIs per image), got {mimic_num_rois!r}')
        crop_size = _size(mimic_crop_size, 'mimic_crop_size')
        for name, flag in (('mimic_positives_only', mimic_positives_only), ('mimic_detach_rcnn', mimic_detach_rcnn)):
            if not isinstance(flag, bool):
                raise TypeError(f'{name} must be True or False, got {flag!r}')
        if mimic_reduction not in _REDUCTIONS:
            raise ValueError(f'mimic_reduction must be one of {_REDUCTIONS}, got {mimic_reduction!r}')
        if (not isinstance(mimic_crop_sampling_ratio, int) or isinstance(mimic_crop_sampling_ratio, bool)
                or mimic_crop_sampling_ratio < 0):
            raise ValueError(f'mimic_crop_sampling_ratio must be an int >= 0, got {mimic_crop_sampling_ratio!r}')
        if (not isinstance(loss_mimic_weight, (int, float)) or isinstance(loss_mimic_weight, bool)
                or not loss_mimic_weight >= 0 or loss_mimic_weight == float('inf')):
            raise ValueError(f'loss_mimic_weight must be a finite number >= 0, got {loss_mimic_weight!r}')
        super().__init__(*args, init_cfg=init_cfg, **kwargs)

        fc_cls = getattr(self.bbox_head, 'fc_cls', None) if self.with_bbox else None
        if not isinstance(fc_cls, nn.Module) or not isinstance(getattr(fc_cls, 'in_features', None), int):
            raise ValueError('MimicRoIHead needs a bbox_head with a classifier layer `fc_cls` that has '
                             '`in_features` (mmdet\'s BBoxHead / ConvFCBBoxHead family with with_cls=True), got '
                             f'{type(self.bbox_head).__name__ if self.with_bbox else None}')
        self.mimic_num_rois = mimic_num_rois
        self.mimic_crop_size = crop_size
        self.mimic_positives_only = mimic_positives_only
        self.mimic_detach_rcnn = mimic_detach_rcnn
        self.mimic_reduction = mimic_reduction
        self.mimic_crop_sampling_ratio = mimic_crop_sampling_ratio
        self.loss_mimic_weight = float(loss_mimic_weight)
        self.loss_mimic_cls = MODELS.build(loss_mimic_cls)
        _check_cls_loss(self.loss_mimic_cls, self.bbox_head.num_classes)
        predictor = dict(getattr(self.bbox_head, 'cls_predictor_cfg', None) or dict(type='Linear'))
        predictor.update(in_features=fc_cls.in_features, out_features=self.bbox_head.num_classes + 1)
        with torch.random.fork_rng(devices=[]):  # its construction-time init must not move the global stream
            self.mimic_cls = MODELS.build(predictor)
        self._mimic_inputs: Optional[Tuple[Tensor, List[DetDataSample], Callable]] = None

    def init_weights(self) -> None:
        """The parent's initialisation, then (without an ``init_cfg`` of the head) the unshared classifier
        as mmdet initialises ``fc_cls``: normal, std 0.01, zero bias, drawn from a generator of its own so
        that the rest of the model starts from the same weights as without the branch."""
        super().init_weights()
        if self.init_cfg is None:
            generator = _own_generator(torch.device('cpu'), b'init')
            with torch.no_grad():
                for p in self.mimic_cls.parameters():
                    if p.dim() > 1:
                        p.copy_(torch.randn(p.shape, generator=generator) * 0.01)
                    else:
                        p.zero_()

    # ------------------------------------------------------------------ detector-facing hook
    @contextlib.contextmanager
    def mimic_source(self, batch_inputs: Tensor, batch_data_samples: List[DetDataSample],
                     extract_feat: Callable[[Tensor], Tuple[Tensor, ...]]) -> Iterator[None]:
        """Give the branch the detector's input batch and feature extractor while the block runs.

        Args:
            batch_inputs: ``(N, C, H, W)`` input batch, as the detector's ``loss`` receives it (after the
                data preprocessor: normalised and padded).
            batch_data_samples: the N data samples (``img_shape`` of each image bounds its crops).
            extract_feat: the detector's ``extract_feat`` (backbone and neck), run on the crops. When it
                is a bound method of a module (the detector's own), the running statistics of that
                module's BatchNorm layers in training mode are left as the whole images set them: the
                crops are normalised with their own batch statistics but do not enter the statistics that
                inference uses (the head's own layers are kept the same way).
        """
        if batch_inputs.dim() != 4 or batch_inputs.shape[0] != len(batch_data_samples):
            raise ValueError(f'batch_inputs must be (N, C, H, W) with one data sample per image, got shape '
                             f'{tuple(batch_inputs.shape)} and {len(batch_data_samples)} data samples')
        previous = self._mimic_inputs
        self._mimic_inputs = (batch_inputs, list(batch_data_samples), extract_feat)
        try:
            yield
        finally:
            self._mimic_inputs = previous

    # ------------------------------------------------------------------ training
    def bbox_loss(self, x: Tuple[Tensor], sampling_results: List[SamplingResult]) -> dict:
        """The parent's box losses plus ``loss_mimic``, ``loss_mimic_cls`` (and ``mimic_num_rois``, logged).

        Args:
            x: multi-level features of the images.
            sampling_results: per image, the RoIs sampled for the box head.

        Returns:
            The parent's result; its ``loss_bbox`` dict carries the branch's losses too.
        """
        if self._mimic_inputs is None:
            raise RuntimeError(
                'MimicRoIHead computes its losses from the input images, which mmdet does not pass to RoI '
                "heads: build the detector with type='MimicFasterRCNN' (a FasterRCNN that hands them over), "
                'or call the loss inside `roi_head.mimic_source(batch_inputs, batch_data_samples, extract_feat)`')
        with _inputs_of(self.bbox_head.fc_cls) as seen:
            bbox_results = super().bbox_loss(x, sampling_results)
        num_rows = sum(get_box_tensor(res.priors).shape[0] for res in sampling_results)
        bbox_results['loss_bbox'].update(
            self.mimic_loss(self._one_call(seen, num_rows), sampling_results))
        return bbox_results

    def select_mimic_rois(self, sampling_results: List[SamplingResult],
                          img_shapes: Sequence[Tuple[int, int]]) -> Tuple[Tensor, Tensor, Tensor]:
        """Draw the RoIs of the branch: up to ``mimic_num_rois`` per image among the candidates.

        Args:
            sampling_results: per image, the RoIs sampled for the box head (positives first, as mmdet
                orders them in ``bbox2roi([res.priors ...])``).
            img_shapes: ``(h, w)`` of each image inside the padded batch; the boxes are clipped to it.

        Returns:
            ``rois`` ``(K, 5)`` (image index, x1, y1, x2, y2), ``rows`` ``(K,)`` the index of each RoI
            among the box head's RoIs of the batch, ``labels`` ``(K,)`` its class (``C`` = background).
        """
        rois, rows, labels = [], [], []
        offset = 0
        num_classes = self.bbox_head.num_classes
        generator = None
        for i, (res, (h, w)) in enumerate(zip(sampling_results, img_shapes)):
            priors = get_box_tensor(res.priors)
            num_pos = get_box_tensor(res.pos_priors).shape[0]
            num_all = priors.shape[0]
            candidates = num_pos if self.mimic_positives_only else num_all
            if generator is None:
                generator = _own_generator(priors.device, b'rois')
            pick = torch.randperm(candidates, generator=generator)[:self.mimic_num_rois].sort().values
            pick = pick.to(priors.device)
            boxes = priors[pick].detach().clone()
            boxes[:, 0::2] = boxes[:, 0::2].clamp(0, w)
            boxes[:, 1::2] = boxes[:, 1::2].clamp(0, h)
            rois.append(torch.cat([boxes.new_full((pick.numel(), 1), i), boxes], dim=1))
            all_labels = torch.cat([res.pos_gt_labels.to(priors.device).long(),
                                    torch.full((num_all - num_pos,), num_classes, dtype=torch.long,
                                               device=priors.device)])
            labels.append(all_labels[pick])
            rows.append(pick + offset)
            offset += num_all
        return torch.cat(rois), torch.cat(rows), torch.cat(labels)

    def mimic_loss(self, frcnn_feats: Tensor, sampling_results: List[SamplingResult]) -> dict:
        """The branch's losses, given the whole-image trunk features of the box head's RoIs.

        Args:
            frcnn_feats: ``(R, D)`` features fed to ``fc_cls`` for the R RoIs of ``sampling_results`` (in
                mmdet's order) in the whole-image pass.
            sampling_results: per image, the RoIs sampled for the box head.

        Returns:
            ``loss_mimic`` (weighted cosine loss), ``loss_mimic_cls`` (weighted cross-entropy of the
            unshared classifier) and ``mimic_num_rois`` (K, for the logs). Without any RoI both losses are
            zeros that still pass through ``mimic_cls``, so every parameter takes part in the backward
            (distributed training needs no ``find_unused_parameters``).
        """
        images, data_samples, extract_feat = self._mimic_inputs
        if len(sampling_results) != images.shape[0]:
            raise ValueError(f'{len(sampling_results)} sampling results for a batch of {images.shape[0]} images')
        img_shapes = [tuple(s.metainfo.get('img_shape', images.shape[-2:]))[:2] for s in data_samples]
        rois, rows, labels = self.select_mimic_rois(sampling_results, img_shapes)
        num_rois = rois.shape[0]
        if num_rois == 0:
            zero = self.mimic_cls(frcnn_feats[:0]).float().sum() * 0.0
            return dict(loss_mimic=zero, loss_mimic_cls=zero,
                        mimic_num_rois=frcnn_feats.new_zeros((), dtype=torch.float32))
        crops = self._crop(images, rois, img_shapes)
        h, w = self.mimic_crop_size
        whole = torch.tensor([0.0, 0.0, float(w), float(h)], device=rois.device).expand(num_rois, 4)
        crop_rois = torch.cat([torch.arange(num_rois, device=rois.device, dtype=whole.dtype)[:, None], whole], 1)
        owner = getattr(extract_feat, '__self__', None)  # the detector, when given its bound extract_feat
        with _running_stats_kept([self] + ([owner] if isinstance(owner, nn.Module) else [])), \
                _inputs_of(self.bbox_head.fc_cls) as seen:
            self._bbox_forward(extract_feat(crops), crop_rois)
        f_rcnn = self._one_call(seen, num_rois)
        f_frcnn = frcnn_feats[rows]
        target = f_rcnn.detach() if self.mimic_detach_rcnn else f_rcnn
        loss_mimic = mimic_cosine_loss(target, f_frcnn, self.mimic_reduction) * self.loss_mimic_weight
        loss_cls = self.loss_mimic_cls(self.mimic_cls(f_rcnn), labels)
        return dict(loss_mimic=loss_mimic, loss_mimic_cls=loss_cls,
                    mimic_num_rois=torch.tensor(float(num_rois), device=frcnn_feats.device))

    def _crop(self, images: Tensor, rois: Tensor, img_shapes: Sequence[Tuple[int, int]]) -> Tensor:
        """``(K, C, h, w)`` crops of ``rois`` (sorted by image), each resampled from its image without the
        batch padding, so that bilinear samples at an image's border repeat its edge (as for an unpadded
        image) instead of blending in the padding."""
        crops = []
        for i in rois[:, 0].unique(sorted=True).tolist():
            h, w = (int(v) for v in img_shapes[int(i)])
            mine = rois[rois[:, 0] == i]
            image = images[int(i):int(i) + 1, :, :h, :w]
            crops.append(crop_image_rois(image, torch.cat([torch.zeros_like(mine[:, :1]), mine[:, 1:]], 1),
                                         self.mimic_crop_size, self.mimic_crop_sampling_ratio))
        return torch.cat(crops)

    def _one_call(self, seen: List[Tensor], rows: int) -> Tensor:
        """The ``(rows, D)`` input of the single ``fc_cls`` call of one box head forward."""
        if len(seen) != 1 or seen[0].dim() != 2 or seen[0].shape[0] != rows:
            raise RuntimeError(
                f'MimicRoIHead reads the box head feature as the input of one `fc_cls` call per forward, for '
                f'{rows} RoIs; {type(self.bbox_head).__name__} made {len(seen)} calls with '
                f'{[tuple(s.shape) for s in seen]}')
        return seen[0]
