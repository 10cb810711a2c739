"""RoI extractors (registered in mmdet's ``MODELS``)."""
from .deform_roi_extractor import ROI_LAYERS, DeformRoIExtractor

__all__ = ['DeformRoIExtractor', 'ROI_LAYERS']
