"""Methods as registered specs whose presets fill what a config leaves unset, never override it; saved configs
hold the result."""

import pytest

from srel_ray import methods
from srel_ray.config import (Config, ExtraTeacherConfig, config_from_yaml, config_yaml, from_dict, load_config,
                             method_presets, resolve)
from srel_ray.errors import ConfigError
from srel_ray.methods import MethodSpec, method_names, method_spec, register_method

METHODS = method_names()


def preset_values(method: str, image_size: int) -> dict:
    return method_presets({"method": method, "data": {"image_size": image_size}})


def test_sre2l_is_the_default_and_changes_nothing():
    assert load_config() == from_dict({}) == load_config(overrides=["method=sre2l"])
    assert Config().method == "sre2l" and method_spec("sre2l").presets == {}
    assert METHODS == ("sre2l", "cda", "rded", "edc")
    assert all(method_spec(m).name == m and method_spec(m).description for m in METHODS)


@pytest.fixture
def registry(monkeypatch):
    """The method registry, restored after the test."""
    monkeypatch.setattr(methods, "_REGISTRY", dict(methods._REGISTRY))


def test_a_registered_method_is_a_value_of_method_with_its_presets(registry):
    spec = register_method(MethodSpec("sre2l_tv", "SRe2L with a TV prior and real starts below 128 px",
                                      {"recover": {"tv_weight": 0.5}},
                                      small_image_presets={"recover": {"init": "real"}}))
    assert method_spec("sre2l_tv") is spec and method_names()[-1] == "sre2l_tv"
    small = load_config(overrides=["method=sre2l_tv"])
    assert (small.recover.tv_weight, small.recover.init) == (0.5, "real")
    large = load_config(overrides=["method=sre2l_tv", "data.image_size=224", "recover.tv_weight=0.25"])
    assert (large.recover.tv_weight, large.recover.init) == (0.25, "noise")  # explicit values win
    with pytest.raises(ValueError, match="sre2l_tv"):
        register_method(MethodSpec("sre2l_tv", "again"))


def test_a_spec_is_data_its_values_are_copies():
    edc = method_spec("edc")
    values = edc.preset_values(small_images=True)
    values["recover"]["iterations"] = 1
    assert edc.preset_values(small_images=True)["recover"]["iterations"] == 150
    assert edc.preset_values(small_images=False)["recover"]["iterations"] == 500
    with pytest.raises(AttributeError):
        edc.name = "other"


@pytest.mark.parametrize("name", ["edcc", None, 3])
def test_an_unknown_method_names_the_field_and_the_valid_ones(name):
    with pytest.raises(ConfigError) as info:
        method_spec(name)
    msg = str(info.value)
    assert msg.startswith("method must be one of") and repr(name) in msg and all(m in msg for m in METHODS)


@pytest.mark.parametrize("image_size", [16, 32, 224])
@pytest.mark.parametrize("method", METHODS)
def test_each_preset_sets_its_values(method, image_size):
    cfg = load_config(overrides=[f"method={method}", f"data.image_size={image_size}"])
    assert cfg.method == method
    for section, values in preset_values(method, image_size).items():
        for key, value in values.items():
            got = getattr(getattr(cfg, section), key)
            assert (list(got) if isinstance(got, tuple) else got) == value, (section, key)


def test_the_presets_say_what_the_methods_are():
    edc, rded, cda = (load_config(overrides=[f"method={m}", "data.image_size=224"]) for m in ("edc", "rded", "cda"))
    default = Config()
    # ImageNet-sized input: the paper's recipe, half SRe2L's iterations from RDED crops with RDED's own selection.
    assert edc.recover.init == "rded" and edc.recover.iterations == default.recover.iterations // 2
    assert (edc.recover.rded_pool, edc.recover.rded_crop_scale) == (default.recover.rded_pool,
                                                                    default.recover.rded_crop_scale)
    assert edc.recover.class_bn_weight == 0.5 and edc.recover.flatness_weight > 0
    assert edc.evaluate.lr_stretch == 2.0 and edc.evaluate.ema_decay == 0.99
    assert edc.evaluate.batch_size < default.evaluate.batch_size and edc.relabel.crop_scale == (0.5, 1.0)
    assert rded.recover.iterations == 0 and rded.recover.init == "rded"
    assert cda.recover.crop_curriculum == "cosine" and cda.recover.crop_min_start == 1.0
    # Student-side choices are off everywhere but in edc.
    for cfg in (rded, cda):
        assert (cfg.evaluate.lr_stretch, cfg.evaluate.ema_decay) == (1.0, 0.0)


