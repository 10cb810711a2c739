"""Running exported ONNX files in onnxruntime (CPU) and comparing them with the PyTorch model."""
import os
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import nn
from torch.utils import _pytree as pytree

from .onnx_export import _eval_mode, _require

__all__ = ['onnxruntime_session', 'run_onnxruntime', 'OutputDifference', 'compare_with_onnxruntime']

ModelSource = Union[str, os.PathLike, bytes, Any]  # a path, serialised bytes or an onnx.ModelProto


def onnxruntime_session(model: ModelSource, threads: Optional[int] = None) -> Any:
    """An ``onnxruntime.InferenceSession`` on the CPU for an ONNX file, its bytes or a ``ModelProto``.

    Args:
        model: path, bytes or ``onnx.ModelProto``.
        threads: intra-op threads (default: ``torch.get_num_threads()``, so both frameworks use the same
            share of the machine).
    """
    ort = _require('onnxruntime', 'running an exported model')
    if hasattr(model, 'SerializeToString'):
        model = model.SerializeToString()
    elif isinstance(model, os.PathLike):
        model = os.fspath(model)
    options = ort.SessionOptions()
    options.intra_op_num_threads = int(threads or torch.get_num_threads())
    options.inter_op_num_threads = 1
    return ort.InferenceSession(model, options, providers=['CPUExecutionProvider'])


def _to_numpy(value: Any) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().numpy()
    return np.asarray(value)


def run_onnxruntime(model: Union[ModelSource, Any], *inputs: Any) -> List[np.ndarray]:
    """Run an ONNX model (a session, a path, bytes or a ``ModelProto``) on ``inputs`` (tensors or
    arrays, in the order of the graph's inputs); returns its outputs as numpy arrays."""
    session = model if hasattr(model, 'get_inputs') else onnxruntime_session(model)
    names = [i.name for i in session.get_inputs()]
    if len(inputs) != len(names):
        raise ValueError(f'the ONNX model takes {len(names)} inputs {names}, got {len(inputs)}')
    return session.run(None, {name: _to_numpy(v) for name, v in zip(names, inputs)})


@dataclass(frozen=True)
class OutputDifference:
    """How far one onnxruntime output is from PyTorch's.

    Attributes:
        name: the ONNX output's name.
        shape: its shape.
        max_abs: largest ``|onnxruntime - pytorch|`` (NaN if either has a NaN where the other has not).
        max_ref: largest ``|pytorch|``, the output's scale.
    """

    name: str
    shape: Tuple[int, ...]
    max_abs: float
    max_ref: float

    @property
    def relative(self) -> float:
        """``max_abs`` relative to the output's scale (``max_abs`` itself for an all-zero output)."""
        return self.max_abs / self.max_ref if self.max_ref > 0 else self.max_abs


def _difference(name: str, ours: np.ndarray, ref: np.ndarray) -> OutputDifference:
    if ours.shape != ref.shape:
        raise ValueError(f'onnxruntime output {name!r} has shape {ours.shape}, PyTorch {ref.shape}')
    if ref.size == 0:
        return OutputDifference(name, tuple(ref.shape), 0.0, 0.0)
    ours64, ref64 = ours.astype(np.float64), ref.astype(np.float64)
    same_nan = np.isnan(ours64) & np.isnan(ref64)
    diff = np.where(same_nan, 0.0, np.abs(ours64 - ref64))
    return OutputDifference(name, tuple(ref.shape), float(np.max(diff)), float(np.nanmax(np.abs(ref64))))


def compare_with_onnxruntime(onnx_model: Union[ModelSource, Any], model: nn.Module, args: Sequence[Any],
                             kwargs: Optional[Dict[str, Any]] = None) -> List[OutputDifference]:
    """Run ``model`` (eval mode, no grad) and the exported file on the same inputs and compare.

    Args:
        onnx_model: the exported model (session, path, bytes or ``ModelProto``).
        model: the PyTorch module it was exported from.
        args, kwargs: the inputs; their tensors, flattened in order, are the ONNX graph's inputs.

    Returns:
        One :class:`OutputDifference` per output (PyTorch's outputs flattened in order, as the
        exporter does).
    """
    kwargs = kwargs or {}
    if isinstance(args, torch.Tensor):
        args = (args,)
    with _eval_mode(model), torch.no_grad():
        reference = model(*args, **kwargs)
    ref_leaves = [t for t in pytree.tree_leaves(reference) if isinstance(t, torch.Tensor)]
    inputs = [t for t in pytree.tree_leaves((tuple(args), kwargs)) if isinstance(t, torch.Tensor)]
    session = onnx_model if hasattr(onnx_model, 'get_outputs') else onnxruntime_session(onnx_model)
    outputs = run_onnxruntime(session, *inputs)
    names = [o.name for o in session.get_outputs()]
    if len(outputs) != len(ref_leaves):
        raise ValueError(f'the ONNX model has {len(outputs)} outputs, the PyTorch model {len(ref_leaves)}')
    return [_difference(name, out, ref.detach().cpu().numpy())
            for name, out, ref in zip(names, outputs, ref_leaves)]
