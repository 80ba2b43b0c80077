"""The feature-space study without Ray: penultimate features of any registered model by a hook on its last
nn.Linear, and the t-SNE points of a tiny run's condensed and real images (srel_ray.studies.feature_space)."""

import pytest
import torch
from torch import nn

from srel_ray.config import FeatureSpaceConfig
from srel_ray.errors import ConfigError, SrelError
from srel_ray.models import create_model
from srel_ray.models.features import classifier_layer, penultimate_features
from srel_ray.studies.feature_space import feature_space, plot_feature_space, shown_classes


@pytest.mark.parametrize("arch, kwargs, layer", [("convnet", {"width": 8, "depth": 2}, "classifier"),
                                                  ("resnet18_small", {}, "fc"),
                                                  ("bnvit_tiny", {"depth": 1, "embed_dim": 24, "num_heads": 2},
                                                   "head")])
def test_penultimate_features_are_what_the_classifier_head_reads(arch, kwargs, layer):
    torch.manual_seed(0)
    model = create_model(arch, num_classes=5, in_channels=3, image_size=16, **kwargs).eval()
    name, head = classifier_layer(model)
    assert name == layer
    x = torch.randn(6, 3, 16, 16)
    features = penultimate_features(model, [x[:4], x[4:]])
    assert features.shape == (6, head.in_features)
    with torch.no_grad():
        torch.testing.assert_close(head(features), model(x), rtol=1e-4, atol=1e-4)


def test_a_model_without_a_linear_head_is_refused():
    with pytest.raises(SrelError, match="no nn.Linear layer"):
        penultimate_features(nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten()), [torch.zeros(1, 1, 4, 4)])
    not_last = nn.Sequential(nn.Flatten(), nn.Linear(16, 7), nn.Unflatten(1, (7, 1, 1)), nn.Conv2d(7, 3, 1),
                             nn.Flatten())
    with pytest.raises(SrelError, match="is not its classifier head"):
        penultimate_features(not_last, [torch.zeros(2, 1, 4, 4)])


def test_tsne_points_of_the_condensed_and_real_images_are_seeded(labelled_run):
    cfg, data, run = labelled_run
    section = FeatureSpaceConfig(classes=3, real_per_class=4, perplexity=5.0)
    points = feature_space(cfg, run, section, 0, data)
    classes = shown_classes(10, 3, 0)
    assert points["classes"] == classes and points["class_names"] == [data.class_names[c] for c in classes]
    kinds = [p["kind"] for p in points["points"]]
    assert kinds == ["condensed"] * 3 + ["real"] * 12  # IPC 1 condensed, 4 real images of each class
    assert [p["class"] for p in points["points"]] == classes + [c for c in classes for _ in range(4)]
    assert points["layer"] == "classifier"
    assert feature_space(cfg, run, section, 0, data) == points  # the same seed: the same points
    other = feature_space(cfg, run, section, 1, data)
    assert other["classes"] != classes or other["points"] != points["points"]
    with pytest.raises(ConfigError, match="tsne.perplexity must be below the number of points \\(15"):
        feature_space(cfg, run, FeatureSpaceConfig(classes=3, real_per_class=4, perplexity=15.0), 0, data)
    with pytest.raises(ConfigError, match="tsne.classes must be <= the run's 10 classes, got 11"):
        feature_space(cfg, run, FeatureSpaceConfig(classes=11), 0, data)
    fig = plot_feature_space(points)
    assert len(fig.axes[0].collections) == 6  # real and condensed, for each of the three classes
