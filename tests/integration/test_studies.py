"""The studies of a finished run, on a copy of the session's tiny quickstart run: ``srel-ray continual`` and
``srel-ray tsne`` from the command line, both continuing the run's MLflow run, and a continual step student on
Ray Train, as the command trains it by default."""

import json
import shutil
from dataclasses import replace

import torch
from mlflow.tracking import MlflowClient

from srel_ray.cli import main


def _copy(quickstart_run, tmp_path):
    out = tmp_path / "quick"
    shutil.copytree(quickstart_run, out, ignore=shutil.ignore_patterns("ray", "logs"))
    return out


def test_continual_and_tsne_on_a_finished_run(quickstart_run, tmp_path, capsys, mlflow_uri):
    """Both commands' outputs, console and MLflow records; the step students train in process here (each Ray
    Train fit costs seconds of start-up: the next test trains one)."""
    out = _copy(quickstart_run, tmp_path)
    assert main(["continual", str(out), "--set", "continual.steps=[2]", "--set", "continual.epochs=1",
                 "--set", "continual.in_process=true"]) == 0
    printed = capsys.readouterr().out
    results = json.loads((out / "continual" / "continual.json").read_text())
    two = results["steps"]["2"]
    assert sorted(c for group in two["groups"] for c in group) == list(range(10))
    assert two["classes_seen"] == [5, 10] and results["student"]["epochs"] == 1
    assert {name: len(acc) for name, acc in two["top1"].items()} == {"condensed": 2, "random_real_soft": 2}
    assert (out / "continual" / "continual.png").read_bytes().startswith(b"\x89PNG")
    assert "2 steps, classes seen:" in printed and str(out / "continual" / "continual.json") in printed
    assert len(list((out / "continual" / "students").iterdir())) == 4

    assert main(["tsne", str(out), "--set", "tsne.classes=2", "--set", "tsne.real_per_class=5",
                 "--set", "tsne.perplexity=4"]) == 0
    points = json.loads((out / "tsne" / "tsne.json").read_text())
    assert len(points["points"]) == 2 * (load_ipc(out) + 5) and (out / "tsne" / "tsne.png").exists()

    client = MlflowClient(tracking_uri=mlflow_uri)
    run_id = json.loads((out / "tracking.json").read_text())["run_id"]  # the quickstart's run, continued
    history = client.get_metric_history(run_id, "continual.2steps.condensed.top1")
    assert [m.step for m in history] == [1, 2] and [m.value for m in history] == two["top1"]["condensed"]
    artifacts = {a.path for folder in ("continual", "tsne") for a in client.list_artifacts(run_id, folder)}
    assert {"continual/continual.json", "continual/continual.png", "tsne/tsne.json", "tsne/tsne.png"} <= artifacts

    assert main(["continual", str(tmp_path), "--set", "continual.steps=[2]"]) == 3
    assert "is not a srel_ray run" in capsys.readouterr().err
    assert main(["continual", str(out), "--set", "continual.steps=[11]"]) == 3
    assert "continual.steps[0] must be <= the run's 10 classes" in capsys.readouterr().err


def load_ipc(out) -> int:
    return json.loads((out / "condensed" / "manifest.json").read_text())["ipc"]


def test_a_memory_student_on_ray_train_is_the_in_process_one(quickstart_run, tmp_path):
    """A step student (a memory of three classes) trained by the Ray executor, as `srel-ray continual` does by
    default, gets the in-process executor's numbers."""
    from srel_ray.config import load_config
    from srel_ray.data.real import load_dataset
    from srel_ray.distributed.executor import RayExecutor
    from srel_ray.stages.base import StageContext
    from srel_ray.stages.local import InProcessExecutor
    from srel_ray.storage import sets
    from srel_ray.storage.layout import RunDir
    from srel_ray.students import STUDENTS
    from srel_ray.tracking import Tracker

    out = _copy(quickstart_run, tmp_path)
    cfg, run = load_config(out / "config.yaml", ["evaluate.epochs=1"]), RunDir.at(out)
    data = load_dataset(cfg.data)
    info = sets.read_set(run.set_dir("random_real"))
    student = replace(STUDENTS["random_real_soft"], name="memory-1-4-7", classes=(1, 4, 7))
    on_ray, _ = RayExecutor(use_gpu=False).train_student(StageContext(cfg, run, data, None, Tracker(False)), student,
                                                         info)
    threads = torch.get_num_threads()
    torch.set_num_threads(cfg.resources.threads_per_worker)  # as in the Ray Train worker
    try:
        local, _ = InProcessExecutor().train_student(StageContext(cfg, run, data, None, Tracker(False)), student, info)
    finally:
        torch.set_num_threads(threads)
    assert on_ray["top1"] == local["top1"] and on_ray["top5"] == local["top5"] == 1.0  # three outputs: top-5 is all
    assert abs(on_ray["history"][0]["train_loss"] - local["history"][0]["train_loss"]) < 1e-5
