"""The op benchmark's former name: ``python tools/benchmark_op.py ARGS`` runs ``tools/benchmark.py op ARGS``."""
import importlib.util
import os
import sys
from typing import Optional, Sequence

_spec = importlib.util.spec_from_file_location('dcn_benchmark_tool',
                                               os.path.join(os.path.dirname(os.path.abspath(__file__)), 'benchmark.py'))
benchmark = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(benchmark)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``benchmark.main(['op', *argv])``."""
    return benchmark.main(['op', *(sys.argv[1:] if argv is None else argv)])


if __name__ == '__main__':
    sys.exit(main())
