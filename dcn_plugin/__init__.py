"""dcn_plugin: Deformable ConvNets v2 for MMDetection 3.x on its own PyTorch custom operator.

Importing the package registers everything: the ``torch.ops.dcn_plugin`` operators, the
``'MDConv'`` / ``'DConv'`` conv layers in mmengine's ``MODELS`` (when mmengine is installed) and the
backbones, necks, norm layers and training hooks in mmdet's / mmengine's registries (when mmdet is
installed). With mmengine installed it also makes every checkpoint path and URL scheme mmengine
loads (local files, ``https://``, ``torchvision://``, ``open-mmlab://``, ...) go through the
restricted ``weights_only`` unpickler (:mod:`dcn_plugin.utils.checkpoint`) and lets configs inherit this
package's configs by package scope (``_base_ = 'dcn_plugin::dcn/<config>.py'``,
:mod:`dcn_plugin.utils.compat`). The operator and its modules need nothing but torch. The version is
``dcn_plugin.__version__`` (:mod:`dcn_plugin.version`).
"""
import importlib.util

from . import ops  # noqa: F401  (registers torch.ops.dcn_plugin.*)
from .ops import (  # noqa: F401  # noqa: F401
    DeformConv2d,
    DeformConv2dPack,
    DeformRoIPool,
    DeformRoIPoolPack,
    ModulatedDeformConv2d,
    ModulatedDeformConv2dPack,
    ModulatedDeformRoIPoolPack,
    deform_conv2d,
    deform_roi_pool,
    modulated_deform_conv2d,
)
from .version import __version__, version_info  # noqa: F401

if importlib.util.find_spec('mmengine') is not None:
    from .utils.compat import install_into_mmengine
    install_into_mmengine()  # the one change to mmengine: the restricted checkpoint loader and the config scope
if importlib.util.find_spec('mmdet') is not None and importlib.util.find_spec('mmcv') is not None:
    from . import engine, models  # noqa: F401  (register the hooks, backbones, necks, heads and norm layers)
if importlib.util.find_spec('mmdet') is not None:
    from . import datasets  # noqa: F401

__all__ = ['ops', 'modulated_deform_conv2d', 'deform_conv2d', 'ModulatedDeformConv2d',
           'ModulatedDeformConv2dPack', 'DeformConv2d', 'DeformConv2dPack', '__version__', 'deform_roi_pool',
           'DeformRoIPool', 'DeformRoIPoolPack', 'ModulatedDeformRoIPoolPack']
