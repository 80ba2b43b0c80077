"""Models by name: ``create_model("convnet", num_classes=10, in_channels=1, image_size=16, width=32)``, or
``torchvision:<name>``, ``timm:<name>``, ``module:function`` (srel_ray.models.registry)."""

from srel_ray.models import bnvit, convnet, resnet  # noqa: F401  (registers the built-in models)
from srel_ray.models.registry import check_model_name, create_model, has_batchnorm, list_models, register_model

__all__ = ["check_model_name", "create_model", "has_batchnorm", "list_models", "register_model"]
