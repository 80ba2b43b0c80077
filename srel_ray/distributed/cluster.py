"""Starting or joining a Ray cluster, and the resource decisions every Ray role shares."""

from __future__ import annotations

import logging
import math
import os
import socket
import urllib.parse

import ray

from srel_ray.config import ResourcesConfig
from srel_ray.errors import ConfigError

log = logging.getLogger(__name__)


REACH_TIMEOUT_S = 5.0  # a cluster address that does not answer within this is an error, not a hang


def start_ray(res: ResourcesConfig, verbose: bool = False) -> None:
    """Join ``res.ray_address`` (or $RAY_ADDRESS), else start a local cluster; reuse one already joined.

    ``verbose`` False: workers' output stays in Ray's session logs (``ray_logs_dir()``) and Ray Data draws no
    progress bars, so the console holds srel_ray's own stage lines and bars; True: both go to the console."""
    import ray.data

    # The driver's DataContext travels with every dataset it builds (Train's split coordinators included).
    ray.data.DataContext.get_current().enable_progress_bars = verbose
    # Ray Data logs each dataset's start, plan and end to the console and to ray-data.log in Ray's session logs:
    # without verbose, only its errors reach the console. Only Ray's own console handler is touched (a host such
    # as pytest may have attached handlers of its own to the logger).
    for handler in logging.getLogger("ray.data").handlers:
        if type(handler).__module__.startswith("ray.") and isinstance(handler, logging.StreamHandler) \
                and not isinstance(handler, logging.FileHandler):
            handler.setLevel(logging.INFO if verbose else logging.ERROR)
    if ray.is_initialized():
        return
    # A local single-user cluster needs no token; a cluster we join keeps whatever auth it was started with.
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    # Without the dashboard, Train's state-actor reconciliation only logs failed state-API queries.
    os.environ.setdefault("RAY_TRAIN_ENABLE_STATE_ACTOR_RECONCILIATION", "0")
    # Train's controller looks at its workers every 2 s by default, so each fit (every squeeze and student) idles
    # up to 2 s after its loop has returned before shutting down; a poll is one small actor call per worker.
    # Train passes its RAY_TRAIN_* settings from the driver's environment to the controller and workers of each fit.
    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5")
    kwargs: dict = {"logging_level": logging.WARNING, "log_to_driver": verbose}
    address = res.ray_address or os.environ.get("RAY_ADDRESS")  # a submitted Ray job joins its cluster
    if address is None:
        # "local": a new cluster even where a `ray start` (perhaps long dead) left its address in
        # /tmp/ray/ray_current_cluster (ray.init() alone would join it). Its processes share the driver's fate: a
        # driver killed with SIGKILL takes them along. The dashboard serves the state API that Ray Train's
        # placement-group cleaner polls.
        kwargs.update(address="local", num_cpus=res.num_cpus, include_dashboard=True)
        # Train's preemption watcher (an actor started with every fit) follows nodes that the cluster drains
        # (spot reclaims, autoscaler scale-down) so their workers may checkpoint first; the one node of a local
        # cluster also runs the driver, so no run outlives its drain. Ray 2.60's flag (ray.train.v2 constants).
        os.environ.setdefault("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")
        # Ray Data reads the footers of a multi-file Parquet dataset with up to 32 new actors each time it reads it
        # (each squeeze epoch): a process each, about 2 CPU-seconds to start, for files one node reads from its own
        # disk. One does it here (the files-shuffle test on 2 cores: 12.2 s instead of 15.2 idle, 37 instead of 77
        # beside a benchmark). Ray 2.60's flag (ray.data._internal.datasource_v2.formats.parquet.footer_file_indexer).
        os.environ.setdefault("RAY_DATA_PARQUET_FOOTER_NUM_ACTORS", "1")
    else:
        check_address(res)
        kwargs.update(address=address)
    ray.init(**kwargs)
    log.info("ray cluster resources: %s", ray.cluster_resources())


def check_address(res: ResourcesConfig) -> None:
    """The cluster address to join (``resources.ray_address``, else $RAY_ADDRESS), when there is one and this
    process has not joined a cluster yet: refused unless something answers there. Cheap, so commands call it
    before their other input checks (loading the data, building the models), and a typo fails in seconds."""
    address = res.ray_address or os.environ.get("RAY_ADDRESS")
    if address is None or ray.is_initialized():
        return
    source = "resources.ray_address" if res.ray_address else "$RAY_ADDRESS"
    host, port = _bootstrap_endpoint(address, source)
    _check_reachable(host, port, address, source)


def ray_logs_dir() -> str | None:
    """This machine's folder of Ray's session logs (workers' output, Ray Data's and Train's logs), when this driver
    runs on a node of the cluster; None for a client (ray://) connection."""
    node = ray._private.worker.global_worker.node
    return node.get_logs_dir_path() if node is not None else None


