"""The package version, written here and nowhere else.

``pyproject.toml`` reads it for the distribution's metadata (``[tool.setuptools.dynamic]``, without
importing the package) and :mod:`dcn_plugin` re-exports it as ``dcn_plugin.__version__``.
"""
import re
from typing import Tuple, Union

__version__ = '0.2.0'
short_version = __version__


def parse_version_info(version_str: str) -> Tuple[Union[int, str], ...]:
    """``'0.2.0'`` -> ``(0, 2, 0)``; a pre-release part stays a string: ``'1.0.0rc1'`` -> ``(1, 0, 0, 'rc1')``.

    Args:
        version_str: a version ``MAJOR.MINOR.PATCH[suffix]``.

    Returns:
        The numeric parts as ints, followed by the suffix (if any) as a string.
    """
    info = []
    for part in version_str.split('.'):
        number, suffix = re.match(r'(\d*)(.*)', part).groups()
        if number:
            info.append(int(number))
        if suffix:
            info.append(suffix)
    return tuple(info)


version_info = parse_version_info(__version__)

__all__ = ['__version__', 'short_version', 'version_info', 'parse_version_info']
