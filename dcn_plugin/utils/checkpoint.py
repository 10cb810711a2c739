"""One restricted loader for every checkpoint: local files and every URL scheme mmengine knows.

**The unpickler.** Checkpoints are pickles; unpickling one can run any code it names. Every
checkpoint this package reads goes through :func:`load_checkpoint_file`, which calls
``torch.load(weights_only=True)`` explicitly (so neither torch's default nor the
``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD`` environment variable can turn it off): only tensors, plain
containers and an allow-list of globals are unpickled. mmengine / mmdet checkpoints carry more than
tensors: the message hub holds :class:`~mmengine.logging.HistoryBuffer` objects (numpy arrays, and
its statistics methods pickled as ``getattr(HistoryBuffer, 'mean')``), and the runtime info / hook
messages hold numpy scalars. :func:`register_safe_checkpoint_globals` allow-lists exactly those:

- numpy content, with no pickled state reaching numpy: the names numpy pickles use
  (``numpy.dtype``, ``numpy.ndarray``, ``numpy.core.multiarray._reconstruct`` / ``scalar`` and their
  ``numpy._core`` spellings) map to rebuilders in this module. A dtype is rebuilt from its descriptor
  string (``'f8'``, ``'<i4'`` ...), plain numeric kinds only (bool, int, uint, float, complex: no
  object, structured, void, string or datetime dtypes), and the only state it accepts is a byte order;
  an array from a shape of at most 32 non-negative dimensions, such a dtype and raw bytes whose length
  is exactly ``itemsize * size`` (checked before anything is allocated); a scalar from such a dtype and
  exactly ``itemsize`` bytes. numpy's own ``dtype.__setstate__`` / ``ndarray.__setstate__``, which
  restore flags, field offsets and object pointers as the pickle states them, are never called, and the
  numpy classes themselves are not allow-listed (an entry another package adds for them is removed);
- ``HistoryBuffer`` (a data object: its state is a dict of arrays);
- ``builtins.getattr``, mapped to :func:`_restricted_getattr`, which only returns
  ``HistoryBuffer``'s public methods (``min``, ``max``, ``current``, ``mean``, ...) and refuses any
  other lookup, so ``getattr`` cannot be used to reach ``os.system`` or a module's globals.

Everything else is refused with :class:`UnsafeCheckpointError` (a ``pickle.UnpicklingError``) that
names the file and says why: a pickle whose ``__reduce__`` calls ``os.system``, ``eval``,
``subprocess`` or any other global, or numpy content outside the rules above.
Before unpickling, a zip-format file (what ``torch.save`` writes) is checked record by record
against its CRCs, so a truncated or corrupt file raises :class:`CorruptCheckpointError` naming the
file instead of an error from deep inside torch (or, for a flipped bit, silently wrong weights).

**The schemes.** mmengine resolves every checkpoint path through ``CheckpointLoader``: the Runner's
``load_from`` and ``resume``, ``init_cfg=dict(type='Pretrained', ...)``,
``mmengine.runner.load_checkpoint``, mmdet's ``init_detector``. mmengine 0.10 registers these
schemes (``mmengine/runner/checkpoint.py``): local paths (prefix ``''``), ``http://``,
``https://``, ``pavi://``, ``s3://`` and ``petrel://`` (optionally ``cluster:``-prefixed),
``modelzoo://``, ``torchvision://``, ``open-mmlab://``, ``openmmlab://`` and ``mmcls://``; its own
loaders call ``torch.load`` / ``torch.hub.load_state_dict_from_url`` with ``weights_only`` unset or
False. :func:`install_checkpoint_loaders` (run when :mod:`dcn_plugin` is imported, idempotent)
registers a loader for each of them that downloads or reads as mmengine does (URLs into the torch
hub cache, ``TORCH_HOME/hub/checkpoints``) and then unpickles through :func:`load_checkpoint_file`.
Two checks go beyond torch.hub's: a cached file whose name carries a sha256 prefix
(``name-<8 or more hex digits>.ext``, torch.hub's ``HASH_REGEX`` convention, as every
``torchvision://`` and OpenMMLab model-zoo name does) is checked against it on every use, not only
on download, so a file replaced in the cache is refused; and torch.hub's legacy format (a zip holding
one file) is read from the archive, never extracted into the cache, and only when that file's name is
a plain file name (no path parts). A scheme
another package registered is wrapped so that every ``torch.load`` it makes is forced to
``weights_only=True``.
"""
import difflib
import functools
import hashlib
import inspect
import io
import logging
import os
import os.path as osp
import pickle
import re
import sys
import threading
import zipfile
import zlib
from typing import Any, BinaryIO, Callable, Dict, List, Optional, Tuple, Union
from urllib.parse import urlparse

import numpy as np
import torch

__all__ = ['CheckpointError', 'UnsafeCheckpointError', 'CorruptCheckpointError', 'register_safe_checkpoint_globals',
           'safe_checkpoint_globals', 'load_checkpoint_file', 'checkpoint_problem', 'install_checkpoint_loaders',
           'checkpoint_scheme_loaders', 'SCHEME_PREFIXES', 'find_resume_checkpoint']

