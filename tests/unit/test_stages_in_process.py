"""The stage units on the in-process executor (no Ray): recover, relabel (with the random-real baseline unit) and
evaluate run, record and resume in a run folder as the orchestrator drives them on Ray."""

import pytest
import torch

from srel_ray.cli import quickstart_config
from srel_ray.config import load_config
from srel_ray.core.class_stats import ClassStatsAccumulator
from srel_ray.core.recover import freeze
from srel_ray.data.real import load_dataset
from srel_ray.errors import SrelError
from srel_ray.models import create_model
from srel_ray.stages import baselines, evaluate, recover, relabel
from srel_ray.stages.base import StageContext
from srel_ray.stages.checks import check_inputs, made_by, read_from_folder
from srel_ray.stages.local import InProcessExecutor
from srel_ray.storage import files, sets
from srel_ray.storage.layout import prepare_out
from srel_ray.storage.verify import verify_set
from srel_ray.teacher import Teacher, load_class_stats, load_teacher, save_teacher
from srel_ray.tracking import Tracker

TINY = ["recover.iterations=2", "relabel.epochs=2", "evaluate.epochs=2", "teacher.arch_kwargs={width: 8, depth: 2}",
        "evaluate.arch_kwargs={width: 8, depth: 2}", "resources.use_gpu=false", "recover.ipc=1"]


def _run_with_teacher(tmp_path):
    """The tiny config, the digits data and a claimed run folder holding an untrained teacher (seed 0)."""
    cfg = load_config(quickstart_config(), TINY)
    data = load_dataset(cfg.data)
    run = prepare_out(cfg, tmp_path / "run")
    torch.manual_seed(0)
    model = create_model("convnet", num_classes=10, in_channels=1, image_size=16, width=8, depth=2)
    save_teacher(Teacher("convnet", {"width": 8, "depth": 2}, data.class_names, 1, 16, data.norm, model.state_dict()),
                 run.teacher)
    return cfg, data, run


def test_stage_units_run_and_resume_in_process(tmp_path):
    cfg, data, run = _run_with_teacher(tmp_path)
    check_inputs(cfg, run, ("recover", "relabel", "evaluate"))  # the teacher is in the folder: nothing to make
    ctx = StageContext(cfg, run, data, InProcessExecutor(start_data=lambda: data), Tracker(False))
    assert not any(unit.is_done(cfg, run) for unit in (recover, relabel, evaluate))

    first = recover.record(recover.run(ctx))
    assert (first["units"], first["skipped_units"]) == (len(sets.unit_markers(run.set_dir("condensed"))), 0)
    labelled = relabel.record(relabel.run(ctx))
    assert labelled["condensed"] == labelled["random_real"] == {"epochs": 2, "skipped_epochs": 0}
    assert baselines.is_done(cfg, run) and relabel.is_done(cfg, run)
    verify_set(run.set_dir("condensed"))
    scores = evaluate.record(evaluate.run(ctx))
    assert set(scores) == {"condensed", "random_real_hard", "random_real_soft", "skipped_students", "resumed",
                           "skipped"}
    history = files.read_json(run.student_record("condensed"))["history"]
    assert [h["epoch"] for h in history] == [0, 1] and scores["condensed"]["top1"] == history[-1]["test_top1"]

    assert recover.record(recover.run(ctx)) == {"skipped": True}
    again = relabel.run(ctx)
    assert again.skipped and relabel.record(again)["condensed"]["skipped_epochs"] == 2
    rerun = evaluate.run(ctx)
    assert rerun.skipped and rerun.skipped_students == ["condensed", "random_real_hard", "random_real_soft"]


def test_a_command_reads_from_the_folder_only_what_its_stages_do_not_make(tmp_path):
    cfg = load_config(quickstart_config(), TINY)
    run = prepare_out(cfg, tmp_path / "run")
    assert made_by(cfg, ("squeeze", "recover")) == {"teacher", "condensed"}
    assert read_from_folder(cfg, ("recover", "relabel")) == {"teacher"}
    assert "random_real" in made_by(cfg, ("relabel",))  # the baselines unit, with evaluate.baselines on
    check_inputs(cfg, run, ("squeeze", "recover"))  # squeeze makes the teacher: nothing to find
    with pytest.raises(SrelError, match="no teacher at .*run the squeeze stage first"):
        check_inputs(cfg, run, ("recover",))


