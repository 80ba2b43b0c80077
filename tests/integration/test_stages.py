"""Stages on the shared Ray cluster: reproducibility across actor counts, resume, GPU placement, squeeze resume."""

import json
import re
import shutil

import pyarrow.parquet as pq
import pytest

from srel_ray.cli import main
from srel_ray.config import load_config

from .conftest import TINY, as_args


def _reuse_teacher(quickstart_run, mlflow_uri, *extra):
    teacher = quickstart_run / "teacher" / "teacher.pt"
    return as_args(TINY + [f"tracking.tracking_uri={mlflow_uri}", "teacher.source=checkpoint",
                           f"teacher.checkpoint={teacher}", "recover.classes_per_unit=5", *extra])


def _files(folder):
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*.png"))}


def _labels(folder):
    return [pq.read_table(p).to_pylist() for p in sorted((folder / "labels").glob("epoch-*/*.parquet"))]


@pytest.fixture(scope="module")
def runs_by_actor_count(quickstart_run, reference_run, reference_args, tmp_path_factory):
    """The same run on 1 and 2 recovery actors. The 1-actor run is conftest's ``reference_run``: written through a
    file:// URL (the code path of s3:// and gs://) from a working directory of its own, through all four stages;
    the 2-actor run goes to a local folder and stops after relabel (its student would only repeat the 1-actor
    one's on the same files), and its relabel runs with MAX_INDEX_BLOCKS at 1: one Ray Data read task takes every
    relabel block, as a task takes a run of them above 1,024 blocks (ImageNet-21K), where the reference run has a
    task a block. Equal outputs then show that neither the actor count, nor the URL, nor how read tasks cut the
    blocks changes a byte."""
    from srel_ray.distributed import relabel as ray_relabel

    out = tmp_path_factory.mktemp("actors") / "actors2"
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(ray_relabel, "MAX_INDEX_BLOCKS", 1)
        for command in ["squeeze", "recover", "relabel"]:
            assert main([command, "--config", str(quickstart_run / "config.yaml"), "--out", str(out),
                         *reference_args, "--set", "resources.recover_actors=2"]) == 0
    return {1: reference_run, 2: out}


def test_same_outputs_whatever_the_actor_count(runs_by_actor_count):
    one, two = runs_by_actor_count[1], runs_by_actor_count[2]
    recover_two = json.loads((two / "stages" / "recover.json").read_text())["result"]
    assert recover_two["units"] == 4 and len({a["pid"] for a in recover_two["actors"]}) == 2
    assert _files(one / "condensed") == _files(two / "condensed") != {}
    assert _labels(one / "condensed") == _labels(two / "condensed") != []
    assert len(_labels(one / "condensed")) > 1  # several relabel blocks: one read task took them all in run 2
    assert json.loads((one / "summary.json").read_text())["student_top1"] is not None  # the URL run's student


def test_interrupted_recover_redoes_only_unfinished_units(runs_by_actor_count, reference_args):
    out = runs_by_actor_count[2]
    condensed = out / "condensed"
    before = _files(condensed)
    # What a crash inside unit 1 leaves: its marker and some of its images missing, no manifest yet.
    (condensed / ".progress" / "unit-000001.json").unlink()
    (condensed / "images" / "3" / "00001.png").unlink()  # unit 1 = classes 0-4, image index 1
    (condensed / "manifest.json").unlink()
    assert main(["recover", "--config", str(out / "config.yaml"), "--out", str(out), *reference_args,
                 "--set", "resources.recover_actors=2"]) == 0
    result = json.loads((out / "stages" / "recover.json").read_text())["result"]
    assert (result["units"], result["skipped_units"]) == (4, 3)
    assert _files(condensed) == before
    assert (condensed / "manifest.json").exists()


def test_each_actor_gets_its_own_gpu(quickstart_run, mlflow_uri, tmp_path):
    """The cluster declares 2 logical GPUs: two recover actors each hold a different one, and every relabel actor
    that labelled holds one of its own. (Which relabel actors label is Ray Data's choice: a block goes to the least
    busy actor, so when rendering is slower than labelling, as on this test cluster with one CPU for rendering,
    the first actor can take every block.)"""
    out = tmp_path / "gpu"
    args = _reuse_teacher(quickstart_run, mlflow_uri, "resources.use_gpu=true", "resources.gpus_per_actor=1",
                          "resources.cpus_per_actor=0.5", "resources.recover_actors=2",
                          "resources.relabel_actors=2", "relabel.batch_size=2", "evaluate.baselines=false")
    config = str(quickstart_run / "config.yaml")
    for stage in ("squeeze", "recover", "relabel"):
        assert main([stage, "--config", config, "--out", str(out), *args]) == 0
    actors = json.loads((out / "stages" / "recover.json").read_text())["result"]["actors"]
    gpu_ids = [tuple(a["gpu_ids"]) for a in actors]
    assert len(gpu_ids) == 2 and all(len(g) == 1 for g in gpu_ids) and len(set(gpu_ids)) == 2
    assert [a["cuda_visible_devices"] for a in actors] == [g[0] for g in gpu_ids]
    workers = json.loads((out / "stages" / "relabel.json").read_text())["result"]["condensed"]["workers"]
    gpus_by_pid = {w.split("|")[2]: w.split("|")[1] for w in workers}  # worker = node|gpus|pid|device
    assert gpus_by_pid and all(g in {"0", "1"} for g in gpus_by_pid.values())  # exactly one GPU each
    assert len(set(gpus_by_pid.values())) == len(gpus_by_pid)


