"""Build and install dcn_plugin and its compiled operator library ``dcn_plugin._C``.

The C++ (CPU) kernels are always built. The CUDA kernels are built as well when a CUDA toolkit is
found and either a GPU is visible or ``FORCE_CUDA=1`` is set. ``TORCH_CUDA_ARCH_LIST`` and
``MAX_JOBS`` are honoured (through torch.utils.cpp_extension). ``_C`` holds no pybind module: it
registers its operators with ``TORCH_LIBRARY`` and is loaded with ``torch.ops.load_library``.

    pip install --no-build-isolation -e .
    FORCE_CUDA=1 TORCH_CUDA_ARCH_LIST="8.0;9.0" pip install --no-build-isolation -e .
"""
import glob
import importlib.util
import os
import sys

from setuptools import find_packages, setup

import torch
from torch.utils import cpp_extension

ROOT = os.path.dirname(os.path.abspath(__file__))
CSRC = os.path.join('dcn_plugin', 'ops', 'csrc')


def source_digest() -> str:
    """The digest the package checks the library against at import (dcn_plugin/ops/_library.py)."""
    spec = importlib.util.spec_from_file_location('_dcn_library', os.path.join(ROOT, 'dcn_plugin', 'ops', '_library.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.source_digest()


def want_cuda() -> bool:
    if cpp_extension.CUDA_HOME is None or torch.version.cuda is None:
        if os.getenv('FORCE_CUDA', '0') == '1':
            print('setup.py: FORCE_CUDA=1 but no CUDA toolkit (CUDA_HOME) or CUDA build of torch was '
                  'found; building the CPU kernels only', file=sys.stderr)
        return False
    return torch.cuda.is_available() or os.getenv('FORCE_CUDA', '0') == '1'


def extensions():
    cpp_std = '-std=c++20'  # torch >= 2.10 headers require C++20
    sources = sorted(glob.glob(os.path.join(CSRC, '*.cpp')) + glob.glob(os.path.join(CSRC, 'cpu', '*.cpp')))
    # (torch adds Py_LIMITED_API for py_limited_api=True)
    define_macros = [('DCN_SOURCE_DIGEST', source_digest())]  # hex digits, stringised in ops.cpp
    extra = {'cxx': ['-O3', cpp_std, '-fno-math-errno']}
    ext_cls = cpp_extension.CppExtension
    if want_cuda():
        ext_cls = cpp_extension.CUDAExtension
        sources += sorted(glob.glob(os.path.join(CSRC, 'cuda', '*.cu')))
        define_macros.append(('WITH_CUDA', None))
        extra['nvcc'] = ['-O3', cpp_std, '--expt-relaxed-constexpr', '-lineinfo']
        if os.getenv('NVCC_THREADS'):
            extra['nvcc'].append(f'--threads={os.environ["NVCC_THREADS"]}')
    if sys.platform != 'win32':
        extra['cxx'].append('-fopenmp')
    return [ext_cls('dcn_plugin._C', sources, include_dirs=[os.path.join(ROOT, CSRC)],
                    define_macros=define_macros, extra_compile_args=extra,
                    extra_link_args=['-fopenmp'] if sys.platform != 'win32' else [],
                    py_limited_api=True)]


setup(
    name='dcn_plugin',
    version='0.1.0',
    description='Deformable ConvNets v2 for MMDetection 3.x on its own PyTorch custom operator',
    packages=find_packages(include=['dcn_plugin', 'dcn_plugin.*']),
    package_data={'dcn_plugin': ['ops/csrc/**/*']},
    python_requires='>=3.10',
    install_requires=['torch>=2.6'],
    # ONNX export (dcn_plugin.deploy, tools/export_onnx.py): pip install '.[deploy]'. Lower bounds are the
    # versions tested; onnxruntime runs the standard DeformConv on the CPU in those releases.
    extras_require={'deploy': ['onnx>=1.23', 'onnxscript>=0.7', 'onnxruntime>=1.32']},
    ext_modules=extensions(),
    cmdclass={'build_ext': cpp_extension.BuildExtension.with_options(no_python_abi_suffix=True)},
    options={'bdist_wheel': {'py_limited_api': 'cp310'}},
)
