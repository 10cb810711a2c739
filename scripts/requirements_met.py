"""Exit 0 when every named distribution is installed in a version the spec allows, 1 otherwise.

    python scripts/requirements_met.py 'torch;==2.14.1' numpy 'setuptools;>=77,<81'

Each argument is a distribution name, optionally followed by ``;`` and a version specifier (PEP 440; a
local version label such as ``+cu130`` is ignored). ``scripts/setup_env.sh`` asks it what to install.
Needs ``packaging``. ``-v`` prints the first requirement that is not met.
"""
import sys
from importlib.metadata import PackageNotFoundError, version
from typing import Optional, Sequence

from packaging.specifiers import SpecifierSet


def unmet(requirement: str) -> Optional[str]:
    """Why ``requirement`` (``name`` or ``name;specifier``) is not met, or ``None`` when it is."""
    name, _, spec = requirement.partition(';')
    try:
        installed = version(name)
    except PackageNotFoundError:
        return f'{name} is not installed'
    if spec and installed.split('+')[0] not in SpecifierSet(spec):
        return f'{name} {installed} does not satisfy {spec}'
    return None


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    verbose = '-v' in args
    for requirement in (a for a in args if a != '-v'):
        reason = unmet(requirement)
        if reason is not None:
            if verbose:
                print(reason, file=sys.stderr)
            return 1
    return 0


if __name__ == '__main__':
    sys.exit(main())
