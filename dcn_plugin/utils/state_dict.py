"""Does a checkpoint fit a model? Missing, unexpected and mis-shaped keys, said in a few lines.

mmengine loads checkpoints non-strictly and only warns about keys that do not match, so a model can
be evaluated with random weights, and resuming a run from a checkpoint of another architecture fails
later with an optimizer error that does not say why. :func:`compare_state_dict` finds the
differences; :func:`check_checkpoint_matches` raises :class:`CheckpointMismatchError` with a
message that names a few of each kind and, for the common case of deformable vs plain
convolutions, says so.
"""
import re
import warnings
from dataclasses import dataclass, field
from typing import Any, List, Mapping, Optional, Sequence, Tuple

from torch import nn

from .checkpoint import CheckpointError

__all__ = ['CheckpointMismatchError', 'StateDictDiff', 'compare_state_dict', 'check_checkpoint_matches',
           'state_dict_of', 'register_training_only_keys', 'load_model_checkpoint', 'init_detector_from_checkpoint']

#: mmengine's default ``revise_keys`` (a DataParallel / DDP ``module.`` prefix is stripped)
DEFAULT_REVISE_KEYS: Sequence[Tuple[str, str]] = ((r'^module\.', ''),)
_SHOWN = 5
_TRAINING_ONLY: List['re.Pattern[str]'] = []


def register_training_only_keys(pattern: str) -> None:
    """Declare state-dict keys (a regex searched in each key) of parameters that only training uses.

    A model configured without such a training-only branch predicts exactly as one with it, so when a
    checkpoint is loaded for inference (``inference=True`` below) keys matching a registered pattern may
    be missing from it or surplus to the model. Resuming still requires an exact fit. The modules that own
    such parameters register their pattern when they are imported (the R-CNN feature mimicking head does).
    """
    compiled = re.compile(pattern)
    if all(p.pattern != pattern for p in _TRAINING_ONLY):
        _TRAINING_ONLY.append(compiled)


def _training_only(key: str) -> bool:
    return any(p.search(key) for p in _TRAINING_ONLY)


class CheckpointMismatchError(CheckpointError):
    """The checkpoint's weights do not fit the model (architectures differ)."""


@dataclass
class StateDictDiff:
    """Differences between a checkpoint's state dict and a model's.

    Attributes:
        missing: keys the model has and the checkpoint lacks.
        unexpected: keys the checkpoint has and the model lacks.
        mismatched: ``(key, checkpoint shape, model shape)`` for keys whose tensors differ in shape.
    """
    missing: List[str] = field(default_factory=list)
    unexpected: List[str] = field(default_factory=list)
    mismatched: List[Tuple[str, Tuple[int, ...], Tuple[int, ...]]] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.missing or self.unexpected or self.mismatched)

    def describe(self) -> str:
        """A few lines: counts, a few keys of each kind, and what the pattern suggests."""
        def few(keys: Sequence[str]) -> str:
            shown = ', '.join(keys[:_SHOWN])
            return shown + (f', ... ({len(keys) - _SHOWN} more)' if len(keys) > _SHOWN else '')

        lines = []
        if self.missing:
            lines.append(f'{len(self.missing)} key(s) of the model are missing from the checkpoint: '
                         f'{few(self.missing)}')
        if self.unexpected:
            lines.append(f'{len(self.unexpected)} key(s) of the checkpoint are not in the model: '
                         f'{few(self.unexpected)}')
        if self.mismatched:
            shapes = [f'{k} (checkpoint {tuple(a)}, model {tuple(b)})' for k, a, b in self.mismatched]
            lines.append(f'{len(self.mismatched)} tensor(s) have another shape: {few(shapes)}')
        is_offset = re.compile(r'(^|\.)conv_offset\.')
        if self.missing and all(is_offset.search(k) for k in self.missing) and not self.unexpected:
            lines.append('every missing key is the offset branch (conv_offset) of a deformable conv: the '
                         'checkpoint comes from a model with plain convolutions where this one has DCN layers')
        elif self.unexpected and all(is_offset.search(k) for k in self.unexpected) and not self.missing:
            lines.append('every unexpected key is the offset branch (conv_offset) of a deformable conv: the '
                         'checkpoint comes from a model with DCN layers where this one has plain convolutions')
        return '\n'.join('  ' + line for line in lines)


def state_dict_of(checkpoint: Any,
                  revise_keys: Sequence[Tuple[str, str]] = DEFAULT_REVISE_KEYS) -> Mapping[str, Any]:
    """The state dict in a loaded checkpoint (its ``state_dict`` entry, or the checkpoint itself), with
    keys revised as mmengine revises them before loading."""
    if not isinstance(checkpoint, Mapping):
        raise CheckpointError(f'the checkpoint holds a {type(checkpoint).__name__}, not a dict of weights')
    state = checkpoint.get('state_dict', checkpoint)
    if not isinstance(state, Mapping):
        raise CheckpointError(f'the checkpoint\'s state_dict is a {type(state).__name__}, not a dict of weights')
    for pattern, repl in revise_keys:
        state = {re.sub(pattern, repl, k): v for k, v in state.items()}
    return state


