"""Draw the sampling locations of a detector's deformable layers for a few output positions.

    python tools/visualize_offsets.py CONFIG CHECKPOINT IMAGE [--points X,Y ...] [--num-layers 3] [--out PNG]

The locations of the last ``--num-layers`` deformable layers of the backbone are stacked (each
sampling point of one layer is an output unit of the layer before, as in the DCN papers' figures),
coloured by the product of the modulation weights for DCNv2. Default positions: the centres of the
top detections, one panel each, its detection's box outlined in magenta and numbered as the panel; a
detection whose box overlaps a better one by IoU > 0.5 (one object detected twice, e.g. under two labels)
gets no panel of its own. The PNG goes under work_dirs/visualize_offsets/ unless --out says otherwise.
The points multiply by 9 per stacked layer (3x3 kernels): --num-layers is limited to 5 (59049 points
per position) and to the number of deformable layers found; at most 16 positions are drawn.
"""
import argparse
import os.path as osp
import sys

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))

from mmengine.config import DictAction  # noqa: E402
from mmengine.logging import print_log  # noqa: E402

from dcn_plugin.apis import add_checkpoint_arguments, exit_on_user_error  # noqa: E402
from dcn_plugin.visualization import visualize_offsets  # noqa: E402


def _point(text: str):
    try:
        x, y = (float(v) for v in text.split(','))
    except ValueError:
        raise argparse.ArgumentTypeError(f'a point is X,Y in image pixels, got {text!r}')
    return x, y


def main(argv=None) -> str:
    parser = argparse.ArgumentParser(description='Visualise deformable conv sampling locations')
    parser.add_argument('config')
    add_checkpoint_arguments(parser, 'draw')
    parser.add_argument('image')
    parser.add_argument('--points', nargs='+', type=_point,
                        help='output positions X,Y in image pixels (1 to 16; default: the top detections)')
    parser.add_argument('--num-layers', type=int, default=3,
                        help='consecutive DCN layers to stack (1 to 5, and at most the number found; default 3)')
    parser.add_argument('--layers', default='backbone', help='regex on module names of the layers to use')
    parser.add_argument('--group', type=int, default=0,
                        help='deform group whose offsets are followed (below the layers\' deform_groups)')
    parser.add_argument('--score-thr', type=float, default=0.3, help='detection score threshold in [0, 1]')
    parser.add_argument('--topk', type=int, default=3,
                        help='detections used as default positions (1 to 16; one per object: boxes overlapping '
                             'a better one by IoU > 0.5 are skipped)')
    parser.add_argument('--device', default='cpu')
    parser.add_argument('--out', help='PNG path (default under work_dirs/visualize_offsets/)')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction)
    args = parser.parse_args(argv)
    with exit_on_user_error('visualize_offsets.py'):
        try:
            path = visualize_offsets(args.config, args.checkpoint, args.image, out=args.out, points=args.points,
                                     num_layers=args.num_layers, layers=args.layers, group=args.group,
                                     score_thr=args.score_thr, topk=args.topk, device=args.device,
                                     cfg_options=args.cfg_options, allow_partial_load=args.allow_partial_load)
        except ValueError as e:
            parser.error(str(e))
    print_log(f'offset visualisation written to {path}', logger='current')
    return path


if __name__ == '__main__':
    main()
