"""RoI heads: R-CNN feature mimicking (``MimicRoIHead``) and the detector that feeds it its images
(``MimicFasterRCNN``), both registered in mmdet's ``MODELS``."""
from .mimic_faster_rcnn import MimicFasterRCNN
from .mimic_roi_head import MimicRoIHead, crop_image_rois, mimic_cosine_loss

__all__ = ['MimicRoIHead', 'MimicFasterRCNN', 'mimic_cosine_loss', 'crop_image_rois']
