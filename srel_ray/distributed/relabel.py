"""Relabel with Ray Data: blocks (a range of images for a group of consecutive pending label epochs) -> the
block's images, read and decoded once (map step) -> teacher logits for each epoch of the group (an actor pool, one
GPU per actor when present, which draws each epoch's views and renders them on its device from the block's uint8
images) -> one Parquet part per (epoch, first image of the block), written by the actor.
Each image's uint8 pixels cross the object store once per block (not once per view, nor once per epoch of the
group). On a CPU-only cluster Ray Data fuses the map step into the labeling actors (its execution plan shows
``MapBatches(read_block_images)->MapBatches(TeacherLabeler)``): each actor decodes, renders and labels its blocks.
On GPU nodes the map step runs as CPU tasks beside the actors, and Ray Data keeps a few blocks queued per actor,
so the next block is read and decoded while the current one is labelled.

Each labelling actor writes its block's rows as Parquet parts, one per epoch (top-k kept on its device), and
returns only the parts' records; the driver commits an epoch (its record, srel_ray.storage.sets) once its parts
tile every image, and never holds logits. An epoch whose record exists is skipped, so an interrupted relabel
resumes where it stopped (an epoch without its record is labelled again, rewriting the same parts). Teacher
batches never straddle two epochs and an epoch's image ranges do not depend on the grouping: a resumed relabel
runs, for each epoch it still has to do, the very batches an uninterrupted one runs, and a batch retried after its
actor died is the same block.
"""

from __future__ import annotations

import json
import logging
from collections import defaultdict

import numpy as np
import ray
import ray.data
import torch

from srel_ray.config import Config
from srel_ray.core.normalization import Normalization
from srel_ray.core.precision import prepare_model, resolve_precision
from srel_ray.core.recover import freeze
from srel_ray.core.relabel import BlockPlan, label_image_block, relabel_blocks
from srel_ray.storage import sets
from srel_ray.distributed.cluster import actor_resources, local_device, worker_identity
from srel_ray.distributed.progress import close_bar, open_bar
from srel_ray.teacher import load_teacher

log = logging.getLogger(__name__)


# Ray Data blocks of block indices: at most this many, so that planning a relabel of 80,000 work blocks
# (ImageNet-21K, IPC 50, 300 epochs) makes this many read tasks, not one per work block. Below it, each Ray Data
# block is one work block, as labelling actors balance best; above it, a task takes a run of consecutive ones.
MAX_INDEX_BLOCKS = 1024


def read_block_images(batch: dict, *, plan: BlockPlan, set_dir: str, ipc: int, channels: int) -> dict:
    """Map step: a block's index (one row) -> the same row with the block's uint8 images (images start..stop-1 of
    ``plan.block(index)``), decoded once for all its epochs, as one (stop - start, C, H, W) array."""
    block = plan.block(int(batch["id"][0]))
    images = sets.read_images_by_id(set_dir, range(block["start"], block["stop"]), ipc, channels)
    return {"id": batch["id"], "images": images.numpy()[None]}


class TeacherLabeler:
    """Actor-pool step: for each epoch of a block, the frozen teacher's logits on each view, rendered on the
    actor's device from the block's images (with ``extra_teachers``, the mean of all teachers' logits, EDC's
    multi-teacher labels), kept as top-k on the device when ``top_k`` is set, and written by the actor as the
    epoch's part for the block's images. What returns to the driver is the parts' records (one small row an
    epoch), never logits. Loads the teachers once per actor."""

    def __init__(self, teacher_path: str, batch_size: int, threads: int, extra_teachers: tuple = (), *,
                 plan: BlockPlan, set_dir: str, ipc: int, num_classes: int, views: dict, rows: int, top_k: int, logits_dtype: str,
                 image_size: int, norm: dict, precision: str | None = None, compile_model: bool = False):
        torch.set_num_threads(threads)
        self.device = local_device()
        self.precision = resolve_precision(precision, self.device)
        self.teachers = [prepare_model(freeze(load_teacher(p).build()).to(self.device), self.device, compile_model)
                         for p in (teacher_path, *extra_teachers)]
        self.batch_size, self.image_size, self.norm = batch_size, image_size, Normalization(**norm)
        self.plan, self.set_dir, self.ipc, self.num_classes = plan, set_dir, ipc, num_classes
        self.views, self.rows, self.top_k, self.logits_dtype = views, rows, top_k, logits_dtype
        ident = worker_identity()
        self.worker = f"{ident['node_id']}|{','.join(ident['gpu_ids'])}|{ident['pid']}|{self.device}"

    def __call__(self, batch: dict) -> dict:
        block = self.plan.block(int(batch["id"][0]))
        first, stop, epochs = block["start"], block["stop"], block["epochs"]
        images = torch.from_numpy(np.array(batch["images"][0]))  # Ray Data batches are read-only views
        parts = []
        for epoch, rows in label_image_block(
                self.teachers, images, first, epochs, ipc=self.ipc, **self.views, rows=self.rows, top_k=self.top_k,
                image_size=self.image_size, norm=self.norm, batch_size=self.batch_size, device=self.device,
                precision=self.precision):
            parts.append(sets.write_label_part(self.set_dir, epoch, first, stop, rows, self.num_classes,
                                               self.logits_dtype, self.top_k))
        return {"part": np.array([json.dumps(p) for p in parts]), "worker": np.array([self.worker] * len(parts))}


