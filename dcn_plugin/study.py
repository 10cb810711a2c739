"""Former place of :mod:`dcn_plugin.apis.study` (collecting several runs' metrics): its names still import
from here."""
from .apis.study import *  # noqa: F401,F403
from .apis.study import __all__  # noqa: F401