def _bootstrap_endpoint(address: str, source: str) -> tuple[str, int]:
    """Host and port that ``ray.init(address)`` would dial: ``host:port``, ``ray://host:port`` or ``auto``."""
    if address == "auto":
        from ray._private.services import canonicalize_bootstrap_address

        # The resolution ray.init itself uses: $RAY_ADDRESS, else the cluster `ray start` recorded on this machine.
        try:
            address = canonicalize_bootstrap_address("auto")
        except ConnectionError:
            raise ConfigError(f"{source}='auto' but no Ray cluster runs on this machine; start one "
                              "(ray start --head) or give its address as host:port") from None
    parts = urllib.parse.urlsplit(address if "://" in address else f"//{address}")
    if not parts.hostname or parts.port is None:
        raise ConfigError(f"{source}={address!r} is not a cluster address; expected host:port (the head's GCS "
                          "port, 6379 by default), ray://host:port or auto")
    return parts.hostname, parts.port


def _check_reachable(host: str, port: int, address: str, source: str) -> None:
    """Refuse an address nothing answers at: ray.init would retry it for a minute or more before failing."""
    try:
        socket.create_connection((host, port), timeout=REACH_TIMEOUT_S).close()
    except OSError as e:
        raise ConfigError(f"{source}={address!r}: no Ray cluster answers at {host}:{port} ({e.strerror or e}, "
                          f"{REACH_TIMEOUT_S:.0f} s timeout); start the cluster or fix the address") from None


def resolve_use_gpu(res: ResourcesConfig) -> bool:
    """``use_gpu: null`` means: use GPUs when the cluster has any, counting GPU node types an autoscaler can start
    (an autoscaling cluster often has no GPU node running yet). Asking for GPUs it can never have is an error."""
    gpus = any(s["GPU"] > 0 for s in node_shapes())
    if res.use_gpu is None:
        return gpus
    if res.use_gpu and not gpus:
        raise ConfigError("resources.use_gpu is true but the Ray cluster has no GPUs; set it to false or null")
    return res.use_gpu


def actor_resources(res: ResourcesConfig, use_gpu: bool, shapes: list[dict] | None = None) -> dict:
    """Ray resource request for one recover or relabel actor; refuses requests the cluster could never meet."""
    request = {"num_cpus": res.cpus_per_actor, "num_gpus": res.gpus_per_actor if use_gpu else 0}
    _check_fits({"CPU": request["num_cpus"], "GPU": request["num_gpus"]},
                max(res.recover_actors, res.relabel_actors), node_shapes() if shapes is None else shapes,
                "recover and relabel actors", "resources.cpus_per_actor, resources.gpus_per_actor, "
                "resources.recover_actors, resources.relabel_actors")
    return request


def check_resources(res: ResourcesConfig, use_gpu: bool, shapes: list[dict] | None = None,
                    data_tasks: bool = True) -> None:
    """Before any stage starts: refuse actor and Train worker requests that the cluster can never meet, so a
    misconfigured run fails in seconds instead of waiting forever for resources (Ray only warns of those).

    ``shapes``: the nodes to check against (``node_shapes()`` format); default: the cluster this driver joined.
    ``data_tasks``: the real data is read by Ray tasks (every source but one held in memory, as digits is)."""
    shapes = node_shapes() if shapes is None else shapes
    cpus = sum(s["CPU"] * s["count"] for s in shapes if s["CPU"] > 0)
    actor_resources(res, use_gpu, shapes)
    train_worker = {"CPU": res.threads_per_worker, "GPU": 1 if use_gpu else 0}
    _check_fits(train_worker, res.train_workers, shapes,
                "Ray Train workers (squeeze, evaluate)", "resources.train_workers, resources.threads_per_worker "
                "(CPUs per worker), one GPU per worker when GPUs are used")
    if res.concurrent_students > 1:  # else a fit would wait on the others (Ray Train restarts a group that waits 60 s)
        _check_fits(train_worker, res.train_workers * res.concurrent_students, shapes,
                    f"Ray Train workers of {res.concurrent_students} students trained at once",
                    "resources.concurrent_students x resources.train_workers workers, resources.threads_per_worker "
                    "CPUs per worker, one GPU per worker when GPUs are used")
    held = res.train_workers * res.concurrent_students * res.threads_per_worker
    if data_tasks and cpus < held + 1:
        # Ray Train's datasets (squeeze's training split, every student's test split) are read and decoded by Ray
        # tasks of 1 CPU each beside the workers; with every CPU held by the workers none could ever run (a student
        # waited 1,800 s at its first test pass for Ray Data's no-progress error, with 2 threads on 2 CPUs).
        raise ConfigError(f"Ray Train workers holding {held:g} CPUs ({res.concurrent_students} student(s) at once x "
                          f"{res.train_workers} worker(s) x {res.threads_per_worker} thread(s)) leave none of the "
                          f"cluster's {cpus:g} for the Ray tasks that read their data, which would wait forever: "
                          "lower resources.threads_per_worker, resources.train_workers or "
                          "resources.concurrent_students, or add CPUs")
    if use_gpu:
        # With GPU labelers, relabel decodes images and draws views in CPU tasks (1 CPU each) beside the actors;
        # with every CPU held by the actors no image could ever be decoded, and the stage would wait forever.
        held = res.relabel_actors * res.cpus_per_actor
        if cpus < held + 1:
            raise ConfigError(f"{res.relabel_actors} relabel actors asking for {res.cpus_per_actor:g} CPU each hold "
                              f"{held:g} of the cluster's {cpus:g} CPUs, leaving less than the 1 CPU that rendering "
                              "views needs (resources.relabel_actors, resources.cpus_per_actor)")


