"""ONNX export of mmdet detectors: image preprocessing, backbone, neck and dense head in one graph.

What is exported, and why not the whole Faster R-CNN: everything up to the raw outputs of the dense
head (the RPN of a two-stage detector, the box head of a one-stage one) is a plain tensor program
(convolutions, our deformable convolutions as ``DeformConv``, norms, upsampling) and exports exactly,
with a dynamic batch and image size. What follows in mmdet is not: proposal selection decodes anchors,
keeps a data-dependent number of boxes per image through NMS (mmcv's ``nms``), maps each RoI to a
pyramid level by its size, pools with mmcv's ``RoIAlign`` (an mmcv custom op), runs the box head and a
second NMS, all written as per-image Python loops over ``InstanceData`` with early returns for empty
results. Capturing that takes rewriting mmdet's functions (what mmdeploy does) and produces graphs with
custom ops; the exported part is the cleanly exportable one, and mmdet's own heads turn its outputs into
detections (:func:`detections_from_outputs`).

Graph input: ``image``, ``uint8 (N, 3, H, W)``, the images as the config's test pipeline resizes them
(channels in the file's order, BGR for OpenCV-read images), any ``N``, ``H``, ``W``; the graph applies
the detector's data preprocessor (channel flip, mean/std normalisation, zero padding to a multiple of
its ``pad_size_divisor``). Graph outputs: the neck's feature maps ``feat_{l}``, then the head's outputs
per level, ``rpn_cls_score_{l}`` and ``rpn_bbox_pred_{l}`` for an RPN (``head_cls_score_{l}`` / ... for
a one-stage detector).
"""
import math
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import Tensor, nn

from .onnx_export import DEFAULT_OPSET, export_onnx, publish_onnx, staged_onnx_path
from .runtime import OutputDifference, compare_with_onnxruntime

__all__ = ['DetectorExportModule', 'load_detector', 'load_image', 'resize_image', 'export_detector',
           'check_detector_export', 'detections_from_outputs', 'export_and_check', 'ExportCheck',
           'DYNAMIC_IMAGE_AXES', 'DEFAULT_RTOL', 'MIN_EXPORT_SIZE', 'check_export_size']

#: The largest accepted difference between onnxruntime and PyTorch, relative to an output's largest value,
#: by default.
DEFAULT_RTOL = 1e-4
#: The smallest height / width of the export example: torch.export refuses an example size of 0 or 1 on a
#: dynamic axis (it would specialise the graph to that size).
MIN_EXPORT_SIZE = 2
#: The dynamic axes of the exported detector's input.
DYNAMIC_IMAGE_AXES = {'image': {0: 'batch', 2: 'height', 3: 'width'}}


class DetectorExportModule(nn.Module):
    """The exportable part of an mmdet detector: ``uint8`` images -> features and dense-head outputs.

    Args:
        detector: an mmdet detector (``TwoStageDetector`` with an RPN, or ``SingleStageDetector``)
            whose ``data_preprocessor`` is mmdet's / mmengine's image preprocessor.

    Forward: ``image (N, 3, H, W)`` uint8 (or float) in the file's channel order -> a flat tuple of
    tensors: the feature maps, then the head's outputs level by level (named by :meth:`output_names`).
    """

    def __init__(self, detector: nn.Module) -> None:
        super().__init__()
        from mmengine.model import ImgDataPreprocessor
        preprocessor = getattr(detector, 'data_preprocessor', None)
        if not isinstance(preprocessor, ImgDataPreprocessor):
            raise TypeError(f"detector.data_preprocessor must be mmdet's DetDataPreprocessor (an mmengine "
                            f'ImgDataPreprocessor), got {type(preprocessor).__name__}')
        if not hasattr(detector, 'extract_feat'):
            raise TypeError(f'detector must be an mmdet detector with extract_feat(), got '
                            f'{type(detector).__name__}')
        self.detector = detector
        if getattr(detector, 'with_rpn', False):
            self.head, self.head_prefix = detector.rpn_head, 'rpn'
        elif hasattr(detector, 'bbox_head') and not hasattr(detector, 'roi_head'):
            self.head, self.head_prefix = detector.bbox_head, 'head'
        else:
            self.head, self.head_prefix = None, ''
        # The preprocessing is mmengine's ImgDataPreprocessor at test time, written with shape arithmetic
        # that torch.export keeps symbolic (mmdet's preprocessor loops over the images and computes the
        # padded size with numpy, which fixes the batch and image size of the graph).
        self.flip_channels = bool(getattr(preprocessor, '_channel_conversion', False))
        self.normalize = bool(getattr(preprocessor, '_enable_normalize', False))
        if self.normalize:
            self.register_buffer('mean', preprocessor.mean.detach().clone().view(1, -1, 1, 1), persistent=False)
            self.register_buffer('std', preprocessor.std.detach().clone().view(1, -1, 1, 1), persistent=False)
        self.pad_size_divisor = int(preprocessor.pad_size_divisor)
        self.pad_value = float(preprocessor.pad_value)

    def preprocess(self, image: Tensor) -> Tensor:
        """``(N, 3, H, W)`` images -> the detector's normalised, padded ``(N, 3, H', W')`` float batch."""
        x = image[:, [2, 1, 0]] if self.flip_channels else image
        x = x.float()
        if self.normalize:
            x = (x - self.mean) / self.std
        h, w = x.shape[-2:]
        d = self.pad_size_divisor
        return nn.functional.pad(x, (0, (d - w % d) % d, 0, (d - h % d) % d), value=self.pad_value)

    def _run(self, image: Tensor) -> Tuple[List[Tensor], List[str]]:
        feats = tuple(self.detector.extract_feat(self.preprocess(image)))
        names = [f'feat_{i}' for i in range(len(feats))]
        outputs: List[Tensor] = list(feats)
        if self.head is not None:
            head_outputs = self.head(list(feats))
            kinds = ('cls_score', 'bbox_pred') if len(head_outputs) == 2 else \
                [f'out{k}' for k in range(len(head_outputs))]
            for kind, per_level in zip(kinds, head_outputs):
                outputs += list(per_level)
                names += [f'{self.head_prefix}_{kind}_{i}' for i in range(len(per_level))]
        return outputs, names

    def forward(self, image: Tensor) -> Tuple[Tensor, ...]:
        return tuple(self._run(image)[0])

    @torch.no_grad()
    def output_names(self, image: Tensor) -> List[str]:
        """The names of :meth:`forward`'s outputs (``feat_0``, ..., ``rpn_cls_score_0``, ...,
        ``rpn_bbox_pred_0``, ...), found by running it on ``image``."""
        return self._run(image)[1]


