"""`srel-ray quickstart` end to end at a tiny budget: the output contract other tools read, and MLflow contents."""

import json
import re

import pyarrow.parquet as pq
from mlflow.tracking import MlflowClient

from srel_ray.config import load_config
from srel_ray.storage import sets

from .conftest import recorded_checksums

SUMMARY_KEYS = {"dataset", "num_classes", "ipc", "teacher_top1", "student_top1", "baseline_random_hard_top1",
                "baseline_random_soft_top1", "seconds"}


def test_output_contract(quickstart_run):
    out = quickstart_run
    cfg = load_config(out / "config.yaml")
    assert cfg.recover.iterations == 4 and cfg.data.name == "digits"  # the final config, overrides applied

    summary = json.loads((out / "summary.json").read_text())
    assert SUMMARY_KEYS <= set(summary)
    assert summary["dataset"] == "digits" and summary["num_classes"] == 10 and summary["ipc"] == cfg.recover.ipc
    assert set(summary["seconds"]) == {"squeeze", "recover", "relabel", "evaluate"}
    assert all(v > 0 for v in summary["seconds"].values())
    for key in ("teacher_top1", "student_top1", "baseline_random_hard_top1", "baseline_random_soft_top1"):
        assert 0.0 <= summary[key] <= 1.0

    condensed = out / "condensed"
    for label in range(10):
        pngs = sorted(p.name for p in (condensed / "images" / str(label)).iterdir())
        assert pngs == [f"{i:05d}.png" for i in range(cfg.recover.ipc)]
    manifest = json.loads((condensed / "manifest.json").read_text())
    assert [c["name"] for c in manifest["classes"]] == [str(d) for d in range(10)]
    assert manifest["ipc"] == cfg.recover.ipc and manifest["counts"]["images"] == 10 * cfg.recover.ipc
    assert manifest["counts"]["label_files"] == cfg.relabel.epochs
    assert manifest["teacher"]["arch"] == "convnet" and manifest["config"]["seed"] == cfg.seed

    records = sorted((condensed / "labels").glob("epoch-*.json"))  # one committed record per label epoch
    assert len(records) == cfg.relabel.epochs
    parts = json.loads(records[0].read_text())["parts"]
    table = pq.read_table(condensed / parts[0]["file"])
    assert sum(p["rows"] for p in parts) == table.num_rows  # the tiny set is one relabel block
    assert table.num_rows == 10 * cfg.recover.ipc * cfg.relabel.views_per_epoch
    assert str(table.schema.field("logits").type) == "fixed_size_list<element: halffloat>[10]"
    assert not list(out.rglob("*.tmp")), "no temporary files may be left behind"


def test_relabelled_views_replay_exactly(quickstart_run):
    """The stored logits are the teacher's logits on exactly the stored views, drawn from (seed, image, epoch)."""
    import torch

    from srel_ray.core.recover import freeze
    from srel_ray.core.relabel import teacher_logits, view_pixels, views_for
    from srel_ray.teacher import load_teacher

    cfg = load_config(quickstart_run / "config.yaml")
    teacher = load_teacher(str(quickstart_run / "teacher" / "teacher.pt"))
    info = sets.read_set(str(quickstart_run / "condensed"))
    images = sets.read_images(info.path, info.num_classes, info.ipc, info.channels)
    labels = sets.read_label_epoch(info.path, 1)
    for row in (0, 7, len(labels.image_index) - 1):
        image_id = int(labels.image_index[row])
        expected = views_for(cfg.seed, image_id, 1, cfg.relabel.views_per_epoch, 16, 16, cfg.relabel.crop_scale,
                             cfg.data.hflip)
        torch.testing.assert_close(labels.views.boxes[row], expected.boxes[0])
    pixels = view_pixels(images[labels.image_index], labels.views, 16, teacher.norm)
    logits = teacher_logits(freeze(teacher.build()), pixels, 64, "cpu")
    torch.testing.assert_close(labels.logits, logits.half())  # kept as stored, float16


