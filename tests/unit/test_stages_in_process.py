"""The stage units on the in-process executor (no Ray): recover, relabel (with the random-real baseline unit) and
evaluate run, record and resume in a run folder as the orchestrator drives them on Ray."""

import pytest
import torch

from srel_ray.cli import quickstart_config
from srel_ray.config import load_config
from srel_ray.data.real import load_dataset
from srel_ray.errors import SrelError
from srel_ray.models import create_model
from srel_ray.stages import baselines, evaluate, recover, relabel
from srel_ray.stages.base import StageContext
from srel_ray.stages.checks import check_inputs, made_by, read_from_folder
from srel_ray.stages.local import InProcessExecutor
from srel_ray.storage import files, sets
from srel_ray.storage.layout import prepare_out
from srel_ray.teacher import Teacher, save_teacher
from srel_ray.tracking import Tracker

TINY = ["recover.iterations=2", "relabel.epochs=2", "evaluate.epochs=2", "teacher.arch_kwargs={width: 8, depth: 2}",
        "evaluate.arch_kwargs={width: 8, depth: 2}", "resources.use_gpu=false", "recover.ipc=1"]


def test_stage_units_run_and_resume_in_process(tmp_path):
    cfg = load_config(quickstart_config(), TINY)
    data = load_dataset(cfg.data)
    run = prepare_out(cfg, tmp_path / "run")
    torch.manual_seed(0)
    model = create_model("convnet", num_classes=10, in_channels=1, image_size=16, width=8, depth=2)
    save_teacher(Teacher("convnet", {"width": 8, "depth": 2}, data.class_names, 1, 16, data.norm, model.state_dict()),
                 run.teacher)
    check_inputs(cfg, run, ("recover", "relabel", "evaluate"))  # the teacher is in the folder: nothing to make
    ctx = StageContext(cfg, run, data, InProcessExecutor(start_data=lambda: data), Tracker(False))
    assert not any(unit.is_done(cfg, run) for unit in (recover, relabel, evaluate))

    first = recover.record(recover.run(ctx))
    assert (first["units"], first["skipped_units"]) == (len(sets.unit_markers(run.set_dir("condensed"))), 0)
    labelled = relabel.record(relabel.run(ctx))
    assert labelled["condensed"] == labelled["random_real"] == {"epochs": 2, "skipped_epochs": 0}
    assert baselines.is_done(cfg, run) and relabel.is_done(cfg, run)
    sets.verify_set(run.set_dir("condensed"))
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
