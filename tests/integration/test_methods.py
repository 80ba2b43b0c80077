"""Each method preset on digits at a tiny budget, from the shared quickstart teacher: edc through ``srel-ray run``,
cda and rded through squeeze and recover (their tests read only configs and recovered images).

sre2l is the quickstart itself (tests/integration/test_quickstart.py). The presets are applied to the packaged
quickstart.yaml, which leaves the methods' options unset, so each preset's values show in the saved config.
"""

import json

import pytest
import torch
import yaml

from srel_ray.cli import main, quickstart_config
from srel_ray.config import load_config
from srel_ray.core.class_stats import ClassStatsAccumulator, bn_layers, bytes_per_class
from srel_ray.core.rded import rded_images
from srel_ray.core.recover import freeze
from srel_ray.core.relabel import teacher_logits, view_pixels
from srel_ray.storage import sets
from srel_ray.data.class_images import rded_candidates, rded_generator
from srel_ray.data.real import load_dataset
from srel_ray.distributed import class_stats
from srel_ray.progress import setup_logging
from srel_ray.stages.starts import STARTS_BAR
from srel_ray.teacher import load_class_stats, load_teacher, save_teacher

from .conftest import TINY, as_args, console_to


@pytest.fixture(scope="module")
def second_teacher(quickstart_run, tmp_path_factory):
    """Another teacher.pt for multi-teacher runs: the quickstart teacher with a different classifier."""
    teacher = load_teacher(str(quickstart_run / "teacher" / "teacher.pt"))
    gen = torch.Generator().manual_seed(0)
    teacher.state_dict = {k: (v + 0.5 * torch.randn(v.shape, generator=gen) if k.startswith("classifier") else v)
                          for k, v in teacher.state_dict.items()}
    path = tmp_path_factory.mktemp("teachers") / "second.pt"
    save_teacher(teacher, str(path))
    return path


def _run(method, quickstart_run, mlflow_uri, out, *extra, commands=("run",)):
    args = as_args(TINY + [f"tracking.tracking_uri={mlflow_uri}", "teacher.source=checkpoint",
                           f"teacher.checkpoint={quickstart_run / 'teacher' / 'teacher.pt'}",
                           "recover.classes_per_unit=5", "evaluate.baselines=false", f"method={method}", *extra])
    for command in commands:
        assert main([command, "--config", str(quickstart_config()), "--out", str(out), *args]) == 0
    return load_config(out / "config.yaml")


UP_TO_RECOVER = ("squeeze", "recover")  # what the cda and rded tests read: their configs and recovered images


@pytest.fixture(scope="module")
def method_runs(quickstart_run, mlflow_uri, second_teacher, tmp_path_factory):
    """Each method's run; what rded's commands printed is in ``rded-console.txt`` beside the run folders."""
    base = tmp_path_factory.mktemp("methods")
    # quickstart.yaml sets recover.iterations, which wins over rded's 0: say it here, as docs/methods.md does.
    # Digits are 16 px, where RDED stitches nothing by default: factor 2 keeps the stitching under test.
    with console_to(base / "rded-console.txt"):
        rded = _run("rded", quickstart_run, mlflow_uri, base / "rded", "recover.iterations=0",
                    "recover.rded_pool=40", "recover.rded_factor=2", commands=UP_TO_RECOVER)
    setup_logging("normal")  # log to the real stderr again, not to the closed console file
    cda = _run("cda", quickstart_run, mlflow_uri, base / "cda", commands=UP_TO_RECOVER)
    # edc's class statistics summed by two accumulator actors of 5 classes each (5 classes' sums of both teachers:
    # 10 classes' are far below SHARD_BYTES, which the driver sums itself), each shard's files checked against a
    # direct pass.
    channels = [[layer.num_features for layer in bn_layers(load_teacher(str(p)).build())]
                for p in (quickstart_run / "teacher" / "teacher.pt", second_teacher)]
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(class_stats, "SHARD_BYTES", 5 * sum(map(bytes_per_class, channels)))
        edc = _run("edc", quickstart_run, mlflow_uri, base / "edc", "recover.rded_pool=40",
                   f"teacher.extra=[{{checkpoint: {second_teacher}}}]")
    return {"cda": cda, "rded": rded, "edc": edc}, base


