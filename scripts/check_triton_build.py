"""Compile every shipped Triton kernel ahead of time for sm_80 and sm_90, without a GPU, and report its
registers, shared memory and spills; exit 1 on any spill or compile error.

Every kernel in :data:`KERNELS` is compiled with its shipped launch configuration (tile sizes, warps,
stages: the kernels have no autotuning), for every dtype the kernels are built for, every combination
of its flags, and both integer widths its scalar arguments can take (int32; int64 where a size or a
stride passes 2^31). ``ptxas -v`` (the one in the triton wheel) reads the PTX for registers and spills.

    python scripts/check_triton_build.py [--arch 80 90] [--quick]

``--quick`` compiles the flags' all-on combination only (the one with the most live values).
"""
import argparse
import itertools
import os
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

if os.environ.get('TRITON_INTERPRET', '0') not in ('', '0'):
    sys.exit('check_triton_build: unset TRITON_INTERPRET (the interpreter compiles nothing)')

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

from dcn_plugin.ops.triton import deform_conv, roi_pool  # noqa: E402

_TRITON_DTYPE = {torch.float16: 'fp16', torch.bfloat16: 'bf16', torch.float32: 'fp32'}


@dataclass(frozen=True)
class KernelSpec:
    """One kernel: its pointer arguments (``None``: the data's dtype; else a fixed Triton type), its flags
    (constexpr booleans, every combination compiled), its launch configuration, and its float32 scalar
    arguments (the others are integers)."""
    name: str
    fn: object
    pointers: Dict[str, object]
    flags: Tuple[str, ...]
    config: deform_conv.LaunchConfig
    floats: Tuple[str, ...] = ()


KERNELS = (
    KernelSpec('conv_forward', deform_conv._conv_forward_kernel,
               {p: None for p in ('inp', 'off', 'msk', 'wgt', 'bias', 'out')}, ('HAS_MASK', 'HAS_BIAS'),
               deform_conv.FORWARD_CONFIG),
    KernelSpec('conv_weight_grad', deform_conv._conv_weight_grad_kernel,
               {p: None for p in ('gout', 'inp', 'off', 'msk', 'gw')}, ('HAS_MASK',),
               deform_conv.WEIGHT_GRAD_CONFIG),
    KernelSpec('conv_column_grad', deform_conv._conv_column_grad_kernel,
               {**{p: None for p in ('gout', 'inp', 'off', 'msk', 'wgt', 'goff', 'gmsk')}, 'gin': 'fp32'},
               ('HAS_MASK', 'NEED_INPUT', 'NEED_OFFSET', 'NEED_MASK'), deform_conv.COLUMN_GRAD_CONFIG),
    KernelSpec('roi_pool_forward', roi_pool._roi_pool_forward_kernel,
               {'inp': None, 'rois': 'fp32', 'off': None, 'out': None}, ('HAS_OFFSET',), roi_pool.ROI_POOL_CONFIG,
               ('spatial_scale', 'gamma')),
    KernelSpec('roi_pool_backward', roi_pool._roi_pool_backward_kernel,
               {'gout': None, 'inp': None, 'rois': 'fp32', 'off': None, 'gin': 'fp32', 'goff': None},
               ('HAS_OFFSET', 'NEED_INPUT', 'NEED_OFFSET'), roi_pool.ROI_POOL_CONFIG, ('spatial_scale', 'gamma')),
)


def ptxas_report(ptx: str, arch: int) -> Tuple[int, int, int]:
    """(registers, spill stores, spill loads) of the PTX's kernel, from ``ptxas -v``."""
    ptxas = triton.knobs.nvidia.ptxas.path
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / 'k.ptx'
        src.write_text(ptx)
        res = subprocess.run([ptxas, '-v', '--regAllocOptLevel=2', f'--gpu-name=sm_{arch}a' if arch >= 90
                              else f'--gpu-name=sm_{arch}', str(src), '-o', str(Path(tmp) / 'k.o')],
                             capture_output=True, text=True, check=True)
    log = res.stderr + res.stdout
    regs = re.search(r'Used (\d+) registers', log)
    spill = re.search(r'(\d+) bytes spill stores, (\d+) bytes spill loads', log)
    if regs is None or spill is None:
        raise RuntimeError(f'cannot read ptxas -v output:\n{log}')
    return int(regs.group(1)), int(spill.group(1)), int(spill.group(2))


