"""Write the embedded demo dataset (deformed shapes on clutter, COCO format) deterministically.

    python tools/generate_demo_data.py [--out data/demo] [--seed 0] [--train 400] [--val 100] [--size 256]

The generator lives in :mod:`dcn_plugin.datasets.demo_shapes`; the same seed gives identical files.
"""
import argparse
import os.path as osp
import sys
import time

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))

from dcn_plugin.datasets.demo_shapes import DEMO_SPLITS, generate_demo_dataset  # noqa: E402


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description='Generate the demo dataset')
    parser.add_argument('--out', default='data/demo', help='dataset root (default data/demo)')
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--train', type=int, default=DEMO_SPLITS['train'], help='number of training images')
    parser.add_argument('--val', type=int, default=DEMO_SPLITS['val'], help='number of validation images')
    parser.add_argument('--size', type=int, default=256, help='image side in pixels')
    args = parser.parse_args(argv)
    start = time.time()
    written = generate_demo_dataset(args.out, seed=args.seed, splits={'train': args.train, 'val': args.val},
                                    image_size=args.size)
    for split, path in written.items():
        print(f'{split}: {path}')
    print(f'demo data written to {args.out} in {time.time() - start:.1f} s (seed {args.seed})')


if __name__ == '__main__':
    main()
