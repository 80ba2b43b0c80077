"""The paper's recipes as shipped: jobs/configs/tiny_imagenet.yaml and imagenet1k.yaml load, validate and carry
the SRe2L paper's values (its supplementary Table 2 and section A.4; docs/methods.md "The seed's recipes"). No data
is read: loading a config only checks it."""

from pathlib import Path

import pytest

from srel_ray.config import load_config

CONFIGS = Path(__file__).resolve().parents[2] / "jobs" / "configs"

# section -> {key: the paper's value}; both recipes recover with Adam, betas (0.5, 0.9) and a cosine step size
# (srel_ray/core/recover.py, not configurable), from batches of 100 images of 100 classes.
SEED_VALUES = {
    "tiny_imagenet.yaml": {
        "data": {"name": "imagefolder", "image_size": 64, "channels": 3},
        "teacher": {"source": "squeeze", "arch": "resnet18_small", "epochs": 50, "batch_size": 256, "lr": 0.2,
                    "momentum": 0.9, "weight_decay": 1e-4},
        "recover": {"ipc": 50, "iterations": 4000, "lr": 0.1, "weight_decay": 1e-4, "bn_weight": 1.0,
                    "first_bn_multiplier": 10.0, "jitter": 4, "crop_scale": (0.08, 1.0), "classes_per_unit": 100,
                    "ipc_per_unit": 1, "tv_weight": 0.0, "l2_weight": 0.0, "init": "noise"},
        "relabel": {"epochs": 100, "views_per_epoch": 1, "crop_scale": (0.08, 1.0)},
        "evaluate": {"arch": "resnet18_small", "epochs": 100, "batch_size": 256, "optimizer": "sgd", "lr": 0.2,
                     "momentum": 0.9, "weight_decay": 1e-4, "temperature": 20.0, "cutmix_prob": 0.0,
                     "lr_stretch": 1.0, "ema_decay": 0.0},
    },
    "imagenet1k.yaml": {
        "data": {"name": "imagefolder", "image_size": 224, "channels": 3},
        "teacher": {"source": "torchvision", "arch": "resnet18", "weights": "IMAGENET1K_V1"},
        "recover": {"ipc": 50, "iterations": 4000, "lr": 0.25, "weight_decay": 1e-4, "bn_weight": 0.01,
                    "first_bn_multiplier": 10.0, "jitter": 32, "crop_scale": (0.08, 1.0), "classes_per_unit": 100,
                    "ipc_per_unit": 1, "tv_weight": 0.0, "l2_weight": 0.0, "init": "noise"},
        "relabel": {"epochs": 300, "views_per_epoch": 1, "crop_scale": (0.08, 1.0)},
        "evaluate": {"arch": "resnet18", "epochs": 300, "batch_size": 1024, "optimizer": "adamw", "lr": 1e-3,
                     "weight_decay": 0.01, "temperature": 20.0, "cutmix_prob": 1.0, "cutmix_beta": 1.0,
                     "lr_stretch": 1.0, "ema_decay": 0.0},
    },
}


@pytest.mark.parametrize("name", sorted(SEED_VALUES))
def test_recipe_loads_and_carries_the_seed_values(name):
    cfg = load_config(CONFIGS / name)
    assert cfg.method == "sre2l"
    actual = {section: {key: getattr(getattr(cfg, section), key) for key in values}
              for section, values in SEED_VALUES[name].items()}
    assert actual == SEED_VALUES[name]


def test_tiny_imagenet_recipe_keeps_every_logit_of_its_200_classes():
    cfg = load_config(CONFIGS / "tiny_imagenet.yaml")
    assert cfg.relabel.top_k == 0 and cfg.data.test_resize == 0  # 64 px validation images, used whole