def test_mlflow_run_recorded(quickstart_run, mlflow_uri):
    client = MlflowClient(tracking_uri=mlflow_uri)
    experiment = client.get_experiment_by_name("srel_ray")
    assert experiment.artifact_location.startswith("file:///")  # absolute, whatever the working directory
    runs = [r for r in client.search_runs([experiment.experiment_id])
            if r.data.tags.get("srel_ray.out") == str(quickstart_run)]
    assert len(runs) == 1
    run = runs[0]
    assert run.data.params["recover.iterations"] == "4"
    assert {"student_top1", "teacher_top1", "baseline_random_soft_top1", "seconds.recover"} <= set(run.data.metrics)
    history = client.get_metric_history(run.info.run_id, "teacher.test_top1")
    assert [m.step for m in history] == [0, 1]
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"condensed_grid.png", "summary.json"} <= artifacts


def test_rerun_skips_finished_work(quickstart_run, tiny, capsys, mlflow_uri):
    """The same command on a finished folder resumes: every stage is skipped and the outputs stay identical."""
    from srel_ray.cli import main, quickstart_config
    from srel_ray.pipeline import STAGES

    before = {p: p.read_bytes() for p in (quickstart_run / "condensed").rglob("*") if p.is_file()}
    summary = (quickstart_run / "summary.json").read_text()
    records = {s: json.loads((quickstart_run / "stages" / f"{s}.json").read_text()) for s in STAGES}
    assert main(["quickstart", "--config", str(quickstart_config()), "--out", str(quickstart_run), *tiny]) == 0
    after = {p: p.read_bytes() for p in (quickstart_run / "condensed").rglob("*") if p.is_file()}
    assert before == after
    rerun = {s: json.loads((quickstart_run / "stages" / f"{s}.json").read_text()) for s in STAGES}
    assert all(rerun[s]["result"]["skipped"] for s in STAGES)
    # A resumed stage keeps the seconds of the run that did its work.
    assert {s: r["seconds"] for s, r in rerun.items()} == {s: r["seconds"] for s, r in records.items()}
    assert json.loads((quickstart_run / "summary.json").read_text())["student_top1"] == json.loads(summary)["student_top1"]
    # The resumed command continued the same MLflow run.
    client = MlflowClient(tracking_uri=mlflow_uri)
    runs = [r for r in client.search_runs([client.get_experiment_by_name("srel_ray").experiment_id])
            if r.data.tags.get("srel_ray.out") == str(quickstart_run)]
    assert [r.info.run_id for r in runs] == [json.loads((quickstart_run / "tracking.json").read_text())["run_id"]]


def _pinned_values(out) -> dict:
    import hashlib

    summary = json.loads((out / "summary.json").read_text())
    checksums = recorded_checksums(out / "condensed")

    def digest(prefix):
        return hashlib.sha256("".join(f"{p}={h}\n" for p, h in sorted(checksums.items())
                                      if p.startswith(prefix)).encode()).hexdigest()

    from .conftest import files_digest

    condensed = json.loads((out / "evaluate" / "condensed.json").read_text())
    histories = {name: [{k: v for k, v in row.items() if "second" not in k} for row in
                        json.loads((out / "evaluate" / f"{name}.json").read_text())["history"]]
                 for name in ("condensed", "random_real_hard", "random_real_soft")}
    values = {k: round(100 * summary[k], 2) for k in ("teacher_top1", "student_top1", "baseline_random_hard_top1",
                                                      "baseline_random_soft_top1", "student_top5")}
    return {**values, "condensed_last_train_loss": round(condensed["history"][-1]["train_loss"], 4),
            "condensed_images_sha256": digest("images/"), "condensed_labels_sha256": digest("labels/"),
            "random_real_files_sha256": files_digest(out / "baselines" / "random_real", ("images", "labels")),
            "student_histories_sha256": hashlib.sha256(json.dumps(histories, sort_keys=True).encode()).hexdigest()}


def test_tiny_quickstart_results_are_pinned(quickstart_run):
    """A change of what the quickstart computes must be deliberate: update PINNED_TINY_QUICKSTART (conftest.py)."""
    from .conftest import PINNED_TINY_QUICKSTART

    actual = _pinned_values(quickstart_run)
    assert actual == PINNED_TINY_QUICKSTART, f"the tiny quickstart now gives (paste into conftest.py):\n{actual!r}"