def compare_state_dict(model: nn.Module, state: Mapping[str, Any], inference: bool = False) -> StateDictDiff:
    """Compare ``state`` with ``model.state_dict()`` (keys and tensor shapes).

    BatchNorm's ``num_batches_tracked`` counters are ignored when missing, as mmengine does; with
    ``inference=True`` so are the keys of training-only branches (:func:`register_training_only_keys`).
    """
    own = model.state_dict()
    diff = StateDictDiff()
    ignored = _training_only if inference else (lambda key: False)
    diff.missing = [k for k in own if k not in state and not k.endswith('num_batches_tracked') and not ignored(k)]
    diff.unexpected = [k for k in state if k not in own and not ignored(k)]
    for k, v in state.items():
        if k in own and hasattr(v, 'shape') and tuple(v.shape) != tuple(own[k].shape):
            diff.mismatched.append((k, tuple(v.shape), tuple(own[k].shape)))
    return diff


def check_checkpoint_matches(model: nn.Module, checkpoint: Any, source: str, action: str = 'load',
                             remedy: str = '', inference: bool = False) -> StateDictDiff:
    """Raise :class:`CheckpointMismatchError` unless ``checkpoint`` fits ``model`` exactly.

    Args:
        model: the model (unwrapped from DDP).
        checkpoint: what :func:`~dcn_plugin.utils.checkpoint.load_checkpoint_file` returned.
        source: the checkpoint's name for the message.
        action: what was being done (``'load'``, ``'resume from'``, ...), for the message.
        remedy: a sentence appended to the message (how to proceed anyway, if one can).
        inference: the weights are loaded to predict (testing, visualising): training-only branches may
            differ (:func:`register_training_only_keys`).

    Returns:
        The (empty) differences.
    """
    state = state_dict_of(checkpoint)
    if not state:
        raise CheckpointMismatchError(f'cannot {action} checkpoint {source}: it holds no weights (its state dict is '
                                      'empty)' + (f'\n{remedy}' if remedy else ''))
    diff = compare_state_dict(model, state, inference=inference)
    if diff:
        raise CheckpointMismatchError(
            f'cannot {action} checkpoint {source}: its weights do not fit the model (the architectures differ)\n'
            f'{diff.describe()}' + (f'\n{remedy}' if remedy else ''))
    return diff


def load_model_checkpoint(model, checkpoint: str, allow_partial_load: bool = False,
                          remedy: str = '') -> Any:
    """Load ``checkpoint`` (a path or any URL scheme; through the restricted loader) into ``model`` for
    inference, requiring an exact fit (:func:`check_checkpoint_matches` with ``inference=True``): what
    ``tools/visualize_offsets.py`` and ``tools/export_onnx.py`` load with. A model with ``dataset_meta``
    takes the checkpoint's, as mmdet's ``init_detector`` does.

    Args:
        model: the model (not wrapped).
        checkpoint: path or URL.
        allow_partial_load: load the weights that fit and warn about the rest, instead of raising
            :class:`~dcn_plugin.utils.state_dict.CheckpointMismatchError` when any key is missing,
            unexpected or mis-shaped.
        remedy: a sentence appended to that error.

    Returns:
        The loaded checkpoint.
    """
    from mmengine.logging import print_log
    from mmengine.runner.checkpoint import _load_checkpoint, _load_checkpoint_to_model

    from .checkpoint import install_checkpoint_loaders
    install_checkpoint_loaders()
    loaded = _load_checkpoint(checkpoint, map_location='cpu')
    if allow_partial_load:
        diff = compare_state_dict(model, state_dict_of(loaded))
        if diff:
            print_log(f'checkpoint {checkpoint} fits the model only partly; loading the weights that fit:\n'
                      f'{diff.describe()}', logger='current', level=30)
    else:
        check_checkpoint_matches(model, loaded, checkpoint, action='load', remedy=remedy, inference=True)
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')  # the differences were reported above
        _load_checkpoint_to_model(model, loaded, strict=False)
    meta = loaded.get('meta') if isinstance(loaded, Mapping) else None
    if isinstance(meta, Mapping) and isinstance(meta.get('dataset_meta'), Mapping) \
            and hasattr(model, 'dataset_meta'):
        model.dataset_meta = {k.lower(): v for k, v in meta['dataset_meta'].items()}  # as mmdet's init_detector
    return loaded


def init_detector_from_checkpoint(config: Any, checkpoint: Optional[str] = None,
                                  cfg_options: Optional[Mapping[str, Any]] = None, device: str = 'cpu',
                                  allow_partial_load: bool = False, remedy: str = '') -> nn.Module:
    """mmdet's ``init_detector`` for ``config`` (a path or an mmengine ``Config``; ``cfg_options`` merged in),
    then ``checkpoint`` (None: the config's initialisation) through :func:`load_model_checkpoint`: the
    restricted loader and the exact-fit rule of ``tools/test.py``. Returns the model in eval mode, with
    ``model.cfg`` the config."""
    import warnings

    from mmdet.apis import init_detector
    from mmengine.config import Config
    cfg = Config.fromfile(config) if isinstance(config, str) else config
    if cfg_options:
        cfg.merge_from_dict(dict(cfg_options))
    with warnings.catch_warnings():
        warnings.filterwarnings('ignore', message='checkpoint is None')  # the weights are loaded below
        model = init_detector(cfg, None, device=device)
    if checkpoint is not None:
        load_model_checkpoint(model, checkpoint, allow_partial_load, remedy=remedy)
    return model.eval()
