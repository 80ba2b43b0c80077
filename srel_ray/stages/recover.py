"""Recover: the condensed set's images, unit by unit (a unit: some classes' images, recovered together), by the
executor; per-class BN statistics first when recover.class_bn_weight asks for them. A unit's marker says it is
done, so a rerun recovers only the missing units; the manifest is written once all units are done."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from srel_ray.config import Config, config_from_yaml, to_dict
from srel_ray.core.recover import Unit, plan_units
from srel_ray.errors import SrelError
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
        sets.drop_start_images(set_dir)  # left by a command stopped between the manifest and their removal
        return RecoverResult(skipped=True)
    teacher = load_teacher(run_dir.teacher)
    stats_dirs = []
    if needs_class_stats(cfg):  # EDC's per-class statistics, once per teacher
        stats_dirs = run_dir.class_stats(cfg)
        ctx.executor.class_stats(cfg, ctx.data, run_dir.teachers(cfg), stats_dirs, ctx.progress)
    result = ctx.executor.recover(cfg, run_dir.teachers(cfg), set_dir, teacher.num_classes, stats_dirs, ctx.progress)
    write_set_manifest(cfg, set_dir, "condensed", ctx.data.name, teacher, to_dict(cfg))
    sets.drop_start_images(set_dir)
    sets.save_grid(set_dir, teacher.num_classes, cfg.recover.ipc, ctx.data.channels, run_dir.grid)
    ctx.tracker.log_artifact(run_dir.grid)
    for s in result.stats:
        ctx.tracker.log_metrics({"recover.final_ce": s["ce"], "recover.final_bn": s["bn"]}, step=s["unit"])
    return result


# What decides a run's condensed images (with an explicit resources.precision, which identity() carries).
RECOVERY_IDENTITY = ("seed", "method", "data", "teacher", "recover", "precision")


def reuse(cfg: Config, run_dir: RunDir, source: RunDir) -> None:
    """This run's condensed set taken from the run at ``source`` instead of recovered: for studies of one set under
    other labels or students (relabel.teacher, evaluate.baselines) that must not pay for recovery again. Refused
    unless ``source`` recovered it with this run's recovery settings (``RECOVERY_IDENTITY``): recovery is
    deterministic, so its images are the ones this stage would write. They are copied with their markers and
    checked (``sets.copy_images``), then the manifest is written as this stage writes it, with where the images
    came from; the recover stage then finds the set complete. Call it once ``run_dir`` is claimed (prepare_out)."""
    if is_done(cfg, run_dir):
        return
    theirs = config_from_yaml(files.read_bytes(source.config).decode(), source.config).identity()
    mine = cfg.identity()
    if differ := [key for key in RECOVERY_IDENTITY if mine.get(key) != theirs.get(key)]:
        raise SrelError(f"{source.out!r} recovered its condensed set with other {', '.join(differ)} settings than "
                        "this run's: its images are not this run's to reuse")
    src, set_dir = source.set_dir("condensed"), run_dir.set_dir("condensed")
    sets.copy_images(src, set_dir)
    teacher, info = load_teacher(source.teacher), sets.read_set(src)
    write_set_manifest(cfg, set_dir, "condensed", info.manifest["dataset"], teacher, to_dict(cfg),
                       source={"copied_from": src})
    sets.save_grid(set_dir, teacher.num_classes, cfg.recover.ipc, info.channels, run_dir.grid)


def record(result: RecoverResult) -> dict:
    if result.skipped:
        return {"skipped": True}
    return {"units": result.units, "skipped_units": result.skipped_units,
            "interrupted_units": result.interrupted_units, "retried_units": result.retried_units,
            "actors": result.actors, "unit_nodes": result.unit_nodes}
