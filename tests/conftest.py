"""Test-session setup shared by every test module.

Without a CUDA device, the Triton kernels run in Triton's CPU interpreter. TRITON_INTERPRET must be
set before any kernel is decorated (at the import of ``longseq.kernels.triton_ops``), so it is set
here, before any test module imports anything. It changes nothing else: the default backend on
CPU tensors stays the pure-PyTorch one unless a call asks for backend="triton".
"""
import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
