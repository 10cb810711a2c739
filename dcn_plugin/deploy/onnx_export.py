"""ONNX export of models built on ``torch.ops.dcn_plugin.*``: the standard ``DeformConv`` (opset 19+).

``dcn_plugin::modulated_deform_conv2d`` becomes ONNX's ``DeformConv`` (opset 19 and later), which
onnxruntime and other standard runtimes run: no custom-op library is needed. The argument mapping is
written once, in :func:`deform_conv_attributes`, and serves both of torch's exporters:

- the ``torch.export``-based exporter (``torch.onnx.export(..., dynamo=True)``, torch's default): a
  translation passed through ``custom_translation_table`` (:func:`onnx_translation_table`), which
  :func:`export_onnx` does for you;
- the TorchScript-based exporter (``torch.onnx.export(..., dynamo=False)``, deprecated by torch but
  still shipped): a symbolic registered when :mod:`dcn_plugin.deploy` is imported.

Layouts agree without any reshuffling: our offset channels ``2 * (g * kh * kw + i * kw + j) + {0: dy,
1: dx}`` are ONNX's ``(N, offset_group, kh, kw, 2, oH, oW)`` view of the offset, and our mask channels
``g * kh * kw + i * kw + j`` its ``(N, offset_group, kh, kw, oH, oW)`` view of the mask (see the ONNX
reference implementation of ``DeformConv``); sampling is bilinear with zeros outside the input in both.

Every other ``dcn_plugin`` operator (the convolution's backward, deformable RoI pooling, ...) has no
ONNX equivalent: a model that calls one is refused with :class:`UnsupportedOperatorError`, by both
exporters, rather than exported to a graph no runtime can run.
"""
import contextlib
import importlib
import os
import os.path as osp
import re
import tempfile
import warnings
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import torch
from torch import nn
from torch.onnx import symbolic_helper

from .. import ops as _ops  # noqa: F401  (loads the operator library: torch.ops.dcn_plugin.*)

__all__ = ['MIN_OPSET', 'DEFAULT_OPSET', 'TRANSLATED_OPERATORS', 'UnsupportedOperatorError', 'plugin_operators',
           'newest_opset', 'check_opset', 'deform_conv_attributes', 'onnx_translation_table', 'check_exportable',
           'export_onnx', 'check_onnx_file', 'staged_onnx_path', 'publish_onnx', 'register_torchscript_symbolics']

#: ``DeformConv`` entered the standard operator set in opset 19.
MIN_OPSET = 19
#: The opset :func:`export_onnx` targets by default: the oldest with ``DeformConv``, which the widest
#: range of runtimes accepts (onnxruntime gained a ``DeformConv`` kernel only in recent releases: the
#: deployment extra asks for one tested here).
DEFAULT_OPSET = 19
NAMESPACE = 'dcn_plugin'
_CONV = 'dcn_plugin::modulated_deform_conv2d'
#: dcn_plugin operators with an ONNX translation -> the ONNX operator they become.
TRANSLATED_OPERATORS: Dict[str, str] = {_CONV: 'DeformConv'}
_INSTALL_HINT = "pip install 'dcn_plugin[deploy]' (onnx, onnxscript, onnxruntime)"


class UnsupportedOperatorError(torch.onnx.errors.OnnxExporterError):
    """The model calls a ``dcn_plugin`` operator that has no ONNX equivalent, so it cannot be exported.

    Attributes:
        operator: the operator's qualified name, e.g. ``'dcn_plugin::deform_roi_pool'``.
        module: the name of the submodule that calls it, when known.
    """

    def __init__(self, operator: str, module: Optional[str] = None) -> None:
        self.operator = operator
        self.module = module
        where = f' (called in module {module!r})' if module else ''
        exportable = ', '.join(f'{k} -> {v}' for k, v in TRANSLATED_OPERATORS.items())
        super().__init__(
            f'cannot export {operator}{where} to ONNX: the standard ONNX operator set has no operator that '
            f'computes it, so no runtime could run the graph. Only these dcn_plugin operators export: '
            f'{exportable}. Export the part of the model that does not use {operator} (e.g. the backbone, '
            f'neck and dense heads of a detector) and run the rest in PyTorch.')


