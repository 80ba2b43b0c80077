"""Class-incremental learning without Ray: the class order and steps, a memory's labels and test batches, and the
study's loop on the in-process executor in a tiny run folder (srel_ray.core.continual, srel_ray.studies.continual)."""

import json
import shutil
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from srel_ray.config import ContinualConfig, load_study_section
from srel_ray.core.continual import (class_order, class_steps, memory_images, restrict_batches, restrict_labels,
                                     seen_classes)
from srel_ray.core.soft_labels import compress_topk
from srel_ray.core.student import EpochLabels
from srel_ray.core.views import Views
from srel_ray.errors import ConfigError, SrelError
from srel_ray.stages.base import StageContext
from srel_ray.stages.local import InProcessExecutor
from srel_ray.storage import files
from srel_ray.students import STUDENTS
from srel_ray.studies import continual
from srel_ray.studies.base import FinishedRun, finished_run
from srel_ray.tracking import Tracker

from tests.unit.test_stages_in_process import _run_with_teacher


@pytest.mark.parametrize("num_classes, steps", [(10, 5), (10, 10), (10, 3), (7, 2), (100, 10)])
def test_steps_cover_every_class_once_in_the_seeded_order(num_classes, steps):
    order = class_order(num_classes, seed=3)
    assert order == class_order(num_classes, seed=3) and sorted(order) == list(range(num_classes))
    groups = class_steps(order, steps)
    assert len(groups) == steps and [c for g in groups for c in g] == order  # disjoint, all, in order
    assert max(map(len, groups)) - min(map(len, groups)) <= 1
    assert seen_classes(groups, steps) == list(range(num_classes))
    assert [len(seen_classes(groups, k)) for k in range(1, steps + 1)] == \
        [sum(map(len, groups[:k])) for k in range(1, steps + 1)]
    assert seen_classes(groups, 1) == sorted(groups[0])


def test_another_seed_gives_another_order():
    assert class_order(10, 0) != class_order(10, 1)
    assert class_steps(list(range(10)), 4) == [[0, 1], [2, 3, 4], [5, 6], [7, 8, 9]]


def _labels(num_classes=4, ipc=2, views=2, topk=0):
    """Every image's ``views`` rows, ordered by image, with logits that name their row and column."""
    image_index = torch.arange(num_classes * ipc).repeat_interleave(views)
    rows = len(image_index)
    logits = torch.arange(rows * num_classes, dtype=torch.float32).view(rows, num_classes)
    labels = EpochLabels(image_index, Views(torch.arange(rows * 4, dtype=torch.float32).view(rows, 4),
                                            torch.arange(rows) % 3 == 0))
    if topk:
        labels.topk, labels.num_classes = compress_topk(logits, topk), num_classes
    else:
        labels.logits = logits
    return labels, logits


def test_a_memory_replays_its_classes_rows_with_their_logits_only():
    labels, logits = _labels()
    memory = restrict_labels(labels, [1, 3], ipc=2)
    assert memory_images([1, 3], 2) == [(1, 0), (1, 1), (3, 0), (3, 1)]
    kept = torch.tensor([4, 5, 6, 7, 12, 13, 14, 15])  # the rows of images 2, 3 (class 1) and 6, 7 (class 3)
    assert memory.image_index.tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
    torch.testing.assert_close(memory.views.boxes, labels.views.boxes[kept])
    assert memory.views.flips.tolist() == labels.views.flips[kept].tolist()
    torch.testing.assert_close(memory.targets(torch.arange(8)), logits[kept][:, [1, 3]])
    share = restrict_labels(labels, [1, 3], ipc=2, images=range(1, 3))  # a training worker's share
    assert share.image_index.tolist() == [1, 1, 2, 2]
    hard = restrict_labels(EpochLabels(labels.image_index, labels.views), [0, 2], ipc=2)
    assert hard.hard and hard.image_index.tolist() == [0, 0, 1, 1, 2, 2, 3, 3]


def test_a_top_k_epoch_stays_compressed_and_expands_a_batch_of_memory_rows():
    labels, logits = _labels(topk=2)
    memory = restrict_labels(labels, [0, 2], ipc=2)
    assert memory.logits is None and len(memory.topk[0]) == 8  # 8 rows of k indices, not rows x classes
    kept = torch.tensor([0, 1, 2, 3, 8, 9, 10, 11])
    assert torch.equal(memory.targets(torch.arange(8)), labels.targets(kept)[:, [0, 2]])
    assert torch.equal(memory.targets(torch.tensor([5, 2])), labels.targets(kept[[5, 2]])[:, [0, 2]])


def test_test_batches_keep_the_seen_classes_labelled_by_output_index():
    x = torch.arange(6).view(6, 1).float()
    y = torch.tensor([0, 3, 2, 3, 1, 0])
    out = list(restrict_batches([(x[:3], y[:3]), (x[3:4], y[3:4]), (x[4:], y[4:])], [2, 3], num_classes=4))
    assert [(b.view(-1).tolist(), t.tolist()) for b, t in out] == [([1.0, 2.0], [1, 0]), ([3.0], [1])]


def test_steps_are_validated_and_cover_the_run_classes(tmp_path):
    assert load_study_section("continual", []) == ContinualConfig([5, 10], None, None)
    section = load_study_section("continual", ["continual.steps=[3]", "continual.epochs=1", "evaluate.epochs=4"])
    assert (section.steps, section.epochs) == ([3], 1)
    for bad, message in (("[1, 5]", r"continual.steps\[0\] must be >= 2"), ("[]", "at least one"),
                         ("[5, 5]", "repeats a step count")):
        with pytest.raises(ConfigError, match=message):
            load_study_section("continual", [f"continual.steps={bad}"])
    with pytest.raises(ConfigError, match="unknown config key 'continual.step'"):
        load_study_section("continual", ["continual.step=[5]"])