def _images(out):
    info = sets.read_set(str(out / "condensed"))
    return sets.read_images(info.path, info.num_classes, info.ipc, info.channels)


def test_saved_configs_hold_the_presets_and_the_files_values(method_runs, quickstart_run):
    cfgs, base = method_runs
    assert load_config(quickstart_run / "config.yaml").method == "sre2l"
    packaged = yaml.safe_load(quickstart_config().read_text())
    for method, cfg in cfgs.items():
        assert cfg.method == method
        # Values the packaged file sets win over the preset; unset ones come from it.
        assert list(cfg.relabel.crop_scale) == packaged["relabel"]["crop_scale"]
        assert cfg.evaluate.batch_size == packaged["evaluate"]["batch_size"]
    assert cfgs["cda"].recover.crop_curriculum == "cosine"
    assert (cfgs["rded"].recover.iterations, cfgs["rded"].recover.rded_factor) == (0, 2)
    edc = cfgs["edc"]
    assert (edc.recover.init, edc.recover.class_bn_weight, edc.evaluate.lr_stretch, edc.evaluate.ema_decay) == (
        "rded", 0.5, 2.0, 0.99)
    assert edc.recover.iterations == 4  # TINY's --set wins over the preset's 500
    assert json.loads((base / "edc" / "summary.json").read_text())["student_top1"] is not None  # edc ran to the end


def test_rded_images_are_the_lowest_loss_crops_stitched(method_runs, quickstart_run):
    cfgs, base = method_runs
    cfg = cfgs["rded"]
    teacher = load_teacher(str(quickstart_run / "teacher" / "teacher.pt"))
    model, data, r = freeze(teacher.build()), load_dataset(cfg.data), cfg.recover
    stored = _images(base / "rded")
    for c in (0, 7):
        expected, _ = rded_images([model], rded_candidates(data, c, r.rded_pool, cfg.seed), c, r.ipc,
                                  crops=r.rded_crops, factor=r.rded_factor, scale=r.rded_crop_scale,
                                  norm=teacher.norm, gen=rded_generator(cfg.seed, c))
        assert torch.equal(stored[c * r.ipc:(c + 1) * r.ipc], expected)


def test_rded_start_selection_shows_a_bar_a_class(method_runs):
    """RDED's start images are selected by Ray tasks over class slices; each class a task stores advances one bar
    on the driver's console (through the progress board), which ends at every class."""
    _, base = method_runs
    text = (base / "rded-console.txt").read_bytes().decode()  # keep "\r": bars redraw with it
    lines = [line.rsplit("\r", 1)[-1].rstrip() for line in text.split("\n")]  # a bar's last state
    bars = [line for line in lines if line.startswith(f"{STARTS_BAR}:")]
    assert len(bars) == 1, text
    assert "100%" in bars[0] and " 10/10 " in bars[0] and "class" in bars[0], bars[0]  # class/s or s/class
    assert lines.index(bars[0]) < next(i for i, line in enumerate(lines) if line.startswith("recover:"))


def test_cda_curriculum_drives_the_recovery(method_runs, quickstart_run, tmp_path):
    """The same unit recovered in this process from the saved config equals the stored images; without the
    curriculum it does not."""
    from srel_ray.config import to_dict
    from srel_ray.core.recover import plan_units
    from srel_ray.distributed.recover import RecoveryWorker

    cfgs, base = method_runs
    raw = to_dict(cfgs["cda"])
    unit = plan_units(10, raw["recover"]["ipc"], 5, 1)[1]
    teacher = str(quickstart_run / "teacher" / "teacher.pt")
    RecoveryWorker(raw, teacher, str(tmp_path / "same"), 1).recover(unit)
    raw["recover"]["crop_curriculum"] = "none"
    RecoveryWorker(raw, teacher, str(tmp_path / "plain"), 1).recover(unit)
    stored = base / "cda" / "condensed"
    for c, i in unit.targets():
        name = f"images/{c}/{i:05d}.png"
        assert (tmp_path / "same" / name).read_bytes() == (stored / name).read_bytes()
    assert any((tmp_path / "plain" / f"images/{c}/{i:05d}.png").read_bytes() != (stored / f"images/{c}/{i:05d}.png")
               .read_bytes() for c, i in unit.targets())


def test_edc_class_statistics_match_a_direct_pass(method_runs, quickstart_run, second_teacher):
    cfgs, base = method_runs
    data = load_dataset(cfgs["edc"].data)
    folders = [base / "edc" / "teacher" / "class_stats" / name for name in ("teacher", "extra-1")]
    for path, folder in zip([quickstart_run / "teacher" / "teacher.pt", second_teacher], folders):
        teacher = load_teacher(str(path))
        model = freeze(teacher.build())
        direct = ClassStatsAccumulator(data.num_classes)
        for x, y in data.batches("train", 500):
            direct.update(model, teacher.norm.normalize(x.float() / 255), y)
        expected = direct.result()
        stored = load_class_stats(str(folder), list(range(10)))  # every class, from both shards
        for layer in range(len(expected.mean)):
            torch.testing.assert_close(stored.mean[layer], expected.mean[layer], rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(stored.var[layer], expected.var[layer], rtol=1e-5, atol=1e-6)
    assert (base / "edc" / "teacher" / "extra-1.pt").exists()
    log = (base / "edc" / "logs" / "driver.log").read_text()
    assert "class statistics: sums held by 2 accumulator actors of up to 5 classes" in log


def test_class_statistics_are_reused(method_runs, quickstart_run, second_teacher):
    """A complete statistics folder is not recomputed (a resumed or repeated recover stage reads it)."""
    from srel_ray.distributed.class_stats import run_class_stats

    cfgs, base = method_runs
    folders = [str(base / "edc" / "teacher" / "class_stats" / name) for name in ("teacher", "extra-1")]
    before = {p: p.stat().st_mtime_ns for p in (base / "edc" / "teacher" / "class_stats").rglob("*")}
    result = run_class_stats(cfgs["edc"], load_dataset(cfgs["edc"].data),
                             [str(quickstart_run / "teacher" / "teacher.pt"), str(second_teacher)], folders, False)
    assert result == {"skipped": True}
    assert {p: p.stat().st_mtime_ns for p in (base / "edc" / "teacher" / "class_stats").rglob("*")} == before
    assert len([p for p in before if p.name.startswith("class-")]) == 2 * 10


def test_edc_labels_average_both_teachers(method_runs, quickstart_run, second_teacher):
    cfgs, base = method_runs
    info = sets.read_set(str(base / "edc" / "condensed"))
    images = sets.read_images(info.path, info.num_classes, info.ipc, info.channels)
    labels = sets.read_label_epoch(info.path, 0)
    teachers = [load_teacher(str(p)) for p in (quickstart_run / "teacher" / "teacher.pt", second_teacher)]
    pixels = view_pixels(images[labels.image_index], labels.views, 16, teachers[0].norm)
    each = [teacher_logits(freeze(t.build()), pixels, 64, "cpu") for t in teachers]
    assert not torch.allclose(each[0], each[1], atol=0.1)  # two different teachers
    torch.testing.assert_close(labels.logits, ((each[0] + each[1]) / 2).half())


def test_edc_student_checkpoints_its_weight_average(method_runs):
    _, base = method_runs
    states = sorted((base / "edc" / "ray" / "student-condensed").rglob("state.pt"))
    assert states
    state = torch.load(states[-1], map_location="cpu", weights_only=False)
    assert set(state["ema"]) == set(state["model"])
    assert any(not torch.equal(state["ema"][k], state["model"][k]) for k in state["model"])
