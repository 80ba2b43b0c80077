"""Method options that cannot work are one clear error before anything is written."""

from pathlib import Path

from srel_ray.cli import main, quickstart_config
from srel_ray.core.normalization import Normalization
from srel_ray.models import create_model
from srel_ray.teacher import Teacher, save_teacher


def run(capsys, tmp_path, *sets):
    args = ["quickstart", "--config", str(quickstart_config()), "--out", str(tmp_path / "o")]  # method sre2l
    args += [a for s in sets for a in ("--set", s)]
    code = main(args)
    return code, capsys.readouterr().err


def test_unknown_method(capsys, tmp_path):
    code, err = run(capsys, tmp_path, "method=edc2")
    assert code == 3 and "method must be one of" in err and "'rded'" in err
    assert not (tmp_path / "o").exists()


def test_rded_needs_enough_candidates_per_class(capsys, tmp_path):
    code, err = run(capsys, tmp_path, "method=rded", "recover.rded_factor=2", "recover.rded_pool=7")  # 2 x 2^2 = 8
    assert code == 3 and "RDED needs ipc * rded_factor^2 = 8" in err and "rded_pool=7" in err
    assert not (tmp_path / "o").exists()


def test_noise_cannot_skip_optimisation(capsys, tmp_path):
    code, err = run(capsys, tmp_path, "recover.iterations=0")
    assert code == 3 and "recover.iterations" in err and "real or rded" in err


def test_extra_teacher_with_other_classes(capsys, tmp_path):
    path = tmp_path / "three.pt"
    model = create_model("convnet", num_classes=3, in_channels=1, image_size=16, width=8, depth=2)
    save_teacher(Teacher("convnet", {"width": 8, "depth": 2}, ["a", "b", "c"], 1, 16,
                         Normalization((0.3,), (0.3,)), model.state_dict()), str(path))
    code, err = run(capsys, tmp_path, f"teacher.extra=[{{checkpoint: {path}}}]")
    assert code == 3 and "teacher has 3 classes" in err
    assert not (tmp_path / "o").exists()


def test_a_search_checks_every_listed_start_before_anything_runs(capsys, tmp_path):
    """A tuned recover.init is checked for each value (here the RDED pool, drawn outside the validation split)."""
    config = Path(__file__).parents[1] / "jobs" / "configs" / "tune_digits.yaml"
    code = main(["tune", "--config", str(config), "--out", str(tmp_path / "o"),
                 "--set", "tune.space={recover.init: {grid: [noise, rded]}}",
                 "--set", "recover.rded_factor=2", "--set", "recover.rded_pool=7"])
    err = capsys.readouterr().err
    assert code == 3 and "RDED needs ipc * rded_factor^2" in err and "rded_pool=7" in err
    assert not (tmp_path / "o").exists()
