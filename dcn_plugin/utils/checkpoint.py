"""Safe loading of mmengine / mmdet checkpoints under ``torch.load(weights_only=True)``.

Since torch 2.6 ``torch.load`` defaults to ``weights_only=True``: it unpickles only tensors, plain
containers and an allow-list of globals, so a checkpoint cannot run code when it is loaded.
mmengine 0.10.x calls ``torch.load(filename, map_location=...)`` without ``weights_only`` and its
checkpoints carry more than tensors: the message hub holds
:class:`~mmengine.logging.HistoryBuffer` objects (numpy arrays, and its statistics methods pickled
as ``getattr(HistoryBuffer, 'mean')``), and the runtime info / hook messages hold numpy scalars.
Those checkpoints then fail to load ("Unsupported global").

:func:`register_safe_checkpoint_globals` allow-lists exactly those types with
``torch.serialization.add_safe_globals`` instead of turning ``weights_only`` off:

- numpy arrays and scalars: ``numpy.ndarray``, ``numpy.dtype`` and the concrete dtype classes,
  ``numpy._core.multiarray._reconstruct`` / ``scalar`` (they build arrays from bytes; object
  arrays only ever hold objects that the same restricted unpickler already produced);
- ``HistoryBuffer`` (a data object: its state is a dict of arrays);
- ``builtins.getattr``, mapped to :func:`_restricted_getattr`, which only returns
  ``HistoryBuffer``'s public methods (``min``, ``max``, ``current``, ``mean``, ...) and refuses any
  other lookup, so ``getattr`` cannot be used to reach ``os.system`` or a module's globals.

Everything else stays refused: a pickle whose ``__reduce__`` calls ``os.system``, ``eval``,
``subprocess`` or any other non-allow-listed global raises ``pickle.UnpicklingError``.
"""
import inspect
import pickle
from typing import Any, List, Tuple

import numpy as np
import torch

__all__ = ['register_safe_checkpoint_globals', 'safe_checkpoint_globals']

_REGISTERED = False


def _restricted_getattr(obj: Any, name: str) -> Any:
    """``getattr`` as a checkpoint may use it: only ``HistoryBuffer``'s public methods."""
    from mmengine.logging import HistoryBuffer
    if (obj is HistoryBuffer and isinstance(name, str) and not name.startswith('_')
            and inspect.isfunction(inspect.getattr_static(HistoryBuffer, name, None))):
        return getattr(obj, name)
    raise pickle.UnpicklingError(
        f'refusing getattr({getattr(obj, "__name__", type(obj).__name__)}, {name!r}) in a checkpoint: only '
        'public methods of mmengine.logging.HistoryBuffer may be looked up while loading')


def _numpy_globals() -> List[Any]:
    try:  # numpy >= 2
        from numpy._core import multiarray
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy.core import multiarray  # type: ignore[no-redef]
    items: List[Any] = [np.ndarray, np.dtype, multiarray._reconstruct, multiarray.scalar]
    # numpy 1.x checkpoints name the functions numpy.core.multiarray.*; numpy 2 loads them too
    items += [(multiarray._reconstruct, 'numpy.core.multiarray._reconstruct'),
              (multiarray.scalar, 'numpy.core.multiarray.scalar')]
    dtypes_mod = getattr(np, 'dtypes', None)
    if dtypes_mod is not None:  # concrete dtype classes (numpy.dtypes.Float64DType, ...)
        items += [c for c in vars(dtypes_mod).values() if isinstance(c, type) and issubclass(c, np.dtype)]
    # numpy scalar types (np.float64, np.int64, ...), which some pickles name directly
    items += sorted({t for ts in np.sctypes.values() for t in ts} if hasattr(np, 'sctypes') else
                    {np.dtype(c).type for c in np.typecodes['All'] if c not in 'OMm'},
                    key=lambda t: t.__name__)
    return items


def safe_checkpoint_globals() -> List[Any]:
    """The globals that :func:`register_safe_checkpoint_globals` adds (entries for ``add_safe_globals``)."""
    from mmengine.logging import HistoryBuffer
    items: List[Any] = _numpy_globals()
    items.append(HistoryBuffer)
    items.append((_restricted_getattr, 'builtins.getattr'))
    return items


def register_safe_checkpoint_globals() -> None:
    """Allow-list the types mmengine / mmdet checkpoints carry for ``weights_only`` loading.

    Idempotent; keeps ``torch.load``'s ``weights_only=True`` default in force. Called by the tools and
    by :mod:`dcn_plugin.apis` on import.
    """
    global _REGISTERED
    if _REGISTERED:
        return
    torch.serialization.add_safe_globals(safe_checkpoint_globals())
    _REGISTERED = True

