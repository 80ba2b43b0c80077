"""Relabel (FKD style): every image gets E epochs x K views drawn from (seed, image, epoch); the teacher's logits on
each view are stored beside the view's parameters, so the student can replay exactly those views."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from srel_ray.core.normalization import Normalization, from_uint8
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
def teacher_logits(teacher: nn.Module, pixels: torch.Tensor, batch_size: int, device: torch.device | str) -> torch.Tensor:
    """Logits of a frozen teacher on normalised view pixels, in chunks of ``batch_size``."""
    out = [teacher(chunk.to(device)).float().cpu() for chunk in pixels.split(batch_size)]
    return torch.cat(out) if out else torch.empty(0)


def view_rows(images_uint8: torch.Tensor, image_ids: list[int], labels: list[int], epochs: list[int], *, k: int,
              image_size: int, scale: tuple[float, float], hflip: bool, seed: int,
              norm: Normalization) -> dict[str, np.ndarray]:
    """The K views of each (C, H, W) image of ``images_uint8`` in its label epoch, as label-file columns
    (srel_ray.data.sets) plus ``pixels``: the normalised view inputs the teacher labels. All views are rendered in
    one batched call: every output pixel depends only on its own image and box, so the pixels equal rendering one
    image at a time, at a fraction of the cost."""
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
            "pixels": view_pixels(images_uint8.repeat_interleave(k, 0), views, image_size, norm).numpy()}


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
