"""Per-class BatchNorm statistics of the real data, and the targets EDC's soft category-aware matching uses.

For every BN layer l and class c, over all pixels of all real training images of class c passed through the frozen
teacher: mu_{l,c} = E[a_l] and sigma^2_{l,c} = E[a_l^2] - E[a_l]^2 per channel (a_l: the BN layer's input). They
are accumulated as sums in float64 (sum a, sum a^2, pixel count), so batches can be added in any grouping.

A recovery batch whose targets hold class c with frequency p_c is matched against the statistics of that class
mixture (exactly what its batch statistics would be on real images of those classes):

    mu*_l = sum_c p_c mu_{l,c},    sigma^2*_l = sum_c p_c (sigma^2_{l,c} + mu_{l,c}^2) - (mu*_l)^2
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from srel_ray.errors import DataError


def bn_layers(model: nn.Module) -> list[nn.Module]:
    """The BN layers in module order: the order BNStatsMatcher uses."""
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


@dataclass
class ClassSums:
    """Sufficient statistics of some classes: per layer, per class row, sum a and sum a^2 (float64), pixels."""

    classes: torch.Tensor  # (K,) int64 class indices, one per row
    sums: list[torch.Tensor]  # per layer (K, channels_l) float64
    squares: list[torch.Tensor]  # per layer (K, channels_l) float64
    pixels: list[torch.Tensor]  # per layer (K,) float64: images * H_l * W_l

    def stats(self) -> "ClassStats":
        mean, var = [], []
        for s, q, n in zip(self.sums, self.squares, self.pixels):  # a layer at a time: its float64 temporaries only
            m = s / n[:, None]
            v = (q / n[:, None]).sub_(m * m).clamp_min_(0)
            mean.append(m.float())
            var.append(v.float())
        return ClassStats(self.classes.tolist(), mean, var)


@torch.no_grad()
def batch_sums(model: nn.Module, x: torch.Tensor, labels: torch.Tensor) -> ClassSums:
    """One forward pass of normalised images ``x`` through the frozen ``model``: the sums of the classes present."""
    classes, row = torch.unique(labels.cpu(), return_inverse=True)
    layers = bn_layers(model)
    sums, squares, pixels = [None] * len(layers), [None] * len(layers), [None] * len(layers)

    def hook(index: int):
        def record(module, inputs, output):
            a = inputs[0].double()  # (N, C, H, W)
            per_image = a.sum(dim=(2, 3)).cpu()
            per_image_sq = (a * a).sum(dim=(2, 3)).cpu()
            k, channels = len(classes), a.shape[1]
            sums[index] = torch.zeros(k, channels, dtype=torch.float64).index_add_(0, row, per_image)
            squares[index] = torch.zeros(k, channels, dtype=torch.float64).index_add_(0, row, per_image_sq)
            images = torch.zeros(k, dtype=torch.float64).index_add_(0, row, torch.ones(len(row), dtype=torch.float64))
            pixels[index] = images * a.shape[2] * a.shape[3]

        return record

    handles = [layer.register_forward_hook(hook(i)) for i, layer in enumerate(layers)]
    try:
        model(x)
    finally:
        for h in handles:
            h.remove()
    return ClassSums(classes, sums, squares, pixels)


class ClassStatsAccumulator:
    """Adds up ``ClassSums`` of any batches (in any order, from any worker) for the classes ``classes`` of
    ``num_classes`` (all of them by default). A part's rows of other classes are left out, so several accumulators
    owning disjoint class ranges can each be given every part and hold only their share of the sums."""

    def __init__(self, num_classes: int, classes: range | None = None):
        self.num_classes = num_classes
        self.classes = range(num_classes) if classes is None else classes
        assert self.classes.step == 1 and 0 <= self.classes.start <= self.classes.stop <= num_classes, classes
        self.total: ClassSums | None = None

    def add(self, part: ClassSums) -> None:
        first, count = self.classes.start, len(self.classes)
        if self.total is None:
            zeros = [torch.zeros(count, s.shape[1], dtype=torch.float64) for s in part.sums]
            self.total = ClassSums(torch.arange(first, self.classes.stop), zeros, [z.clone() for z in zeros],
                                   [torch.zeros(count, dtype=torch.float64) for _ in part.sums])
        mine = (part.classes >= first) & (part.classes < self.classes.stop)
        if not mine.any():
            return
        t, idx = self.total, part.classes[mine] - first
        for layer in range(len(t.sums)):
            t.sums[layer].index_add_(0, idx, part.sums[layer][mine])
            t.squares[layer].index_add_(0, idx, part.squares[layer][mine])
            t.pixels[layer].index_add_(0, idx, part.pixels[layer][mine])

    def update(self, model: nn.Module, x: torch.Tensor, labels: torch.Tensor) -> None:
        self.add(batch_sums(model, x, labels))

    def missing(self) -> list[int]:
        """Classes of this accumulator no image was seen of (their statistics would be undefined)."""
        if self.total is None:
            return list(self.classes)
        return (torch.nonzero(self.total.pixels[0] == 0).flatten() + self.classes.start).tolist()

    def result(self) -> "ClassStats":
        assert self.total is not None and not self.missing(), f"no images seen of classes {self.missing()[:10]}"
        return self.total.stats()


def check_every_class_seen(missing: list[int]) -> None:
    """A DataError naming the classes no training image was read of: their statistics would be undefined."""
    if missing:
        raise DataError(f"no readable training images of classes {missing[:10]}: their statistics are undefined")


def bytes_per_class(channels: list[int]) -> int:
    """What an accumulator holds per class for BN layers of these channel counts: float64 sums, squares, pixels."""
    return sum(16 * c + 8 for c in channels)


def class_shards(num_classes: int, class_bytes: int, shard_bytes: int) -> list[range]:
    """Contiguous class ranges of at most ``shard_bytes`` of sums each (at least one class), as even as can be."""
    per_shard = max(1, shard_bytes // class_bytes)
    count = -(-num_classes // per_shard)
    bounds = [num_classes * i // count for i in range(count + 1)]
    return [range(a, b) for a, b in zip(bounds, bounds[1:])]


@dataclass
class ClassStats:
    """mu_{l,c} and sigma^2_{l,c} of some classes: per layer, (len(classes), channels_l) float32."""

    classes: list[int]
    mean: list[torch.Tensor]
    var: list[torch.Tensor]

    def mixture(self, targets: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per layer (mu*, sigma^2*) of the class mixture of ``targets`` (class index per image of a batch)."""
        row_of = {c: i for i, c in enumerate(self.classes)}
        counts = torch.bincount(torch.tensor([row_of[int(c)] for c in targets.cpu()]), minlength=len(self.classes))
        p = (counts.double() / len(targets))[:, None]  # p_c
        out = []
        for mean, var in zip(self.mean, self.var):
            mu = (p * mean.double()).sum(0)
            second = (p * (var.double() + mean.double() ** 2)).sum(0)
            out.append((mu.float(), (second - mu * mu).clamp_min(0).float()))
        return out
