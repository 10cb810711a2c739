"""Package-scoped config paths (``'mmdet::...'``, ``'dcn_plugin::...'``) in every environment.

mmengine 0.10 resolves ``_base_ = '<package>::<path>'`` as ``<installed package>/.mim/configs/<path>``
and

* accepts only the packages of its own list (``MODULE2PACKAGE``): :func:`patch_mmengine_package_utils`
  adds ``dcn_plugin``, whose configs setup.py installs under ``dcn_plugin/.mim``;
* finds the installed folder through ``pkg_resources`` as ``<distribution location>/<package>``, which
  is wrong for editable installs (the location is site-packages, the code is in the checkout) and fails
  where ``pkg_resources`` is gone (setuptools >= 81): :func:`get_installed_path` asks the import
  system where the package is instead, and :func:`is_installed` needs no ``pkg_resources``.

Importing :mod:`dcn_plugin` applies the patch when mmengine is installed (:func:`install_into_mmengine`, with the
restricted checkpoint loader); it is idempotent.
"""
import importlib.util
import os.path as osp
from importlib import metadata

__all__ = ['install_into_mmengine', 'patch_mmengine_package_utils', 'is_installed', 'get_installed_path',
           'CONFIG_SCOPE', 'mmcv_has_compiled_ops']

#: the package scope of this package's configs: ``_base_ = 'dcn_plugin::dcn/<config>.py'``
CONFIG_SCOPE = 'dcn_plugin'

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
    """Folder of the installed package's top-level module (what mmengine looks for ``.mim`` in): where
    Python imports it from, so an editable install gives its checkout."""
    module = _module_name(package)
    spec = importlib.util.find_spec(module) or importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        raise metadata.PackageNotFoundError(package)
    return osp.dirname(spec.origin)


def patch_mmengine_package_utils() -> bool:
    """Register ``dcn_plugin`` as a config scope and give mmengine's config loader :func:`get_installed_path`
    (and :func:`is_installed` where ``pkg_resources`` is missing).

    Returns:
        True (the patch is in place after the call).
    """
    global _PATCHED
    if _PATCHED:
        return True
    import mmengine.config.config as config_mod
    import mmengine.config.utils as config_utils
    import mmengine.utils as utils_mod
    import mmengine.utils.package_utils as pkg_mod
    config_utils.MODULE2PACKAGE.setdefault(CONFIG_SCOPE, CONFIG_SCOPE)
    without_pkg_resources = importlib.util.find_spec('pkg_resources') is None
    for mod in (config_mod, utils_mod, pkg_mod):
        mod.get_installed_path = get_installed_path
        if without_pkg_resources:
            mod.is_installed = is_installed
    _PATCHED = True
    return True


def install_into_mmengine() -> None:
    """Everything ``import dcn_plugin`` changes in mmengine, in one place: every checkpoint path and URL scheme
    loads through the restricted unpickler (:func:`dcn_plugin.utils.checkpoint.install_checkpoint_loaders`), and
    configs can inherit ``'dcn_plugin::'`` (and ``'mmdet::'``) base configs (:func:`patch_mmengine_package_utils`).
    Idempotent."""
    from .checkpoint import install_checkpoint_loaders
    install_checkpoint_loaders()
    patch_mmengine_package_utils()


def mmcv_has_compiled_ops() -> bool:
    """Whether the installed mmcv has its own compiled operators (``mmcv._ext`` an extension module), as
    opposed to none or the pure-Python ``mmcv._ext`` of ``compat/mmcv_ext`` that runs mmcv's layers on
    torchvision and this package's operators (comparing against that would compare us with ourselves)."""
    try:
        spec = importlib.util.find_spec('mmcv._ext')
    except (ImportError, ValueError):
        return False
    return spec is not None and spec.origin is not None and not spec.origin.endswith('.py')