def test_relabel_teacher_labels_both_sets_instead_of_the_recovery_teacher(tmp_path):
    """relabel.teacher (the seed's Fig. 3 ablation): the condensed set and the baseline are labelled by that
    teacher alone; one that sees other pixels (another normalisation) is refused before labelling."""
    from srel_ray.core.normalization import Normalization
    from srel_ray.core.recover import freeze
    from srel_ray.core.relabel import teacher_logits, view_pixels
    from srel_ray.teacher import load_teacher

    data = load_dataset(load_config(quickstart_config(), TINY).data)
    teachers = {}
    for seed, name in ((0, "recovery.pt"), (1, "labeller.pt")):
        torch.manual_seed(seed)
        model = create_model("convnet", num_classes=10, in_channels=1, image_size=16, width=8, depth=2)
        teachers[name] = Teacher("convnet", {"width": 8, "depth": 2}, data.class_names, 1, 16, data.norm,
                                 model.state_dict())
        save_teacher(teachers[name], str(tmp_path / name))
    cfg = load_config(quickstart_config(), TINY + [f"relabel.teacher={tmp_path / 'labeller.pt'}"])
    run = prepare_out(cfg, tmp_path / "run")
    save_teacher(teachers["recovery.pt"], run.teacher)
    check_inputs(cfg, run, ("recover", "relabel"))
    ctx = StageContext(cfg, run, data, InProcessExecutor(start_data=lambda: data), Tracker(False))
    recover.run(ctx)
    relabel.run(ctx)
    labeller = freeze(load_teacher(str(tmp_path / "labeller.pt")).build())
    for name in ("condensed", "random_real"):
        info = sets.read_set(run.set_dir(name))
        assert info.manifest["labels"]["teacher"] == str(tmp_path / "labeller.pt")
        labels = sets.read_label_epoch(info.path, 1)
        images = sets.read_images(info.path, 10, 1, 1)[labels.image_index]
        expected = teacher_logits(labeller, view_pixels(images, labels.views, 16, data.norm), 64, "cpu")
        torch.testing.assert_close(labels.logits, expected.half())

    other = Teacher("convnet", {"width": 8, "depth": 2}, data.class_names, 1, 16, Normalization((0.1,), (0.2,)),
                    teachers["labeller.pt"].state_dict)
    save_teacher(other, str(tmp_path / "labeller.pt"))
    files.remove(files.join(run.set_dir("condensed"), "labels"))
    with pytest.raises(SrelError, match="normalises inputs"):
        relabel.run(ctx)


def test_more_student_architectures_train_every_student_by_the_same_protocol(tmp_path):
    """evaluate.students: each architecture trains the condensed-set student and both baselines into its own
    folder; adding one to a finished run is the same run (identity) and trains only the new students."""
    from srel_ray.summary import cross_architecture, format_cross_architecture

    cfg, data, run = _run_with_teacher(tmp_path)
    ctx = StageContext(cfg, run, data, InProcessExecutor(start_data=lambda: data), Tracker(False))
    recover.run(ctx)
    relabel.run(ctx)
    evaluate.run(ctx)

    more = load_config(quickstart_config(), TINY + ["evaluate.students=[{arch: convnet, arch_kwargs: {width: 4, "
                                                    "depth: 1}}, {arch: 'srel_ray.models.convnet:convnet', "
                                                    "arch_kwargs: {width: 4, depth: 2}}]"])
    assert more.identity() == cfg.identity()  # the same run: its folder takes the new students
    prepare_out(more, run.out)
    result = evaluate.run(StageContext(more, run, data, InProcessExecutor(start_data=lambda: data), Tracker(False)))
    keys = [s.key for s in more.evaluate.students]
    assert result.skipped_students == ["condensed", "random_real_hard", "random_real_soft"]
    students = ("condensed", "random_real_hard", "random_real_soft")
    assert set(result.scores) == {*students, *(f"{k}/{s}" for k in keys for s in students)}
    for key in keys:
        assert files.exists(run.student_record("random_real_soft", key))
    cross = cross_architecture(more, run)
    assert list(cross) == ["convnet", *keys] and keys[1].startswith("srel_ray_models_convnet_convnet-")
    assert cross[keys[1]]["arch"] == "srel_ray.models.convnet:convnet"
    assert cross["convnet"]["student_top1"] == files.read_json(run.student_record("condensed"))["top1"]
    assert len(format_cross_architecture(cross)) == 4
    with pytest.raises(Exception, match=r"evaluate.students\[1\] repeats 'resnet18_small'"):
        load_config(quickstart_config(), TINY + ["evaluate.students=[{arch: resnet18_small}, {arch: resnet18_small}]"])


