"""Which kernels run the convolution on CUDA: the Triton kernels or the C++ CUDA kernels.

The rule, written once (:func:`choose_cuda_backend`):

* float64, and any call under ``torch.use_deterministic_algorithms(True)``, run the C++ CUDA kernels
  (the Triton kernels have no float64 build, and their input gradient adds with atomics, whose order
  varies from run to run; the C++ kernels have a deterministic input gradient);
* otherwise (float16, bfloat16, float32) the Triton kernels run when triton can be imported, unless
  the user chose the C++ kernels.

The user's choice: :func:`set_cuda_backend` (``'auto'``, ``'cuda'``, ``'triton'``; ``None`` returns to the
environment's choice), else the environment variable ``DCN_PLUGIN_CUDA_BACKEND`` (same values), else
``'auto'``. ``'triton'`` without an importable triton raises instead of falling back silently.
The CPU always runs the C++ CPU kernels.
"""
import importlib.util
import os
from functools import lru_cache
from typing import Optional

import torch

ENV_VAR = 'DCN_PLUGIN_CUDA_BACKEND'
CHOICES = ('auto', 'cuda', 'triton')
TRITON_DTYPES = (torch.float16, torch.bfloat16, torch.float32)

_chosen: Optional[str] = None


def _checked(name: object, where: str) -> str:
    if name not in CHOICES:
        raise ValueError(f'{where} must be one of {", ".join(map(repr, CHOICES))}, got {name!r}')
    return name  # type: ignore[return-value]


def set_cuda_backend(name: Optional[str]) -> None:
    """Choose the CUDA kernels of the convolution for this process: ``'auto'`` (the rule above),
    ``'cuda'`` (the C++ CUDA kernels) or ``'triton'``; ``None`` returns to ``DCN_PLUGIN_CUDA_BACKEND``."""
    global _chosen
    _chosen = None if name is None else _checked(name, 'set_cuda_backend(name)')


def requested_cuda_backend() -> str:
    """The user's choice: :func:`set_cuda_backend`'s, else ``DCN_PLUGIN_CUDA_BACKEND``'s, else ``'auto'``."""
    if _chosen is not None:
        return _chosen
    value = os.environ.get(ENV_VAR, '').strip().lower()
    return _checked(value, f'the environment variable {ENV_VAR}') if value else 'auto'


@lru_cache(maxsize=None)
def triton_available() -> bool:
    """Whether triton can be imported (found, without importing it)."""
    return importlib.util.find_spec('triton') is not None


def choose_cuda_backend(requested: str, dtype: torch.dtype, deterministic: bool, have_triton: bool) -> str:
    """The rule: ``'triton'`` or ``'cuda'`` for a call in ``dtype``; a pure function of its arguments.

    Args:
        requested: the user's choice, one of ``'auto'``, ``'cuda'``, ``'triton'``.
        dtype: the tensors' dtype.
        deterministic: whether ``torch.use_deterministic_algorithms(True)`` is on.
        have_triton: whether triton can be imported.

    Raises:
        RuntimeError: ``'triton'`` was requested and triton cannot be imported.
    """
    _checked(requested, 'requested')
    if requested == 'cuda' or dtype not in TRITON_DTYPES or deterministic:
        return 'cuda'
    if not have_triton:
        if requested == 'triton':
            raise RuntimeError(f'dcn_plugin: the Triton kernels were chosen ({ENV_VAR}=triton or '
                               "set_cuda_backend('triton')) but triton cannot be imported; install triton or "
                               "choose 'cuda' or 'auto'")
        return 'cuda'
    return 'triton'


def cuda_backend_for(dtype: torch.dtype) -> str:
    """The rule applied to this process's state: the user's choice, determinism, triton's presence."""
    return choose_cuda_backend(requested_cuda_backend(), dtype, torch.are_deterministic_algorithms_enabled(),
                               triton_available())
