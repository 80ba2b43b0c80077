"""Recovery units and the recovery loop on a tiny frozen ConvNet teacher."""

import math

import pytest
import torch
import torch.nn.functional as F

from srel_ray.config import Config, DataConfig, RecoverConfig
from srel_ray.core.normalization import Normalization, from_uint8, to_uint8
from srel_ray.core.recover import Recovery, Unit, cosine_lr, freeze, plan_units, recover_unit
from srel_ray.core.recover_terms import recover_terms
from srel_ray.core.seeding import STREAM_RECOVER, generator, seeded_init
from srel_ray.models import create_model

NORM = Normalization((0.5,), (0.5,))


@pytest.mark.parametrize("num_classes,ipc,classes_per_unit,ipc_per_unit", [
    (10, 2, 10, 1), (10, 3, 4, 2), (7, 5, 100, 5), (3, 4, 1, 3), (1, 1, 1, 1), (12, 10, 5, 4),
])
def test_plan_units_cover_every_image_once(num_classes, ipc, classes_per_unit, ipc_per_unit):
    units = plan_units(num_classes, ipc, classes_per_unit, ipc_per_unit)
    targets = [t for u in units for t in u.targets()]
    assert sorted(targets) == [(c, i) for c in range(num_classes) for i in range(ipc)]
    assert len(targets) == len(set(targets))
    assert [u.index for u in units] == list(range(len(units)))
    assert len({u.name for u in units}) == len(units)
    for u in units:
        assert len(u.classes) <= classes_per_unit
        assert 1 <= u.ipc_stop - u.ipc_start <= ipc_per_unit
    # Deterministic: a function of these four numbers only.
    assert plan_units(num_classes, ipc, classes_per_unit, ipc_per_unit) == units


def test_plan_units_layout():
    units = plan_units(5, 3, 2, 2)
    assert units == [Unit(0, (0, 1), 0, 2), Unit(1, (0, 1), 2, 3), Unit(2, (2, 3), 0, 2), Unit(3, (2, 3), 2, 3),
                     Unit(4, (4,), 0, 2), Unit(5, (4,), 2, 3)]
    # Targets interleave classes within each image index.
    assert units[0].targets() == [(0, 0), (1, 0), (0, 1), (1, 1)]
    assert units[0].name == "unit-000000"


def test_cosine_lr_endpoints():
    assert cosine_lr(0.25, 0, 100) == pytest.approx(0.25)
    assert cosine_lr(0.25, 50, 100) == pytest.approx(0.125)
    assert cosine_lr(0.25, 100, 100) == pytest.approx(0.0, abs=1e-12)
    assert cosine_lr(1.0, 25, 100) == pytest.approx(0.5 * (1 + math.cos(math.pi / 4)))
    lrs = [cosine_lr(1.0, s, 10) for s in range(11)]
    assert all(a > b for a, b in zip(lrs, lrs[1:]))


def _teacher():
    with seeded_init(123):
        model = create_model("convnet", num_classes=3, in_channels=1, image_size=8, width=8, depth=1)
    # Non-trivial running statistics, so the BN term has something to match.
    bn = model.features[1]
    bn.running_mean.copy_(torch.linspace(-0.2, 0.2, 8))
    bn.running_var.copy_(torch.linspace(0.05, 0.3, 8))
    return freeze(model)


def _recover(teacher, seed, unit, **overrides):
    cfg = RecoverConfig(**{**dict(iterations=5, lr=0.1, bn_weight=0.01, first_bn_multiplier=10.0, jitter=1,
                                  crop_scale=(0.5, 1.0)), **overrides})
    return recover_unit(_recovery(teacher, cfg, seed), unit, recover_terms(cfg))


def _recovery(teacher, cfg, seed):
    return Recovery.of(Config(seed=seed, data=DataConfig(image_size=8), recover=cfg), [teacher], NORM)


def test_freeze():
    teacher = _teacher()
    assert not teacher.training
    assert not any(p.requires_grad for p in teacher.parameters())


