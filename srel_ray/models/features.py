"""A classifier's penultimate features (its embedding of an image), for any model of the registry: the input of
its last ``nn.Linear``, caught by a forward hook, so no model needs a feature method of its own (torchvision's and
timm's classifiers end in one, as the built-in models do)."""

from __future__ import annotations

from typing import Iterable

import torch
from torch import nn

from srel_ray.errors import SrelError


def classifier_layer(model: nn.Module) -> tuple[str, nn.Linear]:
    """The name and module of ``model``'s last ``nn.Linear`` (in registration order, where every classifier
    above puts its head)."""
    linears = [(name, m) for name, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise SrelError(f"{type(model).__name__} has no nn.Linear layer to take its penultimate features from")
    return linears[-1]


@torch.no_grad()
def penultimate_features(model: nn.Module, batches: Iterable[torch.Tensor]) -> torch.Tensor:
    """(N, D) float32: what ``model`` (in eval mode) feeds its classifier layer for each image of ``batches``
    (model inputs). A last ``nn.Linear`` that does not give the model's outputs is no classifier head: refused."""
    name, layer = classifier_layer(model)
    caught: list[torch.Tensor] = []
    handle = layer.register_forward_hook(lambda module, inputs, output: caught.append(inputs[0].flatten(1).float()))
    outputs = []
    try:
        model.eval()
        for x in batches:
            outputs.append(model(x))
    finally:
        handle.remove()
    if tuple(outputs[0].shape[1:]) != (layer.out_features,) or [len(f) for f in caught] != [len(o) for o in outputs]:
        raise SrelError(f"the last nn.Linear of {type(model).__name__} ({name!r}: {layer.out_features} outputs per "
                        f"image) is not its classifier head (outputs of shape {tuple(outputs[0].shape[1:])})")
    return torch.cat(caught)
