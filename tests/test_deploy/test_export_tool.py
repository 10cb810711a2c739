"""``tools/export_onnx.py`` end to end on a tiny randomly initialised demo-config model saved as a checkpoint,
and the library pieces under it: the in-graph preprocessing equals mmdet's, the exported outputs finish
into mmdet's own detections, the tool's exit status follows its check."""
import importlib.util
import os
import os.path as osp
import subprocess
import sys

import numpy as np
import pytest
import torch
from deploy_test_utils import assert_onnxruntime_matches, deform_conv_nodes

sys.path.insert(0, osp.join(osp.dirname(osp.dirname(osp.abspath(__file__))), 'test_models'))
from model_test_utils import dcn_layers, randomize_  # noqa: E402  (skips without mmdet)

import dcn_plugin.deploy as deploy  # noqa: E402
from dcn_plugin.deploy.detector import (  # noqa: E402
    DetectorExportModule,
    ExportCheck,
    detections_from_outputs,
    load_detector,
    load_image,
)

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
CONFIG = osp.join(ROOT, 'configs/demo/faster-rcnn_r18-mdconv-c3-c5_fpn_gn-all_demo-shapes.py')
TOOL = osp.join(ROOT, 'tools/export_onnx.py')


@pytest.fixture(scope='module')
def exported(tmp_path_factory):
    """The demo config's model with random weights and non-zero offsets, saved as an mmengine-style
    checkpoint; a demo image on disk; the tool run on them (once for the module)."""
    import cv2

    from dcn_plugin.datasets.demo_shapes import render_image
    tmp = tmp_path_factory.mktemp('export_tool')
    torch.manual_seed(0)
    model = load_detector(CONFIG, None)
    randomize_(model.backbone, torch.zeros(1, 3, 64, 64), offset_scale=1.0)
    checkpoint = str(tmp / 'tiny.pth')
    # numpy values in meta, as mmengine writes them: loading needs the project's allow-list
    torch.save({'state_dict': model.state_dict(), 'meta': {'epoch': np.int64(1), 'lr': np.float64(1e-3)}},
               checkpoint)
    image = str(tmp / 'demo.png')
    cv2.imwrite(image, render_image(np.random.default_rng(3), 200, 256)[0])
    out = str(tmp / 'detector.onnx')
    result = subprocess.run([sys.executable, TOOL, CONFIG, checkpoint, '--out', out, '--image', image,
                             '--shape', '96', '128'], cwd=ROOT, capture_output=True, text=True, timeout=1200)
    return dict(result=result, out=out, image=image, checkpoint=checkpoint, log=result.stdout + result.stderr)


@pytest.mark.slow
def test_tool_exports_and_prints_its_onnxruntime_check(exported):
    assert exported['result'].returncode == 0, exported['log'][-4000:]
    log = exported['log']
    assert 'exported backbone + neck + rpn_head to' in log
    assert 'left to PyTorch (dcn_plugin.deploy.detector.detections_from_outputs runs them on the file\'s outputs): ' \
           'rpn_head post-processing, roi_head' in log
    for shape in ('2x3x96x128', '1x3x200x256', '1x3x150x320'):  # export batch, pipeline image, third size
        assert f'onnxruntime vs PyTorch on {exported["image"]}, input {shape}: largest difference' in log, log[-3000:]
    assert 'check passed: largest relative difference' in log


@pytest.fixture(scope='module')
def loaded(exported):
    """The checkpoint loaded back, its exportable part, and the demo image as the test pipeline prepares it."""
    model = load_detector(CONFIG, exported['checkpoint'])
    return model, DetectorExportModule(model).eval(), load_image(model, exported['image'])


