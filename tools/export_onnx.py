"""Export a trained detector to a standard ONNX file and check it with onnxruntime against PyTorch.

    python tools/export_onnx.py CONFIG CHECKPOINT --out FILE [--image IMAGE] [--opset 19] [--shape H W]

The graph holds the detector's preprocessing, backbone, neck and RPN head (the part of Faster R-CNN
that exports cleanly; the deformable convolutions become ONNX ``DeformConv``), with a dynamic batch and
image size: input ``image`` uint8 (N, 3, H, W), the image as the test pipeline resizes it, in the
file's channel order; outputs the feature maps ``feat_*`` and the RPN's ``rpn_cls_score_*`` /
``rpn_bbox_pred_*``. The file is then run in onnxruntime on the check image (the demo data's generator
renders one when --image is not given) at three batch/image sizes; the largest differences are printed,
and the exit status is 1 when one exceeds --rtol (or is NaN): the file is written to --out only when the
check passes. The checkpoint must fit the model exactly, as for
tools/test.py (otherwise the keys that differ are listed and the exit status is 1), unless
--allow-partial-load is given. The work lives in :mod:`dcn_plugin.deploy.detector`.
"""
import argparse
import math
import os.path as osp
import sys

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))  # run from a fresh clone too

from mmengine.config import DictAction  # noqa: E402
from mmengine.logging import print_log  # noqa: E402

from dcn_plugin.apis import add_checkpoint_arguments, exit_on_user_error  # noqa: E402
from dcn_plugin.deploy import DEFAULT_OPSET, check_opset  # noqa: E402
from dcn_plugin.deploy.detector import (  # noqa: E402
    DEFAULT_RTOL,
    MIN_EXPORT_SIZE,
    check_export_size,
    export_and_check,
)


def _rtol(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0 <= value < math.inf:
        raise argparse.ArgumentTypeError(f'must be a finite number >= 0, got {text!r}')
    return value


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description='Export a detector to ONNX (DeformConv, opset 19+) and check it')
    parser.add_argument('config', help='config file')
    add_checkpoint_arguments(parser, 'export')
    parser.add_argument('--out', required=True, help='the .onnx file to write (only when the check passes)')
    parser.add_argument('--image', help='image to check the export on (default: a rendered demo image)')
    parser.add_argument('--opset', type=int, default=DEFAULT_OPSET,
                        help='ONNX opset, from 19 to the newest the installed onnx and onnxscript export to '
                             '(default %(default)s)')
    parser.add_argument('--shape', type=int, nargs=2, metavar=('H', 'W'),
                        help=f'size of the export example, each at least {MIN_EXPORT_SIZE} (default: the image as '
                             'the test pipeline resizes it); the graph accepts any size')
    parser.add_argument('--rtol', type=_rtol, default=DEFAULT_RTOL,
                        help='largest accepted difference relative to the largest value of an output, a finite '
                             'number >= 0 (default %(default)s)')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction, help='override config settings, key=value')
    args = parser.parse_args(argv)
    try:
        if args.shape is not None:
            check_export_size(args.shape, '--shape')
        check_opset(args.opset, '--opset')
    except ValueError as e:
        parser.error(str(e))
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    with exit_on_user_error('export_onnx.py'):
        check = export_and_check(args.config, args.checkpoint, args.out, image=args.image, opset=args.opset,
                                 shape=tuple(args.shape) if args.shape else None, cfg_options=args.cfg_options,
                                 allow_partial_load=args.allow_partial_load, rtol=args.rtol)
    print_log(f'exported {" + ".join(check.exported)} to {check.path} (opset {args.opset}; input image uint8 '
              f'[batch, 3, height, width]; {len(check.output_names)} outputs: {", ".join(check.output_names)})',
              logger='current')
    if check.left_out:
        print_log(f'left to PyTorch (dcn_plugin.deploy.detector.detections_from_outputs runs them on the file\'s '
                  f'outputs): {", ".join(check.left_out)}', logger='current')
    for shape, worst in check.results:
        print_log(f'onnxruntime vs PyTorch on {check.image}, input {"x".join(map(str, shape))}: largest difference '
                  f'{worst.max_abs:.3g} ({worst.relative:.3g} of the output\'s largest value) in {worst.name}',
                  logger='current')
    if not check.max_relative <= args.rtol:
        print_log(f'onnxruntime differs from PyTorch by {check.max_relative:.3g} (relative), more than --rtol '
                  f'{args.rtol:g}: {check.path} was not written', logger='current', level=40)
        return 1
    print_log(f'check passed: largest relative difference {check.max_relative:.3g} <= {args.rtol:g}; written to '
              f'{check.path}', logger='current')
    return 0


if __name__ == '__main__':
    sys.exit(main())
