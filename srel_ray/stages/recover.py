"""Recover: the condensed set's images, unit by unit (a unit: some classes' images, recovered together), by the
executor; per-class BN statistics first when recover.class_bn_weight asks for them. A unit's marker says it is
done, so a rerun recovers only the missing units; the manifest is written once all units are done."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from srel_ray.config import Config, to_dict
from srel_ray.core.recover import Unit, plan_units
from srel_ray.stages.base import CONDENSED, TEACHER, Plan, StageContext, write_set_manifest
from srel_ray.storage import files, sets
from srel_ray.storage.layout import RunDir
from srel_ray.teacher import load_teacher

log = logging.getLogger(__name__)

NAME = "recover"


@dataclass
class RecoverResult:
    skipped: bool = False
    units: int = 0
    skipped_units: int = 0  # done by an earlier command
    interrupted_units: list[int] = field(default_factory=list)  # started by an earlier command, redone
    retried_units: list[int] = field(default_factory=list)  # needed more than one attempt
    actors: list[dict] = field(default_factory=list)  # who recovered them
    unit_nodes: dict = field(default_factory=dict)  # unit -> node it ran on
    stats: list[dict] = field(default_factory=list)  # per unit recovered now: final losses (not recorded)


def plan(cfg: Config) -> Plan:
    return Plan(NAME, needs=(TEACHER,), makes=(CONDENSED,))


def is_done(cfg: Config, run: RunDir) -> bool:
    return files.exists(sets.manifest_path(run.set_dir("condensed")))


def needs_class_stats(cfg: Config) -> bool:
    return bool(cfg.recover.class_bn_weight and cfg.recover.iterations)


def pending_units(cfg: Config, set_dir: str, num_classes: int) -> tuple[list[Unit], list[Unit]]:
    """Every unit of the set, and those without a done marker."""
    r = cfg.recover
    units = plan_units(num_classes, r.ipc, r.classes_per_unit, r.ipc_per_unit)
    return units, [u for u in units if not files.exists(sets.unit_marker(set_dir, u.name))]


def run(ctx: StageContext) -> RecoverResult:
    cfg, run_dir = ctx.cfg, ctx.run
    set_dir = run_dir.set_dir("condensed")
    if is_done(cfg, run_dir):
        log.info("recover: the condensed set at %s is complete, skipping the stage", set_dir)
        return RecoverResult(skipped=True)
    teacher = load_teacher(run_dir.teacher)
    stats_dirs = []
    if needs_class_stats(cfg):  # EDC's per-class statistics, once per teacher
        stats_dirs = run_dir.class_stats(cfg)
        ctx.executor.class_stats(cfg, ctx.data, run_dir.teachers(cfg), stats_dirs, ctx.progress)
    result = ctx.executor.recover(cfg, run_dir.teachers(cfg), set_dir, teacher.num_classes, stats_dirs, ctx.progress)
    write_set_manifest(cfg, set_dir, "condensed", ctx.data.name, teacher, to_dict(cfg))
    sets.save_grid(set_dir, teacher.num_classes, cfg.recover.ipc, ctx.data.channels, run_dir.grid)
    ctx.tracker.log_artifact(run_dir.grid)
    for s in result.stats:
        ctx.tracker.log_metrics({"recover.final_ce": s["ce"], "recover.final_bn": s["bn"]}, step=s["unit"])
    return result


def record(result: RecoverResult) -> dict:
    if result.skipped:
        return {"skipped": True}
    return {"units": result.units, "skipped_units": result.skipped_units,
            "interrupted_units": result.interrupted_units, "retried_units": result.retried_units,
            "actors": result.actors, "unit_nodes": result.unit_nodes}
