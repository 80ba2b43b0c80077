"""What every stage shares: its plan, the context it runs in, and the manifest it writes for a set."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from srel_ray.config import Config
from srel_ray.data.real import RealData
from srel_ray.errors import SrelError
from srel_ray.storage import sets
from srel_ray.storage.layout import RunDir
from srel_ray.teacher import Teacher
from srel_ray.tracking import Tracker

# What stages make and read: a stage that needs an output no stage of this command makes finds it on disk.
TEACHER, CONDENSED, LABELS, RANDOM_REAL, SCORES = "teacher", "condensed", "labels", "random_real", "scores"


@dataclass(frozen=True)
class Plan:
    stage: str
    needs: tuple[str, ...]  # outputs of earlier stages it reads
    makes: tuple[str, ...]


@dataclass
class StageContext:
    """Everything a stage's ``run`` reads: the config, the run folder, the dataset's index, the executor that does
    the heavy work, MLflow, and the command's progress display (srel_ray.distributed.progress.Progress, or None)."""

    cfg: Config
    run: RunDir
    data: RealData
    executor: Any  # srel_ray.distributed.executor.RayExecutor or srel_ray.stages.local.InProcessExecutor
    tracker: Tracker
    progress: Any = None


CLASS_SLICES = 64  # at most this many tasks; the cut depends on the class count alone (resume finds its markers)


def class_slices(num_classes: int) -> list[range]:
    """The classes cut into at most CLASS_SLICES runs, one task each (the baseline's selection, RDED's starts)."""
    per = -(-num_classes // CLASS_SLICES)
    return [range(s, min(s + per, num_classes)) for s in range(0, num_classes, per)]


def labels_record(cfg: Config) -> dict:
    """How a set's labels were made, as its manifest records them."""
    r = cfg.relabel
    record = {"epochs": r.epochs, "views_per_epoch": r.views_per_epoch, "crop_scale": list(r.crop_scale),
              "logits_dtype": r.logits_dtype, "top_k": r.top_k}
    return {**record, "teacher": r.teacher} if r.teacher else record  # unchanged records when it is not set


def write_set_manifest(cfg: Config, set_dir: str, kind: str, dataset: str, teacher: Teacher, config: dict,
                       labels: dict | None = None, source: dict | None = None) -> None:
    """A set's manifest (written once its images are complete, again once its labels are): the teacher's class
    order, input channels and normalisation, which every reader of the set checks against."""
    sets.write_manifest(set_dir, kind=kind, dataset=dataset, class_names=teacher.class_names, ipc=cfg.recover.ipc,
                        channels=teacher.in_channels, image_size=cfg.data.image_size,
                        normalization={"mean": list(teacher.norm.mean), "std": list(teacher.norm.std)},
                        teacher=teacher.describe(), config=config, labels=labels, source=source)


def check_teacher(teacher: Teacher, data: RealData) -> None:
    teacher.check_classes(data.class_names, f"dataset {data.name!r}")
    if teacher.in_channels != data.channels:
        raise SrelError(f"the teacher takes {teacher.in_channels}-channel images, dataset {data.name!r} has "
                        f"{data.channels}")


def check_same_input(extra: Teacher, main: Teacher, where: str) -> None:
    """Every teacher sees the same normalised pixels (recovery optimises them, relabel renders them once)."""
    if extra.norm != main.norm:
        raise SrelError(f"extra teacher {where!r} normalises inputs with {extra.norm}, the teacher with {main.norm}: "
                        "teachers of one run must share their input normalisation")
