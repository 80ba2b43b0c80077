"""The recovery loss terms and crop schedules, each against a direct computation; which terms a config (and so
each method) contributes; and that recover_unit sums whatever terms it is given."""

import ast
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from srel_ray.config import Config, DataConfig, RecoverConfig, load_config
from srel_ray.core.bn_matching import BNStatsMatcher
from srel_ray.core.class_stats import ClassStats
from srel_ray.core.normalization import Normalization
from srel_ray.core.recover import Recovery, Unit, freeze, recover_unit
from srel_ray.core.recover_terms import (FLATNESS_TEMPERATURE, BNMatching, CropCurriculum, FixedCrops, Flatness,
                                         L2Prior, SoftClassBNMatching, Step, Term, TotalVariation, crop_scale_at,
                                         crop_schedule, recover_terms)
from srel_ray.core.seeding import seeded_init
from srel_ray.methods import method_names
from srel_ray.models import create_model

NORM = Normalization((0.5,), (0.5,))
CORE = Path(__file__).resolve().parents[2] / "srel_ray" / "core"


def _teacher(seed=0):
    with seeded_init(seed):
        model = create_model("convnet", num_classes=3, in_channels=1, image_size=8, width=8, depth=2)
    for i, bn in enumerate(m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)):
        bn.running_mean.copy_(torch.linspace(-0.2, 0.2, 8) * (i + 1))
        bn.running_var.copy_(torch.linspace(0.05, 0.3, 8) * (i + 1))
    return freeze(model)


def _bn_layers(model):
    return [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]


def _layer_inputs(model, x):
    """The input of every BN layer on a forward pass of ``x``."""
    seen = []
    handles = [layer.register_forward_hook(lambda m, i, o: seen.append(i[0])) for layer in _bn_layers(model)]
    model(x)
    for h in handles:
        h.remove()
    return seen


def _step(model, x, bn, teacher=0):
    logits = model(x).float()
    return Step(x, logits, teacher, bn, lambda images: model(images))


def _distance(inputs, targets, first):
    """sum_l m_l (||mu_l - mu_l*|| + ||var_l - var_l*||), written out."""
    total = 0.0
    for index, (a, (mu, var)) in enumerate(zip(inputs, targets)):
        m = first if index == 0 else 1.0
        total += m * (float((a.mean((0, 2, 3)) - mu).norm()) + float((a.var((0, 2, 3), unbiased=False) - var).norm()))
    return total


X = torch.randn(6, 1, 8, 8, generator=torch.Generator().manual_seed(1))
TARGETS = torch.tensor([0, 1, 2, 0, 1, 0])


def test_bn_matching_is_the_distance_to_the_running_statistics():
    model = _teacher()
    inputs = _layer_inputs(model, X)
    running = [(layer.running_mean, layer.running_var) for layer in _bn_layers(model)]
    with BNStatsMatcher(model) as bn:
        term = BNMatching(0.01, 10.0)
        term.start(X, TARGETS)
        got = float(term.value(_step(model, X, bn)))
    assert got == pytest.approx(_distance(inputs, running, 10.0), rel=1e-5)
    assert term.reports == "bn"


def test_soft_class_matching_mixes_global_and_the_class_mixture():
    model = _teacher()
    layers = _bn_layers(model)
    gen = torch.Generator().manual_seed(2)
    means = [torch.randn(3, layer.num_features, generator=gen) for layer in layers]
    variances = [torch.rand(3, layer.num_features, generator=gen) + 0.1 for layer in layers]
    stats = ClassStats([0, 1, 2], means, variances)
    p = torch.bincount(TARGETS, minlength=3).double() / len(TARGETS)  # each class's share of the batch
    mixture = []
    for mean, var in zip(means, variances):
        mu = sum(p[c] * mean[c].double() for c in range(3))
        second = sum(p[c] * (var[c].double() + mean[c].double() ** 2) for c in range(3))
        mixture.append((mu.float(), (second - mu * mu).float()))
    inputs = _layer_inputs(model, X)
    running = [(layer.running_mean, layer.running_var) for layer in layers]
    w = 0.3
    with BNStatsMatcher(model) as bn:
        term = SoftClassBNMatching(0.01, 2.0, w, [stats])
        term.start(X, TARGETS)
        got = float(term.value(_step(model, X, bn)))
    expected = (1 - w) * _distance(inputs, running, 2.0) + w * _distance(inputs, mixture, 2.0)
    assert got == pytest.approx(expected, rel=1e-4)


def test_soft_class_matching_uses_the_statistics_of_the_teacher_that_takes_the_step():
    model = _teacher()
    layers = _bn_layers(model)
    same = ClassStats([0, 1, 2], [layer.running_mean.expand(3, -1).clone() for layer in layers],
                      [layer.running_var.expand(3, -1).clone() for layer in layers])
    other = ClassStats([0, 1, 2], [m + 1.0 for m in same.mean], list(same.var))
    with BNStatsMatcher(model) as bn:
        term = SoftClassBNMatching(0.01, 1.0, 1.0, [same, other])
        term.start(X, TARGETS)
        first, second = (float(term.value(_step(model, X, bn, teacher=k))) for k in (0, 1))
        plain = float(bn.loss(1.0))  # R_BN^global of the same pass
    assert first == pytest.approx(plain, rel=1e-5) and second > first


