"""The student: trained from scratch on a small set by replaying stored views, with soft (KL at temperature T) or
hard (cross-entropy) labels, then tested on real held-out images. Also the teacher's (squeeze) epoch loop."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from concurrent.futures import ThreadPoolExecutor
from typing import Iterable, Iterator, Protocol

import torch
import torch.nn.functional as F
from torch import nn

from srel_ray.config import EvaluateConfig
from srel_ray.core.cutmix import cutmix_images, cutmix_rng, draw_cutmix, student_loss
from srel_ray.core.losses import topk_correct
from srel_ray.core.normalization import Normalization
from srel_ray.core.precision import autocast, grad_scaler, to_input
from srel_ray.core.relabel import view_pixels
from srel_ray.core.soft_labels import expand_topk
from srel_ray.core.seeding import (STREAM_STUDENT_INIT, STREAM_STUDENT_LAYERS, STREAM_STUDENT_ORDER,
                                    STREAM_TEACHER_DATA, STREAM_TEACHER_LAYERS, generator, seeded_init,
                                    seeded_stochastic_layers)
from srel_ray.core.views import Views, render_views, sample_views_batched
from srel_ray.models import create_model


class RowIndexed(Protocol):
    """Images served by row: ``images[rows]`` is the (len(rows), C, H, W) uint8 of a tensor of rows (a uint8
    tensor is one; so is a source that reads and decodes them on demand)."""

    def __getitem__(self, rows: torch.Tensor) -> torch.Tensor: ...

    def __len__(self) -> int: ...


@dataclass
class EpochLabels:
    """One label epoch: which image each row shows, the view, and the teacher's logits: stored whole, or as top-k
    (expanded per batch by ``targets``, never for the whole epoch), or neither (hard labels)."""

    image_index: torch.Tensor  # (R,) int64, row -> index into the set's images
    views: Views
    logits: torch.Tensor | None = None  # (R, num_classes) as stored (float16 or float32): the set keeps every logit
    topk: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None  # (index, logits, rest log-sum-exp), as stored
    num_classes: int = 0  # with ``topk``
    columns: torch.Tensor | None = None  # with ``topk``: the classes targets() returns, in order (a continual memory's)

    @property
    def hard(self) -> bool:
        return self.logits is None and self.topk is None

    def targets(self, rows: torch.Tensor) -> torch.Tensor:
        """The (len(rows), num_classes) float32 logits of ``rows``."""
        assert not self.hard, "hard labels have no logits"
        if self.logits is not None:
            return self.logits[rows].float()
        index, values, rest = self.topk
        logits = expand_topk(index[rows], values[rows], rest[rows], self.num_classes)
        return logits if self.columns is None else logits[:, self.columns]


def build_student(e: EvaluateConfig, *, seed: int, num_classes: int, channels: int, image_size: int) -> nn.Module:
    """The student at its seeded initialisation (identical wherever and however often it is built)."""
    with seeded_init(seed, STREAM_STUDENT_INIT):
        return create_model(e.arch, num_classes=num_classes, in_channels=channels, image_size=image_size,
                            **e.arch_kwargs)


def student_optimizer(model: nn.Module, e: EvaluateConfig, rows_per_epoch: int, world: int = 1):
    """``evaluate.optimizer`` (AdamW, or SGD with ``evaluate.momentum``) with a cosine schedule stepped per batch
    over ``evaluate.lr_stretch`` times all epochs (1: plain cosine; EDC's smoothing schedule: 2); returns them and
    this rank's batch size."""
    local_batch = max(1, e.batch_size // world)
    steps_per_epoch = -(-(-(-rows_per_epoch // world)) // local_batch)
    if e.optimizer == "sgd":
        optimizer = torch.optim.SGD(model.parameters(), lr=e.lr, momentum=e.momentum, weight_decay=e.weight_decay)
    else:
        optimizer = torch.optim.AdamW(model.parameters(), lr=e.lr, weight_decay=e.weight_decay)
    scheduler = stretched_cosine(optimizer, e.epochs * steps_per_epoch, e.lr_stretch)
    return optimizer, scheduler, local_batch


def shard_order(num_rows: int, seed: int, epoch: int, rank: int, world: int) -> torch.Tensor:
    """This rank's rows for one epoch: a seeded permutation, padded by wrapping so every rank gets as many."""
    perm = torch.randperm(num_rows, generator=generator(seed, STREAM_STUDENT_ORDER, epoch))
    per_rank = -(-num_rows // world)
    padded = perm.repeat(-(-per_rank * world // num_rows))[: per_rank * world]
    return padded[rank::world]


def image_share(num_images: int, rank: int, world: int) -> range:
    """The image ids rank ``rank`` of ``world`` trains on: contiguous, sizes within one image of each other. A
    rank reads only these images and, per epoch, only their label rows."""
    assert num_images >= world, f"{world} training workers for {num_images} images: each needs at least one"
    return range(rank * num_images // world, (rank + 1) * num_images // world)


def share_order(num_rows: int, rows_per_rank: int, seed: int, epoch: int, rank: int, world: int) -> torch.Tensor:
    """The order of this rank's own rows (it holds only its share's) for one epoch, wrapped to ``rows_per_rank``
    so every rank takes as many steps. One rank: exactly ``shard_order``'s permutation."""
    key = (seed, STREAM_STUDENT_ORDER, epoch) if world == 1 else (seed, STREAM_STUDENT_ORDER, epoch, rank)
    perm = torch.randperm(num_rows, generator=generator(*key))
    return perm.repeat(-(-rows_per_rank // num_rows))[:rows_per_rank]


def stretched_cosine(optimizer: torch.optim.Optimizer, total_steps: int, stretch: float = 1.0
                     ) -> torch.optim.lr_scheduler.CosineAnnealingLR:
    """Cosine annealing over ``stretch`` times the real number of steps (EDC's smoothing schedule): the learning
    rate after the last step is lr * (1 + cos(pi / stretch)) / 2, half the peak for stretch 2, zero for 1."""
    return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, round(stretch * total_steps)))


class WeightEMA:
    """theta_ema <- d_t * theta_ema + (1 - d_t) * theta after every optimiser step, over all floating-point state
    (parameters and BatchNorm running statistics); integer buffers (batch counters) are copied. EDC tests the
    student with these averaged weights.

    With ``warmup`` the decay of update t (0, 1, ...) is min(decay, (1 + t) / (10 + t)), the warm-up of
    TensorFlow's ExponentialMovingAverage(num_updates) (timm's ModelEmaV3 warms up likewise): a short run (a few
    hundred steps) would otherwise keep a visible share of the random initial weights (0.99^300 ~ 5 %)."""

    def __init__(self, model: nn.Module, decay: float, warmup: bool = True):
        self.decay = decay
        self.warmup = warmup
        self.updates = 0  # optimiser steps averaged so far; checkpointed with the weights
        self.model = copy.deepcopy(_unwrap(model)).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)

    def current_decay(self) -> float:
        if not self.warmup:
            return self.decay
        return min(self.decay, (1 + self.updates) / (10 + self.updates))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        decay = self.current_decay()
        current = _unwrap(model).state_dict()
        for name, value in self.model.state_dict().items():
            if value.dtype.is_floating_point:
                value.mul_(decay).add_(current[name].detach(), alpha=1 - decay)
            else:
                value.copy_(current[name])
        self.updates += 1

    def state_dict(self) -> dict:
        return self.model.state_dict()

    def load_state_dict(self, state: dict, updates: int) -> None:
        self.model.load_state_dict(state)
        self.updates = updates


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if hasattr(model, "module") else model  # DistributedDataParallel wraps the model


def train_student_epoch(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    images: RowIndexed,
    class_labels: torch.Tensor,
    labels: EpochLabels,
    *,
    epoch: int,
    seed: int,
    batch_size: int,
    temperature: float,
    image_size: int,
    norm: Normalization,
    rank: int = 0,
    world: int = 1,
    device: torch.device | str = "cpu",
    ema: WeightEMA | None = None,
    precision: str = "fp32",
    scaler: torch.amp.GradScaler | None = None,
    rows_per_rank: int | None = None,
    cutmix_prob: float = 0.0,
    cutmix_beta: float = 1.0,
) -> float:
    """One epoch over this rank's share of the stored views; returns the mean loss. Scheduler (and ``ema``, when
    given) step per batch. ``rows_per_rank``: ``images`` and ``labels`` hold only this rank's share of the set
    (``image_share``, ``labels.image_index`` counted from its first image), and every rank takes this many rows;
    None: they hold the whole set and each rank takes its rows of one shared permutation (``shard_order``).

    ``images``: the set's uint8 images on the host (a set can outgrow a GPU), as a tensor or anything that serves
    ``images[rows]`` for a tensor of rows as that tensor would (srel_ray.storage.sets.SetImages reads and decodes
    them on demand): each batch's images are gathered there, a batch ahead in a helper thread on a GPU or from a
    source that is not a tensor (pinned on a GPU, so the copy does not stall), copied as uint8 and rendered into
    views on ``device``. The loss is summed on the device and read once, at the end of the epoch, so
    the host queues batch i + 1 while the device runs batch i. ``precision``: the forward pass's
    (srel_ray.core.precision); the loss is computed in fp32. ``scaler``: fp16's GradScaler, kept by the caller
    across epochs (None: a fresh one, enabled for fp16 only). ``cutmix_prob``, ``cutmix_beta``: CutMix of the
    rendered views (srel_ray.core.cutmix), drawn per batch from (seed, epoch, rank); 0: none."""
    device = torch.device(device)
    model.train()
    scaler = scaler if scaler is not None else grad_scaler(precision, device)
    rows = (shard_order(len(labels.image_index), seed, epoch, rank, world) if rows_per_rank is None else
            share_order(len(labels.image_index), rows_per_rank, seed, epoch, rank, world))
    boxes, flips = labels.views.boxes.to(device), labels.views.flips.to(device)  # one copy per epoch, not per batch
    mixes = cutmix_rng(seed, epoch, rank) if cutmix_prob > 0 else None
    total = torch.zeros((), dtype=torch.float64, device=device)
    count = 0
    gpu = device.type == "cuda"
    ahead = gpu or not isinstance(images, torch.Tensor)  # a source that decodes: the next batch while this one runs
    with seeded_stochastic_layers(device, seed, STREAM_STUDENT_LAYERS, epoch, rank):
        batches = _host_batches(images, class_labels, labels, rows, batch_size, gpu)
        for batch, batch_images, target in prefetch(batches, ahead):
            on_device = batch.to(device, non_blocking=True)
            x = view_pixels(batch_images.to(device, non_blocking=True), Views(boxes[on_device], flips[on_device]),
                            image_size, norm)
            mix = None if mixes is None else draw_cutmix(mixes, len(batch), image_size, cutmix_prob, cutmix_beta)
            x = to_input(x if mix is None else cutmix_images(x, mix), device)
            target = target.to(device, non_blocking=True)
            with autocast(precision, device):
                out = model(x).float()
            loss = student_loss(out, target, hard=labels.hard, temperature=temperature, mix=mix)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            if ema is not None:
                ema.update(model)
            total += loss.detach().double() * len(batch)  # float64 on the device: the sum a float would give
            count += len(batch)
    return float(total) / max(count, 1)


def _host_batches(images: RowIndexed, class_labels: torch.Tensor, labels: EpochLabels, rows: torch.Tensor,
                  batch_size: int, pin: bool):
    """Per batch of ``rows``: the rows, their uint8 images and their targets (logits, or class indices), gathered
    on the host; page-locked when ``pin`` (they are bound for a GPU)."""
    for batch in rows.split(batch_size):
        idx = labels.image_index[batch]
        parts = (images[idx], class_labels[idx] if labels.hard else labels.targets(batch))
        yield (batch, *(p.pin_memory() if pin else p for p in parts))


def prefetch(items: Iterator, enabled: bool) -> Iterator:
    """``items``, each produced one step ahead in a helper thread while the caller works on the one before (host
    work such as decoding, gathering and pinning overlaps the caller queueing GPU work); plain iteration when not
    ``enabled`` (gathering from a tensor on a CPU: the thread would only compete for the cores)."""
    if not enabled:
        yield from items
        return
    with ThreadPoolExecutor(1) as pool:
        ahead = pool.submit(next, items, None)
        while (item := ahead.result()) is not None:
            ahead = pool.submit(next, items, None)
            yield item


@torch.no_grad()
def count_correct(model: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
                  device: torch.device | str = "cpu") -> dict[str, int]:
    """Top-1/top-5 hits and sample count over (normalised images, labels) batches."""
    model.eval()
    top1 = top5 = n = 0
    for x, y in batches:
        c1, c5 = topk_correct(model(x.to(device)), y.to(device), (1, 5))
        top1, top5, n = top1 + c1, top5 + c5, n + len(y)
    return {"top1": top1, "top5": top5, "n": n}


def light_augment(x: torch.Tensor, gen: torch.Generator, pad: int, hflip: bool = True) -> torch.Tensor:
    """Random pad-and-crop plus horizontal flip per image: the mild augmentation SRe2L's squeeze allows."""
    n, _, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad), mode="reflect")
    offsets = torch.randint(0, 2 * pad + 1, (n, 2), generator=gen)
    flips = (torch.rand(n, generator=gen) < 0.5) & hflip
    out = torch.stack([padded[i, :, dy:dy + h, dx:dx + w] for i, (dy, dx) in enumerate(offsets.tolist())])
    return torch.where(flips.view(-1, 1, 1, 1), out.flip(-1), out)


# From this side length up squeeze augments as torchvision's ImageNet reference recipe does (RandomResizedCrop of
# 8-100 % of the area, then a flip); below it, the light pad-and-crop that suits 32-64 px data.
RANDOM_RESIZED_CROP_FROM_PX = 128
RANDOM_RESIZED_CROP_SCALE = (0.08, 1.0)


def squeeze_augment(x: torch.Tensor, gen: torch.Generator, hflip: bool = True) -> torch.Tensor:
    """Squeeze's augmentation of a batch, by image size (``RANDOM_RESIZED_CROP_FROM_PX``)."""
    size = x.shape[-1]
    if size < RANDOM_RESIZED_CROP_FROM_PX:
        return light_augment(x, gen, pad=max(1, size // 8), hflip=hflip)
    views = sample_views_batched(len(x), x.shape[-2], size, RANDOM_RESIZED_CROP_SCALE, gen, hflip)  # no per-image Python
    return render_views(x, views, size)


def train_teacher_epoch(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    *,
    epoch: int,
    seed: int,
    rank: int,
    augment: bool,
    hflip: bool = True,
    device: torch.device | str = "cpu",
    precision: str = "fp32",
    scaler: torch.amp.GradScaler | None = None,
) -> dict[str, float]:
    """One squeeze epoch of plain cross-entropy training over (normalised images, labels) batches; the forward pass
    in ``precision``, the loss in fp32, loss and hits summed on the device and read once at the end."""
    device = torch.device(device)
    model.train()
    scaler = scaler if scaler is not None else grad_scaler(precision, device)
    gen = generator(seed, STREAM_TEACHER_DATA, epoch, rank)
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    correct = torch.zeros((), dtype=torch.int64, device=device)
    n = 0
    with seeded_stochastic_layers(device, seed, STREAM_TEACHER_LAYERS, epoch, rank):
        for x, y in batches:
            if augment:
                x = squeeze_augment(x, gen, hflip)
            x, y = to_input(x.to(device), device), y.to(device)
            with autocast(precision, device):
                out = model(x).float()
            loss = F.cross_entropy(out, y)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            loss_sum += loss.detach().double() * len(y)
            correct += (out.argmax(1) == y).sum()
            n += len(y)
    return {"train_loss": float(loss_sum) / max(n, 1), "train_top1": int(correct) / max(n, 1), "train_n": n}