def test_a_folder_that_is_not_a_finished_run_is_refused_before_any_work(tmp_path):
    cfg, data, run = _run_with_teacher(tmp_path)
    with pytest.raises(SrelError, match="does not exist"):
        finished_run(tmp_path / "nope", [], "continual", continual.MAY_SET)
    (tmp_path / "empty").mkdir()
    with pytest.raises(SrelError, match="not a srel_ray run: it has no config.yaml"):
        finished_run(tmp_path / "empty", [], "continual", continual.MAY_SET)
    with pytest.raises(SrelError, match="not a finished run \\(no summary.json\\)"):
        finished_run(run.out, [], "continual", continual.MAY_SET)
    files.write_json_atomic(run.summary, {})
    with pytest.raises(ConfigError, match="--set 'recover.ipc=3': srel-ray continual takes continual"):
        finished_run(run.out, ["recover.ipc=3"], "continual", continual.MAY_SET)
    study = finished_run(run.out, ["continual.steps=[11]", "evaluate.epochs=1"], "continual", continual.MAY_SET)
    assert study.cfg.evaluate.epochs == 1 and study.seed() == cfg.seed
    with pytest.raises(SrelError, match="no complete condensed set"):
        continual.check_study(study)


def test_the_study_trains_each_step_on_its_memory_and_a_rerun_reuses_it(labelled_run):
    cfg, data, run = labelled_run
    with pytest.raises(ConfigError, match=r"continual.steps\[1\] must be <= the run's 10 classes .*got 11"):
        continual.check_study(FinishedRun(cfg, run, ContinualConfig(steps=[10, 11])))
    study = FinishedRun(cfg, run, ContinualConfig(steps=[2, 3], seed=7, epochs=1))
    infos = continual.check_study(study)
    ctx = StageContext(continual.study_config(study), run, data, InProcessExecutor(), Tracker(False))
    results = continual.run_continual(ctx, study.section, study.seed(), infos)

    order = class_order(10, 7)
    assert results["class_order"] == order and results["student"]["epochs"] == 1
    assert list(results["steps"]) == ["2", "3"]
    three = results["steps"]["3"]
    assert three["groups"] == class_steps(order, 3) and three["classes_seen"] == [3, 6, 10]
    assert set(three["top1"]) == {"condensed", "random_real_soft"}
    assert all(len(acc) == 3 and all(0 <= a <= 1 for a in acc) for acc in three["top1"].values())
    records = sorted(p.name for p in Path(run.continual("students")).iterdir())
    assert len(records) == 2 * (2 + 3)
    first = files.read_json(run.continual_student(f"continual-{results['settings_key']}-3steps-1-condensed"))
    assert first["classes"] == sorted(class_steps(order, 3)[0]) and first["top1"] == three["top1"]["condensed"][0]
    assert first["history"][-1]["epoch"] == 0

    written = continual.report(results, run, Tracker(False))
    assert written == [run.continual("continual.json"), run.continual("continual.png")]
    assert json.loads(Path(run.continual("continual.json")).read_text()) == results
    table = continual.format_continual(results)
    assert "3 steps, classes seen:" in table and "random real, teacher labels" in table

    class Refuses(InProcessExecutor):
        def train_student(self, ctx, student, info):
            raise AssertionError(f"{student.name} was trained again")

    again = continual.run_continual(StageContext(ctx.cfg, run, data, Refuses(), Tracker(False)), study.section,
                                    study.seed(), infos)
    assert again == results

    trained = {p.stem: files.read_json(str(p)) for p in Path(run.continual("students")).iterdir()}
    shutil.rmtree(run.continual("students"))

    class TwoAtOnce(InProcessExecutor):
        """Two students at a time (resources.concurrent_students=2 on Ray), each giving the record it gave above,
        the earlier steps slower: they finish out of order."""

        def students_at_once(self, cfg):
            return 2

        def train_student(self, ctx, student, info):
            time.sleep(0.2 / len(student.classes))
            return {k: v for k, v in trained[student.name].items() if k != "classes"}, {}

    at_once = continual.run_continual(StageContext(ctx.cfg, run, data, TwoAtOnce(), Tracker(False)), study.section,
                                      study.seed(), infos)
    assert at_once == results  # every accuracy back at its own step, whatever order the students finished in
    other = continual.settings_key(continual.study_config(FinishedRun(cfg, run, ContinualConfig(epochs=2))), 7)
    assert other != results["settings_key"]  # other epochs: other students, never a stale record


def test_a_memory_of_every_class_trains_the_evaluate_student_exactly(labelled_run):
    """The memory path (class subset, restricted labels and test batches) is the evaluate stage's protocol: with
    every class in memory it gives the plain student's numbers."""
    cfg, data, run = labelled_run
    ctx = StageContext(cfg, run, data, InProcessExecutor(), Tracker(False))
    info = continual.check_study(FinishedRun(cfg, run, ContinualConfig(steps=[2])))["condensed"]
    plain, _ = InProcessExecutor().train_student(ctx, STUDENTS["condensed"], info)
    student = replace(STUDENTS["condensed"], classes=tuple(range(10)))
    memory, _ = InProcessExecutor().train_student(ctx, student, info)
    assert memory == plain
