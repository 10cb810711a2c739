"""Benchmark our DCNv2 op against torchvision, mmcv and F.conv2d (forward, forward+backward, memory).

    python tools/benchmark_op.py --threads 2                      # the CPU table of docs/benchmarks.md
    python tools/benchmark_op.py --quick                          # a smoke run, seconds
    python tools/benchmark_op.py --device cuda --dtype tf32       # ResNet-50 c3-c5 at 1333x800 on a GPU
    python tools/benchmark_op.py --shapes r50-640 256@40x40/dg4 --impls ours torchvision

Writes a Markdown table, JSON and a bar chart to --out-dir (work_dirs/benchmarks); the work is in
dcn_plugin.benchmark. Implementations that are not installed are skipped with a note.
"""
import argparse
import importlib.util
import logging
import os
import sys

if importlib.util.find_spec('dcn_plugin') is None:  # run from a checkout that is not installed
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from dcn_plugin.benchmark import (DTYPES, IMPLS, PRESETS, SHAPE_GROUPS, BenchConfig,  # noqa: E402
                                  default_shapes, format_report, parse_shapes, run_benchmark, write_reports)

logger = logging.getLogger('benchmark_op')


def parse_args(argv=None) -> argparse.Namespace:
    shapes_help = ('shapes to run: groups (' + ', '.join(SHAPE_GROUPS) + '), presets (' + ', '.join(PRESETS)
                   + ') or specs C@HxW[/sS][/dgG][/kK], e.g. 256@40x40/dg4 (default: the group named after '
                   'the device; with --quick, "quick")')
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--device', default='cpu', help='cpu (default), cuda or cuda:N')
    p.add_argument('--dtype', default='float32', choices=DTYPES,
                   help='tensor dtype (default float32); tf32 = float32 tensors with TF32 matmul/cuDNN (CUDA only)')
    p.add_argument('--threads', type=int, default=None, help='torch.set_num_threads (default: torch\'s)')
    p.add_argument('--batch', type=int, default=2, help='batch size (default 2)')
    p.add_argument('--shapes', nargs='+', default=None, help=shapes_help)
    p.add_argument('--impls', nargs='+', default=list(IMPLS), choices=IMPLS, help='default: all, missing ones skipped')
    p.add_argument('--repeat', type=int, default=None, help='timed repetitions (default 5; 3 with --quick)')
    p.add_argument('--warmup', type=int, default=None, help='untimed repetitions first (default 2; 1 with --quick)')
    p.add_argument('--quick', action='store_true', help='smoke run: small shapes, fewer repetitions')
    p.add_argument('--no-check', action='store_true', help='skip the numerical agreement check')
    p.add_argument('--no-memory', action='store_true', help='skip the peak memory measurement')
    p.add_argument('--no-progress', action='store_true', help='no progress bar')
    p.add_argument('--seed', type=int, default=0, help='seed of the random inputs (default 0)')
    p.add_argument('--out-dir', default='work_dirs/benchmarks',
                   help='where the .md, .json and .png go (default work_dirs/benchmarks)')
    p.add_argument('--tag', default='', help='suffix of the output file names')
    p.add_argument('--list-shapes', action='store_true', help='print the shape groups and presets, then exit')
    return p.parse_args(argv)


def build_config(args: argparse.Namespace) -> BenchConfig:
    shapes = parse_shapes(args.shapes) if args.shapes else default_shapes(args.device, quick=args.quick)
    return BenchConfig(
        shapes=shapes, device=args.device, dtype=args.dtype, batch=args.batch,
        repeat=args.repeat if args.repeat is not None else (3 if args.quick else 5),
        warmup=args.warmup if args.warmup is not None else (1 if args.quick else 2),
        threads=args.threads, impls=args.impls, check=not args.no_check, memory=not args.no_memory,
        seed=args.seed, progress=not args.no_progress)


def main(argv=None) -> int:
    logging.basicConfig(level=logging.INFO, format='%(name)s: %(message)s')
    args = parse_args(argv)
    if args.list_shapes:
        for name, members in SHAPE_GROUPS.items():
            print(f'{name:12s} {" ".join(members)}')
        for name, shape in PRESETS.items():
            print(f'{name:16s} {shape.spec}')
        return 0
    try:
        cfg = build_config(args)
        cfg.validate()
    except (ValueError, RuntimeError) as e:
        logger.error('%s', e)
        return 2
    logger.info('%d shape(s) on %s in %s: %s', len(cfg.shapes), cfg.device, cfg.dtype,
                ', '.join(s.spec for s in cfg.shapes))
    results = run_benchmark(cfg, log=logger.info)
    print(format_report(results))
    stem = None
    if args.tag:
        stem = f'op_benchmark_{cfg.device.split(":")[0]}_{cfg.dtype}_{args.tag}'
    paths = write_reports(results, args.out_dir, stem)
    logger.info('wrote %s', ', '.join(v for k, v in paths.items() if k != 'note'))
    if 'note' in paths:
        logger.warning('%s', paths['note'])
    return 0


if __name__ == '__main__':
    sys.exit(main())
