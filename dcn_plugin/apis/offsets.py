"""Former place of :mod:`dcn_plugin.visualization.offsets` (the sampling-location maths and drawing):
these names still import from here."""
from ..visualization.offsets import (  # noqa: F401
                                     MAX_STACKED_POINTS,
                                     DCNRecord,
                                     check_group,
                                     check_num_layers,
                                     draw_sampling_locations,
                                     record_dcn_layers,
                                     stack_sampling_locations,
)

__all__ = ['DCNRecord', 'record_dcn_layers', 'stack_sampling_locations', 'draw_sampling_locations',
           'check_num_layers', 'check_group', 'MAX_STACKED_POINTS']
