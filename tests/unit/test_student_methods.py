"""EDC's student side: the stretched cosine schedule, EMA-of-weights, and averaged multi-teacher logits."""

import math

import pytest
import torch
from torch import nn

from srel_ray.core.relabel import mean_logits
from srel_ray.core.student import WeightEMA, stretched_cosine, train_student_epoch

from .test_student_core import NORM, _labels, _toy_set


def _lrs(stretch: float, total: int) -> list[float]:
    optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.4)
    scheduler = stretched_cosine(optimizer, total, stretch)
    lrs = [optimizer.param_groups[0]["lr"]]
    for _ in range(total):
        optimizer.step()
        scheduler.step()
        lrs.append(optimizer.param_groups[0]["lr"])
    return lrs


@pytest.mark.parametrize("stretch", [1.0, 2.0, 3.0])
def test_stretched_cosine_values(stretch):
    total = 40
    lrs = _lrs(stretch, total)
    expected = [0.4 * 0.5 * (1 + math.cos(math.pi * step / (stretch * total))) for step in range(total + 1)]
    assert lrs == pytest.approx(expected, abs=1e-9)
    # EDC's x2: the schedule ends at half the peak instead of zero.
    assert lrs[-1] == pytest.approx({1.0: 0.0, 2.0: 0.2, 3.0: 0.3}[stretch], abs=1e-9)


def test_weight_ema_follows_its_closed_form():
    model = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))
    ema = WeightEMA(model, decay=0.9, warmup=False)
    start = {k: v.clone() for k, v in model.state_dict().items()}
    values = [1.0, 3.0, -2.0]
    for v in values:
        with torch.no_grad():
            model[0].weight.fill_(v)
            model[1].running_mean.fill_(2 * v)
            model[1].num_batches_tracked.fill_(int(v * 10))
        ema.update(model)
    # theta_ema = 0.9^3 theta_0 + 0.1 (0.9^2 v1 + 0.9 v2 + v3)
    expected = 0.9 ** 3 * start["0.weight"] + 0.1 * (0.81 * 1.0 + 0.9 * 3.0 - 2.0)
    state = ema.state_dict()
    assert torch.allclose(state["0.weight"], expected, atol=1e-6)
    assert torch.allclose(state["1.running_mean"], 0.1 * 2 * (0.81 * 1.0 + 0.9 * 3.0 - 2.0) * torch.ones(2),
                          atol=1e-6)  # running statistics are averaged too (they start at 0)
    assert int(state["1.num_batches_tracked"]) == -20  # integer buffers are copied
    assert torch.allclose(state["0.bias"], start["0.bias"], atol=1e-6)  # unchanged parameters stay put
    assert not any(p.requires_grad for p in ema.model.parameters()) and not ema.model.training


def test_weight_ema_warms_up_before_reaching_its_decay():
    model = nn.Sequential(nn.Linear(1, 1, bias=False))
    ema = WeightEMA(model, decay=0.99)
    start = model[0].weight.item()
    decays = []
    for step in range(2000):
        decays.append(ema.current_decay())
        with torch.no_grad():
            model[0].weight.fill_(1.0)
        ema.update(model)
    assert decays[:3] == pytest.approx([1 / 10, 2 / 11, 3 / 12])
    assert decays[889] < 0.99 and decays[890] == 0.99 and decays[-1] == 0.99  # (1 + t) / (10 + t) >= 0.99 from 890
    assert ema.updates == 2000
    # The initial weight keeps the product of all decays: 0.1 * 2/11 * ... (about 1e-6 after 300 steps; without
    # the warm-up 0.99^300 ~ 5 % would survive).
    survivor = start * math.prod(decays)
    assert ema.model[0].weight.item() == pytest.approx(1.0 - math.prod(decays) + survivor, abs=1e-6)
    again = WeightEMA(model, decay=0.99)
    again.load_state_dict(ema.state_dict(), ema.updates)  # a resumed student continues the schedule
    assert again.current_decay() == ema.current_decay() == 0.99


def test_ema_updates_once_per_student_batch():
    from srel_ray.core.seeding import seeded_init
    from srel_ray.models import create_model

    images, class_labels = _toy_set()
    labels = _labels(class_labels, soft=True)
    with seeded_init(0):
        model = create_model("convnet", num_classes=4, in_channels=1, image_size=8, width=8, depth=2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scheduler = stretched_cosine(optimizer, 4)
    copy_of_model = WeightEMA(model, decay=0.0, warmup=False)  # decay 0: the EMA is the model after the last step
    halfway = WeightEMA(model, decay=0.5, warmup=False)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    train_student_epoch(model, optimizer, scheduler, images, class_labels, labels, epoch=0, seed=0,
                        batch_size=32, temperature=4.0, image_size=8, norm=NORM, ema=copy_of_model)
    assert all(torch.equal(a, b) for a, b in zip(copy_of_model.state_dict().values(), model.state_dict().values()))
    # One batch of 32 rows (16 images x 2 views): one step, so the half-way EMA is the mean of before and after.
    with seeded_init(0):
        again = create_model("convnet", num_classes=4, in_channels=1, image_size=8, width=8, depth=2)
    optimizer = torch.optim.SGD(again.parameters(), lr=0.1)
    train_student_epoch(again, optimizer, stretched_cosine(optimizer, 4), images, class_labels, labels, epoch=0,
                        seed=0, batch_size=32, temperature=4.0, image_size=8, norm=NORM, ema=halfway)
    weight = "classifier.weight"
    assert torch.allclose(halfway.state_dict()[weight], (before[weight] + again.state_dict()[weight]) / 2)


def test_multi_teacher_logits_are_the_mean():
    a = torch.tensor([[1.0, 2.0, 3.0], [0.0, -1.0, 4.0]])
    b = torch.tensor([[3.0, 0.0, 1.0], [2.0, 1.0, 0.0]])
    assert torch.equal(mean_logits([a, b]), torch.tensor([[2.0, 1.0, 2.0], [1.0, 0.0, 2.0]]))
    assert torch.equal(mean_logits([a]), a)
