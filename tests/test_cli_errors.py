"""Bad input: one clear error naming the problem, before any heavy work, and nothing written that looks complete."""

import pytest
import torch

from srel_ray.cli import main, quickstart_config
from srel_ray.core.normalization import Normalization
from srel_ray.models import create_model
from srel_ray.teacher import Teacher, save_teacher


def run(capsys, *argv):
    code = main(list(argv))
    return code, capsys.readouterr().err


def test_unknown_config_key(capsys, tmp_path):
    code, err = run(capsys, "run", "--config", str(quickstart_config()), "--out", str(tmp_path / "o"),
                    "--set", "recover.ipcc=3")
    assert code == 3 and "recover.ipcc" in err and "ipc" in err
    assert not (tmp_path / "o").exists()


def test_missing_config_file(capsys, tmp_path):
    code, err = run(capsys, "run", "--config", str(tmp_path / "nope.yaml"), "--out", str(tmp_path / "o"))
    assert code == 3 and "nope.yaml" in err and "does not exist" in err


def test_ipc_below_one(capsys, tmp_path):
    code, err = run(capsys, "quickstart", "--out", str(tmp_path / "o"), "--set", "recover.ipc=0")
    assert code == 3 and "recover.ipc must be >= 1" in err


def test_unknown_architecture_lists_valid_ones(capsys, tmp_path):
    code, err = run(capsys, "quickstart", "--out", str(tmp_path / "o"), "--set", "teacher.arch=resnet9000")
    assert code == 3 and "resnet9000" in err and "convnet" in err and "resnet18_small" in err


def test_ipc_larger_than_a_class(capsys, tmp_path):
    code, err = run(capsys, "quickstart", "--out", str(tmp_path / "o"), "--set", "recover.ipc=1000")
    assert code == 3 and "fewer than recover.ipc=1000" in err
    assert not (tmp_path / "o").exists()


def test_teacher_with_other_class_count(capsys, tmp_path):
    path = tmp_path / "teacher3.pt"
    model = create_model("convnet", num_classes=3, in_channels=1, image_size=16, width=8, depth=2)
    save_teacher(Teacher("convnet", {"width": 8, "depth": 2}, ["a", "b", "c"], 1, 16,
                         Normalization((0.3,), (0.3,)), model.state_dict()), str(path))
    code, err = run(capsys, "quickstart", "--out", str(tmp_path / "o"), "--set", "teacher.source=checkpoint",
                    "--set", f"teacher.checkpoint={path}")
    assert code == 3 and "teacher has 3 classes" in err and "10" in err
    assert not (tmp_path / "o").exists()


def test_teacher_with_other_class_order(capsys, tmp_path):
    path = tmp_path / "teacher_shuffled.pt"
    names = [str(d) for d in range(10)]
    names[3], names[4] = names[4], names[3]
    model = create_model("convnet", num_classes=10, in_channels=1, image_size=16, width=8, depth=2)
    save_teacher(Teacher("convnet", {"width": 8, "depth": 2}, names, 1, 16, Normalization((0.3,), (0.3,)),
                         model.state_dict()), str(path))
    code, err = run(capsys, "quickstart", "--out", str(tmp_path / "o"), "--set", "teacher.source=checkpoint",
                    "--set", f"teacher.checkpoint={path}")
    assert code == 3 and "index 3 is '4' in the teacher, '3'" in err


def test_missing_teacher_checkpoint(capsys, tmp_path):
    code, err = run(capsys, "quickstart", "--out", str(tmp_path / "o"), "--set", "teacher.source=checkpoint",
                    "--set", f"teacher.checkpoint={tmp_path / 'missing.pt'}")
    assert code == 3 and "missing.pt" in err and "does not exist" in err


def test_not_a_teacher_checkpoint(capsys, tmp_path):
    path = tmp_path / "bare.pt"
    torch.save({"weight": torch.zeros(1)}, path)
    code, err = run(capsys, "quickstart", "--out", str(tmp_path / "o"), "--set", "teacher.source=checkpoint",
                    "--set", f"teacher.checkpoint={path}")
    assert code == 3 and "not a srel_ray teacher checkpoint" in err


def test_later_stage_without_teacher(capsys, tmp_path):
    code, err = run(capsys, "recover", "--config", str(quickstart_config()), "--out", str(tmp_path / "o"))
    assert code == 3 and "no teacher" in err and "squeeze" in err


