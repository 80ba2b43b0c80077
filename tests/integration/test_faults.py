"""Failures injected into real processes, each in the middle of its work: a recovery actor in a unit, a relabel actor
in a batch, a squeeze worker in an epoch, a student worker between test points, and the driver itself (SIGKILL,
then the same command again). Every case
ends with exactly the files of an unfaulted run with the same seed, nothing duplicated, no temporary left over."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from srel_ray.cli import main, quickstart_config

from .conftest import LABEL_EPOCHS, STUDENT_EPOCHS, UNITS, recorded_checksums
from .kill import KillInTheMiddle, gone, kill_driver_when, ray_workers, read_json, title

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def config(quickstart_run) -> str:
    return str(quickstart_run / "config.yaml")


@pytest.fixture(scope="module")
def reference(reference_run) -> Path:
    """The unfaulted run every faulted one must reproduce (conftest's ``reference_run``)."""
    return reference_run


def outputs(folder: Path, under: str = "") -> dict[str, bytes]:
    """Every output file by path, except what differs between two identical runs by nature: Ray Train's storage
    (checkpoint folders are named by time), progress and stage records (pids, seconds), the logs, the MLflow run's
    id, and the summary's seconds and absolute paths."""
    files = {}
    for path in sorted((folder / under).rglob("*")):
        rel = path.relative_to(folder)
        if path.is_dir() or rel.parts[0] in ("ray", "stages", "logs") or ".progress" in rel.parts \
                or rel.name == "tracking.json":
            continue
        data = path.read_bytes()
        if rel.name == "summary.json":
            data = json.dumps({k: v for k, v in json.loads(data).items() if k not in ("seconds", "outputs")}).encode()
        files[str(rel)] = data
    return files


def temporaries(folder: Path) -> list[str]:
    return [str(p.relative_to(folder)) for p in folder.rglob("*.tmp") if "ray" not in p.relative_to(folder).parts]


def record(folder: Path, stage: str) -> dict:
    return json.loads((folder / "stages" / f"{stage}.json").read_text())["result"]


def done_units(progress: Path) -> set[str]:
    return {p.name[:-len(".json")] for p in progress.glob("unit-*.json") if not p.name.endswith(".started.json")}


def started_units(progress: Path) -> set[str]:
    return {p.name[:-len(".started.json")] for p in progress.glob("unit-*.started.json")}


def committed_epochs(storage: Path) -> list[int]:
    """The epochs whose checkpoint Ray Train has registered for the Train run stored at ``storage``."""
    snapshot = read_json(storage / "checkpoint_manager_snapshot.json") or {"checkpoint_results": []}
    return [c["metrics"]["epoch"] for c in snapshot["checkpoint_results"]]


def test_recovery_actor_killed_in_the_middle_of_a_unit(reference, config, reference_args, tmp_path):
    out = tmp_path / "run"
    progress = out / "condensed" / ".progress"
    assert main(["squeeze", "--config", config, "--out", str(out), *reference_args]) == 0
    victim = {}

    def unit_in_flight():  # a unit started and not done: its started record names the worker's pid
        for unit in sorted(started_units(progress) - done_units(progress)):
            started = read_json(progress / f"{unit}.started.json")
            if started is not None:
                victim.update(unit=unit, actor_id=started["worker"]["actor_id"])
                return started["worker"]["pid"]
        return None

    def still_in_the_unit(pid):
        started = read_json(progress / f"{victim['unit']}.started.json")
        return (victim["unit"] not in done_units(progress) and started["worker"]["pid"] == pid
                and title(pid).startswith("ray::RecoveryWorker.recover"))

    with KillInTheMiddle(unit_in_flight, still_in_the_unit) as kill:
        assert main(["recover", "--config", config, "--out", str(out), *reference_args]) == 0

    assert kill.killed is not None and gone(kill.killed)
    # The same actor, restarted in a new process, did the unit again: its second attempt.
    redone = json.loads((progress / f"{victim['unit']}.json").read_text())
    assert redone["attempt"] == 2 and redone["worker"]["actor_id"] == victim["actor_id"]
    assert redone["worker"]["pid"] != kill.killed
    assert record(out, "recover")["retried_units"] == [redone["unit"]]
    assert outputs(out, "condensed/images") == outputs(reference, "condensed/images") != {}
    assert (out / "condensed_grid.png").read_bytes() == (reference / "condensed_grid.png").read_bytes()
    images = {k: v for k, v in recorded_checksums(reference / "condensed").items() if k.startswith("images/")}
    assert recorded_checksums(out / "condensed") == images
    assert temporaries(out) == []


def test_relabel_actor_killed_in_the_middle_of_a_batch(reference, config, reference_args, tmp_path):
    out = tmp_path / "run"
    # The reference's recovered images without labels: every unit is marked done, recover only writes the manifest.
    shutil.copytree(reference, out, ignore=shutil.ignore_patterns("labels", "manifest.json", "stages", "evaluate",
                                                                   "summary.json", "ray"))
    assert main(["recover", "--config", config, "--out", str(out), *reference_args]) == 0
    assert record(out, "recover")["skipped_units"] == UNITS

    def labeler_in_a_batch():
        busy = [pid for pid in ray_workers("ray::MapWorker(") if "TeacherLabeler" in title(pid)
                and title(pid).endswith(".submit")]
        return busy[0] if busy else None

    with KillInTheMiddle(labeler_in_a_batch, lambda pid: title(pid).endswith(".submit")) as kill:
        assert main(["relabel", "--config", config, "--out", str(out), *reference_args]) == 0

    assert kill.killed is not None and gone(kill.killed)
    # One labeling actor: rows after the kill came from its restarted process (worker = node|gpus|pid|device).
    pids = {int(w.split("|")[2]) for w in record(out, "relabel")["condensed"]["workers"]}
    assert pids - {kill.killed}
    labels = outputs(out, "condensed/labels")
    assert labels == outputs(reference, "condensed/labels") and len(labels) == LABEL_EPOCHS * 3  # record, 2 parts
    assert len(list((out / "condensed" / "labels").glob("epoch-*.json"))) == LABEL_EPOCHS
    for path in (out / "condensed" / "labels").glob("epoch-*/part-*.parquet"):
        rows = pq.read_table(path, columns=["image_id", "view"]).to_pylist()
        assert len(rows) == len({(r["image_id"], r["view"]) for r in rows}) == 10 * 64  # nothing twice
    assert (out / "condensed" / "manifest.json").read_bytes() == (reference / "condensed" / "manifest.json").read_bytes()
    assert temporaries(out) == []


def test_squeeze_worker_killed_in_the_middle_of_an_epoch(quickstart_run, tiny, tmp_path, caplog):
    """The quickstart's own squeeze (2 epochs), with its one training worker killed during epoch 1: Ray Train
    restarts the worker group from the epoch-0 checkpoint, and the teacher equals the unfaulted quickstart's."""
    out = tmp_path / "run"
    storage = out / "ray" / "squeeze"

    def worker_in_epoch_1():
        workers = ray_workers("ray::RayTrainWorker")
        return workers[0] if committed_epochs(storage) == [0] and len(workers) == 1 else None

    def still_in_epoch_1(pid):  # frozen: it cannot have started to save epoch 1's checkpoint since
        return committed_epochs(storage) == [0] and len([d for d in storage.glob("checkpoint_*") if d.is_dir()]) == 1

    with KillInTheMiddle(worker_in_epoch_1, still_in_epoch_1) as kill:
        assert main(["squeeze", "--config", str(quickstart_config()), "--out", str(out), *tiny]) == 0

    assert kill.killed is not None and gone(kill.killed)
    result = record(out, "squeeze")
    assert (result["skipped_epochs"], result["restarted_at_epoch"]) == (0, 1)
    assert (out / "teacher" / "teacher.pt").read_bytes() == (quickstart_run / "teacher" / "teacher.pt").read_bytes()

    # The driver dying after the last checkpoint and before the teacher was saved: the rerun trains no epoch again.
    (out / "teacher" / "teacher.pt").unlink()
    with caplog.at_level("INFO", logger="srel_ray"):
        assert main(["squeeze", "--config", str(quickstart_config()), "--out", str(out), *tiny]) == 0
    assert "squeeze: 2 of 2 epochs already trained" in caplog.text
    assert record(out, "squeeze")["skipped_epochs"] == 2
    assert (out / "teacher" / "teacher.pt").read_bytes() == (quickstart_run / "teacher" / "teacher.pt").read_bytes()


def test_a_student_worker_killed_between_test_points_resumes_from_its_last_checkpoint(reference, config, reference_args,
                                                                                     tmp_path):
    """The reference's student, tested only after its last epoch, checkpoints nowhere else; with
    resources.student_checkpoint_epochs=1 (a resource: the same run), its training worker killed after some epoch's
    checkpoint is restarted from it, and the student's record equals the unfaulted one's."""
    assert committed_epochs(reference / "ray" / "student-condensed") == [STUDENT_EPOCHS - 1]

    out = tmp_path / "run"  # the reference up to its student, which is trained again with the option
    storage = out / "ray" / "student-condensed"
    shutil.copytree(reference, out, ignore=shutil.ignore_patterns("student-condensed"))
    (out / "evaluate" / "condensed.json").unlink()
    (out / "summary.json").unlink()

    def worker_between_checkpoints():
        workers = ray_workers("ray::RayTrainWorker")
        done = committed_epochs(storage)
        return workers[0] if done and max(done) < STUDENT_EPOCHS - 2 and len(workers) == 1 else None

    def still_before_the_last_checkpoint(pid):  # frozen: the epochs after the kill are trained after a restart
        done = committed_epochs(storage)
        return bool(done) and max(done) < STUDENT_EPOCHS - 2

    with KillInTheMiddle(worker_between_checkpoints, still_before_the_last_checkpoint) as kill:
        assert main(["evaluate", "--config", config, "--out", str(out), *reference_args,
                     "--set", "resources.student_checkpoint_epochs=1"]) == 0

    assert kill.killed is not None and gone(kill.killed)
    resumed = record(out, "evaluate")["resumed"]["condensed"]
    assert resumed["skipped_epochs"] == 0 and 1 <= resumed["restarted_at_epoch"] < STUDENT_EPOCHS - 1
    assert (out / "evaluate" / "condensed.json").read_bytes() == \
        (reference / "evaluate" / "condensed.json").read_bytes()


def test_driver_killed_twice_and_the_same_command_run_again(ray_cluster, reference, config, reference_args, tmp_path):
    """`srel-ray run` as its own process, SIGKILLed once some recovery units are done (it had started a local Ray
    cluster of its own, which dies with it), again once labelling actors have written label parts (it had joined the
    tests' running cluster, as a job on a cluster does: its actors die with it, the cluster stays), then run to the
    end on that cluster. Each rerun says what it skipped."""
    out = tmp_path / "run"
    progress, labels = out / "condensed" / ".progress", out / "condensed" / "labels"
    # -v: every log line on the console too (by default they go to DIR/logs/driver.log only).
    cmd = [sys.executable, "-m", "srel_ray.cli", "run", "--config", config, "--out", str(out), *reference_args, "-v"]
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # the driver starts its own cluster
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    joined = {**env, "RAY_ADDRESS": ray_cluster.get_runtime_context().gcs_address}

    killed = kill_driver_when(cmd, env, tmp_path / "first.log", lambda: 0 < len(done_units(progress)) < UNITS)
    assert any("gcs_server" in name for name in killed.values())  # its cluster is gone with it: nothing blocks a rerun
    assert not (out / "condensed" / "manifest.json").exists()
    done, interrupted = done_units(progress), started_units(progress) - done_units(progress)
    assert 0 < len(done) < UNITS

    # Killed once labelling actors have written parts and before every epoch is committed. The driver commits an
    # epoch when its parts' records reach it, and Ray Data hands them over in bursts, so the kill usually lands
    # with parts on disk and no epoch committed yet (written = 0), sometimes between commits.
    killed = kill_driver_when(cmd, joined, tmp_path / "second.log",
                              lambda: 0 < len(list(labels.glob("epoch-*/part-*.parquet")))
                              and len(list(labels.glob("epoch-*.json"))) < LABEL_EPOCHS)
    assert any(name.startswith("ray::MapWorker") for name in killed.values())  # its labelling actor ended with it
    second = (tmp_path / "second.log").read_text()
    assert f"recover: {len(done)} of {UNITS} units already done, skipping them" in second
    assert "squeeze: the teacher is already at" in second
    recover = record(out, "recover")
    assert recover["skipped_units"] == len(done)
    assert recover["interrupted_units"] == sorted(int(u.split("-")[1]) for u in interrupted)
    assert set(recover["retried_units"]) == set(recover["interrupted_units"])
    written = len(list(labels.glob("epoch-*.json")))
    assert written < LABEL_EPOCHS and list(labels.glob("epoch-*/part-*.parquet"))

    third = subprocess_run(cmd, joined)
    assert f"recover: the condensed set at {out}/condensed is complete, skipping the stage" in third
    if written:
        assert f"relabel {out}/condensed: {written} of {LABEL_EPOCHS} epochs already written, skipping them" in third
    assert record(out, "relabel")["condensed"]["skipped_epochs"] == written
    assert outputs(out) == outputs(reference)
    assert temporaries(out) == []


def subprocess_run(cmd: list[str], env: dict) -> str:
    done = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:]
    return done.stdout


def test_a_student_trained_before_the_driver_died_is_not_trained_again(reference, config, reference_args, tmp_path,
                                                                       caplog):
    """The driver died after the student's last checkpoint and before its record: the rerun restores the finished
    Train run instead of training it again, and writes the same record."""
    out = tmp_path / "run"
    shutil.copytree(reference, out)
    (out / "evaluate" / "condensed.json").unlink()
    (out / "summary.json").unlink()
    with caplog.at_level("INFO", logger="srel_ray"):
        assert main(["evaluate", "--config", config, "--out", str(out), *reference_args]) == 0
    assert f"student-condensed: {STUDENT_EPOCHS} of {STUDENT_EPOCHS} epochs already trained" in caplog.text
    assert record(out, "evaluate")["resumed"]["condensed"] == {"skipped_epochs": STUDENT_EPOCHS,
                                                               "restarted_at_epoch": None}
    assert outputs(out) == outputs(reference)
