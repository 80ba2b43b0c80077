"""Relabel (FKD style): every image gets E epochs x K views drawn from (seed, image, epoch); the teacher's logits on
each view are stored beside the view's parameters, so the student can replay exactly those views.

Work comes in blocks: a range of images (one teacher batch of views per epoch) for a group of label epochs. The
block's uint8 images are decoded once; for each epoch its view rows are drawn (``view_rows``) and ``label_block``
renders them where the teacher runs (on its GPU when it has one), a teacher batch at a time, each row's pixels
gathered from the block's images by the row's image id (no per-view copy of an image ever exists)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch
from torch import nn

from srel_ray.core.soft_labels import compress_topk
from srel_ray.core.normalization import Normalization, from_uint8
from srel_ray.core.precision import autocast, to_input
from srel_ray.core.seeding import STREAM_VIEWS, generator
from srel_ray.core.views import Views, render_views, sample_views


def views_for(seed: int, image_id: int, epoch: int, k: int, height: int, width: int,
              scale: tuple[float, float], hflip: bool = True) -> Views:
    """The K views of one image in one label epoch. Deterministic in (seed, image_id, epoch) alone."""
    return sample_views(k, height, width, scale, generator(seed, STREAM_VIEWS, image_id, epoch), hflip)


def view_pixels(images_uint8: torch.Tensor, views: Views, image_size: int, norm: Normalization) -> torch.Tensor:
    """The normalised input the teacher (at relabel) and the student (at training) both see for these views."""
    return norm.normalize(render_views(from_uint8(images_uint8), views, image_size))


@torch.no_grad()
def teacher_logits(teacher: nn.Module, pixels: torch.Tensor, batch_size: int, device: torch.device | str,
                   precision: str = "fp32") -> torch.Tensor:
    """Logits of a frozen teacher on normalised view pixels, in chunks of ``batch_size``."""
    with autocast(precision, device):
        out = [teacher(to_input(chunk.to(device), device)).float() for chunk in pixels.split(batch_size)]
    return torch.cat(out).cpu() if out else torch.empty(0)


def _teacher_chunks(teachers: list[nn.Module], images_uint8: torch.Tensor, views: Views, *,
                    image_index: torch.Tensor | None, image_size: int, norm: Normalization, batch_size: int,
                    device: torch.device, precision: str):
    """The teachers' mean logits, one teacher batch at a time, left on ``device``. The images go to ``device``
    once (each image's bytes cross once however many views it has); each batch's rows are gathered there."""
    images = to_device(images_uint8, device)
    index = torch.arange(len(views)) if image_index is None else image_index
    index, boxes = index.to(device, non_blocking=True), views.boxes.to(device, non_blocking=True)
    flips = views.flips.to(device, non_blocking=True)
    for start in range(0, len(views), batch_size):
        rows = slice(start, start + batch_size)
        pixels = to_input(view_pixels(images[index[rows]], Views(boxes[rows], flips[rows]), image_size, norm),
                          device)
        with autocast(precision, device):
            per_teacher = [t(pixels).float() for t in teachers]
        yield per_teacher[0] if len(per_teacher) == 1 else mean_logits(per_teacher)


def to_device(images: torch.Tensor, device: torch.device) -> torch.Tensor:
    """``images`` on ``device``: a host tensor bound for a GPU is page-locked first, so the copy runs while the host
    goes on (drawing up the first batch); a tensor already there is itself."""
    pin = device.type == "cuda" and images.device.type == "cpu"
    return (images.pin_memory() if pin else images).to(device, non_blocking=True)


@torch.no_grad()
def label_views(teachers: list[nn.Module], images_uint8: torch.Tensor, views: Views, *, image_size: int,
                norm: Normalization, batch_size: int, device: torch.device | str, precision: str = "fp32",
                image_index: torch.Tensor | None = None) -> torch.Tensor:
    """The teachers' mean logits on each row's view (row r: view ``views[r]`` of image
    ``images_uint8[image_index[r]]``; without ``image_index``, of ``images_uint8[r]``), rendered on ``device`` a
    batch at a time from the uint8 images; one copy back at the end. At fp32 the values equal ``teacher_logits``
    on ``view_pixels`` (every view pixel depends on its own image and box only)."""
    out = list(_teacher_chunks(teachers, images_uint8, views, image_index=image_index, image_size=image_size,
                               norm=norm, batch_size=batch_size, device=torch.device(device), precision=precision))
    return torch.cat(out).cpu() if out else torch.empty(0)


@torch.no_grad()
def label_views_topk(teachers: list[nn.Module], images_uint8: torch.Tensor, views: Views, k: int, *,
                     image_size: int, norm: Normalization, batch_size: int, device: torch.device | str,
                     precision: str = "fp32", image_index: torch.Tensor | None = None
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``label_views`` kept as top-k (srel_ray.core.soft_labels.compress_topk), compressed on ``device`` batch
    by batch: only k + 1 numbers per view ever leave it."""
    parts = [compress_topk(chunk, k) for chunk in _teacher_chunks(
        teachers, images_uint8, views, image_index=image_index, image_size=image_size, norm=norm,
        batch_size=batch_size, device=torch.device(device), precision=precision)]
    return tuple(torch.cat([p[i] for p in parts]).cpu() for i in range(3))


def label_block(teachers: list[nn.Module], columns: dict[str, np.ndarray], images_uint8: torch.Tensor, first: int,
                *, top_k: int, image_size: int, norm: Normalization, batch_size: int, device: torch.device | str,
                precision: str = "fp32") -> dict[str, np.ndarray]:
    """One epoch of a relabel block: ``columns`` are its ``view_rows`` (padded by ``pad_rows``), ``images_uint8``
    the block's (C, H, W) images, those of image ids ``first``, ``first`` + 1, ... The teacher batch runs on every
    row, padding included (so the batch is the same whoever runs it), then the padding is dropped and the label
    columns added: ``logits`` (R, C), or with ``top_k`` ``topk_index``, ``topk_logits`` and ``rest_logsumexp``."""
    keep = ~np.asarray(columns["pad"])
    rows = {k: np.asarray(v) for k, v in columns.items() if k != "pad"}
    index = torch.from_numpy(rows["image_id"].astype(np.int64) - first)
    args = dict(image_size=image_size, norm=norm, batch_size=batch_size, device=device, precision=precision,
                image_index=index)
    if top_k:
        topk_index, values, rest = label_views_topk(teachers, images_uint8, row_views(rows), top_k, **args)
        rows.update(topk_index=topk_index.numpy(), topk_logits=values.numpy(), rest_logsumexp=rest.numpy())
    else:
        rows["logits"] = label_views(teachers, images_uint8, row_views(rows), **args).numpy()
    return {k: v[keep] for k, v in rows.items()}


def images_per_block(num_images: int, views_per_epoch: int, batch_size: int) -> int:
    """Images per relabel block: one teacher batch of views per block (so work spreads over every labelling
    actor), blocks of an epoch as equal as possible (padding the short one costs less than one image a block)."""
    cap = max(1, batch_size // views_per_epoch)
    return -(-num_images // -(-num_images // cap))


def view_rows(image_ids: list[int], labels: list[int], epochs: list[int], *, height: int, width: int, k: int,
              scale: tuple[float, float], hflip: bool, seed: int) -> dict[str, np.ndarray]:
    """The K views of each image (``height`` x ``width`` pixels) in its label epoch, as label-file columns
    (srel_ray.storage.sets); ``label_block`` renders them from the images."""
    per_image = [views_for(seed, i, e, k, height, width, scale, hflip) for i, e in zip(image_ids, epochs)]
    views = Views(torch.cat([v.boxes for v in per_image]), torch.cat([v.flips for v in per_image]))
    box = views.boxes.numpy().astype(np.int32)
    return {"image_id": np.repeat(np.asarray(image_ids, np.int32), k),
            "label": np.repeat(np.asarray(labels, np.int32), k),
            "epoch": np.repeat(np.asarray(epochs, np.int32), k),
            "view": np.tile(np.arange(k, dtype=np.int32), len(image_ids)),
            "top": box[:, 0], "left": box[:, 1], "height": box[:, 2], "width": box[:, 3],
            "flip": views.flips.numpy()}


def row_views(columns: dict[str, np.ndarray]) -> Views:
    """The views of label-file rows (their top, left, height, width and flip columns)."""
    boxes = np.stack([columns["top"], columns["left"], columns["height"], columns["width"]], 1)
    return Views(torch.from_numpy(boxes.astype(np.float32)), torch.from_numpy(np.asarray(columns["flip"], bool)))


def mean_logits(per_teacher: list[torch.Tensor]) -> torch.Tensor:
    """Several teachers' logits on the same views -> their mean (EDC labels with an ensemble of teachers)."""
    return torch.stack(per_teacher).mean(0)


# A block labels its images for at most this many label epochs: each image is decoded once per block, so the
# decoding falls by this factor, while an epoch is committed only once every block of its group is done (a crash
# relabels at most a group of epochs, and the progress bar moves a group at a time). A block's memory does not
# grow with it: the block holds one teacher batch's images and labels one epoch's rows at a time.
MAX_EPOCHS_PER_BLOCK = 8
BLOCKS_PER_WORKER = 4  # groups no larger than leaves this many blocks per labelling worker, to balance the load


def epochs_per_block(pending_epochs: int, blocks_per_epoch: int, workers: int) -> int:
    """How many label epochs a block groups: as many as ``MAX_EPOCHS_PER_BLOCK``, fewer when there would be
    fewer than ``BLOCKS_PER_WORKER`` blocks per worker. Only the grouping depends on it, never a teacher batch."""
    return max(1, min(MAX_EPOCHS_PER_BLOCK, pending_epochs * blocks_per_epoch // (BLOCKS_PER_WORKER * workers)))


@dataclass(frozen=True)
class BlockPlan:
    """The work of a relabel of ``epochs``, cut into blocks: block ``i`` is a range of whole images for a group of
    up to ``epochs_per_block`` consecutive epochs of the list, group by group (so epochs complete in order). A
    block is a function of its index, so nothing lists them: ImageNet-21K at IPC 50 for 300 epochs is 80,000
    blocks, which Ray Data streams as indices. Every epoch's image ranges are the same whichever other epochs a
    resumed run still has to do and however they are grouped, so its teacher batches (and, to the last bit, its
    logits) are too."""

    epochs: tuple[int, ...]
    num_images: int
    images_per_block: int
    epochs_per_block: int = 1

    @property
    def blocks_per_epoch(self) -> int:
        return -(-self.num_images // self.images_per_block)

    def __len__(self) -> int:
        return -(-len(self.epochs) // self.epochs_per_block) * self.blocks_per_epoch

    def block(self, index: int) -> dict:
        """Block ``index``: {"epochs": its group of epochs, "start": its first image, "stop": one past its last}."""
        assert 0 <= index < len(self), (index, len(self))
        group, position = divmod(index, self.blocks_per_epoch)
        start = position * self.images_per_block
        return {"epochs": list(self.epochs[group * self.epochs_per_block:(group + 1) * self.epochs_per_block]),
                "start": start, "stop": min(start + self.images_per_block, self.num_images)}

    def __iter__(self) -> Iterator[dict]:
        return (self.block(i) for i in range(len(self)))


def relabel_blocks(pending: list[int], num_images: int, views_per_epoch: int, batch_size: int, workers: int
                   ) -> BlockPlan:
    """The blocks of a relabel of the ``pending`` epochs by ``workers`` labelling workers."""
    per_block = images_per_block(num_images, views_per_epoch, batch_size)
    group = epochs_per_block(len(pending), -(-num_images // per_block), workers)
    return BlockPlan(tuple(pending), num_images, per_block, group)


def label_image_block(teachers: list[nn.Module], images_uint8: torch.Tensor, first: int, epochs: list[int], *,
                      ipc: int, k: int, scale: tuple[float, float], hflip: bool, seed: int, rows: int, top_k: int,
                      image_size: int, norm: Normalization, batch_size: int, device: torch.device | str,
                      precision: str = "fp32") -> Iterator[tuple[int, dict[str, np.ndarray]]]:
    """A block's label rows, epoch by epoch: (epoch, columns) for the images ``images_uint8`` (image ids
    ``first``..), decoded once for all ``epochs``; each epoch's rows padded to ``rows`` (``pad_rows``)."""
    ids = list(range(first, first + len(images_uint8)))
    height, width = images_uint8.shape[-2:]
    images_uint8 = to_device(images_uint8, torch.device(device))  # once for all the block's epochs
    for epoch in epochs:
        columns = pad_rows(view_rows(ids, [i // ipc for i in ids], [epoch] * len(ids), height=height, width=width,
                                     k=k, scale=scale, hflip=hflip, seed=seed), rows)
        yield epoch, label_block(teachers, columns, images_uint8, first, top_k=top_k, image_size=image_size,
                                 norm=norm, batch_size=batch_size, device=device, precision=precision)


def pad_rows(columns: dict[str, np.ndarray], rows: int) -> dict[str, np.ndarray]:
    """``columns`` grown to exactly ``rows`` rows by repeating its last row, with a boolean ``pad`` column that
    marks the copies. Every epoch of every relabel block then runs the teacher on batches of the same sizes (a
    batch's size can change a model's last bits, so a short block would label its images differently from a full
    one); the copies are labelled and dropped."""
    n = len(next(iter(columns.values())))
    assert 0 < n <= rows, (n, rows)
    index = np.minimum(np.arange(rows), n - 1)
    return {**{k: v[index] for k, v in columns.items()}, "pad": np.arange(rows) >= n}
