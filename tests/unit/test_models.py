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


# ------------------------------------------------------------------- models by name, BN-ViT (issue 19)


def test_bnvit_has_batchnorm_where_vit_has_layernorm_and_inside_every_mlp():
    from srel_ray.core.bn_matching import BNStatsMatcher

    depth = 2
    model = create_model("bnvit_tiny", num_classes=10, in_channels=3, image_size=32, depth=depth)
    assert not [m for m in model.modules() if isinstance(m, nn.LayerNorm)]
    assert len([m for m in model.modules() if isinstance(m, nn.BatchNorm1d)]) == 3 * depth + 1  # norm1, norm2, mlp
    mlp = model.blocks[0].mlp
    assert [name for name, _ in mlp.named_children()] == ["fc1", "act", "drop1", "norm", "fc2", "drop2"]
    assert mlp.norm.bn.num_features == mlp.fc1.out_features  # the BN sits between the two linear layers
    assert model.patch_embed.patch_size == (4, 4)  # 8 x 8 tokens from 32 px
    assert _logits(model, 3, 32).shape == (2, 10)
    # Recovery's hooks see channels-first token batches: one statistic per channel, not per token.
    with BNStatsMatcher(model) as bn:
        model(torch.randn(4, 3, 32, 32))
        assert [tuple(mean.shape) for mean, _ in bn.batch] == [(layer.num_features,) for layer in bn.layers]
        assert torch.isfinite(bn.loss())


def test_models_by_torchvision_timm_and_module_function_names():
    resnet101 = create_model("torchvision:resnet101", num_classes=4, in_channels=3, image_size=32)
    assert len(resnet101.layer3) == 23 and resnet101.fc.out_features == 4
    vit = create_model("timm:deit_tiny_patch16_224", num_classes=4, in_channels=3, image_size=32, patch_size=4)
    assert vit.patch_embed.img_size == (32, 32) and _logits(vit, 3, 32).shape == (2, 4)
    assert create_model("timm:resnet18.a1_in1k", num_classes=4, in_channels=1, image_size=32).conv1.in_channels == 1
    own = create_model("srel_ray.models.convnet:convnet", num_classes=3, in_channels=1, image_size=16, width=8)
    assert type(own).__name__ == "ConvNet" and _logits(own, 1, 16).shape == (2, 3)


@pytest.mark.parametrize("name,message", [
    ("convnett", r"evaluate.arch: unknown model 'convnett'; close matches: convnet"),
    ("torchvision:resnet1001", r"unknown torchvision classifier 'resnet1001'; close matches: resnet101"),
    ("timm:resnet5o", r"unknown timm model 'resnet5o'; close matches: resnet50"),
    ("no_such_pkg.nets:small", r"'no_such_pkg.nets:small' does not import .*every Ray worker"),
    ("srel_ray.models.convnet:nothing", r"module 'srel_ray.models.convnet' has no function 'nothing'"),
])
def test_unknown_model_names_say_what_is_close(name, message):
    with pytest.raises(ConfigError, match=message):
        check_model_name(name, "evaluate.arch")


def test_a_model_that_does_not_fit_the_data_is_refused_before_work():
    from srel_ray.models.registry import check_model_fits

    check_model_fits("bnvit_tiny", 10, 3, 32, {}, "evaluate.arch")  # fits: nothing raised, nothing allocated
    with pytest.raises(ConfigError, match=r"evaluate.arch: model 'bnvit_tiny' .* 30 px images: .*patch size 4"):
        check_model_fits("bnvit_tiny", 10, 3, 30, {}, "evaluate.arch")
    with pytest.raises(ConfigError, match=r"teacher.arch: model 'convnet' \(with \{'widht': 3\}\)"):
        check_model_fits("convnet", 10, 3, 32, {"widht": 3}, "teacher.arch")
    with pytest.raises(ConfigError, match=r"torchvision:resnet18 takes 3-channel images and the data has 1"):
        check_model_fits("torchvision:resnet18", 10, 1, 32, {}, "evaluate.arch")


def test_has_batchnorm():
    from srel_ray.models import has_batchnorm

    assert has_batchnorm(create_model("convnet", num_classes=2, in_channels=1, image_size=8, width=4, depth=1))
    assert not has_batchnorm(create_model("timm:deit_tiny_patch16_224", num_classes=2, image_size=32, patch_size=4,
                                          depth=1))
