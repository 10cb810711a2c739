"""What ``tools/train.py`` and ``tools/test.py`` do, as functions: config loading and overrides,
distributed setup (gloo on machines without GPUs), runner building (crash-safe checkpoints, exact
resume, checked checkpoints and datasets), metrics saving, and the tools' error reporting.
"""
import argparse
import contextlib
import datetime
import json
import os
import os.path as osp
from typing import Any, Dict, Iterator, Mapping, Optional

import torch
from mmengine.config import Config, ConfigDict, DictAction
from mmengine.logging import print_log

from ..datasets.checks import DatasetError, checked_dataloader_builder
from ..utils.atomic import atomic_write
from ..utils.checkpoint import CheckpointError

__all__ = ['add_checkpoint_arguments',
           'parse_tool_args', 'load_config', 'set_data_root', 'setup_train_cfg', 'setup_test_cfg', 'build_runner',
           'save_metrics', 'setup_distributed', 'teardown_distributed', 'default_work_dir',
           'exit_on_user_error']


_DATA_SECTIONS = ('train_dataloader', 'val_dataloader', 'test_dataloader', 'val_evaluator', 'test_evaluator')


def parse_tool_args(parser: argparse.ArgumentParser, argv: Optional[Any] = None) -> argparse.Namespace:
    """Add the arguments every runner tool takes (``--cfg-options``, ``--launcher``, ``--local-rank``, as
    mmdet's tools), parse ``argv`` (``sys.argv[1:]`` when None) and export ``LOCAL_RANK`` for torch's
    launchers."""
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override config settings, key=value (e.g. data_root=/data/coco/ '
                             'train_cfg.max_iters=100)')
    parser.add_argument('--launcher', choices=['none', 'pytorch', 'slurm', 'mpi'], default='none',
                        help='job launcher')
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)
    args = parser.parse_args(argv)
    os.environ.setdefault('LOCAL_RANK', str(args.local_rank))
    return args


def add_checkpoint_arguments(parser: argparse.ArgumentParser, purpose: str) -> None:
    """The tools' positional ``checkpoint`` (a file, or any URL mmengine loads through the restricted loader)
    and ``--allow-partial-load`` (``purpose`` says what the tool then does anyway, e.g. ``'evaluate'``)."""
    parser.add_argument('checkpoint', help='checkpoint file or URL (https://, torchvision://, open-mmlab://, ...)')
    parser.add_argument('--allow-partial-load', action='store_true',
                        help=f'{purpose} even if the checkpoint fits the model only partly (missing, unexpected or '
                             'mis-shaped keys are then only warned about)')


def default_work_dir(config_path: str) -> str:
    """``work_dirs/<config name>`` (mmdet's default)."""
    return osp.join('work_dirs', osp.splitext(osp.basename(config_path))[0])


def _replace_prefix(node: Any, old: str, new: str) -> Any:
    if isinstance(node, str):
        return new + node[len(old):] if node.startswith(old) else node
    if isinstance(node, Mapping):
        for k in list(node.keys()):
            node[k] = _replace_prefix(node[k], old, new)
        return node
    if isinstance(node, list):
        return [_replace_prefix(v, old, new) for v in node]
    if isinstance(node, tuple):
        return tuple(_replace_prefix(v, old, new) for v in node)
    return node


def set_data_root(cfg: Config, data_root: str) -> Config:
    """Point a config at another dataset root.

    mmdet's dataset configs resolve ``data_root`` at parse time into the dataloaders' ``data_root``
    and the evaluators' ``ann_file`` (``data_root + 'annotations/...'``), so overriding the top-level
    variable alone changes nothing. This rewrites every string in the dataloaders and evaluators
    that starts with the old root.
    """
    old = cfg.get('data_root', None)
    if not data_root.endswith('/'):
        data_root = data_root + '/'
    if old:
        for section in _DATA_SECTIONS:
            if section in cfg and cfg[section] is not None:
                cfg[section] = _replace_prefix(cfg[section], old, data_root)
                if old.endswith('/'):  # 'data/coco' without the slash, as some configs write it
                    cfg[section] = _replace_prefix(cfg[section], old.rstrip('/'), data_root.rstrip('/'))
    cfg.data_root = data_root
    return cfg