def _require(module: str, purpose: str) -> Any:
    """Import ``module`` or raise an ImportError that says how to install the deployment extra."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise ImportError(f'{purpose} needs the {module!r} package: {_INSTALL_HINT}') from e


def newest_opset() -> int:
    """The newest opset the installed onnx and onnxscript export to, as they report it.

    torch's exporter builds its graph at its own opset and converts it to the requested one with
    onnxscript's version converter; above that converter's range it falls back to onnx's C converter and,
    when that fails, leaves the graph at torch's opset, which has no ``DeformConv``. So the bound is the
    smaller of onnx's newest opset (``onnx.defs.onnx_opset_version()``) and the newest opset
    onnxscript's version converter supports (the newest ``onnxscript.onnx_opset`` module where the
    converter does not say).
    """
    onnx = _require('onnx', 'exporting to ONNX')
    onnxscript = _require('onnxscript', 'exporting to ONNX')
    bounds = [int(onnx.defs.onnx_opset_version())]
    try:
        from onnxscript.version_converter import _version_converter
        bounds.append(int(_version_converter.SUPPORTED_MAX_ONNX_OPSET))
    except (ImportError, AttributeError):  # pragma: no cover - other onnxscript layouts
        import onnxscript.onnx_opset
        bounds.append(max(int(n[len('opset'):]) for n in dir(onnxscript.onnx_opset) if re.fullmatch(r'opset\d+', n)))
    del onnxscript
    return min(bounds)


def check_opset(opset: Any, arg: str = 'opset', upper: bool = True) -> int:
    """``opset`` if it is an int from :data:`MIN_OPSET` to :func:`newest_opset`, else a TypeError /
    ValueError naming ``arg``. ``upper=False`` checks the lower bound only (the TorchScript exporter,
    which bounds the opset itself and needs neither onnx nor onnxscript)."""
    if isinstance(opset, bool) or not isinstance(opset, int):
        raise TypeError(f'{arg} must be an int, got {opset!r}')
    if opset < MIN_OPSET:
        raise ValueError(f'{arg} must be at least {MIN_OPSET} (ONNX DeformConv, which {_CONV} exports to, '
                         f'exists since opset {MIN_OPSET}), got {opset}')
    if upper:
        newest = newest_opset()
        if opset > newest:
            raise ValueError(f'{arg} must be at most {newest}, the newest opset the installed onnx and onnxscript '
                             f'export to (a newer one needs newer onnx / onnxscript packages), got {opset}')
    return opset


def plugin_operators() -> List[Tuple[str, str]]:
    """``(qualified name, overload name)`` of every registered ``dcn_plugin`` operator overload, the
    ones loaded after this module included (the list is read from the dispatcher at each call)."""
    return sorted({(s.name, s.overload_name or 'default') for s in torch._C._jit_get_all_schemas()
                   if s.name.startswith(NAMESPACE + '::')})


def _overload(name: str, overload: str) -> torch._ops.OpOverload:
    namespace, op = name.split('::')
    return getattr(getattr(getattr(torch.ops, namespace), op), overload)


def deform_conv_attributes(stride: Sequence[int], padding: Sequence[int], dilation: Sequence[int],
                           groups: int, deform_groups: int,
                           kernel_size: Optional[Sequence[int]] = None) -> Dict[str, Any]:
    """ONNX ``DeformConv`` attributes of one call of ``dcn_plugin::modulated_deform_conv2d``.

    Args:
        stride, padding, dilation: the op's ``(h, w)`` pairs (symmetric padding).
        groups, deform_groups: the op's groups and offset groups.
        kernel_size: ``(kh, kw)`` when known (ONNX infers it from the weight otherwise).

    Returns:
        ``strides``, ``pads`` (``[pad_h, pad_w, pad_h, pad_w]``: ONNX lists every axis' begin, then
        every axis' end), ``dilations``, ``group``, ``offset_group`` and, when given, ``kernel_shape``.
    """
    attrs: Dict[str, Any] = dict(strides=[int(v) for v in stride],
                                 pads=[int(padding[0]), int(padding[1]), int(padding[0]), int(padding[1])],
                                 dilations=[int(v) for v in dilation], group=int(groups),
                                 offset_group=int(deform_groups))
    if kernel_size is not None:
        attrs['kernel_shape'] = [int(v) for v in kernel_size]
    return attrs


# ----------------------------------------------------------------------------- torch.export exporter
def _static_kernel_size(shape: Any) -> Optional[List[int]]:
    dims = list(shape) if shape is not None else []
    if len(dims) == 4 and all(isinstance(d, int) for d in dims[2:]):
        return [int(dims[2]), int(dims[3])]
    return None


def _deform_conv_translation(opset: Any) -> Callable:
    def modulated_deform_conv2d(input, offset, mask, weight, bias=None, stride=(1, 1), padding=(0, 0),
                                dilation=(1, 1), groups=1, deform_groups=1):
        # ONNX inputs are (X, W, offset, B, mask); a missing bias before a mask is an empty input
        attrs = deform_conv_attributes(stride, padding, dilation, groups, deform_groups,
                                       _static_kernel_size(getattr(weight, 'shape', None)))
        return opset.DeformConv(input, weight, offset, bias, mask, **attrs)
    return modulated_deform_conv2d


def _refusal(name: str) -> Callable:
    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise UnsupportedOperatorError(name)
    refuse.__name__ = f'refuse_{name.split("::")[1]}'
    return refuse


def onnx_translation_table(opset: int = DEFAULT_OPSET) -> Dict[torch._ops.OpOverload, Callable]:
    """The ``custom_translation_table`` for ``torch.onnx.export(..., dynamo=True)``.

    Pass the same ``opset`` as ``opset_version``::

        torch.onnx.export(model, (x,), 'model.onnx', opset_version=19,
                          custom_translation_table=dcn_plugin.deploy.onnx_translation_table(19))

    Args:
        opset: target ONNX opset, at least :data:`MIN_OPSET`.

    Returns:
        ``torch.ops.dcn_plugin.modulated_deform_conv2d.default`` -> a translation to ``DeformConv``,
        and every other ``dcn_plugin`` operator -> a translation that raises
        :class:`UnsupportedOperatorError` (torch's exporter reports it as the cause of its
        ``ConversionError``).
    """
    opset = check_opset(opset)
    onnxscript = _require('onnxscript', 'exporting to ONNX with torch.onnx.export(dynamo=True)')
    table: Dict[torch._ops.OpOverload, Callable] = {}
    for name, overload in plugin_operators():
        if name == _CONV:
            table[_overload(name, overload)] = _deform_conv_translation(onnxscript.values.Opset('', opset))
        else:
            table[_overload(name, overload)] = _refusal(name)
    return table


def _graph_modules(module: torch.fx.GraphModule) -> Iterator[torch.fx.GraphModule]:
    yield module
    for child in module.children():  # the bodies of control-flow operators
        if isinstance(child, torch.fx.GraphModule):
            yield from _graph_modules(child)


def _calling_module(node: torch.fx.Node) -> Optional[str]:
    stack = node.meta.get('nn_module_stack')
    if not stack:
        return None
    path = list(stack.values())[-1][0]
    return path or None


def check_exportable(program: torch.export.ExportedProgram) -> None:
    """Raise :class:`UnsupportedOperatorError` if ``program`` calls a ``dcn_plugin`` operator that has
    no ONNX translation (naming the operator and the submodule that calls it)."""
    for graph_module in _graph_modules(program.graph_module):
        for node in graph_module.graph.nodes:
            target = node.target
            if node.op != 'call_function' or not isinstance(target, torch._ops.OpOverload):
                continue
            name = target.name().split('.')[0]
            if target.namespace == NAMESPACE and name not in TRANSLATED_OPERATORS:
                raise UnsupportedOperatorError(name, _calling_module(node))


def _dynamic_dims(spec: Any) -> Any:
    """``dynamic_shapes`` with each axis name (a string) replaced by ``torch.export.Dim.DYNAMIC``, as
    ``torch.onnx.export`` does (the names are put back on the ONNX graph's axes)."""
    if isinstance(spec, str):
        return torch.export.Dim.DYNAMIC
    if isinstance(spec, dict):
        return {k: _dynamic_dims(v) for k, v in spec.items()}
    if isinstance(spec, (list, tuple)):
        return type(spec)(_dynamic_dims(v) for v in spec)
    return spec


@contextlib.contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    modes = {m: m.training for m in model.modules()}
    model.eval()
    try:
        yield
    finally:
        for m, training in modes.items():
            m.training = training


def export_onnx(model: nn.Module, args: Sequence[Any], path: Optional[str] = None, *,
                kwargs: Optional[Dict[str, Any]] = None, dynamic_shapes: Any = None, opset: int = DEFAULT_OPSET,
                input_names: Optional[Sequence[str]] = None, output_names: Optional[Sequence[str]] = None,
                optimize: bool = True, verbose: Optional[bool] = None) -> 'torch.onnx.ONNXProgram':
    """Export ``model`` to a standard ONNX file, our deformable convolutions as ``DeformConv``.

    The model is captured with ``torch.export`` (non-strict) in eval mode (each submodule's mode is
    restored afterwards), checked for ``dcn_plugin`` operators without an ONNX equivalent, then
    converted by ``torch.onnx.export`` with :func:`onnx_translation_table`.

    Args:
        model: the module to export (or a ``torch.export.ExportedProgram``).
        args: example positional inputs, e.g. ``(torch.randn(2, 3, 224, 224),)``.
        path: where to write the ``.onnx`` file (weights inside it unless they exceed 2 GB); None
            writes nothing (use the returned program's ``save``). The file is written beside it under a
            temporary name, checked (:func:`check_onnx_file`) and only then renamed to ``path``.
        kwargs: example keyword inputs.
        dynamic_shapes: dynamic axes in ``torch.export``'s format, by argument name or position;
            strings name an axis, e.g. ``{'x': {0: 'batch', 2: 'height', 3: 'width'}}`` (axes with the
            same name have the same size; ``torch.export.Dim`` objects work as well). torch.export
            refuses an axis the model's code fixes to one size, and example sizes of 0 or 1 on a
            dynamic axis: use at least 2.
        opset: target ONNX opset, from :data:`MIN_OPSET` (19) to :func:`newest_opset`.
        input_names, output_names: names of the graph's inputs and outputs (in order).
        optimize: run onnxscript's graph optimiser (constant folding, dead code removal).
        verbose: torch's progress messages (None: its default, some; False: none).

    Returns:
        The ``torch.onnx.ONNXProgram`` (``.model_proto``, ``.save(path)``, ``(*inputs)`` runs it in
        onnxruntime).

    Raises:
        UnsupportedOperatorError: the model calls a ``dcn_plugin`` operator without ONNX equivalent.
        ValueError / TypeError: ``opset`` is not an int from 19 to :func:`newest_opset`.
        torch.onnx.errors.OnnxExporterError: the written graph does not declare ``opset`` or fails
            ``onnx.checker`` (:func:`check_onnx_file`); nothing is left at ``path`` then.
        ImportError: onnx / onnxscript are not installed.
    """
    table = onnx_translation_table(opset)
    if isinstance(model, torch.export.ExportedProgram):
        program = model
    else:
        if not isinstance(model, nn.Module):
            raise TypeError(f'model must be a torch.nn.Module or a torch.export.ExportedProgram, '
                            f'got {type(model).__name__}')
        if isinstance(args, torch.Tensor):
            args = (args,)
        with _eval_mode(model):
            program = torch.export.export(model, tuple(args), kwargs=kwargs,
                                          dynamic_shapes=_dynamic_dims(dynamic_shapes), strict=False)
    check_exportable(program)
    with warnings.catch_warnings():
        # torch warns when two axes share a name, which is how equal sizes are declared here
        warnings.filterwarnings('ignore', message='# The axis name: .* shares the same shape constraints',
                                category=UserWarning)
        onnx_program = torch.onnx.export(program, (), dynamo=True, opset_version=opset,
                                         custom_translation_table=table, input_names=input_names,
                                         output_names=output_names, optimize=optimize, verbose=verbose,
                                         dynamic_shapes=dynamic_shapes)
    if path is not None:
        with staged_onnx_path(path) as staged:
            onnx_program.save(staged)
            check_onnx_file(staged, opset)
            publish_onnx(staged, path)
    return onnx_program


def check_onnx_file(path: str, opset: int) -> None:
    """Raise ``torch.onnx.errors.OnnxExporterError`` unless the ONNX file at ``path`` declares ``opset``
    for the standard domain and passes ``onnx.checker`` (every operator exists at that opset)."""
    onnx = _require('onnx', 'checking an ONNX file')
    model = onnx.load(path, load_external_data=False)
    declared = {o.domain: o.version for o in model.opset_import}.get('', None)
    if declared != opset:
        raise torch.onnx.errors.OnnxExporterError(
            f'the exported graph declares opset {declared}, not the requested {opset}: torch could not convert '
            f'its graph to opset {opset}; choose an opset from {MIN_OPSET} to {newest_opset()}')
    try:
        onnx.checker.check_model(path)
    except onnx.checker.ValidationError as e:
        raise torch.onnx.errors.OnnxExporterError(
            f'the graph exported at opset {opset} is not valid ONNX: {str(e).splitlines()[0]}') from e


@contextlib.contextmanager
def staged_onnx_path(path: str) -> Iterator[str]:
    """A path with ``path``'s file name in a temporary folder beside it (removed on exit, with whatever is
    left in it): write and check the file there, then :func:`publish_onnx` it, so that a file that
    failed its checks never stands under the requested name."""
    folder = osp.dirname(osp.abspath(path))
    os.makedirs(folder, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f'.{osp.basename(path)}.', suffix='.partial', dir=folder) as tmp:
        yield osp.join(tmp, osp.basename(path))


def publish_onnx(staged: str, path: str) -> None:
    """Move the ONNX file written at ``staged`` (a :func:`staged_onnx_path`), with the external-data
    files written next to it, to ``path`` (its data files first, the model last)."""
    folder, name = osp.split(staged)
    target = osp.dirname(osp.abspath(path))
    for entry in sorted(os.listdir(folder), key=lambda n: n == name):
        os.replace(osp.join(folder, entry), osp.join(target, osp.basename(path) if entry == name else entry))


# ----------------------------------------------------------------------------- TorchScript exporter
def _is_none(value: Any) -> bool:
    return value is None or value.node().mustBeNone()


def _missing_input(g: Any) -> Any:
    """An omitted optional ONNX input (the empty name), to skip the bias before a mask."""
    return g.op('prim::Constant').setType(torch._C.OptionalType.ofTensor())


@symbolic_helper.parse_args('v', 'v', 'v', 'v', 'v', 'is', 'is', 'is', 'i', 'i')
def _torchscript_deform_conv(g: Any, input: Any, offset: Any, mask: Any, weight: Any, bias: Any,
                             stride: List[int], padding: List[int], dilation: List[int], groups: int,
                             deform_groups: int) -> Any:
    check_opset(g.opset, 'opset_version', upper=False)  # torch's TorchScript exporter bounds it above
    inputs = [input, weight, offset]
    if not _is_none(mask):
        inputs += [_missing_input(g) if _is_none(bias) else bias, mask]
    elif not _is_none(bias):
        inputs.append(bias)
    sizes = weight.type().sizes() if weight.isCompleteTensor() else None
    attrs = deform_conv_attributes(stride, padding, dilation, groups, deform_groups, _static_kernel_size(sizes))
    return g.op('DeformConv', *inputs, **{f'{k}_i': v for k, v in attrs.items()})


def _torchscript_refusal(name: str) -> Callable:
    def refuse(g: Any, *args: Any, **kwargs: Any) -> Any:
        raise UnsupportedOperatorError(name)
    return refuse


def register_torchscript_symbolics() -> None:
    """Register the symbolics of every ``dcn_plugin`` operator with the TorchScript-based exporter
    (``torch.onnx.export(..., dynamo=False)``): ``DeformConv`` for the convolution (an opset below 19
    is refused with a clear error), :class:`UnsupportedOperatorError` for every other operator.

    Called when :mod:`dcn_plugin.deploy` is imported; call it again after loading more operators.
    """
    for name, _ in plugin_operators():
        symbolic = _torchscript_deform_conv if name == _CONV else _torchscript_refusal(name)
        # registered from opset 1 on, so that too old an opset reaches our message, not torch's
        torch.onnx.register_custom_op_symbolic(name, symbolic, 1)
