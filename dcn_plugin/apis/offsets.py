"""Former place of :mod:`dcn_plugin.visualization.offsets` (the sampling-location maths and drawing):
its names still import from here."""
from ..visualization import *  # noqa: F401,F403
from ..visualization import __all__  # noqa: F401
