"""Per-class BN statistics of the real training data (EDC's category-aware matching), in one streaming pass.

The training split streams through Ray Data (read and decoded by Ray tasks, as squeeze reads it); an actor pool
holding every teacher turns each batch into the sums of the classes present in it
(srel_ray.core.class_stats.batch_sums); the driver adds them up in stream order and writes one small file per
class and teacher beside the teacher (srel_ray.teacher.save_class_stats). A folder that is complete is reused.
"""

from __future__ import annotations

import logging

import numpy as np
import ray
import ray.data
import torch

from srel_ray.config import Config
from srel_ray.core.class_stats import ClassStatsAccumulator, ClassSums, batch_sums
from srel_ray.core.recover import freeze
from srel_ray.data.real import RealData
from srel_ray.distributed.cluster import actor_resources, local_device
from srel_ray.distributed.datasets import ray_dataset
from srel_ray.distributed.progress import close_bar, open_bar
from srel_ray.errors import DataError
from srel_ray.teacher import class_stats_complete, load_teacher, save_class_stats

log = logging.getLogger(__name__)


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


def _parts(batch: dict, teachers: int) -> list[ClassSums]:
    def column(key: str) -> torch.Tensor:  # a copy: Ray Data's batches are read-only, torch warns at a view of one
        return torch.from_numpy(np.array(batch[key]))  # (a batch's classes x channels: small)

    layers = [sum(1 for key in batch if key.startswith(f"t{k}_sum")) for k in range(teachers)]
    classes = torch.from_numpy(batch["classes"].astype(np.int64))
    return [ClassSums(classes, [column(f"t{k}_sum{i}") for i in range(layers[k])],
                      [column(f"t{k}_sq{i}") for i in range(layers[k])],
                      [column(f"t{k}_px{i}") for i in range(layers[k])]) for k in range(teachers)]


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
    totals = [ClassStatsAccumulator(data.num_classes) for _ in teacher_paths]
    bar = open_bar(progress, "class_stats", "class statistics", len(data.labels("train")), "image")
    for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
        for total, part in zip(totals, _parts(batch, len(teacher_paths))):
            total.add(part)
        bar.update(int(batch["images"].sum()))
    close_bar(progress, "class_stats", bar)
    missing = totals[0].missing()
    if missing:
        raise DataError(f"no readable training images of classes {missing[:10]}: their statistics are undefined")
    for path, folder, total in zip(teacher_paths, folders, totals):
        save_class_stats(total.result(), folder, {"teacher": path, "images": len(data.labels("train"))})
    log.info("class statistics of %d classes written to %s", data.num_classes, ", ".join(folders))
    return {"skipped": False, "folders": folders}