def run_relabel(cfg: Config, teacher_path: str, info: sets.SetInfo, use_gpu: bool,
                extra_teachers: list[str] = (), progress=None) -> dict:
    """Write every missing label epoch of the set at ``info.path``; returns counts and the labeling actors.
    ``extra_teachers``: more teacher.pt paths whose logits are averaged with the teacher's. ``progress``: the
    command's srel_ray.distributed.progress.Progress (its bars), or None for a plain bar."""
    r, res = cfg.relabel, cfg.resources
    done = set(sets.label_epochs_done(info.path, r.epochs))
    pending = [e for e in range(r.epochs) if e not in done]
    if done:
        log.info("relabel %s: %d of %d epochs already written, skipping them", info.path, len(done), r.epochs)
    if not pending:
        return {"epochs": r.epochs, "skipped_epochs": len(done), "workers": []}
    n_images = info.num_classes * info.ipc
    norm = info.manifest["normalization"]
    request = actor_resources(res, use_gpu)

    ctx = ray.data.DataContext.get_current()
    ctx.execution_options.preserve_order = True  # epochs complete in order, so they are committed as they go
    plan = relabel_blocks(pending, n_images, r.views_per_epoch, r.batch_size, res.relabel_actors)
    ds = ray.data.range(len(plan), override_num_blocks=min(len(plan), MAX_INDEX_BLOCKS))
    ds = ds.map_batches(read_block_images, batch_size=1, num_cpus=1,
                        fn_kwargs=dict(plan=plan, set_dir=info.path, ipc=info.ipc, channels=info.channels))
    # Batches of one row are the plan's blocks, whatever Ray Data does with its own blocks.
    views = dict(k=r.views_per_epoch, scale=tuple(r.crop_scale), hflip=cfg.data.hflip, seed=cfg.seed)
    ds = ds.map_batches(TeacherLabeler,
                        fn_constructor_args=(teacher_path, r.batch_size, res.threads_per_worker, tuple(extra_teachers)),
                        fn_constructor_kwargs=dict(plan=plan, set_dir=info.path, ipc=info.ipc,
                                                   num_classes=info.num_classes, views=views,
                                                   rows=plan.images_per_block * r.views_per_epoch, top_k=r.top_k,
                                                   logits_dtype=r.logits_dtype, image_size=cfg.data.image_size,
                                                   norm=norm, precision=res.precision, compile_model=res.compile),
                        batch_size=1, compute=ray.data.ActorPoolStrategy(size=res.relabel_actors),
                        num_cpus=request["num_cpus"], num_gpus=request["num_gpus"])
    # Ray Data restarts a dead pool actor and retries its unfinished batches (max_restarts=-1 and
    # max_task_retries=-1 by default); a retried batch is the same block, so it writes the same parts once more.

    parts: dict[int, dict[int, dict]] = defaultdict(dict)  # epoch -> first image -> part record (no logits)
    labelled: dict[int, int] = defaultdict(int)  # epoch -> images its parts so far cover
    workers: set[str] = set()
    desc = f"relabel {info.path.rsplit('/', 1)[-1]}"
    bar = open_bar(progress, "relabel", desc, r.epochs, "epoch", initial=len(done))
    for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
        workers.update(batch["worker"].tolist())
        for part in map(json.loads, batch["part"]):
            epoch = part["epoch"]
            assert part["first"] not in parts[epoch], f"epoch {epoch}: block {part['first']} labelled twice"
            parts[epoch][part["first"]] = part
            labelled[epoch] += part["stop"] - part["first"]
            if labelled[epoch] == n_images:
                sets.commit_label_epoch(info.path, epoch, list(parts.pop(epoch).values()), n_images)
                del labelled[epoch]
                bar.update(1)
    close_bar(progress, "relabel", bar)
    assert not parts, f"relabel ended with incomplete epochs {sorted(parts)}"
    return {"epochs": r.epochs, "skipped_epochs": len(done), "workers": sorted(workers)}
