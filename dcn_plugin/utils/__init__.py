"""Utilities for the tools: safe checkpoint loading, compatibility fixes."""
from .checkpoint import register_safe_checkpoint_globals, safe_checkpoint_globals
from .compat import patch_mmengine_package_utils

__all__ = ['register_safe_checkpoint_globals', 'safe_checkpoint_globals', 'patch_mmengine_package_utils']