def check_precision(res: ResourcesConfig, use_gpu: bool) -> str | None:
    """``resources.precision`` against the device the workers will use, before any stage starts: the CPU when GPUs
    are not used; this machine's GPU when it has one (cluster GPUs of another kind are checked by each worker as it
    starts, with the same message). Returns the precision it resolved to here, None when it could not check."""
    import torch

    from srel_ray.core.precision import resolve_precision

    if not use_gpu:
        return resolve_precision(res.precision, torch.device("cpu"))
    if torch.cuda.is_available():
        return resolve_precision(res.precision, torch.device("cuda"))
    return None


def check_fits(num_cpus: float, num_gpus: float, what: str, fields: str) -> None:
    """A ConfigError when no node (live, or one an autoscaler may start) can host one bundle of ``num_cpus`` CPUs
    and ``num_gpus`` GPUs: Ray would wait for it forever."""
    _check_fits({"CPU": num_cpus, "GPU": num_gpus}, 1, node_shapes(), what, fields)


def node_shapes() -> list[dict]:
    """What each node offers (``name``, ``count`` of such nodes, ``CPU``, ``GPU``): the live nodes, plus every node
    type an autoscaler may still start, with its most nodes; Ray publishes those node types in the GCS when the
    cluster has an autoscaler (ray up, KubeRay)."""
    import ray._private.state

    shapes = [{"name": f"node {n['NodeManagerAddress']}", "count": 1, "CPU": n["Resources"].get("CPU", 0),
               "GPU": n["Resources"].get("GPU", 0)} for n in ray.nodes() if n.get("Alive")]
    # The same private accessor Ray Train and Ray Data use for this in Ray 2.60 (pinned in pyproject.toml).
    config = ray._private.state.state.get_cluster_config()
    for group in config.node_group_configs if config is not None else []:
        if group.max_count != 0:  # -1: no limit
            shapes.append({"name": f"node type {group.name!r} (autoscaled)",
                           "count": group.max_count if group.max_count > 0 else math.inf,
                           "CPU": group.resources.get("CPU", 0), "GPU": group.resources.get("GPU", 0)})
    return shapes


def _check_fits(request: dict, copies: int, shapes: list[dict], what: str, fields: str) -> None:
    """``copies`` bundles of ``request``, each on one node: how many fit on each node shape, summed over nodes."""
    def per_node(shape: dict) -> float:
        return min((shape[k] // v for k, v in request.items() if v > 0), default=math.inf)

    capacity = sum(per_node(s) * s["count"] for s in shapes if per_node(s) > 0)
    if capacity >= copies:
        return
    want = ", ".join(f"{v:g} {k}" for k, v in request.items())
    have = "; ".join(f"{s['name']}: {s['CPU']:g} CPU, {s['GPU']:g} GPU" + _count(s["count"]) for s in shapes)
    if capacity == 0:
        raise ConfigError(f"no node can host {what} asking for {want} each ({fields}); the cluster has: {have}")
    raise ConfigError(f"{copies} {what} asking for {want} each cannot all be placed: the cluster holds at most "
                      f"{capacity:g} ({fields}); the cluster has: {have}")


def _count(count: float) -> str:
    return "" if count == 1 else " (any number of nodes)" if math.isinf(count) else f" (up to {count:g} nodes)"


def worker_identity() -> dict:
    """Where the calling Ray worker runs and which GPUs it was given (for logs and placement checks)."""
    ctx = ray.get_runtime_context()
    return {"node_id": ctx.get_node_id(), "pid": os.getpid(), "gpu_ids": [str(g) for g in ray.get_gpu_ids()],
            "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES", "")}


def local_device():
    """The device of the calling worker: its first assigned GPU when CUDA works, else the CPU."""
    import torch

    return torch.device("cuda") if ray.get_gpu_ids() and torch.cuda.is_available() else torch.device("cpu")