def test_flatness_is_the_kl_to_the_teacher_on_an_ema_of_the_images():
    model = _teacher()
    term = Flatness(0.1, 0.9)
    term.start(X, TARGETS)
    with BNStatsMatcher(model) as bn:
        assert float(term.value(_step(model, X, bn))) == pytest.approx(0.0, abs=1e-6)  # x_ema = x_0
        moved = X + 0.5
        term.after_step(moved)
        ema = 0.9 * X + 0.1 * moved
        got = float(term.value(_step(model, moved, bn)))
    expected = F.kl_div(F.log_softmax(model(moved) / 4, 1), F.softmax(model(ema) / 4, 1), reduction="batchmean") * 16
    assert FLATNESS_TEMPERATURE == 4.0 and got == pytest.approx(float(expected), rel=1e-4)


def test_the_priors_against_their_formulas():
    step = Step(X, torch.zeros(6, 3), 0, None, None)
    tv = float((X[:, :, 1:, :] - X[:, :, :-1, :]).abs().mean()) + float((X[:, :, :, 1:] - X[:, :, :, :-1]).abs().mean())
    l2 = sum(math.sqrt(float((image ** 2).sum())) for image in X) / len(X)
    assert float(TotalVariation(1.0).value(step)) == pytest.approx(tv, rel=1e-5)
    assert float(L2Prior(1.0).value(step)) == pytest.approx(l2, rel=1e-5)


def test_the_config_says_which_terms_in_the_loss_order():
    assert [type(t) for t in recover_terms(RecoverConfig())] == [BNMatching]
    every = recover_terms(RecoverConfig(class_bn_weight=0.5, flatness_weight=0.1, tv_weight=0.2, l2_weight=0.3),
                          class_stats=[])
    assert [type(t) for t in every] == [SoftClassBNMatching, Flatness, TotalVariation, L2Prior]
    assert [t.weight for t in every] == [0.01, 0.1, 0.2, 0.3]  # R_BN's weight is alpha_BN; w mixes inside it
    assert every[0].class_weight == 0.5 and every[1].ema_decay == 0.99


def test_options_stay_orthogonal_to_the_method():
    """class_bn_weight under sre2l is the same term as under edc: the method only chose a value."""
    cfg = load_config(overrides=["method=sre2l", "recover.class_bn_weight=0.5"])
    assert [type(t) for t in recover_terms(cfg.recover, class_stats=[])] == [SoftClassBNMatching]


@pytest.mark.parametrize("method, terms, schedule", [
    ("sre2l", [BNMatching], FixedCrops),
    ("cda", [BNMatching], CropCurriculum),
    ("rded", [BNMatching], FixedCrops),  # no step runs: 0 iterations
    ("edc", [SoftClassBNMatching, Flatness], FixedCrops),
])
def test_what_each_method_contributes_to_recovery(method, terms, schedule):
    assert method in method_names()
    r = load_config(overrides=[f"method={method}"]).recover
    assert [type(t) for t in recover_terms(r, class_stats=[])] == terms
    assert type(crop_schedule(r)) is schedule


def test_crop_schedules():
    assert FixedCrops((0.3, 0.9))(17) == (0.3, 0.9)
    cfg = RecoverConfig(iterations=40, crop_curriculum="linear", crop_min_start=0.8, crop_milestone=0.5)
    schedule = crop_schedule(cfg)
    assert [schedule(s) for s in range(40)] == [crop_scale_at((0.08, 1.0), "linear", 0.8, 0.5, s, 40)
                                                for s in range(40)]
    assert schedule(0) == (0.8, 1.0) and schedule(20) == (0.08, 1.0)


class _Pull(Term):
    """A term no method has: pulls the images towards a constant, and reports its value."""

    weight = 5.0
    reports = "pull"

    def __init__(self):
        self.started = self.after = 0

    def start(self, x, targets):
        self.started += 1

    def value(self, step):
        return (step.x - 0.7).pow(2).mean()

    def after_step(self, x):
        self.after += 1


def test_recover_unit_sums_the_terms_it_is_given():
    cfg = Config(data=DataConfig(image_size=8), recover=RecoverConfig(iterations=4, lr=0.1, jitter=1))
    recovery = Recovery.of(cfg, [_teacher()], NORM)
    unit = Unit(0, (0, 1, 2), 0, 2)
    pull = _Pull()
    pulled, stats = recover_unit(recovery, unit, [pull])
    assert (pull.started, pull.after) == (1, 4)
    assert list(stats) == ["ce", "pull", "loss", "accuracy"] and stats["loss"] > stats["ce"]
    ce_only, ce_stats = recover_unit(recovery, unit, [])
    assert list(ce_stats) == ["ce", "loss", "accuracy"] and ce_stats["loss"] == ce_stats["ce"]
    assert not torch.equal(pulled, ce_only)
    assert (pulled.float() / 255 - 0.85).abs().mean() < (ce_only.float() / 255 - 0.85).abs().mean()  # 0.7 -> 0.85


def test_the_core_imports_no_method():
    """The methods registry says which values a method sets; the core only what each option computes."""
    for path in CORE.glob("*.py"):
        tree = ast.parse(path.read_text())
        modules = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
        modules |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        assert not {m for m in modules if m == "srel_ray.methods" or m.startswith("ray")}, path.name
