"""The deformable convolution operators (``torch.ops.dcn_plugin.*``), functions and modules."""
from ..extension import has_cuda_kernels
from .functional import deform_conv2d, modulated_deform_conv2d
from .modules import DeformConv2d, DeformConv2dPack, ModulatedDeformConv2d, ModulatedDeformConv2dPack
from .roi_pool import deform_roi_pool
from .roi_pool_modules import DeformRoIPool, DeformRoIPoolPack, ModulatedDeformRoIPoolPack

__all__ = ['modulated_deform_conv2d', 'deform_conv2d', 'ModulatedDeformConv2d', 'ModulatedDeformConv2dPack',
           'DeformConv2d', 'DeformConv2dPack', 'has_cuda_kernels', 'deform_roi_pool', 'DeformRoIPool',
           'DeformRoIPoolPack', 'ModulatedDeformRoIPoolPack']
