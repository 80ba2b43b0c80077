"""Settings every tier shares, and the tiers themselves.

Ray reads the environment at ``ray.init``, so it is set here, before any test starts Ray. Everything under
tests/integration (the shared local Ray cluster, end-to-end runs at tiny budgets) is marked ``integration``, so
``pytest -m "not integration"`` is the fast tier.
"""

import os
from pathlib import Path

import pytest

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.2")
os.environ.setdefault("RAY_TRAIN_ENABLE_STATE_ACTOR_RECONCILIATION", "0")
# As srel_ray's start_ray sets it for the local clusters it starts: the session cluster is one such.
os.environ.setdefault("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")
os.environ.setdefault("RAY_TRAIN_METRICS_ENABLED", "0")
os.environ.setdefault("RAY_DATA_PARQUET_FOOTER_NUM_ACTORS", "1")  # as start_ray sets it for a local cluster
os.environ.setdefault("TQDM_DISABLE", "1")

INTEGRATION = Path(__file__).parent / "integration"
SHARED_CIFAR10 = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "cifar10"

needs_shared_cifar10 = pytest.mark.skipif(
    not (SHARED_CIFAR10 / "train.parquet").exists(),
    reason=f"needs the shared CIFAR-10 copy at {SHARED_CIFAR10} (../shared beside the checkout)")


def pytest_collection_modifyitems(config, items):
    for item in items:
        if INTEGRATION in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.integration)
