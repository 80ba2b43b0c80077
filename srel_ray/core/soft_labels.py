"""Soft-label storage: keep only each view's top-k logits, and rebuild full logits with the rest as uniform mass.

For a view with logits z over C classes, top-k indices I and the log-sum-exp r of the logits outside I, the
rebuilt logits are z_i for i in I and r - log(C - k) elsewhere: at T = 1 the softmax keeps the top-k
probabilities exactly and spreads the remaining mass evenly over the other C - k classes.

Both directions are torch and float32 on whatever device the logits are on: the labelling actors compress on
their GPU before anything leaves it, and students expand one batch at a time (never a whole label epoch, and
never in float64: at 21K classes a float64 epoch is tens of GB).
"""

from __future__ import annotations

import math

import torch


def compress_topk(logits: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(R, C) logits -> top-k indices (R, k) int32 (largest first), their logits (R, k) float32, and the
    log-sum-exp of the other C - k logits (R,) float32."""
    num_classes = logits.shape[1]
    assert 0 < k < num_classes, f"top_k must be in 1..{num_classes - 1}, got {k}"
    logits = logits.float()
    values, index = torch.topk(logits, k, dim=1, largest=True, sorted=True)
    rest = logits.scatter(1, index, float("-inf"))
    return index.to(torch.int32), values, torch.logsumexp(rest, dim=1)


def expand_topk(index: torch.Tensor, values: torch.Tensor, rest_lse: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Full (R, C) float32 logits from the compressed form (on the inputs' device)."""
    k = index.shape[1]
    fill = rest_lse.float() - math.log(num_classes - k)
    logits = fill[:, None].expand(-1, num_classes).clone()
    return logits.scatter_(1, index.long(), values.float())
