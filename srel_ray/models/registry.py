"""One registry of model builders by name. Builders take ``(num_classes, in_channels, image_size, **kwargs)``.

A model name is one of:

    convnet, resnet18_small, bnvit_tiny, ...   a model registered here (``register_model``)
    torchvision:<name>                         any classifier of ``torchvision.models`` (e.g. torchvision:resnet101)
    timm:<name>[.<tag>]                        any timm model (e.g. timm:resnet50.a1_in1k), timm's own builder
    <module>:<function>                        a user's builder, importable on every Ray worker (e.g. my_pkg.nets:
                                               small_cnn); called as function(num_classes=, in_channels=,
                                               image_size=, **arch_kwargs)

Every form is checked before any heavy work (``check_model_name``): unknown names list the close matches.
"""

from __future__ import annotations

import difflib
import importlib
from typing import Callable

from torch import nn

from srel_ray.errors import ConfigError, SrelError

ModelBuilder = Callable[..., nn.Module]
_REGISTRY: dict[str, ModelBuilder] = {}
TORCHVISION, TIMM = "torchvision:", "timm:"


def register_model(name: str) -> Callable[[ModelBuilder], ModelBuilder]:
    """Decorator: make ``builder`` available as ``create_model(name, ...)``."""

    def add(builder: ModelBuilder) -> ModelBuilder:
        assert name not in _REGISTRY, f"model {name!r} registered twice"
        assert ":" not in name, f"registered names have no ':' (it marks torchvision:, timm: and module:function)"
        _REGISTRY[name] = builder
        return builder

    return add


def list_models() -> list[str]:
    """The registered models (torchvision:, timm: and module:function names are open-ended)."""
    return sorted(_REGISTRY)


def _torchvision_classifiers() -> list[str]:
    import torchvision

    return torchvision.models.list_models(module=torchvision.models)


def _unknown(field: str, name: str, candidates: list[str], kind: str, valid: str = "") -> ConfigError:
    close = difflib.get_close_matches(name, candidates, n=5, cutoff=0.6)
    hint = f"; close matches: {', '.join(close)}" if close else ""
    return ConfigError(f"{field}: unknown {kind} {name!r}{hint}{valid}")


def resolve_builder(name: str, field: str = "arch") -> ModelBuilder:
    """The builder behind ``name`` (any of the forms in the module docstring), or a ConfigError naming ``field``."""
    if name.startswith(TORCHVISION):
        arch = name[len(TORCHVISION):]
        if arch not in _torchvision_classifiers():
            raise _unknown(field, arch, _torchvision_classifiers(), "torchvision classifier")
        return lambda **kwargs: _torchvision_model(arch, field=field, **kwargs)
    if name.startswith(TIMM):
        import timm

        arch = name[len(TIMM):]
        if not timm.is_model(arch):
            raise _unknown(field, arch, timm.list_models(), "timm model")
        return lambda **kwargs: _timm_model(arch, **kwargs)
    if ":" in name:
        return _user_builder(name, field)
    if name not in _REGISTRY:
        raise _unknown(field, name, list_models() + [TORCHVISION + n for n in _torchvision_classifiers()],
                       "model", f" (registered: {', '.join(list_models())}; or torchvision:<name>, timm:<name>, "
                       "module:function)")
    return _REGISTRY[name]


def check_model_name(name: str, field: str = "arch") -> None:
    resolve_builder(name, field)


def create_model(name: str, num_classes: int, in_channels: int = 3, image_size: int = 32, **kwargs) -> nn.Module:
    builder = resolve_builder(name)
    return builder(num_classes=num_classes, in_channels=in_channels, image_size=image_size, **kwargs)


def check_model_fits(name: str, num_classes: int, in_channels: int, image_size: int, kwargs: dict,
                     field: str = "arch") -> None:
    """Build ``name`` on the meta device (no memory, no weights) and pass it one batch of the data's shape: a
    model that does not fit the data's channels or size, or rejects ``kwargs``, is a ConfigError naming
    ``field`` before any heavy work, not a shape error in a worker hours later."""
    import torch

    with torch.device("meta"):
        try:
            model = resolve_builder(name, field)(num_classes=num_classes, in_channels=in_channels,
                                                 image_size=image_size, **kwargs)
            out = model.eval()(torch.empty(2, in_channels, image_size, image_size))
        except SrelError:
            raise  # already names the field and what would be valid
        except (RuntimeError, ValueError, TypeError, AssertionError) as e:  # shape, size and kwargs errors
            raise ConfigError(f"{field}: model {name!r} (with {kwargs or 'no arch_kwargs'}) does not take "
                              f"{in_channels}-channel {image_size} px images: {e}") from None
    if tuple(out.shape) != (2, num_classes):
        raise ConfigError(f"{field}: model {name!r} gives outputs of shape {tuple(out.shape[1:])} for "
                          f"{num_classes} classes; a classifier must return (batch, num_classes) logits")


def has_batchnorm(model: nn.Module) -> bool:
    """Recovery matches BatchNorm statistics: a model without BN layers cannot be its teacher."""
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


def _user_builder(name: str, field: str) -> ModelBuilder:
    module_name, _, function = name.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:  # the user's module: name it, and how workers find it
        raise ConfigError(f"{field}: {name!r} does not import ({e}); a module:function model must be importable "
                          "by the driver and every Ray worker (installed, or on PYTHONPATH / Ray's runtime_env "
                          "working_dir)") from None
    builder = getattr(module, function, None)
    if not callable(builder):
        raise ConfigError(f"{field}: module {module_name!r} has no function {function!r}")
    return builder


def _torchvision_model(arch: str, num_classes: int, in_channels: int, image_size: int, field: str = "arch",
                       **kwargs) -> nn.Module:
    import torchvision

    if in_channels != 3:
        raise ConfigError(f"{field}: torchvision:{arch} takes 3-channel images and the data has {in_channels}; "
                          "use data.channels=3 or a registered model (convnet, resnet18_small, ...)")
    if arch.startswith(("vit_", "swin_", "maxvit_")):
        kwargs.setdefault("image_size", image_size)  # their position embeddings are sized by the input
    return torchvision.models.get_model(arch, weights=None, num_classes=num_classes, **kwargs)


def _timm_model(arch: str, num_classes: int, in_channels: int, image_size: int, **kwargs) -> nn.Module:
    import timm

    model = timm.create_model(arch, pretrained=False, num_classes=num_classes, in_chans=in_channels, **kwargs)
    embed = getattr(model, "patch_embed", None)
    if embed is not None and tuple(getattr(embed, "img_size", ()) or ()) not in ((), (image_size, image_size)) \
            and "img_size" not in kwargs:  # a transformer sized for another input: rebuild it for this one
        model = timm.create_model(arch, pretrained=False, num_classes=num_classes, in_chans=in_channels,
                                  img_size=image_size, **kwargs)
    return model
