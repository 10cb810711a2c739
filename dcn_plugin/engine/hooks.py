"""Hooks that make a training run recoverable after a crash and exactly resumable.

All three are registered in mmengine's ``HOOKS`` when :mod:`dcn_plugin` is imported, so any config
with ``custom_imports=dict(imports=['dcn_plugin'])`` can name them; ``tools/train.py`` and
``tools/test.py`` add them to every run (:func:`add_training_hooks`, the one definition of the set):

- :class:`AtomicCheckpointHook`: mmengine's ``CheckpointHook`` (same arguments) whose checkpoints
  and ``last_checkpoint`` are written atomically, whose old checkpoints (``max_keep_ckpts``) are
  removed only once the new one is complete, and whose auto-resume (``resume=True`` without
  ``load_from``, i.e. ``--resume`` without a path) skips a truncated or corrupt newest checkpoint
  for the newest intact one;
- :class:`TorchRNGStateHook`: saves torch's random generator states in checkpoints and restores
  them on resume at the point where the interrupted run saved them, so a resumed run draws the
  same random numbers as an uninterrupted one;
- :class:`CheckpointMatchHook`: a checkpoint that is resumed from (and, with ``strict_load``, one
  that is loaded) must fit the model: otherwise a clear error lists the keys that differ.
"""
import os.path as osp
from typing import Any, Callable, Iterator, Optional

import torch
from mmengine.dist import is_main_process
from mmengine.hooks import CheckpointHook, Hook
from mmengine.model import is_model_wrapper
from mmengine.registry import HOOKS

from ..utils.atomic import atomic_write, remove_partial_files
from ..utils.checkpoint import find_resume_checkpoint
from ..utils.state_dict import check_checkpoint_matches, compare_state_dict, state_dict_of

__all__ = ['AtomicCheckpointHook', 'TorchRNGStateHook', 'CheckpointMatchHook', 'add_training_hooks']


def _resuming(runner) -> bool:
    # mmengine keeps ``resume`` in a private attribute; load_or_resume() resumes iff it is set
    return bool(getattr(runner, '_resume', False))


@HOOKS.register_module()
class AtomicCheckpointHook(CheckpointHook):
    """mmengine's ``CheckpointHook`` made safe against a crash at any moment.

    Takes exactly ``CheckpointHook``'s arguments. Differences:

    - checkpoints on a local disk go through the ``'atomic_local'`` file backend
      (:class:`dcn_plugin.utils.atomic.AtomicLocalBackend`: temporary file in the same folder,
      flush, ``fsync``, rename), and so does ``last_checkpoint``, which is rewritten only after the
      checkpoint is complete; other storage backends are used as configured;
    - with ``max_keep_ckpts``, the checkpoint that falls out of the window is deleted after the new
      one and ``last_checkpoint`` are written (mmengine deletes it first, so a crash in between left
      no checkpoint at all); the pending deletion is recorded in the new checkpoint, so a run resumed
      after a crash at that moment completes it;
    - auto-resume (``resume=True`` and no ``load_from``): the checkpoint ``last_checkpoint`` names is
      checked without unpickling it (:func:`dcn_plugin.utils.checkpoint.checkpoint_problem`); if it
      is missing, truncated or corrupt, the newest intact ``iter_N.pth`` / ``epoch_N.pth`` is resumed
      instead, with a warning naming what was skipped and why (no intact one: training starts from
      scratch, with a warning);
    - temporaries of writes a crash interrupted are deleted when training starts.
    """

    _PENDING_KEY = 'dcn_plugin_checkpoints_to_remove'

    def before_run(self, runner) -> None:
        if not (_resuming(runner) and getattr(runner, '_load_from', None) is None):
            return
        path, skipped = find_resume_checkpoint(runner.work_dir)
        for bad, problem in skipped:
            runner.logger.warning(f'not resuming from checkpoint {bad}: it {problem}')
        if path is None:
            if skipped:
                runner.logger.warning(f'no intact checkpoint in {runner.work_dir} to resume from: training starts '
                                      'from scratch')
            else:
                runner.logger.info(f'no checkpoint in {runner.work_dir} to resume from: training starts from scratch')
            runner._resume = False  # mmengine would try the file last_checkpoint names
        else:
            if skipped:
                runner.logger.warning(f'resuming from {path}, the newest intact checkpoint')
            runner._load_from = path

    def before_train(self, runner) -> None:
        out_dir = self.out_dir if self.out_dir is not None else runner.work_dir
        backend = (self.backend_args or {}).get('backend', 'local')
        if self.file_client_args is None and '://' not in str(out_dir) and backend == 'local':
            self.backend_args = dict(self.backend_args or {}, backend='atomic_local')
        super().before_train(runner)
        if not is_main_process():
            return
        if '://' not in str(self.out_dir):
            for path in remove_partial_files(self.out_dir):
                runner.logger.warning(f'removed {path}, the partial file of a checkpoint write that was interrupted')
        pending = runner.message_hub.get_info(self._PENDING_KEY, None) or []
        self._remove_steps(pending)
        runner.message_hub.update_info(self._PENDING_KEY, [])

    def _remove_steps(self, steps) -> None:
        for step in steps:
            path = self.file_backend.join_path(self.out_dir, self.filename_tmpl.format(step))
            if self.file_backend.isfile(path):
                self.file_backend.remove(path)
            elif self.file_backend.isdir(path):  # deepspeed saves folders
                self.file_backend.rmtree(path)

    def _save_checkpoint_with_step(self, runner, step, meta) -> None:
        to_remove = []
        if self.max_keep_ckpts > 0 and not (self.keep_ckpt_ids and self.keep_ckpt_ids[-1] == step):
            while len(self.keep_ckpt_ids) >= self.max_keep_ckpts:
                to_remove.append(self.keep_ckpt_ids.popleft())
            self.keep_ckpt_ids.append(step)
            runner.message_hub.update_info('keep_ckpt_ids', list(self.keep_ckpt_ids))
        runner.message_hub.update_info(self._PENDING_KEY, to_remove)  # saved in the checkpoint

        ckpt_filename = self.filename_tmpl.format(step)
        self.last_ckpt = self.file_backend.join_path(self.out_dir, ckpt_filename)
        runner.message_hub.update_info('last_ckpt', self.last_ckpt)
        runner.save_checkpoint(
            self.out_dir, ckpt_filename, self.file_client_args, save_optimizer=self.save_optimizer,
            save_param_scheduler=self.save_param_scheduler, meta=meta, by_epoch=self.by_epoch,
            backend_args=self.backend_args, **self.args)
        if not is_main_process():
            return
        atomic_write(osp.join(runner.work_dir, 'last_checkpoint'), self.last_ckpt)
        self._remove_steps(to_remove)
        runner.message_hub.update_info(self._PENDING_KEY, [])