def test_rded_start_images_are_selected_once_per_class_stored_and_resumed(tmp_path, caplog):
    """recover.init rded: each class's selection is made once by its class slice's task (here in process) and
    stored in the set's start/ folder with a marker per slice; a unit reads only its own start images; a rerun
    selects only the slices without a marker that a unit still to recover needs."""
    from srel_ray.core.recover import plan_units
    from srel_ray.data.class_images import StartImages, rded_start
    from srel_ray.stages.starts import pending_slices
    from srel_ray.teacher import load_frozen

    cfg, data, run = _run_with_teacher(tmp_path)
    cfg = load_config(quickstart_config(), [*TINY, "method=rded", "recover.iterations=0", "recover.ipc=2",
                                            "recover.rded_pool=10", "recover.rded_factor=2",
                                            "recover.classes_per_unit=5"])
    set_dir, executor = run.set_dir("condensed"), InProcessExecutor(start_data=lambda: data)
    teacher, models = load_frozen([run.teacher], "cpu")
    executor.recover(cfg, [run.teacher], set_dir, 10, [])
    start = sets.start_dir(set_dir)
    expected = torch.cat([rded_start(data, cfg.recover, cfg.seed, models, teacher.norm, c) for c in range(10)])
    assert torch.equal(sets.read_images(start, 10, 2, 1), expected)
    assert torch.equal(sets.read_images(set_dir, 10, 2, 1), expected)  # 0 iterations: the starts are the images
    assert [m["classes"] for m in sets.unit_markers(start)] == [[c, c + 1] for c in range(10)]  # 10 slices
    assert sum(len(m["checksums"]) for m in sets.unit_markers(start)) == 20

    units = plan_units(10, 2, 5, cfg.recover.ipc_per_unit)
    late = [u for u in units if u.classes[0] == 5]  # the units of classes 5-9
    assert pending_slices(cfg, set_dir, 10, units) == []  # all stored
    marker = sets.slice_marker(start, 7)
    files.remove(marker)
    assert pending_slices(cfg, set_dir, 10, [u for u in units if u not in late]) == []  # classes 0-4: not 7
    assert pending_slices(cfg, set_dir, 10, units) == [range(7, 8)]
    for c in range(10):  # what a unit of classes 5-9 reads: its own images only
        if c not in range(5, 10):
            files.remove(files.join(start, "images", str(c)))
    for unit in late:
        assert torch.equal(StartImages(cfg.recover, cfg.seed, set_dir, 1)(unit), torch.stack(
            [expected[c * 2 + i] for c, i in unit.targets()]))

    for unit in late:  # classes 5-9 to recover again: slice 7 is selected again, the others are read
        files.remove(sets.unit_marker(set_dir, unit.name))
    untouched = tmp_path / "run" / "condensed" / "start" / ".progress" / "slice-000005.json"
    written = untouched.stat().st_mtime_ns
    with caplog.at_level("INFO", logger="srel_ray"):
        result = executor.recover(cfg, [run.teacher], set_dir, 10, [])
    assert (result.units, result.skipped_units) == (len(units), len(units) - len(late))
    assert "RDED start images of 4 of 5 class slices already stored" in caplog.text
    assert untouched.stat().st_mtime_ns == written
    assert files.exists(marker) and torch.equal(sets.read_images(set_dir, 10, 2, 1), expected)


def test_a_complete_set_keeps_no_start_images(tmp_path):
    """The recover stage removes the set's start/ once its manifest is written (with method rded the start images
    are the set's images: a second copy); a rerun removes start images that a stopped command left behind."""
    from srel_ray.data.class_images import rded_start
    from srel_ray.teacher import load_frozen

    _, data, run = _run_with_teacher(tmp_path)
    cfg = load_config(quickstart_config(), [*TINY, "method=rded", "recover.iterations=0", "recover.ipc=2",
                                            "recover.rded_pool=10", "recover.rded_factor=2"])
    ctx = StageContext(cfg, run, data, InProcessExecutor(start_data=lambda: data), Tracker(False))
    set_dir = run.set_dir("condensed")
    recover.run(ctx)
    teacher, models = load_frozen([run.teacher], "cpu")
    expected = torch.cat([rded_start(data, cfg.recover, cfg.seed, models, teacher.norm, c) for c in range(10)])
    assert torch.equal(sets.read_images(set_dir, 10, 2, 1), expected)  # 0 iterations: the starts are the images
    assert not files.exists(sets.start_dir(set_dir)) and files.exists(sets.manifest_path(set_dir))
    verify_set(set_dir)

    leftover = files.join(sets.start_dir(set_dir), "images", "0", "00000.png")  # stopped before the removal
    files.write_bytes_atomic(leftover, b"png")
    assert recover.run(ctx).skipped and not files.exists(sets.start_dir(set_dir))


