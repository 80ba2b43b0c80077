"""Relabel (FKD style): every image gets E epochs x K views drawn from (seed, image, epoch); the teacher's logits on
each view are stored beside the view's parameters, so the student can replay exactly those views.

Rows travel as the view's parameters plus the uint8 source image; ``label_views`` renders the views where the
teacher runs (on its GPU when it has one), a teacher batch at a time."""

from __future__ import annotations

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


def _teacher_chunks(teachers: list[nn.Module], images_uint8: torch.Tensor, views: Views, *, image_size: int,
                    norm: Normalization, batch_size: int, device: torch.device, precision: str):
    """The teachers' mean logits, one teacher batch at a time, left on ``device``."""
    pin = device.type == "cuda"  # page-locked rows copy while the previous batch still runs
    for start in range(0, len(images_uint8), batch_size):
        rows = slice(start, start + batch_size)
        chunk = images_uint8[rows].pin_memory() if pin else images_uint8[rows]
        boxes = views.boxes[rows].pin_memory() if pin else views.boxes[rows]
        chunk_views = Views(boxes.to(device, non_blocking=True), views.flips[rows].to(device, non_blocking=True))
        pixels = to_input(view_pixels(chunk.to(device, non_blocking=True), chunk_views, image_size, norm), device)
        with autocast(precision, device):
            per_teacher = [t(pixels).float() for t in teachers]
        yield per_teacher[0] if len(per_teacher) == 1 else mean_logits(per_teacher)


@torch.no_grad()
def label_views(teachers: list[nn.Module], images_uint8: torch.Tensor, views: Views, *, image_size: int,
                norm: Normalization, batch_size: int, device: torch.device | str,
                precision: str = "fp32") -> torch.Tensor:
    """The teachers' mean logits on each row's view (row r: view ``views[r]`` of image ``images_uint8[r]``),
    rendered on ``device`` a batch at a time from the uint8 images; one copy back at the end. At fp32 the values
    equal ``teacher_logits`` on ``view_pixels`` (every view pixel depends on its own image and box only)."""
    out = list(_teacher_chunks(teachers, images_uint8, views, image_size=image_size, norm=norm,
                               batch_size=batch_size, device=torch.device(device), precision=precision))
    return torch.cat(out).cpu() if out else torch.empty(0)


