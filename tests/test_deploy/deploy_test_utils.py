"""Helpers of the deployment tests: ONNX node inspection, onnxruntime parity, TorchScript-exporter calls."""
import math
import warnings
from typing import Dict, List, Sequence

import pytest
import torch
from torch import nn

onnx = pytest.importorskip('onnx')
pytest.importorskip('onnxscript')
pytest.importorskip('onnxruntime')

import dcn_plugin.deploy as deploy  # noqa: E402

RTOL = 1e-4  # float32, relative to each output's largest value
ATOL = 1e-6


def deform_conv_nodes(path: str) -> List[onnx.NodeProto]:
    """The ``DeformConv`` nodes of an ONNX file (standard domain only)."""
    model = onnx.load(path)
    onnx.checker.check_model(model, full_check=True)
    return [n for n in model.graph.node if n.op_type == 'DeformConv' and n.domain in ('', 'ai.onnx')]


def attributes(node: onnx.NodeProto) -> Dict[str, object]:
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def op_types(path: str) -> List[str]:
    return [f'{n.domain}::{n.op_type}' if n.domain else n.op_type for n in onnx.load(path).graph.node]


def assert_onnxruntime_matches(path: str, model: nn.Module, *inputs: torch.Tensor) -> None:
    """onnxruntime's outputs equal the model's within RTOL of each output's largest value."""
    diffs = deploy.compare_with_onnxruntime(path, model, inputs)
    assert diffs, 'no outputs compared'
    for d in diffs:
        assert d.max_ref > 0, f'{d.name} is all zeros: the comparison would prove nothing'
        assert d.max_abs <= RTOL * d.max_ref + ATOL, d


def export_torchscript(model: nn.Module, inputs: Sequence[torch.Tensor], path: str, input_names: Sequence[str],
                       dynamic_axes: Dict[str, Dict[int, str]], opset: int = 19) -> List[str]:
    """``torch.onnx.export(..., dynamo=False)`` as a user calls it (after ``import dcn_plugin.deploy``),
    every output's axes dynamic; returns the output names."""
    with torch.no_grad():
        outputs = model(*inputs)
    count = len(outputs) if isinstance(outputs, (tuple, list)) else 1
    output_names = [f'out{i}' for i in range(count)]
    axes = dict(dynamic_axes)
    axes.update({name: {0: 'batch', 2: f'{name}_h', 3: f'{name}_w'} for name in output_names})
    with warnings.catch_warnings():
        warnings.simplefilter('ignore', DeprecationWarning)  # torch deprecates this exporter
        torch.onnx.export(model, tuple(inputs), path, dynamo=False, opset_version=opset,
                          input_names=list(input_names), output_names=output_names, dynamic_axes=axes)
    return output_names


@torch.no_grad()
def random_offsets_(module: nn.Module, scale: float = 1.0, seed: int = 0) -> nn.Module:
    """Random non-zero ``conv_offset`` weights and biases in every Pack layer (offsets of about
    ``scale`` pixels, masks spread over (0, 1)), random biases; eval mode."""
    g = torch.Generator().manual_seed(seed)
    for m in module.modules():
        conv = getattr(m, 'conv_offset', None)
        if conv is not None:
            fan_in = conv.weight[0].numel()
            conv.weight.copy_(torch.randn(conv.weight.shape, generator=g) * scale / math.sqrt(fan_in))
            conv.bias.copy_(torch.randn(conv.bias.shape, generator=g) * scale)
        bias = getattr(m, 'bias', None)
        if isinstance(bias, torch.Tensor) and conv is not None:
            bias.copy_(torch.randn(bias.shape, generator=g))
    return module.eval()
