"""Where deformable layers sample: recording their offsets and masks in a forward pass, stacking the
sampling locations through consecutive layers, and drawing them (needs torch and numpy; OpenCV to draw).

``tools/visualize_offsets.py`` runs a detector and draws with these (:func:`dcn_plugin.apis.visualize_offsets`).
"""
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

__all__ = ['DCNRecord', 'record_dcn_layers', 'stack_sampling_locations', 'draw_sampling_locations',
           'check_num_layers', 'check_group', 'select_panel_boxes', 'MAX_STACKED_POINTS', 'PANEL_IOU']