def test_recover_unit_shape_dtype_and_determinism():
    teacher = _teacher()
    unit = Unit(2, (0, 1, 2), 0, 2)
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    images, stats = _recover(teacher, 0, unit)
    assert images.dtype == torch.uint8 and images.shape == (6, 1, 8, 8)
    assert set(stats) >= {"ce", "bn", "loss", "accuracy"}
    assert all(math.isfinite(v) for v in stats.values())
    again, stats_again = _recover(teacher, 0, unit)
    assert torch.equal(images, again)
    assert stats == stats_again
    other, _ = _recover(teacher, 1, unit)
    assert not torch.equal(images, other)
    # The teacher is untouched: no parameter or running statistic changed, no hook left behind.
    after = teacher.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert all(len(m._forward_hooks) == 0 for m in teacher.modules())


def test_recover_unit_index_changes_the_draws():
    teacher = _teacher()
    a, _ = _recover(teacher, 0, Unit(0, (0, 1, 2), 0, 1))
    b, _ = _recover(teacher, 0, Unit(1, (0, 1, 2), 0, 1))
    assert not torch.equal(a, b)


def test_recover_reports_every_step():
    steps = []
    teacher = _teacher()
    cfg = RecoverConfig(iterations=4, lr=0.1, jitter=0, crop_scale=(0.5, 1.0))
    recover_unit(_recovery(teacher, cfg, 0), Unit(0, (0, 1), 0, 1), recover_terms(cfg),
                 on_step=lambda step, loss: steps.append((step, loss)))
    assert [s for s, _ in steps] == [0, 1, 2, 3]
    assert all(math.isfinite(v) for _, v in steps)


def _teacher_ce(teacher, images_uint8, targets):
    with torch.no_grad():
        return float(F.cross_entropy(teacher(NORM.normalize(from_uint8(images_uint8))), targets))


def test_recovery_lowers_teacher_cross_entropy():
    teacher = _teacher()
    with torch.no_grad():  # a decisive teacher: logits large enough that its CE can move well below log(3)
        teacher.classifier.weight.mul_(10.0)
    unit = Unit(0, (0, 1, 2), 0, 2)
    targets = torch.tensor([c for c, _ in unit.targets()])
    # The initial noise, exactly as recover_unit draws it, stored the same way (clipped to [0, 1], uint8).
    noise = torch.randn(6, 1, 8, 8, generator=generator(0, STREAM_RECOVER, unit.index))
    noise_uint8 = to_uint8(NORM.denormalize(noise))
    images, _ = _recover(teacher, 0, unit, iterations=60, lr=0.25, jitter=1, crop_scale=(0.5, 1.0))
    ce_noise = _teacher_ce(teacher, noise_uint8, targets)
    ce_recovered = _teacher_ce(teacher, images, targets)
    # Measured here: about 3.1 -> 0.45; the bound leaves a wide margin.
    assert ce_recovered < 0.5 * ce_noise, (ce_noise, ce_recovered)


def test_recovery_weight_decay_pulls_the_images_toward_the_mean():
    """recover.weight_decay is Adam's L2 term: the gradient gains weight_decay * x. Adam's first step moves each
    pixel by lr * g / |g|; with a decay that dominates the loss's gradient every pixel therefore moves by lr toward
    0 in normalised space (the data's mean), a step computed here by hand."""
    teacher = _teacher()
    unit = Unit(0, (0, 1, 2), 0, 2)
    start = torch.randint(40, 216, (6, 1, 8, 8), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    x = NORM.normalize(from_uint8(start))
    by_hand = to_uint8(NORM.denormalize(x - 0.1 * torch.sign(x)))
    cfg = RecoverConfig(iterations=1, lr=0.1, jitter=1, crop_scale=(0.5, 1.0), weight_decay=1e6)
    decayed, _ = recover_unit(_recovery(teacher, cfg, 0), unit, recover_terms(cfg), init=start)
    assert torch.equal(decayed, by_hand)
    plain = RecoverConfig(iterations=1, lr=0.1, jitter=1, crop_scale=(0.5, 1.0))
    undecayed, _ = recover_unit(_recovery(teacher, plain, 0), unit, recover_terms(plain), init=start)
    assert not torch.equal(undecayed, by_hand)  # without it the step follows the loss's gradient instead
    moved = undecayed.int() - start.int()
    assert set(moved.abs().unique().tolist()) <= {0, 12, 13} and (moved != 0).any()  # lr 0.1: 12.75 grey levels
