"""Per-class BN statistics against a direct computation, the class-mixture targets, and matching to them."""

import pytest
import torch
import torchvision
from torch.testing import assert_close

from srel_ray.core.bn_matching import BNStatsMatcher
from srel_ray.core.class_stats import ClassStatsAccumulator, batch_sums, bn_layers, bytes_per_class, class_shards
from srel_ray.core.recover import freeze
from srel_ray.core.seeding import seeded_init
from srel_ray.models import create_model


def _teacher():
    with seeded_init(7):
        model = create_model("convnet", num_classes=3, in_channels=2, image_size=8, width=5, depth=2)
    return freeze(model.double())


def _toy_set():
    """3 classes with 4, 6 and 2 images whose pixel distributions differ by class."""
    gen = torch.Generator().manual_seed(0)
    sizes = [4, 6, 2]
    x = torch.cat([torch.randn(n, 2, 8, 8, generator=gen, dtype=torch.float64) * (1 + c) + c
                   for c, n in enumerate(sizes)])
    y = torch.cat([torch.full((n,), c) for c, n in enumerate(sizes)])
    return x, y


def _layer_inputs(model, x):
    """Every BN layer's input on ``x``, captured directly."""
    captured = []
    handles = [layer.register_forward_hook(lambda m, i, o: captured.append(i[0].detach())) for layer in
               bn_layers(model)]
    with torch.no_grad():
        model(x)
    for h in handles:
        h.remove()
    return captured


def _direct(a):
    """Mean and biased variance per channel over (N, H, W), written out by hand."""
    flat = a.transpose(0, 1).reshape(a.shape[1], -1)
    mean = flat.sum(1) / flat.shape[1]
    return mean, ((flat - mean[:, None]) ** 2).sum(1) / flat.shape[1]


def test_per_class_statistics_equal_a_direct_computation():
    model, (x, y) = _teacher(), _toy_set()
    # Accumulate over mixed-class batches in a shuffled order of uneven sizes.
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(1))
    acc = ClassStatsAccumulator(3)
    for rows in order.split(5):
        acc.update(model, x[rows], y[rows])
    stats = acc.result()
    assert stats.classes == [0, 1, 2] and len(stats.mean) == 2
    for c in range(3):
        for layer, a in enumerate(_layer_inputs(model, x[y == c])):
            mean, var = _direct(a)
            assert_close(stats.mean[layer][c], mean.float(), rtol=1e-5, atol=1e-6)
            assert_close(stats.var[layer][c], var.float(), rtol=1e-5, atol=1e-6)
    # The classes really differ, so a mix-up of rows would fail above.
    assert (stats.mean[0][0] - stats.mean[0][1]).abs().max() > 0.1


def test_batch_sums_hold_only_the_classes_present():
    model, (x, y) = _teacher(), _toy_set()
    part = batch_sums(model, x[y != 1], y[y != 1])
    assert part.classes.tolist() == [0, 2]
    assert part.pixels[0].tolist() == [4 * 64, 2 * 64] and part.pixels[1].tolist() == [4 * 16, 2 * 16]
    acc = ClassStatsAccumulator(3)
    acc.add(part)
    assert acc.missing() == [1]


def test_mixture_equals_the_statistics_of_the_pooled_classes():
    """The mixture with p_c = n_c / n is exactly the statistics of all those images pooled together."""
    model, (x, y) = _teacher(), _toy_set()
    acc = ClassStatsAccumulator(3)
    acc.update(model, x, y)
    stats = acc.result()
    keep = y != 2
    targets = y[keep]  # 4 of class 0, 6 of class 1: p = (0.4, 0.6, 0)
    for (mu, var), a in zip(stats.mixture(targets), _layer_inputs(model, x[keep])):
        mean, direct_var = _direct(a)
        assert_close(mu, mean.float(), rtol=1e-5, atol=1e-6)
        assert_close(var, direct_var.float(), rtol=1e-5, atol=1e-6)


def test_loss_to_targets_and_paused_recording():
    model, (x, _) = _teacher(), _toy_set()
    inputs = _layer_inputs(model, x[:5])
    targets = [(torch.full((a.shape[1],), 0.3, dtype=torch.float64), torch.full((a.shape[1],), 1.7,
                                                                                   dtype=torch.float64))
               for a in inputs]
    expected = 0.0
    for weight, a, (mu, v) in zip([4.0, 1.0], inputs, targets):
        mean, var = _direct(a)
        expected += weight * (((mean - mu) ** 2).sum().sqrt() + ((var - v) ** 2).sum().sqrt())
    with BNStatsMatcher(model) as bn:
        model(x[:5])
        with bn.paused():
            model(x[5:] * 3)  # must not replace what the first forward recorded
        got = bn.loss_to(targets, 4.0)
        # Matching to the running statistics themselves is the plain R_BN.
        running = [(layer.running_mean, layer.running_var) for layer in bn.layers]
        assert_close(bn.loss_to(running, 4.0), bn.loss(4.0))
    assert_close(got, expected)


@pytest.mark.parametrize("split", [1, 3, 12])
def test_result_does_not_depend_on_the_batching(split):
    model, (x, y) = _teacher(), _toy_set()
    one = ClassStatsAccumulator(3)
    one.update(model, x, y)
    many = ClassStatsAccumulator(3)
    for rows in torch.arange(len(y)).split(split):
        many.update(model, x[rows], y[rows])
    for a, b in zip(one.result().var + one.result().mean, many.result().var + many.result().mean):
        assert_close(a, b, rtol=1e-6, atol=1e-7)


def test_accumulators_owning_class_ranges_hold_exactly_their_rows_of_the_whole():
    """Each accumulator is given every part and keeps its own classes' rows: together, bit for bit the sums one
    accumulator of all classes adds up (every class's rows are added in the same order)."""
    model, (x, y) = _teacher(), _toy_set()
    whole = ClassStatsAccumulator(3)
    shards = [ClassStatsAccumulator(3, range(0, 1)), ClassStatsAccumulator(3, range(1, 3))]
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(2))
    for rows in order.split(5):
        part = batch_sums(model, x[rows], y[rows])
        for acc in [whole, *shards]:
            acc.add(part)
    assert [s.result().classes for s in shards] == [[0], [1, 2]]
    for layer in range(2):
        for field in ("sums", "squares", "pixels"):
            joined = torch.cat([getattr(s.total, field)[layer] for s in shards])
            assert torch.equal(joined, getattr(whole.total, field)[layer])
    late = ClassStatsAccumulator(3, range(1, 3))
    late.add(batch_sums(model, x[y == 0], y[y == 0]))  # none of its classes: all still missing, by class index
    assert late.missing() == [1, 2]


def test_class_shards_cover_the_classes_within_the_budget():
    resnet50 = [layer.num_features for layer in bn_layers(torchvision.models.resnet50())]
    per_class = bytes_per_class(resnet50)
    assert per_class == 16 * 26560 + 8 * 53  # 53 BN layers of 26,560 channels: about 425 KB of sums per class
    shards = class_shards(21841, per_class, 512 * 2**20)
    assert [c for r in shards for c in r] == list(range(21841))
    assert all(len(r) * per_class <= 512 * 2**20 for r in shards) and len(shards) == 18
    assert max(map(len, shards)) - min(map(len, shards)) <= 1
    assert class_shards(10, per_class, 1) == [range(c, c + 1) for c in range(10)]  # at least a class each
    assert class_shards(10, 8, 2**20) == [range(10)]
