"""The random-real baseline set: IPC random training images per class, in the condensed set's format, so the
relabel stage labels it with the same teacher and the evaluate stage trains students on it by the same protocol.
A unit the relabel stage runs (evaluate.baselines on) before labelling; its manifest says it is complete."""

from __future__ import annotations

import logging

import torch

from srel_ray.config import Config, DataConfig, to_dict
from srel_ray.data.real import RealData, load_dataset, random_real_rows
from srel_ray.stages.base import RANDOM_REAL, TEACHER, Plan, class_slices, write_set_manifest
from srel_ray.storage import files, sets
from srel_ray.storage.layout import RunDir
from srel_ray.teacher import Teacher

log = logging.getLogger(__name__)

NAME = "random_real"


def plan(cfg: Config) -> Plan:
    return Plan(NAME, needs=(TEACHER,), makes=(RANDOM_REAL,) if cfg.evaluate.baselines else ())


def is_done(cfg: Config, run: RunDir) -> bool:
    return files.exists(sets.manifest_path(run.set_dir(NAME)))


# Images a baseline task reads and decodes at once: a slice is 1/64 of the classes (17,000 images, 2.6 GB decoded
# at ImageNet-21K IPC 50, 224 px), so it goes in chunks of this many (about 600 MB at 224 px). A Parquet row group
# holding rows of two chunks is read once per chunk.
CHUNK_IMAGES = 4096


def select_slice(data_cfg: DataConfig, set_dir: str, classes: range, ipc: int, seed: int) -> int:
    """One class slice of the baseline, where it runs (a Ray task, or in process): draw each class's IPC rows
    (``random_real_rows``, keyed by (seed, class)), read, decode and write them, ``CHUNK_IMAGES`` at a time; the
    slice's marker (its rows and the images' checksums) last. Returns the number of images written."""
    data = load_dataset(data_cfg)
    rows = torch.cat([random_real_rows(data.train_index, c, ipc, seed) for c in classes])
    targets = [(c, i) for c in classes for i in range(ipc)]
    checksums = {}
    for start in range(0, len(rows), CHUNK_IMAGES):
        chunk = slice(start, start + CHUNK_IMAGES)
        checksums.update(sets.write_images(set_dir, targets[chunk], data.images_at("train", rows[chunk])))
    sets.write_unit_marker(sets.slice_marker(set_dir, classes.start), checksums,
                           {"classes": [classes.start, classes.stop], "train_indices": rows.tolist()})
    return len(rows)


def run(cfg: Config, run_dir: RunDir, data: RealData, teacher: Teacher, executor) -> None:
    """Select the baseline's images by class slices on ``executor`` (the driver reads and decodes none of them),
    then write its manifest."""
    set_dir = run_dir.set_dir(NAME)
    if is_done(cfg, run_dir):
        log.info("relabel: the random-real images at %s are complete, skipping their selection", set_dir)
        return
    pending = [s for s in class_slices(data.num_classes) if not files.exists(sets.slice_marker(set_dir, s.start))]
    executor.select_random_real(cfg, set_dir, pending)
    write_set_manifest(cfg, set_dir, NAME, data.name, teacher, to_dict(cfg),
                       source={"selection": "recover.ipc training images per class, drawn from (seed, class); each "
                                            "class slice's rows in .progress/slice-<first class>.json"})
