"""Student epoch order across ranks, that a student epoch learns from hard and soft labels, and its optimizers."""

import math

import pytest
import torch
from torch import nn

from srel_ray.core.normalization import Normalization
from srel_ray.core.seeding import seeded_init
from srel_ray.core.student import EpochLabels, count_correct, shard_order, train_student_epoch, train_teacher_epoch
from srel_ray.core.views import Views
from srel_ray.models import create_model

NORM = Normalization((0.5,), (0.5,))


@pytest.mark.parametrize("num_rows,world", [(10, 1), (10, 3), (12, 4), (7, 8), (5, 2), (1, 3)])
def test_shard_order_covers_all_rows_evenly(num_rows, world):
    shards = [shard_order(num_rows, seed=0, epoch=1, rank=r, world=world) for r in range(world)]
    per_rank = -(-num_rows // world)
    assert all(len(s) == per_rank for s in shards)
    together = torch.cat(shards)
    assert set(together.tolist()) == set(range(num_rows))
    assert together.min() >= 0 and together.max() < num_rows
    if num_rows % world == 0:  # no padding: a true partition
        assert sorted(together.tolist()) == list(range(num_rows))
    else:  # padding repeats no row more than needed
        assert len(together) - num_rows < world * max(1, -(-world // num_rows))


def test_shard_order_deterministic_per_seed_and_epoch():
    a = shard_order(50, seed=3, epoch=2, rank=1, world=2)
    assert torch.equal(a, shard_order(50, seed=3, epoch=2, rank=1, world=2))
    assert not torch.equal(a, shard_order(50, seed=3, epoch=3, rank=1, world=2))
    assert not torch.equal(a, shard_order(50, seed=4, epoch=2, rank=1, world=2))
    # The single-rank order is a permutation, and ranks interleave it.
    full = shard_order(50, seed=3, epoch=2, rank=0, world=1)
    assert sorted(full.tolist()) == list(range(50))
    assert torch.equal(a, full[1::2])


def _toy_set():
    """4 classes of 8x8 greyscale images: a bright 2-row band per class (mirror-symmetric, so flipped views keep
    their class), plus noise; 4 images per class."""
    gen = torch.Generator().manual_seed(0)
    images, labels = [], []
    for c in range(4):
        for _ in range(4):
            img = torch.rand(1, 8, 8, generator=gen) * 0.3
            img[:, 2 * c:2 * c + 2, :] += 0.7
            images.append((img.clamp(0, 1) * 255).round().to(torch.uint8))
            labels.append(c)
    return torch.stack(images), torch.tensor(labels)


def _labels(class_labels, soft):
    n = len(class_labels)
    image_index = torch.arange(n).repeat(2)  # two rows (views) per image
    boxes = torch.tensor([[0.0, 0.0, 8.0, 8.0]]).repeat(2 * n, 1)
    flips = torch.zeros(2 * n, dtype=torch.bool)
    flips[n:] = True
    logits = None
    if soft:
        logits = torch.full((2 * n, 4), -2.0)
        logits[torch.arange(2 * n), class_labels[image_index]] = 3.0
    return EpochLabels(image_index, Views(boxes, flips), logits)


@pytest.mark.parametrize("soft", [False, True])
def test_train_student_epoch_reduces_loss(soft):
    images, class_labels = _toy_set()
    labels = _labels(class_labels, soft)
    with seeded_init(0):
        model = create_model("convnet", num_classes=4, in_channels=1, image_size=8, width=8, depth=2)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    losses = [train_student_epoch(model, optimizer, scheduler, images, class_labels, labels, epoch=e, seed=0,
                                  batch_size=8, temperature=4.0, image_size=8, norm=NORM) for e in range(8)]
    assert all(torch.isfinite(torch.tensor(losses)))
    assert losses[-1] < 0.5 * losses[0], losses
    assert scheduler.last_epoch == 8 * 4  # steps once per batch: 32 rows / 8
    hits = count_correct(model, [(NORM.normalize(images.float() / 255), class_labels)])
    assert hits["n"] == 16 and hits["top1"] >= 12


def test_train_student_epoch_uses_soft_labels():
    """Soft labels that point to the wrong class must teach the wrong class: the logits, not class_labels, count."""
    images, class_labels = _toy_set()
    shifted = (class_labels + 1) % 4
    labels = _labels(shifted, soft=True)
    with seeded_init(1):
        model = create_model("convnet", num_classes=4, in_channels=1, image_size=8, width=8, depth=2)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    for e in range(8):
        train_student_epoch(model, optimizer, scheduler, images, class_labels, labels, epoch=e, seed=0,
                            batch_size=8, temperature=4.0, image_size=8, norm=NORM)
    x = NORM.normalize(images.float() / 255)
    assert count_correct(model, [(x, shifted)])["top1"] >= 12
    assert count_correct(model, [(x, class_labels)])["top1"] <= 4


def _dropout_model():
    with seeded_init(2):
        return nn.Sequential(nn.Flatten(), nn.Dropout(0.5), nn.Linear(64, 4))  # 8x8 greyscale views


def _weights(model):
    return torch.cat([p.detach().flatten() for p in model.parameters()])


def test_dropout_masks_follow_the_seed_not_the_processes_random_state():
    """Dropout draws from torch's global RNG (torchvision's MobileNetV2 and EfficientNets have it): each epoch pins
    it from (seed, epoch, rank), so the same student trains to the same weights whatever the process drew before
    (another student, a resumed run), and the caller's RNG is left as it was."""
    images, class_labels = _toy_set()
    labels = _labels(class_labels, soft=True)

    def student(global_seed, seed=0):
        model = _dropout_model()
        optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
        torch.manual_seed(global_seed)
        before = torch.get_rng_state()
        for e in range(2):
            train_student_epoch(model, optimizer, scheduler, images, class_labels, labels, epoch=e, seed=seed,
                                batch_size=8, temperature=4.0, image_size=8, norm=NORM)
        assert torch.equal(torch.get_rng_state(), before)
        return _weights(model)

    assert torch.equal(student(global_seed=1), student(global_seed=2))
    assert not torch.equal(student(global_seed=1), student(global_seed=1, seed=1))

    def teacher(global_seed):
        model = _dropout_model()
        optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
        torch.manual_seed(global_seed)
        before = torch.get_rng_state()
        batches = [(NORM.normalize(images[i::2].float() / 255), class_labels[i::2]) for i in range(2)]
        train_teacher_epoch(model, optimizer, batches, epoch=0, seed=0, rank=0, augment=False)
        assert torch.equal(torch.get_rng_state(), before)
        return _weights(model)

    assert torch.equal(teacher(global_seed=1), teacher(global_seed=2))


def test_squeeze_augmentation_by_image_size():
    """Below 128 px the light pad-and-crop, bit for bit as before; from 128 px torchvision's RandomResizedCrop +
    flip: crops of random area, resized back to the full side, so pixel values get interpolated."""
    from srel_ray.core.seeding import generator
    from srel_ray.core.student import light_augment, squeeze_augment

    small = torch.rand(4, 3, 32, 32)
    assert torch.equal(squeeze_augment(small, generator(1)), light_augment(small, generator(1), pad=4))
    large = torch.arange(128.0).repeat(2, 3, 128, 1)  # column index as the pixel value
    out = squeeze_augment(large, generator(1))
    assert out.shape == large.shape and not torch.equal(out, large)
    spans = out[:, 0, 0].amax(dim=1) - out[:, 0, 0].amin(dim=1)
    assert bool((spans < 127.5).all())  # each crop covers only part of the columns ...
    assert torch.equal(out, squeeze_augment(large, generator(1)))  # ... drawn from the generator


def test_image_shares_tile_the_set_and_one_rank_keeps_the_shared_order():
    from srel_ray.core.student import image_share, shard_order, share_order

    shares = [image_share(10, rank, 3) for rank in range(3)]
    assert [list(s) for s in shares] == [[0, 1, 2], [3, 4, 5], [6, 7, 8, 9]]
    # One worker holds the whole set: its order is the shared permutation's, so results do not change.
    assert torch.equal(share_order(40, 40, seed=1, epoch=2, rank=0, world=1), shard_order(40, 1, 2, 0, 1))
    # Several: each rank permutes its own rows, wrapped to the same count (equal steps under DDP).
    orders = [share_order(len(s) * 4, 16, seed=1, epoch=2, rank=r, world=3) for r, s in enumerate(shares)]
    assert [len(o) for o in orders] == [16, 16, 16]
    assert sorted(orders[2].tolist()) == list(range(16)) and sorted(set(orders[0].tolist())) == list(range(12))


def test_student_optimizer_by_name():
    """evaluate.optimizer: AdamW (the default, as before) or SGD with evaluate.momentum; both with
    evaluate.weight_decay and the same per-batch cosine schedule."""
    from srel_ray.config import EvaluateConfig
    from srel_ray.core.student import student_optimizer

    model = torch.nn.Linear(3, 2)
    adamw, _, batch = student_optimizer(model, EvaluateConfig(epochs=2, batch_size=4), rows_per_epoch=10)
    assert type(adamw) is torch.optim.AdamW and batch == 4
    assert adamw.defaults["lr"] == 1e-3 and adamw.defaults["weight_decay"] == 0.01
    e = EvaluateConfig(optimizer="sgd", lr=0.2, momentum=0.9, weight_decay=1e-4, epochs=2, batch_size=4)
    sgd, scheduler, _ = student_optimizer(model, e, rows_per_epoch=10)
    assert type(sgd) is torch.optim.SGD
    assert (sgd.defaults["lr"], sgd.defaults["momentum"], sgd.defaults["weight_decay"]) == (0.2, 0.9, 1e-4)
    assert not sgd.defaults["nesterov"] and scheduler.T_max == 2 * 3  # 3 batches of 4 in 10 rows, 2 epochs


def test_sgd_student_steps_by_hand():
    """Two steps of the SGD student on the gradient of sum(w): buffer b1 = 1 + wd w0, w1 = w0 - lr b1; then
    b2 = m b1 + 1 + wd w1, w2 = w1 - lr' b2 with lr' the cosine schedule's after one of its steps."""
    from srel_ray.config import EvaluateConfig
    from srel_ray.core.student import student_optimizer

    w = torch.nn.Parameter(torch.tensor([0.5, -2.0]))
    e = EvaluateConfig(optimizer="sgd", lr=0.2, momentum=0.9, weight_decay=0.1, epochs=1, batch_size=1)
    optimizer, scheduler, _ = student_optimizer(torch.nn.ParameterList([w]), e, rows_per_epoch=4)
    w0 = w.detach().clone()
    expected = []
    b1 = 1 + 0.1 * w0
    expected.append(w0 - 0.2 * b1)
    lr1 = 0.2 * 0.5 * (1 + math.cos(math.pi / 4))  # cosine over 4 steps, after step 1
    expected.append(expected[0] - lr1 * (0.9 * b1 + 1 + 0.1 * expected[0]))
    for want in expected:
        optimizer.zero_grad()
        w.sum().backward()
        optimizer.step()
        scheduler.step()
        assert torch.allclose(w.detach(), want, atol=1e-6)
