"""Training-loop parts registered with mmengine: the hooks for crash-safe checkpoints, exact resume and
checkpoints that must fit the model (as mmdet keeps its own hooks in ``mmdet.engine.hooks``)."""
from .hooks import AtomicCheckpointHook, CheckpointMatchHook, TorchRNGStateHook, add_training_hooks

__all__ = ['AtomicCheckpointHook', 'CheckpointMatchHook', 'TorchRNGStateHook', 'add_training_hooks']