@pytest.mark.parametrize("image_size, iterations", [(16, 150), (32, 150), (127, 150), (128, 500), (224, 500)])
def test_edc_recovers_briefly_from_wider_rded_crops_below_128_px(image_size, iterations):
    """Below 128 px edc uses the recipe measured on CIFAR-10 (docs/benchmarks.md): 150 iterations from RDED crops
    of 100 candidates, crops of half the image or more; from 128 px the paper's. Explicit values still win, and the
    other methods have no small-image values."""
    cfg = load_config(overrides=["method=edc", f"data.image_size={image_size}"])
    small = image_size < 128
    assert cfg.recover.iterations == iterations
    assert (cfg.recover.rded_pool, cfg.recover.rded_crop_scale) == ((100, (0.5, 1.0)) if small else (300, (0.08, 1.0)))
    assert (cfg.recover.init, cfg.recover.class_bn_weight, cfg.recover.lr) == ("rded", 0.5, 0.05)  # the rest: edc's
    assert load_config(overrides=["method=edc", f"data.image_size={image_size}", "recover.iterations=40",
                                  "recover.rded_pool=50"]).recover.rded_pool == 50
    assert [m for m in METHODS if method_spec(m).small_image_presets] == ["edc"]
    assert preset_values("rded", image_size) == method_spec("rded").presets
    assert preset_values("cda", image_size) == method_spec("cda").presets