def load_detector(config: str, checkpoint: Optional[str], cfg_options: Optional[Dict[str, Any]] = None,
                  device: str = 'cpu', allow_partial_load: bool = False) -> nn.Module:
    """Build the detector of ``config`` and load ``checkpoint`` (None: the config's initialisation)
    with the project's safe loading (``torch.load(weights_only=True)`` plus the allow-list of the
    types mmengine checkpoints carry), requiring it to fit the model exactly as ``tools/test.py`` does
    (:func:`~dcn_plugin.utils.state_dict.load_model_checkpoint`). Returns the model in eval mode;
    ``model.cfg`` is the config.

    Raises:
        dcn_plugin.utils.state_dict.CheckpointMismatchError: the checkpoint has no weights, or keys that
            are missing, unexpected or mis-shaped (unless ``allow_partial_load``).
    """
    from ..utils.state_dict import init_detector_from_checkpoint
    return init_detector_from_checkpoint(
        config, checkpoint, cfg_options, device, allow_partial_load,
        remedy='To export with the weights that fit anyway, pass --allow-partial-load.')


def load_image(model: nn.Module, image: Union[str, np.ndarray]) -> Tensor:
    """An image file (or a ``(H, W, 3)`` uint8 array) prepared by the model's test pipeline (resize),
    as the exported graph takes it: ``uint8 (1, 3, H, W)``."""
    from mmcv.transforms import Compose
    from mmdet.utils import get_test_pipeline_cfg
    from mmengine.registry import init_default_scope
    init_default_scope(model.cfg.get('default_scope', 'mmdet'))
    pipeline = [dict(t) for t in get_test_pipeline_cfg(model.cfg) if t['type'] not in
                ('LoadAnnotations', 'mmdet.LoadAnnotations')]
    if isinstance(image, np.ndarray):
        pipeline[0]['type'] = 'mmdet.LoadImageFromNDArray'
        data = dict(img=image, img_id=0)
    else:
        data = dict(img_path=image, img_id=0)
    return Compose(pipeline)(data)['inputs'].unsqueeze(0)


def resize_image(image: Tensor, height: int, width: int) -> Tensor:
    """Bilinear resize of ``uint8 (N, 3, H, W)`` images to ``(height, width)`` (rounded back to uint8)."""
    if height < 1 or width < 1:
        raise ValueError(f'the image size must be positive, got {height}x{width}')
    resized = nn.functional.interpolate(image.float(), size=(height, width), mode='bilinear', align_corners=False)
    return resized.round().clamp(0, 255).to(image.dtype)