def test_console_shows_stages_and_bars_only(quickstart_run):
    """The default console: a start and an end line per stage, one bar per long loop, then the table; none of
    Ray's or MLflow's own output (it is in DIR/logs/)."""
    text = (quickstart_run.parent / "console.txt").read_bytes().decode()  # keep "\r": bars redraw with it
    # The one line Ray's core prints on its own (ray-project/ray#53727) for Ray Data's actor pool; srel_ray cannot
    # silence it without silencing every error of Ray's core.
    text, ray_lines = re.subn(r"\[[-0-9 :,]+ E \d+ \d+\] core_worker\.cc:\d+: Actor with class name: [^\n]* has "
                              r"constructor arguments in the object store [^\n]*\n", "", text)
    assert ray_lines <= 2  # one per relabelled set at most
    lines = [line.rsplit("\r", 1)[-1].rstrip() for line in text.split("\n")]  # a bar's last state
    table_at = lines.index("digits: 10 classes, IPC 2, teacher convnet, student convnet")
    before = [line for line in lines[:table_at] if line]
    stages = [f"[{i}/4] {s}" for i, s in enumerate(STAGES_IN_ORDER, 1)]
    bars = ["squeeze", "recover", "relabel condensed", "relabel random_real", "student condensed",
            "student random_real_hard", "student random_real_soft"]
    assert len(before) == 2 * len(stages) + len(bars), "\n".join(before)
    stage_lines = [line for line in before if line.startswith("[")]
    assert stage_lines[0::2] == [f"{s} ..." for s in stages]
    assert all(line.startswith(f"{s} done in ") for s, line in zip(stages, stage_lines[1::2]))
    assert sorted(line.split(":")[0] for line in before if not line.startswith("[")) == sorted(bars)
    assert all("100%" in line for line in before if not line.startswith("["))  # every bar finished
    after = [line for line in lines[table_at:] if line]
    assert len(after) == 9 and after[-1].startswith("outputs: ")  # the 8 lines of the table, then the outputs
    assert (quickstart_run / "logs" / "driver.log").stat().st_size > 0
    assert (quickstart_run / "logs" / "ray").is_dir()  # Ray's session logs: workers' output


STAGES_IN_ORDER = ("squeeze", "recover", "relabel", "evaluate")


def test_metrics_reach_mlflow_while_the_stage_runs(quickstart_run, mlflow_uri):
    """Epoch 0 of the teacher is in MLflow before epoch 1's checkpoint was written: logged live, not at the end."""
    client = MlflowClient(tracking_uri=mlflow_uri)
    run_id = json.loads((quickstart_run / "tracking.json").read_text())["run_id"]
    first = next(m for m in client.get_metric_history(run_id, "teacher.test_top1") if m.step == 0)
    last_checkpoint = max((quickstart_run / "ray" / "squeeze").rglob("state.pt"), key=lambda p: p.stat().st_mtime)
    assert first.timestamp / 1000 < last_checkpoint.stat().st_mtime
    losses = client.get_metric_history(run_id, "recover.loss")  # every tracking.loss_interval iterations
    assert losses == [] or all(m.value > 0 for m in losses)
    students = client.get_metric_history(run_id, "student.condensed.train_loss")
    assert [m.step for m in students] == [0, 1]
    assert "accuracy_curves.png" in {a.path for a in client.list_artifacts(run_id)}


def test_show_prints_table_stages_and_pictures(quickstart_run, capsys):
    from srel_ray.cli import main

    assert main(["show", str(quickstart_run)]) == 0
    out = capsys.readouterr().out
    summary = json.loads((quickstart_run / "summary.json").read_text())
    assert f"{100 * summary['student_top1']:6.2f}" in out and "random real, teacher labels" in out
    assert str(quickstart_run / "accuracy_curves.png") in out and str(quickstart_run / "condensed_grid.png") in out
    for stage in STAGES_IN_ORDER:  # one line per stage with the seconds of the run that did its work
        seconds = json.loads((quickstart_run / "stages" / f"{stage}.json").read_text())["seconds"]
        assert f"{stage:9s} {seconds:8.1f} s" in out
    run_id = json.loads((quickstart_run / "tracking.json").read_text())["run_id"]
    assert f"mlflow: run {run_id}" in out


