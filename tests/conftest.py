import os
import tempfile

import pytest
import torch

# Where no GPU is, the Triton kernels (tests/test_ops/test_triton_*.py) run in Triton's interpreter on CPU
# tensors. Triton reads the switch when a function is defined, its own library's included, so it is set
# before anything imports triton (importing torch does not; importing dcn_plugin can, through torch); with
# a GPU they are compiled and run on it.
if not torch.cuda.is_available():
    os.environ.setdefault('TRITON_INTERPRET', '1')

from dcn_plugin.extension import source_digest  # noqa: E402

# Inductor's on-disk cache does not key on a custom op's Meta kernel: code compiled against an older
# version of our op (other output strides, say) would be reused and fail. Key the tests' cache on the
# op's sources instead (kept across runs while they are unchanged).
os.environ.setdefault('TORCHINDUCTOR_CACHE_DIR',
                      os.path.join(tempfile.gettempdir(), f'torchinductor_dcn_plugin_{source_digest()}'))

# keep the op tests reproducible and the 2-core CI machine responsive
torch.set_num_threads(int(os.environ.get('DCN_TEST_THREADS', '2')))


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason='needs a CUDA GPU')
    for item in items:
        # the marker itself: item.keywords also holds the names of the parent folders (a checkout in a
        # folder named cuda would skip every test)
        if item.get_closest_marker('cuda') is not None:
            item.add_marker(skip)
