"""Per-class BN statistics of the real training data (EDC's category-aware matching), in one streaming pass.

The training split streams through Ray Data (read and decoded by Ray tasks, as squeeze reads it); an actor pool
holding every teacher turns each batch into the sums of the classes present in it
(srel_ray.core.class_stats.batch_sums). Sums of more than SHARD_BYTES (at 21,841 classes a ResNet-18 teacher's
are 1.7 GB, a ResNet-50's 9.3 GB, more than one process should hold) are held by accumulator actors, each owning a
contiguous range of classes; the driver only passes each batch's rows on, in stream order, to the shards owning
them, so every class's sums are added in one fixed order whatever the shard and actor counts (smaller sums the
driver adds up itself, in the same order). Each shard writes the files of its classes (one small file per class
and teacher, beside the teacher: srel_ray.teacher.save_class_files), the driver the manifests last. A folder that
is complete is reused.
"""

from __future__ import annotations

import logging

import numpy as np
import ray
import ray.data
import torch

from srel_ray.config import Config
from srel_ray.core.class_stats import (ClassStatsAccumulator, ClassSums, batch_sums, bytes_per_class,
                                      check_every_class_seen, class_shards)
from srel_ray.core.recover import freeze
from srel_ray.data.real import RealData
from srel_ray.distributed.cluster import actor_resources, local_device
from srel_ray.distributed.datasets import ray_dataset
from srel_ray.distributed.progress import close_bar, open_bar
from srel_ray.teacher import class_stats_complete, load_teacher, save_class_files, write_class_stats_manifest

log = logging.getLogger(__name__)

# The sums one accumulator actor holds at most (its classes x every teacher's BN channels, float64 sums and squares).
SHARD_BYTES = 512 * 2**20
# Batches passed on and not yet added, per shard, before the driver waits for the shards to catch up.
MAX_PENDING_ADDS = 16


class ClassSumsMapper:
    """Actor-pool step: a batch of real images -> per teacher, the sums of the classes it holds (one row each)."""

    def __init__(self, teacher_paths: list[str], threads: int):
        torch.set_num_threads(threads)
        self.device = local_device()
        self.teachers = [load_teacher(p) for p in teacher_paths]
        self.models = [freeze(t.build()).to(self.device) for t in self.teachers]

    def __call__(self, batch: dict) -> dict:
        images = torch.from_numpy(np.array(batch["image"]))  # Ray Data batches are read-only views
        labels = torch.from_numpy(np.array(batch["label"]))
        out: dict[str, np.ndarray] = {"images": torch.unique(labels, return_counts=True)[1].numpy()}
        for k, (teacher, model) in enumerate(zip(self.teachers, self.models)):
            part = batch_sums(model, teacher.norm.normalize_uint8(images).to(self.device), labels)
            out["classes"] = part.classes.numpy()
            for layer in range(len(part.sums)):
                out[f"t{k}_sum{layer}"] = part.sums[layer].numpy()
                out[f"t{k}_sq{layer}"] = part.squares[layer].numpy()
                out[f"t{k}_px{layer}"] = part.pixels[layer].numpy()
        return out


class ClassSumsShard:
    """Accumulator actor: the sums of the classes ``classes`` for every teacher; writes their files at the end."""

    def __init__(self, num_classes: int, classes: range, teachers: int):
        self.totals = [ClassStatsAccumulator(num_classes, classes) for _ in range(teachers)]

    def add(self, batch: dict) -> None:
        for total, part in zip(self.totals, _parts(batch, len(self.totals))):
            total.add(part)

    def missing(self) -> list[int]:
        return self.totals[0].missing()

    def write(self, folders: list[str]) -> None:
        for total, folder in zip(self.totals, folders):
            save_class_files(total.result(), folder)


def _parts(batch: dict, teachers: int) -> list[ClassSums]:
    def column(key: str) -> torch.Tensor:  # a copy: Ray Data's batches are read-only, torch warns at a view of one
        return torch.from_numpy(np.array(batch[key]))  # (a batch's classes x channels: small)

    layers = [sum(1 for key in batch if key.startswith(f"t{k}_sum")) for k in range(teachers)]
    classes = torch.from_numpy(batch["classes"].astype(np.int64))
    return [ClassSums(classes, [column(f"t{k}_sum{i}") for i in range(layers[k])],
                      [column(f"t{k}_sq{i}") for i in range(layers[k])],
                      [column(f"t{k}_px{i}") for i in range(layers[k])]) for k in range(teachers)]


def channels(batch: dict, teacher: int) -> list[int]:
    """The BN channel counts of teacher ``teacher``, from a batch of sums."""
    layers = sum(1 for key in batch if key.startswith(f"t{teacher}_sum"))
    return [int(batch[f"t{teacher}_sum{i}"].shape[1]) for i in range(layers)]