def test_the_summary_step_and_show_without_matplotlib(quickstart_run, tmp_path):
    """Without the ``plots`` extra a finished run still writes its summary; the curves are skipped with one log line
    and ``srel-ray show`` says the picture is absent and why."""
    import shutil
    import subprocess
    import sys

    from tests.unit.test_without_matplotlib import PACKAGE, WITHOUT_MATPLOTLIB

    out = tmp_path / "quick"
    shutil.copytree(quickstart_run, out, ignore=shutil.ignore_patterns("ray", "logs"))
    (out / "accuracy_curves.png").unlink()
    before = json.loads((out / "summary.json").read_text())
    code = WITHOUT_MATPLOTLIB + f"""
import logging
logging.basicConfig(level=logging.INFO)
from srel_ray.config import load_config
from srel_ray.data.real import load_dataset
from srel_ray.inspection import show_run
from srel_ray.stage_loop import draw_curves
from srel_ray.storage.layout import RunDir
from srel_ray.summary import write_summary

run = RunDir.at({str(out)!r})
cfg = load_config(run.config)
write_summary(cfg, run, load_dataset(cfg.data))
draw_curves(run)
print(show_run({str(out)!r}))
print(sorted(m for m in sys.modules if m.startswith("matplotlib")))
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=PACKAGE.parent, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    after = json.loads((out / "summary.json").read_text())
    same = set(before) - {"seconds", "outputs"}  # outputs: the folder's paths, here the copy's
    assert {k: after[k] for k in same} == {k: before[k] for k in same} and set(after) == set(before)
    assert not (out / "accuracy_curves.png").exists()
    assert [line for line in done.stderr.splitlines() if "pip install 'srel_ray[plots]'" in line] != []
    assert len([line for line in done.stderr.splitlines() if "not drawn" in line]) == 1
    assert f"absent: {out / 'accuracy_curves.png'} (matplotlib is not installed" in done.stdout
    assert f"pictures: {out / 'condensed_grid.png'}" in done.stdout
    assert done.stdout.strip().endswith("[]")


def test_verify_rereads_every_set_and_names_a_changed_file(quickstart_run, tmp_path, capsys):
    """`srel-ray verify DIR`: the manifests' checksums (recorded by the writers, never read back when the manifest
    was assembled) match the files; a changed image is named, with exit code 3."""
    import shutil

    from srel_ray.cli import main

    out = tmp_path / "quick"
    shutil.copytree(quickstart_run, out, ignore=shutil.ignore_patterns("ray", "logs"))
    assert main(["verify", str(out)]) == 0
    printed = capsys.readouterr().out.splitlines()
    records = {name: json.loads((out / name / "manifest.json").read_text())["records"]
               for name in ("condensed", "baselines/random_real")}
    counts = {name: len(records[name]) + len(recorded_checksums(out / name)) for name in records}
    images = 10 * load_config(out / "config.yaml").recover.ipc
    # every image and at least one label part per epoch, and the markers and epoch records that vouch for them
    assert all(len(recorded_checksums(out / name)) > images for name in records)
    assert printed == [f"{out}/{name}: {n} files match their manifest checksums" for name, n in counts.items()]
    (out / "baselines" / "random_real" / "images" / "3" / "00001.png").write_bytes(
        (out / "baselines" / "random_real" / "images" / "3" / "00000.png").read_bytes())
    assert main(["verify", str(out)]) == 3
    assert "images/3/00001.png is changed since the manifest was written" in capsys.readouterr().err
    shutil.copy(quickstart_run / "baselines" / "random_real" / "images" / "3" / "00001.png",
                out / "baselines" / "random_real" / "images" / "3" / "00001.png")
    marker = out / "condensed" / ".progress" / "unit-000000.json"
    vouched = json.loads(marker.read_text())
    first, second = sorted(vouched["checksums"])[:2]
    vouched["checksums"][first] = vouched["checksums"][second]  # the marker no longer vouches for what was written
    marker.write_text(json.dumps(vouched))
    assert main(["verify", str(out)]) == 3
    assert ".progress/unit-000000.json is changed since the manifest was written" in capsys.readouterr().err
