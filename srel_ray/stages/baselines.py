"""The random-real baseline set: IPC random training images per class, in the condensed set's format, so the
relabel stage labels it with the same teacher and the evaluate stage trains students on it by the same protocol.
A unit the relabel stage runs (evaluate.baselines on) before labelling; its manifest says it is complete."""

from __future__ import annotations

import logging

from srel_ray.config import Config, to_dict
from srel_ray.data.real import RealData, random_real_indices
from srel_ray.stages.base import RANDOM_REAL, TEACHER, Plan, write_set_manifest
from srel_ray.storage import files, sets
from srel_ray.storage.layout import RunDir
from srel_ray.teacher import Teacher

log = logging.getLogger(__name__)

NAME = "random_real"


def plan(cfg: Config) -> Plan:
    return Plan(NAME, needs=(TEACHER,), makes=(RANDOM_REAL,) if cfg.evaluate.baselines else ())


def is_done(cfg: Config, run: RunDir) -> bool:
    return files.exists(sets.manifest_path(run.set_dir(NAME)))


def run(cfg: Config, run_dir: RunDir, data: RealData, teacher: Teacher) -> None:
    set_dir = run_dir.set_dir(NAME)
    if is_done(cfg, run_dir):
        log.info("relabel: the random-real images at %s are complete, skipping their selection", set_dir)
        return
    ipc = cfg.recover.ipc
    indices = random_real_indices(data.labels("train"), data.num_classes, ipc, cfg.seed)
    targets = [(c, i) for c in range(data.num_classes) for i in range(ipc)]
    sets.write_images(set_dir, targets, data.images_at("train", indices))
    write_set_manifest(cfg, set_dir, NAME, data.name, teacher, to_dict(cfg),
                       source={"train_indices": indices.tolist()})