def test_rded_start_selection_shows_a_bar_a_class_in_process(tmp_path, monkeypatch):
    """The in-process executor's RDED start selection: one bar, a step each class stored (10 classes, 10 slices);
    none when there is nothing to select."""
    import io

    from tqdm import tqdm

    from srel_ray.stages import local
    from srel_ray.stages.starts import STARTS_BAR

    bars = []

    def shown(*args, **kwargs):  # the tests' environment disables tqdm (TQDM_DISABLE): count anyway
        bars.append(tqdm(*args, **{**kwargs, "disable": False, "file": io.StringIO()}))
        return bars[-1]

    monkeypatch.setattr(local, "tqdm", shown)
    cfg, data, run = _run_with_teacher(tmp_path)
    cfg = load_config(quickstart_config(), [*TINY, "method=rded", "recover.iterations=0", "recover.ipc=1",
                                            "recover.rded_pool=4", "recover.classes_per_unit=5"])
    set_dir, executor = run.set_dir("condensed"), InProcessExecutor(start_data=lambda: data)
    executor.recover(cfg, [run.teacher], set_dir, 10, [])
    starts_bars = [bar for bar in bars if bar.desc == STARTS_BAR]
    assert len(starts_bars) == 1
    assert (starts_bars[0].total, starts_bars[0].n, starts_bars[0].unit) == (10, 10, "class")
    assert "10/10" in starts_bars[0].fp.getvalue()

    bars.clear()
    files.remove(sets.unit_marker(set_dir, "unit-000001"))  # a unit to recover, its start images stored
    executor.recover(cfg, [run.teacher], set_dir, 10, [])
    assert [bar.desc for bar in bars] == ["recover units"]


def test_a_run_reuses_the_condensed_images_of_a_run_with_its_recovery_settings(tmp_path):
    """recover.reuse: a run that only labels or trains differently (here evaluate.baselines off) takes another
    run's condensed images instead of recovering them: the same bytes, checked, a manifest as recover writes it
    (and where they came from), and a recover stage that then finds nothing to do. A run with other recovery
    settings, or a source image changed since its marker, is refused."""
    from srel_ray.storage.layout import RunDir

    cfg, data, source = _run_with_teacher(tmp_path / "a")
    recover.run(StageContext(cfg, source, data, InProcessExecutor(start_data=lambda: data), Tracker(False)))
    other = load_config(quickstart_config(), TINY + ["evaluate.baselines=false"])
    assert other.identity() != cfg.identity()
    run = prepare_out(other, tmp_path / "b")
    recover.reuse(other, run, source)

    src, dst = source.set_dir("condensed"), run.set_dir("condensed")
    names = [n for marker in sets.unit_markers(src) for n in sets.recorded_files(marker)]
    assert len(names) == 10 and all(files.read_bytes(files.join(src, n)) == files.read_bytes(files.join(dst, n))
                                    for n in names)
    manifest = sets.read_set(dst).manifest
    assert manifest["records"] == sets.read_set(src).manifest["records"]
    assert manifest["source"] == {"copied_from": src} and manifest["config"]["evaluate"]["baselines"] is False
    verify_set(dst)
    assert files.exists(run.grid)
    ctx = StageContext(other, run, data, InProcessExecutor(start_data=lambda: data), Tracker(False))
    assert recover.record(recover.run(ctx)) == {"skipped": True}
    recover.reuse(other, run, source)  # done: nothing to copy again

    more = load_config(quickstart_config(), TINY + ["recover.iterations=3"])
    with pytest.raises(SrelError, match="other recover settings"):
        recover.reuse(more, prepare_out(more, tmp_path / "c"), source)
    first = files.join(src, names[0])
    files.write_bytes_atomic(first, files.read_bytes(first) + b"x")
    with pytest.raises(SrelError, match=f"{names[0]} has changed since its marker"):
        recover.reuse(other, prepare_out(other, tmp_path / "d"), source)


def test_edc_class_statistics_are_made_in_process(tmp_path):
    """The recover stage with category-aware matching (method edc) on the in-process executor: it makes each
    class's statistics as the Ray pass does (equal to a direct pass over the training split), then recovers."""
    cfg, data, run = _run_with_teacher(tmp_path)
    cfg = load_config(quickstart_config(), [*TINY, "method=edc", "recover.init=noise"])
    check_inputs(cfg, run, ("recover",))
    ctx = StageContext(cfg, run, data, InProcessExecutor(start_data=lambda: data), Tracker(False))
    result = recover.record(recover.run(ctx))
    assert result["skipped_units"] == 0 and result["units"] > 0
    teacher = load_teacher(run.teacher)
    model, direct = freeze(teacher.build()), ClassStatsAccumulator(data.num_classes)
    for x, y in data.batches("train", 500):
        direct.update(model, teacher.norm.normalize(x.float() / 255), y)
    expected, stored = direct.result(), load_class_stats(run.class_stats(cfg)[0], list(range(10)))
    for layer in range(len(expected.mean)):
        torch.testing.assert_close(stored.mean[layer], expected.mean[layer], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(stored.var[layer], expected.var[layer], rtol=1e-5, atol=1e-6)
