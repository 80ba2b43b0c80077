"""Relabel with Ray Data: (image, epoch) rows -> K view rows each (map step: decode, draw the views; each row carries
its view's parameters and its uint8 source image) -> teacher logits (an actor pool, one GPU per actor when present,
which renders the views on its device) -> one Parquet part per block, written by the actor.
On a CPU-only cluster Ray Data fuses the map step into the labeling actors (its execution plan shows
``MapBatches(expand_views)->MapBatches(TeacherLabeler)``): each actor decodes, renders and labels its blocks.

Each labelling actor writes its block's rows as a Parquet part of the epoch (top-k kept on its device) and returns
only the part's record; the driver commits an epoch (its record, srel_ray.storage.sets) once its parts tile every
image, and never holds logits. An epoch whose record exists is skipped, so an interrupted relabel resumes where it
stopped (an epoch without its record is labelled again, rewriting the same parts). Blocks (and so teacher
batches) never straddle two epochs: a resumed relabel runs, for each epoch it still has to do, the very batches an
uninterrupted one runs, and a batch retried after its actor died is the same block.
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
from srel_ray.core.relabel import epoch_blocks, images_per_block, label_block, pad_rows, view_rows
from srel_ray.storage import sets
from srel_ray.distributed.cluster import actor_resources, local_device, worker_identity
from srel_ray.distributed.progress import close_bar, open_bar
from srel_ray.teacher import load_teacher

log = logging.getLogger(__name__)


def expand_views(batch: dict, *, set_dir: str, ipc: int, channels: int, k: int, scale: tuple[float, float],
                 hflip: bool, seed: int, rows: int) -> dict:
    """Map step: a block (epoch, images start..stop-1) -> K view rows per image, with the view's parameters and the
    uint8 source image, padded to ``rows`` rows (``pad`` marks the copies)."""
    image_ids, epochs = [], []
    for epoch, start, stop in zip(batch["epoch"], batch["start"], batch["stop"]):
        image_ids += range(int(start), int(stop))
        epochs += [int(epoch)] * (int(stop) - int(start))
    labels = [i // ipc for i in image_ids]
    images = sets.read_images_at(set_dir, [(c, i % ipc) for c, i in zip(labels, image_ids)], channels)
    return pad_rows(view_rows(images, image_ids, labels, epochs, k=k, scale=scale, hflip=hflip, seed=seed), rows)


class TeacherLabeler:
    """Actor-pool step: the frozen teacher's logits on each row's view, rendered on the actor's device (with
    ``extra_teachers``, the mean of all teachers' logits, EDC's multi-teacher labels), kept as top-k on the device
    when ``top_k`` is set, and written by the actor as its block's Parquet part. What returns to the driver is
    the part's record (one small row a block), never logits. Loads the teachers once per actor."""

    def __init__(self, teacher_path: str, batch_size: int, threads: int, extra_teachers: tuple = (), *,
                 set_dir: str, num_classes: int, top_k: int, logits_dtype: str, image_size: int, norm: dict,
                 precision: str | None = None, compile_model: bool = False):
        torch.set_num_threads(threads)
        self.device = local_device()
        self.precision = resolve_precision(precision, self.device)
        self.teachers = [prepare_model(freeze(load_teacher(p).build()).to(self.device), self.device, compile_model)
                         for p in (teacher_path, *extra_teachers)]
        self.batch_size, self.image_size, self.norm = batch_size, image_size, Normalization(**norm)
        self.set_dir, self.num_classes, self.top_k, self.logits_dtype = set_dir, num_classes, top_k, logits_dtype
        ident = worker_identity()
        self.worker = f"{ident['node_id']}|{','.join(ident['gpu_ids'])}|{ident['pid']}|{self.device}"

    def __call__(self, batch: dict) -> dict:
        epoch, first, stop = int(batch["epoch"][0]), int(batch["image_id"][0]), int(batch["image_id"].max()) + 1
        rows = label_block(self.teachers, batch, top_k=self.top_k, image_size=self.image_size, norm=self.norm,
                           batch_size=self.batch_size, device=self.device, precision=self.precision)
        part = sets.write_label_part(self.set_dir, epoch, first, stop, rows, self.num_classes, self.logits_dtype,
                                     self.top_k)
        return {"part": np.array([json.dumps(part)]), "worker": np.array([self.worker])}


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
    per_block = images_per_block(n_images, r.views_per_epoch, r.batch_size)
    blocks = epoch_blocks(pending, n_images, per_block)
    rows_per_block = per_block * r.views_per_epoch
    ds = ray.data.from_items(blocks, override_num_blocks=len(blocks))
    ds = ds.map_batches(expand_views, fn_kwargs=dict(
        set_dir=info.path, ipc=info.ipc, channels=info.channels, k=r.views_per_epoch, scale=tuple(r.crop_scale),
        hflip=cfg.data.hflip, seed=cfg.seed, rows=rows_per_block), batch_size=1, num_cpus=1)
    # Every block has exactly rows_per_block rows (padded), so batches of that size are the blocks above: they
    # never mix epochs, even where Ray Data splits a large block and bundles the pieces again.
    ds = ds.map_batches(TeacherLabeler,
                        fn_constructor_args=(teacher_path, r.batch_size, res.threads_per_worker, tuple(extra_teachers)),
                        fn_constructor_kwargs=dict(set_dir=info.path, num_classes=info.num_classes, top_k=r.top_k,
                                                   logits_dtype=r.logits_dtype, image_size=cfg.data.image_size,
                                                   norm=norm, precision=res.precision, compile_model=res.compile),
                        batch_size=rows_per_block, compute=ray.data.ActorPoolStrategy(size=res.relabel_actors),
                        num_cpus=request["num_cpus"], num_gpus=request["num_gpus"])
    # Ray Data restarts a dead pool actor and retries its unfinished batches (max_restarts=-1 and
    # max_task_retries=-1 by default); a retried batch is the same block, so it writes the same part once more.

    parts: dict[int, dict[int, dict]] = defaultdict(dict)  # epoch -> first image -> part record (no logits)
    workers: set[str] = set()
    desc = f"relabel {info.path.rsplit('/', 1)[-1]}"
    bar = open_bar(progress, "relabel", desc, r.epochs, "epoch", initial=len(done))
    for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
        workers.update(batch["worker"].tolist())
        for part in map(json.loads, batch["part"]):
            epoch = part["epoch"]
            assert part["first"] not in parts[epoch], f"epoch {epoch}: block {part['first']} labelled twice"
            parts[epoch][part["first"]] = part
            if sum(p["stop"] - p["first"] for p in parts[epoch].values()) == n_images:
                sets.commit_label_epoch(info.path, epoch, list(parts.pop(epoch).values()), n_images)
                bar.update(1)
    close_bar(progress, "relabel", bar)
    assert not parts, f"relabel ended with incomplete epochs {sorted(parts)}"
    return {"epochs": r.epochs, "skipped_epochs": len(done), "workers": sorted(workers)}
