"""Published weights' metadata (torchvision's weights enums): which weights exist for a model, and how their
evaluation transform resizes held-out images. Metadata only: nothing here downloads or loads weights."""

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
