"""Benchmark DCNv2: the op against torchvision, mmcv and conv2d, a DCN model against its plain baseline, or
deformable RoI pooling against RoIAlign.

    python tools/benchmark.py [op] [--device cuda] [--dtype bfloat16] [--tf32] [--shapes r50-1333x800]
    python tools/benchmark.py model CONFIG --baseline CONFIG [--part detector|backbone|backbone+neck]
        [--mode infer|train|both] [--image-size H W] [--batch N] [--breakdown]
    python tools/benchmark.py roi-pool [--rois 512] [--channels 256] [--levels P2 ...] [--sampling-ratio N]

The options every mode takes and the run are here; each mode (tools/benchmarks/op.py, model.py, roi_pool.py)
brings its own options, implementations and cases, and tools/benchmarks/common.py times, sizes and checks them
(torch.utils.benchmark, interleaved, medians), reports.py writes the reports (Markdown, JSON, PNG).
docs/benchmarks.md explains the method.
"""
import argparse
import os
import sys
from typing import Optional, Sequence

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [os.path.dirname(HERE), HERE]  # this checkout's dcn_plugin and benchmarks, also from a fresh clone

from benchmarks.common import log, positive, precision_flags, run, set_flags  # noqa: E402
from benchmarks.model import ModelMode  # noqa: E402
from benchmarks.op import OpMode  # noqa: E402
from benchmarks.reports import report, write_reports  # noqa: E402
from benchmarks.roi_pool import RoIPoolMode  # noqa: E402

MODES = {'op': OpMode, 'model': ModelMode, 'roi-pool': RoIPoolMode}


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    """The command line, checked; ``op`` is the default subcommand. Errors exit with status 2."""
    common = argparse.ArgumentParser(add_help=False)
    add = common.add_argument
    add('--device', default='cpu', choices=('cpu', 'cuda'), help='default: cpu')
    add('--tf32', action='store_true', help='allow TF32 tensor cores in cuBLAS and cuDNN (CUDA; default off)')
    add('--batch', type=positive(int), help='batch size (default: op 2, model 1)')
    add('--threads', type=positive(int), help="torch's CPU threads (default: torch's default)")
    add('--min-run-time', type=positive(float), default=1.0, help='timed seconds per implementation and phase')
    add('--rounds', type=positive(int), default=5, help='interleaved rounds the run time is split into (5)')
    add('--no-memory', action='store_true', help='skip the peak memory measurement')
    add('--seed', type=int, default=0, help='seed of the random inputs and weights (default 0)')
    add('--out-dir', default='work_dirs/benchmarks', help='folder of the .md, .json, .png (work_dirs/benchmarks)')
    add('--tag', default='', help='suffix of the output file names')
    parser = argparse.ArgumentParser(prog='benchmark.py', description=__doc__.split('\n')[0])
    sub = parser.add_subparsers(dest='command')
    for name, mode in MODES.items():
        mode.add_arguments(sub.add_parser(name, parents=[common], help=mode.help))
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv if argv[:1] in [[word] for word in (*MODES, '-h', '--help')] else ['op'] + argv)
    error = sub.choices[args.command].error
    if args.device == 'cuda' and not torch.cuda.is_available():
        error(f'--device cuda: no CUDA device here (torch {torch.__version__}, built for CUDA {torch.version.cuda})')
    if args.tf32 and args.device != 'cuda':
        error('--tf32 needs --device cuda (TF32 is a tensor-core mode of CUDA GPUs)')
    if args.device == 'cpu' and getattr(args, 'dtype', None) in ('float16', 'bfloat16'):  # modes with --dtype
        error(f'--dtype {args.dtype} needs --device cuda (on the CPU, benchmark float32 or float64)')
    MODES[args.command].check_arguments(args, error)
    return args


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run, print the short report, write the full one; 1 if an implementation disagrees or a must-run fails."""
    args = parse_args(argv)
    mode, threads = MODES[args.command](args), torch.get_num_threads()
    torch.set_num_threads(args.threads or threads)
    saved = set_flags(precision_flags(mode.device, args.tf32))
    try:
        results = run(mode)
    finally:
        set_flags(saved)
        torch.set_num_threads(threads)
    print(report(results, short=True))
    paths = write_reports(results, args.out_dir, mode.file_stem())
    log('wrote ' + ', '.join(paths.values()))
    for failure in results['failures']:
        log(f'FAILED: {failure}')
    return 1 if results['failures'] else 0


if __name__ == '__main__':
    sys.exit(main())