class ShardedSums:
    """The driver's side of the accumulators, made at the first batch (its columns give the teachers' channel
    counts). Sums that fit in SHARD_BYTES stay in the driver, bounded, with no process to start; beyond, each batch's
    rows go to the accumulator actors owning them, at most MAX_PENDING_ADDS batches ahead of each."""

    def __init__(self, num_classes: int, teachers: int):
        self.num_classes, self.teachers = num_classes, teachers
        self.local: ClassSumsShard | None = None
        self.shards: list[tuple[range, ray.actor.ActorHandle]] = []
        self.pending: list[ray.ObjectRef] = []
        self.channels: list[list[int]] = []

    def _start(self, batch: dict) -> None:
        self.channels = [channels(batch, k) for k in range(self.teachers)]
        ranges = class_shards(self.num_classes, sum(bytes_per_class(c) for c in self.channels), SHARD_BYTES)
        if len(ranges) == 1:
            self.local = ClassSumsShard(self.num_classes, ranges[0], self.teachers)
            log.info("class statistics: sums of %d classes held by the driver", self.num_classes)
            return
        # SPREAD: the shards' memory lands on as many nodes as it can; they need no CPU of their own.
        shard = ray.remote(num_cpus=0, scheduling_strategy="SPREAD")(ClassSumsShard)
        self.shards = [(r, shard.remote(self.num_classes, r, self.teachers)) for r in ranges]
        log.info("class statistics: sums held by %d accumulator actors of up to %d classes", len(ranges),
                 max(map(len, ranges)))

    def add(self, batch: dict) -> None:
        if not self.channels:
            self._start(batch)
        if self.local is not None:
            self.local.add(batch)
            return
        classes = batch["classes"]
        for owned, actor in self.shards:
            rows = (classes >= owned.start) & (classes < owned.stop)
            if rows.any():
                self.pending.append(actor.add.remote({k: v[rows] for k, v in batch.items()}))
        limit = MAX_PENDING_ADDS * len(self.shards)
        if len(self.pending) > limit:
            done, self.pending = ray.wait(self.pending, num_returns=len(self.pending) - limit)
            ray.get(done)  # an add that failed fails here

    def missing(self) -> list[int]:
        if self.local is not None:
            return self.local.missing()
        ray.get(self.pending)
        if not self.shards:
            return list(range(self.num_classes))
        return [c for part in ray.get([a.missing.remote() for _, a in self.shards]) for c in part]

    def write(self, folders: list[str]) -> None:
        if self.local is not None:
            self.local.write(folders)
        ray.get([actor.write.remote(folders) for _, actor in self.shards])

    def close(self) -> None:
        for _, actor in self.shards:
            ray.kill(actor)


def run_class_stats(cfg: Config, data: RealData, teacher_paths: list[str], folders: list[str],
                    use_gpu: bool, progress=None) -> dict:
    """Write the per-class statistics of each teacher to its folder, unless all folders are already complete.
    ``progress``: the command's srel_ray.distributed.progress.Progress (its bars), or None for a plain bar."""
    if all(class_stats_complete(f) for f in folders):
        log.info("class statistics: reusing %s", ", ".join(folders))
        return {"skipped": True}
    res = cfg.resources
    request = actor_resources(res, use_gpu)
    ctx = ray.data.DataContext.get_current()
    ctx.execution_options.preserve_order = True  # sums are added in one fixed order
    ds = ray_dataset(data, "train").map_batches(
        ClassSumsMapper, fn_constructor_args=(teacher_paths, res.threads_per_worker), batch_size=cfg.relabel.batch_size,
        compute=ray.data.ActorPoolStrategy(size=res.relabel_actors), num_cpus=request["num_cpus"],
        num_gpus=request["num_gpus"])
    sums = ShardedSums(data.num_classes, len(teacher_paths))
    images = data.num_images("train")
    bar = open_bar(progress, "class_stats", "class statistics", images, "image")
    try:
        for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
            sums.add(batch)
            bar.update(int(batch["images"].sum()))
        close_bar(progress, "class_stats", bar)
        check_every_class_seen(sums.missing())
        sums.write(folders)
    finally:
        sums.close()
    for path, folder, layers in zip(teacher_paths, folders, sums.channels):
        write_class_stats_manifest(folder, data.num_classes, layers, {"teacher": path, "images": images})
    log.info("class statistics of %d classes written to %s", data.num_classes, ", ".join(folders))
    return {"skipped": False, "folders": folders, "shards": len(sums.shards)}  # 0: the driver held the sums
