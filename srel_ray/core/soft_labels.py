"""Soft-label storage: keep only each view's top-k logits, and rebuild full logits with the rest as uniform mass.

For a view with logits z over C classes, top-k indices I and the log-sum-exp r of the logits outside I, the
rebuilt logits are z_i for i in I and r - log(C - k) elsewhere: at T = 1 the softmax keeps the top-k
probabilities exactly and spreads the remaining mass evenly over the other C - k classes.
"""

from __future__ import annotations

import math

import numpy as np


def compress_topk(logits: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(R, C) logits -> top-k indices (R, k) int32, their logits (R, k), and the rest's log-sum-exp (R,)."""
    num_classes = logits.shape[1]
    assert 0 < k < num_classes, f"top_k must be in 1..{num_classes - 1}, got {k}"
    logits = logits.astype(np.float64)
    index = np.argsort(-logits, axis=1, kind="stable")[:, :k]
    values = np.take_along_axis(logits, index, axis=1)
    rest = logits.copy()
    np.put_along_axis(rest, index, -np.inf, axis=1)
    peak = rest.max(axis=1, keepdims=True)
    rest_lse = (peak + np.log(np.exp(rest - peak).sum(axis=1, keepdims=True)))[:, 0]
    return index.astype(np.int32), values, rest_lse


def expand_topk(index: np.ndarray, values: np.ndarray, rest_lse: np.ndarray, num_classes: int) -> np.ndarray:
    """Full (R, C) float32 logits from the compressed form."""
    k = index.shape[1]
    fill = rest_lse.astype(np.float64) - math.log(num_classes - k)
    logits = np.repeat(fill[:, None], num_classes, axis=1)
    np.put_along_axis(logits, index.astype(np.int64), values.astype(np.float64), axis=1)
    return logits.astype(np.float32)