class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used; the message names it and says why."""


class UnsafeCheckpointError(CheckpointError, pickle.UnpicklingError):
    """The checkpoint holds objects outside the allow-list: unpickling it could run code."""


class CorruptCheckpointError(CheckpointError):
    """The checkpoint file is truncated, corrupt or not a PyTorch checkpoint."""


# --------------------------------------------------------------------------- numpy content
#: dtype kinds a checkpoint may carry: bool, signed and unsigned integers, floats, complex numbers
_NUMPY_KINDS = 'biufc'
_NUMPY_DESCR = re.compile(r'^[biufc]\d{1,2}$')
#: the most dimensions an array in a checkpoint may have (numpy 1.x's limit)
_NUMPY_MAX_DIMS = 32
#: the deepest nesting of containers in which numpy content is looked for after unpickling
_MAX_NESTING = 256
_numpy_loads = threading.local()


def _numpy_refusal(what: str) -> pickle.UnpicklingError:
    return pickle.UnpicklingError(what)


def _pending(placeholder: Any) -> None:
    """Note a placeholder created by the load running in this thread (see :func:`_resolve_numpy`)."""
    pending = getattr(_numpy_loads, 'pending', None)
    if pending is not None:
        pending.append(placeholder)


class _CheckpointDtype:
    """What the name ``numpy.dtype`` unpickles to: a plain numeric dtype rebuilt from its descriptor
    string (``'f8'``, ``'i4'``, ``'b1'``, ...) and byte order only.

    numpy pickles a dtype as ``numpy.dtype(descr, align, copy)`` followed by ``__setstate__(state)``,
    and its ``__setstate__`` takes the flags, fields and offsets as stated, which lets a pickle forge a
    dtype that treats raw bytes as object pointers. This stand-in accepts the state of a plain numeric
    dtype only, ``(3, byte order, None, None, None, -1, -1, 0)``, and numpy never sees it. The real dtype
    (``.dtype``) is what ends up in the loaded checkpoint.
    """

    __slots__ = ('dtype', '_built', '__weakref__')

    def __new__(cls, descr: Any = None, align: Any = False, copy: Any = True) -> '_CheckpointDtype':
        if not isinstance(descr, str) or not _NUMPY_DESCR.match(descr):
            raise _numpy_refusal(f'numpy dtype {descr!r} is not a plain numeric dtype (expected a descriptor string '
                                 "such as 'f8', 'i4', 'u1', 'b1', 'c16'; object, structured, string, void and "
                                 'datetime dtypes are not loaded)')
        if type(align) is not bool or type(copy) is not bool:
            raise _numpy_refusal(f'numpy dtype {descr!r} is pickled with align={align!r}, copy={copy!r} '
                                 '(expected two booleans)')
        try:
            dtype = np.dtype(descr)
        except TypeError as e:
            raise _numpy_refusal(f'numpy dtype {descr!r} is not a dtype numpy knows ({e})') from None
        if (dtype.kind not in _NUMPY_KINDS or dtype.fields is not None or dtype.subdtype is not None
                or dtype.hasobject or f'{dtype.kind}{dtype.itemsize}' != descr):
            raise _numpy_refusal(f'numpy dtype {descr!r} is not a plain numeric dtype')
        self = object.__new__(cls)
        self.dtype = dtype
        self._built = False
        _pending(self)
        return self

    def __setstate__(self, state: Any) -> None:
        if self._built:
            raise _numpy_refusal(f'numpy dtype {self.dtype.str[1:]!r} is given its state twice')
        if (type(state) is not tuple or len(state) != 8 or state[0] != 3 or type(state[0]) is not int
                or state[2:] != (None, None, None, -1, -1, 0) or state[1] not in ('<', '>', '=', '|')):
            raise _numpy_refusal(f'numpy dtype {self.dtype.str[1:]!r} comes with the state {state!r}; a plain numeric '
                                 "dtype's state is (3, byte order, None, None, None, -1, -1, 0): flags, fields, "
                                 'offsets and sizes other than its own are not loaded')
        order = state[1]
        if self.dtype.itemsize > 1:
            if order == '|':
                raise _numpy_refusal(f'numpy dtype {self.dtype.str[1:]!r} has {self.dtype.itemsize} bytes but no byte '
                                     "order ('|')")
            self.dtype = self.dtype.newbyteorder(order)
        self._built = True


class _CheckpointArray:
    """What the name ``numpy.ndarray`` unpickles to: a placeholder whose ``__setstate__`` rebuilds the
    array from a validated shape, a :class:`_CheckpointDtype` and raw bytes of exactly
    ``itemsize * size`` bytes (numpy's ``ndarray.__setstate__`` never sees the pickled state). After
    unpickling, :func:`_resolve_numpy` puts the array (``.array``) where the placeholder is."""

    __slots__ = ('array', '__weakref__')

    def __new__(cls, *args: Any) -> '_CheckpointArray':
        if args:
            raise _numpy_refusal('numpy.ndarray is called directly; arrays are loaded through '
                                 'numpy.core.multiarray._reconstruct only')
        self = object.__new__(cls)
        self.array = None
        _pending(self)
        return self

    def __setstate__(self, state: Any) -> None:
        if self.array is not None:
            raise _numpy_refusal('a numpy array is given its state twice')
        if type(state) is not tuple or len(state) != 5 or type(state[0]) is not int or state[0] != 1:
            raise _numpy_refusal('a numpy array state is not (1, shape, dtype, fortran order, bytes)')
        _, shape, dtype, fortran, data = state
        if (type(shape) is not tuple or len(shape) > _NUMPY_MAX_DIMS
                or not all(type(n) is int and n >= 0 for n in shape)):
            raise _numpy_refusal(f'numpy array shape {shape!r} is not a tuple of at most {_NUMPY_MAX_DIMS} '
                                 'non-negative integers')
        if type(dtype) is not _CheckpointDtype:
            raise _numpy_refusal(f'a numpy array of shape {shape} has the dtype {type(dtype).__name__}, not a plain '
                                 'numeric numpy dtype')
        if type(fortran) is not bool:
            raise _numpy_refusal(f'a numpy array of shape {shape} has the memory order flag {fortran!r} '
                                 '(expected a bool)')
        if type(data) is not bytes:
            raise _numpy_refusal(f'a numpy array of shape {shape} holds {type(data).__name__} instead of raw bytes '
                                 '(arrays of Python objects are not loaded)')
        dt = dtype.dtype
        size, bound = 1, 1
        for n in shape:
            size *= n
            bound *= max(n, 1)
        if bound * dt.itemsize > sys.maxsize:
            raise _numpy_refusal(f'numpy array shape {shape} of {dt} is too large to address')
        if size * dt.itemsize != len(data):
            raise _numpy_refusal(f'a numpy array of shape {shape} and dtype {dt} needs {size * dt.itemsize} bytes '
                                 f'(itemsize {dt.itemsize} x {size} elements) but holds {len(data)}')
        order = 'F' if fortran else 'C'
        self.array = np.frombuffer(data, dtype=dt).reshape(shape, order=order).copy(order=order)


def _reconstruct_array(cls: Any, shape: Any, typecode: Any) -> _CheckpointArray:
    """What ``numpy.core.multiarray._reconstruct`` unpickles to: an empty :class:`_CheckpointArray`; only a
    plain ``numpy.ndarray`` (not a subclass) in numpy's own form ``(ndarray, (0,), b'b')``."""
    if cls is not _CheckpointArray or shape != (0,) or typecode != b'b':
        raise _numpy_refusal(f'_reconstruct({getattr(cls, "__name__", cls)!r}, {shape!r}, {typecode!r}): only '
                             "plain numpy arrays, reconstructed as numpy pickles them ((ndarray, (0,), b'b')), load")
    return _CheckpointArray()


def _rebuild_scalar(dtype: Any, data: Any = None) -> np.generic:
    """What ``numpy.core.multiarray.scalar`` unpickles to: a numpy scalar built from a plain numeric
    :class:`_CheckpointDtype` and exactly ``itemsize`` bytes."""
    if type(dtype) is not _CheckpointDtype:
        raise _numpy_refusal(f'a numpy scalar has the dtype {type(dtype).__name__}, not a plain numeric numpy dtype')
    dt = dtype.dtype
    if type(data) is not bytes or len(data) != dt.itemsize:
        got = f'{len(data)} bytes' if type(data) is bytes else type(data).__name__
        raise _numpy_refusal(f'a numpy {dt} scalar needs exactly {dt.itemsize} bytes, got {got}')
    return np.frombuffer(data, dtype=dt)[0]


def _empty_bytes(*args: Any) -> bytes:
    """What ``builtins.bytes`` unpickles to: ``b''``, as pickle protocol 2 writes the empty bytes of an
    empty array (``bytes()``); a size or any other argument is refused."""
    if args:
        raise _numpy_refusal(f'bytes{args!r}: only bytes() (the empty bytes of an empty array) is loaded')
    return b''


def _numpy_entries() -> List[Tuple[Any, str]]:
    """The names numpy pickles use (numpy 1.x: ``numpy.core``, numpy 2: ``numpy._core``), each mapped to
    the stand-in above."""
    entries = [(_CheckpointDtype, 'numpy.dtype'), (_CheckpointArray, 'numpy.ndarray')]
    for module in ('numpy.core.multiarray', 'numpy._core.multiarray'):
        entries += [(_reconstruct_array, f'{module}._reconstruct'), (_rebuild_scalar, f'{module}.scalar')]
    return entries + [(_empty_bytes, 'builtins.bytes')]


def _resolve_numpy(obj: Any) -> Any:
    """Replace the placeholders of one unpickled object graph by the dtypes and arrays they rebuilt.

    Containers are updated in place (dict, list, set and the attributes of objects), tuples are rebuilt;
    shared and cyclic references are kept.
    """
    memo: Dict[int, Any] = {}

    def resolve(x: Any, depth: int) -> Any:
        t = type(x)
        if t is _CheckpointArray:
            if x.array is None:
                raise _numpy_refusal('an array is created but never given its state')
            return x.array
        if t is _CheckpointDtype:
            return x.dtype
        if x is None or t in (bool, int, float, complex, str, bytes) or isinstance(x, (np.generic, np.ndarray, type)):
            return x
        key = id(x)
        if key in memo:
            return memo[key]
        if depth > _MAX_NESTING:
            raise _numpy_refusal(f'containers are nested more than {_MAX_NESTING} deep')
        memo[key] = x
        if t is tuple:
            items = tuple(resolve(v, depth + 1) for v in x)
            if any(a is not b for a, b in zip(items, x)):
                memo[key] = items
            return memo[key]
        if isinstance(x, list):
            for i, v in enumerate(x):
                x[i] = resolve(v, depth + 1)
        elif isinstance(x, dict):
            pairs = [(resolve(k, depth + 1), resolve(v, depth + 1)) for k, v in x.items()]
            if any(k is not k0 for (k, _), k0 in zip(pairs, x)):
                x.clear()
            x.update(pairs)
        elif isinstance(x, set):
            items = [resolve(v, depth + 1) for v in x]
            x.clear()
            x.update(items)
        if not isinstance(x, (tuple, list, dict, set)) and not inspect.isroutine(x):
            attrs = getattr(x, '__dict__', None)
            if type(attrs) is dict and attrs:
                resolve(attrs, depth + 1)
        return x

    return resolve(obj, 0)


def _install_numpy_resolution() -> None:
    """Make every weights-only unpickling put real dtypes and arrays where the placeholders are.

    Wraps ``torch._weights_only_unpickler.Unpickler.load`` (what ``torch.load(weights_only=True)``
    runs for each pickle), so that code which calls ``torch.load`` itself after
    :func:`register_safe_checkpoint_globals` gets numpy objects too. Idempotent.
    """
    from torch import _weights_only_unpickler as unpickler
    load = unpickler.Unpickler.load
    if getattr(load, '_dcn_plugin_numpy', False):
        return

    @functools.wraps(load)
    def load_with_numpy(self):
        outer = getattr(_numpy_loads, 'pending', None)
        _numpy_loads.pending = pending = []
        try:
            result = load(self)
            return _resolve_numpy(result) if pending else result
        finally:
            _numpy_loads.pending = outer

    load_with_numpy._dcn_plugin_numpy = True  # type: ignore[attr-defined]
    unpickler.Unpickler.load = load_with_numpy


def _is_numpy_entry(entry: Any) -> bool:
    """Whether an ``add_safe_globals`` entry admits a numpy object (under any name) or a numpy name."""
    obj, name = entry if isinstance(entry, tuple) and len(entry) == 2 else (entry, None)
    if name is None:
        name = f'{getattr(obj, "__module__", "")}.{getattr(obj, "__qualname__", "")}'
    module = getattr(obj, '__module__', None) or ''
    return (str(name).startswith('numpy.') or module == 'numpy' or module.startswith('numpy.')
            or (isinstance(obj, type) and issubclass(obj, (np.ndarray, np.dtype, np.generic))))


# --------------------------------------------------------------------------- the allow-list
def _restricted_getattr(obj: Any, name: str) -> Any:
    """``getattr`` as a checkpoint may use it: only ``HistoryBuffer``'s public methods."""
    from mmengine.logging import HistoryBuffer
    if (obj is HistoryBuffer and isinstance(name, str) and not name.startswith('_')
            and inspect.isfunction(inspect.getattr_static(HistoryBuffer, name, None))):
        return getattr(obj, name)
    raise pickle.UnpicklingError(
        f'refusing getattr({getattr(obj, "__name__", type(obj).__name__)}, {name!r}) in a checkpoint: only '
        'public methods of mmengine.logging.HistoryBuffer may be looked up while loading')


def safe_checkpoint_globals() -> List[Any]:
    """The globals that :func:`register_safe_checkpoint_globals` adds (entries for ``add_safe_globals``)."""
    items: List[Any] = list(_numpy_entries())
    try:
        from mmengine.logging import HistoryBuffer
    except ImportError:  # the op package alone: plain state dicts only
        return items
    items.append(HistoryBuffer)
    items.append((_restricted_getattr, 'builtins.getattr'))
    return items


_REGISTER_LOCK = threading.Lock()


def register_safe_checkpoint_globals() -> None:
    """Allow-list the types mmengine / mmdet checkpoints carry for ``weights_only`` loading.

    Adds :func:`safe_checkpoint_globals`, makes weights-only unpickling resolve the numpy stand-ins
    (:func:`_install_numpy_resolution`) and takes out any other entry that admits numpy objects or names
    (another package's ``add_safe_globals([np.dtype, ...])`` would let numpy restore pickled dtype
    state), with a warning. :func:`load_checkpoint_file` calls it before every load; it is public for code
    that calls ``torch.load(..., weights_only=True)`` itself.
    """
    ours = safe_checkpoint_globals()
    with _REGISTER_LOCK:
        current = torch.serialization.get_safe_globals()
        foreign = [g for g in current if _is_numpy_entry(g) and g not in ours]
        if foreign:
            kept = [g for g in current if g not in foreign]
            torch.serialization.clear_safe_globals()
            torch.serialization.add_safe_globals(kept)
            logging.getLogger(__name__).warning(
                'dcn_plugin: removed numpy entries from torch.serialization\'s safe globals (%s): numpy would '
                'restore pickled dtype and array state unchecked; checkpoints load numpy content through '
                'dcn_plugin.utils.checkpoint\'s validated rebuilders instead', ', '.join(map(repr, foreign)))
        missing = [g for g in ours if g not in current]
        if missing:
            torch.serialization.add_safe_globals(missing)
        _install_numpy_resolution()


# --------------------------------------------------------------------------- integrity
def _stream_problem(f: BinaryIO) -> Optional[str]:
    """What is wrong with the checkpoint bytes in ``f`` (seekable), or None if they look sound."""
    head = f.read(4)
    f.seek(0)
    if not head:
        return 'is empty (0 bytes)'
    if head[:2] == b'PK':  # torch.save's zip format: check the directory and every record's CRC
        try:
            with zipfile.ZipFile(f) as z:
                names = z.namelist()
                bad = z.testzip()
        except (zipfile.BadZipFile, EOFError, OSError, ValueError, zlib.error) as e:
            return f'is truncated or corrupt (its zip directory cannot be read: {e})'
        finally:
            f.seek(0)
        if bad is not None:
            return f'is corrupt (record {bad!r} fails its CRC check)'
        if not any(n == 'data.pkl' or n.endswith('/data.pkl') for n in names):
            return 'is a zip archive but not a PyTorch checkpoint (it has no data.pkl record)'
        return None
    if head[:1] == b'\x80':  # a legacy (pre-1.6) torch.save pickle: checked while loading
        return None
    return 'is not a PyTorch checkpoint (neither torch.save\'s zip format nor a legacy pickle)'


def checkpoint_problem(path: Union[str, os.PathLike]) -> Optional[str]:
    """Check a checkpoint file without unpickling it.

    Zip-format files (everything ``torch.save`` writes since torch 1.6) are checked completely: the
    zip directory, which a truncated file lacks, and the CRC of every record. Legacy pickles are only
    recognised (their truncation shows when they are loaded).

    Args:
        path: the file.

    Returns:
        None when the file looks intact, else what is wrong, as a phrase that follows the file name
        (``'is truncated or corrupt (...)'``, ``'does not exist'``, ...).
    """
    path = os.fspath(path)
    if not osp.exists(path):
        return 'does not exist'
    if osp.isdir(path):
        return 'is a directory, not a checkpoint file'
    if not osp.isfile(path):  # a FIFO or device would block or never end
        return 'is not a regular file'
    try:
        with open(path, 'rb') as f:
            return _stream_problem(f)
    except OSError as e:
        return f'cannot be read ({e})'


# --------------------------------------------------------------------------- the restricted loader
def _unsafe_detail(error: BaseException) -> str:
    """The reason the weights-only unpickler gave, without torch's advice around it: the original error,
    which torch re-raises ``from None`` (so it is the new error's ``__context__``), else what follows
    'WeightsUnpickler error:' in its message."""
    original = error.__context__
    if isinstance(original, pickle.UnpicklingError) and str(original).strip():
        text = str(original)
    else:
        text = str(error).split('Check the documentation of torch.load')[0]
        text = text.rsplit('WeightsUnpickler error:', 1)[-1]
    text = text.split(' Please use `torch.serialization.add_safe_globals')[0]
    text = ' '.join(line.strip() for line in text.splitlines() if line.strip()).rstrip('.')
    return text or 'an object outside the allow-list'


def load_checkpoint_file(source: Union[str, os.PathLike, BinaryIO, bytes], map_location: Any = None,
                         name: Optional[str] = None) -> Any:
    """Unpickle a checkpoint with ``torch.load(weights_only=True)`` and the allow-list above.

    Args:
        source: a local file path, a seekable binary file object or the checkpoint's bytes.
        map_location: as for :func:`torch.load`.
        name: how to name the checkpoint in messages (default: the path, or ``'<in memory>'``).

    Returns:
        What the checkpoint holds (usually a dict with ``state_dict``, or a state dict).

    Raises:
        FileNotFoundError: ``source`` is a path that does not exist.
        UnsafeCheckpointError: the checkpoint holds objects outside the allow-list.
        CorruptCheckpointError: the file is truncated, corrupt or not a PyTorch checkpoint.
    """
    register_safe_checkpoint_globals()
    if isinstance(source, bytes):
        source = io.BytesIO(source)
    if isinstance(source, (str, os.PathLike)):
        path = osp.expanduser(os.fspath(source))
        name = name or path
        if not osp.isfile(path):
            raise FileNotFoundError(f'checkpoint {name} does not exist' if not osp.exists(path) else
                                    f'checkpoint {name} is not a file')
        problem = checkpoint_problem(path)
        target: Any = path
    else:
        name = name or '<in memory>'
        problem = _stream_problem(source)
        target = source
    if problem is not None:
        raise CorruptCheckpointError(f'checkpoint {name} {problem}')
    try:
        return torch.load(target, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        text = str(e)
        if 'Weights only load failed' in text or 'refusing' in text:
            raise UnsafeCheckpointError(
                f'refusing to load checkpoint {name}: {_unsafe_detail(e)}. A checkpoint may hold tensors, plain '
                'containers, plain numeric numpy arrays and scalars and mmengine HistoryBuffer objects only; '
                'unpickling anything else could run code or corrupt memory') from e
        raise CorruptCheckpointError(f'checkpoint {name} is truncated or corrupt ({e})') from e
    except EOFError as e:
        raise CorruptCheckpointError(f'checkpoint {name} is truncated (unexpected end of file)') from e
    except RuntimeError as e:
        if re.search(r'EOF|corrupt|zip archive|invalid header|magic number', str(e), re.I):
            raise CorruptCheckpointError(f'checkpoint {name} is truncated or corrupt ({str(e).splitlines()[0]})') from e
        raise


# --------------------------------------------------------------------------- the scheme loaders
#: the fewest hex digits of a file name's ``-<sha256 prefix>.`` that count as a hash (torch.hub's convention:
#: "the first eight or more digits of the SHA256 hash")
_MIN_HASH_DIGITS = 8


def _name_hash(filename: str) -> Optional[str]:
    """The sha256 prefix a cache file name carries (``name-<prefix>.ext``, torch.hub's ``HASH_REGEX``), or None."""
    from torch.hub import HASH_REGEX
    match = HASH_REGEX.search(filename)
    return match.group(1) if match and len(match.group(1)) >= _MIN_HASH_DIGITS else None


def _check_name_hash(path: str, url: str) -> None:
    """Refuse a cached file whose sha256 does not start with the prefix its name carries."""
    prefix = _name_hash(osp.basename(path))
    if prefix is None:
        return
    digest = hashlib.sha256()
    with open(path, 'rb') as f:
        for block in iter(functools.partial(f.read, 1 << 20), b''):
            digest.update(block)
    if not digest.hexdigest().startswith(prefix):
        raise CorruptCheckpointError(
            f'checkpoint {path} (cached download of {url}) is not the file its name names: its sha256 is '
            f'{digest.hexdigest()}, the name says {prefix}... (it was replaced or damaged in the cache; delete it to '
            'download it again)')


def _plain_file_name(name: str) -> bool:
    return bool(name) and name not in ('.', '..') and not re.search(r'[/\\\x00:]', name)


def _hub_file(url: str, model_dir: Optional[str] = None, check_hash: bool = False,
              progress: bool = True) -> str:
    """The torch hub cache file of ``url`` (``<hub dir>/checkpoints/<file name>``), downloaded if missing as
    ``torch.hub.load_state_dict_from_url`` does; a file name that carries a sha256 prefix
    (``name-<8 or more hex digits>.ext``) is checked against the file on every use, not only on download.
    ``check_hash`` requires the name to carry one."""
    from torch.hub import download_url_to_file, get_dir
    if model_dir is None:
        model_dir = osp.join(get_dir(), 'checkpoints')
    filename = osp.basename(urlparse(url).path)
    if not _plain_file_name(filename):
        raise ValueError(f'cannot name the cache file of checkpoint URL {url!r}: its path does not end in a file name')
    hash_prefix = _name_hash(filename)
    if check_hash and hash_prefix is None:
        raise ValueError(f'checkpoint URL {url!r} must name its file name-<sha256 prefix>.ext (at least '
                         f'{_MIN_HASH_DIGITS} hex digits) so that the download can be checked')
    os.makedirs(model_dir, exist_ok=True)
    cached = osp.join(model_dir, filename)
    if not osp.exists(cached):
        sys.stderr.write(f'Downloading: "{url}" to {cached}\n')
        download_url_to_file(url, cached, hash_prefix, progress=progress)
    _check_name_hash(cached, url)
    return cached


def _load_url(url: str, map_location: Any = None, model_dir: Optional[str] = None, progress: bool = True,
              check_hash: bool = False) -> Any:
    cached = _hub_file(url, model_dir, check_hash=check_hash, progress=progress)
    name = f'{cached} (cached download of {url})'
    if zipfile.is_zipfile(cached):
        with zipfile.ZipFile(cached) as z:
            members = z.infolist()
            # torch.hub's legacy format: one file (a pre-1.6 torch.save) zipped by hand; it is read from the
            # archive, never written into the cache under a name the archive chose
            if len(members) == 1 and not members[0].is_dir():
                member = members[0].filename
                if not _plain_file_name(member):
                    raise CorruptCheckpointError(
                        f'checkpoint {name} is a zipped legacy checkpoint whose member {member!r} is not a plain '
                        'file name (a path or an empty name): refusing it')
                return load_checkpoint_file(z.read(members[0]), map_location, name=f'{member} (in {name})')
    return load_checkpoint_file(cached, map_location, name=name)


def load_from_local(filename: str, map_location: Any = None) -> Any:
    """A local file (any path without a registered scheme)."""
    return load_checkpoint_file(filename, map_location)


def load_from_http(filename: str, map_location: Any = None, model_dir: Optional[str] = None,
                   progress: bool = os.isatty(0), check_hash: bool = False) -> Any:
    """``http://`` / ``https://``: downloaded into the torch hub cache (local rank 0 first in
    distributed runs, as mmengine does), then loaded from there."""
    from mmengine.dist import get_dist_info
    rank, world_size = get_dist_info()
    checkpoint = None
    if rank == 0:
        checkpoint = _load_url(filename, map_location, model_dir, progress, check_hash)
    if world_size > 1:
        torch.distributed.barrier()
        if rank > 0:
            checkpoint = _load_url(filename, map_location, model_dir, progress, check_hash)
    return checkpoint


def load_from_pavi(filename: str, map_location: Any = None) -> Any:
    """``pavi://``: downloaded from the pavi model cloud into a temporary folder."""
    from tempfile import TemporaryDirectory
    if not filename.startswith('pavi://'):
        raise ValueError(f'expected a checkpoint path starting with pavi://, got {filename!r}')
    try:
        from pavi import modelcloud
    except ImportError:
        raise ImportError('Please install pavi to load checkpoint from modelcloud.')
    model = modelcloud.get(filename[len('pavi://'):])
    with TemporaryDirectory() as tmp_dir:
        downloaded = osp.join(tmp_dir, model.name)
        model.download(downloaded)
        return load_checkpoint_file(downloaded, map_location, name=f'{filename} (downloaded to {downloaded})')


def load_from_ceph(filename: str, map_location: Any = None, backend: str = 'petrel') -> Any:
    """``s3://`` / ``petrel://`` (optionally ``cluster:``-prefixed): read through mmengine's file
    backend."""
    from mmengine.fileio import get_file_backend
    file_backend = get_file_backend(filename, backend_args={'backend': backend})
    return load_checkpoint_file(io.BytesIO(file_backend.get(filename)), map_location, name=filename)


def _model_url(table: Dict[str, str], name: str, path: str) -> str:
    if name not in table:
        near = difflib.get_close_matches(name, list(table), n=6, cutoff=0.6)
        raise KeyError(f'unknown model name {name!r} in checkpoint path {path!r}'
                       + (f'; similar names: {", ".join(near)}' if near else ''))
    return table[name]


def load_from_torchvision(filename: str, map_location: Any = None) -> Any:
    """``torchvision://NAME`` (``modelzoo://NAME``, deprecated): torchvision's ImageNet weights, from
    mmengine's table of their URLs; the file's sha256 prefix (in its name) is checked on every use."""
    from mmengine.logging import print_log
    from mmengine.runner.checkpoint import get_torchvision_models
    if filename.startswith('modelzoo://'):
        print_log('The URL scheme of "modelzoo://" is deprecated, please use "torchvision://" instead',
                  logger='current', level=logging.WARNING)
        name = filename[len('modelzoo://'):]
    else:
        name = filename[len('torchvision://'):]
    url = _model_url(get_torchvision_models(), name, filename)
    return load_from_http(url, map_location=map_location, check_hash=True)


def load_from_openmmlab(filename: str, map_location: Any = None) -> Any:
    """``open-mmlab://NAME`` / ``openmmlab://NAME``: OpenMMLab's model table (mmengine's, extended by
    ``$MMENGINE_HOME/open_mmlab.json``): a URL, or a file under ``$MMENGINE_HOME``."""
    from mmengine.logging import print_log
    from mmengine.runner.checkpoint import _get_mmengine_home, get_deprecated_model_names, get_external_models
    prefix = 'open-mmlab://' if filename.startswith('open-mmlab://') else 'openmmlab://'
    name = filename[len(prefix):]
    deprecated = get_deprecated_model_names()
    if name in deprecated:
        print_log(f'{prefix}{name} is deprecated in favor of {prefix}{deprecated[name]}', logger='current',
                  level=logging.WARNING)
        name = deprecated[name]
    url = _model_url(get_external_models(), name, filename)
    if url.startswith(('http://', 'https://')):
        return load_from_http(url, map_location=map_location)
    return load_checkpoint_file(osp.join(_get_mmengine_home(), url), map_location)


def load_from_mmcls(filename: str, map_location: Any = None) -> Any:
    """``mmcls://NAME``: an mmcls classifier; its ``backbone.*`` weights, renamed as mmengine does."""
    from mmengine.runner.checkpoint import _process_mmcls_checkpoint, get_mmcls_models
    url = _model_url(get_mmcls_models(), filename[len('mmcls://'):], filename)
    return _process_mmcls_checkpoint(load_from_http(url, map_location=map_location))


#: every prefix mmengine 0.10's CheckpointLoader registers, with the loader that replaces it
SCHEME_PREFIXES: Tuple[Tuple[str, Callable[..., Any]], ...] = (
    ('', load_from_local),
    ('http://', load_from_http),
    ('https://', load_from_http),
    ('pavi://', load_from_pavi),
    (r'(\S+\:)?s3://', load_from_ceph),
    (r'(\S+\:)?petrel://', load_from_ceph),
    ('modelzoo://', load_from_torchvision),
    ('torchvision://', load_from_torchvision),
    ('open-mmlab://', load_from_openmmlab),
    ('openmmlab://', load_from_openmmlab),
    ('mmcls://', load_from_mmcls),
)
_OURS = frozenset(loader for _, loader in SCHEME_PREFIXES)
_FORCE_LOCK = threading.RLock()


def _forcing_weights_only(loader: Callable[..., Any]) -> Callable[..., Any]:
    """Wrap another package's scheme loader: every ``torch.load`` it makes runs with
    ``weights_only=True`` (torch's ``TORCH_FORCE_WEIGHTS_ONLY_LOAD``) and the allow-list."""
    @functools.wraps(loader)
    def guarded(*args, **kwargs):
        register_safe_checkpoint_globals()
        with _FORCE_LOCK:
            old = os.environ.get('TORCH_FORCE_WEIGHTS_ONLY_LOAD')
            os.environ['TORCH_FORCE_WEIGHTS_ONLY_LOAD'] = '1'
            try:
                return loader(*args, **kwargs)
            finally:
                if old is None:
                    os.environ.pop('TORCH_FORCE_WEIGHTS_ONLY_LOAD', None)
                else:
                    os.environ['TORCH_FORCE_WEIGHTS_ONLY_LOAD'] = old
    guarded._dcn_plugin_guarded = True  # type: ignore[attr-defined]
    return guarded


def install_checkpoint_loaders() -> None:
    """Make every checkpoint scheme of mmengine's ``CheckpointLoader`` load through
    :func:`load_checkpoint_file`.

    Registers this module's loader for each of :data:`SCHEME_PREFIXES` and wraps loaders other
    packages registered (:func:`_forcing_weights_only`). Idempotent; :mod:`dcn_plugin` calls it on
    import and the tools again before they build a runner (which covers schemes registered by
    packages imported in between).
    """
    from mmengine.runner.checkpoint import CheckpointLoader
    for prefix, loader in SCHEME_PREFIXES:
        if CheckpointLoader._schemes.get(prefix) is not loader:
            CheckpointLoader.register_scheme(prefix, loader, force=True)
    for prefix, loader in list(CheckpointLoader._schemes.items()):
        if loader not in _OURS and not getattr(loader, '_dcn_plugin_guarded', False):
            CheckpointLoader.register_scheme(prefix, _forcing_weights_only(loader), force=True)


def checkpoint_scheme_loaders() -> Dict[str, Callable[..., Any]]:
    """``{prefix: loader}`` as mmengine's ``CheckpointLoader`` will use them now."""
    from mmengine.runner.checkpoint import CheckpointLoader
    return dict(CheckpointLoader._schemes)


# --------------------------------------------------------------------------- resuming
_STEP_FILE = re.compile(r'^(epoch|iter)_(\d+)\.pth$')


def find_resume_checkpoint(work_dir: str) -> Tuple[Optional[str], List[Tuple[str, str]]]:
    """The newest intact checkpoint to resume a run from, as ``--resume`` without a path wants it.

    The candidate ``last_checkpoint`` names comes first (mmengine's choice); when it is missing,
    truncated or corrupt (:func:`checkpoint_problem`), the ``epoch_N.pth`` / ``iter_N.pth`` files of
    its folder and of ``work_dir`` follow, newest step first. A path with a URL scheme in
    ``last_checkpoint`` is returned unchecked (its loader checks it).

    Args:
        work_dir: the run's work dir.

    Returns:
        ``(path or None, [(skipped path, what is wrong), ...])``.
    """
    last_file = osp.join(work_dir, 'last_checkpoint')
    last = None
    if osp.isfile(last_file):
        with open(last_file) as f:
            last = f.read().strip() or None
    if last is not None and '://' in last:
        return last, []
    kind = None
    candidates: List[str] = []
    folders = [work_dir]
    if last is not None:
        candidates.append(last)
        match = _STEP_FILE.match(osp.basename(last))
        kind = match.group(1) if match else None
        folders.insert(0, osp.dirname(last) or '.')
    numbered = []
    for folder in dict.fromkeys(osp.abspath(f) for f in folders):
        if not osp.isdir(folder):
            continue
        for name in os.listdir(folder):
            match = _STEP_FILE.match(name)
            if match and (kind is None or match.group(1) == kind):
                numbered.append((int(match.group(2)), osp.join(folder, name)))
    candidates += [p for _, p in sorted(numbered, reverse=True)]
    skipped: List[Tuple[str, str]] = []
    seen = set()
    for path in candidates:
        if osp.abspath(path) in seen:
            continue
        seen.add(osp.abspath(path))
        problem = checkpoint_problem(path)
        if problem is None:
            return path, skipped
        skipped.append((path, problem))
    return None, skipped
