"""Deployment of models built on dcn_plugin's operators: standard ONNX export and onnxruntime checks.

Imported on demand (``import dcn_plugin`` does not import it). It needs the deployment extra
(``pip install 'dcn_plugin[deploy]'``: onnx, onnxscript, onnxruntime) only in the functions that use
them, which say so when a package is missing.

    import dcn_plugin.deploy as deploy
    deploy.export_onnx(model, (x,), 'model.onnx', dynamic_shapes={'x': {0: 'batch', 2: 'h', 3: 'w'}})
    diffs = deploy.compare_with_onnxruntime('model.onnx', model, (x,))

Importing this package also registers the symbolics of the TorchScript-based exporter, so
``torch.onnx.export(model, (x,), 'model.onnx', dynamo=False, opset_version=19)`` works too.
:mod:`dcn_plugin.deploy.detector` exports mmdet detectors (backbone, neck and dense head).
"""
from .onnx_export import (
                          DEFAULT_OPSET,
                          MIN_OPSET,
                          TRANSLATED_OPERATORS,
                          UnsupportedOperatorError,
                          check_exportable,
                          check_onnx_file,
                          check_opset,
                          deform_conv_attributes,
                          export_onnx,
                          newest_opset,
                          onnx_translation_table,
                          plugin_operators,
                          register_torchscript_symbolics,
)
from .runtime import OutputDifference, compare_with_onnxruntime, onnxruntime_session, run_onnxruntime

register_torchscript_symbolics()

__all__ = ['MIN_OPSET', 'DEFAULT_OPSET', 'TRANSLATED_OPERATORS', 'UnsupportedOperatorError', 'plugin_operators',
           'newest_opset', 'check_opset', 'check_onnx_file', 'deform_conv_attributes', 'onnx_translation_table',
           'check_exportable', 'export_onnx', 'register_torchscript_symbolics', 'onnxruntime_session',
           'run_onnxruntime', 'compare_with_onnxruntime', 'OutputDifference']
