"""One registry of model builders by name. Builders take ``(num_classes, in_channels, image_size, **kwargs)``."""

from __future__ import annotations

from typing import Callable

from torch import nn

from srel_ray.errors import ConfigError

ModelBuilder = Callable[..., nn.Module]
_REGISTRY: dict[str, ModelBuilder] = {}


def register_model(name: str) -> Callable[[ModelBuilder], ModelBuilder]:
    """Decorator: make ``builder`` available as ``create_model(name, ...)``."""

    def add(builder: ModelBuilder) -> ModelBuilder:
        assert name not in _REGISTRY, f"model {name!r} registered twice"
        _REGISTRY[name] = builder
        return builder

    return add


def list_models() -> list[str]:
    return sorted(_REGISTRY)


def check_model_name(name: str, field: str = "arch") -> None:
    if name not in _REGISTRY:
        raise ConfigError(f"{field}: unknown model {name!r}; valid models: {', '.join(list_models())}")


def create_model(name: str, num_classes: int, in_channels: int = 3, image_size: int = 32, **kwargs) -> nn.Module:
    check_model_name(name)
    return _REGISTRY[name](num_classes=num_classes, in_channels=in_channels, image_size=image_size, **kwargs)
