"""Build the compiled operator library ``dcn_plugin._C`` and ship the configs with the package.

The package metadata (name, version, requirements, extras) is in ``pyproject.toml``; this file holds
only what has to be code:

* the extension: the C++ (CPU) kernels are always built; the CUDA kernels too when a CUDA toolkit is
  found and either a GPU is visible or ``FORCE_CUDA=1`` is set. ``TORCH_CUDA_ARCH_LIST`` and
  ``MAX_JOBS`` are honoured (through torch.utils.cpp_extension). ``_C`` holds no pybind module: it
  registers its operators with ``TORCH_LIBRARY`` and is loaded with ``torch.ops.load_library``;
* the configs, installed mim-style as ``dcn_plugin/.mim/configs`` (with ``model-index.yml``), so that a
  user's config can inherit ``_base_ = 'dcn_plugin::dcn/<name>.py'``: copied into wheels and regular
  installs, linked to the checkout for editable installs (edits show at once).

    pip install --no-build-isolation .          # or -e . for an editable install
    FORCE_CUDA=1 TORCH_CUDA_ARCH_LIST="8.0;9.0" pip install --no-build-isolation .
"""
import glob
import importlib.util
import os
import shutil
import sys

import torch
from setuptools import setup
from setuptools.command.build_py import build_py
from torch.utils import cpp_extension

ROOT = os.path.dirname(os.path.abspath(__file__))
CSRC = os.path.join('dcn_plugin', 'ops', 'csrc')
#: what goes under dcn_plugin/.mim (mmengine looks for '<package>/.mim/configs' and the model index there)
MIM_FILES = ('configs', 'model-index.yml')


def source_digest() -> str:
    """The digest the package checks the library against at import (dcn_plugin/extension.py)."""
    path = os.path.join(ROOT, 'dcn_plugin', 'extension.py')
    spec = importlib.util.spec_from_file_location('_dcn_library', path)
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
    # -g0: Python's own CFLAGS ask for debug info, which triples the library's size and adds to every compile
    extra = {'cxx': ['-O3', '-g0', cpp_std, '-fno-math-errno']}
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


def _remove(path: str) -> None:
    if os.path.islink(path) or os.path.isfile(path):
        os.remove(path)
    elif os.path.isdir(path):
        shutil.rmtree(path)


def install_mim_files(mim_dir: str, link: bool) -> None:
    """Put :data:`MIM_FILES` under ``mim_dir``: relative symbolic links to the checkout (``link``; copies
    where the system has no symbolic links) or copies."""
    os.makedirs(mim_dir, exist_ok=True)
    for name in MIM_FILES:
        src, dst = os.path.join(ROOT, name), os.path.join(mim_dir, name)
        _remove(dst)
        if link and hasattr(os, 'symlink') and sys.platform != 'win32':
            os.symlink(os.path.relpath(src, mim_dir), dst)
        elif os.path.isdir(src):
            shutil.copytree(src, dst, ignore=shutil.ignore_patterns('__pycache__', '*.pyc'))
        else:
            shutil.copyfile(src, dst)


class BuildPyWithMim(build_py):
    """``build_py`` that also installs the configs under ``dcn_plugin/.mim``: linked in the checkout for an
    editable install, copied into the build folder (hence into the wheel) otherwise."""

    def run(self) -> None:
        super().run()
        if self.editable_mode:
            install_mim_files(os.path.join(ROOT, 'dcn_plugin', '.mim'), link=True)
        else:
            install_mim_files(os.path.join(self.build_lib, 'dcn_plugin', '.mim'), link=False)


setup(
    ext_modules=extensions(),
    cmdclass={'build_ext': cpp_extension.BuildExtension.with_options(no_python_abi_suffix=True),
              'build_py': BuildPyWithMim},
    options={'bdist_wheel': {'py_limited_api': 'cp310'}},
)