def test_folder_holding_a_different_run(capsys, tmp_path):
    out = tmp_path / "o"
    out.mkdir()
    (out / "config.yaml").write_text(quickstart_config().read_text())
    code, err = run(capsys, "quickstart", "--out", str(out), "--set", "recover.iterations=7")
    assert code == 3 and "holds a different run" in err and "recover.iterations" in err


def test_non_empty_folder_without_a_run(capsys, tmp_path):
    (tmp_path / "o").mkdir()
    (tmp_path / "o" / "notes.txt").write_text("mine")
    code, err = run(capsys, "quickstart", "--out", str(tmp_path / "o"))
    assert code == 3 and "holds no srel_ray run" in err


# ------------------------------------------------------------------------------------------- srel-ray tune


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_tune_with_an_unreachable_tracking_server(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{_free_port()}")  # nothing listens there
    code, err = run(capsys, "tune", "--config", str(quickstart_config()), "--out", str(tmp_path / "o"))
    assert code == 3 and "MLflow tracking server http://127.0.0.1:" in err and "does not answer" in err
    assert not (tmp_path / "o").exists()


def test_tune_with_a_space_naming_no_config_field(capsys, tmp_path):
    code, err = run(capsys, "tune", "--config", str(quickstart_config()), "--out", str(tmp_path / "o"),
                    "--set", "tune.space.recover.iteration={grid: [2, 4]}")
    assert code == 3 and "'recover.iteration' is not a config field" in err and "recover.iterations" in err
    assert not (tmp_path / "o").exists()


def test_tune_with_a_metric_the_trials_do_not_report(capsys, tmp_path):
    code, err = run(capsys, "tune", "--config", str(quickstart_config()), "--out", str(tmp_path / "o"),
                    "--set", "tune.metric=test_top1")
    assert code == 3 and "tune.metric must be a metric the trials report" in err and "val_top1" in err


def test_tune_into_a_used_folder_needs_resume(capsys, tmp_path):
    (tmp_path / "o").mkdir()
    (tmp_path / "o" / "notes.txt").write_text("mine")
    code, err = run(capsys, "tune", "--config", str(quickstart_config()), "--out", str(tmp_path / "o"))
    assert code == 3 and "is not empty" in err and "--resume" in err


def test_tune_resume_without_a_search(capsys, tmp_path):
    code, err = run(capsys, "tune", "--config", str(quickstart_config()), "--out", str(tmp_path / "o"), "--resume")
    assert code == 3 and "holds no search" in err


def test_tune_resume_with_other_tune_settings(capsys, tmp_path):
    (tmp_path / "o").mkdir()
    (tmp_path / "o" / "config.yaml").write_text(quickstart_config().read_text())
    code, err = run(capsys, "tune", "--config", str(quickstart_config()), "--out", str(tmp_path / "o"), "--resume",
                    "--set", "tune.asha=false")
    assert code == 3 and "holds a search with tune.asha=True, not False" in err


def test_yaml_syntax_error_names_file_line_and_column(capsys, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("seed: 0\nrecover:\n  ipc: 2\n  crop_scale: [0.5, 1.0\nrelabel:\n  epochs: 2\n")
    code, err = run(capsys, "run", "--config", str(bad), "--out", str(tmp_path / "o"))
    assert code == 3 and str(bad) in err and "not valid YAML at line 5, column 8" in err
    assert "Traceback" not in err and not (tmp_path / "o").exists()


def test_out_naming_a_file_is_refused(capsys, tmp_path):
    (tmp_path / "o").write_text("not a folder")
    code, err = run(capsys, "quickstart", "--out", str(tmp_path / "o"))
    assert code == 3 and "is a file, not a folder" in err
    assert (tmp_path / "o").read_text() == "not a folder"


def test_version_and_usage_exit_codes(capsys):
    import pytest

    import srel_ray

    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0 and capsys.readouterr().out.strip() == f"srel-ray {srel_ray.__version__}"
    with pytest.raises(SystemExit) as done:
        main(["run", "--out", "x"])  # --config missing
    assert done.value.code == 2 and "--config" in capsys.readouterr().err


def test_show_on_folders_that_are_no_finished_run(capsys, tmp_path):
    code, err = run(capsys, "show", str(tmp_path / "missing"))
    assert code == 3 and "does not exist" in err
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "a.txt").write_text("x")
    code, err = run(capsys, "show", str(tmp_path / "notes"))
    assert code == 3 and "is not a srel_ray run" in err and "config.yaml" in err
    code, err = run(capsys, "show", str(tmp_path / "notes" / "a.txt"))
    assert code == 3 and "is a file" in err
    started = tmp_path / "started"  # a run stopped (or still running) after squeeze
    (started / "stages").mkdir(parents=True)
    (started / "config.yaml").write_text(quickstart_config().read_text())
    (started / "stages" / "squeeze.json").write_text(
        '{"stage": "squeeze", "seconds": 12.5, "result": {"metrics": {"test_top1": 0.99}, "skipped_epochs": 3}}')
    assert main(["show", str(started)]) == 0
    out = capsys.readouterr().out
    assert "a run in progress or stopped before the end (no summary.json)" in out
    assert "stages not finished: recover, relabel, evaluate" in out
    assert "squeeze       12.5 s  teacher test top-1 99.00 %, 3 epochs resumed from a checkpoint" in out
    assert "pictures: none yet" in out and "Traceback" not in out


def test_a_crash_exits_with_1_and_a_traceback(tmp_path):
    """Not a user mistake (a stage record that is not JSON: a damaged disk, a bug): exit code 1, with the
    traceback a bug report needs."""
    import subprocess
    import sys

    (tmp_path / "stages").mkdir()
    (tmp_path / "config.yaml").write_text(quickstart_config().read_text())
    (tmp_path / "stages" / "squeeze.json").write_text("{not json")
    done = subprocess.run([sys.executable, "-m", "srel_ray.cli", "show", str(tmp_path)], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 1 and "Traceback" in done.stderr and "JSONDecodeError" in done.stderr


def test_config_command_says_where_each_value_comes_from(capsys, tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("method: edc\ndata:\n  name: digits\n  image_size: 16\nrecover:\n  iterations: 1000\n")
    assert main(["config", "--config", str(config), "--set", "evaluate.epochs=7"]) == 0
    lines = {line.split()[0]: line for line in capsys.readouterr().out.splitlines() if line and line[0] != " "}
    assert lines["recover.iterations"].endswith("[file; edc preset: 150]") and " 1000 " in lines["recover.iterations"]
    assert lines["evaluate.epochs"].endswith("[--set]") and " 7 " in lines["evaluate.epochs"]
    assert lines["recover.lr"].endswith("[preset]") and " 0.05 " in lines["recover.lr"]  # edc's
    assert lines["evaluate.ema_decay"].endswith("[preset]")
    assert lines["evaluate.temperature"].endswith("[default]")
    assert lines["method"].endswith("[file]")


@pytest.mark.parametrize("overrides,message", [
    (["teacher.arch=timm:deit_tiny_patch16_224", "teacher.arch_kwargs={patch_size: 4, depth: 1}"],
     "the teacher 'timm:deit_tiny_patch16_224' has no BatchNorm layers.*bnvit_tiny"),
    (["evaluate.arch=torchvision:resnet18"], "evaluate.arch: torchvision:resnet18 takes 3-channel images"),
    (["evaluate.arch=convnet", "evaluate.arch_kwargs={depth: 5}"], "evaluate.arch: model 'convnet'.*depth"),
    (["evaluate.arch=resnet18_smal"], "close matches: resnet18_small"),
])
def test_models_that_cannot_work_are_refused_before_work(tmp_path, capsys, overrides, message):
    import re

    from srel_ray.cli import main, quickstart_config

    out = tmp_path / "run"
    args = [a for o in overrides for a in ("--set", o)]
    assert main(["run", "--config", str(quickstart_config()), "--out", str(out), *args]) == 3
    assert re.search(message, capsys.readouterr().err)
    assert not out.exists()


def test_a_study_of_a_folder_that_is_not_a_finished_run(capsys, tmp_path):
    """srel-ray continual / tsne: one line naming what the folder lacks, exit code 3, nothing written."""
    code, err = run(capsys, "continual", str(tmp_path / "missing"))
    assert code == 3 and "does not exist" in err
    code, err = run(capsys, "tsne", str(tmp_path))
    assert code == 3 and "is not a srel_ray run: it has no config.yaml" in err
    (tmp_path / "config.yaml").write_text((quickstart_config()).read_text())
    code, err = run(capsys, "continual", str(tmp_path), "--set", "continual.steps=[5]")
    assert code == 3 and "is not a finished run (no summary.json)" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.yaml"]
