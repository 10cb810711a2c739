"""ONNX export of the deformable convolution to the standard ``DeformConv`` (opset 19+), through both of
torch's exporters, checked in onnxruntime and against ONNX's reference implementation; refusal of the
operators that have no ONNX equivalent."""
import os

import numpy as np
import pytest
import torch
from deploy_test_utils import (
    assert_onnxruntime_matches,
    attributes,
    deform_conv_nodes,
    export_torchscript,
    op_types,
    random_offsets_,
)
from torch import nn

import dcn_plugin.deploy as deploy  # noqa: E402
from dcn_plugin.ops import DeformConv2d, DeformConv2dPack, ModulatedDeformConv2d, ModulatedDeformConv2dPack  # noqa: E402


class Branches(nn.Module):
    """Four deformable convs on one input covering every attribute the translation maps; offsets and
    masks come from random (non-zero) offset convs."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        # DCNv2, bias, asymmetric stride / padding / dilation, groups, deform groups
        self.a = ModulatedDeformConv2dPack(4, 6, 3, stride=(2, 1), padding=(1, 2), dilation=(1, 2), groups=2,
                                           deform_groups=2, bias=True)
        # DCNv2 without bias (ONNX: empty bias input before the mask), non-square kernel
        self.b = ModulatedDeformConv2dPack(4, 4, (3, 2), padding=(1, 0), bias=False)
        # DCNv1 (no mask), 4 deform groups, no bias
        self.c = DeformConv2dPack(4, 6, 3, padding=1, deform_groups=4)
        # DCNv1 with a bias, 1x1 kernel, stride 2
        self.d = DeformConv2dPack(4, 2, 1, stride=2, bias=True)
        random_offsets_(self, scale=1.5)

    def forward(self, x):
        return self.a(x), self.b(x), self.c(x), self.d(x)


EXPECTED = [  # (number of ONNX inputs, attributes) of branches a, b, c, d
    (5, dict(strides=[2, 1], pads=[1, 2, 1, 2], dilations=[1, 2], group=2, offset_group=2, kernel_shape=[3, 3])),
    (5, dict(strides=[1, 1], pads=[1, 0, 1, 0], dilations=[1, 1], group=1, offset_group=1, kernel_shape=[3, 2])),
    (3, dict(strides=[1, 1], pads=[1, 1, 1, 1], dilations=[1, 1], group=1, offset_group=4, kernel_shape=[3, 3])),
    (4, dict(strides=[2, 2], pads=[0, 0, 0, 0], dilations=[1, 1], group=1, offset_group=1, kernel_shape=[1, 1])),
]
X = torch.randn(2, 4, 9, 11, generator=torch.Generator().manual_seed(1))
X_OTHER = torch.randn(3, 4, 13, 6, generator=torch.Generator().manual_seed(2))  # other batch and size


@pytest.fixture(scope='module')
def branches():
    return Branches()


@pytest.fixture(scope='module')
def dynamo_file(branches, tmp_path_factory):
    path = str(tmp_path_factory.mktemp('onnx') / 'branches_dynamo.onnx')
    deploy.export_onnx(branches, (X,), path, dynamic_shapes={'x': {0: 'batch', 2: 'height', 3: 'width'}},
                       verbose=False)
    return path


@pytest.fixture(scope='module')
def torchscript_file(branches, tmp_path_factory):
    path = str(tmp_path_factory.mktemp('onnx') / 'branches_torchscript.onnx')
    export_torchscript(branches, (X,), path, ['x'], {'x': {0: 'batch', 2: 'height', 3: 'width'}})
    return path


def _check_nodes(path):
    nodes = deform_conv_nodes(path)
    assert len(nodes) == len(EXPECTED)
    # node order follows the graph; match each branch by its (unique) attribute set
    remaining = list(nodes)
    for n_inputs, attrs in EXPECTED:
        match = [n for n in remaining if attributes(n) == attrs]
        assert len(match) == 1, (attrs, [attributes(n) for n in nodes])
        node = match[0]
        remaining.remove(node)
        assert len(node.input) == n_inputs, list(node.input)
        if attrs['kernel_shape'] == [3, 2]:
            assert node.input[3] == '', 'a missing bias before the mask is an empty input'
    assert not any('dcn_plugin' in t for t in op_types(path))


def test_dynamo_export_maps_every_attribute_to_deform_conv(dynamo_file):
    _check_nodes(dynamo_file)


def test_torchscript_export_maps_every_attribute_to_deform_conv(torchscript_file):
    _check_nodes(torchscript_file)


@pytest.mark.parametrize('exporter', ['dynamo', 'torchscript'])
def test_onnxruntime_matches_pytorch_at_the_export_size_and_another(exporter, branches, dynamo_file,
                                                                    torchscript_file):
    path = dynamo_file if exporter == 'dynamo' else torchscript_file
    assert_onnxruntime_matches(path, branches, X)
    assert_onnxruntime_matches(path, branches, X_OTHER)


def test_export_has_dynamic_batch_and_image_axes(dynamo_file):
    import onnx
    dims = [d.dim_param or d.dim_value for d in onnx.load(dynamo_file).graph.input[0].type.tensor_type.shape.dim]
    assert dims == ['batch', 4, 'height', 'width']


class ExternalOffsets(nn.Module):
    """The conv with offset and mask as graph inputs: any offsets can be fed to the exported file."""

    def __init__(self, modulated: bool):
        super().__init__()
        torch.manual_seed(3)
        cls = ModulatedDeformConv2d if modulated else DeformConv2d
        self.conv = cls(4, 5, 3, padding=1, deform_groups=2, bias=True)
        with torch.no_grad():
            self.conv.bias.normal_()
        self.modulated = modulated

    def forward(self, x, offset, mask):
        return self.conv(x, offset, mask) if self.modulated else self.conv(x, offset) * mask.mean()


def _external_inputs(n, h, w, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 4, h, w, generator=g)
    # fractional offsets of up to ~4 pixels: many samples fall between pixels and outside the image
    offset = torch.randn(n, 2 * 2 * 9, h, w, generator=g) * 2.0
    mask = torch.rand(n, 2 * 9, h, w, generator=g)  # in (0, 1): never the implicit 1 of DCNv1
    return x, offset, mask


EXTERNAL_AXES = {'x': {0: 'batch', 2: 'height', 3: 'width'}, 'offset': {0: 'batch', 2: 'height', 3: 'width'},
                 'mask': {0: 'batch', 2: 'height', 3: 'width'}}


@pytest.mark.filterwarnings('ignore:# The axis name')  # torch's note on axes sharing a name
@pytest.mark.parametrize('modulated', [True, False], ids=['dcnv2', 'dcnv1'])
def test_user_calling_torch_onnx_export_with_the_table_gets_exact_offsets_and_masks(modulated, tmp_path):
    model = ExternalOffsets(modulated).eval()
    path = str(tmp_path / 'external.onnx')
    # what a user writes without our helper (opset 20: any opset >= 19 works)
    torch.onnx.export(model, _external_inputs(2, 7, 8, 0), path, dynamo=True, opset_version=20,
                      custom_translation_table=deploy.onnx_translation_table(20), dynamic_shapes=EXTERNAL_AXES,
                      verbose=False)
    (node,) = deform_conv_nodes(path)
    assert len(node.input) == (5 if modulated else 4)
    assert_onnxruntime_matches(path, model, *_external_inputs(2, 7, 8, 0))
    assert_onnxruntime_matches(path, model, *_external_inputs(3, 10, 5, 1))


def test_torchscript_exporter_gets_exact_offsets_and_masks(tmp_path):
    model = ExternalOffsets(True).eval()
    path = str(tmp_path / 'external_ts.onnx')
    export_torchscript(model, _external_inputs(2, 7, 8, 0), path, ['x', 'offset', 'mask'], EXTERNAL_AXES)
    assert_onnxruntime_matches(path, model, *_external_inputs(3, 10, 5, 1))


def test_swapped_offset_layout_would_be_caught(tmp_path):
    """The parity tests can fail: feeding the file (dx, dy) instead of (dy, dx) changes its output far
    beyond the tolerance, so a translation that reordered the offsets could not pass them."""
    model = ExternalOffsets(True).eval()
    path = str(tmp_path / 'external.onnx')
    deploy.export_onnx(model, _external_inputs(2, 7, 8, 0), path, dynamic_shapes=EXTERNAL_AXES, verbose=False)
    x, offset, mask = _external_inputs(2, 7, 8, 4)
    swapped = offset.view(2, -1, 2, 7, 8).flip(2).reshape_as(offset)
    (ours,) = deploy.run_onnxruntime(path, x, swapped, mask)
    ref = model(x, offset, mask).detach().numpy()
    assert np.abs(ours - ref).max() > 1000 * 1e-4 * np.abs(ref).max()


def test_deform_conv_semantics_equal_the_onnx_reference_implementation(tmp_path):
    """ONNX's own reference evaluator (the specification in code) computes what our op computes."""
    from onnx.reference import ReferenceEvaluator
    torch.manual_seed(5)
    conv = ModulatedDeformConv2d(4, 4, 3, stride=(1, 2), padding=(1, 2), dilation=(2, 1), groups=2, deform_groups=2)
    with torch.no_grad():
        conv.bias.normal_()

    class Model(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = conv

        def forward(self, x, offset, mask):
            return self.conv(x, offset, mask)

    model = Model().eval()
    g = torch.Generator().manual_seed(6)
    x = torch.randn(1, 4, 5, 6, generator=g)
    ho, wo = 3, 4  # (5 + 2 - 5) // 1 + 1, (6 + 4 - 3) // 2 + 1
    offset = torch.randn(1, 36, ho, wo, generator=g) * 1.5
    mask = torch.rand(1, 18, ho, wo, generator=g)
    path = str(tmp_path / 'reference.onnx')
    deploy.export_onnx(model, (x, offset, mask), path, verbose=False)
    (ref,) = ReferenceEvaluator(path).run(None, {'x': x.numpy(), 'offset': offset.numpy(), 'mask': mask.numpy()})
    np.testing.assert_allclose(model(x, offset, mask).detach().numpy(), ref, rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------- opsets
def test_opsets_below_19_are_refused_with_a_message_naming_deform_conv(tmp_path):
    model = ExternalOffsets(True).eval()
    with pytest.raises(ValueError, match=r'opset must be at least 19 \(ONNX DeformConv.*got 18'):
        deploy.export_onnx(model, _external_inputs(2, 7, 8, 0), str(tmp_path / 'a.onnx'), opset=18)
    with pytest.raises(ValueError, match='opset must be at least 19'):
        deploy.onnx_translation_table(17)
    with pytest.raises(TypeError, match='opset must be an int'):
        deploy.onnx_translation_table('19')
    with pytest.raises(ValueError, match=r'opset_version must be at least 19 .*got 17'):
        export_torchscript(model, _external_inputs(2, 7, 8, 0), str(tmp_path / 'b.onnx'), ['x', 'offset', 'mask'],
                           EXTERNAL_AXES, opset=17)


def test_opsets_newer_than_the_installed_onnx_and_onnxscript_export_to_are_refused(tmp_path):
    """The upper bound is read from the installed packages: the newest opset exports and onnxruntime runs the
    file; one above it (or a million) is refused before anything is written."""
    import onnx
    import onnxruntime
    newest = deploy.newest_opset()
    assert deploy.MIN_OPSET <= newest <= onnx.defs.onnx_opset_version()
    model = ExternalOffsets(True).eval()
    inputs = _external_inputs(2, 7, 8, 0)
    path = tmp_path / 'newest.onnx'
    deploy.export_onnx(model, inputs, str(path), opset=newest, verbose=False)
    assert {o.domain: o.version for o in onnx.load(str(path)).opset_import}[''] == newest
    onnxruntime.InferenceSession(str(path), providers=['CPUExecutionProvider'])
    for opset in (newest + 1, 10 ** 6):
        with pytest.raises(ValueError, match=rf'opset must be at most {newest}, the newest opset the installed onnx '
                                             rf'and onnxscript export to .*got {opset}'):
            deploy.export_onnx(model, inputs, str(tmp_path / f'{opset}.onnx'), opset=opset, verbose=False)
    assert sorted(os.listdir(tmp_path)) == ['newest.onnx']


def test_a_file_that_fails_its_check_is_never_left_under_the_requested_name(tmp_path, monkeypatch):
    """The file is written under a temporary name, checked (declared opset, onnx.checker) and only then renamed;
    a failed check leaves neither the file nor the temporary."""
    import onnx
    from onnx import TensorProto, helper

    import dcn_plugin.deploy.onnx_export as onnx_export
    # a graph that says opset 18, where DeformConv does not exist: what torch leaves when it cannot convert
    x = helper.make_tensor_value_info('x', TensorProto.FLOAT, [1, 1, 4, 4])
    y = helper.make_tensor_value_info('y', TensorProto.FLOAT, [1, 1, 4, 4])
    node = helper.make_node('DeformConv', ['x', 'w', 'offset'], ['y'])
    bad = tmp_path / 'opset18.onnx'
    onnx.save(helper.make_model(helper.make_graph([node], 'g', [x], [y]), opset_imports=[helper.make_opsetid('', 18)]),
              str(bad))
    with pytest.raises(torch.onnx.errors.OnnxExporterError, match='declares opset 18, not the requested 19'):
        deploy.check_onnx_file(str(bad), 19)
    with pytest.raises(torch.onnx.errors.OnnxExporterError, match='is not valid ONNX'):
        deploy.check_onnx_file(str(bad), 18)
    # export_onnx with a failing check: nothing at the path, no temporary left
    calls = []

    def failing_check(path, opset):
        calls.append((path, opset))
        raise torch.onnx.errors.OnnxExporterError('simulated failure')

    monkeypatch.setattr(onnx_export, 'check_onnx_file', failing_check)
    out = tmp_path / 'out' / 'model.onnx'
    with pytest.raises(torch.onnx.errors.OnnxExporterError, match='simulated failure'):
        deploy.export_onnx(ExternalOffsets(True).eval(), _external_inputs(2, 7, 8, 0), str(out), verbose=False)
    assert len(calls) == 1 and calls[0][0] != str(out) and calls[0][1] == deploy.DEFAULT_OPSET
    assert os.listdir(out.parent) == []


# ----------------------------------------------------------------------------- refusals
@torch.library.custom_op('dcn_plugin::_test_pooling_stand_in', mutates_args=())
def _stand_in(x: torch.Tensor, rois: torch.Tensor) -> torch.Tensor:
    """A stand-in for an operator of ours with no ONNX equivalent (deformable RoI pooling)."""
    return x[:, :, :2, :2].mean((2, 3), keepdim=True) * rois.sum()


@_stand_in.register_fake
def _(x, rois):
    return x.new_empty(x.shape[0], x.shape[1], 1, 1)


class WithStandIn(nn.Module):
    def __init__(self):
        super().__init__()
        self.backbone = ModulatedDeformConv2dPack(4, 4, 3, padding=1)
        self.pool = Pool()

    def forward(self, x):
        return self.pool(self.backbone(x))


class Pool(nn.Module):
    def forward(self, x):
        return torch.ops.dcn_plugin._test_pooling_stand_in(x, torch.ones(2, 5))


class CallsBackward(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = ModulatedDeformConv2dPack(4, 4, 3, padding=1)

    def forward(self, x):
        offset = torch.zeros(x.shape[0], 18, x.shape[2], x.shape[3])
        mask = torch.ones(x.shape[0], 9, x.shape[2], x.shape[3])
        grads = torch.ops.dcn_plugin.modulated_deform_conv2d_backward(
            x, x, offset, mask, self.conv.weight, [1, 1], [1, 1], [1, 1], 1, 1, [True, False, False, False, False])
        return grads[0]


def test_export_onnx_refuses_an_operator_without_onnx_equivalent_naming_it_and_its_module(tmp_path):
    with pytest.raises(deploy.UnsupportedOperatorError,
                       match=r"cannot export dcn_plugin::_test_pooling_stand_in \(called in module 'pool'\) to "
                             r'ONNX: the standard ONNX operator set has no operator') as info:
        deploy.export_onnx(WithStandIn(), (X,), str(tmp_path / 'a.onnx'))
    assert info.value.operator == 'dcn_plugin::_test_pooling_stand_in'
    assert isinstance(info.value, torch.onnx.errors.OnnxExporterError)
    assert not (tmp_path / 'a.onnx').exists()
    with pytest.raises(deploy.UnsupportedOperatorError, match='dcn_plugin::modulated_deform_conv2d_backward'):
        deploy.export_onnx(CallsBackward(), (X,), str(tmp_path / 'b.onnx'))


def test_table_refuses_it_for_users_calling_torch_onnx_export(tmp_path):
    with pytest.raises(Exception) as info:
        torch.onnx.export(WithStandIn().eval(), (X,), str(tmp_path / 'a.onnx'), dynamo=True, opset_version=19,
                          custom_translation_table=deploy.onnx_translation_table(19), verbose=False)
    chain, e = [], info.value
    while e is not None:
        chain.append(e)
        e = e.__cause__
    assert any(isinstance(c, deploy.UnsupportedOperatorError) for c in chain), [type(c) for c in chain]


def test_torchscript_exporter_refuses_it_too(tmp_path):
    deploy.register_torchscript_symbolics()  # the stand-in was registered after dcn_plugin.deploy was imported
    with pytest.raises(deploy.UnsupportedOperatorError, match='dcn_plugin::_test_pooling_stand_in'):
        export_torchscript(WithStandIn().eval(), (X,), str(tmp_path / 'a.onnx'), ['x'], {'x': {0: 'batch'}})


def test_every_plugin_operator_is_translated_or_refused():
    table = deploy.onnx_translation_table()
    names = {name for name, _ in deploy.plugin_operators()}
    assert 'dcn_plugin::modulated_deform_conv2d' in names
    assert {op.name().split('.')[0] for op in table} == names
    assert table[torch.ops.dcn_plugin.modulated_deform_conv2d.default].__name__ == 'modulated_deform_conv2d'
    refusal = table[torch.ops.dcn_plugin.modulated_deform_conv2d_backward.default]
    with pytest.raises(deploy.UnsupportedOperatorError, match='modulated_deform_conv2d_backward'):
        refusal()


def test_a_dynamic_axis_the_model_fixes_is_refused_not_exported_static(tmp_path):
    class FixesWidth(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = ModulatedDeformConv2dPack(4, 4, 3, padding=1)

        def forward(self, x):
            return self.conv(x).reshape(x.shape[0], 4, x.shape[2], 11)  # only width 11 works

    with pytest.raises(Exception, match=r"specialized it to be a constant \(11\)"):
        deploy.export_onnx(FixesWidth(), (X,), str(tmp_path / 'a.onnx'), verbose=False,
                           dynamic_shapes={'x': {0: 'batch', 2: 'height', 3: 'width'}})
