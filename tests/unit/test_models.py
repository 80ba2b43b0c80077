"""The model registry and the built-in models."""

import uuid

import pytest
import torch
from torch import nn

from srel_ray.errors import ConfigError
from srel_ray.models import check_model_name, create_model, list_models, register_model
from srel_ray.models import registry


def _logits(model, in_channels, size, n=2):
    model.eval()
    with torch.no_grad():
        return model(torch.randn(n, in_channels, size, size, generator=torch.Generator().manual_seed(0)))


def test_builtin_models_listed():
    names = list_models()
    for name in ("convnet", "resnet18", "resnet50", "resnet18_small", "resnet50_small"):
        assert name in names
    assert names == sorted(names)


@pytest.mark.parametrize("in_channels,size,width,depth", [(1, 16, 8, 2), (3, 32, 16, 3), (1, 8, 4, 3)])
def test_convnet_shapes(in_channels, size, width, depth):
    model = create_model("convnet", num_classes=7, in_channels=in_channels, image_size=size, width=width, depth=depth)
    assert _logits(model, in_channels, size).shape == (2, 7)
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(bns) == depth and all(bn.num_features == width for bn in bns)
    assert model.classifier.in_features == width * (size // 2**depth) ** 2


def test_convnet_too_deep_for_image_raises():
    with pytest.raises(ValueError, match="depth"):
        create_model("convnet", num_classes=2, in_channels=1, image_size=8, depth=4)


@pytest.mark.parametrize("name,in_channels,size", [("resnet18_small", 1, 16), ("resnet18_small", 3, 32),
                                                   ("resnet50_small", 3, 16)])
def test_small_resnets(name, in_channels, size):
    model = create_model(name, num_classes=5, in_channels=in_channels, image_size=size)
    assert _logits(model, in_channels, size).shape == (2, 5)
    conv1 = model.conv1
    assert conv1.kernel_size == (3, 3) and conv1.stride == (1, 1) and conv1.padding == (1, 1)
    assert conv1.in_channels == in_channels and conv1.out_channels == 64
    assert isinstance(model.maxpool, nn.Identity)


def test_small_resnet_keeps_resolution_into_layer1():
    model = create_model("resnet18_small", num_classes=3, in_channels=3, image_size=16).eval()
    seen = {}

    def record(module, inputs, output):
        seen["shape"] = output.shape

    model.layer1.register_forward_hook(record)
    _logits(model, 3, 16)
    assert seen["shape"][-2:] == (16, 16)


@pytest.mark.parametrize("in_channels", [3, 1])
def test_resnet18_at_64px(in_channels):
    model = create_model("resnet18", num_classes=4, in_channels=in_channels, image_size=64)
    assert _logits(model, in_channels, 64).shape == (2, 4)
    assert model.conv1.in_channels == in_channels
    assert model.conv1.kernel_size == (7, 7) and model.conv1.stride == (2, 2)
    assert isinstance(model.maxpool, nn.MaxPool2d)


def test_unknown_model_lists_valid_names():
    with pytest.raises(ConfigError) as info:
        create_model("resnet19", num_classes=3)
    msg = str(info.value)
    assert "resnet19" in msg
    for name in ("convnet", "resnet18", "resnet50_small"):
        assert name in msg
    with pytest.raises(ConfigError, match=r"evaluate\.arch"):
        check_model_name("resnet19", "evaluate.arch")


@pytest.fixture
def custom_name():
    name = f"test_model_{uuid.uuid4().hex[:8]}"
    yield name
    registry._REGISTRY.pop(name, None)


def test_register_model_then_create(custom_name):
    calls = []

    @register_model(custom_name)
    def build(num_classes, in_channels=3, image_size=32, hidden=4):
        calls.append((num_classes, in_channels, image_size, hidden))
        return nn.Sequential(nn.Flatten(), nn.Linear(in_channels * image_size * image_size, num_classes))

    assert custom_name in list_models()
    model = create_model(custom_name, num_classes=6, in_channels=2, image_size=5, hidden=9)
    assert calls == [(6, 2, 5, 9)]
    assert _logits(model, 2, 5).shape == (2, 6)
    check_model_name(custom_name)  # no error


def test_register_twice_is_refused(custom_name):
    register_model(custom_name)(lambda **kw: nn.Identity())
    with pytest.raises(AssertionError):
        register_model(custom_name)(lambda **kw: nn.Identity())
