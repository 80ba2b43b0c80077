"""One local Ray cluster for the whole session (2 CPUs, 2 logical GPUs to test placement without hardware), and a
tiny-budget config on the digits set that every integration test starts from."""

from pathlib import Path

import pytest

TINY = [
    "teacher.epochs=2",
    "recover.iterations=4",
    "relabel.epochs=2",
    "evaluate.epochs=2",
    "evaluate.eval_interval=1",
    "resources.use_gpu=false",  # the cluster declares logical GPUs; only placement tests ask for them
]


def as_args(overrides: list[str]) -> list[str]:
    return [arg for item in overrides for arg in ("--set", item)]


@pytest.fixture(scope="session")
def ray_cluster():
    import ray

    ray.init(num_cpus=2, num_gpus=2, include_dashboard=False, logging_level="ERROR")
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def mlflow_uri(tmp_path_factory) -> str:
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"


@pytest.fixture
def tiny(mlflow_uri) -> list[str]:
    """CLI arguments: the quickstart config at a tiny budget, with MLflow in a temporary store."""
    return as_args(TINY + [f"tracking.tracking_uri={mlflow_uri}"])


@pytest.fixture(scope="session")
def quickstart_run(ray_cluster, mlflow_uri, tmp_path_factory) -> Path:
    """One finished tiny quickstart, shared by the tests that inspect its outputs or reuse its teacher."""
    from srel_ray.cli import main

    out = tmp_path_factory.mktemp("runs") / "quick"
    assert main(["quickstart", "--out", str(out), *as_args(TINY + [f"tracking.tracking_uri={mlflow_uri}"])]) == 0
    return out
