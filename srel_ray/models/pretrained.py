"""Published weights' metadata (torchvision's weights enums, timm's pretrained configs): which weights exist for a
model, and how their evaluation transform resizes held-out images. Metadata only: nothing here downloads or loads
weights."""

from __future__ import annotations

from srel_ray.errors import DataError


def torchvision_weights(arch: str, weights: str, field: str = "teacher"):
    """The weights enum entry ``weights`` (e.g. IMAGENET1K_V1) of the torchvision classifier ``arch``."""
    import torchvision

    try:
        enum = torchvision.models.get_model_weights(arch)
    except ValueError:
        raise DataError(f"{field}.arch: torchvision has no model {arch!r} with published weights") from None
    if weights not in enum.__members__:
        raise DataError(f"{field}.weights: torchvision has no weights {weights!r} for {arch!r}; it has "
                        f"{', '.join(enum.__members__)}") from None
    return enum[weights]


def eval_resize(arch: str, weights: str, image_size: int) -> int:
    """The short side held-out images are resized to before the centre crop to ``image_size``, in the proportion
    of the weights' own evaluation transform (resize 256, crop 224 for the V1 weights)."""
    transform = torchvision_weights(arch, weights).transforms()
    return round(image_size * transform.resize_size[0] / transform.crop_size[0])


def timm_name(arch: str) -> str:
    """A timm model's name as timm knows it (``timm:resnet50.a1_in1k`` or ``resnet50.a1_in1k``)."""
    return arch.removeprefix("timm:")


def timm_pretrained_cfg(arch: str, field: str = "teacher") -> dict:
    """The pretrained config (mean, std, crop_pct, num_classes, ...) of a timm model with its weights' tag."""
    import timm

    name = timm_name(arch)
    known = timm.is_model(name) and ("." not in name or name in timm.list_pretrained(name))
    cfg = timm.models.get_pretrained_cfg(name) if known else None
    if cfg is None:
        raise DataError(f"{field}.arch: timm has no pretrained weights named {name!r}; give a model with "
                        "its weights' tag, e.g. resnet50.a1_in1k (timm.list_pretrained() lists them)")
    return cfg.to_dict()


def timm_eval_resize(arch: str, image_size: int) -> int:
    """The short side held-out images are resized to before the centre crop, by the weights' ``crop_pct``."""
    return round(image_size / timm_pretrained_cfg(arch)["crop_pct"])