class _RestoreBeforeFetch:
    """Wraps the train loop's data iterator: passes ``skip`` fetches through, then calls
    ``on_fetch`` once just before the next fetch."""

    def __init__(self, iterator: Iterator, skip: int, on_fetch: Callable[[], None]) -> None:
        self._iterator = iterator
        self._skip = skip
        self._on_fetch = on_fetch

    def __iter__(self) -> '_RestoreBeforeFetch':
        return self

    def __next__(self) -> Any:
        if self._skip > 0:
            self._skip -= 1
        else:
            self._on_fetch()
        return next(self._iterator)

    def __getattr__(self, name: str) -> Any:  # the loop's iterator attributes (epoch, dataloader, ...)
        if name == '_iterator':
            raise AttributeError(name)
        return getattr(self._iterator, name)


@HOOKS.register_module()
class TorchRNGStateHook(Hook):
    """Save torch's random generator states (CPU and CUDA) in checkpoints and restore them on resume,
    so a resumed run draws the same random numbers as an uninterrupted one (Faster R-CNN's RPN / RoI
    samplers draw with ``torch.randperm``; mmengine restores weights, optimizer, schedulers, message
    hub and the data order, but not these states).

    **When the states are restored.** A checkpoint is written after a training iteration; the
    uninterrupted run then fetches the next batch, and at an epoch boundary that creates the next
    epoch's DataLoader iterator, which draws its base seed from torch's global generator (every
    epoch unless the workers are persistent). The resumed run must therefore get the saved states
    back *before* that fetch: with mmengine's iteration-based loop, right after it has skipped the
    batches already trained (the hook wraps the loop's data iterator for that one fetch); with the
    epoch-based loop, before the epoch starts. numpy / ``random`` states are left alone: only the
    data pipeline draws from them, and skipping the trained batches replays those draws exactly.

    **Validation** during training leaves torch's generators as it found them (the states are saved
    before it and put back after), so it does not matter whether a resumed run re-ran a validation
    that the interrupted run did after its last checkpoint.

    A plain ``load_from`` (fine-tuning from another run's weights) does not restore the states.
    """

    priority = 'VERY_LOW'
    _KEY = 'dcn_plugin_torch_rng_state'

    def __init__(self) -> None:
        self._pending: Optional[dict] = None
        self._outside_val: Optional[dict] = None

    @staticmethod
    def _get_state() -> dict:
        state = {'cpu': torch.get_rng_state()}
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            state['cuda'] = torch.cuda.get_rng_state_all()
        return state

    @staticmethod
    def _set_state(state: dict) -> None:
        torch.set_rng_state(state['cpu'])
        if 'cuda' in state and torch.cuda.is_available() and len(state['cuda']) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(state['cuda'])

    def _restore_pending(self) -> None:
        if self._pending is not None:
            self._set_state(self._pending)
            self._pending = None

    def before_save_checkpoint(self, runner, checkpoint: dict) -> None:
        # a checkpoint written during validation (save_best) gets the training states
        checkpoint[self._KEY] = self._outside_val if self._outside_val is not None else self._get_state()

    def after_load_checkpoint(self, runner, checkpoint: dict) -> None:
        self._pending = checkpoint.get(self._KEY) if _resuming(runner) else None

    def before_train_epoch(self, runner) -> None:
        if self._pending is None:
            return
        loop = runner.train_loop
        iterator = getattr(loop, 'dataloader_iterator', None)
        if iterator is None:  # epoch-based: this epoch's DataLoader iterator is created next
            self._restore_pending()
            return

        def on_fetch() -> None:
            self._restore_pending()
            loop.dataloader_iterator = iterator

        # iteration-based: the loop skips the `iter` batches already trained, then fetches the next
        loop.dataloader_iterator = _RestoreBeforeFetch(iterator, loop.iter, on_fetch)

    def before_train_iter(self, runner, batch_idx: int, data_batch=None) -> None:
        self._restore_pending()  # loops of other shapes: as early as a hook can

    def before_val(self, runner) -> None:
        self._outside_val = self._get_state()

    def after_val(self, runner) -> None:
        if self._outside_val is not None:
            self._set_state(self._outside_val)
            self._outside_val = None


