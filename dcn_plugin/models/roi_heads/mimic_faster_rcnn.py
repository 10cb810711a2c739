"""Faster R-CNN that lets a :class:`MimicRoIHead` see its input images during training."""
from mmdet.models.detectors import FasterRCNN
from mmdet.registry import MODELS
from mmdet.structures import SampleList
from torch import Tensor

from .mimic_roi_head import MimicRoIHead

__all__ = ['MimicFasterRCNN']


@MODELS.register_module()
class MimicFasterRCNN(FasterRCNN):
    """mmdet's :class:`FasterRCNN` whose ``loss`` hands the input batch and ``extract_feat`` to its
    :class:`MimicRoIHead` (R-CNN feature mimicking, Zhu et al., "Deformable ConvNets v2: More
    Deformable, Better Results", CVPR 2019).

    Same arguments, modules, parameter names and ``predict`` / ``_forward`` as ``FasterRCNN``; only the
    training loss differs, through the head. ``roi_head`` must be a ``MimicRoIHead``.
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if not isinstance(self.roi_head, MimicRoIHead):
            raise TypeError(f"MimicFasterRCNN needs roi_head=dict(type='MimicRoIHead', ...), got "
                            f'{type(self.roi_head).__name__}; use FasterRCNN for a detector without the branch')

    def loss(self, batch_inputs: Tensor, batch_data_samples: SampleList) -> dict:
        """FasterRCNN's losses plus the RoI head's mimicking losses.

        Args:
            batch_inputs: ``(N, C, H, W)`` normalised, padded input batch.
            batch_data_samples: the N data samples with their ground truth.

        Returns:
            dict of losses (``loss_mimic`` and ``loss_mimic_cls`` among them).
        """
        with self.roi_head.mimic_source(batch_inputs, batch_data_samples, self.extract_feat):
            return super().loss(batch_inputs, batch_data_samples)