def check_export_size(shape: Any, arg: str = 'shape') -> Tuple[int, int]:
    """``(H, W)`` of an export example if both are ints of at least :data:`MIN_EXPORT_SIZE`, else a
    ValueError naming ``arg``."""
    values = tuple(shape) if isinstance(shape, (tuple, list)) else ()
    if len(values) != 2 or any(isinstance(v, bool) or not isinstance(v, int) or v < MIN_EXPORT_SIZE for v in values):
        raise ValueError(f'{arg} must be two ints H W, each at least {MIN_EXPORT_SIZE} (torch.export needs example '
                         f'sizes of at least {MIN_EXPORT_SIZE} on the dynamic image axes), got {shape!r}')
    return values


def export_detector(model: nn.Module, image: Tensor, path: str, opset: int = DEFAULT_OPSET,
                    verbose: Optional[bool] = None) -> Tuple[DetectorExportModule, 'torch.onnx.ONNXProgram']:
    """Export ``model``'s backbone, neck and dense head (with its preprocessing) to ``path``.

    Args:
        model: the mmdet detector.
        image: an example ``uint8 (1, 3, H, W)`` image; the graph is exported with a batch of two (the
            image and its mirror image: dynamic axes need example sizes of at least 2) and accepts any
            batch size and image size.
        path: the ``.onnx`` file to write.
        opset: ONNX opset (at least 19).
        verbose: torch's progress messages (see :func:`~dcn_plugin.deploy.export_onnx`).

    Returns:
        ``(module, program)``: the exported :class:`DetectorExportModule` and torch's ``ONNXProgram``.
    """
    if image.dim() != 4 or image.shape[0] != 1 or image.shape[1] != 3:
        raise ValueError(f'image must be a (1, 3, H, W) tensor, got shape {tuple(image.shape)}')
    module = DetectorExportModule(model).eval()
    example = torch.cat([image, image.flip(-1)])
    program = export_onnx(module, (example,), path, dynamic_shapes=DYNAMIC_IMAGE_AXES, opset=opset,
                          input_names=['image'], output_names=module.output_names(example), verbose=verbose)
    return module, program


def check_detector_export(module: DetectorExportModule, path: str, images: Sequence[Tensor]
                          ) -> List[Tuple[Tuple[int, ...], OutputDifference]]:
    """Compare the exported file with PyTorch on each image batch.

    Returns:
        ``(input shape, the output with the largest relative difference)`` per batch; an output whose
        difference is NaN (a NaN on one side only) counts as the largest.
    """
    worst = []
    for image in images:
        diffs = compare_with_onnxruntime(path, module, (image,))
        # NaN compares false with everything, so max(..., key=relative) would pass over it
        worst.append((tuple(image.shape), max(diffs, key=lambda d: (math.isnan(d.relative), d.relative))))
    return worst


@dataclass
class ExportCheck:
    """What :func:`export_and_check` did.

    Attributes:
        path: the ONNX file.
        exported: the parts of the detector in the graph, e.g. ``['backbone', 'neck', 'rpn_head']``.
        left_out: what stays in PyTorch, e.g. ``['rpn_head post-processing', 'roi_head']``.
        output_names: the graph's outputs, in order.
        image: where the check image came from.
        results: ``(input shape, worst output)`` per checked batch (see :func:`check_detector_export`).
        rtol: the largest accepted relative difference.
    """

    path: str
    exported: List[str]
    left_out: List[str]
    output_names: List[str]
    image: str
    results: List[Tuple[Tuple[int, ...], OutputDifference]] = field(default_factory=list)
    rtol: float = DEFAULT_RTOL

    @property
    def passed(self) -> bool:
        """Whether every output is within ``rtol`` (False when a difference is NaN); only then is the
        file written to :attr:`path`."""
        return self.max_relative <= self.rtol

    @property
    def max_relative(self) -> float:
        """The largest relative difference over all outputs and batches (NaN if one is NaN)."""
        values = [d.relative for _, d in self.results]
        return float('nan') if any(v != v for v in values) else max(values, default=0.0)


def _demo_image(seed: int = 0, size: int = 256) -> np.ndarray:
    from ..datasets.demo_shapes import render_image
    return render_image(np.random.default_rng(seed), size, size)[0]


