"""Squeeze: DIR/teacher/teacher.pt, trained (by the executor), or a torchvision model or a checkpoint; then
teacher.extra's teachers beside it as DIR/teacher/extra-<i>.pt, so recover and relabel read all alike."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from srel_ray.config import Config
from srel_ray.core.recover import freeze
from srel_ray.core.student import count_correct
from srel_ray.data.real import RealData
from srel_ray.stages.base import TEACHER, Plan, StageContext, check_same_input, check_teacher
from srel_ray.storage import files
from srel_ray.storage.layout import RunDir
from srel_ray.teacher import Teacher, extra_teacher, load_teacher, pretrained_teacher, save_teacher

log = logging.getLogger(__name__)

NAME = "squeeze"


@dataclass
class SqueezeResult:
    teacher: dict  # Teacher.describe()
    skipped: bool = False
    resumed: dict = field(default_factory=dict)  # a trained teacher: epochs resumed from a checkpoint, restarts


def plan(cfg: Config) -> Plan:
    return Plan(NAME, needs=(), makes=(TEACHER,))


def is_done(cfg: Config, run: RunDir) -> bool:
    return files.exists(run.teacher)


def run(ctx: StageContext) -> SqueezeResult:
    cfg, run_dir, data = ctx.cfg, ctx.run, ctx.data
    if is_done(cfg, run_dir):
        log.info("squeeze: the teacher is already at %s, skipping the stage", run_dir.teacher)
        save_extra_teachers(cfg, run_dir, data, load_teacher(run_dir.teacher))
        return SqueezeResult(load_teacher(run_dir.teacher).describe(), skipped=True)
    resumed = {}
    if cfg.teacher.source == "squeeze":
        teacher, resumed = ctx.executor.train_teacher(ctx)
    else:
        if cfg.teacher.source == "checkpoint":
            teacher = load_teacher(cfg.teacher.checkpoint)
            check_teacher(teacher, data)
        else:
            teacher = pretrained_teacher(cfg.teacher, cfg.data.image_size, data.class_names)
        teacher.metrics = {**teacher.metrics, **test_accuracy(teacher, data)}
    save_teacher(teacher, run_dir.teacher)
    save_extra_teachers(cfg, run_dir, data, teacher)
    return SqueezeResult(teacher.describe(), resumed=resumed)


def record(result: SqueezeResult) -> dict:
    return {"skipped": True, **result.teacher} if result.skipped else {**result.teacher, **result.resumed}


def save_extra_teachers(cfg: Config, run: RunDir, data: RealData, main: Teacher) -> None:
    for spec, path in zip(cfg.teacher.extra, run.extra_teachers(cfg)):
        if not files.exists(path):
            teacher = extra_teacher(spec, cfg.data.image_size, data.class_names)
            check_teacher(teacher, data)
            check_same_input(teacher, main, path)
            save_teacher(teacher, path)


def test_accuracy(teacher: Teacher, data: RealData) -> dict:
    """A teacher that was not trained here is tested once on the real test split."""
    model = freeze(teacher.build())
    counts = count_correct(model, ((teacher.norm.normalize_uint8(x), y) for x, y in data.batches("test", 256)))
    return {"test_top1": counts["top1"] / counts["n"], "test_top5": counts["top5"] / counts["n"]}
