"""`srel-ray tune` on the shared Ray cluster at tiny budgets: MLflow contents (SQLite and a real `mlflow server`),
the outputs a user takes away (table, best.yaml, best.json), and resuming an interrupted search."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

import srel_ray
from srel_ray.cli import main
from srel_ray.config import load_config, method_presets
from srel_ray.pipeline import STAGES
from srel_ray.stages.checks import check_inputs
from srel_ray.storage.layout import RunDir

from .conftest import TINY, as_args


def _args(quickstart_run, *extra):
    """The finished quickstart's config and teacher at a tiny budget; every search adds its own tune settings."""
    teacher = quickstart_run / "teacher" / "teacher.pt"
    return ["--config", str(quickstart_run / "config.yaml"),
            *as_args(TINY + ["teacher.source=checkpoint", f"teacher.checkpoint={teacher}", "evaluate.epochs=3",
                             "tune.grace_period=1", *extra])]


def _search_runs(client, out):
    experiment = client.get_experiment_by_name("srel_ray")
    runs = client.search_runs([experiment.experiment_id])
    parents = [r for r in runs if r.data.tags.get("srel_ray.out") == str(out)]
    assert len(parents) == 1, "one parent run per search"
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id]
    return parents[0], children


def test_optuna_search_tracks_every_trial_in_mlflow(quickstart_run, mlflow_uri, tmp_path, capsys):
    out = tmp_path / "search"
    space = "tune.space={recover.iterations: {randint: [2, 6]}, evaluate.temperature: {uniform: [1.0, 8.0]}}"
    assert main(["tune", "-q", "--out", str(out), *_args(quickstart_run, f"tracking.tracking_uri={mlflow_uri}",
                                                         "tune.search=optuna", "tune.num_samples=2", space)]) == 0
    printed = capsys.readouterr()
    assert "budget" in printed.out and "temperature" in printed.out and "test top-1" in printed.out
    for chatter in ("Trial status", "Configuration for experiment", "View detailed results", "A new study"):
        assert chatter not in printed.out + printed.err  # -q: Tune's and Optuna's lines go to DIR/logs/tune.log
    assert "Configuration for experiment" in (out / "logs" / "tune.log").read_text()

    client = MlflowClient(tracking_uri=mlflow_uri)
    parent, trials = _search_runs(client, out)
    assert len(trials) == 2 and all(t.info.status == "FINISHED" for t in trials)
    assert {"best.val_top1", "best.test_top1"} <= set(parent.data.metrics)
    assert {"best.yaml", "trials.csv", "best.json", "best"} <= {a.path for a in client.list_artifacts(parent.info.run_id)}
    records = {p.parent.name: json.loads(p.read_text()) for p in (out / "trials").glob("*/trial.json")}
    for run in trials:
        params = run.data.params
        assert 2 <= int(params["recover.iterations"]) <= 6 and 1.0 <= float(params["evaluate.temperature"]) <= 8.0
        assert params["teacher.source"] == "checkpoint"  # the whole trial config, not only the tuned values
        history = client.get_metric_history(run.info.run_id, "val_top1")
        assert [m.step for m in history][:1] == [0] and all(0 <= m.value <= 1 for m in history)
        assert "condensed_grid.png" in {a.path for a in client.list_artifacts(run.info.run_id)}
        key = run.data.tags["srel_ray.trial"]
        if run.data.tags["srel_ray.outcome"] == "finished":  # ASHA may stop the other one after an epoch
            assert [m.value for m in history] == [h["val_top1"] for h in records[key]["history"]]
            assert run.data.metrics["final.val_top1"] == records[key]["final"]["val_top1"]
            assert "trial.json" in {a.path for a in client.list_artifacts(run.info.run_id)}

    best = json.loads((out / "best.json").read_text())
    finished = {k: r["final"]["val_top1"] for k, r in records.items()}
    assert best["val"]["val_top1"] == max(finished.values()) == finished[best["trial"]]
    assert best["test"]["n"] == 450 and 0 <= best["test"]["test_top1"] <= 1  # scored on test once, separately
    assert records[best["trial"]]["val_images"] == json.loads((out / "search.json").read_text())["validation_images"]
    assert "test_top1" not in json.dumps(records)  # trials never see the test split

    cfg = load_config(out / "best.yaml")  # ready for `srel-ray run`: valid, best values, the search's teacher
    assert cfg.recover.iterations == best["values"]["recover.iterations"]
    assert cfg.evaluate.temperature == best["values"]["evaluate.temperature"]
    assert cfg.teacher.checkpoint == str(out / "teacher" / "teacher.pt")
    check_inputs(cfg, RunDir(tmp_path / "from-best"), STAGES)


