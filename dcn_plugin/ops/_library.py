"""Loads the compiled operator library ``dcn_plugin._C`` and checks that it matches this source."""
import os
import warnings
from pathlib import Path

import torch

# Bumped whenever an operator schema or the kernels' calling convention changes; the C++ side
# returns the same number from torch.ops.dcn_plugin._abi_version().
ABI_VERSION = 1

_BUILD_HINT = ('Build it from the repository root with `bash tools/setup_env.sh` (creates .venv), or '
               'in your own environment with `pip install --no-build-isolation -e .` '
               '(add FORCE_CUDA=1 TORCH_CUDA_ARCH_LIST=... for the CUDA kernels).')


def _sources_newer_than(lib: Path) -> bool:
    csrc = Path(__file__).parent / 'csrc'
    if not csrc.is_dir():
        return False
    built = lib.stat().st_mtime
    return any(p.stat().st_mtime > built for p in csrc.rglob('*') if p.is_file())


def load() -> None:
    """Load ``dcn_plugin._C`` (registers ``torch.ops.dcn_plugin.*``) or raise a helpful error."""
    try:
        from dcn_plugin import _C  # noqa: F401  (the library registers its ops through TORCH_LIBRARY)
    except ImportError as e:
        raise ImportError(
            f'dcn_plugin: the compiled operator library dcn_plugin._C is missing or cannot be loaded '
            f'with torch {torch.__version__} ({e}). {_BUILD_HINT}') from e
    abi = torch.ops.dcn_plugin._abi_version()
    if abi != ABI_VERSION:
        raise ImportError(
            f'dcn_plugin: the compiled library dcn_plugin._C is stale (its ABI version is {abi}, this '
            f'source expects {ABI_VERSION}). {_BUILD_HINT}')
    lib = Path(_C.__file__)
    if os.environ.get('DCN_PLUGIN_NO_STALE_CHECK') != '1' and _sources_newer_than(lib):
        warnings.warn(f'dcn_plugin: C++/CUDA sources under dcn_plugin/ops/csrc are newer than the built '
                      f'library {lib.name}; the kernels in use may be stale. {_BUILD_HINT}', stacklevel=3)


def has_cuda_kernels() -> bool:
    """Whether ``dcn_plugin._C`` was built with its CUDA kernels."""
    return bool(torch.ops.dcn_plugin._built_with_cuda())
