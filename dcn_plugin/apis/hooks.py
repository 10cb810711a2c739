"""Hooks the tools add to every run."""
from typing import Optional

import torch
from mmengine.hooks import Hook

__all__ = ['TorchRNGStateHook']


class TorchRNGStateHook(Hook):
    """Save torch's random generator states in checkpoints and restore them on ``--resume``, so a
    resumed run draws the same random numbers as an uninterrupted one (Faster R-CNN's RPN/RoI
    samplers use ``torch.randperm``; mmengine restores weights, optimizer, schedulers, message hub
    and the data order, but not these states).

    The states are restored just before the first iteration after resuming, i.e. after the train loop
    has skipped the batches already seen. numpy / ``random`` states are left alone: only the data
    pipeline draws from them, and skipping the seen batches replays those draws exactly.
    """

    priority = 'VERY_LOW'
    _KEY = 'dcn_plugin_torch_rng_state'

    def __init__(self) -> None:
        self._pending: Optional[dict] = None

    def before_save_checkpoint(self, runner, checkpoint: dict) -> None:
        state = {'cpu': torch.get_rng_state()}
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            state['cuda'] = torch.cuda.get_rng_state_all()
        checkpoint[self._KEY] = state

    def after_load_checkpoint(self, runner, checkpoint: dict) -> None:
        # mmengine calls this hook from Runner.resume() only
        self._pending = checkpoint.get(self._KEY)

    def before_train_iter(self, runner, batch_idx: int, data_batch=None) -> None:
        if self._pending is None:
            return
        torch.set_rng_state(self._pending['cpu'])
        if 'cuda' in self._pending and torch.cuda.is_available():
            cuda_states = self._pending['cuda']
            if len(cuda_states) == torch.cuda.device_count():
                torch.cuda.set_rng_state_all(cuda_states)
        self._pending = None
