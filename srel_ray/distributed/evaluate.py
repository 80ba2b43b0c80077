"""Evaluate on Ray Train: a student trained from scratch on one set's stored views and labels, tested on real data.

The same loop trains all three students of a report (condensed set, random real with hard labels, random real with
teacher labels): only the set and the ``hard`` flag differ, so the protocol is identical by construction.
"""

from __future__ import annotations


import numpy as np
import ray.train
import ray.train.torch
import torch

from srel_ray.config import Config, from_dict, to_dict
from srel_ray.core.continual import restrict_batches, restrict_labels
from srel_ray.core.normalization import Normalization
from srel_ray.core.precision import grad_scaler, prepare_model, resolve_precision
from srel_ray.core.student import (WeightEMA, build_student, count_correct, image_share, student_optimizer,
                                    train_student_epoch)
from srel_ray.storage import sets
from srel_ray.data.real import RealData
from srel_ray.distributed import trainer
from srel_ray.distributed.progress import send
from srel_ray.distributed.datasets import ray_dataset


def student_loop(config: dict) -> None:
    cfg = from_dict(config["cfg"])
    e = cfg.evaluate
    norm = Normalization(**config["norm"])
    rank, world, device = trainer.worker_setup(config["threads"])
    info = sets.read_set(config["set_dir"])
    classes = config["classes"]  # a memory of some classes (srel_ray.core.continual), or None: every class
    memory = range(info.num_classes) if classes is None else classes
    num_images = len(memory) * info.ipc
    share = image_share(num_images, rank, world)  # this worker reads only these images and their label rows
    ids = share if classes is None else [memory[i // info.ipc] * info.ipc + i % info.ipc for i in share]  # set ids
    images = sets.SetImages(info, ids, cfg.resources.student_cache_bytes)  # decoded on demand beyond the cache
    class_labels = torch.tensor([i // info.ipc for i in share])
    rows_per_rank = -(-num_images // world) * cfg.relabel.views_per_epoch
    model = build_student(e, seed=cfg.seed, num_classes=len(memory), channels=info.channels,
                          image_size=cfg.data.image_size)
    if device.type == "cuda" and world > 1:
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    model = prepare_model(model.to(device), device)  # channels_last on GPUs; not compiled (DDP, EMA, checkpoints)
    precision = resolve_precision(cfg.resources.precision, device)
    scaler = grad_scaler(precision, device)
    optimizer, scheduler, local_batch = student_optimizer(model, e, num_images * cfg.relabel.views_per_epoch, world)
    ema = WeightEMA(model, e.ema_decay) if e.ema_decay else None  # tested instead of the raw weights
    start, history = trainer.restore(model, optimizer, scheduler, ema)
    model = ray.train.torch.prepare_model(model, move_to_device=False)
    test_shard = ray.train.get_dataset_shard("test")

    for epoch in range(start, e.epochs):
        if classes is None:
            labels = sets.read_label_epoch(info.path, epoch % info.label_epochs, hard=config["hard"], images=share)
        else:  # the rows of this worker's images only (their set ids, sorted), then as the memory replays them
            labels = restrict_labels(sets.read_label_epoch(info.path, epoch % info.label_epochs, hard=config["hard"],
                                                           images=np.sort(np.asarray(ids))), classes, info.ipc,
                                     images=share)
        labels.image_index -= share.start
        loss = train_student_epoch(model, optimizer, scheduler, images, class_labels, labels, epoch=epoch,
                                   seed=cfg.seed, batch_size=local_batch, temperature=e.temperature,
                                   image_size=cfg.data.image_size, norm=norm, rank=rank, world=world, device=device,
                                   ema=ema, precision=precision, scaler=scaler, rows_per_rank=rows_per_rank,
                                   cutmix_prob=e.cutmix_prob, cutmix_beta=e.cutmix_beta)
        metrics = {"epoch": epoch, "train_loss": trainer.all_reduce_sum({"l": loss}, device)["l"] / world}
        last = epoch == e.epochs - 1
        if last or (e.eval_interval and (epoch + 1) % e.eval_interval == 0):
            tested = ema.model if ema is not None else model
            batches = trainer.test_batches(test_shard, 256, norm)
            if classes is not None:
                batches = restrict_batches(batches, classes, info.num_classes)
            test = trainer.all_reduce_sum(count_correct(tested, batches, device), device)
            metrics.update(test_top1=test["top1"] / test["n"], test_top5=test["top5"] / test["n"])
        history.append(metrics)
        if rank == 0:
            send(config["progress"], source=config["progress_source"], epoch=epoch,
                 metrics={k: v for k, v in metrics.items() if k != "epoch"})
        every = cfg.resources.student_checkpoint_epochs
        # Report (and checkpoint) at test points, and every `every` epochs where asked: a report costs ~0.1 s, too
        # much for every epoch of a small set's student. Every rank takes the same branch (reports must pair up).
        if "test_top1" in metrics or (every and (epoch + 1) % every == 0):
            state = trainer.training_state(model, optimizer, scheduler, epoch, history)
            if ema is not None:
                state["ema"], state["ema_updates"] = ema.state_dict(), ema.updates
            trainer.report(metrics, state, rank, start)


def run_student(cfg: Config, data: RealData, set_dir: str, *, hard: bool, name: str, storage: str,
                use_gpu: bool, progress_board=None, progress_source: str = "student",
                classes: tuple[int, ...] | None = None) -> dict:
    """Train and test one student; returns final top-1/top-5 and the per-epoch history. ``progress_board``: a
    srel_ray.distributed.progress.Board that gets each epoch's metrics as ``progress_source`` (or None).
    ``classes``: trained and tested on these classes of the set only (srel_ray.core.continual)."""
    res = cfg.resources
    loop_config = {"cfg": to_dict(cfg), "norm": {"mean": data.norm.mean, "std": data.norm.std},
                   "set_dir": set_dir, "hard": hard, "threads": res.threads_per_worker, "progress": progress_board,
                   "progress_source": progress_source, "classes": None if classes is None else list(classes)}
    datasets = {"test": ray_dataset(data, "test")}
    result = trainer.fit(student_loop, loop_config, name=name, storage=storage, epochs=cfg.evaluate.epochs, res=res,
                         use_gpu=use_gpu, datasets=datasets)
    history = trainer.final_state(result)["history"]
    return {"top1": history[-1]["test_top1"], "top5": history[-1]["test_top5"], "history": history}