def load_config(config: str, cfg_options: Optional[Dict[str, Any]] = None, work_dir: Optional[str] = None,
                launcher: str = 'none') -> Config:
    """Load ``config``, apply ``--cfg-options`` (``data_root=...`` moves the whole dataset), set the
    work dir (CLI > config > ``work_dirs/<config name>``) and the launcher."""
    cfg = Config.fromfile(config)
    cfg.launcher = launcher
    if cfg_options:
        cfg_options = dict(cfg_options)
        new_root = cfg_options.pop('data_root', None)
        if cfg_options:
            cfg.merge_from_dict(cfg_options)
        if new_root is not None:
            set_data_root(cfg, str(new_root))
    if work_dir is not None:
        cfg.work_dir = work_dir
    elif cfg.get('work_dir', None) is None:
        cfg.work_dir = default_work_dir(config)
    if launcher != 'none' and not torch.cuda.is_available():
        _use_cpu_distributed(cfg)
    return cfg


def _use_cpu_distributed(cfg: Config) -> None:
    """Distributed runs without GPUs: gloo backend, DDP without ``device_ids``."""
    env_cfg = cfg.setdefault('env_cfg', ConfigDict())
    dist_cfg = env_cfg.setdefault('dist_cfg', ConfigDict())
    dist_cfg['backend'] = 'gloo'
    wrapper = cfg.get('model_wrapper_cfg', None) or ConfigDict(type='MMDistributedDataParallel')
    if wrapper.get('type', 'MMDistributedDataParallel') == 'MMDistributedDataParallel':
        wrapper['device_ids'] = None  # DDP refuses device_ids for CPU modules
        wrapper.setdefault('broadcast_buffers', False)
        wrapper.setdefault('find_unused_parameters', cfg.get('find_unused_parameters', False))
    cfg.model_wrapper_cfg = wrapper


def setup_distributed(cfg: Config) -> None:
    """Initialise the process group for ``pytorch`` launches on machines without GPUs.

    mmengine's ``init_dist`` calls ``torch.cuda.set_device`` first, which fails without a GPU; the
    Runner skips its own initialisation when a process group already exists.
    """
    if cfg.get('launcher', 'none') != 'pytorch' or torch.cuda.is_available():
        return
    import torch.distributed as dist
    if dist.is_initialized():
        return
    timeout = cfg.get('env_cfg', {}).get('dist_cfg', {}).get('timeout', 1800)
    dist.init_process_group(backend='gloo', timeout=datetime.timedelta(seconds=timeout))
    if dist.get_rank() == 0:
        print_log(f'distributed on CPU: backend gloo, world size {dist.get_world_size()}', logger='current')


def teardown_distributed() -> None:
    """Wait for every rank, then close the process group (no-op when not distributed).

    Without it a rank that finishes first exits while another is still inside a gloo collective,
    which then aborts with a connection error (seen as a SIGABRT of rank 1 in 2-process CPU runs).
    """
    import torch.distributed as dist
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def setup_train_cfg(cfg: Config, amp: bool = False, resume: Optional[str] = None,
                    auto_scale_lr: bool = False) -> Config:
    """``--amp``, ``--resume [CKPT]`` (no path: the latest checkpoint in the work dir),
    ``--auto-scale-lr``, as mmdet's ``tools/train.py``."""
    if amp:
        if not torch.cuda.is_available():
            raise RuntimeError('--amp needs a GPU: mmengine\'s AmpOptimWrapper runs on CUDA (or NPU/MLU) only')
        cfg.optim_wrapper.type = 'AmpOptimWrapper'
        cfg.optim_wrapper.loss_scale = 'dynamic'
    if auto_scale_lr:
        asl = cfg.get('auto_scale_lr', None)
        if not asl or 'base_batch_size' not in asl:
            raise RuntimeError('--auto-scale-lr needs auto_scale_lr=dict(base_batch_size=...) in the config')
        cfg.auto_scale_lr.enable = True
    if resume == 'auto':
        cfg.resume = True
        cfg.load_from = None
    elif resume is not None:
        cfg.resume = True
        cfg.load_from = resume
    return cfg


