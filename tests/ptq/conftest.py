"""One torch thread for these tests.

On the shared 2-core host, two intra-op threads of tiny-model ops spin-wait on each other whenever
the other core is busy: a tiny LRQ run takes ~30 s instead of ~0.5 s. Restored after each test.
"""

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
