"""CutMix in the student: the boxes and pairings it draws, the mixed pixels and targets (against hand
computations), and its place in a student epoch (seeded, and nothing drawn or changed when it is off)."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from srel_ray.core.cutmix import CutMix, cutmix_images, cutmix_rng, draw_cutmix, mixed_soft_targets, student_loss
from srel_ray.core.relabel import view_pixels
from srel_ray.core.seeding import seeded_init
from srel_ray.core.student import shard_order, stretched_cosine, train_student_epoch
from srel_ray.core.views import Views
from srel_ray.models import create_model

from .test_student_core import NORM, _labels, _toy_set


def test_draws_follow_the_reference_box_rule():
    """u, lam ~ Beta, the centre (row, col), the permutation, in that order; a box of side int(size * sqrt(1 -
    lam)) around the centre, clipped to the view (the reference's rand_bbox); keep = 1 - box area / view area."""
    size, n, beta = 16, 6, 1.0
    rng, by_hand = np.random.default_rng(7), np.random.default_rng(7)
    clipped = 0
    for _ in range(200):
        mix = draw_cutmix(rng, n, size, 1.0, beta)
        assert by_hand.random() < 1.0
        lam = by_hand.beta(beta, beta)
        half = int(size * math.sqrt(1.0 - lam)) // 2
        row, col = by_hand.integers(size), by_hand.integers(size)
        box = (max(row - half, 0), max(col - half, 0), min(row + half, size), min(col + half, size))
        assert mix.box == box
        assert mix.keep == pytest.approx(1 - (box[2] - box[0]) * (box[3] - box[1]) / size ** 2, abs=1e-12)
        assert mix.partner.tolist() == by_hand.permutation(n).tolist()
        clipped += box != (row - half, col - half, row + half, col + half)
    assert 0 < clipped < 200  # the draws covered boxes inside the view and boxes cut by its edges


def test_probability_decides_which_batches_mix():
    rng = np.random.default_rng(0)
    state = rng.bit_generator.state
    assert draw_cutmix(rng, 4, 8, 0.0, 1.0) is None
    assert rng.bit_generator.state == state  # off: nothing is drawn
    always = [draw_cutmix(np.random.default_rng(s), 4, 8, 1.0, 1.0) for s in range(20)]
    assert all(m is not None for m in always)
    rng = np.random.default_rng(1)
    mixed = sum(draw_cutmix(rng, 4, 8, 0.3, 1.0) is not None for _ in range(2000))
    assert 500 < mixed < 700  # 600 expected


def test_epoch_generator_is_keyed_by_seed_epoch_and_rank():
    first = cutmix_rng(0, 3, 1).random(4)
    assert np.array_equal(first, cutmix_rng(0, 3, 1).random(4))
    for other in (cutmix_rng(1, 3, 1), cutmix_rng(0, 4, 1), cutmix_rng(0, 3, 0)):
        assert not np.array_equal(first, other.random(4))


def test_mixed_pixels_by_hand():
    x = torch.arange(3 * 1 * 4 * 4, dtype=torch.float32).view(3, 1, 4, 4)
    mix = CutMix(torch.tensor([2, 0, 1]), (1, 0, 3, 2), keep=0.75)
    out = cutmix_images(x, mix)
    for i, j in enumerate([2, 0, 1]):
        for r in range(4):
            for c in range(4):
                inside = 1 <= r < 3 and 0 <= c < 2
                assert out[i, 0, r, c] == x[j if inside else i, 0, r, c]
    assert torch.equal(x, torch.arange(48, dtype=torch.float32).view(3, 1, 4, 4))  # the input is left alone


def test_mixed_soft_targets_and_loss_by_hand():
    t = 2.0
    z = torch.tensor([[2.0, 0.0, -2.0], [0.0, 4.0, 0.0]])
    mix = CutMix(torch.tensor([1, 0]), (0, 0, 1, 1), keep=0.75)
    soft = [[math.exp(v / t) / sum(math.exp(w / t) for w in row) for v in row] for row in z.tolist()]
    expected = [[0.75 * a + 0.25 * b for a, b in zip(soft[0], soft[1])],
                [0.75 * b + 0.25 * a for a, b in zip(soft[0], soft[1])]]
    p = mixed_soft_targets(z, mix, t)
    assert p.flatten().tolist() == pytest.approx([v for row in expected for v in row], abs=1e-6)
    out = torch.tensor([[1.0, 1.0, 0.0], [0.5, -1.0, 2.0]])
    q = [[math.exp(v / t) / sum(math.exp(w / t) for w in row) for v in row] for row in out.tolist()]
    kl = sum(pi * math.log(pi / qi) for prow, qrow in zip(expected, q) for pi, qi in zip(prow, qrow)) / 2
    assert float(student_loss(out, z, hard=False, temperature=t, mix=mix)) == pytest.approx(kl * t * t, rel=1e-5)
    # Hard labels: each view's cross-entropy to its own class and its partner's, in the shares of their areas.
    y = torch.tensor([0, 2])
    ce = [[-math.log(v) for v in row] for row in F.softmax(out, 1).tolist()]
    hard = 0.75 * (ce[0][0] + ce[1][2]) / 2 + 0.25 * (ce[0][2] + ce[1][0]) / 2
    assert float(student_loss(out, y, hard=True, temperature=t, mix=mix)) == pytest.approx(hard, rel=1e-5)


def test_without_a_mix_the_loss_is_the_plain_one():
    out, z, y = torch.randn(5, 4), torch.randn(5, 4), torch.tensor([0, 1, 2, 3, 0])
    whole = CutMix(torch.arange(5), (0, 0, 0, 0), keep=1.0)  # an empty box: every view is its own
    assert torch.allclose(student_loss(out, z, hard=False, temperature=4.0, mix=whole),
                          student_loss(out, z, hard=False, temperature=4.0))
    assert torch.allclose(student_loss(out, y, hard=True, temperature=4.0, mix=whole), F.cross_entropy(out, y))


def _student():
    with seeded_init(0):
        return create_model("convnet", num_classes=4, in_channels=1, image_size=8, width=8, depth=2)


def _epoch(model, labels, lr=0.1, **cutmix):
    images, class_labels = _toy_set()
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    return train_student_epoch(model, optimizer, stretched_cosine(optimizer, 8), images, class_labels, labels,
                               epoch=2, seed=5, batch_size=8, temperature=4.0, image_size=8, norm=NORM, **cutmix)


@pytest.mark.parametrize("soft", [True, False])
def test_student_epoch_with_cutmix_is_seeded_and_off_by_default(soft):
    labels = _labels(_toy_set()[1], soft=soft)
    plain, off, mixed, again = _student(), _student(), _student(), _student()
    _epoch(plain, labels)
    _epoch(off, labels, cutmix_prob=0.0, cutmix_beta=0.3)
    _epoch(mixed, labels, cutmix_prob=1.0, cutmix_beta=1.0)
    _epoch(again, labels, cutmix_prob=1.0, cutmix_beta=1.0)
    weights = [m.state_dict()["classifier.weight"] for m in (plain, off, mixed, again)]
    assert torch.equal(weights[0], weights[1])  # off: bit for bit the student without CutMix
    assert torch.equal(weights[2], weights[3])  # on: the same mixes from the same seed
    assert not torch.equal(weights[0], weights[2])


def test_student_epoch_trains_on_the_drawn_mix():
    """One batch and a frozen learning rate: the epoch's loss is the loss of the mix its (seed, epoch, rank)
    generator draws, on the stored views' pixels and targets."""
    images, class_labels = _toy_set()
    labels = _labels(class_labels, soft=True)
    model = _student()
    rows = shard_order(len(labels.image_index), 5, 2, 0, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    loss = train_student_epoch(model, optimizer, stretched_cosine(optimizer, 1), images, class_labels, labels,
                               epoch=2, seed=5, batch_size=len(rows), temperature=4.0, image_size=8, norm=NORM,
                               cutmix_prob=1.0, cutmix_beta=1.0)
    mix = draw_cutmix(cutmix_rng(5, 2, 0), len(rows), 8, 1.0, 1.0)
    pixels = view_pixels(images[labels.image_index[rows]], Views(labels.views.boxes[rows], labels.views.flips[rows]),
                         8, NORM)
    fresh = _student().train()
    with torch.no_grad():
        expected = student_loss(fresh(cutmix_images(pixels, mix)), labels.logits[rows], hard=False,
                                temperature=4.0, mix=mix)
    assert loss == pytest.approx(float(expected), rel=1e-5)