@HOOKS.register_module()
class CheckpointMatchHook(Hook):
    """Refuse a checkpoint whose weights do not fit the model, with a message that says which keys
    differ (:func:`dcn_plugin.utils.state_dict.check_checkpoint_matches`).

    Resuming always requires an exact fit (the optimizer state belongs to the same parameters; mmengine
    would load the weights that fit and then fail in the optimizer). A plain ``load_from`` is checked
    only with ``strict_load=True`` (``tools/test.py`` sets it unless ``--allow-partial-load``);
    otherwise a warning names the differences and the weights that fit are loaded, as mmengine does.

    Args:
        strict_load: also require an exact fit for ``load_from``.
        remedy: a sentence added to the error of a refused ``load_from`` (how to load anyway).
    """

    priority = 'VERY_HIGH'

    def __init__(self, strict_load: bool = False, remedy: str = '') -> None:
        self.strict_load = strict_load
        self.remedy = remedy

    def after_load_checkpoint(self, runner, checkpoint: dict) -> None:
        model = runner.model.module if is_model_wrapper(runner.model) else runner.model
        source = getattr(runner, '_load_from', None) or 'the checkpoint'
        if _resuming(runner):
            check_checkpoint_matches(
                model, checkpoint, source, action='resume from',
                remedy='Resuming needs a checkpoint of the same model. To start a new run from the weights that fit, '
                       'load it with load_from instead of resuming.')
        elif self.strict_load:  # tools/test.py: the weights are loaded to predict
            check_checkpoint_matches(model, checkpoint, source, action='load', remedy=self.remedy, inference=True)
        else:
            diff = compare_state_dict(model, state_dict_of(checkpoint))
            if diff:
                runner.logger.warning(f'checkpoint {source} fits the model only partly; loading the weights that '
                                      f'fit:\n{diff.describe()}')



def add_training_hooks(cfg: Any, strict_load: bool = False, remedy: str = '') -> Any:
    """The hook set every run of the tools trains and tests with, written into ``cfg`` (an mmengine
    ``Config``) where it is missing; the shipped configs name the same set, so mmdet's own tools get it too.

    - ``default_hooks.checkpoint``: mmengine's ``CheckpointHook`` becomes :class:`AtomicCheckpointHook` with
      the same arguments (another hook type is kept: the config chose it);
    - ``custom_hooks`` gains :class:`TorchRNGStateHook` and :class:`CheckpointMatchHook` unless it names them;
      a named ``CheckpointMatchHook`` gets ``strict_load`` on top of its own and ``remedy`` where given.

    Returns:
        ``cfg``, changed in place.
    """
    hooks = cfg.get('default_hooks', None)
    ckpt = hooks.get('checkpoint', None) if hooks else None
    if ckpt is not None and ckpt.get('type', None) in ('CheckpointHook', 'mmengine.CheckpointHook', CheckpointHook):
        ckpt['type'] = 'AtomicCheckpointHook'
    custom = list(cfg.get('custom_hooks', None) or [])

    def named(cls: type) -> list:
        return [h for h in custom if h.get('type') in (cls, cls.__name__, f'dcn_plugin.{cls.__name__}')]

    if not named(TorchRNGStateHook):
        custom.append(dict(type='TorchRNGStateHook'))
    match = named(CheckpointMatchHook)
    if not match:
        match = [dict(type='CheckpointMatchHook')]
        custom += match
    for hook in match:
        hook['strict_load'] = bool(hook.get('strict_load', False)) or strict_load
        if remedy:
            hook['remedy'] = remedy
    cfg['custom_hooks'] = custom
    return cfg
