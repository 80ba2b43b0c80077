"""BNStatsMatcher against R_BN computed by hand on a tiny two-BN network."""

import pytest
import torch
from torch import nn
from torch.testing import assert_close

from srel_ray.core.bn_matching import BNStatsMatcher


def _net() -> nn.Sequential:
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(2, 3, 3, padding=1, bias=True),
        nn.BatchNorm2d(3),
        nn.ReLU(),
        nn.Conv2d(3, 4, 3, padding=1, bias=False),
        nn.BatchNorm2d(4),
    ).double()
    bn1, bn2 = net[1], net[4]
    bn1.running_mean.copy_(torch.tensor([0.3, -1.2, 2.0]))
    bn1.running_var.copy_(torch.tensor([0.5, 2.5, 1.7]))
    bn2.running_mean.copy_(torch.tensor([-0.4, 0.9, 0.0, 1.1]))
    bn2.running_var.copy_(torch.tensor([3.0, 0.2, 1.0, 0.8]))
    bn1.weight.data.copy_(torch.tensor([1.5, -0.5, 2.0]))
    bn1.bias.data.copy_(torch.tensor([0.1, 0.2, -0.3]))
    return net.eval()


def _hand_distance(x: torch.Tensor, running_mean: torch.Tensor, running_var: torch.Tensor) -> torch.Tensor:
    # Per channel, over N, H, W, written out without the helper under test.
    c = x.shape[1]
    flat = x.transpose(0, 1).reshape(c, -1)
    mean = flat.sum(1) / flat.shape[1]
    var = ((flat - mean[:, None]) ** 2).sum(1) / flat.shape[1]  # biased
    return ((mean - running_mean) ** 2).sum().sqrt() + ((var - running_var) ** 2).sum().sqrt()


def _hand_loss(net: nn.Sequential, x: torch.Tensor, multiplier: float) -> torch.Tensor:
    with torch.no_grad():
        in1 = net[0](x)
        # In eval mode, BN normalises with the running statistics.
        out1 = net[1](in1)
        in2 = net[3](net[2](out1))
    d1 = _hand_distance(in1, net[1].running_mean, net[1].running_var)
    d2 = _hand_distance(in2, net[4].running_mean, net[4].running_var)
    return multiplier * d1 + d2


@pytest.mark.parametrize("multiplier", [1.0, 10.0, 0.25])
def test_loss_matches_hand_computation(multiplier):
    net = _net()
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(5, 2, 6, 7, generator=gen, dtype=torch.float64) * 1.7 + 0.4
    expected = _hand_loss(net, x, multiplier)
    with BNStatsMatcher(net) as matcher:
        net(x)
        got = matcher.loss(multiplier)
    assert_close(got, expected)
    # Sanity of the reference itself: the two layers contribute different, non-zero amounts.
    assert expected.item() > 0


def test_loss_reflects_last_forward_only():
    net = _net()
    x1 = torch.randn(4, 2, 5, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    x2 = x1 * 3 + 1
    with BNStatsMatcher(net) as matcher:
        net(x1)
        net(x2)
        got = matcher.loss(2.0)
    assert_close(got, _hand_loss(net, x2, 2.0))


def test_gradient_flows_to_input():
    net = _net()
    for p in net.parameters():
        p.requires_grad_(False)
    x = torch.randn(3, 2, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    x.requires_grad_(True)
    with BNStatsMatcher(net) as matcher:
        net(x)
        matcher.loss(10.0).backward()
    assert x.grad is not None
    assert torch.isfinite(x.grad).all()
    assert x.grad.abs().sum() > 0


def test_model_without_bn_raises_value_error():
    net = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Conv2d(2, 2, 3))
    with pytest.raises(ValueError, match="BatchNorm"):
        BNStatsMatcher(net)


def test_hooks_removed_after_context_exit():
    net = _net()
    bns = [net[1], net[4]]
    with BNStatsMatcher(net) as matcher:
        assert all(len(bn._forward_hooks) == 1 for bn in bns)
        assert len(matcher.layers) == 2
    assert all(len(m._forward_hooks) == 0 for m in net.modules())
    # A forward after exit must not update the matcher any more.
    before = [d.clone() if d is not None else None for d in matcher.distances]
    net(torch.randn(2, 2, 4, 4, dtype=torch.float64))
    assert matcher.distances == before == [None, None]


def test_hooks_removed_even_on_exception():
    net = _net()
    with pytest.raises(RuntimeError):
        with BNStatsMatcher(net):
            raise RuntimeError("boom")
    assert all(len(m._forward_hooks) == 0 for m in net.modules())
