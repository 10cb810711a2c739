"""Deterministic faults for the fault-tolerance tests, put into a training process through its config
(``custom_imports`` of this module, ``custom_hooks``): a SIGKILL after a given iteration, or in the
middle of writing a given checkpoint file."""
import os
import os.path as osp
import signal

from mmengine.hooks import Hook
from mmengine.registry import HOOKS


@HOOKS.register_module()
class KillAfterIter(Hook):
    """SIGKILL the process after training iteration ``iter`` (1-based), after any checkpoint of it."""

    priority = 'LOWEST'

    def __init__(self, iter: int) -> None:
        self.iter = iter

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None) -> None:
        if runner.iter + 1 == self.iter:
            os.kill(os.getpid(), signal.SIGKILL)


@HOOKS.register_module()
class KillDuringCheckpointWrite(Hook):
    """SIGKILL the process while it writes the file named ``name``: when the data is flushed to disk,
    only the first half of it has reached the file (what a kill during a slow write leaves)."""

    def __init__(self, name: str) -> None:
        self.name = name

    def before_train(self, runner) -> None:
        real_fsync = os.fsync
        name = self.name

        def fsync(fd):
            path = os.readlink(f'/proc/self/fd/{fd}') if isinstance(fd, int) else ''
            base = osp.basename(path)
            if base == name or base.startswith(f'.{name}.'):
                os.ftruncate(fd, os.fstat(fd).st_size // 2)
                real_fsync(fd)
                os.kill(os.getpid(), signal.SIGKILL)
            return real_fsync(fd)

        os.fsync = fsync
