"""A real Ray cluster of three nodes on this machine, each a separate ``ray start`` process: a head with the
dashboard and no CPUs (as on a cloud cluster, the head only runs drivers) and two worker nodes of 1 CPU and 1
logical GPU each.

The pipeline is submitted through the job API (cluster/runtime_env.yaml, the working dir uploaded), spreads its
recovery units over both worker nodes, and writes exactly the files of the single-node quickstart run; bad cluster
input fails with one clear error instead of hanging.
"""

import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from ray.job_submission import JobStatus, JobSubmissionClient

from srel_ray.cli import quickstart_config

from .conftest import as_args
from .local_cluster import LocalCluster, free_port

REPO = Path(__file__).resolve().parents[2]
WORKERS = [{"cpus": 1, "gpus": 1, "resources": {"srel_node_a": 1}},
           {"cpus": 1, "gpus": 1, "resources": {"srel_node_b": 1}}]
HANG_GUARD_S = 900  # only to turn a hang into a failure; the tests assert outcomes, not durations


@pytest.fixture(scope="module")
def cluster():
    local = LocalCluster(WORKERS, head_cpus=0).start()
    yield local
    local.stop()


def submit(cluster: LocalCluster, script: str, argv: list[str], tmp: Path) -> tuple[str, str]:
    """``ray job submit --runtime-env cluster/runtime_env.yaml --working-dir <repo> -- python jobs/<script> ...``
    through the job API; waits for the end and returns the final status and the job's logs."""
    runtime_env = yaml.safe_load((REPO / "cluster" / "runtime_env.yaml").read_text())
    runtime_env["working_dir"] = str(REPO)
    runtime_env["env_vars"]["TORCH_HOME"] = str(tmp / "torch")  # no /mnt/shared here
    client = JobSubmissionClient(cluster.dashboard_url)
    # This interpreter, not whatever `python` the node's PATH holds: the nodes run from this venv.
    job = client.submit_job(entrypoint=shlex.join([sys.executable, f"jobs/{script}", *argv]), runtime_env=runtime_env)
    deadline = time.monotonic() + HANG_GUARD_S
    while (status := client.get_job_status(job)) not in {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED}:
        if time.monotonic() > deadline:
            client.stop_job(job)
            pytest.fail(f"job {job} still {status} after {HANG_GUARD_S} s:\n{client.get_job_logs(job)[-5000:]}")
        time.sleep(1.0)
    return status, client.get_job_logs(job)


def _files(folder: Path, pattern: str) -> dict:
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob(pattern))}


def test_pipeline_job_spreads_recovery_over_nodes_and_matches_one_node(cluster, quickstart_run, mlflow_uri,
                                                                       tmp_path):
    out = tmp_path / "multinode"
    # The quickstart's teacher as a checkpoint: squeeze is one Ray Train fit as evaluate's student is, which
    # already trains on a worker node here (about 15 s of the suite saved).
    teacher = quickstart_run / "teacher" / "teacher.pt"
    argv = ["--config", str(quickstart_run / "config.yaml"), "--out", str(out),
            *as_args(["teacher.source=checkpoint", f"teacher.checkpoint={teacher}", "evaluate.baselines=false",
                      "resources.recover_actors=2", f"tracking.tracking_uri={mlflow_uri}"])]
    status, logs = submit(cluster, "run.py", argv, tmp_path)
    assert status == JobStatus.SUCCEEDED, logs[-5000:]
    assert f"outputs: {out}" in logs

    # Recovery units ran on both worker nodes (one 1-CPU actor fits on each; the head has no CPUs).
    unit_nodes = json.loads((out / "stages" / "recover.json").read_text())["result"]["unit_nodes"]
    assert len(unit_nodes) == 2 and set(unit_nodes.values()) == set(cluster.node_ids_by_resource().values())

    # The same files as the single-node run with the same seed and teacher: images, label files, student.
    single = quickstart_run
    assert _files(out / "condensed", "*.png") == _files(single / "condensed", "*.png") != {}
    assert _files(out / "condensed", "*.parquet") == _files(single / "condensed", "*.parquet") != {}
    assert (json.loads((out / "evaluate" / "condensed.json").read_text())
            == json.loads((single / "evaluate" / "condensed.json").read_text()))
    summaries = [json.loads((d / "summary.json").read_text()) for d in (out, single)]
    keys = ("teacher_top1", "student_top1", "student_top5")
    assert [summaries[0][k] for k in keys] == [summaries[1][k] for k in keys]


def test_job_with_a_missing_config_fails_with_one_clear_error(cluster, tmp_path):
    status, logs = submit(cluster, "recover.py", ["--config", str(tmp_path / "nope.yaml"), "--out",
                                                  str(tmp_path / "o")], tmp_path)
    assert status == JobStatus.FAILED
    assert "srel-ray recover: error: config file" in logs and "nope.yaml" in logs and "does not exist" in logs
    assert "Traceback" not in logs


def run_cli(tmp_path: Path, *overrides: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """``python jobs/run.py`` on the quickstart config as a separate driver process."""
    args = [sys.executable, str(REPO / "jobs" / "run.py"), "--config", str(quickstart_config()), "--out",
            str(tmp_path / "o"), *[a for o in overrides for a in ("--set", o)]]
    return subprocess.run(args, capture_output=True, text=True, timeout=HANG_GUARD_S, cwd=tmp_path,
                          env={**os.environ, **(env or {})})


@pytest.mark.parametrize("via", ["config", "RAY_ADDRESS"])
def test_an_address_nothing_answers_at_is_an_error_not_a_hang(tmp_path, via):
    address = f"127.0.0.1:{free_port()}"  # bound and released: nothing listens there
    if via == "config":
        done = run_cli(tmp_path, f"resources.ray_address={address}")
    else:
        done = run_cli(tmp_path, env={"RAY_ADDRESS": address})
    assert done.returncode == 3, done.stderr[-3000:]
    source = "resources.ray_address" if via == "config" else "$RAY_ADDRESS"
    assert f"{source}='{address}': no Ray cluster answers at {address}" in done.stderr
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "o").exists()  # refused first, before the other checks and before the folder is claimed


def test_resources_the_cluster_can_never_meet_are_refused(cluster, tmp_path):
    """Checked against the live nodes of the cluster the driver joined (each request and message against node
    lists: tests/test_cluster_configs.py)."""
    done = run_cli(tmp_path, f"resources.ray_address={cluster.address}", "resources.use_gpu=true",
                   "resources.gpus_per_actor=2")
    assert done.returncode == 3, done.stderr[-3000:]
    assert "no node can host recover and relabel actors asking for 1 CPU, 2 GPU each" in done.stderr
    have = done.stderr.split("the cluster has: ", 1)[1]  # the three live nodes: a head without CPUs, two workers
    assert (have.count(": 0 CPU, 0 GPU"), have.count(": 1 CPU, 1 GPU")) == (1, 2), have
    assert not (tmp_path / "o" / "teacher").exists()  # refused before squeeze started