def compile_one(spec: KernelSpec, dtype: torch.dtype, flags: Dict[str, bool], int_type: str, arch: int):
    cfg = spec.config
    constexprs = dict(flags, IDX_64=int_type == 'i64', DOT_FP32=False, PRECISION='tf32', BLOCK_P=cfg.block_p,
                      BLOCK_O=cfg.block_o, BLOCK_C=cfg.block_c)
    constexprs = {k: v for k, v in constexprs.items() if k in spec.fn.arg_names}
    signature, attrs = {}, {}
    for i, name in enumerate(spec.fn.arg_names):
        if name in spec.floats:
            signature[name] = 'fp32'
        elif name in constexprs:
            signature[name] = 'constexpr'
        elif name in spec.pointers:
            signature[name] = '*' + (spec.pointers[name] or _TRITON_DTYPE[dtype])
            attrs[(i,)] = [['tt.divisibility', 16]]  # torch's allocations are 16-byte aligned
        else:
            signature[name] = int_type
    target = GPUTarget('cuda', arch, 32)
    backend = triton.compiler.make_backend(target)
    launch = {'num_warps': cfg.num_warps, 'num_stages': cfg.num_stages}
    if cfg.maxnreg is not None:
        launch['maxnreg'] = cfg.maxnreg
    options = backend.parse_options(launch)
    kernel = triton.compile(ASTSource(spec.fn, signature, constexprs, attrs), target=target,
                            options=options.__dict__)
    regs, spill_st, spill_ld = ptxas_report(kernel.asm['ptx'], arch)
    return regs, spill_st, spill_ld, kernel.metadata.shared


def flag_combinations(spec: KernelSpec, quick: bool) -> List[Dict[str, bool]]:
    if quick:
        return [{f: True for f in spec.flags}]
    combos = []
    for values in itertools.product((False, True), repeat=len(spec.flags)):
        flags = dict(zip(spec.flags, values))
        # the column-gradient kernel is launched only when it has a gradient to make, and with a mask
        # gradient only where there is a mask
        if spec.name == 'conv_column_grad' and (not any(values[1:]) or (flags['NEED_MASK'] and
                                                                          not flags['HAS_MASK'])):
            continue
        # RoI pooling's backward: likewise, and an offset gradient only with offsets
        if spec.name == 'roi_pool_backward' and (not any(values[1:]) or (flags['NEED_OFFSET'] and
                                                                           not flags['HAS_OFFSET'])):
            continue
        combos.append(flags)
    return combos


def main(argv: Sequence[str] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--arch', type=int, nargs='+', default=[80, 90], help='compute capabilities (80 90)')
    parser.add_argument('--quick', action='store_true', help="only the flags' all-on combination")
    args = parser.parse_args(argv)
    print(f'triton {triton.__version__}, ptxas {triton.knobs.nvidia.ptxas.path}')
    header = f'{"kernel":<18} {"tiles P x O x C, warps, stages[, maxnreg]":<40} {"dtype":<9} {"ints":<4} {"sm":>3} ' \
             f'{"regs max":>8} {"spill B":>7} {"smem B max":>10} {"builds":>6}'
    print(header)
    print('-' * len(header))
    failed = 0
    t0 = time.time()
    for spec in KERNELS:
        cfg = spec.config
        tiles = f'{cfg.block_p}x{cfg.block_o}x{cfg.block_c}, {cfg.num_warps}, {cfg.num_stages}' + \
            ('' if cfg.maxnreg is None else f', {cfg.maxnreg}')
        for dtype in deform_conv.DTYPES:
            for int_type in ('i32', 'i64'):
                for arch in args.arch:
                    regs = spills = smem = builds = 0
                    worst = ''
                    for flags in flag_combinations(spec, args.quick):
                        try:
                            r, st, ld, sh = compile_one(spec, dtype, flags, int_type, arch)
                        except Exception as e:  # a compile error fails the check, with its message
                            print(f'FAILED to compile {spec.name} {dtype} {int_type} sm_{arch} {flags}: {e}')
                            failed += 1
                            continue
                        builds += 1
                        regs, smem = max(regs, r), max(smem, sh)
                        if st + ld:
                            spills += st + ld
                            worst = ' SPILLS with ' + ','.join(k for k, v in flags.items() if v)
                    print(f'{spec.name:<18} {tiles:<40} {str(dtype)[6:]:<9} {int_type:<4} {arch:>3} {regs:>8} '
                          f'{spills:>7} {smem:>10} {builds:>6}{worst}', flush=True)
                    failed += spills > 0
    print(f'compiled in {time.time() - t0:.0f} s')
    if failed:
        print(f'check_triton_build: FAILED ({failed} spilling or failed builds)')
        return 1
    print('check_triton_build: ok, no kernel spills')
    return 0


if __name__ == '__main__':
    sys.exit(main())