@torch.no_grad()
def label_views_topk(teachers: list[nn.Module], images_uint8: torch.Tensor, views: Views, k: int, *,
                     image_size: int, norm: Normalization, batch_size: int, device: torch.device | str,
                     precision: str = "fp32") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``label_views`` kept as top-k (srel_ray.core.soft_labels.compress_topk), compressed on ``device`` batch
    by batch: only k + 1 numbers per view ever leave it."""
    parts = [compress_topk(chunk, k) for chunk in _teacher_chunks(
        teachers, images_uint8, views, image_size=image_size, norm=norm, batch_size=batch_size,
        device=torch.device(device), precision=precision)]
    return tuple(torch.cat([p[i] for p in parts]).cpu() for i in range(3))


def label_block(teachers: list[nn.Module], columns: dict[str, np.ndarray], *, top_k: int, image_size: int,
                norm: Normalization, batch_size: int, device: torch.device | str,
                precision: str = "fp32") -> dict[str, np.ndarray]:
    """One relabel block (``view_rows`` columns, padded by ``pad_rows``): the teacher batch runs on every row,
    padding included (so the batch is the same whoever runs it), then the padding is dropped and the uint8
    images replaced by the label columns: ``logits`` (R, C), or with ``top_k`` ``topk_index``, ``topk_logits``
    and ``rest_logsumexp``."""
    keep = ~np.asarray(columns["pad"])
    images = torch.from_numpy(np.array(columns["image"]))  # Ray Data batches are read-only views
    rows = {k: np.asarray(v) for k, v in columns.items() if k not in ("image", "pad")}
    args = dict(image_size=image_size, norm=norm, batch_size=batch_size, device=device, precision=precision)
    if top_k:
        index, values, rest = label_views_topk(teachers, images, row_views(rows), top_k, **args)
        rows.update(topk_index=index.numpy(), topk_logits=values.numpy(), rest_logsumexp=rest.numpy())
    else:
        rows["logits"] = label_views(teachers, images, row_views(rows), **args).numpy()
    return {k: v[keep] for k, v in rows.items()}


def images_per_block(num_images: int, views_per_epoch: int, batch_size: int) -> int:
    """Images per relabel block: one teacher batch of views per block (so work spreads over every labelling
    actor), blocks of an epoch as equal as possible (padding the short one costs less than one image a block)."""
    cap = max(1, batch_size // views_per_epoch)
    return -(-num_images // -(-num_images // cap))


def view_rows(images_uint8: torch.Tensor, image_ids: list[int], labels: list[int], epochs: list[int], *, k: int,
              scale: tuple[float, float], hflip: bool, seed: int) -> dict[str, np.ndarray]:
    """The K views of each (C, H, W) image of ``images_uint8`` in its label epoch, as label-file columns
    (srel_ray.storage.sets) plus ``image``: each row's uint8 source image (a quarter of the bytes of float32 view
    pixels), which ``label_views`` renders where the teacher runs."""
    height, width = images_uint8.shape[-2:]
    per_image = [views_for(seed, i, e, k, height, width, scale, hflip) for i, e in zip(image_ids, epochs)]
    views = Views(torch.cat([v.boxes for v in per_image]), torch.cat([v.flips for v in per_image]))
    box = views.boxes.numpy().astype(np.int32)
    return {"image_id": np.repeat(np.asarray(image_ids, np.int32), k),
            "label": np.repeat(np.asarray(labels, np.int32), k),
            "epoch": np.repeat(np.asarray(epochs, np.int32), k),
            "view": np.tile(np.arange(k, dtype=np.int32), len(image_ids)),
            "top": box[:, 0], "left": box[:, 1], "height": box[:, 2], "width": box[:, 3],
            "flip": views.flips.numpy(),
            "image": images_uint8.repeat_interleave(k, 0).numpy()}


def row_views(columns: dict[str, np.ndarray]) -> Views:
    """The views of label-file rows (their top, left, height, width and flip columns)."""
    boxes = np.stack([columns["top"], columns["left"], columns["height"], columns["width"]], 1)
    return Views(torch.from_numpy(boxes.astype(np.float32)), torch.from_numpy(np.asarray(columns["flip"], bool)))


def mean_logits(per_teacher: list[torch.Tensor]) -> torch.Tensor:
    """Several teachers' logits on the same views -> their mean (EDC labels with an ensemble of teachers)."""
    return torch.stack(per_teacher).mean(0)


def epoch_blocks(epochs: list[int], num_images: int, images_per_block: int) -> list[dict]:
    """The work of ``epochs`` cut into blocks of whole images that never straddle two epochs, so an epoch's teacher
    batches (and, to the last bit, its logits) are the same whichever other epochs a resumed run still has to do."""
    return [{"epoch": e, "start": s, "stop": min(s + images_per_block, num_images)}
            for e in epochs for s in range(0, num_images, images_per_block)]


def pad_rows(columns: dict[str, np.ndarray], rows: int) -> dict[str, np.ndarray]:
    """``columns`` grown to exactly ``rows`` rows by repeating its last row, with a boolean ``pad`` column that
    marks the copies. Every relabel block then holds the same number of rows, so batches of that size follow the
    blocks exactly (Ray Data needs a batch size for GPU actors, and one that bundles a short block with the next
    would mix two epochs in one teacher batch); the copies are labelled and dropped."""
    n = len(next(iter(columns.values())))
    assert 0 < n <= rows, (n, rows)
    index = np.minimum(np.arange(rows), n - 1)
    return {**{k: v[index] for k, v in columns.items()}, "pad": np.arange(rows) >= n}
