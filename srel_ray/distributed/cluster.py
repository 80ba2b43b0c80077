"""Starting or joining a Ray cluster, and the resource decisions every Ray role shares."""

from __future__ import annotations

import logging
import os

import ray

from srel_ray.config import ResourcesConfig
from srel_ray.errors import ConfigError

log = logging.getLogger(__name__)


def start_ray(res: ResourcesConfig) -> None:
    """Join ``res.ray_address`` (or $RAY_ADDRESS), else start a local cluster; reuse one already joined."""
    if ray.is_initialized():
        return
    # A local single-user cluster needs no token; a cluster we join keeps whatever auth it was started with.
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    # Without the dashboard, Train's state-actor reconciliation only logs failed state-API queries.
    os.environ.setdefault("RAY_TRAIN_ENABLE_STATE_ACTOR_RECONCILIATION", "0")
    kwargs: dict = {"logging_level": logging.WARNING, "log_to_driver": True}
    address = res.ray_address or os.environ.get("RAY_ADDRESS")  # a submitted Ray job joins its cluster
    if address is None:
        # The dashboard serves the state API that Ray Train's placement-group cleaner polls. "local" starts a new
        # cluster even where a `ray start` (perhaps long dead) left its address in /tmp/ray/ray_current_cluster.
        # Its processes share the driver's fate: a driver killed with SIGKILL takes them along.
        address = "local"
        kwargs.update(num_cpus=res.num_cpus, include_dashboard=True)
    ray.init(address=address, **kwargs)
    log.info("ray cluster resources: %s", ray.cluster_resources())


def resolve_use_gpu(res: ResourcesConfig) -> bool:
    """``use_gpu: null`` means: use GPUs when the cluster has any. Asking for GPUs it lacks is an error."""
    gpus = ray.cluster_resources().get("GPU", 0)
    if res.use_gpu is None:
        return gpus > 0
    if res.use_gpu and gpus == 0:
        raise ConfigError("resources.use_gpu is true but the Ray cluster has no GPUs; set it to false or null")
    return res.use_gpu


def actor_resources(res: ResourcesConfig, use_gpu: bool) -> dict:
    """Ray resource request for one recover or relabel actor; refuses requests no node could ever meet."""
    request = {"num_cpus": res.cpus_per_actor, "num_gpus": res.gpus_per_actor if use_gpu else 0}
    nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
    fits = any(n.get("CPU", 0) >= request["num_cpus"] and n.get("GPU", 0) >= request["num_gpus"] for n in nodes)
    if not fits:
        raise ConfigError(f"no node can host an actor asking for {request['num_cpus']} CPU and "
                          f"{request['num_gpus']} GPU (resources.cpus_per_actor, resources.gpus_per_actor); "
                          f"nodes have {[{k: n.get(k, 0) for k in ('CPU', 'GPU')} for n in nodes]}")
    return request


def worker_identity() -> dict:
    """Where the calling Ray worker runs and which GPUs it was given (for logs and placement checks)."""
    ctx = ray.get_runtime_context()
    return {"node_id": ctx.get_node_id(), "pid": os.getpid(), "gpu_ids": [str(g) for g in ray.get_gpu_ids()],
            "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES", "")}


def local_device():
    """The device of the calling worker: its first assigned GPU when CUDA works, else the CPU."""
    import torch

    return torch.device("cuda") if ray.get_gpu_ids() and torch.cuda.is_available() else torch.device("cpu")
