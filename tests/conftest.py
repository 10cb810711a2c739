import os

import pytest
import torch

# keep the op tests reproducible and the 2-core CI machine responsive
torch.set_num_threads(int(os.environ.get('DCN_TEST_THREADS', '2')))


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason='needs a CUDA GPU')
    for item in items:
        if 'cuda' in item.keywords:
            item.add_marker(skip)
