"""Views of an image: a RandomResizedCrop box plus a flip flag, sampled from a generator and rendered exactly.

Relabel and the student share ``render_views``, so the student replays bit-for-bit the views the teacher labelled.
Two box samplers: ``sample_boxes`` draws image by image as torchvision does (relabel's views and RDED's crops use
it, so their streams are what they always were); ``sample_boxes_batched`` draws the whole batch's ten tries in a
few tensor ops, the recovery step's sampler (no per-image Python, nothing that waits for a GPU).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

RATIO = (3.0 / 4.0, 4.0 / 3.0)


@dataclass(frozen=True)
class Views:
    """A batch of view parameters: boxes as (top, left, height, width) in source pixels, and flip flags."""

    boxes: torch.Tensor  # (N, 4) float32
    flips: torch.Tensor  # (N,) bool

    def __len__(self) -> int:
        return self.boxes.shape[0]


def sample_boxes(n: int, height: int, width: int, scale: tuple[float, float], gen: torch.Generator,
                 ratio: tuple[float, float] = RATIO) -> torch.Tensor:
    """RandomResizedCrop boxes, as torchvision samples them (10 tries, then a centre crop), from ``gen``."""
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    boxes = torch.empty(n, 4)
    for i in range(n):
        boxes[i] = _one_box(height, width, area, scale, log_ratio, gen)
    return boxes


def _one_box(height, width, area, scale, log_ratio, gen) -> torch.Tensor:
    for _ in range(10):
        target = area * (scale[0] + (scale[1] - scale[0]) * torch.rand(1, generator=gen).item())
        aspect = math.exp(log_ratio[0] + (log_ratio[1] - log_ratio[0]) * torch.rand(1, generator=gen).item())
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = int(torch.randint(0, height - h + 1, (1,), generator=gen))
            left = int(torch.randint(0, width - w + 1, (1,), generator=gen))
            return torch.tensor([top, left, h, w], dtype=torch.float32)
    side = min(height, width)
    return torch.tensor([(height - side) // 2, (width - side) // 2, side, side], dtype=torch.float32)


def sample_boxes_batched(n: int, height: int, width: int, scale: tuple[float, float], gen: torch.Generator,
                         ratio: tuple[float, float] = RATIO, tries: int = 10) -> torch.Tensor:
    """RandomResizedCrop boxes for ``n`` images at once, from fixed-size draws of ``gen`` (a CPU generator, so the
    stream is the same on every device): ``tries`` (area, log aspect) pairs per image, the first try that fits is
    kept (a centre crop when none does, as torchvision), then top and left uniform over the positions that fit.

    Draws, in order: rand(n, tries) area fractions, rand(n, tries) log aspects, rand(n, 2) positions. The same
    distribution as ``sample_boxes`` (which draws per try and stops at the first fit), not the same numbers."""
    area = height * width
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    target = area * (scale[0] + (scale[1] - scale[0]) * torch.rand(n, tries, generator=gen, dtype=torch.float64))
    aspect = torch.exp(log_lo + (log_hi - log_lo) * torch.rand(n, tries, generator=gen, dtype=torch.float64))
    position = torch.rand(n, 2, generator=gen, dtype=torch.float64)
    w = torch.round(torch.sqrt(target * aspect))
    h = torch.round(torch.sqrt(target / aspect))
    fits = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    first = fits.to(torch.int8).argmax(1, keepdim=True)  # the first try that fits (0 when none does)
    any_fit = fits.any(1)
    side = min(height, width)
    h = torch.where(any_fit, h.gather(1, first)[:, 0], float(side))
    w = torch.where(any_fit, w.gather(1, first)[:, 0], float(side))
    # floor(u * (count)) is uniform over 0..count-1 (u < 1); the centre crop takes the centre position.
    top = torch.where(any_fit, torch.floor(position[:, 0] * (height - h + 1)), float((height - side) // 2))
    left = torch.where(any_fit, torch.floor(position[:, 1] * (width - w + 1)), float((width - side) // 2))
    return torch.stack([top, left, h, w], 1).float()


def sample_views_batched(n: int, height: int, width: int, scale: tuple[float, float], gen: torch.Generator,
                         hflip: bool = True) -> Views:
    """``sample_boxes_batched`` boxes, then flip flags (rand(n) always drawn, so ``hflip`` never shifts the stream)."""
    boxes = sample_boxes_batched(n, height, width, scale, gen)
    flips = (torch.rand(n, generator=gen) < 0.5) & hflip
    return Views(boxes, flips)


def sample_views(n: int, height: int, width: int, scale: tuple[float, float], gen: torch.Generator,
                 hflip: bool = True) -> Views:
    """Boxes, and flip flags (always drawn, so ``hflip`` never shifts the stream; all False when not allowed)."""
    boxes = sample_boxes(n, height, width, scale, gen)
    flips = (torch.rand(n, generator=gen) < 0.5) & hflip
    return Views(boxes, flips)


def crop_resize(images: torch.Tensor, boxes: torch.Tensor, size: int) -> torch.Tensor:
    """Crop each image to its box and resize to ``size`` (bilinear, differentiable, one batched grid_sample)."""
    n, _, height, width = images.shape
    # One copy of the boxes to the images' device (none when they are there already), then device-side math only.
    top, left, h, w = boxes.to(images.device, images.dtype, non_blocking=True).unbind(1)
    zero = torch.zeros_like(w)
    # Affine map from output coords in [-1, 1] to input coords in [-1, 1] (align_corners=False convention).
    theta = torch.stack([torch.stack([w / width, zero, (2 * left + w) / width - 1], 1),
                         torch.stack([zero, h / height, (2 * top + h) / height - 1], 1)], 1)
    grid = F.affine_grid(theta, [n, images.shape[1], size, size], align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)


def flip(images: torch.Tensor, flips: torch.Tensor) -> torch.Tensor:
    return torch.where(flips.to(images.device, non_blocking=True).view(-1, 1, 1, 1), images.flip(-1), images)


def render_views(images: torch.Tensor, views: Views, size: int) -> torch.Tensor:
    """The pixels of each view: crop to the box, resize to ``size``, flip where flagged."""
    return flip(crop_resize(images, views.boxes, size), views.flips)


def random_roll(images: torch.Tensor, jitter: int, gen: torch.Generator) -> torch.Tensor:
    """Shift the whole batch by up to ``jitter`` pixels in each direction, wrapping around (SRe2L's jitter)."""
    return roll(images, roll_shift(jitter, gen))


def roll_shift(jitter: int, gen: torch.Generator) -> tuple[int, int]:
    """The (dy, dx) of one random roll; draws nothing when ``jitter`` is 0."""
    if jitter == 0:
        return 0, 0
    dy, dx = (int(v) for v in torch.randint(-jitter, jitter + 1, (2,), generator=gen))
    return dy, dx


def roll(images: torch.Tensor, shift: tuple[int, int]) -> torch.Tensor:
    return images if shift == (0, 0) else torch.roll(images, shifts=shift, dims=(2, 3))