@pytest.fixture
def mlflow_server(tmp_path):
    """A real `mlflow server` on a free localhost port, started for this test and stopped after it."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = open(tmp_path / "server.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
                             "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}",
                             "--artifacts-destination", str(tmp_path / "server-artifacts"), "--workers", "1"],
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    uri = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 600  # a hang guard: on a busy 2-core machine the server took over 3 min to answer
    while True:
        try:
            urllib.request.urlopen(uri + "/health", timeout=2).close()
            break
        except OSError:
            assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "server.log").read_text()
            time.sleep(0.5)
    yield uri
    os.killpg(proc.pid, signal.SIGTERM)
    proc.wait(timeout=60)
    log.close()


def test_edc_search_against_a_real_mlflow_server(quickstart_run, mlflow_server, tmp_path, monkeypatch):
    """The edc preset tuned over its starting images: the per-class statistics are made once (Ray Data) before
    the trials, every trial runs the preset's options, and best.yaml keeps them."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)  # wins over tracking.tracking_uri
    out = tmp_path / "search"
    space = "tune.space={recover.init: {grid: [real, rded]}}"
    # The quickstart's saved config spells out every value, and explicit values win over a preset: set them all.
    size = load_config(quickstart_run / "config.yaml").data.image_size
    presets = method_presets({"method": "edc", "data": {"image_size": size}})
    edc = ["method=edc", *(f"{section}.{key}={json.dumps(value)}"
                           for section, values in presets.items() for key, value in values.items())]
    assert main(["tune", "--out", str(out), *_args(quickstart_run, *edc, "recover.iterations=3", space,
                                                   "tune.asha=false", "tune.score_interval=2")]) == 0
    client = MlflowClient(tracking_uri=mlflow_server)
    parent, trials = _search_runs(client, out)
    assert sorted(t.data.params["recover.init"] for t in trials) == ["rded", "real"]
    assert all(t.data.params["recover.class_bn_weight"] == "0.5" for t in trials)
    assert all(t.data.tags["srel_ray.outcome"] == "finished" for t in trials)
    # Scored every second epoch and at the last: epochs 1 and 2 of 3.
    assert [m.step for m in client.get_metric_history(trials[0].info.run_id, "val_top1")] == [1, 2]
    assert {"condensed_grid.png", "trial.json"} <= {a.path for a in client.list_artifacts(trials[0].info.run_id)}
    assert client.get_experiment(parent.info.experiment_id).artifact_location.startswith("mlflow-artifacts:")
    stats = sorted(p.name for p in (out / "teacher" / "class_stats" / "teacher").iterdir())
    assert stats == [f"class-{c:05d}.pt" for c in range(10)] + ["manifest.json"]
    best = load_config(out / "best.yaml")
    assert (best.method, best.recover.class_bn_weight, best.evaluate.ema_decay) == ("edc", 0.5, 0.99)
    assert best.recover.init == json.loads((out / "best.json").read_text())["values"]["recover.init"]
    # What the search computed is pinned: a change must be deliberate (PINNED_TINY_EDC_SEARCH in conftest.py).
    from .conftest import PINNED_TINY_EDC_SEARCH, files_digest

    records = [json.loads(p.read_text()) for p in (out / "trials").glob("*/trial.json")]
    actual = {
        "val_top1": sorted((r["config"]["recover"]["init"], [round(h["val_top1"], 6) for h in r["history"]])
                           for r in records),
        "sets_sha256": sorted(files_digest(folder, ("images", "labels")) for folder in (out / "sets").iterdir()
                              if folder.is_dir()),
        "best_test_top1": round(json.loads((out / "best.json").read_text())["test"]["test_top1"], 6),
    }
    assert actual == PINNED_TINY_EDC_SEARCH, f"the tiny edc search now gives (paste into conftest.py):\n{actual!r}"


def test_resume_skips_finished_trials(ray_cluster, quickstart_run, mlflow_uri, tmp_path):
    """Kill the driver once the first trial has finished, then --resume: that trial is not run again, the rest
    finish, and MLflow holds one parent and one nested run per trial."""
    out = tmp_path / "search"
    args = ["tune", "--out", str(out), *_args(
        quickstart_run, f"tracking.tracking_uri={mlflow_uri}", "tune.max_concurrent_trials=1", "tune.asha=false",
        "tune.space={recover.iterations: {grid: [2, 100]}, evaluate.temperature: {grid: [2.0]}}",
        f"resources.ray_address={ray_cluster.get_runtime_context().gcs_address}")]
    env = {**os.environ, "PYTHONPATH": str(Path(srel_ray.__file__).parents[1])}
    with open(tmp_path / "first.log", "w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "srel_ray.cli", *args], stdout=log, stderr=subprocess.STDOUT,
                                env=env, start_new_session=True)
        deadline = time.monotonic() + 600
        while not list(out.glob("trials/*/trial.json")):
            assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "first.log").read_text()[-3000:]
            time.sleep(0.1)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    done = [p.parent for p in out.glob("trials/*/trial.json")]
    finished = {p: (p.stat().st_mtime_ns, p.read_bytes()) for folder in done for p in folder.iterdir()}
    assert {p.name for p in finished} == {"trial.json", "student.pt", "condensed_grid.png"}

    assert main([*args, "--resume"]) == 0
    assert {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in finished} == finished  # not run again
    assert len(list(out.glob("trials/*/trial.json"))) == 2
    parent, trials = _search_runs(MlflowClient(tracking_uri=mlflow_uri), out)
    assert sorted(t.data.params["recover.iterations"] for t in trials) == ["100", "2"]
    assert all(t.info.status == "FINISHED" for t in trials)
    assert (out / "best.yaml").exists() and len((out / "trials.csv").read_text().splitlines()) == 3


def test_trial_resources_allow_gpu_fractions_and_refuse_what_no_node_has(ray_cluster):
    from srel_ray.distributed.tune import trial_resources
    from srel_ray.errors import ConfigError

    shared = load_config(None, ["resources.gpus_per_trial=0.25", "resources.cpus_per_trial=0.5"])
    assert trial_resources(shared, use_gpu=True) == {"cpu": 0.5, "gpu": 0.25}  # four trials per (logical) GPU
    assert trial_resources(shared, use_gpu=False) == {"cpu": 0.5, "gpu": 0}
    with pytest.raises(ConfigError, match=r"no node can host a trial asking for .* \(resources.cpus_per_trial"):
        trial_resources(load_config(None, ["resources.cpus_per_trial=64"]), use_gpu=False)