def test_squeeze_resumes_from_last_checkpoint(quickstart_run, tmp_path):
    """A longer squeeze on a copy of the quickstart's Ray Train storage (its two epochs' checkpoints): epochs 0 and
    1 come back from the checkpoint unchanged; only epoch 2 is trained."""
    from srel_ray.data.real import load_dataset
    from srel_ray.distributed.squeeze import run_squeeze
    from srel_ray.teacher import load_teacher

    shutil.copytree(quickstart_run / "ray" / "squeeze", tmp_path / "squeeze")
    longer = load_config(quickstart_run / "config.yaml", ["teacher.epochs=3"])
    resumed = run_squeeze(longer, load_dataset(longer.data), str(tmp_path), use_gpu=False)
    first = load_teacher(str(quickstart_run / "teacher" / "teacher.pt")).metrics["history"]
    assert [h["epoch"] for h in first] == [0, 1]
    assert resumed.metrics["history"][:2] == first
    assert [h["epoch"] for h in resumed.metrics["history"]] == [0, 1, 2]


def test_a_run_folder_given_as_a_url_holds_the_same_outputs(runs_by_actor_count):
    """Every stage of the 1-actor run, Ray Train's storage included, wrote through its file:// URL; its outputs
    equal the local-folder run's (test_same_outputs_whatever_the_actor_count)."""
    out = runs_by_actor_count[1]
    assert sorted(p.name for p in out.parent.iterdir()) == ["url-run"]  # nothing written to a folder named "file:"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["outputs"]["condensed"] == f"file://{out}/condensed"
    assert (out / "condensed_grid.png").exists() and any((out / "ray").iterdir())


def test_evaluate_adds_a_student_architecture_to_a_finished_run(runs_by_actor_count, reference_args, tmp_path,
                                                                capsys):
    """`srel-ray evaluate --set evaluate.students=[...]` on a finished run: the folder takes it (same identity), only
    the new architecture's student trains (on Ray Train), and summary.json gains the cross-architecture table. The
    1-actor run has no baselines, so one student trains here; that an added architecture also trains both
    random-real students by the same protocol is test_stages_in_process's."""
    out = tmp_path / "run"
    shutil.copytree(runs_by_actor_count[1], out, ignore=shutil.ignore_patterns("ray", "logs"))
    before = {p.name: p.read_bytes() for p in (out / "evaluate").glob("*.json")}
    extra = "evaluate.students=[{arch: convnet, arch_kwargs: {width: 4, depth: 1}}]"
    assert main(["evaluate", "--config", str(out / "config.yaml"), "--out", str(out), *reference_args,
                 "--set", extra]) == 0
    assert {p.name: p.read_bytes() for p in (out / "evaluate").glob("*.json")} == before  # not trained again
    key = load_config(out / "config.yaml").evaluate.students[0].key
    assert sorted(p.name for p in (out / "evaluate" / key).iterdir()) == ["condensed.json"]
    cross = json.loads((out / "summary.json").read_text())["cross_arch"]
    assert list(cross) == ["convnet", key] and 0 <= cross[key]["student_top1"] <= 1
    assert cross[key]["baseline_random_hard_top1"] is None  # no baselines in this run
    assert "student architecture" in capsys.readouterr().out


def test_students_trained_at_once_train_as_they_do_one_at_a_time(quickstart_run, mlflow_uri, tmp_path):
    """resources.concurrent_students=2: two of the quickstart's three students trained again at once (each its own
    Ray Train fit from a thread of the driver; the third's record is kept, so it is skipped) give the records that
    one at a time gave, and count their epochs on one bar. More students than at once wait for a free slot:
    tests/unit/test_at_once.py (a third student here would be one more fit, about 13 s of the suite)."""
    from .conftest import console_to

    out = tmp_path / "run"
    shutil.copytree(quickstart_run, out, ignore=shutil.ignore_patterns("ray", "logs"))
    for name in ("condensed", "random_real_hard"):
        (out / "evaluate" / f"{name}.json").unlink()
    with console_to(tmp_path / "console.txt"):
        code = main(["evaluate", "--config", str(out / "config.yaml"), "--out", str(out),
                     *as_args(TINY + [f"tracking.tracking_uri={mlflow_uri}", "resources.concurrent_students=2"])])
    console = (tmp_path / "console.txt").read_bytes().decode()  # keep "\r": bars redraw with it
    assert code == 0, console[-3000:]

    def history(folder, name):
        return [{k: v for k, v in row.items() if "second" not in k}
                for row in json.loads((folder / "evaluate" / f"{name}.json").read_text())["history"]]

    for name in ("condensed", "random_real_hard", "random_real_soft"):
        assert history(out, name) == history(quickstart_run, name), name
    # Ray's raylet warns once its worker processes reach 4x the CPUs (two fits' controllers, workers and placement
    # group cleaners on this 2-CPU cluster): its own line, printed into the console whatever the driver asks.
    console = re.sub(r"\x1b\[33m\(raylet\)\x1b\[0m WARNING: \d+ PYTHON worker processes have been started [^\n]*\n",
                     "", console)
    bars = [line.rsplit("\r", 1)[-1] for line in console.split("\n") if "epoch/s" in line]
    assert len(bars) == 1 and bars[0].startswith("students (2 at a time): 100%") and " 4/4 " in bars[0], bars
