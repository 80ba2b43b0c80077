"""Typed config: defaults, --set overrides, errors that name the field, YAML round trip, identity."""

import dataclasses
import re
from importlib import resources

import pytest

from srel_ray.config import (Config, RecoverConfig, ResourcesConfig, TrackingConfig, from_dict, load_config,
                             save_config, to_dict)
from srel_ray.errors import ConfigError


def test_defaults_load_and_validate():
    cfg = load_config()
    assert isinstance(cfg, Config)
    assert cfg == from_dict({})
    # Config() is unresolved: the one default that follows another section (16 px) is resolve()'s.
    assert cfg == dataclasses.replace(Config(), recover=RecoverConfig(rded_factor=1))
    assert cfg.recover.crop_scale == (0.08, 1.0) and isinstance(cfg.recover.crop_scale, tuple)
    assert cfg.validate() is cfg


def test_overrides_are_applied_with_types():
    cfg = load_config(overrides=["recover.ipc=5", "recover.crop_scale=[0.5, 1.0]", "resources.use_gpu=null",
                                 "recover.lr=1", "seed=3", "teacher.arch_kwargs={width: 16}",
                                 "data.hflip=false"])
    assert cfg.recover.ipc == 5 and type(cfg.recover.ipc) is int
    assert cfg.recover.crop_scale == (0.5, 1.0) and isinstance(cfg.recover.crop_scale, tuple)
    assert all(type(v) is float for v in cfg.recover.crop_scale)
    assert cfg.resources.use_gpu is None
    assert cfg.recover.lr == 1.0 and type(cfg.recover.lr) is float  # int promoted to float
    assert cfg.seed == 3
    assert cfg.teacher.arch_kwargs == {"width": 16}
    assert cfg.data.hflip is False
    # Untouched fields keep their defaults.
    assert cfg.recover.iterations == RecoverConfig().iterations


def test_override_bool_and_null_on_optional():
    cfg = load_config(overrides=["resources.use_gpu=true", "resources.num_cpus=4"])
    assert cfg.resources.use_gpu is True
    assert cfg.resources.num_cpus == 4


