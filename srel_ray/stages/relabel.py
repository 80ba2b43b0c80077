"""Relabel: the teacher's soft labels on every stored view of the condensed set (and, with evaluate.baselines, of
the random-real set, whose images srel_ray.stages.baselines picks first), one Parquet file per label epoch, by the
executor. An epoch whose file exists is not labelled again; the manifest records the labels once all are there."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from srel_ray.config import Config, to_dict
from srel_ray.stages import baselines
from srel_ray.stages.base import (CONDENSED, LABELS, TEACHER, Plan, StageContext, check_same_input, labels_record,
                                  write_set_manifest)
from srel_ray.storage import files, sets
from srel_ray.storage.layout import RunDir
from srel_ray.teacher import load_teacher

log = logging.getLogger(__name__)

NAME = "relabel"


@dataclass
class RelabelResult:
    sets: dict[str, dict]  # per set labelled: epochs, skipped_epochs (and the executor's workers), or skipped

    @property
    def skipped(self) -> bool:
        return all(r.get("skipped") for r in self.sets.values())


def plan(cfg: Config) -> Plan:
    return Plan(NAME, needs=(TEACHER, CONDENSED), makes=(LABELS, *baselines.plan(cfg).makes))


def set_names(cfg: Config) -> tuple[str, ...]:
    return ("condensed", baselines.NAME) if cfg.evaluate.baselines else ("condensed",)


def is_done(cfg: Config, run: RunDir) -> bool:
    return all(files.exists(sets.manifest_path(run.set_dir(name)))
               and sets.read_set(run.set_dir(name)).label_epochs == cfg.relabel.epochs for name in set_names(cfg))


def run(ctx: StageContext) -> RelabelResult:
    cfg, run_dir = ctx.cfg, ctx.run
    teacher = load_teacher(run_dir.teacher)
    if cfg.relabel.teacher:  # it renders the same views: it must see the same pixels
        check_same_input(load_teacher(cfg.relabel.teacher), teacher, cfg.relabel.teacher)
    if cfg.evaluate.baselines:
        baselines.run(cfg, run_dir, ctx.data, teacher, ctx.executor)
    report = {}
    for name in set_names(cfg):
        info = sets.read_set(run_dir.set_dir(name))
        teacher.check_classes(info.class_names, f"set {info.path!r}")
        if info.label_epochs == cfg.relabel.epochs:
            log.info("relabel %s: all %d label epochs are written, skipping the set", name, cfg.relabel.epochs)
            report[name] = {"skipped": True, "epochs": cfg.relabel.epochs, "skipped_epochs": cfg.relabel.epochs}
            continue
        report[name] = ctx.executor.relabel(cfg, run_dir.label_teachers(cfg), info, ctx.progress)
        labels = {**labels_record(cfg), "bytes_per_image_per_epoch": label_bytes(cfg, info)}
        log.info("relabel %s: %.1f bytes of soft labels per image per epoch (Parquet, compressed)", name,
                 labels["bytes_per_image_per_epoch"])
        write_set_manifest(cfg, info.path, info.manifest["kind"], ctx.data.name, teacher, to_dict(cfg), labels,
                           source=info.manifest.get("source"))
    return RelabelResult(report)


def record(result: RelabelResult) -> dict:
    return {**result.sets, "skipped": result.skipped}


def label_bytes(cfg: Config, info: sets.SetInfo) -> float:
    return sets.label_bytes(info.path) / (info.num_classes * info.ipc * cfg.relabel.epochs)
