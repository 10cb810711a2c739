"""Former place of :mod:`dcn_plugin.apis.study` (collecting several runs' metrics): these names still
import from here."""
from .apis.study import DEFAULT_METRICS, ArmSummary, Run, format_markdown, load_run, summarize_runs  # noqa: F401

__all__ = ['Run', 'ArmSummary', 'load_run', 'summarize_runs', 'format_markdown', 'DEFAULT_METRICS']
