"""Loads the compiled operator library ``dcn_plugin._C`` and checks that it was built from this source.

The one staleness check of the project: :func:`source_digest` hashes the C++/CUDA sources; ``setup.py``
compiles the same digest into the library (``torch.ops.dcn_plugin._source_digest()``), and :func:`load`
refuses a library whose digest differs from the sources next to it (a stale build would run old
kernels, or kernels whose calling convention no longer matches this Python code).
"""
import hashlib
import os
from pathlib import Path
from typing import Optional

CSRC = Path(__file__).resolve().parent / 'ops' / 'csrc'
_SOURCE_SUFFIXES = ('.cpp', '.cu', '.cuh', '.h')

_BUILD_HINT = ('Build it from the repository root with `bash scripts/setup_env.sh` (creates .venv), or '
               'in your own environment with `pip install --no-build-isolation -e .` '
               '(add FORCE_CUDA=1 TORCH_CUDA_ARCH_LIST=... for the CUDA kernels).')


def source_digest(csrc: Path = CSRC) -> Optional[str]:
    """SHA-256 (16 hex digits) of the operator sources under ``csrc``; ``None`` if they are not there."""
    if not csrc.is_dir():
        return None
    h = hashlib.sha256()
    for path in sorted(p for p in csrc.rglob('*') if p.is_file() and p.suffix in _SOURCE_SUFFIXES):
        h.update(path.relative_to(csrc).as_posix().encode() + b'\0')
        h.update(path.read_bytes())
        h.update(b'\0')
    return h.hexdigest()[:16]


def load() -> None:
    """Load ``dcn_plugin._C`` (registers ``torch.ops.dcn_plugin.*``) or raise a helpful ImportError."""
    import torch
    try:
        from dcn_plugin import _C  # noqa: F401  (the library registers its ops through TORCH_LIBRARY)
    except ImportError as e:
        raise ImportError(
            f'dcn_plugin: the compiled operator library dcn_plugin._C is missing or cannot be loaded '
            f'with torch {torch.__version__} ({e}). {_BUILD_HINT}') from e
    built = torch.ops.dcn_plugin._source_digest()
    current = source_digest()
    if current is not None and built != current and os.environ.get('DCN_PLUGIN_ALLOW_STALE') != '1':
        raise ImportError(
            f'dcn_plugin: the compiled library {Path(_C.__file__).name} was built from other sources than '
            f'the ones in {CSRC} (digest {built} != {current}): it is stale. {_BUILD_HINT}')


def has_cuda_kernels() -> bool:
    """Whether ``dcn_plugin._C`` was built with its CUDA kernels."""
    import torch
    return bool(torch.ops.dcn_plugin._built_with_cuda())
