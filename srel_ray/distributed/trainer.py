"""What squeeze and evaluate share on Ray Train: the trainer, worker context, checkpoints, metric all-reduce."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Callable

import ray
import ray.train
import torch
import torch.distributed as dist
from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer

from srel_ray.config import ResourcesConfig
from srel_ray.storage import files


def fit(loop: Callable[[dict], None], loop_config: dict, *, name: str, storage: str, epochs: int,
        res: ResourcesConfig, use_gpu: bool, datasets: dict, max_failures: int = 3) -> ray.train.Result:
    """Run ``loop`` for ``epochs`` epochs on ``res.train_workers`` workers. Same ``name`` and ``storage`` resume
    the last checkpoint. ``storage`` is an absolute local path or a URL that Ray's storage layer reaches (pyarrow:
    s3://, gs://, file://)."""
    if checkpoint_progress(storage, name)["epochs"] >= epochs:
        # Finished by an earlier command (its driver died after the last checkpoint, before the stage's record): the
        # result is read back instead of starting workers that would restore the checkpoint and train nothing.
        return ray.train.Result.from_path(files.join(storage, name))
    # Blocks reach the workers in a fixed order (read and decode tasks may finish in any order; the splitter then
    # deals them out by a fixed rule), so the seeded shuffles downstream see the same input in every execution:
    # a run resumed from a checkpoint trains exactly the epochs an uninterrupted one would have.
    ingest = ray.train.DataConfig.default_ingest_options()
    ingest.preserve_order = True
    # A lone worker reads every row, so nothing needs splitting: unsplit, it streams each dataset itself, in the
    # same blocks and order, instead of through a SplitCoordinator actor per dataset (a process started and torn
    # down with every fit: about 3 CPU-seconds each on a 2-core machine, benchmarks/train_overhead.py).
    split = "all" if res.train_workers > 1 else []
    trainer = TorchTrainer(
        loop,
        train_loop_config=loop_config,
        dataset_config=ray.train.DataConfig(datasets_to_split=split, execution_options=ingest),
        scaling_config=ScalingConfig(num_workers=res.train_workers, use_gpu=use_gpu,
                                     resources_per_worker={"CPU": res.threads_per_worker}),
        run_config=RunConfig(name=name, storage_path=str(storage),
                             checkpoint_config=CheckpointConfig(num_to_keep=2),
                             failure_config=FailureConfig(max_failures=max_failures)),
        datasets=datasets,
    )
    return trainer.fit()


def checkpoint_progress(storage: str, name: str) -> dict:
    """What the Train run ``name`` under ``storage`` has checkpointed: ``epochs`` trained (0 without a checkpoint)
    and ``start_epoch``, the epoch its last worker group started at. A group starts after the epochs restored from
    a checkpoint, so ``start_epoch`` above the epochs done before a fit means workers died and were restarted."""
    path = files.join(storage, name)
    if not files.exists(files.join(path, "checkpoint_manager_snapshot.json")):  # written with the first checkpoint
        return {"epochs": 0, "start_epoch": 0}
    metrics = ray.train.Result.from_path(path).metrics
    return {"epochs": metrics["epoch"] + 1, "start_epoch": metrics.get("start_epoch", 0)}


def worker_setup(threads: int) -> tuple[int, int, torch.device]:
    """Threads, rank, world size and device of this training worker."""
    torch.set_num_threads(threads)
    ctx = ray.train.get_context()
    return ctx.get_world_rank(), ctx.get_world_size(), ray.train.torch.get_device()


def restore(model: torch.nn.Module, optimizer, scheduler, ema=None) -> tuple[int, list[dict]]:
    """Load the last checkpoint of this Train run, if any; returns the next epoch and the history so far.
    ``ema``: a WeightEMA whose averaged weights and update count were saved as ``state["ema"]`` and
    ``state["ema_updates"]``."""
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        return 0, []
    with checkpoint.as_directory() as d:
        state = torch.load(Path(d) / "state.pt", map_location="cpu", weights_only=False)
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    if ema is not None:
        ema.load_state_dict(state["ema"], state["ema_updates"])
    return state["epoch"] + 1, state["history"]


def training_state(model: torch.nn.Module, optimizer, scheduler, epoch: int, history: list[dict]) -> dict:
    return {"model": unwrap(model).state_dict(), "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(), "epoch": epoch, "history": history}


def final_state(result: ray.train.Result) -> dict:
    """The state rank 0 saved with the last checkpoint (model, optimiser, per-epoch history)."""
    with result.checkpoint.as_directory() as d:
        return torch.load(Path(d) / "state.pt", map_location="cpu", weights_only=False)


def report(metrics: dict, state: dict | None, rank: int, start_epoch: int) -> None:
    """Every rank reports; rank 0 attaches ``state`` as the checkpoint when given. ``start_epoch`` (the epoch this
    worker group started at) goes with the metrics only, so the saved history is the same after a restart."""
    metrics = {**metrics, "start_epoch": start_epoch}
    if state is None or rank != 0:
        ray.train.report(metrics)
        return
    with tempfile.TemporaryDirectory() as d:
        torch.save(state, Path(d) / "state.pt")
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(d))


def all_reduce_sum(values: dict[str, float], device: torch.device) -> dict[str, float]:
    """Sum counters over workers (no-op on one worker)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return values
    keys = sorted(values)
    t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return dict(zip(keys, t.tolist()))


def test_batches(shard, batch_size: int, norm) -> "iter":
    """Normalised (images, labels) batches from a Ray Data shard of uint8 images."""
    for batch in shard.iter_torch_batches(batch_size=batch_size):
        yield norm.normalize_uint8(batch["image"]), batch["label"]


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return model.module if hasattr(model, "module") else model
