"""Where deformable layers sample: recording their offsets and masks in a forward pass, stacking the
sampling locations through consecutive layers, and drawing them (needs torch and numpy; OpenCV to draw).

:func:`visualize_offsets` (``tools/visualize_offsets.py``) runs a detector on an image and draws with these
(it needs mmdet, imported when called).
"""
from .detector import MAX_PANELS, visualize_offsets
from .offsets import (
                      MAX_STACKED_POINTS,
                      PANEL_IOU,
                      DCNRecord,
                      check_group,
                      check_num_layers,
                      draw_sampling_locations,
                      record_dcn_layers,
                      select_panel_boxes,
                      stack_sampling_locations,
)

__all__ = ['visualize_offsets', 'MAX_PANELS',
           'DCNRecord', 'record_dcn_layers', 'stack_sampling_locations', 'draw_sampling_locations',
           'check_num_layers', 'check_group', 'select_panel_boxes', 'MAX_STACKED_POINTS', 'PANEL_IOU']
