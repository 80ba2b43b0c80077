"""Unit tests run torch on one intra-op thread: tiny tensors on a shared 2-core machine are over 10x slower with
two contending OpenMP threads. Restored after each test."""

import uuid

import fsspec
import pytest
import torch


@pytest.fixture(autouse=True)
def _one_torch_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(params=["local", "memory"])
def root(request, tmp_path):
    """Where a test writes a set: a local folder, then a fresh folder on fsspec's memory filesystem."""
    if request.param == "local":
        yield str(tmp_path / "set")
    else:
        path = f"memory://srel-unit-{uuid.uuid4().hex}/set"
        yield path
        fs, p = fsspec.core.url_to_fs(path)
        if fs.exists(p):
            fs.rm(p, recursive=True)
