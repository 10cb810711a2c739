"""Write the embedded demo dataset (deformed shapes on clutter, COCO format) deterministically.

    python tools/generate_demo_data.py [--out data/demo] [--seed 0] [--train 400] [--val 100] [--size 256]
                                       [--if-missing]

The generator lives in :mod:`dcn_plugin.datasets.demo_shapes`; the same seed gives identical files.
"""
import argparse
import os.path as osp
import sys
import time

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))

from dcn_plugin.datasets.demo_shapes import (  # noqa: E402
    DEMO_SPLITS,
    MAX_IMAGE_SIZE,
    MIN_IMAGE_SIZE,
    check_demo_arguments,
    demo_dataset_exists,
    generate_demo_dataset,
)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description='Generate the demo dataset')
    parser.add_argument('--out', default='data/demo', help='dataset root (default data/demo)')
    parser.add_argument('--seed', type=int, default=0, help='non-negative integer (default 0)')
    parser.add_argument('--train', type=int, default=DEMO_SPLITS['train'],
                        help=f'number of training images, at least 1 (default {DEMO_SPLITS["train"]})')
    parser.add_argument('--val', type=int, default=DEMO_SPLITS['val'],
                        help=f'number of validation images, at least 1 (default {DEMO_SPLITS["val"]})')
    parser.add_argument('--size', type=int, default=256,
                        help=f'image side in pixels, {MIN_IMAGE_SIZE} to {MAX_IMAGE_SIZE} (default 256)')
    parser.add_argument('--if-missing', action='store_true',
                        help='do nothing when --out already holds a complete demo dataset')
    args = parser.parse_args(argv)
    if args.if_missing and demo_dataset_exists(args.out):
        print(f'demo data present in {args.out}')
        return
    try:
        check_demo_arguments(args.size, {'train': args.train, 'val': args.val}, args.seed)
    except ValueError as e:
        parser.error(str(e))
    start = time.time()
    written = generate_demo_dataset(args.out, seed=args.seed, splits={'train': args.train, 'val': args.val},
                                    image_size=args.size)
    for split, path in written.items():
        print(f'{split}: {path}')
    print(f'demo data written to {args.out} in {time.time() - start:.1f} s (seed {args.seed})')


if __name__ == '__main__':
    main()