def export_and_check(config: str, checkpoint: Optional[str], out: str, image: Optional[str] = None,
                     opset: int = DEFAULT_OPSET, shape: Optional[Tuple[int, int]] = None,
                     cfg_options: Optional[Dict[str, Any]] = None, allow_partial_load: bool = False,
                     rtol: float = DEFAULT_RTOL) -> ExportCheck:
    """Load a detector, export it, check the file with onnxruntime against PyTorch and write it to ``out``
    if the check passes (the file is made and checked under a temporary name beside ``out``; a file that
    fails stays away from ``out``).

    The graph is exported on the image as the config's test pipeline prepares it (or resized to
    ``shape``), with a batch of two, then compared on three batches: the export batch, the pipeline's
    image alone (batch 1), and the pipeline's image resized to 3/4 of its height and 5/4 of its width,
    so the check also covers the dynamic batch and image size.

    Args:
        config, checkpoint: the detector (``checkpoint=None``: the config's initialisation).
        out: the ``.onnx`` file to write.
        image: the check image; None renders an image of the demo data set (its generator, seed 0).
        opset: ONNX opset (at least 19).
        shape: ``(H, W)`` of the export example (default: the pipeline's size for the image).
        cfg_options: config overrides.
        allow_partial_load: export a checkpoint that fits the model only partly (the differences are
            warned about); by default it must fit exactly (:func:`load_detector`).
        rtol: the largest accepted difference relative to an output's largest value, a finite number >= 0.
    """
    if isinstance(rtol, bool) or not isinstance(rtol, (int, float)) or not 0 <= rtol < math.inf:
        raise ValueError(f'rtol (--rtol) must be a finite number >= 0, got {rtol!r}')
    if shape is not None:
        check_export_size(shape, 'shape (--shape)')
    model = load_detector(config, checkpoint, cfg_options, allow_partial_load=allow_partial_load)
    prepared = load_image(model, image if image is not None else _demo_image())
    example = resize_image(prepared, *shape) if shape is not None else prepared
    with staged_onnx_path(out) as staged:
        check = _export_and_check_at(model, prepared, example, staged, image, opset, rtol)
        if check.passed:
            publish_onnx(staged, out)
    check.path = out
    return check


def _export_and_check_at(model: nn.Module, prepared: Tensor, example: Tensor, path: str, image: Optional[str],
                         opset: int, rtol: float) -> ExportCheck:
    module, _ = export_detector(model, example, path, opset=opset)
    h, w = prepared.shape[-2:]
    batches = [torch.cat([example, example.flip(-1)]), prepared,
               resize_image(prepared, max(1, round(h * 0.75)), max(1, round(w * 1.25)))]
    exported = ['backbone'] + (['neck'] if getattr(model, 'with_neck', False) else [])
    left_out = []
    if module.head is not None:
        head = 'rpn_head' if module.head_prefix == 'rpn' else 'bbox_head'
        exported.append(head)
        left_out.append(f'{head} post-processing')
    left_out += [name for name in ('roi_head',) if getattr(model, name, None) is not None]
    return ExportCheck(path=path, exported=exported, left_out=left_out, output_names=module.output_names(prepared),
                       image=image if image is not None else 'a rendered demo image (seed 0)',
                       results=check_detector_export(module, path, batches), rtol=rtol)


def detections_from_outputs(module: DetectorExportModule, outputs: Sequence[Any], image_shape: Tuple[int, int],
                            scale_factor: Tuple[float, float] = (1.0, 1.0)) -> Any:
    """Finish detection in PyTorch from one image's exported outputs: the detector's own RPN
    post-processing (anchor decoding, NMS) and RoI head, i.e. what the graph leaves out.

    Args:
        module: the :class:`DetectorExportModule` of a two-stage detector the file was exported from.
        outputs: the graph's outputs for a batch of one image (onnxruntime's arrays or tensors), in order.
        image_shape: ``(H, W)`` of the image given to the graph.
        scale_factor: ``(w, h)`` factors by which the test pipeline resized the file's image; boxes are
            divided by them (the file's pixels).

    Returns:
        mmdet's ``InstanceData`` with ``bboxes`` ``(K, 4)``, ``scores`` ``(K,)`` and ``labels`` ``(K,)``.
    """
    from mmdet.structures import DetDataSample
    detector = module.detector
    if module.head_prefix != 'rpn':
        raise ValueError(f'detections_from_outputs needs a two-stage detector with an RPN, got '
                         f'{type(detector).__name__}')
    if len(outputs) == 0 or len(outputs) % 3:
        raise ValueError(f'expected the exported outputs (feature maps, RPN scores and RPN box deltas, one of '
                         f'each per level), got {len(outputs)} outputs')
    tensors = [o if isinstance(o, Tensor) else torch.from_numpy(np.asarray(o)) for o in outputs]
    levels = len(tensors) // 3
    feats, cls_scores, bbox_preds = tensors[:levels], tensors[levels:2 * levels], tensors[2 * levels:]
    d = module.pad_size_divisor
    padded = tuple(-(-s // d) * d for s in image_shape)
    sample = DetDataSample(metainfo=dict(img_shape=tuple(image_shape), scale_factor=tuple(scale_factor),
                                         batch_input_shape=padded, pad_shape=padded))
    with torch.no_grad():
        proposals = detector.rpn_head.predict_by_feat(cls_scores, bbox_preds, batch_img_metas=[sample.metainfo],
                                                      rescale=False)
        return detector.roi_head.predict(tuple(feats), proposals, [sample], rescale=True)[0]
