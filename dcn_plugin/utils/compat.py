"""Compatibility fixes for the OpenMMLab stack on current Python packaging.

mmengine 0.10.x resolves ``'mmdet::...'`` base configs with ``pkg_resources``, which setuptools
removed in version 81. Where ``pkg_resources`` is missing, :func:`patch_mmengine_package_utils`
gives mmengine's config loader ``importlib.metadata`` based equivalents of ``is_installed`` and
``get_installed_path``; where it exists nothing changes.
"""
import importlib.util
import os.path as osp
from importlib import metadata

__all__ = ['patch_mmengine_package_utils']

_PATCHED = False


def _module_name(package: str) -> str:
    try:
        top = metadata.distribution(package).read_text('top_level.txt')
    except metadata.PackageNotFoundError:
        top = None
    if top:
        return top.split()[0]
    return package.replace('-', '_')


def is_installed(package: str) -> bool:
    """Whether ``package`` (a distribution or module name) is installed."""
    try:
        metadata.distribution(package)
        return True
    except metadata.PackageNotFoundError:
        spec = importlib.util.find_spec(package)
        return spec is not None and spec.origin is not None


def get_installed_path(package: str) -> str:
    """Folder of the installed package's top-level module (what mmengine looks for ``.mim`` in)."""
    module = _module_name(package)
    spec = importlib.util.find_spec(module) or importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        raise metadata.PackageNotFoundError(package)
    return osp.dirname(spec.origin)


def patch_mmengine_package_utils() -> bool:
    """Install the fallbacks into mmengine when ``pkg_resources`` is unavailable; True if patched."""
    global _PATCHED
    if _PATCHED:
        return True
    if importlib.util.find_spec('pkg_resources') is not None:
        return False
    import mmengine.config.config as config_mod
    import mmengine.utils as utils_mod
    import mmengine.utils.package_utils as pkg_mod
    for mod in (config_mod, utils_mod, pkg_mod):
        mod.is_installed = is_installed
        mod.get_installed_path = get_installed_path
    _PATCHED = True
    return True
