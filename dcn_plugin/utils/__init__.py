"""Utilities for the tools: safe checkpoint loading, atomic writes, checkpoint/model matching,
compatibility fixes."""
from .checkpoint import (
                         CheckpointError,
                         CorruptCheckpointError,
                         UnsafeCheckpointError,
                         checkpoint_problem,
                         install_checkpoint_loaders,
                         load_checkpoint_file,
                         register_safe_checkpoint_globals,
                         safe_checkpoint_globals,
)
from .compat import patch_mmengine_package_utils

__all__ = ['CheckpointError', 'CorruptCheckpointError', 'UnsafeCheckpointError', 'checkpoint_problem',
           'install_checkpoint_loaders', 'load_checkpoint_file', 'register_safe_checkpoint_globals',
           'safe_checkpoint_globals', 'patch_mmengine_package_utils']
