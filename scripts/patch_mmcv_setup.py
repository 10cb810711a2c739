"""Patch mmcv 2.1.0's setup.py so it builds on current setuptools and torch.

Two changes, both mechanical:

* ``pkg_resources`` (gone from recent setuptools) is replaced by ``importlib.metadata`` and
  ``packaging.version`` equivalents of the three names mmcv imports from it;
* every ``-std=c++14`` / ``-std=c++17`` (and MSVC ``/std:``) becomes C++20, which torch >= 2.10's
  headers require.

Usage: python scripts/patch_mmcv_setup.py PATH/TO/mmcv-2.1.0/setup.py
"""
import re
import sys
from pathlib import Path

SHIM = '''from importlib.metadata import PackageNotFoundError as DistributionNotFound
from importlib.metadata import distribution as get_distribution
from packaging.version import parse as parse_version
'''
PKG_RESOURCES_IMPORT = 'from pkg_resources import DistributionNotFound, get_distribution, parse_version\n'


def patch(text: str) -> str:
    if PKG_RESOURCES_IMPORT not in text:
        raise SystemExit('patch_mmcv_setup: the pkg_resources import was not found; '
                         'is this mmcv 2.1.0\'s setup.py?')
    text = text.replace(PKG_RESOURCES_IMPORT, SHIM)
    text, n = re.subn(r'([-/]std[=:])c\+\+1[47]', r'\1c++20', text)
    if n == 0:
        raise SystemExit('patch_mmcv_setup: no C++ standard flag found to raise to C++20')
    return text


def main() -> None:
    if len(sys.argv) != 2:
        raise SystemExit(__doc__)
    path = Path(sys.argv[1])
    path.write_text(patch(path.read_text()))


if __name__ == '__main__':
    main()