def test_overrides_apply_on_top_of_file(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("recover:\n  ipc: 7\n  iterations: 3\n")
    cfg = load_config(path, ["recover.ipc=2"])
    assert cfg.recover.ipc == 2 and cfg.recover.iterations == 3


def test_unknown_key_names_the_key():
    with pytest.raises(ConfigError) as info:
        load_config(overrides=["recover.ipcc=3"])
    msg = str(info.value)
    assert "recover.ipcc" in msg
    assert "ipc_per_unit" in msg  # lists the valid keys of the section


def test_unknown_section():
    with pytest.raises(ConfigError, match="recovr"):
        load_config(overrides=["recovr.ipc=3"])


def test_wrong_type_names_the_field():
    with pytest.raises(ConfigError, match=r"recover\.ipc\b.*int.*abc"):
        load_config(overrides=["recover.ipc=abc"])


def test_bool_is_not_an_int():
    with pytest.raises(ConfigError, match=r"recover\.ipc"):
        load_config(overrides=["recover.ipc=true"])


def test_wrong_tuple_length():
    with pytest.raises(ConfigError, match=r"recover\.crop_scale"):
        load_config(overrides=["recover.crop_scale=[0.5]"])


def test_override_without_equals():
    with pytest.raises(ConfigError, match="section.key=value"):
        load_config(overrides=["recover.ipc"])


@pytest.mark.parametrize("override,field", [
    ("recover.ipc=0", "recover.ipc"),
    ("recover.crop_scale=[0.9, 0.5]", "recover.crop_scale"),
    ("relabel.logits_dtype=int8", "relabel.logits_dtype"),
    ("data.name=mnistt", "data.name"),
    ("evaluate.temperature=0", "evaluate.temperature"),
    ("resources.train_workers=0", "resources.train_workers"),
    ("evaluate.cutmix_prob=1.5", "evaluate.cutmix_prob"),
    ("evaluate.cutmix_prob=-0.1", "evaluate.cutmix_prob"),
    ("evaluate.cutmix_beta=0", "evaluate.cutmix_beta"),
    ("evaluate.momentum=1.0", "evaluate.momentum"),
    ("evaluate.weight_decay=-0.01", "evaluate.weight_decay"),
    ("recover.weight_decay=-1e-4", "recover.weight_decay"),
    ("resources.student_cache_mb=-1", "resources.student_cache_mb"),
    ("resources.student_checkpoint_epochs=-1", "resources.student_checkpoint_epochs"),
    ("resources.concurrent_students=0", "resources.concurrent_students"),
])
def test_invalid_values(override, field):
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        load_config(overrides=[override])


def test_unknown_student_optimizer_lists_the_valid_ones():
    with pytest.raises(ConfigError, match=re.escape("evaluate.optimizer must be one of ['adamw', 'sgd'], got 'adam'")):
        load_config(overrides=["evaluate.optimizer=adam"])


def test_student_and_recovery_recipe_options_default_to_the_former_behaviour():
    """AdamW, no CutMix, no recovery weight decay: runs configured before these options compute what they did."""
    cfg = load_config()
    assert (cfg.evaluate.optimizer, cfg.evaluate.cutmix_prob, cfg.recover.weight_decay) == ("adamw", 0.0, 0.0)


def test_unknown_arch_lists_valid_models():
    with pytest.raises(ConfigError) as info:
        load_config(overrides=["evaluate.arch=nonexistent"])
    msg = str(info.value)
    assert "evaluate.arch" in msg and "nonexistent" in msg
    assert "convnet" in msg and "resnet18_small" in msg


def test_teacher_arch_checked_unless_checkpoint():
    with pytest.raises(ConfigError, match=r"teacher\.arch"):
        load_config(overrides=["teacher.arch=nope"])
    with pytest.raises(ConfigError, match=r"teacher\.checkpoint"):
        load_config(overrides=["teacher.source=checkpoint"])
    cfg = load_config(overrides=["teacher.source=checkpoint", "teacher.checkpoint=x.pt", "teacher.arch=nope"])
    assert cfg.teacher.arch == "nope"


def test_missing_file_raises(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "absent.yaml")


def test_non_mapping_file_raises(tmp_path):
    path = tmp_path / "list.yaml"
    path.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(path)


def test_save_load_round_trip(tmp_path):
    cfg = load_config(overrides=["recover.ipc=5", "recover.crop_scale=[0.5, 1.0]", "seed=11",
                                 "evaluate.arch_kwargs={width: 8, depth: 1}", "resources.use_gpu=false",
                                 "tracking.enabled=false"])
    path = tmp_path / "config.yaml"
    save_config(cfg, path)
    assert not (tmp_path / "config.yaml.tmp").exists()
    back = load_config(path)
    assert back == cfg
    assert to_dict(back) == to_dict(cfg)


def test_identity_excludes_resources_tracking_and_tune():
    cfg = Config()
    ident = cfg.identity()
    assert set(ident) == {f.name for f in dataclasses.fields(Config)} - {"resources", "tracking", "tune"}
    assert ident["recover"]["crop_scale"] == [0.08, 1.0]  # plain YAML types
    other = dataclasses.replace(cfg, resources=ResourcesConfig(recover_actors=7),
                                tracking=TrackingConfig(enabled=False))
    assert other.identity() == ident
    changed = dataclasses.replace(cfg, recover=RecoverConfig(ipc=3))
    assert changed.identity() != ident


def test_packaged_quickstart_config_loads():
    path = resources.files("srel_ray") / "configs" / "quickstart.yaml"
    with resources.as_file(path) as p:
        cfg = load_config(p)
    assert cfg.data.name == "digits" and cfg.data.hflip is False
    assert cfg.recover.crop_scale == (0.5, 1.0)
    assert cfg.teacher.arch_kwargs == {"width": 32, "depth": 2}
    assert cfg.recover.bn_weight == 1.0
