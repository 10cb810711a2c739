"""Atomic file writes: a reader (or a run resumed after a crash) sees the old file or the complete
new one, never a partial one.

:func:`atomic_write` writes to a temporary file in the target's folder (so the rename cannot cross
file systems), flushes and ``fsync``\\ s it, renames it over the target (``os.replace``, atomic on
POSIX and Windows) and ``fsync``\\ s the folder so the rename itself survives a power cut. A process
killed on the way leaves at most a hidden temporary (``.NAME.<random>.partial``), which
:func:`remove_partial_files` deletes.

:class:`AtomicLocalBackend` is mmengine's local file backend with ``put`` / ``put_text`` made atomic;
importing this module registers it as the ``'atomic_local'`` file backend, which
:class:`dcn_plugin.engine.hooks.AtomicCheckpointHook` writes checkpoints through.
"""
import os
import os.path as osp
import re
import tempfile
from pathlib import Path
from typing import List, Union

from mmengine.fileio import LocalBackend, register_backend

__all__ = ['atomic_write', 'remove_partial_files', 'AtomicLocalBackend', 'PARTIAL_SUFFIX']

#: suffix of the temporary files :func:`atomic_write` renames into place
PARTIAL_SUFFIX = '.partial'


def _fsync_dir(folder: str) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # pragma: no cover - e.g. Windows, where folders cannot be opened
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover - file systems without directory fsync
        pass
    finally:
        os.close(fd)


def atomic_write(path: Union[str, Path], data: Union[bytes, str], encoding: str = 'utf-8') -> None:
    """Replace ``path`` with ``data`` atomically and durably.

    Args:
        path: the file to (re)write; its folder is created if needed.
        data: the new contents (``str`` is encoded with ``encoding``).
        encoding: for ``str`` data.
    """
    path = os.fspath(path)
    folder = osp.dirname(osp.abspath(path))
    os.makedirs(folder, exist_ok=True)
    payload = data.encode(encoding) if isinstance(data, str) else data
    fd, tmp = tempfile.mkstemp(prefix=f'.{osp.basename(path)}.', suffix=PARTIAL_SUFFIX, dir=folder)
    try:
        with os.fdopen(fd, 'wb') as f:
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; a plain open() would give 0666 & ~umask
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    _fsync_dir(folder)


def remove_partial_files(folder: Union[str, Path]) -> List[str]:
    """Delete the temporaries an interrupted :func:`atomic_write` left in ``folder``; returns their paths."""
    folder = os.fspath(folder)
    if not osp.isdir(folder):
        return []
    pattern = re.compile(r'^\..+\.[^.]+' + re.escape(PARTIAL_SUFFIX) + '$')
    removed = []
    for name in os.listdir(folder):
        full = osp.join(folder, name)
        if pattern.match(name) and osp.isfile(full):
            os.unlink(full)
            removed.append(full)
    return removed


class AtomicLocalBackend(LocalBackend):
    """mmengine's local file backend whose writes are atomic (:func:`atomic_write`)."""

    def put(self, obj: bytes, filepath: Union[str, Path]) -> None:
        atomic_write(filepath, obj)

    def put_text(self, obj: str, filepath: Union[str, Path], encoding: str = 'utf-8') -> None:
        atomic_write(filepath, obj, encoding=encoding)


register_backend('atomic_local', AtomicLocalBackend, force=True)
