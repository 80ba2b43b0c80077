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


@pytest.fixture(scope="session")
def labelled_run(tmp_path_factory):
    """A tiny run folder (untrained teacher, IPC 1, 2 label epochs) whose condensed and random-real sets are
    labelled, made in process once: (config, dataset, RunDir). Tests add outputs to it, never change its sets."""
    from srel_ray.stages import recover, relabel
    from srel_ray.stages.base import StageContext
    from srel_ray.stages.local import InProcessExecutor
    from srel_ray.tracking import Tracker
    from tests.unit.test_stages_in_process import _run_with_teacher

    cfg, data, run = _run_with_teacher(tmp_path_factory.mktemp("labelled"))
    ctx = StageContext(cfg, run, data, InProcessExecutor(start_data=lambda: data), Tracker(False))
    recover.run(ctx)
    relabel.run(ctx)
    return cfg, data, run