def test_a_file_that_sets_the_image_size_gets_the_presets_for_it(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("method: edc\ndata:\n  image_size: 224\n")
    assert load_config(path).recover.iterations == 500
    assert load_config(path, ["data.image_size=32"]).recover.iterations == 150  # --set wins over the file


@pytest.mark.parametrize("image_size, factor", [(16, 1), (64, 1), (127, 1), (128, 2), (224, 2)])
def test_rded_stitches_from_128_px_up_unless_told(image_size, factor):
    """RDED's published scripts: no stitching for CIFAR and Tiny-ImageNet, 2 x 2 for ImageNet and its subsets. The
    saved config holds the number, and an explicit value wins."""
    cfg = load_config(overrides=["method=rded", f"data.image_size={image_size}"])
    assert cfg.recover.rded_factor == factor
    assert f"rded_factor: {factor}" in config_yaml(cfg)
    assert load_config(overrides=["method=rded", f"data.image_size={image_size}", "recover.rded_factor=3"]
                       ).recover.rded_factor == 3


def test_explicit_values_win_over_the_preset(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("method: edc\nrecover:\n  iterations: 40\nevaluate:\n  batch_size: 64\n")
    cfg = load_config(path, ["relabel.crop_scale=[0.25, 1.0]"])
    assert cfg.recover.iterations == 40  # from the file
    assert cfg.evaluate.batch_size == 64
    assert cfg.relabel.crop_scale == (0.25, 1.0)  # from --set
    assert cfg.recover.class_bn_weight == 0.5 and cfg.evaluate.ema_decay == 0.99  # the preset where unset
    # --set can also choose the method over a file that names another.
    assert load_config(path, ["method=sre2l"]).recover.class_bn_weight == 0.0


def test_explicit_values_that_differ_from_the_preset_are_logged(tmp_path, caplog):
    path = tmp_path / "c.yaml"
    path.write_text("recover:\n  iterations: 1000\n  rded_factor: 2\n")
    with caplog.at_level("WARNING", logger="srel_ray.config"):
        cfg = load_config(path, ["method=rded"])
    assert cfg.recover.iterations == 1000
    assert "recover.iterations=1000 (preset: 0)" in caplog.text and "rded_factor" not in caplog.text  # equal: quiet
    caplog.clear()
    with caplog.at_level("WARNING", logger="srel_ray.config"):
        load_config(path)  # sre2l has no preset values to differ from
    assert caplog.text == ""


def test_saved_config_holds_resolved_values_and_reloads_to_the_same_run():
    cfg = load_config(overrides=["method=edc", "recover.lr=0.3"])
    text = config_yaml(cfg)
    assert "method: edc" in text and "class_bn_weight: 0.5" in text and "ema_decay: 0.99" in text
    back = config_from_yaml(text, "saved")
    assert back == cfg and back.identity() == cfg.identity()


def test_resolve_leaves_its_input_alone():
    raw = {"method": "edc", "recover": {"ipc": 3}}
    out = resolve(raw)
    assert raw == {"method": "edc", "recover": {"ipc": 3}}
    assert out["recover"]["ipc"] == 3 and out["recover"]["class_bn_weight"] == 0.5
    assert out["recover"]["rded_factor"] == 1 and resolve({})["recover"] == {"rded_factor": 1}


def test_config_and_methods_import_each_other_in_one_direction_only():
    """methods is a leaf (errors only); config imports it, never the other way round, lazily or not."""
    import ast
    from pathlib import Path

    def imported(module):
        tree = ast.parse((Path(methods.__file__).parent / f"{module}.py").read_text())
        return {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module} | {
            a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}

    assert {m for m in imported("methods") if m.startswith("srel_ray")} == {"srel_ray.errors"}
    assert "srel_ray.methods" in imported("config")


def test_unknown_method_lists_the_valid_ones():
    with pytest.raises(ConfigError) as info:
        load_config(overrides=["method=edcc"])
    msg = str(info.value)
    assert "edcc" in msg and all(m in msg for m in METHODS)


def test_extra_teachers_parse_and_validate():
    cfg = load_config(overrides=["teacher.extra=[{checkpoint: a.pt}, {source: torchvision, arch: resnet50}]"])
    assert cfg.teacher.extra == [ExtraTeacherConfig(checkpoint="a.pt"),
                                 ExtraTeacherConfig(source="torchvision", arch="resnet50")]
    with pytest.raises(ConfigError, match=r"teacher\.extra\[0\]\.checkpoint"):
        load_config(overrides=["teacher.extra=[{source: checkpoint}]"])
    with pytest.raises(ConfigError, match=r"teacher\.extra\[1\]\.source"):
        load_config(overrides=["teacher.extra=[{checkpoint: a.pt}, {source: hub}]"])
    with pytest.raises(ConfigError, match=r"unknown config key 'teacher\.extra\[0\]\.path'"):
        load_config(overrides=["teacher.extra=[{path: a.pt}]"])
    with pytest.raises(ConfigError, match=r"teacher\.extra must be a list"):
        load_config(overrides=["teacher.extra=a.pt"])


@pytest.mark.parametrize("override,field", [
    ("recover.init=noisy", "recover.init"),
    ("recover.iterations=0", "recover.iterations"),  # no optimisation of noise
    ("recover.class_bn_weight=1.5", "recover.class_bn_weight"),
    ("recover.flatness_weight=-1", "recover.flatness_weight"),
    ("recover.flatness_ema=1.0", "recover.flatness_ema"),
    ("recover.crop_curriculum=exp", "recover.crop_curriculum"),
    ("recover.crop_milestone=0", "recover.crop_milestone"),
    ("recover.rded_factor=0", "recover.rded_factor"),
    ("recover.rded_crop_scale=[0.5, 0.2]", "recover.rded_crop_scale"),
    ("evaluate.lr_stretch=0.5", "evaluate.lr_stretch"),
    ("evaluate.ema_decay=1", "evaluate.ema_decay"),
])
def test_invalid_method_options_name_the_field(override, field):
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        load_config(overrides=[override])


def test_curriculum_start_is_checked_only_when_a_curriculum_runs():
    load_config(overrides=["recover.crop_scale=[0.2, 0.8]"])  # crop_min_start 1.0 unused: fine
    with pytest.raises(ConfigError, match=r"recover\.crop_min_start"):
        load_config(overrides=["recover.crop_scale=[0.2, 0.8]", "recover.crop_curriculum=linear"])
    assert load_config(overrides=["recover.init=real", "recover.iterations=0"]).recover.iterations == 0


def _flat(cfg) -> dict:
    from srel_ray.tracking import flatten

    return flatten(cfg.identity())


def test_the_ladder_steps_resolve_as_documented():
    """On the quality protocol's config, each step changes exactly what docs/methods.md says it adds."""
    from pathlib import Path

    from ladder_steps import LADDER  # benchmarks/ladder_steps.py

    protocol = Path(__file__).resolve().parents[2] / "jobs" / "configs" / "cifar10_quality.yaml"
    steps = {name: _flat(load_config(protocol, overrides)) for name, overrides in LADDER}
    assert list(steps) == ["sre2l", "+ real init", "+ category-aware matching", "+ student-side choices", "edc",
                           "rded", "rded + student-side choices", "cda", "edc + several teachers",
                           "edc, CIFAR-10 script recovery", "edc at 75 iterations",
                           "edc, validation's one recipe"]

    def diff(a, b):
        return {k for k in steps[a] if steps[a][k] != steps[b][k]}

    assert diff("sre2l", "+ real init") == {"recover.init", "recover.iterations", "recover.lr"}
    assert diff("+ real init", "+ category-aware matching") == {"recover.class_bn_weight"}
    assert diff("+ category-aware matching", "+ student-side choices") == {
        "evaluate.lr_stretch", "evaluate.batch_size", "evaluate.ema_decay", "relabel.crop_scale"}
    # edc = the previous step + RDED-selected starting images + the flatness term.
    assert diff("+ student-side choices", "edc") == {"method", "recover.init", "recover.flatness_weight"}
    assert steps["edc"]["recover.init"] == "rded" and steps["edc"]["recover.iterations"] == 500
    assert diff("sre2l", "rded") == {"method", "recover.init", "recover.iterations"}
    assert diff("sre2l", "cda") == {"method", "recover.crop_curriculum"}
    # RDED's images under EDC's student recipe: the rded row with exactly step 4's student-side keys.
    assert diff("rded", "rded + student-side choices") == diff("+ category-aware matching", "+ student-side choices")
    # EDC with several teachers is the edc row; what it adds (teacher.extra) is the caller's checkpoints.
    from ladder_steps import LADDER_NEEDS_EXTRA_TEACHERS
    assert LADDER_NEEDS_EXTRA_TEACHERS == ("edc + several teachers",)
    assert diff("edc", "edc + several teachers") == set()
    # EDC's CIFAR-10 script: the edc row recovering 75 iterations from random real images.
    assert diff("edc", "edc, CIFAR-10 script recovery") == {"recover.init", "recover.iterations"}
    assert steps["edc, CIFAR-10 script recovery"]["recover.init"] == "real"
    assert steps["edc, CIFAR-10 script recovery"]["recover.iterations"] == 75
    assert diff("edc", "edc at 75 iterations") == {"recover.iterations"}
    assert diff("edc at 75 iterations", "edc, CIFAR-10 script recovery") == {"recover.init"}
    one = steps["edc, validation's one recipe"]
    assert diff("edc", "edc, validation's one recipe") == {"recover.iterations", "recover.rded_pool",
                                                           "recover.rded_crop_scale"}
    assert (one["recover.iterations"], one["recover.rded_pool"], one["recover.rded_crop_scale"]) == (150, 100, [0.5, 1.0])
    # ... and it is the edc preset on 32 px data: the row has every value the preset sets there.
    assert all(one[f"{section}.{key}"] == value for section, values in preset_values("edc", 32).items()
               for key, value in values.items())
    # The fixed protocol (teacher, student, epochs, seed, data) is the same on every step.
    for name in steps:
        for key in ("seed", "data.path", "teacher.arch", "teacher.epochs", "evaluate.arch", "evaluate.epochs",
                    "relabel.epochs", "recover.ipc"):
            assert steps[name][key] == steps["sre2l"][key], (name, key)
