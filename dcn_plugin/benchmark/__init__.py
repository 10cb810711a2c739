"""Benchmarks of the deformable convolution operator against its references.

:mod:`.op_benchmark` times our op, ``torchvision.ops.deform_conv2d``, mmcv's ``modulated_deform_conv2d``
and ``F.conv2d`` on the same inputs (forward and forward+backward, interleaved, median of N), measures
their peak extra memory and checks that they agree; :mod:`.report` turns the results into a table,
JSON and a bar chart. ``tools/benchmark_op.py`` is the command line over both.

Nothing here imports mmcv, mmdet, tqdm or matplotlib at import time; each is imported when used and
skipped with a note when absent.
"""
from .op_benchmark import (DTYPES, IMPLS, PRESETS, SHAPE_GROUPS, BenchConfig, Shape, default_shapes,
                           parse_shapes, run_benchmark)
from .report import format_report, write_reports

__all__ = ['BenchConfig', 'Shape', 'DTYPES', 'IMPLS', 'PRESETS', 'SHAPE_GROUPS', 'default_shapes',
           'parse_shapes', 'run_benchmark', 'format_report', 'write_reports']
