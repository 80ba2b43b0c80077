"""Models by name: ``create_model("convnet", num_classes=10, in_channels=1, image_size=16, width=32)``."""

from srel_ray.models import convnet, resnet  # noqa: F401  (registers the built-in models)
from srel_ray.models.registry import check_model_name, create_model, list_models, register_model

__all__ = ["check_model_name", "create_model", "list_models", "register_model"]
