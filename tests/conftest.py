"""Test-session setup shared by every test module.

Without a CUDA device, the Triton kernels run in Triton's CPU interpreter. TRITON_INTERPRET must be
set before any kernel is decorated (at the import of ``longseq.kernels.triton_ops``), so it is set
here, before any test module imports anything. It changes nothing else: the default backend on
CPU tensors stays the pure-PyTorch one unless a call asks for backend="triton".
"""
import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture
def one_torch_thread():
    """Run a test with one intra-op torch thread, then restore the setting.

    For modules whose work is many small ops (token-by-token decoding, dataloader-worker code):
    a second OpenMP thread only adds synchronisation, and on a busy 2-core machine it makes such
    ops 10-400x slower. Modules opt in with ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
