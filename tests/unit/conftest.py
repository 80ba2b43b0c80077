"""Unit tests run torch on one intra-op thread: tiny tensors on a shared 2-core machine are over 10x slower with
two contending OpenMP threads. Restored after each test."""

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_torch_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
