"""Squeeze on Ray Train: train the teacher on the real data with DDP workers, checkpoint every epoch, resume."""

from __future__ import annotations


import ray.train
import ray.train.torch
import torch

from srel_ray.config import Config, from_dict, to_dict
from srel_ray.core.normalization import Normalization
from srel_ray.core.precision import grad_scaler, prepare_model, resolve_precision
from srel_ray.core.seeding import STREAM_TEACHER_DATA, STREAM_TEACHER_INIT, derive_seed, seeded_init
from srel_ray.core.student import count_correct, train_teacher_epoch
from srel_ray.data.real import RealData
from srel_ray.distributed import trainer
from srel_ray.distributed.progress import send
from srel_ray.errors import DataError
from srel_ray.distributed.datasets import ray_dataset
from srel_ray.models import create_model
from srel_ray.teacher import Teacher


def squeeze_loop(config: dict) -> None:
    """One Ray Train worker's squeeze: reads like the plain loop, plus report/checkpoint at each epoch."""
    cfg = from_dict(config["cfg"])
    t = cfg.teacher
    norm = Normalization(**config["norm"])
    rank, world, device = trainer.worker_setup(config["threads"])
    with seeded_init(cfg.seed, STREAM_TEACHER_INIT):
        model = create_model(t.arch, num_classes=config["num_classes"], in_channels=config["channels"],
                             image_size=cfg.data.image_size, **t.arch_kwargs)
    if device.type == "cuda" and world > 1:
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)  # BN statistics over the global batch
    model = prepare_model(model.to(device), device)  # channels_last on GPUs; not compiled (DDP, checkpoints)
    precision = resolve_precision(cfg.resources.precision, device)
    scaler = grad_scaler(precision, device)
    optimizer = torch.optim.SGD(model.parameters(), lr=t.lr, momentum=t.momentum, weight_decay=t.weight_decay)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=t.epochs)
    start, history = trainer.restore(model, optimizer, scheduler)
    model = ray.train.torch.prepare_model(model, move_to_device=False)
    train_shard = ray.train.get_dataset_shard("train")
    test_shard = ray.train.get_dataset_shard("test")
    local_batch = max(1, t.batch_size // world)

    for epoch in range(start, t.epochs):
        batches = ((norm.normalize_uint8(b["image"]), b["label"]) for b in train_shard.iter_torch_batches(
            batch_size=local_batch, local_shuffle_buffer_size=t.shuffle_buffer or 4 * local_batch,
            local_shuffle_seed=derive_seed(cfg.seed, STREAM_TEACHER_DATA, epoch, rank)))
        stats = train_teacher_epoch(model, optimizer, batches, epoch=epoch, seed=cfg.seed, rank=rank,
                                    augment=t.augment, hflip=cfg.data.hflip, device=device, precision=precision,
                                    scaler=scaler)
        scheduler.step()
        train_sums = trainer.all_reduce_sum({"loss": stats["train_loss"] * stats["train_n"],
                                             "correct": stats["train_top1"] * stats["train_n"],
                                             "n": stats["train_n"]}, device)
        test = trainer.all_reduce_sum(count_correct(model, trainer.test_batches(test_shard, 256, norm), device),
                                      device)
        metrics = {"epoch": epoch, "train_loss": train_sums["loss"] / train_sums["n"],
                   "train_top1": train_sums["correct"] / train_sums["n"],
                   "test_top1": test["top1"] / test["n"], "test_top5": test["top5"] / test["n"]}
        # Unreadable images are dropped in the data pipeline; an equal split may also drop up to world-1 rows.
        metrics["skipped_images"] = max(0, config["expected_train"] - int(train_sums["n"]) - (world - 1))
        history.append(metrics)
        if rank == 0:
            send(config["progress"], source="teacher", epoch=epoch,
                 metrics={k: v for k, v in metrics.items() if k != "epoch"})
        state = trainer.training_state(model, optimizer, scheduler, epoch, history)
        trainer.report(metrics, state, rank, start)
        if metrics["skipped_images"] > cfg.data.max_corrupt:
            return  # the driver reads the count from the history and stops the run


def run_squeeze(cfg: Config, data: RealData, storage: str, use_gpu: bool, progress_board=None) -> Teacher:
    """Train the teacher with ``cfg.resources.train_workers`` workers; returns it with its per-epoch history.
    ``progress_board``: a srel_ray.distributed.progress.Board that gets each epoch's metrics (or None)."""
    res = cfg.resources
    loop_config = {"cfg": to_dict(cfg), "norm": {"mean": data.norm.mean, "std": data.norm.std},
                   "num_classes": data.num_classes, "channels": data.channels, "threads": res.threads_per_worker,
                   "expected_train": data.num_images("train"), "progress": progress_board}
    # Shards often come sorted by class (the CIFAR-10 copy is): a local shuffle buffer alone would then feed
    # single-class batches. A seeded global shuffle mixes classes; the per-epoch local buffer varies the order.
    train = ray_dataset(data, "train", shuffle=cfg.teacher.shuffle, seed=derive_seed(cfg.seed, STREAM_TEACHER_DATA))
    datasets = {"train": train, "test": ray_dataset(data, "test")}
    result = trainer.fit(squeeze_loop, loop_config, name="squeeze", storage=storage, epochs=cfg.teacher.epochs, res=res,
                         use_gpu=use_gpu, datasets=datasets)
    state = trainer.final_state(result)
    skipped = state["history"][-1]["skipped_images"]
    if skipped > cfg.data.max_corrupt:
        raise DataError(f"{skipped} training images of {data.name!r} could not be read, more than "
                        f"data.max_corrupt={cfg.data.max_corrupt}; fix or remove them, or raise the limit")
    last = state["history"][-1]
    return Teacher(cfg.teacher.arch, cfg.teacher.arch_kwargs, data.class_names, data.channels, data.image_size, data.norm, state["model"],
                   {"test_top1": last["test_top1"], "test_top5": last["test_top5"], "epochs": cfg.teacher.epochs,
                    "history": state["history"]})