@pytest.mark.slow
def test_exported_file_is_standard_onnx_with_dynamic_image_input(exported, loaded):
    import onnx
    assert len(deform_conv_nodes(exported['out'])) == len(dcn_layers(loaded[0])) > 0
    proto = onnx.load(exported['out'])
    (image,) = proto.graph.input
    assert image.name == 'image' and image.type.tensor_type.elem_type == onnx.TensorProto.UINT8
    assert [d.dim_param or d.dim_value for d in image.type.tensor_type.shape.dim] == ['batch', 3, 'height', 'width']
    names = [o.name for o in proto.graph.output]
    assert names == ([f'feat_{i}' for i in range(5)] + [f'rpn_cls_score_{i}' for i in range(5)]
                     + [f'rpn_bbox_pred_{i}' for i in range(5)])
    assert {n.domain for n in proto.graph.node} <= {'', 'ai.onnx'}, 'standard operators only'


@pytest.mark.slow
def test_exported_file_matches_the_checkpoint_in_pytorch_at_another_size(exported, loaded):
    _, module, image = loaded
    other = torch.nn.functional.interpolate(image.float(), size=(72, 104)).to(torch.uint8)
    assert_onnxruntime_matches(exported['out'], module, torch.cat([other, other.flip(-1), other.flip(-2)]))


@pytest.mark.slow
def test_graph_preprocessing_equals_mmdets_data_preprocessor(loaded):
    model, module, image = loaded
    data = model.data_preprocessor({'inputs': [image[0]], 'data_samples': None}, False)
    torch.testing.assert_close(module.preprocess(image), data['inputs'], rtol=0, atol=0)


@pytest.mark.slow
def test_head_outputs_finish_into_mmdets_own_detections(exported, loaded, tmp_path):
    import cv2
    from mmdet.apis import inference_detector

    from dcn_plugin.datasets.demo_shapes import render_image
    model, module, _ = loaded
    path = str(tmp_path / 'large.png')  # the test pipeline shrinks it: boxes are scaled back
    cv2.imwrite(path, render_image(np.random.default_rng(4), 300, 410)[0])
    image = load_image(model, path)
    meta = dict(image_shape=tuple(image.shape[-2:]), scale_factor=(image.shape[-1] / 410, image.shape[-2] / 300))
    assert meta['scale_factor'][0] < 1
    expected = inference_detector(model, path).pred_instances
    with torch.no_grad():
        ours = detections_from_outputs(module, module(image), **meta)
    assert len(ours) == len(expected) > 0
    for key in ('bboxes', 'scores', 'labels'):
        torch.testing.assert_close(ours[key], expected[key], rtol=1e-5, atol=1e-4)
    # the same from onnxruntime's outputs: the deployable path (graph + mmdet's post-processing)
    from_file = detections_from_outputs(module, deploy.run_onnxruntime(exported['out'], image), **meta)
    assert from_file.bboxes.shape[1] == 4 and len(from_file) > 0
    with pytest.raises(ValueError, match='expected the exported outputs'):
        detections_from_outputs(module, module(image)[:5], **meta)