def setup_test_cfg(cfg: Config, checkpoint: str, show_dir: Optional[str] = None, show: bool = False,
                   wait_time: float = 2.0) -> Config:
    """Load ``checkpoint`` for testing; with ``show_dir`` / ``show``, draw detections through mmdet's
    ``DetVisualizationHook`` (pictures under ``work_dir/<timestamp>/<show_dir>``)."""
    cfg.load_from = checkpoint
    if show or show_dir:
        hooks = cfg.setdefault('default_hooks', ConfigDict())
        vis = hooks.get('visualization', None)
        if vis is None:
            vis = ConfigDict(type='DetVisualizationHook')
        vis['draw'] = True
        if show:
            vis['show'] = True
            vis['wait_time'] = wait_time
        if show_dir:
            vis['test_out_dir'] = show_dir
        hooks['visualization'] = vis
    return cfg


def build_runner(cfg: Config, strict_load: bool = False, load_remedy: str = ''):
    """Build the Runner (``runner_type`` from the config if set) the way the tools run it.

    - every checkpoint scheme loads through the restricted loader (installed by ``import dcn_plugin``);
    - the training hooks (:func:`dcn_plugin.engine.hooks.add_training_hooks`): atomic checkpoints whose
      auto-resume skips broken ones, exact resume, and checkpoints that must fit the model (with
      ``strict_load`` a loaded one too, else the error ends with ``load_remedy``);
    - datasets are checked when built (:func:`dcn_plugin.datasets.checks.checked_dataloader_builder`).

    Args:
        cfg: the full config (``load_config`` / ``setup_*_cfg`` applied).
        strict_load: refuse a ``load_from`` checkpoint that does not fit the model exactly.
        load_remedy: how to load anyway, appended to that refusal.
    """
    from mmengine.registry import RUNNERS
    from mmengine.runner import Runner

    from ..engine.hooks import add_training_hooks
    add_training_hooks(cfg, strict_load=strict_load, remedy=load_remedy)
    setup_distributed(cfg)
    runner = RUNNERS.build(cfg) if 'runner_type' in cfg else Runner.from_cfg(cfg)
    runner.build_dataloader = checked_dataloader_builder(runner.build_dataloader)
    return runner


@contextlib.contextmanager
def exit_on_user_error(prog: str) -> Iterator[None]:
    """In a tool: a checkpoint or dataset the user named that cannot be used (a
    :class:`~dcn_plugin.utils.checkpoint.CheckpointError`, a
    :class:`~dcn_plugin.datasets.checks.DatasetError`, a missing file) ends the program with its
    message and exit status 1 instead of a traceback."""
    try:
        yield
    except (CheckpointError, DatasetError, FileNotFoundError) as e:
        raise SystemExit(f'{prog}: error: {e}') from e


def _to_builtin(v: Any) -> Any:
    if hasattr(v, 'item') and callable(v.item):
        try:
            return v.item()
        except (ValueError, RuntimeError):
            pass
    if isinstance(v, Mapping):
        return {str(k): _to_builtin(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_to_builtin(x) for x in v]
    return v


def save_metrics(metrics: Mapping[str, Any], work_dir: str, checkpoint: Optional[str] = None,
                 config: Optional[str] = None, filename: str = 'test_metrics.json') -> Optional[str]:
    """Write ``metrics`` (plus the checkpoint and config they came from) as JSON under ``work_dir``.

    Only rank 0 writes; returns the path (``None`` on other ranks).
    """
    from mmengine.dist import is_main_process
    if not is_main_process():
        return None
    path = osp.join(work_dir, filename)
    record = {'config': config, 'checkpoint': checkpoint, 'metrics': _to_builtin(dict(metrics))}
    atomic_write(path, json.dumps(record, indent=2, sort_keys=True))
    print_log(f'metrics saved to {path}', logger='current')
    return path
