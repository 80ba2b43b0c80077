"""The successors' recovery options: CDA's crop curriculum, real-image init, soft category-aware matching,
teachers taking turns, EDC's flatness term."""

import math

import pytest
import torch

from srel_ray.config import Config, DataConfig, RecoverConfig
from srel_ray.core.class_stats import ClassStats
from srel_ray.core.normalization import Normalization
from srel_ray.core.recover import Recovery, Unit, freeze, recover_unit
from srel_ray.core.recover_terms import crop_scale_at, recover_terms
from srel_ray.core.seeding import seeded_init
from srel_ray.models import create_model

NORM = Normalization((0.5,), (0.5,))
UNIT = Unit(0, (0, 1, 2), 0, 2)


def _teacher(seed=123):
    with seeded_init(seed):
        model = create_model("convnet", num_classes=3, in_channels=1, image_size=8, width=8, depth=2)
    bn = model.features[1]
    bn.running_mean.copy_(torch.linspace(-0.2, 0.2, 8))
    bn.running_var.copy_(torch.linspace(0.05, 0.3, 8))
    return freeze(model)


def _init():
    return (torch.rand(6, 1, 8, 8, generator=torch.Generator().manual_seed(4)) * 255).to(torch.uint8)


def _recovery(teachers, cfg):
    return Recovery.of(Config(seed=0, data=DataConfig(image_size=8), recover=cfg), teachers, NORM)


def _recover(teacher=None, extra_teachers=(), class_stats=None, **kwargs):
    options = {k: kwargs.pop(k) for k in ("init", "on_step") if k in kwargs}
    if options.get("init") is not None:
        kwargs["init"] = "real"
    cfg = RecoverConfig(**{**dict(iterations=5, lr=0.1, bn_weight=0.5, jitter=1, crop_scale=(0.5, 1.0)), **kwargs})
    return recover_unit(_recovery([teacher or _teacher(), *extra_teachers], cfg), UNIT,
                        recover_terms(cfg, class_stats), **options)


@pytest.mark.parametrize("curriculum,expected", [
    ("none", [0.08, 0.08, 0.08, 0.08]),
    ("step", [1.0, 1.0, 0.08, 0.08]),
    ("linear", [1.0, 0.08 + 0.92 * 0.5, 0.08, 0.08]),
    ("cosine", [1.0, 0.08 + 0.92 * 0.5 * (1 + math.cos(math.pi * 0.5)), 0.08, 0.08]),
])
def test_crop_curriculum_values(curriculum, expected):
    # milestone 0.5 of 100 steps: annealing over steps 0-49, then the end value; steps 0, 25, 50, 99.
    got = [crop_scale_at((0.08, 1.0), curriculum, 1.0, 0.5, step, 100) for step in (0, 25, 50, 99)]
    assert [hi for _, hi in got] == [1.0] * 4
    assert [lo for lo, _ in got] == pytest.approx(expected)


def test_cosine_curriculum_decreases_monotonically_over_the_whole_run():
    lows = [crop_scale_at((0.2, 0.9), "cosine", 0.9, 1.0, s, 50)[0] for s in range(50)]
    assert lows[0] == pytest.approx(0.9) and all(a > b for a, b in zip(lows, lows[1:])) and lows[-1] > 0.2


def test_curriculum_changes_the_recovery():
    plain, _ = _recover()
    cda, _ = _recover(crop_curriculum="cosine", crop_min_start=1.0)
    assert not torch.equal(plain, cda)


def test_zero_iterations_returns_the_starting_images():
    init = _init()
    cfg = RecoverConfig(iterations=0, init="real")
    images, stats = recover_unit(_recovery([_teacher()], cfg), UNIT, recover_terms(cfg), init=init)
    assert torch.equal(images, init)
    assert 0.0 <= stats["accuracy"] <= 1.0 and stats["ce"] > 0


def test_real_init_starts_from_the_given_images():
    init = _init()
    images, _ = _recover(init=init, iterations=1, lr=1e-3)
    # One small Adam step moves each pixel by about lr * std = 0.0005 in [0, 1]: within one uint8 level.
    assert (images.int() - init.int()).abs().max() <= 1
    noise, _ = _recover(iterations=1, lr=1e-3)
    assert (noise.int() - init.int()).abs().max() > 50


def _class_stats_equal_to_running(teacher):
    """Per-class statistics that all equal the teacher's running statistics: the class mixture is then the same
    target as the global one, so any weight w must give the plain SRe2L result."""
    layers = [m for m in teacher.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    return ClassStats([0, 1, 2], [layer.running_mean.expand(3, -1).clone() for layer in layers],
                      [layer.running_var.expand(3, -1).clone() for layer in layers])


def test_class_matching_with_global_statistics_is_plain_matching():
    teacher = _teacher()
    plain, _ = _recover(teacher)
    same, _ = _recover(teacher, class_bn_weight=1.0, class_stats=[_class_stats_equal_to_running(teacher)])
    assert torch.equal(plain, same)
    other = _class_stats_equal_to_running(teacher)
    other.mean[0][1] += 1.0  # class 1's first-layer mean differs: the target moves
    moved, _ = _recover(teacher, class_bn_weight=0.5, class_stats=[other])
    assert not torch.equal(plain, moved)


def test_teachers_take_turns_one_step_each():
    a, b = _teacher(1), _teacher(2)
    calls = {"a": 0, "b": 0}
    a.register_forward_hook(lambda *_: calls.__setitem__("a", calls["a"] + 1))
    b.register_forward_hook(lambda *_: calls.__setitem__("b", calls["b"] + 1))
    _recover(a, extra_teachers=[b], iterations=5)
    assert calls == {"a": 3 + 1, "b": 2}  # steps 0, 2, 4 and the final accuracy check; steps 1, 3
    alone, _ = _recover(_teacher(1), iterations=5)
    both, _ = _recover(_teacher(1), extra_teachers=[_teacher(2)], iterations=5)
    assert not torch.equal(alone, both)


def test_flatness_term_is_zero_at_the_start_and_acts_later():
    init = _init()
    plain, flat = [], []
    _recover(init=init, on_step=lambda s, loss: plain.append(loss))
    images, _ = _recover(init=init, flatness_weight=10.0, flatness_ema=0.9, on_step=lambda s, loss: flat.append(loss))
    assert flat[0] == pytest.approx(plain[0], rel=1e-6)  # x_ema = x_0: the KL is 0
    assert flat[1:] != pytest.approx(plain[1:], rel=1e-6)
    without, _ = _recover(init=init)
    assert not torch.equal(images, without)
