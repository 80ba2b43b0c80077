"""`srel-ray quickstart` end to end at a tiny budget: the output contract other tools read, and MLflow contents."""

import json

import pyarrow.parquet as pq
from mlflow.tracking import MlflowClient

from srel_ray.config import load_config
from srel_ray.data import sets

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

    label_files = sorted((condensed / "labels").glob("*.parquet"))
    assert len(label_files) == cfg.relabel.epochs
    table = pq.read_table(label_files[0])
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
    torch.testing.assert_close(labels.logits, logits.half().float())


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


def test_rerun_skips_finished_work(quickstart_run, tiny, capsys):
    """The same command on a finished folder resumes: every stage is skipped and the outputs stay identical."""
    from srel_ray.cli import main
    from srel_ray.pipeline import STAGES

    before = {p: p.read_bytes() for p in (quickstart_run / "condensed").rglob("*") if p.is_file()}
    summary = (quickstart_run / "summary.json").read_text()
    records = {s: json.loads((quickstart_run / "stages" / f"{s}.json").read_text()) for s in STAGES}
    assert main(["quickstart", "--out", str(quickstart_run), *tiny]) == 0
    after = {p: p.read_bytes() for p in (quickstart_run / "condensed").rglob("*") if p.is_file()}
    assert before == after
    rerun = {s: json.loads((quickstart_run / "stages" / f"{s}.json").read_text()) for s in STAGES}
    assert all(rerun[s]["result"]["skipped"] for s in STAGES)
    # A resumed stage keeps the seconds of the run that did its work.
    assert {s: r["seconds"] for s, r in rerun.items()} == {s: r["seconds"] for s, r in records.items()}
    assert json.loads((quickstart_run / "summary.json").read_text())["student_top1"] == json.loads(summary)["student_top1"]
