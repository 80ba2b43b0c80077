"""Class-incremental learning, GDumb-style (the SRe2L paper's section 3.7), as plain tensors.

The classes arrive in ``steps`` groups, in an order drawn from a seeded generator. After group k has arrived, a
student is trained from scratch on the memory of every class seen so far (the IPC images of each, from a condensed
or a random-real set) and tested on the test images of those classes. Its classifier has one output per seen class,
in ascending class order (GDumb's output mask: no unseen class can be predicted), and its soft labels are the
teacher's logits of the seen classes, so the softmax the student matches spreads over the seen classes only.

A step's student trains on the set's stored views of the memory's images, by the evaluate stage's loop and
protocol: ``memory_images`` are the images it reads, ``restrict_labels`` turns a set's label epoch into the
memory's, ``restrict_batches`` keeps the test images of the seen classes.
"""

from __future__ import annotations

from typing import Iterable, Iterator, Sequence

import torch

from srel_ray.core.seeding import STREAM_CLASS_ORDER, generator
from srel_ray.core.student import EpochLabels
from srel_ray.core.views import Views


def class_order(num_classes: int, seed: int) -> list[int]:
    """The order in which the classes arrive: a permutation drawn from (seed, STREAM_CLASS_ORDER)."""
    return torch.randperm(num_classes, generator=generator(seed, STREAM_CLASS_ORDER)).tolist()


def class_steps(order: Sequence[int], steps: int) -> list[list[int]]:
    """``order`` cut into ``steps`` consecutive groups whose sizes differ by at most one (10 classes in 4 steps:
    2, 3, 2, 3): every class arrives once, at one step."""
    n = len(order)
    assert 1 <= steps <= n, f"{steps} steps for {n} classes: each step needs at least one new class"
    return [list(order[s * n // steps:(s + 1) * n // steps]) for s in range(steps)]


def seen_classes(groups: Sequence[Sequence[int]], step: int) -> list[int]:
    """The classes seen once the first ``step`` groups (1-based) have arrived, ascending: the memory's classes, in
    the order of its student's outputs."""
    assert 1 <= step <= len(groups), f"step {step} of {len(groups)}"
    return sorted(c for group in groups[:step] for c in group)


def memory_images(classes: Sequence[int], ipc: int) -> list[tuple[int, int]]:
    """(class, index within class) of the memory's images, in memory order: image ``m`` of the memory is image
    ``m % ipc`` of class ``classes[m // ipc]`` of the set."""
    return [(c, i) for c in classes for i in range(ipc)]


def _positions(classes: Sequence[int], size: int) -> torch.Tensor:
    """A lookup: class index -> its position in ``classes``, -1 for the classes not in it."""
    where = torch.full((size,), -1, dtype=torch.int64)
    where[torch.as_tensor(list(classes), dtype=torch.int64)] = torch.arange(len(classes))
    return where


def restrict_labels(labels: EpochLabels, classes: Sequence[int], ipc: int, images: range | None = None
                    ) -> EpochLabels:
    """A set's label epoch as the memory of ``classes`` replays it: the rows of the memory's images, each pointing
    at its image's memory index (``memory_images``), with the logits of ``classes`` alone (stored logits: those
    columns, as stored; a top-k epoch stays compressed and is expanded a batch at a time, then cut to those
    columns). ``images``: only the rows of these memory indices (a training worker's share); their
    ``image_index`` still counts from the memory's first image."""
    assert labels.columns is None, "a memory's labels are cut from a set's"
    set_classes = labels.image_index // ipc
    where = _positions(classes, max(int(set_classes.max()) + 1, max(classes) + 1))[set_classes]
    memory_index = where * ipc + labels.image_index % ipc
    keep = where >= 0
    if images is not None:
        keep &= (memory_index >= images.start) & (memory_index < images.stop)
    rows = keep.nonzero().squeeze(1)
    out = EpochLabels(memory_index[rows], Views(labels.views.boxes[rows], labels.views.flips[rows]))
    columns = torch.as_tensor(list(classes))
    if labels.logits is not None:
        out.logits = labels.logits[rows][:, columns]
    elif labels.topk is not None:
        index, values, rest = labels.topk
        out.topk, out.num_classes, out.columns = (index[rows], values[rows], rest[rows]), labels.num_classes, columns
    return out


def restrict_batches(batches: Iterable[tuple[torch.Tensor, torch.Tensor]], classes: Sequence[int],
                     num_classes: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """The (images, labels) of ``classes`` from each batch, labelled by their position in ``classes`` (the
    student's output index); batches left empty are dropped."""
    where = _positions(classes, num_classes)
    for x, y in batches:
        position = where[y.long().cpu()]
        keep = position >= 0
        if bool(keep.any()):
            yield x[keep.to(x.device)], position[keep].to(y.device)
