"""The Ray executor: the heavy work of each stage on a Ray cluster (Ray Train for the teacher and the students,
actor pools for recovery, Ray Data for relabel and the class statistics), with Ray Train's resume bookkeeping.
The stages (srel_ray.stages) call it; srel_ray.stages.local runs the same calls in one process."""

from __future__ import annotations

import contextlib
import logging
from typing import Iterator

import ray

from srel_ray.config import Config
from srel_ray.data.real import RealData
from srel_ray.distributed.class_stats import run_class_stats
from srel_ray.distributed.evaluate import run_student
from srel_ray.distributed.recover import run_recover, run_starts
from srel_ray.distributed.relabel import run_relabel
from srel_ray.distributed.squeeze import run_squeeze
from srel_ray.distributed.trainer import checkpoint_progress
from srel_ray.stages.base import StageContext
from srel_ray.stages.baselines import select_slice
from srel_ray.stages.recover import RecoverResult, pending_units
from srel_ray.stages.starts import pending_slices
from srel_ray.storage import files, sets
from srel_ray.storage.layout import RunDir
from srel_ray.students import Student
from srel_ray.teacher import Teacher

log = logging.getLogger(__name__)


class RayExecutor:
    def __init__(self, use_gpu: bool):
        self.use_gpu = use_gpu

    def train_teacher(self, ctx: StageContext) -> tuple[Teacher, dict]:
        cfg, progress = ctx.cfg, ctx.progress
        with _resumable(ctx.run, "squeeze", cfg.teacher.epochs) as resumed, \
                _epochs(progress, "teacher", "squeeze", cfg.teacher.epochs, resumed):
            teacher = run_squeeze(cfg, ctx.data, ctx.run.ray_storage, self.use_gpu,
                                  progress.board if progress else None)
        ctx.tracker.log_history(teacher.metrics.get("history", []), prefix="teacher.",
                                skip=_logged(progress, "teacher", resumed))
        return teacher, resumed

    def class_stats(self, cfg: Config, data: RealData, teachers: list[str], folders: list[str],
                    progress=None) -> None:
        run_class_stats(cfg, data, teachers, folders, self.use_gpu, progress)

    def recover(self, cfg: Config, teachers: list[str], set_dir: str, num_classes: int, class_stats: list[str],
                progress=None) -> RecoverResult:
        _, pending = pending_units(cfg, set_dir, num_classes)
        run_starts(cfg, teachers, set_dir, pending_slices(cfg, set_dir, num_classes, pending), self.use_gpu,
                   progress)
        r = run_recover(cfg, teachers[0], set_dir, num_classes, self.use_gpu, extra_teachers=teachers[1:],
                        class_stats=class_stats, progress=progress)
        return RecoverResult(units=r["units"], skipped_units=r["skipped"], interrupted_units=r["interrupted"],
                             retried_units=r["retried"], actors=r["actors"], unit_nodes=r["unit_nodes"],
                             stats=r["stats"])

    def select_random_real(self, cfg: Config, set_dir: str, slices: list[range]) -> None:
        """The baseline's class slices as Ray tasks: each reads, decodes and writes its own images."""
        task = ray.remote(num_cpus=1)(select_slice)
        ray.get([task.remote(cfg.data, set_dir, s, cfg.recover.ipc, cfg.seed) for s in slices])

    def relabel(self, cfg: Config, teachers: list[str], info: sets.SetInfo, progress=None) -> dict:
        return run_relabel(cfg, teachers[0], info, self.use_gpu, extra_teachers=teachers[1:], progress=progress)

    def students_at_once(self, cfg: Config) -> int:
        """How many students (the evaluate stage's, srel-ray continual's) train at once: each its own Ray Train fit."""
        return cfg.resources.concurrent_students

    def train_student(self, ctx: StageContext, student: Student, info: sets.SetInfo) -> tuple[dict, dict]:
        """Train and test one student; returns its record (top-1, top-5, per-epoch history) and how it resumed."""
        cfg, progress = ctx.cfg, ctx.progress
        source = student.source
        with _resumable(ctx.run, f"student-{student.name}", cfg.evaluate.epochs) as resumed, \
                _epochs(progress, source, f"student {student.name}", cfg.evaluate.epochs, resumed):
            result = run_student(cfg, ctx.data, info.path, hard=student.hard, name=f"student-{student.name}",
                                 storage=ctx.run.ray_storage, use_gpu=self.use_gpu,
                                 progress_board=progress.board if progress else None, progress_source=source,
                                 classes=student.classes)
        ctx.tracker.log_history(result["history"], prefix=f"{source}.", skip=_logged(progress, source, resumed))
        return result, resumed


@contextlib.contextmanager
def _resumable(run: RunDir, name: str, epochs: int) -> Iterator[dict]:
    """Around one Ray Train fit: says how many epochs an earlier command had checkpointed (they are skipped) and
    whether workers died during this fit and were restarted from a checkpoint; fills the yielded dict with both."""
    before = checkpoint_progress(run.ray_storage, name)
    if before["epochs"]:
        log.info("%s: %d of %d epochs already trained (checkpoint in %s), skipping them", name, before["epochs"],
                 epochs, files.join(run.ray_storage, name))
    report = {"skipped_epochs": before["epochs"]}
    yield report
    after = checkpoint_progress(run.ray_storage, name)
    report["restarted_at_epoch"] = after["start_epoch"] if after["start_epoch"] > before["epochs"] else None
    if report["restarted_at_epoch"] is not None:
        log.info("%s: training workers died and were restarted from the checkpoint of epoch %d", name,
                 after["start_epoch"] - 1)


def _epochs(progress, source: str, desc: str, total: int, resumed: dict):
    """The epoch bar of one training fit (nothing without ``progress``)."""
    if progress is None:
        return contextlib.nullcontext()
    return progress.epochs(source, desc, total, resumed["skipped_epochs"])


def _logged(progress, source: str, resumed: dict) -> set[int]:
    """Epochs whose metrics are in MLflow already: sent live during this fit, or trained (and sent) by the earlier
    command whose checkpoint this one resumed."""
    return set(range(resumed["skipped_epochs"])) | (progress.already_logged(source) if progress else set())
