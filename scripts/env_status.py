"""The state of the project environment, as shell assignments for ``scripts/setup_env.sh``.

One Python start answers every question the set-up script asks (each start imports torch, mmcv or mmdet
again, which costs seconds), so a set-up with nothing to do stays quick:

    eval "$(python scripts/env_status.py --mmcv lite --mmcv-version 2.1.0 --ext-src compat/mmcv_ext/mmcv/_ext.py \
        -- 'torch;==2.14.1' numpy ...)"

Prints, each 0 or 1: ``REQS_MET`` (every requirement after ``--``, ``name`` or ``name;specifier``, is
installed in an allowed version; a local version label such as ``+cu130`` is ignored), ``GPU_VISIBLE``,
``MMCV_OK`` (mmcv of that version imports ``mmcv.ops``; for ``lite``, its ``mmcv._ext`` is the file
``--ext-src``; for ``full``, a compiled one), ``EXT_OK`` (``dcn_plugin/_C`` loads and was built from the
current sources), ``INSTALL_OK`` (the installed dcn_plugin is this checkout's version, its configs linked
under ``.mim``) and ``STACK_OK`` (``dcn_plugin``, ``mmcv.ops`` and ``mmdet.models`` import together).
"""
import argparse
import filecmp
import importlib
import os
import sys
from typing import Callable, Dict, List, Optional


def unmet(requirement: str) -> Optional[str]:
    """Why ``requirement`` (``name`` or ``name;specifier``) is not met, or ``None`` when it is."""
    from importlib.metadata import PackageNotFoundError, version

    from packaging.specifiers import SpecifierSet
    name, _, spec = requirement.partition(';')
    try:
        installed = version(name)
    except PackageNotFoundError:
        return f'{name} is not installed'
    if spec and installed.split('+')[0] not in SpecifierSet(spec):
        return f'{name} {installed} does not satisfy {spec}'
    return None


def _ok(check: Callable[[], bool]) -> int:
    try:
        return int(bool(check()))
    except Exception:  # noqa: BLE001  (whatever fails to import or compare means "not in place")
        return 0


def status(reqs: List[str], mmcv_mode: str, mmcv_version: str, ext_src: Optional[str], root: str) -> Dict[str, int]:
    out = {'REQS_MET': int(all(unmet(r) is None for r in reqs))}
    out['GPU_VISIBLE'] = _ok(lambda: importlib.import_module('torch').cuda.is_available())

    def mmcv_ok() -> bool:
        mmcv = importlib.import_module('mmcv')
        importlib.import_module('mmcv.ops')
        ext = importlib.import_module('mmcv._ext')
        if mmcv.__version__ != mmcv_version:
            return False
        if mmcv_mode == 'lite':
            return ext.__file__.endswith('.py') and filecmp.cmp(ext.__file__, ext_src, shallow=False)
        return not ext.__file__.endswith('.py')

    out['MMCV_OK'] = _ok(mmcv_ok)

    def ext_ok() -> bool:
        # the library next to the sources, loaded without importing the package (which needs mmcv and mmdet)
        import glob
        import importlib.util
        torch = importlib.import_module('torch')
        libs = glob.glob(os.path.join(root, 'dcn_plugin', '_C*.so'))
        spec = importlib.util.spec_from_file_location('_dcn_library', os.path.join(root, 'dcn_plugin',
                                                                                   'extension.py'))
        library = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(library)
        if len(libs) != 1:
            return False
        torch.ops.load_library(libs[0])
        return torch.ops.dcn_plugin._source_digest() == library.source_digest()

    out['EXT_OK'] = _ok(ext_ok)

    def install_ok() -> bool:
        from importlib import metadata
        version = importlib.import_module('dcn_plugin.version').__version__
        return metadata.version('dcn_plugin') == version and os.path.exists(
            os.path.join(root, 'dcn_plugin', '.mim', 'configs'))

    out['INSTALL_OK'] = _ok(install_ok)
    out['STACK_OK'] = _ok(lambda: all(importlib.import_module(m) for m in ('dcn_plugin', 'mmcv.ops', 'mmdet.models')))
    return out


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--mmcv', choices=('lite', 'full'), required=True, help='which mmcv set-up is wanted')
    parser.add_argument('--mmcv-version', required=True)
    parser.add_argument('--ext-src', help="the stand-in's source file (lite)")
    parser.add_argument('--root', default=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    parser.add_argument('reqs', nargs='*', help="requirements, 'name' or 'name;specifier'")
    args = parser.parse_args(argv)
    for key, value in status(args.reqs, args.mmcv, args.mmcv_version, args.ext_src, args.root).items():
        print(f'{key}={value}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
