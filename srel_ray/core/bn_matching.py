"""BatchNorm-statistics matching: how far a batch's per-layer statistics sit from the teacher's running ones.

R_BN = sum_l  m_l * ( ||mu_l(x) - mu_l^BN||_2 + ||sigma^2_l(x) - sigma^2_l^BN||_2 ),  m_1 = first-layer multiplier.

``loss_to`` measures the same distance to other per-layer targets (EDC's per-class statistics, srel_ray.core.
class_stats) from the same forward pass.
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn


def batch_stats(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and biased variance over (N, H, W), as BatchNorm computes them in training mode."""
    dims = [0, *range(2, x.dim())]
    return x.mean(dims), x.var(dims, unbiased=False)


class BNStatsMatcher:
    """Hooks every BatchNorm layer of a frozen model and records each layer's distance on the last forward."""

    def __init__(self, model: nn.Module):
        self.layers = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        if not self.layers:
            raise ValueError("the teacher has no BatchNorm layers: SRe2L recovery needs BN statistics to match")
        self.distances: list[torch.Tensor | None] = [None] * len(self.layers)
        self.batch: list[tuple[torch.Tensor, torch.Tensor] | None] = [None] * len(self.layers)  # (mu_l, var_l)
        self.recording = True
        self._handles = [layer.register_forward_hook(self._hook(i)) for i, layer in enumerate(self.layers)]

    def _hook(self, index: int):
        def record(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
            if not self.recording:
                return
            mean, var = batch_stats(inputs[0].float())  # fp32 statistics under autocast (no-op in fp32)
            self.batch[index] = (mean, var)
            self.distances[index] = (torch.norm(mean - module.running_mean, 2)
                                     + torch.norm(var - module.running_var, 2))

        return record

    def loss(self, first_bn_multiplier: float = 1.0) -> torch.Tensor:
        """R_BN of the last forward pass."""
        assert all(d is not None for d in self.distances), "loss() called before a forward pass"
        weights = [first_bn_multiplier] + [1.0] * (len(self.distances) - 1)
        return sum(w * d for w, d in zip(weights, self.distances))

    def loss_to(self, targets: list[tuple[torch.Tensor, torch.Tensor]], first_bn_multiplier: float = 1.0
                ) -> torch.Tensor:
        """sum_l m_l * (||mu_l(x) - mu_l*||_2 + ||sigma^2_l(x) - sigma^2_l*||_2) for per-layer targets (mu*, var*)
        of the last forward pass."""
        assert all(b is not None for b in self.batch), "loss_to() called before a forward pass"
        assert len(targets) == len(self.batch), f"{len(targets)} targets for {len(self.batch)} BN layers"
        weights = [first_bn_multiplier] + [1.0] * (len(self.batch) - 1)
        return sum(w * (torch.norm(mean - mu, 2) + torch.norm(var - v, 2))
                   for w, (mean, var), (mu, v) in zip(weights, self.batch, targets))

    @contextlib.contextmanager
    def paused(self):
        """Forward passes inside the block leave the recorded statistics alone (e.g. a no-grad side pass)."""
        self.recording = False
        try:
            yield
        finally:
            self.recording = True

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()

    def __enter__(self) -> "BNStatsMatcher":
        return self

    def __exit__(self, *exc) -> None:
        self.remove()