def _tool_module():
    spec = importlib.util.spec_from_file_location('export_onnx_tool', TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_tool_exit_status_follows_the_check(monkeypatch, capsys):
    tool = _tool_module()
    diff = deploy.OutputDifference('feat_0', (1, 64, 8, 8), max_abs=2e-3, max_ref=1.0)
    fake = ExportCheck(path='x.onnx', exported=['backbone'], left_out=[], output_names=['feat_0'], image='img.png',
                       results=[((1, 3, 64, 64), diff)])
    monkeypatch.setattr(tool, 'export_and_check', lambda *a, **k: fake)
    assert tool.main([CONFIG, 'ckpt.pth', '--out', 'x.onnx']) == 1  # 2e-3 > default --rtol 1e-4
    assert tool.main([CONFIG, 'ckpt.pth', '--out', 'x.onnx', '--rtol', '1e-2']) == 0
    nan = deploy.OutputDifference('feat_0', (1,), max_abs=float('nan'), max_ref=1.0)
    fake.results = [((1, 3, 64, 64), nan)]
    assert tool.main([CONFIG, 'ckpt.pth', '--out', 'x.onnx', '--rtol', '1']) == 1


@pytest.mark.parametrize('nan_at', [0, 1, 2])
def test_the_check_reports_a_nan_difference_as_the_worst(monkeypatch, nan_at):
    """A NaN difference (NaN on one side only) is the worst output of its batch wherever it comes, and fails."""
    import dcn_plugin.deploy.detector as detector
    from dcn_plugin.deploy.detector import check_detector_export
    diffs = [deploy.OutputDifference(f'feat_{i}', (1,), max_abs=1e-6 * (i + 1), max_ref=1.0) for i in range(3)]
    diffs[nan_at] = deploy.OutputDifference(f'feat_{nan_at}', (1,), max_abs=float('nan'), max_ref=1.0)
    monkeypatch.setattr(detector, 'compare_with_onnxruntime', lambda *a, **k: diffs)
    results = check_detector_export(None, 'x.onnx', [torch.zeros(1, 3, 8, 8, dtype=torch.uint8)])
    assert results[0][1].name == f'feat_{nan_at}'
    check = ExportCheck(path='x.onnx', exported=[], left_out=[], output_names=[], image='', results=results)
    assert np.isnan(check.max_relative)


@pytest.fixture(scope='module')
def demo_state():
    return load_detector(CONFIG, None).state_dict()


def _misfit(state, damage):
    state = dict(state)
    if damage == 'empty':
        return {}
    if damage == 'no-conv_offset':
        return {k: v for k, v in state.items() if 'conv_offset' not in k}
    if damage == 'extra-key':
        return dict(state, **{'backbone.extra.weight': torch.zeros(3)})
    key = 'backbone.layer2.0.conv1.conv_offset.weight'  # 'mis-shaped'
    return dict(state, **{key: torch.zeros(state[key].shape[0] + 1, *state[key].shape[1:])})


_MISFIT_MESSAGES = {
    'empty': 'it holds no weights',
    'no-conv_offset': 'missing from the checkpoint: backbone.layer2.0.conv1.conv_offset.weight',
    'extra-key': 'not in the model: backbone.extra.weight',
    'mis-shaped': 'have another shape: backbone.layer2.0.conv1.conv_offset.weight'}


@pytest.mark.parametrize('damage', list(_MISFIT_MESSAGES))
def test_tool_refuses_a_checkpoint_that_does_not_fit_the_model(demo_state, tmp_path, capsys, damage):
    """The same exact-fit rule as tools/test.py: nothing is exported, the keys are named, exit status 1;
    --allow-partial-load loads what fits (with a warning)."""
    from dcn_plugin.utils.state_dict import CheckpointMismatchError
    tool = _tool_module()
    checkpoint = str(tmp_path / f'{damage}.pth')
    torch.save({'state_dict': _misfit(demo_state, damage), 'meta': {}}, checkpoint)
    out = tmp_path / 'x.onnx'
    with pytest.raises(SystemExit) as e:
        tool.main([CONFIG, checkpoint, '--out', str(out)])
    message = str(e.value.code)
    assert message.startswith(f'export_onnx.py: error: cannot load checkpoint {checkpoint}'), message
    assert _MISFIT_MESSAGES[damage] in message and '--allow-partial-load' in message, message
    assert not out.exists() and 'check passed' not in capsys.readouterr().out
    with pytest.raises(CheckpointMismatchError):
        load_detector(CONFIG, checkpoint)
    if damage != 'mis-shaped':  # a mis-shaped tensor cannot be loaded at all
        model = load_detector(CONFIG, checkpoint, allow_partial_load=True)
        if damage == 'extra-key':
            for key, value in model.state_dict().items():
                torch.testing.assert_close(value, demo_state[key])


@pytest.mark.parametrize('args,message', [  # a table of refused arguments: its rows are alike by design
    (['--opset', '18'], '--opset must be at least 19'),
    (['--opset', '1000000'], '--opset must be at most {newest}, the newest opset the installed onnx and onnxscript'),
    (['--rtol', '-1'], "--rtol: must be a finite number >= 0, got '-1'"),
    (['--rtol', 'nan'], "--rtol: must be a finite number >= 0, got 'nan'"),
    (['--rtol', 'inf'], "--rtol: must be a finite number >= 0, got 'inf'"),
    (['--shape', '1', '1'], '--shape must be two ints H W, each at least 2'),
    (['--shape', '96', '0'], '--shape must be two ints H W, each at least 2'),
])
def test_tool_refuses_bad_arguments_before_loading_anything(capsys, args, message):
    tool = _tool_module()
    with pytest.raises(SystemExit):
        tool.parse_args([CONFIG, 'missing.pth', '--out', 'x.onnx'] + args)
    assert message.format(newest=deploy.newest_opset()) in capsys.readouterr().err


@pytest.mark.parametrize('passes', [True, False])
def test_the_file_is_written_only_when_the_check_passes(tmp_path, monkeypatch, passes):
    """export_and_check makes and checks the file under a temporary name beside --out and renames it only when
    every output is within rtol: a file that failed its check is never left under the requested name."""
    import dcn_plugin.deploy.detector as detector
    staged = []

    def fake_export(model, image, path, opset=deploy.DEFAULT_OPSET, verbose=None):
        staged.append(path)
        with open(path, 'w') as f:
            f.write('graph')
        return DetectorExportModule(model).eval(), None

    worst = 1e-6 if passes else float('nan')
    monkeypatch.setattr(detector, 'export_detector', fake_export)
    monkeypatch.setattr(detector, 'check_detector_export', lambda module, path, images: [
        ((1, 3, 8, 8), deploy.OutputDifference('feat_0', (1,), max_abs=worst, max_ref=1.0))])
    out = tmp_path / 'out' / 'detector.onnx'
    check = detector.export_and_check(CONFIG, None, str(out), shape=(32, 32))
    assert check.path == str(out) and check.passed is passes
    assert len(staged) == 1 and staged[0] != str(out)
    assert os.listdir(out.parent) == (['detector.onnx'] if passes else [])
    if passes:
        assert out.read_text() == 'graph'
    with pytest.raises(ValueError, match=r'rtol \(--rtol\) must be a finite number >= 0, got -1'):
        detector.export_and_check(CONFIG, None, str(out), rtol=-1)
    with pytest.raises(ValueError, match=r'shape \(--shape\) must be two ints H W, each at least 2'):
        detector.export_and_check(CONFIG, None, str(out), shape=(1, 1))


def test_one_stage_detectors_export_their_box_head_outputs():
    """For a one-stage detector the graph ends with its box head: the same tensors as mmdet's own
    tensor-mode forward."""
    from mmdet.registry import MODELS
    from mmdet.utils import register_all_modules
    register_all_modules()
    torch.manual_seed(0)
    detector = MODELS.build(dict(
        type='RetinaNet',
        data_preprocessor=dict(type='DetDataPreprocessor', mean=[123.675, 116.28, 103.53], std=[58.395, 57.12, 57.375],
                               bgr_to_rgb=True, pad_size_divisor=32),
        backbone=dict(type='DCNResNet', depth=18, base_channels=8, init_cfg=None),
        neck=dict(type='FPN', in_channels=[8, 16, 32, 64], out_channels=16, start_level=1, add_extra_convs='on_input',
                  num_outs=5),
        bbox_head=dict(type='RetinaHead', num_classes=3, in_channels=16, stacked_convs=1, feat_channels=16,
                       anchor_generator=dict(type='AnchorGenerator', octave_base_scale=4, scales_per_octave=3,
                                             ratios=[0.5, 1.0, 2.0], strides=[8, 16, 32, 64, 128]),
                       bbox_coder=dict(type='DeltaXYWHBBoxCoder', target_means=[.0, .0, .0, .0],
                                       target_stds=[1.0, 1.0, 1.0, 1.0])))).eval()
    module = DetectorExportModule(detector).eval()
    image = torch.randint(0, 256, (2, 3, 70, 90), dtype=torch.uint8)
    with torch.no_grad():
        outputs = module(image)
        cls_scores, bbox_preds = detector._forward(module.preprocess(image))
    assert module.output_names(image) == ([f'feat_{i}' for i in range(5)] + [f'head_cls_score_{i}' for i in range(5)]
                                          + [f'head_bbox_pred_{i}' for i in range(5)])
    for ours, theirs in zip(outputs[5:], list(cls_scores) + list(bbox_preds)):
        torch.testing.assert_close(ours, theirs, rtol=0, atol=0)
