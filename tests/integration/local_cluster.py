"""A real multi-node Ray cluster on one machine: a head and worker nodes, each its own ``ray start --block`` process.

Why not ``ray.cluster_utils.Cluster``: it starts the nodes inside the test process, so a job driver, a killed
node or the dashboard would not behave as on a real cluster. Each node here is a separate process tree that the
cluster stops by its own process group, never with ``ray stop`` (which would stop every Ray instance on the
machine, other users' included).

Every node gets its own free ports and its own short temp dir: ``ray start`` in the default temp dir would record
the cluster in /tmp/ray/ray_current_cluster, and any ``ray.init()`` on the machine would then join it.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

RAY = str(Path(sys.executable).with_name("ray"))
START_ATTEMPTS = 3


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Node:
    name: str
    process: subprocess.Popen
    log: Path


class LocalCluster:
    """``start()`` brings up the head (with its dashboard) and the workers, ``stop()`` ends them."""

    def __init__(self, workers: list[dict], head_cpus: int = 0, env: dict | None = None):
        # Unix-socket paths live under the temp dir and are limited to ~107 characters: keep it short.
        self.temp_dir = Path(tempfile.mkdtemp(prefix="srelc-", dir="/tmp"))
        self.head_cpus = head_cpus
        self.workers = workers
        self.env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0",
                    "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0",
                    # The dashboard gets 60 s by default to start, which a head starting on a busy machine can miss.
                    "RAY_DASHBOARD_STARTUP_TIMEOUT_S": "300", **(env or {})}
        self.env.pop("RAY_ADDRESS", None)
        self.gcs_port = free_port()
        self.dashboard_port = free_port()
        self.nodes: list[Node] = []

    @property
    def address(self) -> str:
        """The GCS address drivers join (``ray.init(address=...)``, ``resources.ray_address``)."""
        return f"127.0.0.1:{self.gcs_port}"

    @property
    def dashboard_url(self) -> str:
        """The dashboard's HTTP address: job submission and the state API."""
        return f"http://127.0.0.1:{self.dashboard_port}"

    def start(self, timeout: float = 180.0) -> "LocalCluster":
        head = ["--head", f"--port={self.gcs_port}", "--include-dashboard=true", "--dashboard-host=127.0.0.1",
                f"--dashboard-port={self.dashboard_port}", f"--ray-client-server-port={free_port()}",
                f"--num-cpus={self.head_cpus}", "--num-gpus=0"]
        self._start_retrying("head", head, lambda: self._answers(self.dashboard_port) and len(self.alive_nodes()) == 1,
                             timeout)
        for i, spec in enumerate(self.workers):  # one at a time: start-up is the heavy part on 2 cores
            args = [f"--address={self.address}", f"--num-cpus={spec.get('cpus', 1)}",
                    f"--num-gpus={spec.get('gpus', 0)}", f"--resources={json.dumps(spec.get('resources', {}))}"]
            self._start_retrying(f"worker{i}", args, lambda n=2 + i: len(self.alive_nodes()) == n, timeout)
        return self

    def _start_retrying(self, name: str, args: list[str], ready, timeout: float) -> None:
        """Ray gives a starting node's raylet 30 s (hard-coded) to register with the GCS, which a node starting on
        a busy 2-core machine can miss; ``ray start`` then exits, and the node is started again, up to 3 times."""
        for attempt in range(1, START_ATTEMPTS + 1):
            node = self._start_node(name, args)
            self._wait(lambda: node.process.poll() is not None or ready(), timeout)
            if node.process.poll() is None:
                return
            _kill_group(node.process.pid)
            if attempt == START_ATTEMPTS:
                self._fail(f"{name} failed to start {START_ATTEMPTS} times")
            self.nodes.remove(node)  # its log file keeps this attempt's output for _fail

    def _start_node(self, name: str, args: list[str]) -> Node:
        ports = [f"--node-manager-port={free_port()}", f"--object-manager-port={free_port()}",
                 f"--dashboard-agent-listen-port={free_port()}", f"--dashboard-agent-grpc-port={free_port()}",
                 f"--metrics-export-port={free_port()}", f"--runtime-env-agent-port={free_port()}"]
        log = self.temp_dir / f"{name}.log"
        # A temp dir per node, as on separate machines: nodes sharing one would share runtime-env folders, and
        # one node's agent deletes a job's working dir that another node's workers still run in.
        node_dir = self.temp_dir / name
        cmd = [RAY, "start", "--block", f"--temp-dir={node_dir}", "--disable-usage-stats",
               "--object-store-memory=150000000", *ports, *args]
        with open(log, "ab") as out:
            # Its own session: the node's whole process tree can be ended by process group.
            process = subprocess.Popen(cmd, env=self.env, stdout=out, stderr=subprocess.STDOUT,
                                       start_new_session=True)
        node = Node(name, process, log)
        self.nodes.append(node)
        return node

    def alive_nodes(self) -> list:
        """The nodes the head's state API reports alive; none while the dashboard is still starting."""
        from ray.util.state import list_nodes
        from ray.util.state.exception import ServerUnavailable

        if not self._answers(self.dashboard_port):
            return []
        try:
            nodes = list_nodes(address=self.dashboard_url, raise_on_missing_output=False)
        except ServerUnavailable:  # the port is open before the dashboard serves requests
            return []
        return [n for n in nodes if n.state == "ALIVE"]

    def node_ids_by_resource(self) -> dict[str, str]:
        """Custom resource name -> node id, for the nodes started with a custom resource."""
        return {name: n.node_id for n in self.alive_nodes() for name in n.resources_total
                if name.startswith("srel_")}

    @staticmethod
    def _answers(port: int) -> bool:
        with socket.socket() as s:
            s.settimeout(1.0)
            return s.connect_ex(("127.0.0.1", port)) == 0

    def _wait(self, done, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not done():
            if time.monotonic() > deadline:
                self._fail(f"a node did not come up in {timeout:.0f} s")
            time.sleep(1.0)  # each poll is a state-API request to a head that may be busy starting

    def _fail(self, why: str) -> None:
        logs = "\n".join(f"--- {n.name}\n{n.log.read_text()[-3000:]}" for n in self.nodes)
        self.stop()
        raise RuntimeError(f"local Ray cluster: {why}\n{logs}")

    def stop(self) -> None:
        """SIGTERM each node's ``ray start --block`` (it ends its Ray processes), then its whole process group;
        then remove the nodes' temp dirs (logs included)."""
        for node in reversed(self.nodes):  # workers first, the head last
            if node.process.poll() is None:
                node.process.send_signal(signal.SIGTERM)
        for node in reversed(self.nodes):
            try:
                node.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                pass  # what is left is killed with its process group below
            _kill_group(node.process.pid)
        self.nodes.clear()
        shutil.rmtree(self.temp_dir, ignore_errors=True)


def _kill_group(pgid: int) -> None:
    """SIGKILL what is left of one node's process group (its workers, agents), started by us."""
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass
