"""One tuning trial in process (no Ray): the chain's outputs, set sharing between trials, replay of finished ones,
and the method options (starting images, per-class matching, several teachers, the EMA student) run as the
pipeline runs them."""

import copy
import json
from pathlib import Path

import pytest
import torch

from srel_ray.cli import quickstart_config
from srel_ray.config import TRIAL_METRICS, load_config
from srel_ray.core.class_stats import ClassStatsAccumulator, batch_sums
from srel_ray.core.recover import Recovery, freeze, plan_units, recover_unit
from srel_ray.core.recover_terms import recover_terms
from srel_ray.core.relabel import teacher_logits, view_pixels, views_for
from srel_ray.core.student import build_student, count_correct
from srel_ray.storage import sets
from srel_ray.storage.verify import verify_set
from srel_ray.data.class_images import rded_start
from srel_ray.data.real import WithoutRows, load_dataset, random_real_indices, validation_indices
from srel_ray.models import create_model
from srel_ray.search_space import apply_params
from srel_ray.teacher import Teacher, load_class_stats, load_teacher, save_class_stats, save_teacher
from srel_ray import trial as trial_module
from srel_ray.trial import (TrialInputs, run_trial, score_on_test, set_key, student_epochs, trial_dir,
                            validation_images, validation_parts)

TINY = ["recover.iterations=3", "relabel.epochs=2", "evaluate.epochs=3", "teacher.arch_kwargs={width: 8, depth: 2}",
        "evaluate.arch_kwargs={width: 8, depth: 2}", "resources.use_gpu=false"]


@pytest.fixture(scope="module")
def search(tmp_path_factory):
    """A search folder with an (untrained) teacher and the digits validation split, as the tune driver makes them."""
    out = tmp_path_factory.mktemp("search")
    cfg = load_config(quickstart_config(), TINY)
    data = load_dataset(cfg.data)
    _save_untrained_teacher(data, out / "teacher" / "teacher.pt", seed=0)
    return cfg, _inputs(out, cfg, data), data


def _save_untrained_teacher(data, path, seed: int) -> None:
    torch.manual_seed(seed)
    model = create_model("convnet", num_classes=10, in_channels=1, image_size=16, width=8, depth=2)
    save_teacher(Teacher("convnet", {"width": 8, "depth": 2}, data.class_names, 1, 16, data.norm, model.state_dict()),
                 str(path))


def _inputs(out, cfg, data, **options) -> TrialInputs:
    return TrialInputs(str(out), str(out / "teacher" / "teacher.pt"), "digits", data.norm,
                       len(_val_rows(cfg.data, data)), cfg.data, **options)


def _val_rows(data_cfg, data) -> torch.Tensor:
    """The validation split a trial draws (from data.val_fraction and data.split_seed), drawn here directly."""
    return validation_indices(data.labels("train"), 10, data_cfg.val_fraction, data_cfg.split_seed)


def validation(inputs):
    """Every validation image and label, concatenated from the files a trial reads one at a time."""
    images, labels = zip(*validation_images(validation_parts(inputs)))
    return torch.cat(images), torch.cat(labels)


def _run(cfg, inputs):
    reports = []
    record = run_trial(cfg, inputs, reports.append)
    return record, reports


def test_trial_reports_every_epoch_and_writes_its_record(search):
    cfg, inputs, data = search
    record, reports = _run(cfg, inputs)
    assert [r["epoch"] for r in reports] == [0, 1, 2]
    assert all(set(r) == {"epoch", "epochs_trained", *TRIAL_METRICS} for r in reports)
    assert all(0.0 <= r["val_top1"] <= r["val_top5"] <= 1.0 for r in reports)
    folder = trial_dir(inputs.out, cfg)
    assert json.loads((folder / "trial.json").read_text())["history"] == reports == record["history"]
    assert record["final"] == {k: reports[-1][k] for k in TRIAL_METRICS}
    assert record["val_images"] == inputs.val_images == 136  # 10 % of each digits training class
    images, labels = validation(inputs)  # decoded once, by the trial, into the search folder
    assert torch.equal(images, data.images_at("train", _val_rows(inputs.data, data))) and len(labels) == 136
    assert (folder / "student.pt").exists() and (folder / "condensed_grid.png").exists()

    set_dir = str(inputs.out) + f"/sets/{set_key(cfg)}"
    verify_set(set_dir)  # a complete set in the published format, checksums included
    info = sets.read_set(set_dir)
    assert (info.ipc, info.label_epochs, len(sets.label_epochs_done(set_dir, 2))) == (2, 2, 2)


def test_labels_are_the_teachers_logits_on_the_replayed_views(search):
    cfg, inputs, _ = search
    _run(cfg, inputs)
    set_dir = str(inputs.out) + f"/sets/{set_key(cfg)}"
    info = sets.read_set(set_dir)
    teacher = load_teacher(inputs.teacher_path)
    images = sets.read_images(set_dir, 10, info.ipc, 1)
    labels = sets.read_label_epoch(set_dir, 1)
    expected = views_for(cfg.seed, 7, 1, 1, 16, 16, cfg.relabel.crop_scale, cfg.data.hflip)
    torch.testing.assert_close(labels.views.boxes[7], expected.boxes[0])
    pixels = view_pixels(images[labels.image_index], labels.views, 16, teacher.norm)
    torch.testing.assert_close(labels.logits, teacher_logits(freeze(teacher.build()), pixels, 64, "cpu").half())


def test_trials_differing_only_in_temperature_share_one_set(search):
    cfg, inputs, _ = search
    _run(cfg, inputs)
    set_dir = inputs.out + f"/sets/{set_key(cfg)}"
    images_before = {p: p.stat().st_mtime_ns for p in sorted(Path(set_dir).rglob("*.png"))}
    warmer = apply_params(cfg, {"evaluate.temperature": 9.0})
    record, reports = _run(warmer, inputs)
    assert set_key(warmer) == set_key(cfg) and trial_dir(inputs.out, warmer) != trial_dir(inputs.out, cfg)
    assert record["seconds"]["recover"] == 0.0 and len(reports) == 3
    assert {p: p.stat().st_mtime_ns for p in images_before} == images_before  # not recovered again
    assert set_key(apply_params(cfg, {"recover.iterations": 4})) != set_key(cfg)


def test_a_finished_trial_replays_instead_of_training(search):
    cfg, inputs, _ = search
    first, _ = _run(cfg, inputs)
    student = trial_dir(inputs.out, cfg) / "student.pt"
    stamp = student.stat().st_mtime_ns
    again, reports = _run(cfg, inputs)
    assert again == first
    assert reports == [{**row, "replayed": True} for row in first["history"]]
    assert student.stat().st_mtime_ns == stamp


def test_best_student_scored_once_on_the_test_split(search):
    cfg, inputs, data = search
    _run(cfg, inputs)
    scores = score_on_test(cfg, trial_dir(inputs.out, cfg), data)
    assert scores["n"] == len(data.labels("test")) == 450
    assert 0.0 <= scores["test_top1"] <= scores["test_top5"] <= 1.0


def test_validation_images_are_decoded_once_into_files_a_trial_holds_one_at_a_time(search, tmp_path, monkeypatch):
    cfg, _, data = search
    inputs = _inputs(tmp_path, cfg, data)
    monkeypatch.setattr(trial_module, "VALIDATION_PART", 64)  # 136 images: files of 64, 64 and 8
    parts = validation_parts(inputs)
    assert [len(labels) for _, labels in validation_images(parts)] == [64, 64, 8]
    images, labels = validation(inputs)
    assert torch.equal(images, data.images_at("train", _val_rows(inputs.data, data)))
    assert torch.equal(labels, data.labels("train")[_val_rows(inputs.data, data)])
    monkeypatch.setattr(trial_module, "load_dataset", None)  # a later trial reads the files, never the data
    assert validation_parts(inputs) == parts


def test_starting_images_are_training_images_outside_the_validation_split(search):
    cfg, inputs, data = search
    real = apply_params(cfg, {"recover.init": "real", "recover.iterations": 0})  # the set is its starting images
    _run(real, inputs)
    images = sets.read_images(inputs.out + f"/sets/{set_key(real)}", 10, 2, 1)
    kept = WithoutRows(data, _val_rows(inputs.data, data))
    rows = kept.kept[random_real_indices(kept.labels("train"), 10, 2, cfg.seed)]  # class-major, as the set
    assert not set(rows.tolist()) & set(_val_rows(inputs.data, data).tolist())
    assert torch.equal(data.labels("train")[rows], torch.arange(10).repeat_interleave(2))
    assert torch.equal(images, data.images_at("train", rows))


def _class_stats(data, teacher_path, folder) -> None:
    """Per-class statistics over the whole training split, as the tune driver's streaming pass writes them."""
    teacher = load_teacher(str(teacher_path))
    model, acc = freeze(teacher.build()), ClassStatsAccumulator(10)
    for x, y in data.batches("train", 256):
        acc.add(batch_sums(model, teacher.norm.normalize(x.float() / 255), y))
    save_class_stats(acc.result(), str(folder), {"teacher": str(teacher_path)})


def test_a_trial_runs_rded_starts_class_matching_and_two_teachers_as_the_core_does(tmp_path):
    cfg = load_config(quickstart_config(), ["method=edc", *TINY, "recover.iterations=2"])
    assert (cfg.recover.init, cfg.recover.class_bn_weight, cfg.evaluate.ema_decay) == ("rded", 0.5, 0.99)
    data = load_dataset(cfg.data)
    teachers = [tmp_path / "teacher" / "teacher.pt", tmp_path / "teacher" / "extra-1.pt"]
    stats = [tmp_path / "teacher" / "class_stats" / name for name in ("teacher", "extra-1")]
    for seed, (path, folder) in enumerate(zip(teachers, stats)):
        _save_untrained_teacher(data, path, seed)
        _class_stats(data, path, folder)
    inputs = _inputs(tmp_path, cfg, data, extra_teachers=(str(teachers[1]),), class_stats=tuple(map(str, stats)))
    record, _ = _run(cfg, inputs)

    set_dir = str(tmp_path / "sets" / set_key(cfg))
    models = [freeze(load_teacher(str(p)).build()) for p in teachers]
    # RDED's selection of each class, from training images that are not validation images (stored by the trial)
    kept = WithoutRows(data, _val_rows(inputs.data, data))
    starts = {c: rded_start(kept, cfg.recover, cfg.seed, models, data.norm, c) for c in range(10)}
    expected = {}
    for unit in plan_units(10, cfg.recover.ipc, cfg.recover.classes_per_unit, cfg.recover.ipc_per_unit):
        class_stats = [load_class_stats(str(folder), list(unit.classes)) for folder in stats]
        images, _ = recover_unit(Recovery.of(cfg, models, data.norm), unit, recover_terms(cfg.recover, class_stats),
                                 init=torch.stack([starts[c][i] for c, i in unit.targets()]))
        expected.update(zip(unit.targets(), images))
    got = sets.read_images(set_dir, 10, cfg.recover.ipc, 1)
    assert torch.equal(got, torch.stack([expected[(c, i)] for c in range(10) for i in range(cfg.recover.ipc)]))

    labels = sets.read_label_epoch(set_dir, 1)  # the mean of both teachers' logits on the stored views
    pixels = view_pixels(got[labels.image_index], labels.views, 16, data.norm)
    mean = (teacher_logits(models[0], pixels, 64, "cpu") + teacher_logits(models[1], pixels, 64, "cpu")) / 2
    torch.testing.assert_close(labels.logits, mean.half())  # kept as stored

    student = build_student(cfg.evaluate, seed=cfg.seed, num_classes=10, channels=1, image_size=16)
    student.load_state_dict(torch.load(trial_dir(tmp_path, cfg) / "student.pt", weights_only=True))
    images, labels = validation(inputs)
    val = count_correct(student, [(data.norm.normalize(images.float() / 255), labels)])
    assert record["final"]["val_top1"] == val["top1"] / val["n"]  # the saved student is the one scored


def test_the_student_a_trial_scores_is_the_ema_of_its_weights(search):
    cfg, inputs, _ = search
    one_step = apply_params(cfg, {"evaluate.batch_size": 64})  # 20 stored views: one optimiser step per epoch
    _run(one_step, inputs)  # makes the set
    info = sets.read_set(inputs.out + f"/sets/{set_key(one_step)}")
    raw = [copy.deepcopy(model.state_dict()) for _, model in student_epochs(one_step, info, inputs)]
    averaged = [copy.deepcopy(model.state_dict())
                for _, model in student_epochs(apply_params(one_step, {"evaluate.ema_decay": 0.6}), info, inputs)]
    ema = build_student(cfg.evaluate, seed=cfg.seed, num_classes=10, channels=1, image_size=16).state_dict()
    assert len(raw) == len(averaged) == 3
    for t, (weights, got) in enumerate(zip(raw, averaged)):  # theta_ema <- d theta_ema + (1 - d) theta
        d = min(0.6, (1 + t) / (10 + t))  # the warm-up: 0.1, 0.18, 0.25 at these first three steps
        ema = {k: d * v + (1 - d) * weights[k] if v.dtype.is_floating_point else weights[k] for k, v in ema.items()}
        for key in ema:
            torch.testing.assert_close(got[key], ema[key])
    assert any(not torch.equal(averaged[-1][k], v) for k, v in raw[-1].items() if v.dtype.is_floating_point)


def test_a_trial_scores_every_interval_and_always_the_last_epoch(tmp_path):
    data = None
    finals = {}
    for interval in (1, 2):
        cfg = load_config(quickstart_config(), [*TINY, "evaluate.epochs=5", f"tune.score_interval={interval}"])
        data = data or load_dataset(cfg.data)
        out = tmp_path / f"every-{interval}"
        _save_untrained_teacher(data, out / "teacher" / "teacher.pt", seed=0)
        record, reports = _run(cfg, _inputs(out, cfg, data))
        finals[interval] = record["final"]
        assert record["history"] == reports and record["final"] == {k: reports[-1][k] for k in TRIAL_METRICS}
        expected = [(0, 1), (1, 2), (2, 3), (3, 4), (4, 5)] if interval == 1 else [(1, 2), (3, 4), (4, 5)]
        assert [(r["epoch"], r["epochs_trained"]) for r in reports] == expected
    assert finals[1] == finals[2]  # the interval decides when the student is scored, not how it trains
